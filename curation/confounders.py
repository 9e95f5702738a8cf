"""Confounder statistics for metadata columns.

For every categorical column (and numeric ones binned into quantiles): its association with the
prototype clusters (bias-corrected Cramer's V, Bergsma 2013; mutual information) and how well a
cross-validated linear probe predicts it from the embeddings, against the majority-class rate.
A column is flagged as a likely confounder when the embeddings predict it clearly better than
chance (``probe_lift >= lift_threshold``) or it is strongly tied to the clusters
(``cramers_v >= v_threshold``); label columns are reported but never flagged.
"""

from __future__ import annotations

import logging

import numpy as np

from curation.schema import UnusableColumn, category_values

log = logging.getLogger(__name__)

COLUMNS = ("column", "role", "kind", "levels", "cramers_v", "mutual_info", "nmi", "probe_accuracy",
           "chance_accuracy", "probe_lift", "is_confounder", "note")

MISSING = "(missing)"


def categorize(values, max_levels: int = 50, n_bins: int = 5):
    """Codes for a metadata column: categories as they are, numbers binned into quantiles.

    Missing values form a level of their own (``(missing)``), never dropped. Nested values (lists,
    structs, maps) are categories by their JSON text, decimals are numbers, binary data is skipped
    (:func:`curation.schema.category_values`).

    Returns
    -------
    codes : ndarray (n,) int or None (None: too many levels to be a confounder)
    levels : list of str
    kind : "categorical" | "binned" | "skipped: ..."
    """
    import pandas as pd

    try:
        s = category_values(pd.Series(values))
    except UnusableColumn:
        return None, [], "skipped: binary data"
    numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    if numeric and s.nunique(dropna=True) > max_levels // 5:
        try:
            binned = pd.qcut(s, q=n_bins, duplicates="drop")
        except ValueError:
            binned = s
        s = binned.astype(str).where(s.notna(), MISSING)
        kind = "binned"
    else:
        s = s.astype(object).where(s.notna(), MISSING).astype(str)
        kind = "categorical"
    levels, codes = np.unique(s.to_numpy(dtype=str), return_inverse=True)
    if len(levels) > max_levels:
        return None, [], f"skipped: {len(levels)} distinct values (an identifier or free text?)"
    if len(levels) < 2:
        return None, list(levels), "skipped: a single value"
    return codes.astype(np.int64), [str(x) for x in levels], kind


def cramers_v_corrected(a: np.ndarray, b: np.ndarray) -> float:
    """Bias-corrected Cramer's V (Bergsma 2013) between two code arrays; 0 = independent."""
    n = len(a)
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    table = np.zeros((ka, kb), np.float64)
    np.add.at(table, (a, b), 1)
    table = table[table.sum(1) > 0][:, table.sum(0) > 0]
    r, k = table.shape
    if r < 2 or k < 2:
        return 0.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = ((table - expected) ** 2 / expected).sum()
    phi2 = chi2 / n
    phi2c = max(0.0, phi2 - (k - 1) * (r - 1) / (n - 1))
    rc = r - (r - 1) ** 2 / (n - 1)
    kc = k - (k - 1) ** 2 / (n - 1)
    denom = min(kc - 1, rc - 1)
    return float(np.sqrt(phi2c / denom)) if denom > 0 else 0.0


def probe_accuracy(Z: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, *,
                   folds: int = 3, seed: int = 0) -> tuple[float, float, str]:
    """Cross-validated balanced accuracy of a logistic-regression probe from ``Z`` to ``y``,
    and the same for always predicting the majority class (balanced: 1 / n_classes).

    Folds are grouped by ``groups`` (case ids) when given, so one patient never sits on both sides,
    and stratified by class. A class needs ``folds`` groups (rows when ungrouped) to appear on
    both sides of every split: rarer classes are merged into one "rare" class, and when that class
    is itself too small its rows are left out of the probe. Returns (accuracy, chance, note); the
    probe is skipped (NaN accuracy, the note says why) when fewer than two classes remain or a
    training fold would hold one class. It never raises for the shape of the data.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    notes = []

    def support(labels):  # distinct groups per class
        pairs = np.unique(np.stack([labels, g]), axis=1)
        return np.bincount(pairs[0], minlength=int(labels.max()) + 1)

    rare = support(y)[y] < folds
    if rare.any():
        notes.append(f"{len(np.unique(y[rare]))} value(s) held by fewer than {folds} "
                     f"{'cases' if groups is not None else 'rows'} merged into one")
        y = np.where(rare, int(y.max()) + 1, y)
        small = support(y)[y] < folds
        if small.any():
            notes[-1] += f" and left out of the probe ({int(small.sum())} rows: too few to split)"
            keep = ~small
            Z, y, g = Z[keep], y[keep], g[keep]
    classes = np.unique(y)
    if len(classes) < 2:
        return float("nan"), float("nan"), "; ".join(notes + ["probe skipped: fewer than two values to tell apart"])
    y = np.searchsorted(classes, y)
    cv = (StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed) if groups is not None
          else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    pred = np.empty_like(y)
    for train, test in cv.split(Z, y, **({"groups": g} if groups is not None else {})):
        if len(np.unique(y[train])) < 2:
            return float("nan"), float("nan"), "; ".join(
                notes + ["probe skipped: a grouped fold holds a single value (too few cases per value)"])
        pred[test] = LogisticRegression(max_iter=300, C=1.0).fit(Z[train], y[train]).predict(Z[test])
    return float(balanced_accuracy_score(y, pred)), 1.0 / len(classes), "; ".join(notes)


def confounder_table(meta, clusters: np.ndarray, Z: np.ndarray, *, rows: np.ndarray | None = None, case=None,
                     label_columns=(), skip_columns=(), v_threshold: float = 0.3, lift_threshold: float = 0.1,
                     seed: int = 0, progress=None):
    """One row per metadata column with its association statistics and the confounder flag.

    Parameters
    ----------
    meta : pandas.DataFrame
        Metadata columns (n rows).
    clusters : ndarray (n,) int
        Prototype cluster of each sample.
    Z : ndarray (len(rows), p)
        Embedding features of the probe's rows (a PCA of the analysis space is enough).
    rows : ndarray of int, optional
        The rows the probe trains on (:func:`curation.analysis_steps.probe_rows`); all rows when None.
    case : ndarray (n,), optional
        Case/patient ids: probe folds are grouped by them.
    label_columns : iterable of str
        Reported with ``role = "label"`` and never flagged.

    Returns
    -------
    pandas.DataFrame with columns column, role, kind, levels, cramers_v, mutual_info, nmi,
    probe_accuracy, chance_accuracy, probe_lift, is_confounder, note
    """
    import pandas as pd
    from sklearn.metrics import mutual_info_score, normalized_mutual_info_score

    n = len(meta)
    sub = np.arange(n) if rows is None else np.asarray(rows)
    if len(Z) != len(sub):
        raise ValueError(f"Z has {len(Z)} rows for {len(sub)} probe rows")
    groups = None
    if case is not None:
        groups = pd.factorize(pd.Series(case).astype(str))[0][sub]
    rows = []
    for col in meta.columns:
        if col in skip_columns:
            continue
        codes, levels, kind = categorize(meta[col].to_numpy())
        role = "label" if col in label_columns else "metadata"
        row = {"column": col, "role": role, "kind": kind, "levels": len(levels), "cramers_v": np.nan,
               "mutual_info": np.nan, "nmi": np.nan, "probe_accuracy": np.nan,
               "chance_accuracy": np.nan, "probe_lift": np.nan, "is_confounder": False, "note": ""}
        if codes is None:
            row["note"] = kind
            row["kind"] = "skipped"
            rows.append(row)
            if progress:
                progress(1)
            continue
        row["cramers_v"] = cramers_v_corrected(codes, clusters)
        row["mutual_info"] = float(mutual_info_score(codes, clusters))
        row["nmi"] = float(normalized_mutual_info_score(codes, clusters))
        acc, base, probe_note = probe_accuracy(Z, codes[sub], groups, seed=seed)
        row.update(probe_accuracy=acc, chance_accuracy=base, probe_lift=acc - base)
        flagged = bool(row["probe_lift"] >= lift_threshold) or row["cramers_v"] >= v_threshold
        row["is_confounder"] = bool(flagged and role != "label")
        if flagged and role == "label":
            row["note"] = "label column: predictable from the embeddings, as a label should be"
        elif flagged:
            why = []
            if row["probe_lift"] >= lift_threshold:
                why.append(f"the embeddings predict it ({acc:.2f} balanced accuracy vs {base:.2f} chance)")
            if row["cramers_v"] >= v_threshold:
                why.append(f"it is tied to the clusters (Cramer's V {row['cramers_v']:.2f})")
            row["note"] = "; ".join(why)
        if probe_note:
            row["note"] = "; ".join(x for x in (row["note"], probe_note) if x)
        rows.append(row)
        if progress:
            progress(1)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def flagged(table) -> list[str]:
    """Columns a confounder table flags (``is_confounder``), in table order; [] for no table."""
    if table is None or len(table) == 0:
        return []
    return table.loc[table["is_confounder"].astype(bool), "column"].astype(str).tolist()
