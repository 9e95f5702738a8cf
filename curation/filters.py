"""How a selection reads metadata columns: typed filters (booleans as booleans, numbers as numbers,
text as text; a comparison that would not mean what it says is refused) and strata (the product of
confounder columns, missing values a level of their own, keys that never overflow)."""

from __future__ import annotations

import numpy as np

from curation.errors import CurationError
from curation.schema import UnusableColumn, category_values
from curation.selection_config import MISSING, Filter, _is_num


ORDER_OPS = ("<", "<=", ">", ">=")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def column_kind(series) -> str:
    """How a filter reads a metadata column: "boolean", "numeric" or "text" (anything else:
    nested values by their JSON text, see :func:`curation.schema.category_values`)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return "boolean"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    if series.dtype == object:
        kinds = set(series.dropna().map(type))
        if kinds and kinds <= {bool, np.bool_}:
            return "boolean"
    return "text"


def _coerce(f: Filter, value, kind: str):
    """A filter value in the column's terms: a number for a numeric column, True/False for a
    boolean one (``true``/``false``, ``1``/``0``), text otherwise (so ``site == 1`` matches the
    text "1", and ``age in 30,40`` compares numbers as ``age == 30`` does)."""
    if kind == "numeric":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise CurationError(f"filter {f.column} {f.op} {f.value!r}: the column is numeric, {value!r} is not "
                                f"a number.") from None
    if kind == "boolean":
        text = str(value).strip().lower()
        if isinstance(value, (bool, np.bool_)) or text in _TRUE + _FALSE:
            return bool(value) if isinstance(value, (bool, np.bool_)) else text in _TRUE
        raise CurationError(f"filter {f.column} {f.op} {f.value!r}: the column is true/false, {value!r} is "
                            f"neither. Fix: use {f.column} == true (or false).")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def check_filter(f: Filter, series) -> str:
    """Refuse a filter that cannot mean what it says on this column; return the column's kind.

    A list value needs ``in`` / ``not in``; a true/false column takes ``==``, ``!=``, ``in``
    and the null tests; ``<``, ``<=``, ``>``, ``>=`` with a number on a text column would compare
    text ('4' >= '30' is true), so it is refused, naming a value that is not a number."""
    kind = column_kind(series)
    if isinstance(f.value, (list, tuple)) and f.op not in ("in", "not in"):
        raise CurationError(f"filter {f.column} {f.op} {f.value!r}: a list of values needs `in` or `not in`. "
                            f"Fix: {f.column} in {','.join(map(str, f.value))}.")
    if f.op in ("in", "not in") and not isinstance(f.value, (list, tuple)):
        raise CurationError(f"filter {f.column} {f.op} {f.value!r}: `{f.op}` takes a list of values.")
    if kind == "boolean" and f.op in ORDER_OPS:
        raise CurationError(f"filter {f.column} {f.op}: the column is true/false. Fix: use == or !=.")
    if kind == "text" and f.op in ORDER_OPS and _is_num(f.value):
        text = series.dropna().astype(str)
        num = text.str.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
        example = f" (e.g. {text[~num].iloc[0]!r})" if (~num).any() else ""
        raise CurationError(f"filter {f.column} {f.op} {f.value!r}: the column holds text{example}, so a number "
                            f"comparison would compare text ('4' >= '30'). Fix: clean the column (ingest "
                            f"with --column-types {f.column}=number) or filter with == / in.")
    return kind


def _filter_mask(f: Filter, series) -> np.ndarray:
    """Rows that pass ``f``. One rule for missing values: they match only ``is null``; every other
    operator (``!=`` and ``not in`` included) leaves them out."""

    s = series
    present = s.notna().to_numpy()
    if f.op == "is null":
        return ~present
    if f.op == "not null":
        return present
    kind = check_filter(f, s)
    if kind == "numeric":
        col = s
    elif kind == "boolean":
        col = s.astype(object).where(s.notna(), None)
    else:
        s = category_values(s)
        col = s.astype(object).where(s.notna(), None).map(lambda x: None if x is None else str(x))
    if f.op in ("in", "not in"):
        m = col.isin([_coerce(f, v, kind) for v in f.value]).to_numpy()
        return (m if f.op == "in" else ~m) & present
    v = _coerce(f, f.value, kind)
    try:
        m = {"==": col == v, "!=": col != v, "<": col < v, "<=": col <= v, ">": col > v, ">=": col >= v}[f.op]
    except TypeError:
        raise CurationError(f"filter {f.column} {f.op} {f.value!r}: cannot compare that column with "
                            f"this value.") from None
    return m.fillna(False).to_numpy(dtype=bool) & present


def factorize_column(series) -> tuple[np.ndarray, list[str]]:
    """Codes and sorted level labels of one metadata column; missing values are a level.

    Nested values (lists, structs, maps) are levels by their JSON text, decimals by their value
    (:func:`curation.schema.category_values`); binary data is refused."""
    import pandas as pd


    try:
        series = category_values(series)
    except UnusableColumn as e:
        raise CurationError(f"{e}: it cannot form strata. Fix: choose another column.") from None
    codes, levels = pd.factorize(series, sort=True, use_na_sentinel=True)
    labels = [str(x) for x in levels]
    if (codes < 0).any():
        codes = np.where(codes < 0, len(labels), codes)
        labels.append(MISSING)
    return codes.astype(np.int64), labels


def strata(meta, columns, cache: dict | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Stratum code per row for the product of ``columns`` (missing = its own level).

    Combines per-column codes arithmetically (no per-row strings), in column order, so strata sort
    lexicographically by their levels. When the product of the level counts would not fit in an
    int64 the combined codes are renumbered (``np.unique``, order kept) before the next column, so
    a key never overflows into another stratum's. Only combinations present in the pool become
    strata. ``cache`` ({column: (codes, labels)}) supplies precomputed columns. Returns (codes (n,),
    labels, pool_sizes (n_strata,)).
    """
    n = len(meta)
    if not columns:
        return np.zeros(n, np.int64), ["all"], np.array([n])
    combined = np.zeros(n, np.int64)
    span = 1                               # combined < span
    parts = np.zeros((1, 0), np.int64)     # combined value -> level index per column so far (when renumbered)
    per_col = []
    for c in columns:
        if cache is not None and c in cache:
            codes, labels = cache[c]
        else:
            codes, labels = factorize_column(meta[c])
        L = max(len(labels), 1)
        if span > (2 ** 62) // L:  # renumber the present combinations first
            parts = _decode(np.unique(combined), parts, per_col)
            present, combined = np.unique(combined, return_inverse=True)
            combined = combined.astype(np.int64)
            span, per_col = len(present), [None]
        combined = combined * L + codes
        span *= L
        per_col.append(labels)
    present, codes = np.unique(combined, return_inverse=True)
    table = _decode(present, parts, per_col)
    labels = [" | ".join(row) for row in table]
    return codes.astype(np.int64), labels, np.bincount(codes, minlength=len(present))


def _decode(values: np.ndarray, parts, per_col: list) -> list:
    """Level labels per column of combined ``values`` (mixed radix over ``per_col``; a ``None``
    digit stands for an earlier renumbering whose rows are ``parts``)."""
    out = []
    for v in values.tolist():
        row = []
        for lab in reversed(per_col):
            if lab is None:
                row.extend(reversed(parts[v]))
                break
            row.append(lab[v % len(lab)])
            v //= len(lab)
        out.append(list(reversed(row)))
    return out
