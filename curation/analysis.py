"""The analysis run: prototypes, density, duplicates, map, HDBSCAN, quality and confounders.

:func:`analyze` reads a dataset's vectors, runs the steps (each can run alone), writes one table
of per-sample results plus prototype, kNN and confounder tables, and records the run (config,
input fingerprint, timings). The run id is a hash of the config and the dataset fingerprint:
re-running the same config gives the same id and identical results; a changed config writes a new
run and keeps the old one.

Per-sample columns (table ``analysis_<hash>``): ``row_idx``, ``prototype``, ``proto_dist``
(cosine distance to it), ``proto_pct`` (its percentile within the cluster), ``band`` (core / tail /
outlier), ``fps_rank`` (farthest-point rank within the cluster's core, -1 outside it),
``knn_density``, ``tail_score`` (1 = sparsest), ``dup_group`` (representative row, -1 none),
``is_dup``, ``map_x``, ``map_y``, ``map_fitted``, ``hdbscan_label``, ``glosh_score``,
``fidelity``, ``fidelity_score``, ``consistency``, ``consistency_score``.
"""

from __future__ import annotations

from functools import partial

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from curation import arrow_io, checkpoint, parallel, runs
from curation import runs as R
from curation import schema as S
from curation.analysis_steps import MAP_MIN_ROWS, STEP_FUNCS, StepResult, _Inputs, _space
from curation.errors import CurationError, StateError
from curation.prototypes import default_k
from curation.runs import REQUIRES, STEPS
from curation.spaces import SPACES
from curation.store import open_store

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
# which step writes which per-sample columns
STEP_COLUMNS = {
    "prototypes": ["prototype", "second_prototype", "proto_dist", "second_dist", "proto_pct", "band", "fps_rank"],
    "density": ["knn_density", "tail_score", "dup_group", "is_dup", "image_prototype"],
    "map": ["map_x", "map_y", "map_fitted", "hdbscan_label", "glosh_score"],
    "quality": ["fidelity", "fidelity_score", "consistency", "consistency_score", "image_prototype",
                "caption_quality", "caption_score", "caption_words", "caption_dup_cases", "caption_dup_images",
                "is_placeholder"],
    "confounders": [],
}

Progress = Callable[[str, int, int], None]  # (step, done, total)


@dataclass(frozen=True)
class AnalysisConfig:
    """Every parameter of an analysis run (defaults from DESIGN section 4 / CheXficient).

    Attributes
    ----------
    space : "auto" | "joint" | "image" | "text"
        ``auto`` (default) is resolved before the run id is computed: joint when the dataset has
        image and text embeddings, else the one it has.
    k : int or None
        Prototypes; None = about sqrt(N), within [8, 2000].
    core_pct, tail_pct : float
        Band edges as within-cluster distance percentiles (CheXficient: 85 / 95).
    fps_exact_max : int
        Exact farthest-point picks per cluster; the rest is ordered by distance to the picked set.
    knn_k, knn_probes : int
        kNN size, and how many nearest prototype clusters each sample searches (exactly).
    dedup_eps : float
        Near-duplicates: cosine > 1 - eps (changeable later from the stored kNN graph).
    map_fit_max : int
        UMAP is fitted on at most this many samples; the rest is placed by kNN interpolation.
    """

    space: str = "auto"
    k: int | None = None
    seed: int = 0
    kmeans_iters: int = 20
    kmeans_train_max: int = 200_000
    core_pct: float = 85.0
    tail_pct: float = 95.0
    fps_exact_max: int = 2000
    knn_k: int = 10
    knn_probes: int = 4
    dedup_eps: float = 0.05
    map_fit_max: int = 20_000
    map_pca_dims: int = 50
    hdbscan_min_cluster_size: int | None = None
    confounder_v: float = 0.3
    confounder_lift: float = 0.1
    probe_max: int = 5_000
    label_columns: tuple = ()
    version: int = CONFIG_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["label_columns"] = list(self.label_columns)
        if not d["label_columns"]:  # added later: a run without labels keeps the id it always had
            del d["label_columns"]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "AnalysisConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CurationError(f"unknown analysis config key(s): {sorted(unknown)}. "
                                f"Fix: use only {sorted(known)}.")
        if d.get("version", CONFIG_VERSION) != CONFIG_VERSION:
            raise CurationError(f"analysis config version {d['version']} is not supported "
                                f"(this is version {CONFIG_VERSION}).")
        return cls(**{**d, "label_columns": tuple(d.get("label_columns", ()))})

    def validate(self, n: int) -> None:
        if self.space not in SPACES:
            raise CurationError(f"unknown space {self.space!r}. Fix: use one of {', '.join(SPACES)}.")
        if self.k is not None and not 1 <= self.k <= n:
            raise CurationError(f"k={self.k} must be between 1 and the number of samples ({n}).")
        if not 0 <= self.core_pct <= self.tail_pct <= 100:
            raise CurationError("need 0 <= core_pct <= tail_pct <= 100.")
        if not 0 < self.dedup_eps < 1:
            raise CurationError("dedup_eps must be in (0, 1).")
        if self.knn_k < 1 or self.knn_probes < 1:
            raise CurationError("knn_k and knn_probes must be at least 1.")
        S.check_seed(self.seed)
        for name, low in (("map_fit_max", MAP_MIN_ROWS), ("kmeans_train_max", 1), ("kmeans_iters", 1),
                          ("fps_exact_max", 1), ("map_pca_dims", 2), ("probe_max", 10)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise CurationError(f"{name} (--{name.replace('_', '-')}) is {v!r}; it must be a whole number of at "
                                    f"least {low}.")


def run_id_for(config: AnalysisConfig, fingerprint: str) -> str:
    h = hashlib.blake2b((config.to_json() + fingerprint).encode(), digest_size=6).hexdigest()
    return f"analysis-{h}"


def table_names(run_id: str) -> dict[str, str]:
    h = run_id.split("-", 1)[1]
    return {"samples": f"analysis_{h}", "prototypes": f"prototypes_{h}", "knn": f"knn_{h}",
            "dedup_knn": f"dedupknn_{h}", "confounders": f"confounders_{h}"}


def load(store, run_id: str | None = None, columns=None):
    """Per-sample analysis results as a DataFrame (row_idx order) and the run's config.

    ``columns``: read only those the run has (and the row index); a selection at 10M reads a third
    of the table's columns.

    Without ``run_id``: the run :func:`curation.runs.best_analysis` picks. Raises
    :class:`StateError` with the command to run when there is no analysis yet, or when the id is unknown.
    """

    rec = runs.get(store, run_id, "analysis") if run_id else runs.best_analysis(store)
    if rec is None:
        raise StateError(f"dataset {store.name} has no analysis yet. "
                         f"Fix: run `python -m curation analyze {store.path}`.")
    name = table_names(rec.run_id)["samples"]
    if columns is not None:  # the ones the run has, and the row index (checked)
        have = store.table_columns(name)
        columns = [c for c in dict.fromkeys([S.ROW, *columns]) if c in have]
    df = store.read_table(name, columns)
    check_run(store, rec.run_id, df)
    if store.has_table(S.REWARD_SCORES):  # reward-model scores are per sample too; gates read them
        rw = store.read_table(S.REWARD_SCORES)
        if len(rw) == len(df):
            df = df.join(rw.drop(columns=[S.ROW]))
    return df, rec.config


def check_run(store, run_id: str, df) -> None:
    """Refuse an analysis whose tables no longer match the dataset (a row deleted from ``samples``,
    a prototype id edited into one the prototypes table does not have): selecting on it would
    misattribute rows or fail deep inside with a shape error."""
    n = store.n_rows
    n_samples = store.con.execute(f"SELECT count(*) FROM {S.SAMPLES}").fetchone()[0]
    fix = f"Fix: re-ingest the dataset, or run `python -m curation analyze {store.path} --force`."
    if n_samples != n or len(df) != n:
        raise StateError(f"dataset {store.name} does not match its analysis run {run_id}: the samples table has "
                         f"{n_samples:,} rows, the analysis {len(df):,}, the dataset records {n:,}; the file was "
                         f"edited or damaged. {fix}")
    if S.ROW in df.columns and not np.array_equal(df[S.ROW].to_numpy(), np.arange(n)):
        raise StateError(f"analysis run {run_id} of {store.name}: its rows are not 0..{n - 1} in order. {fix}")
    if "prototype" in df.columns:
        known = store.read_table(table_names(run_id)["prototypes"], ["prototype"])["prototype"].to_numpy()
        p = df["prototype"].to_numpy()
        ok = np.zeros(int(max(known.max(initial=0), p.max(initial=0))) + 1, bool)
        ok[known] = True
        bad = np.unique(p[(p < 0) | ~ok[np.maximum(p, 0)]])  # O(n), no sort of the 10M ids
        if len(bad):
            raise StateError(f"analysis run {run_id} of {store.name}: prototype id(s) {bad[:5].tolist()} are not in "
                             f"its prototypes table (edited or damaged). {fix}")


def report_counts(store, run_id: str) -> dict:
    """What a run's report counts, aggregated by DuckDB over its stored samples table (at 10M rows
    reading the table into pandas for a few counts took 8.7 s): rows, bands, near-duplicate groups
    and drops, HDBSCAN clusters and noise share, for the columns the run has."""
    name = table_names(run_id)["samples"]
    cols = set(store.table_columns(name))
    exprs = {"n": "count(*)"}
    if "band" in cols:
        exprs.update({f"band_{b}": f"count(*) FILTER (WHERE band = '{b}')" for b in ("core", "tail", "outlier")})
    if {"dup_group", "is_dup"} <= cols:
        exprs.update(dup_groups="count(DISTINCT dup_group) FILTER (WHERE dup_group >= 0)",
                     dups="coalesce(sum(is_dup::INTEGER), 0)")
    if "hdbscan_label" in cols:
        exprs.update(hdbscan_clusters="coalesce(max(hdbscan_label), -1) + 1",
                     hdbscan_noise="avg((hdbscan_label < 0)::DOUBLE)")
    out = store.aggregate(name, exprs)
    if out["n"] != store.n_rows:
        check_run(store, run_id, store.read_table(name, [S.ROW]))  # raises, naming the mismatch
    return out


def cluster_label_map(store, run_id: str) -> dict[int, str]:
    """{prototype: its label} of a run ("" where none; {} for runs stored before labels)."""
    name = table_names(run_id)["prototypes"]
    if "label" not in store.table_columns(name):
        return {}
    t = store.read_table(name, ["prototype", "label"])
    return dict(zip(t["prototype"].astype(int), t["label"].fillna("").astype(str)))


def centroids_of(prototypes_table) -> np.ndarray:
    """The (k, d) float32 centroids stored in a run's prototypes table (one blob per prototype)."""
    return np.stack([np.frombuffer(b, np.float32) for b in prototypes_table["centroid"]])


def load_table(store, run_id: str, which: str):
    """One of the run's side tables: "prototypes", "knn" or "confounders"."""
    return store.read_table(table_names(run_id)[which])


# ---------------------------------------------------------------------------------------------
def features(store):
    """The dataset's vectors as the analysis sees them, read on demand: a
    :class:`curation.vector_io.Features` (each kind L2-normalised, side by side, joint-scaled when
    both are present) and {kind: its slice of the columns}. Nothing is read until rows are asked
    for; close ``F.source`` when done (an inline dataset's source holds a read connection)."""
    from curation.vector_io import Features

    kinds = [k for k in S.EMB_KINDS if store.dim(k) is not None]
    if not kinds:
        raise StateError(f"dataset {store.name} has no embeddings.")
    F = Features(store.vector_source(), kinds)
    return F, F.slices


def resolve_space(config: AnalysisConfig, kinds) -> AnalysisConfig:
    """``space="auto"``: the joint space when both modalities exist, else the one present."""
    kinds = list(kinds)
    if config.space != "auto":
        return config
    if not kinds:
        raise StateError("the dataset has no embeddings.")
    return replace(config, space="joint" if len(kinds) == 2 else kinds[0])


def analyze(db: str | Path, config: AnalysisConfig = AnalysisConfig(), *, steps=STEPS,
            progress: Progress | None = None, force: bool = False, backend: str = "local",
            address: str | None = None) -> str:
    """Run the analysis ``steps`` on dataset ``db`` and store the results. Returns the run id.

    The run id is a hash of the (resolved) config and the dataset fingerprint. When that run has
    already completed every requested step, it is returned at once (no vectors read, no new row)
    unless ``force``. Running further steps of an existing run adds them to it.

    Parameters
    ----------
    db : path-like
        The dataset file (opened for writing at the end only).
    config : AnalysisConfig
        ``space="auto"`` resolves to joint / image / text by what the dataset holds.
    steps : iterable of str
        Any of :data:`STEPS`; a step whose input step has not run for this config is refused.
    progress : callable(step, done, total), optional
    force : bool
        Recompute the requested steps even when the run has them.
    backend : ``local`` or ``ray``
        Where the per-block and per-cluster tasks run (:mod:`curation.parallel`): here, or on a Ray
        cluster (``address``; default ``RAY_ADDRESS``, else Ray started on this machine). The same
        run id and the same tables either way; the dataset's folder must be on a file system every
        node sees.
    """
    import pandas as pd


    steps_in = [s.strip() for s in steps] if not isinstance(steps, str) else [steps]
    unknown = set(steps_in) - set(STEPS)
    steps = [s for s in STEPS if s in set(steps_in)]
    if unknown or not steps:
        raise CurationError(f"unknown step(s) {sorted(unknown)}. Fix: use some of {', '.join(STEPS)}.")
    prog = progress or (lambda step, done, total: None)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    with open_store(db) as store:
        n = store.n_rows
        kinds = [k for k in S.EMB_KINDS if store.dim(k) is not None]
        config = resolve_space(config, kinds)
        if not config.label_columns and store.label_columns():  # the dataset's declared labels
            config = replace(config, label_columns=tuple(store.label_columns()))
        config.validate(n)
        if "map" in steps and n < MAP_MIN_ROWS:  # before any vector is read
            raise CurationError(f"the map step needs at least {MAP_MIN_ROWS} samples; this dataset has {n}. "
                                f"Fix: leave out the map step (--steps prototypes,density,quality,confounders).")
        fingerprint = store.fingerprint
        run_id = run_id_for(config, fingerprint)
        names = table_names(run_id)
        prev = next((r for r in R.list_runs(store, "analysis") if r.run_id == run_id), None)
        done_steps = list(prev.steps) if prev and store.has_table(names["samples"]) else []
        if not force and set(steps) <= set(done_steps):
            log.info("analysis %s already has %s: cached", run_id, ", ".join(steps))
            checkpoint.clear(work_folder(db, run_id))  # left by an interrupted --force of this run
            return run_id
        for s in steps:
            need = REQUIRES.get(s)
            if need and need not in steps and need not in done_steps:
                raise CurationError(f"step '{s}' needs the '{need}' step of this config first. "
                                    f"Fix: add it (--steps {need},{s}) or run all steps.")
        # Read everything, then close the connection: DuckDB's buffer pool would otherwise keep a
        # second copy of the vectors in memory for the whole run (4 GB at 1M x 1024).
        t = time.perf_counter()
        prog("load", 0, 1)
        out = (store.read_table(names["samples"]) if done_steps else pd.DataFrame({S.ROW: np.arange(n)}))
        centroids = None
        if "density" in steps and "prototypes" not in steps:
            pt = store.read_table(names["prototypes"])
            centroids = centroids_of(pt)
        inp = _Inputs(config=config, n=n, k=config.k or _default_k(n), F=None, slices={}, X=None, out=out,
                      shared_space=bool(store.meta.get("shared_space")), centroids=centroids,
                      case=_case_codes(store) if {"density", "quality"} & set(steps) else None,
                      # read by the step that needs them, not held through the run (10M Python
                      # strings are about 0.8 GB)
                      captions=(partial(_read_captions, Path(db))
                                if {"quality", "prototypes"} & set(steps)
                                and S.CAPTION in [c for c, _ in store.columns()] else None),
                      meta=store.samples(store.metadata_columns()) if "confounders" in steps else None,
                      case_column=store.meta.get("case_column"))
        inp.F, inp.slices = features(store)
        inp.work = work_folder(db, run_id)
        if force:
            checkpoint.clear(inp.work)
        checkpoint.drop_partitions(inp.work)  # left by a killed run: rebuilt from the vectors
        prev_outputs = dict(prev.outputs) if prev and done_steps else {}
        prev_timings = dict(prev.timings) if prev and done_steps else {}
    inp.X = _space(inp.F, inp.slices, config.space)
    try:
        inp.runner = parallel.runner(backend, address)
    except BaseException:
        inp.F.source.close()
        raise
    timings["load"] = time.perf_counter() - t
    peaks = {"load": _peak_rss_gb()}
    prog("load", 1, 1)

    tables: dict[str, object] = {}
    outputs = {k: v for k, v in prev_outputs.items() if k not in ("tables", "k", "steps", "n")}
    try:
        for step in steps:
            t = time.perf_counter()
            kept = checkpoint.load(inp.work, step) if not force else None
            if kept is not None:  # an interrupted run of this config and dataset got this far
                log.info("analysis %s: step %s resumed from %s", run_id, step, inp.work)
                prog(step, 1, 1)
                res = StepResult(*kept[:3])
                timings_step = kept[3]
                if step == "prototypes":
                    pt = res.tables["prototypes"]
                    inp.centroids = centroids_of(pt)
            else:
                res = STEP_FUNCS[step](inp, prog)
                timings_step = time.perf_counter() - t
                checkpoint.save(inp.work, step, res, timings_step)
                res.tables = checkpoint.on_disk(inp.work, step, res.tables)  # not held to the end
            inp.out = inp.out.assign(**res.columns)
            tables.update({names[k]: v for k, v in res.tables.items()})
            outputs.update(res.outputs)
            timings[step] = timings_step if timings_step is not None else time.perf_counter() - t
            del res
            peaks[step] = _peak_rss_gb()
            arrow_io.release_unused_memory()  # the step's reads and checkpoint left it in Arrow's pool
    finally:
        inp.runner.close()
        inp.F.source.close()
        checkpoint.drop_partitions(inp.work)  # as large as the vectors; rebuilt from them when needed

    del inp.F, inp.X
    tables[names["samples"]] = inp.out
    timings["total"] = time.perf_counter() - t_all
    timings = {**{k: v for k, v in prev_timings.items() if isinstance(v, (int, float))}, **timings}
    all_steps = [s for s in STEPS if s in set(done_steps) | set(steps)]
    # the process's peak resident memory after each step (it only grows: the step where it jumps
    # is the one that set the peak); `info` and the benchmarks report it
    outputs.update({"tables": names, "k": int(inp.k), "steps": all_steps, "n": n, "peak_rss_gb": peaks,
                    "backend": {"name": inp.runner.backend, "workers": inp.runner.workers}})
    with open_store(db, read_only=False) as store:
        if store.fingerprint != fingerprint:
            checkpoint.clear(inp.work)  # kept steps of data that is gone
            raise StateError(f"dataset {db} changed during the analysis; nothing was written. Fix: run it again.")
        store.record_run("analysis", json.loads(config.to_json()), timings, outputs, run_id=run_id,
                         extra_tables=tables)
    checkpoint.clear(inp.work)
    log.info("analysis %s done in %.1f s", run_id, timings["total"])
    return run_id


def _read_captions(db: Path, rows: np.ndarray | None = None) -> list:
    """The caption of every row, or of ``rows`` in their order (a step's own read: see
    ``_Inputs.captions``)."""
    with open_store(db) as s:
        if rows is not None:
            return s.sample_rows(rows, [S.CAPTION])[S.CAPTION].tolist()
        return s.samples([S.CAPTION])[S.CAPTION].tolist()


def work_folder(db, run_id: str) -> Path:
    """Where a run keeps its finished steps and by-cluster partitions until it is recorded:
    ``<dataset>.work/<run id>/`` (removed when the run lands)."""
    db = Path(db)
    return db.with_name(db.name + ".work") / run_id


def _peak_rss_gb() -> float | None:
    """Peak resident memory of this process so far, in GB (None where the OS does not say)."""
    try:
        import resource
        import sys

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(kb / (2**30 if sys.platform == "darwin" else 2**20), 2)
    except (ImportError, OSError):
        return None


def peak_step(peaks: dict) -> tuple[str, float] | None:
    """(step, GB) of the step during which the recorded peak memory grew the most."""
    order = ["load", *STEPS]  # (a stored record's keys come back sorted)
    vals = sorted(((k, v) for k, v in (peaks or {}).items() if isinstance(v, (int, float))),
                  key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    if not vals:
        return None
    grow = [(k, v - (vals[i - 1][1] if i else 0.0)) for i, (k, v) in enumerate(vals)]
    step = max(grow, key=lambda kv: kv[1])[0]
    return step, dict(vals)[step]


def _default_k(n: int) -> int:
    return default_k(n)


def load_knn(store, run_id: str, which: str = "knn") -> tuple[np.ndarray, np.ndarray]:
    """A stored kNN graph: (nbr (n, k) int64, sim (n, k) float32), read through Arrow.

    ``which``: "knn" (the analysis space: density) or "dedup_knn" (the duplicate space, see
    :func:`dedup_kind`; runs whose analysis space is that modality, and runs stored before this
    table existed, have only "knn", which is then returned).
    """
    name = table_names(run_id)[which]
    if which == "dedup_knn" and not store.has_table(name):
        name = table_names(run_id)["knn"]
    t = store.read_arrow(name, ["nbr", "sim"])
    out = []
    for name, dtype in (("nbr", np.int64), ("sim", np.float32)):
        col = t.column(name).combine_chunks()
        flat = col.flatten().to_numpy()
        if len(col) and len(flat) % len(col):
            raise StateError(f"the kNN table of {run_id} is damaged. Fix: run the density step again.")
        out.append(flat.reshape(len(col), -1).astype(dtype))
    return out[0], out[1]


def _case_codes(store) -> np.ndarray | None:
    import pandas as pd

    col = store.meta.get("case_column")
    if not col or col not in store.metadata_columns():
        return None
    return pd.factorize(store.samples([col])[col].astype(str))[0]
