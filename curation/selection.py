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

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from curation import atomic
from curation.errors import CurationError
from curation.filters import _filter_mask, check_filter, factorize_column, strata
from curation.selection_config import (CONFIG_VERSION, MISSING, MODES, OPERATORS, OUTLIER_POLICIES, QUALITY_AXES,
                                       TAILS, V2_DEFAULTS, Filter, Gate, SelectionConfig, make_filter,
                                       parse_budget, parse_cluster_list, parse_filter, parse_gate)
from curation.selection_inputs import (SelectionCache, SelectionInputs, _frozen, load_inputs, order_store_folder,
                                      stable_argsort)
from curation.selection_order import density_order, pool_orders, tail_rank

__all__ = ["CONFIG_VERSION", "MISSING", "MODES", "OPERATORS", "OUTLIER_POLICIES", "QUALITY_AXES", "TAILS",
           "V2_DEFAULTS", "Filter", "Gate", "SelectionConfig", "SelectionCache", "SelectionInputs", "SelectionResult",
           "load_inputs", "make_filter", "parse_budget", "parse_cluster_list", "parse_filter", "parse_gate",
           "select", "strata", "validate_config", "factorize_column", "order_store_folder"]

log = logging.getLogger(__name__)


# reason codes, one per pool sample
KEPT_TAIL, KEPT_CORE, KEPT_OUTLIER = "kept_tail", "kept_core_fps", "kept_outlier"
DROP_DUP, DROP_GATE, DROP_OUTLIER = "dropped_duplicate", "dropped_below_gate", "dropped_outlier"
DROP_FILTER, DROP_BUDGET = "dropped_filtered", "dropped_over_budget"
DROP_GUARD = "dropped_low_fidelity"
DROP_RULE, KEPT_RULE = "dropped_by_rule", "kept_by_rule"
DROP_CAPTION_GUARD = "dropped_low_caption_quality"
REASONS = (KEPT_TAIL, KEPT_CORE, KEPT_OUTLIER, DROP_DUP, DROP_GATE, DROP_OUTLIER, DROP_FILTER, DROP_BUDGET,
           DROP_GUARD, DROP_RULE, KEPT_RULE, DROP_CAPTION_GUARD)  # new reasons go last: stored codes keep their meaning
KEPT_REASONS = (KEPT_TAIL, KEPT_CORE, KEPT_OUTLIER, KEPT_RULE)
_CODE = {r: np.int8(i) for i, r in enumerate(REASONS)}

@dataclass
class SelectionResult:
    """Outcome of :func:`select`.

    Attributes
    ----------
    order : ndarray of int
        Every eligible row in priority order (the selection is its first ``budget`` rows).
    selected : ndarray of int
        The selected rows, in rank order.
    code : ndarray of int8 (n,)
        Reason of every pool sample as an index into :data:`REASONS` (see :attr:`reason`).
    which : ndarray of int16 (n,)
        For filtered / gated samples, the index of the filter / gate that dropped them.
    stratum : ndarray of int (n,), stratum_labels : list of str
    summary : dict
    """

    order: np.ndarray
    selected: np.ndarray
    code: np.ndarray
    which: np.ndarray
    stratum: np.ndarray
    stratum_labels: list
    summary: dict

    @property
    def reason(self) -> np.ndarray:
        """Reason code names (str) of every pool sample."""
        return np.asarray(REASONS, dtype=object)[self.code]

    def rank(self, n: int) -> np.ndarray:
        """Rank (0 = first) of each row in the selection, -1 for rows not selected."""
        r = np.full(n, -1, np.int64)
        r[self.selected] = np.arange(len(self.selected))
        return r

    def details(self, inp: "SelectionInputs", cfg: "SelectionConfig",
                cache: SelectionCache | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Human-readable explanation of the reasons of the pool samples ``rows`` (all when None):
        "duplicate of demo-000123", "fidelity score 0.040 < 0.100", "stratum site_A"... Built on
        demand (export: all rows; the inspector: one), never on a knob change."""
        rows = np.arange(inp.n) if rows is None else np.atleast_1d(np.asarray(rows, np.int64))
        out = np.full(len(rows), "", dtype=object)
        code, which = self.code[rows], self.which[rows]
        kept = np.isin(code, [_CODE[r] for r in KEPT_REASONS])
        if len(self.stratum_labels) > 1:
            labels = np.asarray([f"stratum {x}" for x in self.stratum_labels], dtype=object)
            out[kept] = labels[self.stratum[rows][kept]]
        for i, f in enumerate(cfg.filters):
            m = (code == _CODE[DROP_FILTER]) & (which == i)
            out[m] = f"filtered: {f.column} {f.op}" + ("" if f.op in ("is null", "not null") else f" {f.value!r}")
        for i, g in enumerate(cfg.gates):
            m = np.flatnonzero((code == _CODE[DROP_GATE]) & (which == i))
            t = g.threshold()
            out[m] = [f"{g.axis} score {v:.3f} < {t:.3f}" for v in inp.scores[g.axis][rows[m]]]
        if cfg.dedup_eps is not None:
            m = np.flatnonzero(code == _CODE[DROP_DUP])
            if len(m):
                group, _ = inp.duplicates(cfg.dedup_eps, cache)
                out[m] = [f"duplicate of {x}" for x in inp.id_of(group[rows[m]])]
        out[code == _CODE[DROP_OUTLIER]] = "outlier: farther from its prototype than the tail band"
        if cfg.exclude_clusters or cfg.exclude_sets:
            out[code == _CODE[DROP_RULE]] = "excluded by a rule: " + "; ".join(
                [f"cluster {c}" for c in cfg.exclude_clusters] + [f"set {r}" for r in cfg.exclude_sets])
        if cfg.include_sets:
            out[code == _CODE[KEPT_RULE]] = "included by a rule: set " + ", ".join(cfg.include_sets)
        if cfg.fidelity_guard:
            out[code == _CODE[DROP_GUARD]] = (f"quality guard: among the {cfg.fidelity_guard:.0%} lowest image-text "
                                              "fidelity of the pool")
        if cfg.caption_guard:
            out[code == _CODE[DROP_CAPTION_GUARD]] = (f"quality guard: among the {cfg.caption_guard:.0%} lowest caption "
                                                      "quality of the pool (placeholders, content-free captions)")
        out[code == _CODE[DROP_BUDGET]] = "eligible, over budget"
        return out



# ---------------------------------------------------------------------------------------------
def validate_config(cfg: SelectionConfig, inp: SelectionInputs) -> None:
    """Check every knob against the data (its bounds first, :meth:`SelectionConfig.check`); raise
    one clear :class:`CurationError`."""
    cols = list(inp.meta.columns)
    for c in cfg.confounders:
        if c not in cols:
            raise CurationError(f"unknown confounder column {c!r}. Fix: use one of: {', '.join(cols)}.")
    cfg.check()
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
        if f.op not in ("is null", "not null"):
            check_filter(f, inp.meta[f.column])
    k = int(inp.prototype.max()) + 1 if inp.n else 0
    bad = [c for c in cfg.exclude_clusters if not 0 <= c < k]
    if bad:
        raise CurationError(f"exclude_clusters {bad}: this analysis has clusters 0..{k - 1}.")
    for ref in (*cfg.exclude_sets, *cfg.include_sets):
        if ref not in inp.id_sets:
            name = ref.split("@", 1)[0]
            same = [r for r in inp.id_sets if r.split("@", 1)[0] == name]
            raise CurationError(f"id set {ref!r} is not in this dataset" + (
                f" (a set named {name} exists as {same[0]}: it was changed after this config was made)" if same else "")
                + ". Fix: save the set again (select --exclude-ids FILE / the app), or drop the rule.")
    cfg.budget_count(inp.n)


def _bottom(inp: SelectionInputs, axis: str, q: float) -> np.ndarray:
    """Rows in the pool's bottom ``q`` of a quality axis: the lowest ``floor(q x n)`` scores, ties
    by row, missing scores lowest."""
    v = np.nan_to_num(inp.scores[axis], nan=-1.0)
    order = stable_argsort(v)  # ties by row, as lexsort((rows, v)) gave, 3x faster at 10M
    low = np.zeros(inp.n, bool)
    low[order[: int(np.floor(q * inp.n))]] = True
    return _frozen(low)


def _cluster_best(inp: SelectionInputs, axis: str, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """For each prototype cluster with rows in ``before`` but none in ``after``: its best row of
    ``before`` by ``axis`` (ties: the later row). A mask of those rows."""
    cl = inp.prototype.astype(np.int64)
    k = int(cl.max()) + 1 if inp.n else 0
    lost = (np.bincount(cl[before], minlength=k) > 0) & (np.bincount(cl[after], minlength=k) == 0)
    out = np.zeros(inp.n, bool)
    if lost.any():
        rows = np.flatnonzero(before & lost[cl])
        v = np.nan_to_num(inp.scores[axis], nan=-1.0)[rows]
        o = rows[np.lexsort((rows, v))]  # ascending: the last write per cluster is its best
        best = np.full(k, -1, np.int64)
        best[cl[o]] = o
        out[best[best >= 0]] = True
    return out


def _low_fidelity(inp: SelectionInputs, q: float, axis: str = "fidelity") -> np.ndarray:
    """Rows one quality guard alone leaves out of the pool: the bottom ``q`` of ``axis``, except
    each cluster's best row when the cluster has no other (see :func:`select`'s guards)."""
    low = _bottom(inp, axis, q)
    return _frozen(low & ~_cluster_best(inp, axis, np.ones(inp.n, bool), ~low))


def _strata_cached(inp: SelectionInputs, columns: list, cache: SelectionCache | None):
    if cache is None:
        return strata(inp.meta, columns)

    def build():
        col_codes = {c: cache.get((inp.key, "column", c), lambda c=c: factorize_column(inp.meta[c])) for c in columns}
        return strata(inp.meta, columns, col_codes)

    # the combination too (an np.unique of the pool: 0.5 s of a knob change at 10M rows)
    return cache.get((inp.key, "strata", tuple(columns)), build)


def _rank_within(groups: np.ndarray, key: np.ndarray, key_span: int) -> np.ndarray:
    """0-based rank of each element within its group, ordered by the integer ``key`` (ties by
    position). ``key`` must lie in [0, key_span)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, np.int64)
    assert key.min() >= 0 and key.max() < key_span, "a rank key outside its span would mix groups"
    composite = groups.astype(np.int64) * int(key_span) + key.astype(np.int64)
    order = stable_argsort(composite)
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    sizes = np.diff(np.r_[starts, n])
    r = np.empty(n, np.int64)
    r[order] = np.arange(n) - np.repeat(starts, sizes)
    return r


def select(inp: SelectionInputs, cfg: SelectionConfig, cache: SelectionCache | None = None) -> SelectionResult:
    """Select rows of the pool under ``cfg`` (pure: same inputs and config, same result).

    Parameters
    ----------
    inp : SelectionInputs
    cfg : SelectionConfig
    cache : SelectionCache, optional
        Keeps the priority order per config-without-budget: a budget change then only takes a
        prefix (milliseconds at 1M rows) and never recomputes the order. Never shared between
        callers; ``inp`` is never changed.

    See the module docstring for the algorithm. Raises :class:`CurationError` for a bad config.
    """
    validate_config(cfg, inp)
    if cache is None:
        cached = _stored_order(inp, cfg, None)
    else:
        cached = cache.get((inp.key, "order", cfg.order_key()), lambda: _stored_order(inp, cfg, cache))
    order, code0, which, stratum, labels, pool_sizes, eligible, matching_nothing = cached
    n = inp.n
    budget = cfg.budget_count(n)
    take = min(budget, len(order))
    selected = order[:take]
    code = code0.copy()
    code[order[take:]] = _CODE[DROP_BUDGET]

    # invariants (the budget is split exactly and no stratum gives more than it has)
    counts = np.bincount(stratum[selected], minlength=len(labels))
    assert len(selected) == min(budget, len(order))
    assert np.all(counts <= eligible)
    if cfg.mode == "balanced" and len(selected) and not cfg.include_sets:
        open_ = counts < eligible  # strata not exhausted got equal shares (within one sample)
        if open_.any():
            assert counts[open_].max() - counts[open_].min() <= 1
            assert counts.max() <= counts[open_].max() + 1
    n_codes = np.bincount(code, minlength=len(REASONS))
    summary = {
        "pool": n, "budget": budget, "selected": int(take), "eligible": int(len(order)),
        "shortfall": int(budget - take),
        "filters_matching_nothing": list(matching_nothing),  # indices into cfg.filters, no pool row passes
        "reasons": {r: int(m) for r, m in zip(REASONS, n_codes) if m},
        "strata": [{"stratum": labels[s], "pool": int(pool_sizes[s]), "eligible": int(eligible[s]),
                    "selected": int(counts[s])} for s in range(len(labels))],
        "fidelity_guard": ("off" if not cfg.fidelity_guard else
                           "not applied: " + inp.unavailable.get("fidelity", "no fidelity scores")
                           if "fidelity" not in inp.scores else f"applied (bottom {cfg.fidelity_guard:g} of the pool)"),
        "caption_guard": ("off" if not cfg.caption_guard else
                          "not applied: " + inp.unavailable.get("caption", "no caption scores")
                          if "caption" not in inp.scores else f"applied (bottom {cfg.caption_guard:g} of the pool)"),
    }
    return SelectionResult(order, selected, code, which, stratum, labels, summary)


def _order(inp: SelectionInputs, cfg: SelectionConfig, cache: SelectionCache | None):
    """The full priority order of eligible rows and the reasons of ineligible ones."""
    n = inp.n
    code = np.full(n, -1, np.int8)
    which = np.full(n, -1, np.int16)
    eligible = np.ones(n, bool)

    # rules first: they are the user's own decisions about these rows
    excluded = np.isin(inp.prototype, np.asarray(cfg.exclude_clusters, np.int64)) if cfg.exclude_clusters \
        else np.zeros(n, bool)
    for ref in cfg.exclude_sets:
        excluded[inp.id_sets[ref]] = True
    forced = np.zeros(n, bool)
    for ref in cfg.include_sets:
        forced[inp.id_sets[ref]] = True
    forced &= ~excluded
    code[excluded] = _CODE[DROP_RULE]
    eligible &= ~excluded & ~forced  # forced rows skip every other rule and go first

    matching_nothing = []
    for i, f in enumerate(cfg.filters):
        m = _filter_mask(f, inp.meta[f.column])
        if not m.any():
            matching_nothing.append(i)
        newly = eligible & ~m
        code[newly], which[newly] = _CODE[DROP_FILTER], i
        eligible &= m
    for i, g in enumerate(cfg.gates):
        m = np.nan_to_num(inp.scores[g.axis], nan=-1.0) >= g.threshold()
        newly = eligible & ~m
        code[newly], which[newly] = _CODE[DROP_GATE], i
        eligible &= m
    # the quality guards: each axis's bottom q is not eligible, except that a cluster whose every
    # still-eligible row the guards would take keeps its best one (by the first guarded axis), so
    # no cluster leaves the subset because of the guards, two guards together included
    guards = [(axis, q, c) for axis, q, c in (("fidelity", cfg.fidelity_guard, DROP_GUARD),
                                             ("caption", cfg.caption_guard, DROP_CAPTION_GUARD))
              if q and axis in inp.scores]
    if guards:
        lows = [(_bottom(inp, axis, q) if cache is None else
                 cache.get((inp.key, "guard", axis, float(q)), lambda a=axis, q=q: _bottom(inp, a, q)), c)
                for axis, q, c in guards]
        any_low = np.zeros(n, bool)
        for low, _ in lows:
            any_low |= low
        rescue = _cluster_best(inp, guards[0][0], eligible, eligible & ~any_low)
        for low, c in lows:
            hit = eligible & low & ~rescue
            code[hit] = _CODE[c]
            eligible &= ~hit
    if cfg.dedup_eps is not None:
        _, is_dup = inp.duplicates(cfg.dedup_eps, cache)
        code[eligible & is_dup] = _CODE[DROP_DUP]
        eligible &= ~is_dup
    outlier = inp.band_code == 2
    if cfg.outliers == "drop":
        code[eligible & outlier] = _CODE[DROP_OUTLIER]
        eligible &= ~outlier

    stratum, labels, pool_sizes = _strata_cached(inp, list(cfg.confounders), cache)
    n_st = len(labels)
    if cfg.mode == "proportional":
        w = pool_sizes.astype(np.float64)
    elif cfg.mode == "balanced":
        w = np.ones(len(labels))
    else:
        w = pool_sizes.astype(np.float64) ** (1.0 - cfg.temper)
    w = np.maximum(w, 1e-12)
    rows = np.flatnonzero(eligible)
    fast = None
    if cfg.tail == "density" and n >= FAST_ORDER_MIN_ROWS:
        orders = (pool_orders(inp) if cache is None else cache.get((inp.key, "pool_orders"), lambda: pool_orders(inp)))
        apart = outlier if cfg.outliers != "keep" else np.zeros(n, bool)  # outliers in a tier of their own
        fast = density_order(inp, eligible, stratum, n_st, apart, cfg.outliers == "keep_first", cfg.tail_core_ratio,
                             w, orders)
    if fast is not None:
        order, took = fast
        is_out, took_tail = apart[rows], took[rows]
    else:
        order, is_out, took_tail = _order_by_sorting(inp, cfg, rows, stratum, n_st, w, cache)
    code[rows] = np.where(is_out, _CODE[KEPT_OUTLIER], np.where(took_tail, _CODE[KEPT_TAIL], _CODE[KEPT_CORE]))
    first = np.flatnonzero(forced)
    code[first] = _CODE[KEPT_RULE]
    order = np.concatenate([first, order]).astype(np.int64)
    eligible_per_stratum = np.bincount(stratum[order], minlength=len(labels))
    return order, code, which, stratum, labels, pool_sizes, eligible_per_stratum, matching_nothing


# --- orders kept between processes ---------------------------------------------------------------
# At 10M rows a config's order takes seconds to compute and about 60 MB to keep: a new app session,
# a restarted server or the next `select` of the same config reads it instead. Pools from
# ORDER_STORE_MIN_ROWS only (below, computing is faster than a file); the ORDER_STORE_MAX_FILES most
# recently used orders of a dataset are kept.
ORDER_STORE_MIN_ROWS = 200_000
ORDER_STORE_MAX_FILES = 8


@lru_cache(maxsize=1)
def _code_version() -> str:
    """A hash of the package's code and version: any other code (a new release, an edit) never
    reads an order an older one computed (the order depends on more modules than selection's)."""
    from curation import __version__

    h = hashlib.blake2b(__version__.encode(), digest_size=16)
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def order_file(inp: SelectionInputs, cfg: SelectionConfig) -> Path | None:
    """The file that keeps the order of ``cfg`` on ``inp`` (None: not kept on disk). Named by a
    hash of the data (:attr:`SelectionInputs.key`: fingerprint, analysis run and when it was
    recorded, reward scores, id sets), every knob but the budget, and the package's code and version."""
    if inp.order_store is None or inp.n < ORDER_STORE_MIN_ROWS:
        return None
    try:
        code = _code_version()
    except OSError:  # an install without the .py files: nothing to tell versions apart by
        return None
    name = hashlib.blake2b(f"{code}\n{inp.key}\n{cfg.order_key()}".encode(), digest_size=16).hexdigest()
    return Path(inp.order_store) / f"order-{name}.npz"


def _stored_order(inp: SelectionInputs, cfg: SelectionConfig, cache: SelectionCache | None):
    """:func:`_order`, read from the dataset's order store when an earlier process computed it,
    else computed and written there (a failed read or write only costs the computation)."""
    path = order_file(inp, cfg)
    if path is None:
        return _order(inp, cfg, cache)
    got = _read_order(path, inp.n)
    if got is not None:
        return got
    # read-only: the same arrays are in the session's cache, in every result and in the writer's hands
    value = tuple(_frozen(v) if isinstance(v, np.ndarray) else v for v in _order(inp, cfg, cache))
    # written by a thread (about 0.2 s at 10M rows, which a knob change would otherwise wait for);
    # the arrays are never changed after this, and the process waits for the thread before it exits
    writer = threading.Thread(target=_write_order, args=(path, value), name="curation-order-store")
    with _writers_lock:
        _writers[:] = [w for w in _writers if w.is_alive()] + [writer]
    writer.start()
    return value


_writers: list = []
_writers_lock = threading.Lock()


def flush_order_store(timeout: float | None = None) -> None:
    """Wait until the orders being written to order stores are on disk."""
    with _writers_lock:
        pending = list(_writers)
    for w in pending:
        w.join(timeout)


def _read_order(path: Path, n: int):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            head = json.loads(str(z["head"]))
            order = z["order"].astype(np.int64)
            code, which, stratum = z["code"], z["which"], z["stratum"].astype(head["stratum_dtype"])
            pool_sizes, eligible = z["pool_sizes"], z["eligible"]
        if not (len(code) == len(which) == len(stratum) == n and head["n"] == n and len(order) <= n
                and (len(order) == 0 or 0 <= order.min() <= order.max() < n)
                and len(pool_sizes) == len(eligible) == len(head["labels"])):
            raise ValueError("shapes do not match the pool")
    except Exception as e:  # a damaged or foreign file in any way: the order is computed again
        log.info("ignoring the stored order %s (%s: %s); computing it", path, type(e).__name__, e)
        return None
    try:
        os.utime(path)  # most recently used: the last to be removed
    except OSError:
        pass
    return (_frozen(order), _frozen(code), _frozen(which.astype(np.int16)), _frozen(stratum), list(head["labels"]),
            _frozen(pool_sizes), _frozen(eligible), list(head["matching_nothing"]))


def _write_order(path: Path, value) -> None:
    order, code, which, stratum, labels, pool_sizes, eligible, matching_nothing = value
    n = len(code)
    head = {"n": n, "labels": [str(x) for x in labels], "matching_nothing": [int(i) for i in matching_nothing],
            "stratum_dtype": str(stratum.dtype)}
    # the smallest types that hold the values (cast back on reading): 10M rows take about 60 MB
    small = np.int32 if n < 2**31 else np.int64
    which_t = np.int8 if len(which) == 0 or int(which.max()) < 127 else np.int16

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, head=np.array(json.dumps(head)), order=order.astype(small), code=code,
                     which=which.astype(which_t), stratum=stratum.astype(np.min_scalar_type(max(len(labels) - 1, 0))),
                     pool_sizes=pool_sizes, eligible=eligible)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.remove_stale_temps(path)  # a process killed while writing this order
        atomic.atomic_write(path, write, what="a stored selection order")
        kept = sorted(path.parent.glob("order-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[ORDER_STORE_MAX_FILES:]:
            old.unlink(missing_ok=True)
    except Exception as e:  # a read-only data folder, a full disk: the order stays in memory (a cache)
        log.info("selection order not stored in %s (%s: %s)", path.parent, type(e).__name__, e)


# pools from this size take the counting path (curation.selection_order) for the default queues:
# below it the sorts take milliseconds and numba's start (about 0.5 s per process) would not pay
FAST_ORDER_MIN_ROWS = 200_000


def _order_by_sorting(inp, cfg, rows, stratum, n_st, w, cache):
    """The eligible ``rows`` in priority order by sorts (any ``cfg.tail``); with (is_out,
    took_tail) aligned with ``rows``."""
    st = stratum[rows]
    cl = inp.prototype[rows].astype(np.int64)
    kind = inp.band_code[rows].astype(np.int64)  # which queue: 0 core, 1 tail, 2 outlier
    if cfg.outliers == "keep":  # outliers queue with the tail band, no tier of their own
        kind = np.minimum(kind, 1)
    is_out = kind == 2
    n_cl = int(inp.prototype.max()) + 1
    r = cfg.tail_core_ratio
    tier = np.ones(len(rows), np.float64)
    if cfg.tail == "distance":
        within, took_tail = _distance_queues(inp, rows, st, cl, kind, n_st, n_cl, r, tier)
    else:
        within, took_tail = _density_queues(inp, rows, st, cl, kind, n_st, n_cl, r, cache)
    tier[is_out] = 0 if cfg.outliers == "keep_first" else 3
    # within < 2^40 for any pool below 10^9 rows and ratio above 10^-3: the tier dominates exactly
    seq_key = tier * 2.0**42 + within
    st_small = st.astype(np.int16 if n_st < 2**15 else np.int64)  # int16 sorts by radix
    o = stable_argsort(seq_key)
    o = o[np.argsort(st_small[o], kind="stable")]
    seq = np.empty(len(rows), np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(st[o])) + 1]
    seq[o] = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    key = (seq + 0.5) / w[st]
    o = np.argsort(st_small, kind="stable")
    order = rows[o[stable_argsort(key[o])]]  # ties: lower stratum, then lower row
    return order, is_out, took_tail


def _round_robin(inp, rows, st, cl, queue_key, prio, n_st, n_cl) -> np.ndarray:
    """Position of each row in its (queue, stratum) when the queue takes the clusters in turn:
    rank 0 of every cluster (by ``prio``), then rank 1... Integer composite keys and one stable
    argsort each (lexsort is 5-10x slower here)."""
    rk = _rank_within((queue_key * n_st + st) * n_cl + cl, prio, int(prio.max()) + 1 if len(prio) else 1)
    return _rank_within(queue_key * n_st + st, rk * n_cl + cl,
                        (int(rk.max()) + 1 if len(rk) else 1) * n_cl).astype(np.float64)


def _distance_queues(inp, rows, st, cl, kind, n_st, n_cl, r, tier):
    """CheXficient's bands as the queues (``tail="distance"``, the default before config version 3):
    the tail queue is the rows in each cluster's p85-p95 distance band, farthest first, the core
    queue the rest in FPS order, both round-robin over clusters; the i-th item of a queue with share
    p comes at (i + 0.5) / p. Returns (merge key, taken by the tail queue)."""
    is_core, is_tail = kind == 0, kind == 1
    prio = np.where(is_core, inp.fps_rank[rows], inp.far_rank[rows]).astype(np.int64)
    pos = _round_robin(inp, rows, st, cl, kind, prio, n_st, n_cl)
    within = pos.copy()
    within[is_core] = (pos[is_core] + 0.5) * (1.0 + r)
    if r > 0:
        within[is_tail] = (pos[is_tail] + 0.5) * (1.0 + r) / r
    else:
        tier[is_tail] = 2  # the tail last when the ratio is 0
    return within, is_tail


def _density_queues(inp, rows, st, cl, kind, n_st, n_cl, r, cache=None):
    """The default queues (``tail="density"``): every non-outlier row stands in both.

    - the **tail queue** takes the stratum's rows by global rarity, the kNN ``tail_score`` (lowest
      density first): the long tail of the whole pool, not the far edge of every cluster (a big
      "normal" cluster's edge is still normal; measured on PadChest, README);
    - the **core queue** takes the clusters in turn (ssl-data-curation's balanced sampling over
      prototypes), each cluster's core in FPS order, then its tail band farthest first.

    Both are merged at ``r`` tail picks per core pick, and a row comes at its better place of the
    two (each row once). Returns (merge key, taken by the tail queue)."""
    kind2 = np.where(kind == 2, 1, 0)  # outliers (kept by a policy) get their own tier; queue them apart
    prio = np.where(kind == 0, inp.fps_rank[rows], inp.n + inp.far_rank[rows]).astype(np.int64)
    core_pos = _round_robin(inp, rows, st, cl, kind2, prio, n_st, n_cl)
    rank = tail_rank(inp) if cache is None else cache.get((inp.key, "tail_rank"), lambda: tail_rank(inp))
    tail_pos = _rank_within(kind2 * n_st + st, rank[rows], max(inp.n, 1)).astype(np.float64)
    core_key = (core_pos + 0.5) * (1.0 + r)
    if r > 0:
        tail_key = (tail_pos + 0.5) * (1.0 + r) / r
        took_tail = tail_key < core_key
        return np.where(took_tail, tail_key, core_key), took_tail
    return core_key, np.zeros(len(rows), bool)


