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

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np

from curation import schema as S
from curation.errors import CurationError, StateError

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
STEPS = ("prototypes", "density", "map", "quality", "confounders")
# which step writes which per-sample columns
STEP_COLUMNS = {
    "prototypes": ["prototype", "second_prototype", "proto_dist", "second_dist", "proto_pct", "band", "fps_rank"],
    "density": ["knn_density", "tail_score", "dup_group", "is_dup"],
    "map": ["map_x", "map_y", "map_fitted", "hdbscan_label", "glosh_score"],
    "quality": ["fidelity", "fidelity_score", "consistency", "consistency_score"],
    "confounders": [],
}
REQUIRES = {"density": "prototypes", "confounders": "prototypes"}

Progress = Callable[[str, int, int], None]  # (step, done, total)


@dataclass(frozen=True)
class AnalysisConfig:
    """Every parameter of an analysis run (defaults from DESIGN section 4 / CheXficient).

    Attributes
    ----------
    space : "joint" | "image" | "text"
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

    space: str = "joint"
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
    version: int = CONFIG_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

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
        return cls(**d)

    def validate(self, n: int) -> None:
        from curation.spaces import SPACES

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


def run_id_for(config: AnalysisConfig, fingerprint: str) -> str:
    h = hashlib.blake2b((config.to_json() + fingerprint).encode(), digest_size=6).hexdigest()
    return f"analysis-{h}"


def table_names(run_id: str) -> dict[str, str]:
    h = run_id.split("-", 1)[1]
    return {"samples": f"analysis_{h}", "prototypes": f"prototypes_{h}", "knn": f"knn_{h}",
            "confounders": f"confounders_{h}"}


def latest_run(store) -> str | None:
    """The most recent analysis run of this dataset's current content, or None."""
    runs = store.runs("analysis")
    runs = runs[runs["fingerprint"] == store.fingerprint]
    return None if runs.empty else str(runs["run_id"].iloc[-1])


def load(store, run_id: str | None = None):
    """Per-sample analysis results as a DataFrame (row_idx order) and the run's config.

    Raises :class:`StateError` with the command to run when there is no analysis yet.
    """
    run_id = run_id or latest_run(store)
    if run_id is None:
        raise StateError(f"dataset {store.name} has no analysis yet. "
                         f"Fix: run `python -m curation analyze {store.path}`.")
    names = table_names(run_id)
    df = store.read_table(names["samples"])
    if store.has_table(S.REWARD_SCORES):  # reward-model scores are per sample too; gates read them
        rw = store.read_table(S.REWARD_SCORES)
        if len(rw) == len(df):
            df = df.join(rw.drop(columns=[S.ROW]))
    runs = store.runs("analysis")
    cfg = json.loads(runs[runs["run_id"] == run_id]["config"].iloc[-1])
    return df, cfg


def load_table(store, run_id: str, which: str):
    """One of the run's side tables: "prototypes", "knn" or "confounders"."""
    return store.read_table(table_names(run_id)[which])


# ---------------------------------------------------------------------------------------------
def _features(store, n: int):
    """All present kinds, each half L2-normalised, side by side; joint-scaled when both present.

    Each kind is read straight into its columns of F and normalised in chunks, so the peak is
    F itself (4 GB at 1M x (512 + 512)), not F plus copies.
    Returns (F, slices) with slices = {kind: slice of F's columns}.
    """
    from curation.spaces import normalize

    kinds = [k for k in S.EMB_KINDS if store.dim(k) is not None]
    if not kinds:
        raise StateError(f"dataset {store.name} has no embeddings.")
    dims = [store.dim(k) for k in kinds]
    F = np.empty((n, sum(dims)), np.float32)
    slices, off = {}, 0
    for kind, d in zip(kinds, dims):
        part = F[:, off:off + d]
        store.vectors([kind], out={kind: part})  # read straight into F: no second copy
        for i in range(0, n, 1 << 16):
            part[i:i + (1 << 16)] = normalize(part[i:i + (1 << 16)])
        slices[kind] = slice(off, off + d)
        off += d
    if len(kinds) == 2:
        F *= np.float32(1 / np.sqrt(2))
    return F, slices


def _space(F: np.ndarray, slices: dict, space: str) -> np.ndarray:
    if space == "joint":
        if len(slices) < 2:
            have = next(iter(slices))
            raise CurationError(f"the joint space needs image and text embeddings; this dataset has only "
                                f"{have}. Fix: use --space {have}.")
        return F
    if space not in slices:
        raise CurationError(f"this dataset has no {space} embeddings. Fix: choose another --space.")
    return _half(F, slices, space)


def _half(F, slices, kind, copy: bool = True) -> np.ndarray:
    """One modality's unit vectors: a contiguous copy, or (``copy=False``) a view of F whose rows
    have norm 1/sqrt(2) in the joint layout (the quality functions normalise chunk by chunk)."""
    if not copy:
        return F[:, slices[kind]]
    part = np.ascontiguousarray(F[:, slices[kind]])
    if len(slices) == 2:
        part *= np.float32(np.sqrt(2))
    return part


def analyze(db: str | Path, config: AnalysisConfig = AnalysisConfig(), *, steps=STEPS,
            progress: Progress | None = None) -> str:
    """Run the analysis ``steps`` on dataset ``db`` and store the results. Returns the run id.

    Parameters
    ----------
    db : path-like
        The dataset file (opened for writing).
    config : AnalysisConfig
    steps : iterable of str
        Any of :data:`STEPS`; a step whose input step has not run for this config is refused.
    progress : callable(step, done, total), optional
    """
    import pandas as pd

    from curation import confounders as C
    from curation import density as D
    from curation import prototypes as P
    from curation import projection as M
    from curation import quality as Q
    from curation.store import open_store

    unknown = set(steps) - set(STEPS)
    steps = [s for s in STEPS if s in set(steps)]
    if unknown or not steps:
        raise CurationError(f"unknown step(s) {sorted(unknown)}. Fix: use some of {', '.join(STEPS)}.")
    prog = progress or (lambda step, done, total: None)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    # Read everything, then close the connection: DuckDB's buffer pool would otherwise keep a
    # second copy of the vectors in memory for the whole run (4 GB at 1M x 1024).
    t = time.perf_counter()
    prog("load", 0, 1)
    with open_store(db) as store:
        n = store.n_rows
        config.validate(n)
        fingerprint = store.fingerprint
        ds_meta = dict(store.meta)
        run_id = run_id_for(config, fingerprint)
        names = table_names(run_id)
        out = (store.read_table(names["samples"]) if store.has_table(names["samples"])
               else pd.DataFrame({S.ROW: np.arange(n)}))
        for s in steps:
            need = REQUIRES.get(s)
            if need and need not in steps and "prototype" not in out.columns:
                raise CurationError(f"step '{s}' needs the '{need}' step of this config first. "
                                    f"Fix: add it (--steps {need},{s}) or run all steps.")
        proto_table = (store.read_table(names["prototypes"])
                       if "density" in steps and "prototypes" not in steps and store.has_table(names["prototypes"])
                       else None)
        case = _case_codes(store) if "density" in steps else None
        meta = store.samples(store.metadata_columns()) if "confounders" in steps else None
        F, slices = _features(store, n)
    tables: dict[str, object] = {}

    X = _space(F, slices, config.space)
    timings["load"] = time.perf_counter() - t
    prog("load", 1, 1)
    k = config.k or P.default_k(n)

    if "prototypes" in steps:
        t = time.perf_counter()
        prog("prototypes", 0, n)
        protos = P.fit_prototypes(X, k, seed=config.seed, niter=config.kmeans_iters,
                                  max_train=config.kmeans_train_max)
        pct = P.cluster_percentiles(protos.assign, protos.dist)
        band = P.bands(pct, config.core_pct, config.tail_pct)
        done = [0]

        def fps_prog(m):
            done[0] += m
            prog("prototypes", done[0], n)

        fps = P.fps_ranks(X, protos.assign, protos.dist, band == P.BAND_CORE, config.fps_exact_max,
                          progress=fps_prog)
        out = out.assign(prototype=protos.assign, second_prototype=protos.second,
                         proto_dist=protos.dist, second_dist=protos.second_dist, proto_pct=pct, band=band, fps_rank=fps)
        tables[names["prototypes"]] = pd.DataFrame({
            "prototype": np.arange(k), "size": protos.sizes,
            "centroid": [c.tobytes() for c in protos.centroids]})
        timings["prototypes"] = time.perf_counter() - t
        prog("prototypes", n, n)

    if "density" in steps:
        t = time.perf_counter()
        done = [0]

        def knn_prog(m):
            done[0] += m
            prog("density", done[0], n)

        if "prototypes" in steps:
            centroids = protos.centroids
        else:
            centroids = np.stack([np.frombuffer(b, np.float32) for b in proto_table["centroid"]])
        probes = P.nearest_prototypes(X, centroids, config.knn_probes)
        nbr, sim = D.knn_within_clusters(X, out["prototype"].to_numpy(), probes, k=config.knn_k,
                                         progress=knn_prog)
        dens = D.knn_density(sim)
        group, is_dup = D.duplicate_groups(nbr, sim, config.dedup_eps, case=case,
                                           keep_key=out["proto_dist"].to_numpy())
        out = out.assign(knn_density=dens, tail_score=D.tail_score(dens), dup_group=group,
                         is_dup=is_dup)
        tables[names["knn"]] = _knn_table(nbr, sim)
        timings["density"] = time.perf_counter() - t

    if "map" in steps:
        t = time.perf_counter()
        prog("map", 0, 2)
        xy, fitted = M.umap_map(X, fit_max=config.map_fit_max, pca_dims=config.map_pca_dims,
                                seed=config.seed)
        prog("map", 1, 2)
        labels, glosh = D.hdbscan_glosh(xy, config.hdbscan_min_cluster_size)
        out = out.assign(map_x=xy[:, 0], map_y=xy[:, 1], map_fitted=fitted, hdbscan_label=labels,
                         glosh_score=glosh)
        prog("map", 2, 2)
        timings["map"] = time.perf_counter() - t

    if "quality" in steps:
        t = time.perf_counter()
        prog("quality", 0, 2)
        shared = bool(ds_meta.get("shared_space"))
        if "image" in slices and "text" in slices:
            # views, not copies: at 1M x 512 a copy of each half would add 4 GB to the peak
            img, txt = _half(F, slices, "image", copy=False), _half(F, slices, "text", copy=False)
            fid, reason = Q.fidelity(img, txt, shared)
            prog("quality", 1, 2)
            if config.space == "image" and "prototype" in out.columns:
                img_assign = out["prototype"].to_numpy()
            else:
                img_assign = P.fit_prototypes(img, k, seed=config.seed, niter=config.kmeans_iters,
                                              max_train=config.kmeans_train_max).assign
            del img
            cons = Q.consistency(txt, img_assign)
            del txt
            out = out.assign(consistency=cons, consistency_score=Q.rank_score(cons))
        else:
            fid, reason = None, "not available: the dataset lacks image or text embeddings"
            out = out.assign(consistency=np.nan, consistency_score=np.nan)
        if fid is None:
            out = out.assign(fidelity=np.nan, fidelity_score=np.nan)
        else:
            out = out.assign(fidelity=fid, fidelity_score=Q.rank_score(fid))
        timings["quality"] = time.perf_counter() - t
        timings["fidelity_reason"] = reason or "available"
        prog("quality", 2, 2)

    if "confounders" in steps:
        t = time.perf_counter()
        meta_cols = list(meta.columns)
        case_col = ds_meta.get("case_column")
        label = ds_meta.get("label_column")
        rng = np.random.default_rng(config.seed)
        sub = np.arange(n) if n <= config.probe_max else np.sort(
            rng.choice(n, config.probe_max, replace=False))
        Z = np.zeros((n, 1), np.float32)
        Z_sub = M.pca_reduce(X[sub], 64, seed=config.seed)
        if n <= config.probe_max:
            Z = Z_sub
        else:  # the probe only reads the sampled rows
            Z = np.zeros((n, Z_sub.shape[1]), np.float32)
            Z[sub] = Z_sub
        done = [0]

        def conf_prog(m):
            done[0] += m
            prog("confounders", done[0], len(meta_cols))

        table = C.confounder_table(
            meta, out["prototype"].to_numpy(), Z,
            case=meta[case_col].to_numpy() if case_col in meta.columns else None,
            label_columns=[label] if label else [], skip_columns=[case_col] if case_col else [],
            v_threshold=config.confounder_v, lift_threshold=config.confounder_lift,
            probe_max=config.probe_max, seed=config.seed, progress=conf_prog)
        tables[names["confounders"]] = table
        timings["confounders"] = time.perf_counter() - t

    del F, X
    tables[names["samples"]] = out
    timings["total"] = time.perf_counter() - t_all
    outputs = {"tables": names, "k": int(k), "steps": steps, "n": n}
    with open_store(db, read_only=False) as store:
        if store.fingerprint != fingerprint:
            raise StateError(f"dataset {db} changed during the analysis; nothing was written. Fix: run it again.")
        store.record_run("analysis", json.loads(config.to_json()), timings, outputs, run_id=run_id,
                     extra_tables=tables)
    log.info("analysis %s done in %.1f s", run_id, timings["total"])
    return run_id


def _knn_table(nbr: np.ndarray, sim: np.ndarray):
    """The kNN graph as an Arrow table of fixed-size lists (no per-row Python objects)."""
    import pyarrow as pa

    def fixed(a, typ):
        a = np.ascontiguousarray(a)
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), type=typ), a.shape[1])

    return pa.table({S.ROW: np.arange(len(nbr)), "nbr": fixed(nbr.astype(np.int32), pa.int32()),
                     "sim": fixed(sim.astype(np.float32), pa.float32())})


def load_knn(store, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The stored kNN graph: (nbr (n, k) int64, sim (n, k) float32), read through Arrow."""
    t = store.read_arrow(table_names(run_id)["knn"], ["nbr", "sim"])
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
