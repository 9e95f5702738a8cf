"""The arrays a selection reads, loaded once from a dataset's analysis run: immutable
:class:`SelectionInputs` shared by threads, and each caller's memo, :class:`SelectionCache`."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from curation import analysis, runs
from curation import id_sets as sets
from curation import schema as S
from curation.density import duplicate_groups
from curation.quality import NOT_SHARED
from curation.selection_config import QUALITY_AXES


def order_store_folder(db) -> Path:
    """Where a dataset keeps its selections' priority orders between processes:
    ``<dataset>.cache/selection/`` (a cache: deleting it costs only the time to compute them again)."""
    db = Path(db)
    return db.with_name(db.name + ".cache") / "selection"


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")``, computed faster: numpy's quicksort argsort (SIMD on
    AVX-512 CPUs: 0.74 s against 1.53 s for 10M int64 or float64 keys here), then each run of
    equal keys put back in position order. Identical output; falls back to the stable sort when
    the keys hold NaN."""
    o = np.argsort(keys, kind="quicksort")
    if len(o) < 2:
        return o
    ks = keys[o]
    if ks.dtype.kind == "f" and np.isnan(ks[-1]):
        return np.argsort(keys, kind="stable")
    eq = ks[1:] == ks[:-1]
    if eq.any():
        tied = np.zeros(len(o), bool)
        tied[1:] |= eq
        tied[:-1] |= eq
        idx = np.flatnonzero(tied)
        run = np.cumsum(np.r_[True, ~eq])[idx]
        sub = o[idx]
        o[idx] = sub[np.lexsort((sub, run))]
    return o


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
    ids : ndarray of str, or None with ``ids_loader`` (read on first use: :meth:`id_of`; at 10M
        rows the ids were 5-8 s of the selection page's first render, and only a duplicate's
        explanation names one)
    prototype, fps_rank : ndarray of int
    band : ndarray of str ("core" / "tail" / "outlier")
    proto_dist, tail_score : ndarray of float
    meta : pandas.DataFrame
        Metadata columns (for strata and filters).
    scores : dict {axis: ndarray of float in [0, 1] or all-NaN when not available}
    knn_nbr, knn_sim : ndarray (n, k), the stored duplicate-space kNN graph (duplicates at any eps);
        None with ``knn_loader``, which reads them on first use (:meth:`knn`)
    stored_dups : (eps, group, is_dup) or None, the analysis's own duplicate groups: at that eps
        they are used as they are, so the graph is read only for another eps (at 10M: 6 s and
        1.2 GB the default selection never needs)
    case : ndarray of int or None
    unavailable : dict {axis: reason} for score axes that cannot be used
    id_sets : dict {"NAME@SHA12": rows} the dataset's stored id sets (exclude / include rules)
    key : str
        Identifies the data these arrays came from (fingerprint, run and when it was recorded,
        reward scores, id sets) in cache keys.
    order_store : Path or None
        Where the priority orders of this dataset's selections are kept between processes
        (``<dataset>.cache/selection/``, :func:`order_store_folder`), set by :func:`load_inputs`
        and :meth:`keeping_orders_in` only: any other copy (``dataclasses.replace`` with other
        scores or metadata under the same ``key``) keeps its orders in memory.
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
    knn_nbr: np.ndarray | None
    knn_sim: np.ndarray | None
    case: np.ndarray | None = None
    knn_loader: Any = None
    stored_dups: tuple | None = None
    unavailable: dict = field(default_factory=dict)
    id_sets: dict = field(default_factory=dict)
    key: str = ""
    ids_loader: Any = None
    order_store: Any = field(init=False, default=None)
    band_code: np.ndarray = field(init=False, repr=False)
    far_rank: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        import threading

        for name in ("prototype", "band", "proto_dist", "fps_rank", "tail_score"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if self.ids is None and self.ids_loader is None:
            raise ValueError("give ids, or an ids_loader")
        if self.ids is not None:
            object.__setattr__(self, "ids", _frozen(self.ids))
        object.__setattr__(self, "_ids_lock", threading.Lock())
        if (self.knn_nbr is None) != (self.knn_sim is None) or (self.knn_nbr is None and self.knn_loader is None):
            raise ValueError("give knn_nbr and knn_sim, or a knn_loader")
        if self.knn_nbr is not None:
            object.__setattr__(self, "knn_nbr", _frozen(self.knn_nbr))
            object.__setattr__(self, "knn_sim", _frozen(self.knn_sim))
        if self.stored_dups is not None:
            eps, group, is_dup = self.stored_dups
            object.__setattr__(self, "stored_dups", (float(eps), _frozen(group), _frozen(is_dup)))
        object.__setattr__(self, "_knn_lock", threading.Lock())
        if self.case is not None:
            object.__setattr__(self, "case", _frozen(self.case))
        object.__setattr__(self, "scores", {k: _frozen(v) for k, v in self.scores.items()})
        object.__setattr__(self, "id_sets", {k: _frozen(v) for k, v in self.id_sets.items()})
        band_code = np.select([self.band == "core", self.band == "tail"], [0, 1], 2).astype(np.int8)
        far = np.empty(self.n, np.int64)
        far[stable_argsort(-np.asarray(self.proto_dist, np.float64))] = np.arange(self.n)
        object.__setattr__(self, "band_code", _frozen(band_code))
        object.__setattr__(self, "far_rank", _frozen(far))
        if not self.key:
            object.__setattr__(self, "key", f"inputs-{id(self)}")

    @property
    def n(self) -> int:
        return len(self.prototype)

    def id_of(self, rows) -> np.ndarray:
        """The ids of ``rows`` (the whole column is read by ``ids_loader`` on first use)."""
        with self._ids_lock:
            if self.ids is None:
                ids = np.asarray(self.ids_loader())
                if len(ids) != self.n:
                    raise ValueError(f"{len(ids)} ids for {self.n} rows")
                object.__setattr__(self, "ids", _frozen(ids))
        return self.ids[rows]

    def knn(self) -> tuple[np.ndarray, np.ndarray]:
        """The duplicate-space kNN graph (nbr, sim), read by ``knn_loader`` on first use."""
        with self._knn_lock:
            if self.knn_nbr is None:
                nbr, sim = self.knn_loader()
                object.__setattr__(self, "knn_sim", _frozen(sim))
                object.__setattr__(self, "knn_nbr", _frozen(nbr))
        return self.knn_nbr, self.knn_sim

    def duplicates(self, eps: float, cache: SelectionCache | None = None):
        """(group, is_dup) at ``eps``: the analysis's own at its eps, else from the stored kNN graph
        (memoised in ``cache`` when given)."""
        if self.stored_dups is not None and float(eps) == self.stored_dups[0]:
            return self.stored_dups[1], self.stored_dups[2]

        def build():
            nbr, sim = self.knn()
            group, is_dup = duplicate_groups(nbr, sim, eps, case=self.case, keep_key=self.proto_dist)
            return _frozen(group), _frozen(is_dup)

        return build() if cache is None else cache.get((self.key, "dup", float(eps)), build)

    def with_meta(self, meta) -> "SelectionInputs":
        """A copy with other metadata columns (the evaluation adds a train/held-out marker)."""
        from dataclasses import replace

        # its key names an object of this process only: never looked up on disk
        return replace(self, meta=meta, key=f"{self.key}+meta{id(meta)}")

    def keeping_orders_in(self, folder) -> "SelectionInputs":
        """A copy whose selection orders are kept in ``folder`` (the dataset's order store when read
        by :func:`load_inputs`)."""
        from dataclasses import replace

        out = replace(self)
        object.__setattr__(out, "order_store", None if folder is None else Path(folder))
        return out



def _read_dedup_knn(path, run_id: str):
    """The duplicate-space kNN graph of ``run_id`` (image space; text without images), read when a
    selection first needs duplicates at an eps other than the analysis's."""
    from curation.store import open_store

    with open_store(path) as s:
        return analysis.load_knn(s, run_id, "dedup_knn")


def _read_ids(path) -> np.ndarray:
    """A dataset's sample ids in row order (a selection's explanations read them on first use)."""
    from curation.store import open_store

    with open_store(path) as s:
        return s.samples([S.ID])[S.ID].to_numpy().astype(str)


def _unavailable(rec, present) -> dict:
    """{axis: why it cannot be used} for the quality axes not in ``present``: the run's own reason
    when it recorded one ("the dataset lacks image or text embeddings"...)."""
    return {axis: (rec.outputs.get("fidelity_reason") or NOT_SHARED if axis == "fidelity" else
                   "not available: no captions, or the quality step has not run" if axis == "caption"
                   else "not computed (run the quality step)")
            for axis in QUALITY_AXES if axis not in present}


def unavailable_axes(store, run_id: str | None = None) -> dict:
    """:attr:`SelectionInputs.unavailable` without loading the inputs (one aggregate in DuckDB):
    what a page needs to draw its knobs before the selection arrays are read."""
    from curation.store import quote_ident

    rec = runs.require(store, run_id)
    table = analysis.table_names(rec.run_id)["samples"]
    have = set(store.table_columns(table))
    cols = [f"{axis}_score" for axis in QUALITY_AXES if f"{axis}_score" in have]
    counts = store.aggregate(table, {c: f"count({quote_ident(c)})" for c in cols}) if cols else {}
    return _unavailable(rec, {c[: -len("_score")] for c, m in counts.items() if m})


def load_inputs(store, run_id: str | None = None) -> SelectionInputs:
    """Read the arrays a selection needs from a dataset's analysis run."""
    import pandas as pd

    rec = runs.require(store, run_id)  # the given run (with prototypes + density) or the latest that has them
    run_id = rec.run_id
    df, cfg = analysis.load(store, run_id, columns=[
        "prototype", "band", "proto_dist", "fps_rank", "tail_score", "dup_group", "is_dup",
        *(f"{axis}_score" for axis in QUALITY_AXES)])
    meta = store.samples(store.metadata_columns())
    scores = {}
    for axis in QUALITY_AXES:
        col = f"{axis}_score"
        if col in df.columns and df[col].notna().any():
            scores[axis] = df[col].to_numpy(np.float64)
    unavailable = _unavailable(rec, scores)
    for col in df.columns:  # reward model scores, when present
        if col.startswith("reward_") and col.endswith("_score"):
            scores[col[: -len("_score")]] = df[col].to_numpy(np.float64)
    case_col = store.meta.get("case_column")
    case = pd.factorize(meta[case_col].astype(str))[0] if case_col in meta.columns else None
    scored = runs.list_runs(store, "reward-score")
    reward_key = scored[-1].run_id if scored else None
    id_sets = sets.rows(store)
    inp = SelectionInputs(ids=None, ids_loader=partial(_read_ids, store.path), prototype=df["prototype"].to_numpy(), band=df["band"].to_numpy(str),
                           proto_dist=df["proto_dist"].to_numpy(np.float64),
                           fps_rank=df["fps_rank"].to_numpy(), tail_score=df["tail_score"].to_numpy(),
                           meta=meta, scores=scores, knn_nbr=None, knn_sim=None, case=case,
                           knn_loader=partial(_read_dedup_knn, store.path, run_id),
                           stored_dups=((cfg["dedup_eps"], df["dup_group"].to_numpy(np.int64),
                                         df["is_dup"].to_numpy(bool))
                                        if {"dup_group", "is_dup"} <= set(df.columns) and cfg.get("dedup_eps")
                                        else None),
                           unavailable=unavailable, id_sets=id_sets,
                           # the run's time too: further steps of a run (quality after density) or a
                           # --force rerun re-record the same run id with other tables
                           key=f"{store.fingerprint}:{run_id}@{rec.created}:{reward_key}:{','.join(sorted(id_sets))}")
    object.__setattr__(inp, "order_store", order_store_folder(store.path))
    return inp

