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
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from curation import analysis, runs
from curation import schema as S
from curation.density import duplicate_groups
from curation.errors import CurationError
from curation.quality import NOT_SHARED
from curation.schema import UnusableColumn, category_values

# 2 added fidelity_guard (a version-1 config reads as fidelity_guard=None, as it ran); 3 added tail
# and caption_guard and changed the defaults of tail_core_ratio (0.44 -> 2) and outliers (drop ->
# keep): a version-2 config reads with the values it ran with (README "What curation does on real data")
V2_DEFAULTS = {"tail": "distance", "caption_guard": None, "tail_core_ratio": 0.44, "outliers": "drop"}
CONFIG_VERSION = 3
TAILS = ("density", "distance")
MODES = ("proportional", "balanced", "tempered")
OUTLIER_POLICIES = ("drop", "keep", "keep_last", "keep_first")
OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "not null")
MISSING = "(missing)"
#: quality axes the analysis computes (reward-model axes ``reward_<name>`` join them when scored)
QUALITY_AXES = ("fidelity", "consistency", "caption")

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
        Tail picks per core pick inside a stratum. Default 2 with the density tail (measured on
        PadChest, MedPix and the demo, README); CheXficient's code implies about 0.44 for its bands.
    tail : "density" | "distance"
        What the tail queue is. ``density`` (default): the pool's globally rarest rows by kNN
        density (``tail_score``), while the core queue takes every cluster in turn in FPS order.
        ``distance``: CheXficient's per-cluster p85-p95 distance band (before version 3).
    outliers : "keep" | "drop" | "keep_last" | "keep_first"
        Rows beyond each cluster's p95 distance. ``keep`` (default): eligible like any row (on
        PadChest they hold rare findings; junk among them is left to the quality guards);
        ``drop``; or eligible only after (``keep_last``) or before (``keep_first``) all others.
    dedup_eps : float or None
        Near-duplicates (cosine > 1 - eps) keep one representative; None keeps all.
    gates, filters : tuples of :class:`Gate` / :class:`Filter`
    seed : int
        Seeds the random baseline subset.
    fidelity_guard : float in [0, 0.5) or None
        The quality guard, on by default: the pairs in the pool's bottom ``q`` of image-text
        fidelity are not eligible (``dropped_low_fidelity``), except that a cluster made only of
        such pairs keeps its best one (no cluster disappears because of the guard). The tail and
        farthest-point picks favour atypical pairs, and a caption that belongs to another image
        makes a pair atypical: without the guard the default subset of the demo holds twice the
        pool's share of mismatched pairs. (A per-cluster decile was tried first and fails: k-means
        gathers mismatched pairs into small clusters of their own.) Inert when fidelity is not
        available (encoders that do not share a space). None turns it off.
    caption_guard : float in [0, 0.5) or None
        The same guard on the model-free caption quality axis (placeholders such as "IN PROGRESS",
        content-free captions; ``dropped_low_caption_quality``): on MedPix such captions sit far
        from every cluster, where the tail and the kept outliers would pick them. None turns it off.
    exclude_clusters : tuple of int
        Prototype clusters to leave out entirely (``dropped_by_rule``).
    exclude_sets, include_sets : tuple of str
        Named id sets stored in the dataset (``NAME@SHA12``, see
        :meth:`curation.store.Store.save_id_set`: an id list, a lassoed region, search hits). Excluded
        rows are never selected; included rows are selected first (``kept_by_rule``), whatever the
        filters, gates, duplicates and outliers say, up to the budget; exclusion wins over inclusion.
        The reference carries the set's hash, so a set changed after the export is refused.
    """

    budget: float = 0.25
    confounders: tuple[str, ...] = ()
    mode: str = "proportional"
    temper: float = 0.5
    tail_core_ratio: float = 2.0
    outliers: str = "keep"
    dedup_eps: float | None = 0.05
    gates: tuple[Gate, ...] = ()
    filters: tuple[Filter, ...] = ()
    seed: int = 0
    fidelity_guard: float | None = 0.1
    tail: str = "density"
    caption_guard: float | None = 0.1
    exclude_clusters: tuple[int, ...] = ()
    exclude_sets: tuple[str, ...] = ()
    include_sets: tuple[str, ...] = ()
    version: int = CONFIG_VERSION

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("confounders", "exclude_clusters", "exclude_sets", "include_sets"):
            d[key] = list(getattr(self, key))
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
        if version == 1:  # written before the guard existed: reproduce it as it ran, without one
            d = {**d, "fidelity_guard": d.get("fidelity_guard"), "version": 2}
            version = 2
        if version == 2:  # written before the density tail: reproduce it as it ran
            d = {**V2_DEFAULTS, **d, "version": CONFIG_VERSION}
            version = CONFIG_VERSION
        if version != CONFIG_VERSION:
            raise CurationError(f"selection config version {version} is not supported (this tool reads "
                                f"version {CONFIG_VERSION}). Fix: upgrade curation or re-create the config.")
        d = dict(d)
        _check_types(d)
        try:
            d["confounders"] = tuple(d.get("confounders", ()))
            for key in ("exclude_clusters", "exclude_sets", "include_sets"):
                d[key] = tuple(d.get(key, ()))
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
            count = int(round(b * n))
            if count == 0 and n > 0:
                raise CurationError(f"budget {b} of a pool of {n} samples rounds to 0 samples. Fix: use a larger "
                                    f"fraction (at least {0.5 / n:.2g}) or a count.")
            return count
        if b != int(b):
            raise CurationError(f"budget {b} is neither a whole count nor a fraction in (0, 1].")
        if b > n:
            raise CurationError(f"budget {int(b)} is larger than the pool ({n} samples). "
                                f"Fix: use at most {n}, or a fraction such as 0.25.")
        return int(b)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_types(d: dict) -> None:
    """Every field of a config read from JSON has its type (a sidecar may have been edited by hand)."""
    def bad(key, want):
        raise CurationError(f"selection config: '{key}' is {d[key]!r}; it must be {want}. Fix: correct it, "
                            f"or re-export the selection.")

    for key in ("budget", "temper", "tail_core_ratio"):
        if key in d and not _is_num(d[key]):
            bad(key, "a number")
    for key in ("dedup_eps", "fidelity_guard", "caption_guard"):
        if key in d and d[key] is not None and not _is_num(d[key]):
            bad(key, "a number or null")
    for key in ("seed", "version"):
        if key in d and (not isinstance(d[key], int) or isinstance(d[key], bool)):
            bad(key, "a whole number")
    for key in ("mode", "outliers", "tail"):
        if key in d and not isinstance(d[key], str):
            bad(key, "text")
    for key, typ, what in (("confounders", str, "a list of column names"), ("exclude_sets", str, "a list of set references"),
                           ("include_sets", str, "a list of set references"), ("exclude_clusters", int, "a list of cluster numbers")):
        if key in d and (not isinstance(d[key], (list, tuple)) or
                         not all(isinstance(c, typ) and not isinstance(c, bool) for c in d[key])):
            bad(key, what)
    for key, known in (("gates", {"axis", "min_score", "top_q"}), ("filters", {"column", "op", "value"})):
        items = d.get(key, ())
        if not isinstance(items, (list, tuple)):
            bad(key, "a list")
        for g in items:
            if isinstance(g, (Gate, Filter)):
                continue
            if not isinstance(g, dict) or set(g) - known:
                bad(key, f"a list of objects with keys {sorted(known)}")
            if key == "gates":
                if not isinstance(g.get("axis"), str):
                    bad(key, "objects whose 'axis' is text")
                for k in ("min_score", "top_q"):
                    if g.get(k) is not None and not _is_num(g[k]):
                        bad(key, f"objects whose '{k}' is a number or null")
            elif not isinstance(g.get("column"), str) or not isinstance(g.get("op"), str):
                bad(key, "objects whose 'column' and 'op' are text")


class SelectionCache:
    """Memoised work of one caller (a CLI run, an app session): priority orders per config-without-
    budget, duplicate groups per eps, per-column strata codes.

    Thread-safe (one lock) and bounded (least recently used entries go first). Keys include
    :attr:`SelectionInputs.key`, so one cache can serve several datasets. The inputs themselves
    are never mutated, so they can be shared between sessions; a cache is never shared.
    """

    def __init__(self, max_entries: int = 8):
        import threading
        from collections import OrderedDict

        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._d: "OrderedDict" = OrderedDict()

    def get(self, key, build):
        """The value for ``key``, built by ``build()`` (outside the lock) when absent."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = build()
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._d)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


@dataclass(frozen=True)
class SelectionInputs:
    """The cached arrays a selection reads (all of length n, in row order). Immutable: arrays are
    read-only views and derived arrays are computed at construction, so one instance can be shared
    by threads; memoised work lives in a :class:`SelectionCache`.

    Attributes
    ----------
    ids : ndarray of str
    prototype, fps_rank : ndarray of int
    band : ndarray of str ("core" / "tail" / "outlier")
    proto_dist, tail_score : ndarray of float
    meta : pandas.DataFrame
        Metadata columns (for strata and filters).
    scores : dict {axis: ndarray of float in [0, 1] or all-NaN when not available}
    knn_nbr, knn_sim : ndarray (n, k), the stored duplicate-space kNN graph (duplicates at any eps)
    case : ndarray of int or None
    unavailable : dict {axis: reason} for score axes that cannot be used
    id_sets : dict {"NAME@SHA12": rows} the dataset's stored id sets (exclude / include rules)
    key : str
        Identifies the data these arrays came from (fingerprint, run, reward scores) in cache keys.
    band_code : ndarray of int8, derived: 0 core, 1 tail, 2 outlier
    far_rank : ndarray of int64, derived: rank by distance to the prototype, farthest first
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
    id_sets: dict = field(default_factory=dict)
    key: str = ""
    band_code: np.ndarray = field(init=False, repr=False)
    far_rank: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        for name in ("ids", "prototype", "band", "proto_dist", "fps_rank", "tail_score", "knn_nbr", "knn_sim"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if self.case is not None:
            object.__setattr__(self, "case", _frozen(self.case))
        object.__setattr__(self, "scores", {k: _frozen(v) for k, v in self.scores.items()})
        object.__setattr__(self, "id_sets", {k: _frozen(v) for k, v in self.id_sets.items()})
        band_code = np.select([self.band == "core", self.band == "tail"], [0, 1], 2).astype(np.int8)
        far = np.empty(len(self.ids), np.int64)
        far[np.argsort(-self.proto_dist, kind="stable")] = np.arange(len(self.ids))
        object.__setattr__(self, "band_code", _frozen(band_code))
        object.__setattr__(self, "far_rank", _frozen(far))
        if not self.key:
            object.__setattr__(self, "key", f"inputs-{id(self)}")

    @property
    def n(self) -> int:
        return len(self.ids)

    def duplicates(self, eps: float, cache: SelectionCache | None = None):
        """(group, is_dup) at ``eps`` from the stored kNN graph (memoised in ``cache`` when given)."""

        def build():
            group, is_dup = duplicate_groups(self.knn_nbr, self.knn_sim, eps, case=self.case,
                                             keep_key=self.proto_dist)
            return _frozen(group), _frozen(is_dup)

        return build() if cache is None else cache.get((self.key, "dup", float(eps)), build)

    def with_meta(self, meta) -> "SelectionInputs":
        """A copy with other metadata columns (the evaluation adds a train/held-out marker)."""
        from dataclasses import replace

        return replace(self, meta=meta, key=f"{self.key}+meta{id(meta)}")


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
                out[m] = [f"duplicate of {inp.ids[g]}" for g in group[rows[m]]]
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
# parsing what a user types (CLI flags, the app's inputs, URL parameters): one set of rules
def parse_budget(text) -> int | float:
    """A budget typed by a user: a whole count (``5000``) or a fraction in (0, 1] (``0.25``).

    One meaning in every face (CLI, config file, app, URL), the one JSON gives: a whole number
    written without a decimal point is a count, so ``1`` is one sample and ``1.0`` the whole pool.
    Raises :class:`CurationError` for anything else (negative, zero, inf, nan, ``2.5``, text).
    """
    if isinstance(text, bool):
        raise CurationError(f"budget {text!r} is not a number. Fix: a count (5000) or a fraction (0.25).")
    if isinstance(text, (int, np.integer)):
        text = int(text)
        if text <= 0:
            raise CurationError(f"budget {text} must be a positive count or a fraction in (0, 1]. Fix: e.g. 5000 "
                                f"or 0.25.")
        return text
    raw = str(text).strip()
    if re.fullmatch(r"\+?[0-9]+", raw):
        return parse_budget(int(raw))
    try:
        v = float(raw)
    except ValueError:
        raise CurationError(f"budget {raw!r} is not a number. Fix: a count (5000) or a fraction (0.25).") from None
    if not math.isfinite(v) or v <= 0:
        raise CurationError(f"budget {raw!r} must be a positive count or a fraction in (0, 1]. "
                            f"Fix: e.g. 5000 or 0.25.")
    if v > 1:
        if v != int(v):
            raise CurationError(f"budget {raw!r} is neither a whole count nor a fraction in (0, 1]. "
                                f"Fix: e.g. 5000 or 0.25.")
        return int(v)
    return v


def parse_cluster_list(text) -> tuple[int, ...]:
    """``"3,17"`` -> (3, 17): prototype cluster numbers typed by a user (sorted, unique)."""
    items = [c.strip() for c in str(text).split(",") if c.strip()]
    if not all(re.fullmatch(r"[0-9]+", c) for c in items):
        raise CurationError(f"clusters {str(text)[:40]!r}: give cluster numbers, e.g. 3,17.")
    return tuple(sorted({int(c) for c in items}))


def parse_gate(text: str) -> Gate:
    """``AXIS:min=S`` or ``AXIS:top=Q`` (e.g. ``fidelity:top=0.9``) as a :class:`Gate`."""
    try:
        axis, rule = str(text).split(":", 1)
        key, value = rule.split("=", 1)
        value = float(value)
    except ValueError:
        raise CurationError(f"gate {text!r}: expected AXIS:min=S or AXIS:top=Q (e.g. fidelity:top=0.9).") from None
    if key not in ("min", "top"):
        raise CurationError(f"gate {text!r}: use min= or top=.")
    gate = Gate(axis=axis.strip(), min_score=value if key == "min" else None, top_q=value if key == "top" else None)
    gate.threshold()
    return gate


def _scalar(raw: str):
    """A filter value as typed: JSON numbers, booleans and quoted strings are read as JSON; anything
    else is the text itself. Lists and objects are refused (use ``in`` with commas)."""
    import json as _json

    try:
        v = _json.loads(raw)
    except _json.JSONDecodeError:
        return raw
    if isinstance(v, (list, dict)) or v is None:
        raise CurationError(f"filter value {raw!r} is a JSON {type(v).__name__ if v is not None else 'null'}. "
                            f"Fix: give one value (or `in` with comma-separated values; `is null` for missing).")
    return v


def make_filter(column: str, op: str, raw: str | None) -> Filter:
    """A :class:`Filter` from its three typed parts (shared by the CLI and the app).

    ``in`` / ``not in`` take comma-separated values (or a JSON list); each value is read as
    :func:`_scalar` reads one, so ``age in 30,40`` compares numbers like ``age == 30`` does.
    Raises :class:`CurationError` when the operator needs a value and none is given.
    """
    import json as _json

    if op not in OPERATORS:
        raise CurationError(f"unknown filter operator {op!r}. Fix: use one of {', '.join(OPERATORS)}.")
    raw = None if raw is None else str(raw).strip()
    if op in ("is null", "not null"):
        return Filter(column=column, op=op, value=None)
    if not raw:
        raise CurationError(f"filter {column} {op}: the operator {op} needs a value.")
    if op in ("in", "not in"):
        try:
            v = _json.loads(raw)
            values = v if isinstance(v, list) else None
        except _json.JSONDecodeError:
            values = None
        if values is None:
            values = [_scalar(x.strip()) for x in raw.split(",") if x.strip()]
        return Filter(column=column, op=op, value=list(values))
    return Filter(column=column, op=op, value=_scalar(raw))


def parse_filter(text: str) -> Filter:
    """``"COLUMN OP VALUE"`` (e.g. ``"modality == CT"``, ``"age >= 18"``, ``"site in A,B"``)."""
    import re

    ops = sorted(OPERATORS, key=len, reverse=True)
    m = re.match(r"^\s*(.+?)\s+(" + "|".join(re.escape(o) for o in ops) + r")(?:\s+(.*))?$", str(text))
    if not m:
        raise CurationError(f"filter {text!r}: expected \"COLUMN OP VALUE\" with OP one of {', '.join(OPERATORS)}.")
    return make_filter(m.group(1), m.group(2), m.group(3))


# ---------------------------------------------------------------------------------------------
def validate_config(cfg: SelectionConfig, inp: SelectionInputs) -> None:
    """Check every knob against the data; raise one clear :class:`CurationError`."""
    cols = list(inp.meta.columns)
    for c in cfg.confounders:
        if c not in cols:
            raise CurationError(f"unknown confounder column {c!r}. Fix: use one of: {', '.join(cols)}.")
    if cfg.mode not in MODES:
        raise CurationError(f"unknown mode {cfg.mode!r}. Fix: use one of {', '.join(MODES)}.")
    S.check_seed(cfg.seed)
    if not 0.0 <= cfg.temper <= 1.0:
        raise CurationError(f"temper must be within [0, 1]; got {cfg.temper}.")
    if not (math.isfinite(cfg.tail_core_ratio) and cfg.tail_core_ratio >= 0):
        raise CurationError(f"tail_core_ratio must be 0 or more; got {cfg.tail_core_ratio}.")
    if cfg.tail not in TAILS:
        raise CurationError(f"unknown tail {cfg.tail!r}. Fix: use one of {', '.join(TAILS)}.")
    if cfg.outliers not in OUTLIER_POLICIES:
        raise CurationError(f"unknown outlier policy {cfg.outliers!r}. Fix: use one of {', '.join(OUTLIER_POLICIES)}.")
    if cfg.dedup_eps is not None and not 0 < cfg.dedup_eps < 1:
        raise CurationError(f"dedup_eps must be in (0, 1) or null; got {cfg.dedup_eps}.")
    for name in ("fidelity_guard", "caption_guard"):
        q = getattr(cfg, name)
        if q is not None and not (math.isfinite(q) and 0 <= q < 0.5):
            raise CurationError(f"{name} must be in [0, 0.5) or null (off); got {q}.")
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


def _bottom(inp: SelectionInputs, axis: str, q: float) -> np.ndarray:
    """Rows in the pool's bottom ``q`` of a quality axis: the lowest ``floor(q x n)`` scores, ties
    by row, missing scores lowest."""
    v = np.nan_to_num(inp.scores[axis], nan=-1.0)
    order = np.lexsort((np.arange(inp.n), v))
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
    col_codes = {c: cache.get((inp.key, "column", c), lambda c=c: factorize_column(inp.meta[c])) for c in columns}
    return strata(inp.meta, columns, col_codes)


def _rank_within(groups: np.ndarray, key: np.ndarray, key_span: int) -> np.ndarray:
    """0-based rank of each element within its group, ordered by the integer ``key`` (ties by
    position). ``key`` must lie in [0, key_span)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, np.int64)
    assert key.min() >= 0 and key.max() < key_span, "a rank key outside its span would mix groups"
    composite = groups.astype(np.int64) * int(key_span) + key.astype(np.int64)
    order = np.argsort(composite, kind="stable")
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
        cached = _order(inp, cfg, None)
    else:
        cached = cache.get((inp.key, "order", cfg.order_key()), lambda: _order(inp, cfg, cache))
    order, code0, which, stratum, labels, pool_sizes, eligible = cached
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

    for i, f in enumerate(cfg.filters):
        m = _filter_mask(f, inp.meta[f.column])
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
    rows = np.flatnonzero(eligible)
    st = stratum[rows]
    cl = inp.prototype[rows].astype(np.int64)
    kind = inp.band_code[rows].astype(np.int64)  # which queue: 0 core, 1 tail, 2 outlier
    if cfg.outliers == "keep":  # outliers queue with the tail band, no tier of their own
        kind = np.minimum(kind, 1)
    is_out = kind == 2
    n_cl = int(inp.prototype.max()) + 1
    n_st = len(labels)
    r = cfg.tail_core_ratio
    tier = np.ones(len(rows), np.float64)
    if cfg.tail == "distance":
        within, took_tail = _distance_queues(inp, rows, st, cl, kind, n_st, n_cl, r, tier)
    else:
        within, took_tail = _density_queues(inp, rows, st, cl, kind, n_st, n_cl, r, tier)
    tier[is_out] = 0 if cfg.outliers == "keep_first" else 3
    # within < 2^40 for any pool below 10^9 rows and ratio above 10^-3: the tier dominates exactly
    seq_key = tier * 2.0**42 + within
    st_small = st.astype(np.int16 if n_st < 2**15 else np.int64)  # int16 sorts by radix
    o = np.argsort(seq_key, kind="stable")
    o = o[np.argsort(st_small[o], kind="stable")]
    seq = np.empty(len(rows), np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(st[o])) + 1]
    seq[o] = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    if cfg.mode == "proportional":
        w = pool_sizes.astype(np.float64)
    elif cfg.mode == "balanced":
        w = np.ones(len(labels))
    else:
        w = pool_sizes.astype(np.float64) ** (1.0 - cfg.temper)
    w = np.maximum(w, 1e-12)
    key = (seq + 0.5) / w[st]
    o = np.argsort(st_small, kind="stable")
    order = rows[o[np.argsort(key[o], kind="stable")]]  # ties: lower stratum, then lower row
    code[rows] = np.where(is_out, _CODE[KEPT_OUTLIER], np.where(took_tail, _CODE[KEPT_TAIL], _CODE[KEPT_CORE]))
    first = np.flatnonzero(forced)
    code[first] = _CODE[KEPT_RULE]
    order = np.concatenate([first, order]).astype(np.int64)
    eligible_per_stratum = np.bincount(stratum[order], minlength=len(labels))
    return order, code, which, stratum, labels, pool_sizes, eligible_per_stratum


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


def _density_queues(inp, rows, st, cl, kind, n_st, n_cl, r, tier):
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
    rarity = np.argsort(np.argsort(-inp.tail_score[rows].astype(np.float64), kind="stable"), kind="stable")
    tail_pos = _rank_within(kind2 * n_st + st, rarity.astype(np.int64), len(rows)).astype(np.float64)
    core_key = (core_pos + 0.5) * (1.0 + r)
    if r > 0:
        tail_key = (tail_pos + 0.5) * (1.0 + r) / r
        took_tail = tail_key < core_key
        return np.where(took_tail, tail_key, core_key), took_tail
    return core_key, np.zeros(len(rows), bool)


# ---------------------------------------------------------------------------------------------
def load_inputs(store, run_id: str | None = None) -> SelectionInputs:
    """Read the arrays a selection needs from a dataset's analysis run."""
    import pandas as pd



    rec = runs.require(store, run_id)  # the given run (with prototypes + density) or the latest that has them
    run_id = rec.run_id
    df, _ = analysis.load(store, run_id)
    nbr, sim = analysis.load_knn(store, run_id, "dedup_knn")  # duplicates: image space (text if no images)
    meta = store.samples(store.metadata_columns())
    ids = store.samples([S.ID])[S.ID].to_numpy().astype(str)
    scores, unavailable = {}, {}
    for axis in QUALITY_AXES:
        col = f"{axis}_score"
        if col in df.columns and df[col].notna().any():
            scores[axis] = df[col].to_numpy(np.float64)
        else:
            unavailable[axis] = (NOT_SHARED if axis == "fidelity" else
                                 "not available: no captions, or the quality step has not run" if axis == "caption"
                                 else "not computed (run the quality step)")
    for col in df.columns:  # reward model scores, when present
        if col.startswith("reward_") and col.endswith("_score"):
            scores[col[: -len("_score")]] = df[col].to_numpy(np.float64)
    case_col = store.meta.get("case_column")
    case = pd.factorize(meta[case_col].astype(str))[0] if case_col in meta.columns else None
    scored = runs.list_runs(store, "reward-score")
    reward_key = scored[-1].run_id if scored else None
    id_sets = store.id_set_rows()
    return SelectionInputs(ids=ids, prototype=df["prototype"].to_numpy(), band=df["band"].to_numpy(str),
                           proto_dist=df["proto_dist"].to_numpy(np.float64),
                           fps_rank=df["fps_rank"].to_numpy(), tail_score=df["tail_score"].to_numpy(),
                           meta=meta, scores=scores, knn_nbr=nbr, knn_sim=sim, case=case,
                           unavailable=unavailable, id_sets=id_sets,
                           key=f"{store.fingerprint}:{run_id}:{reward_key}:{','.join(sorted(id_sets))}")
