"""What a user can ask of a selection: :class:`SelectionConfig` (every knob, with its bounds and
its JSON round trip) and the one parser per text knob (budget, gate, filter, cluster list) that the
CLI's flags, the config file, the app's widgets and its URL all use."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from curation.errors import CurationError
from curation.schema import check_seed


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

    def check(self) -> "SelectionConfig":
        """The bounds of every knob that do not depend on the data: one place for the CLI's flags,
        the config file, the app's widgets and its URL. Returns ``self``; raises :class:`CurationError`."""
        if self.mode not in MODES:
            raise CurationError(f"unknown mode {self.mode!r}. Fix: use one of {', '.join(MODES)}.")
        check_seed(self.seed)
        if not (_is_num(self.temper) and 0.0 <= self.temper <= 1.0):
            raise CurationError(f"temper must be within [0, 1]; got {self.temper}.")
        if not (_is_num(self.tail_core_ratio) and math.isfinite(self.tail_core_ratio) and self.tail_core_ratio >= 0):
            raise CurationError(f"tail_core_ratio must be 0 or more; got {self.tail_core_ratio}.")
        if self.tail not in TAILS:
            raise CurationError(f"unknown tail {self.tail!r}. Fix: use one of {', '.join(TAILS)}.")
        if self.outliers not in OUTLIER_POLICIES:
            raise CurationError(f"unknown outlier policy {self.outliers!r}. Fix: use one of "
                                f"{', '.join(OUTLIER_POLICIES)}.")
        if self.dedup_eps is not None and not (_is_num(self.dedup_eps) and 0 < self.dedup_eps < 1):
            raise CurationError(f"dedup_eps must be in (0, 1) or null; got {self.dedup_eps}.")
        for name in ("fidelity_guard", "caption_guard"):
            q = getattr(self, name)
            if q is not None and not (_is_num(q) and math.isfinite(q) and 0 <= q < 0.5):
                raise CurationError(f"{name} must be in [0, 0.5) or null (off); got {q}.")
        for g in self.gates:
            g.threshold()
        return self

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


