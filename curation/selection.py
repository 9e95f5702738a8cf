"""Budgeted, confounder-aware selection: ``select(inputs, config) -> SelectionResult``.

The selection is one pure function of cached analysis arrays and a frozen
:class:`SelectionConfig`. With no knob but the budget it is CheXficient's: the tail band plus
farthest-point sampling over each cluster's core, outliers dropped.

1. Eligibility: metadata filters, quality gates, near-duplicates (one representative kept per
   group), the outlier policy.
2. Strata: the product of the chosen confounder columns (missing values are a stratum of their
   own); none = one stratum.
3. Order inside a stratum: a tail queue (farthest from the prototype first, round-robin over
   clusters) and a core queue (FPS order, round-robin over clusters), merged at ``tail_core_ratio``.
4. Allocation across strata by a divisor method (Sainte-Lague): the j-th sample of stratum s gets
   the key (j + 0.5) / w_s, and the global order is the sort by key. ``w_s`` is the stratum's pool
   size (``proportional``), 1 (``balanced``), or the pool size to the power 1 - temper
   (``tempered``). A divisor method is house-monotone, so the selection at budget B is the first B
   of one cached order: a larger budget never removes a sample, a stratum that runs out is
   water-filled by the others, and no stratum gives more than it has.
5. Every pool sample gets a reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from curation.errors import CurationError

CONFIG_VERSION = 1
MODES = ("proportional", "balanced", "tempered")
OUTLIER_POLICIES = ("drop", "keep_last", "keep_first")
OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "not null")
MISSING = "(missing)"

# reason codes, one per pool sample
KEPT_TAIL, KEPT_CORE, KEPT_OUTLIER = "kept_tail", "kept_core_fps", "kept_outlier"
DROP_DUP, DROP_GATE, DROP_OUTLIER = "dropped_duplicate", "dropped_below_gate", "dropped_outlier"
DROP_FILTER, DROP_BUDGET = "dropped_filtered", "dropped_over_budget"


@dataclass(frozen=True)
class Filter:
    """Keep samples whose ``column`` satisfies ``op value`` (evaluated in numpy, never SQL)."""

    column: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class Gate:
    """A quality gate on one axis (``fidelity``, ``consistency``, ``reward_*``...).

    ``min_score``: keep samples whose rank score (0 = worst, 1 = best) is at least this;
    ``top_q``: keep the best ``top_q`` fraction (same as ``min_score = 1 - top_q``).
    """

    axis: str
    min_score: float | None = None
    top_q: float | None = None

    def threshold(self) -> float:
        if (self.min_score is None) == (self.top_q is None):
            raise CurationError(f"gate on {self.axis!r}: give exactly one of min_score or top_q.")
        t = self.min_score if self.min_score is not None else 1.0 - self.top_q
        if not 0.0 <= t <= 1.0:
            raise CurationError(f"gate on {self.axis!r}: min_score / top_q must be within [0, 1].")
        return t


@dataclass(frozen=True)
class SelectionConfig:
    """Every knob of a selection. Round-trips through JSON (:meth:`to_json`, :meth:`from_json`).

    Attributes
    ----------
    budget : int or float
        A count (``5000``) or a fraction of the pool (``0.25``, rounded to the nearest count).
    confounders : tuple of str
        Metadata columns whose product forms the strata.
    mode : "proportional" | "balanced" | "tempered"
    temper : float in [0, 1]
        For ``tempered``: 0 behaves as proportional, 1 as balanced.
    tail_core_ratio : float
        Tail picks per core pick inside a stratum (CheXficient's code implies about 0.44).
    outliers : "drop" | "keep_last" | "keep_first"
    dedup_eps : float or None
        Near-duplicates (cosine > 1 - eps) keep one representative; None keeps all.
    gates, filters : tuples of :class:`Gate` / :class:`Filter`
    seed : int
        Seeds the random baseline subset.
    """

    budget: float = 0.25
    confounders: tuple[str, ...] = ()
    mode: str = "proportional"
    temper: float = 0.5
    tail_core_ratio: float = 0.44
    outliers: str = "drop"
    dedup_eps: float | None = 0.05
    gates: tuple[Gate, ...] = ()
    filters: tuple[Filter, ...] = ()
    seed: int = 0
    version: int = CONFIG_VERSION

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["confounders"] = list(self.confounders)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "SelectionConfig":
        if not isinstance(d, dict):
            raise CurationError("a selection config must be a JSON object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CurationError(f"unknown selection config key(s) {unknown}. Fix: use only {sorted(known)}.")
        version = d.get("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise CurationError(f"selection config version {version} is not supported (this tool reads "
                                f"version {CONFIG_VERSION}). Fix: upgrade curation or re-create the config.")
        d = dict(d)
        try:
            d["confounders"] = tuple(d.get("confounders", ()))
            d["gates"] = tuple(g if isinstance(g, Gate) else Gate(**g) for g in d.get("gates", ()))
            d["filters"] = tuple(f if isinstance(f, Filter) else Filter(**f) for f in d.get("filters", ()))
        except TypeError as e:
            raise CurationError(f"bad gate or filter in selection config: {e}") from e
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "SelectionConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise CurationError(f"selection config is not valid JSON: {e}") from e

    def order_key(self) -> str:
        """Everything but the budget: configs with equal keys share one cached order."""
        d = self.to_dict()
        d.pop("budget")
        return json.dumps(d, sort_keys=True)

    def budget_count(self, n: int) -> int:
        """The budget as a count for a pool of ``n``."""
        b = self.budget
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
            raise CurationError(f"budget must be a positive count or a fraction in (0, 1]; got {b!r}.")
        if b <= 1 and not (isinstance(b, int) and b == 1):
            return int(round(b * n))
        if b != int(b):
            raise CurationError(f"budget {b} is neither a whole count nor a fraction in (0, 1].")
        if b > n:
            raise CurationError(f"budget {int(b)} is larger than the pool ({n} samples). "
                                f"Fix: use at most {n}, or a fraction such as 0.25.")
        return int(b)


@dataclass
class SelectionInputs:
    """The cached arrays a selection reads (all of length n, in row order).

    Attributes
    ----------
    ids : ndarray of str
    prototype, fps_rank : ndarray of int
    band : ndarray of str ("core" / "tail" / "outlier")
    proto_dist, tail_score : ndarray of float
    meta : pandas.DataFrame
        Metadata columns (for strata and filters).
    scores : dict {axis: ndarray of float in [0, 1] or all-NaN when not available}
    knn_nbr, knn_sim : ndarray (n, k), the stored kNN graph (duplicates at any eps)
    case : ndarray of int or None
    unavailable : dict {axis: reason} for score axes that cannot be used
    """

    ids: np.ndarray
    prototype: np.ndarray
    band: np.ndarray
    proto_dist: np.ndarray
    fps_rank: np.ndarray
    tail_score: np.ndarray
    meta: Any
    scores: dict
    knn_nbr: np.ndarray
    knn_sim: np.ndarray
    case: np.ndarray | None = None
    unavailable: dict = field(default_factory=dict)
    _dup_cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.ids)

    def duplicates(self, eps: float):
        """(group, is_dup) at ``eps``, cached per eps."""
        if eps not in self._dup_cache:
            from curation.density import duplicate_groups

            self._dup_cache[eps] = duplicate_groups(self.knn_nbr, self.knn_sim, eps, case=self.case,
                                                    keep_key=self.proto_dist)
        return self._dup_cache[eps]


@dataclass
class SelectionResult:
    """Outcome of :func:`select`.

    Attributes
    ----------
    order : ndarray of int
        Every eligible row in priority order (the selection is its first ``budget`` rows).
    selected : ndarray of int
        The selected rows, in rank order.
    reason : ndarray of str (n,)
        A reason code for every pool sample.
    detail : ndarray of str (n,)
        Human-readable detail ("duplicate of demo-000123", "fidelity score 0.04 < 0.10"...).
    stratum : ndarray of int (n,), stratum_labels : list of str
    summary : dict
    """

    order: np.ndarray
    selected: np.ndarray
    reason: np.ndarray
    detail: np.ndarray
    stratum: np.ndarray
    stratum_labels: list
    summary: dict

    def rank(self, n: int) -> np.ndarray:
        """Rank (0 = first) of each row in the selection, -1 for rows not selected."""
        r = np.full(n, -1, np.int64)
        r[self.selected] = np.arange(len(self.selected))
        return r


# ---------------------------------------------------------------------------------------------
def validate_config(cfg: SelectionConfig, inp: SelectionInputs) -> None:
    """Check every knob against the data; raise one clear :class:`CurationError`."""
    cols = list(inp.meta.columns)
    for c in cfg.confounders:
        if c not in cols:
            raise CurationError(f"unknown confounder column {c!r}. Fix: use one of: {', '.join(cols)}.")
    if cfg.mode not in MODES:
        raise CurationError(f"unknown mode {cfg.mode!r}. Fix: use one of {', '.join(MODES)}.")
    if not 0.0 <= cfg.temper <= 1.0:
        raise CurationError(f"temper must be within [0, 1]; got {cfg.temper}.")
    if not (math.isfinite(cfg.tail_core_ratio) and cfg.tail_core_ratio >= 0):
        raise CurationError(f"tail_core_ratio must be 0 or more; got {cfg.tail_core_ratio}.")
    if cfg.outliers not in OUTLIER_POLICIES:
        raise CurationError(f"unknown outlier policy {cfg.outliers!r}. Fix: use one of {', '.join(OUTLIER_POLICIES)}.")
    if cfg.dedup_eps is not None and not 0 < cfg.dedup_eps < 1:
        raise CurationError(f"dedup_eps must be in (0, 1) or null; got {cfg.dedup_eps}.")
    for g in cfg.gates:
        g.threshold()
        if g.axis in inp.unavailable:
            raise CurationError(f"cannot gate on {g.axis}: {inp.unavailable[g.axis]}.")
        if g.axis not in inp.scores:
            raise CurationError(f"unknown quality axis {g.axis!r}. Fix: use one of: {', '.join(inp.scores)}.")
    for f in cfg.filters:
        if f.column not in cols:
            raise CurationError(f"filter on unknown column {f.column!r}. Fix: use one of: {', '.join(cols)}.")
        if f.op not in OPERATORS:
            raise CurationError(f"unknown filter operator {f.op!r}. Fix: use one of {', '.join(OPERATORS)}.")
    cfg.budget_count(inp.n)


def _filter_mask(f: Filter, series) -> np.ndarray:
    import pandas as pd

    s = series
    if f.op == "is null":
        return s.isna().to_numpy()
    if f.op == "not null":
        return s.notna().to_numpy()
    if f.op in ("in", "not in"):
        vals = f.value if isinstance(f.value, (list, tuple)) else [f.value]
        m = s.isin(list(vals)).to_numpy()
        return m if f.op == "in" else ~m & s.notna().to_numpy()
    v = f.value
    if pd.api.types.is_numeric_dtype(s):
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise CurationError(f"filter {f.column} {f.op} {f.value!r}: the column is numeric, the value is not.") from None
    try:
        m = {"==": s == v, "!=": s != v, "<": s < v, "<=": s <= v, ">": s > v, ">=": s >= v}[f.op]
    except TypeError:
        raise CurationError(f"filter {f.column} {f.op} {f.value!r}: cannot compare that column with "
                            f"this value.") from None
    return m.fillna(False).to_numpy(dtype=bool)


def strata(meta, columns) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Stratum code per row for the product of ``columns`` (missing = its own level).

    Returns (codes (n,), labels, pool_sizes (n_strata,)).
    """
    import pandas as pd

    n = len(meta)
    if not columns:
        return np.zeros(n, np.int64), ["all"], np.array([n])
    parts = []
    for c in columns:
        s = meta[c]
        parts.append(s.astype(object).where(s.notna(), MISSING).astype(str))
    key = parts[0] if len(parts) == 1 else pd.Series([" | ".join(t) for t in zip(*parts)])
    codes, labels = pd.factorize(key, sort=True)
    return codes.astype(np.int64), [str(x) for x in labels], np.bincount(codes, minlength=len(labels))


def _round_robin_key(cluster: np.ndarray, rank_in_cluster: np.ndarray) -> np.ndarray:
    """Order that takes rank 0 of every cluster, then rank 1, ... (ties by cluster id)."""
    return np.lexsort((cluster, rank_in_cluster))


def _rank_within(groups: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """0-based rank of each element within its group when sorted by ``keys`` (first key first),
    ties by position."""
    n = len(groups)
    order = np.lexsort((np.arange(n), *keys[::-1], groups))
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    sizes = np.diff(np.r_[starts, n])
    r = np.empty(n, np.int64)
    r[order] = np.arange(n) - np.repeat(starts, sizes)
    return r


def select(inp: SelectionInputs, cfg: SelectionConfig) -> SelectionResult:
    """Select rows of the pool under ``cfg`` (pure: same inputs and config, same result).

    See the module docstring for the algorithm. Raises :class:`CurationError` for a bad config.
    """
    validate_config(cfg, inp)
    order, reason, detail, stratum, labels, pool_sizes = _order(inp, cfg)
    n = inp.n
    budget = cfg.budget_count(n)
    take = min(budget, len(order))
    selected = order[:take]
    reason = reason.copy()
    eligible_unselected = order[take:]
    reason[eligible_unselected] = DROP_BUDGET
    detail = detail.copy()
    detail[eligible_unselected] = "over budget"

    # invariants (the budget is split exactly and no stratum gives more than it has)
    counts = np.bincount(stratum[selected], minlength=len(labels))
    eligible = np.bincount(stratum[order], minlength=len(labels))
    assert len(selected) == min(budget, len(order))
    assert np.all(counts <= eligible)
    if cfg.mode == "balanced" and len(selected):
        open_ = counts < eligible  # strata not exhausted got equal shares (within one sample)
        if open_.any():
            assert counts[open_].max() - counts[open_].min() <= 1
            assert counts.max() <= counts[open_].max() + 1
    codes, n_codes = np.unique(reason, return_counts=True)
    summary = {
        "pool": n, "budget": budget, "selected": int(take), "eligible": int(len(order)),
        "shortfall": int(budget - take),
        "reasons": {str(c): int(m) for c, m in zip(codes, n_codes)},
        "strata": [{"stratum": labels[s], "pool": int(pool_sizes[s]), "eligible": int(eligible[s]),
                    "selected": int(counts[s])} for s in range(len(labels))],
    }
    return SelectionResult(order, selected, reason, detail, stratum, labels, summary)


def _order(inp: SelectionInputs, cfg: SelectionConfig):
    """The full priority order of eligible rows and the reasons of ineligible ones."""
    n = inp.n
    reason = np.full(n, "", dtype=object)
    detail = np.full(n, "", dtype=object)
    eligible = np.ones(n, bool)

    for f in cfg.filters:
        m = _filter_mask(f, inp.meta[f.column])
        newly = eligible & ~m
        reason[newly] = DROP_FILTER
        detail[newly] = f"filtered: {f.column} {f.op} {f.value!r}" if f.op not in ("is null", "not null") \
            else f"filtered: {f.column} {f.op}"
        eligible &= m
    for g in cfg.gates:
        t = g.threshold()
        s = inp.scores[g.axis]
        m = np.nan_to_num(s, nan=-1.0) >= t
        newly = eligible & ~m
        reason[newly] = DROP_GATE
        detail[newly] = [f"{g.axis} score {v:.3f} < {t:.3f}" for v in s[newly]]
        eligible &= m
    if cfg.dedup_eps is not None:
        group, is_dup = inp.duplicates(cfg.dedup_eps)
        newly = eligible & is_dup
        reason[newly] = DROP_DUP
        detail[newly] = [f"duplicate of {inp.ids[g]}" for g in group[newly]]
        eligible &= ~is_dup
    outlier = inp.band == "outlier"
    if cfg.outliers == "drop":
        newly = eligible & outlier
        reason[newly] = DROP_OUTLIER
        detail[newly] = "outlier: farther from its prototype than the tail band"
        eligible &= ~outlier

    stratum, labels, pool_sizes = strata(inp.meta, list(cfg.confounders))
    rows = np.flatnonzero(eligible)
    st = stratum[rows]
    cl = inp.prototype[rows]
    band = inp.band[rows]
    # within-stratum queues: tail farthest-first and core by FPS rank, each round-robin over clusters
    is_tail = band == "tail"
    is_out = band == "outlier"
    is_core = ~is_tail & ~is_out
    group_key = st * (int(inp.prototype.max()) + 1) + cl  # (stratum, cluster)
    tail_rank = _rank_within(np.where(is_tail, group_key, -1), -inp.proto_dist[rows])
    core_rank = _rank_within(np.where(is_core, group_key, -1), inp.fps_rank[rows].astype(np.float64))
    out_rank = _rank_within(np.where(is_out, group_key, -1), -inp.proto_dist[rows])
    # position in each queue = round-robin over clusters of the stratum
    pos = np.zeros(len(rows), np.float64)
    for mask, rk in ((is_tail, tail_rank), (is_core, core_rank), (is_out, out_rank)):
        idx = np.flatnonzero(mask)
        if len(idx):
            rr = np.lexsort((cl[idx], rk[idx], st[idx]))  # by stratum, then rank, then cluster
            s_sorted = st[idx][rr]
            q = _rank_within(s_sorted, np.arange(len(rr), dtype=np.float64))
            pos[idx[rr]] = q
    # merge tail and core at the ratio: the i-th item of a queue with share p comes at (i + 0.5) / p;
    # tiers put kept outliers first or last, and tail items last when the ratio is 0
    r = cfg.tail_core_ratio
    within = pos.copy()
    tier = np.ones(len(rows), np.int8)
    within[is_core] = (pos[is_core] + 0.5) * (1.0 + r)
    if r > 0:
        within[is_tail] = (pos[is_tail] + 0.5) * (1.0 + r) / r
    else:
        tier[is_tail] = 2
    tier[is_out] = 0 if cfg.outliers == "keep_first" else 3
    seq = _rank_within(st, tier, within)  # position of each eligible row inside its stratum's order
    if cfg.mode == "proportional":
        w = pool_sizes.astype(np.float64)
    elif cfg.mode == "balanced":
        w = np.ones(len(labels))
    else:
        w = pool_sizes.astype(np.float64) ** (1.0 - cfg.temper)
    w = np.maximum(w, 1e-12)
    key = (seq + 0.5) / w[st]
    order = rows[np.lexsort((rows, st, key))]
    kept_reason = np.where(is_tail, KEPT_TAIL, np.where(is_core, KEPT_CORE, KEPT_OUTLIER))
    reason[rows] = kept_reason
    detail[rows] = [f"stratum {labels[s]}" for s in st] if len(labels) > 1 else ""
    return order, reason, detail, stratum, labels, pool_sizes


# ---------------------------------------------------------------------------------------------
def load_inputs(store, run_id: str | None = None) -> SelectionInputs:
    """Read the arrays a selection needs from a dataset's analysis run."""
    import pandas as pd

    from curation import analysis
    from curation import schema as S
    from curation.quality import NOT_SHARED

    df, _ = analysis.load(store, run_id)
    run_id = run_id or analysis.latest_run(store)
    missing = [c for c in ("prototype", "band", "fps_rank", "tail_score") if c not in df.columns]
    if missing:
        raise CurationError(f"analysis {run_id} lacks {missing}. Fix: run `python -m curation analyze "
                            f"{store.path}` with the prototypes and density steps.")
    knn = analysis.load_table(store, run_id, "knn")
    nbr = np.stack(knn["nbr"].to_numpy()).astype(np.int64)
    sim = np.stack(knn["sim"].to_numpy()).astype(np.float32)
    meta = store.samples(store.metadata_columns())
    ids = store.samples([S.ID])[S.ID].to_numpy().astype(str)
    scores, unavailable = {}, {}
    for axis in ("fidelity", "consistency"):
        col = f"{axis}_score"
        if col in df.columns and df[col].notna().any():
            scores[axis] = df[col].to_numpy(np.float64)
        else:
            unavailable[axis] = NOT_SHARED if axis == "fidelity" else "not computed (run the quality step)"
    for col in df.columns:  # reward model scores, when present
        if col.startswith("reward_") and col.endswith("_score"):
            scores[col[: -len("_score")]] = df[col].to_numpy(np.float64)
    case_col = store.meta.get("case_column")
    case = pd.factorize(meta[case_col].astype(str))[0] if case_col in meta.columns else None
    return SelectionInputs(ids=ids, prototype=df["prototype"].to_numpy(), band=df["band"].to_numpy(str),
                           proto_dist=df["proto_dist"].to_numpy(np.float64),
                           fps_rank=df["fps_rank"].to_numpy(), tail_score=df["tail_score"].to_numpy(),
                           meta=meta, scores=scores, knn_nbr=nbr, knn_sim=sim, case=case,
                           unavailable=unavailable)
