"""The analysis steps, each a function of the inputs gathered once (:class:`_Inputs`) that returns
its per-sample columns, side tables and facts (:class:`StepResult`); :mod:`curation.analysis` runs
them, stores the results and records the run."""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from curation import confounders as C
from curation import density as D
from curation import projection as M
from curation import prototypes as P
from curation import quality as Q
from curation import schema as S
from curation.checkpoint import partitions_dir, spill
from curation.errors import CurationError
from curation.labels import cluster_labels
from curation.vector_io import Features


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
    have norm 1/sqrt(2) in the joint layout (the quality functions normalise chunk by chunk).
    On a :class:`curation.vector_io.Features` both are read on demand (unit rows, or the scaled half)."""
    if isinstance(F, Features):
        return F.half(kind) if not copy else Features(F.source, [kind], partitions=F.partitions)
    if not copy:
        return F[:, slices[kind]]
    part = np.ascontiguousarray(F[:, slices[kind]])
    if len(slices) == 2:
        part *= np.float32(np.sqrt(2))
    return part


@dataclass
class StepResult:
    """What one analysis step produced.

    Attributes
    ----------
    columns : dict {name: ndarray (n,)}
        Per-sample columns added to the run's samples table.
    tables : dict {"prototypes" | "knn" | "confounders": DataFrame or Arrow table}
        Side tables, named by :func:`table_names`.
    outputs : dict
        Small facts recorded with the run (JSON), such as ``fidelity_reason``.
    """

    columns: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)


@dataclass
class _Inputs:
    """Everything the steps read, gathered once before any step runs."""

    config: object                  # the run's AnalysisConfig
    n: int
    k: int
    F: np.ndarray
    slices: dict
    X: np.ndarray
    out: object                     # DataFrame: columns of this run computed so far (row order)
    shared_space: bool
    case: np.ndarray | None = None  # case codes (density)
    meta: object = None             # metadata frame (confounders)
    case_column: str | None = None
    label_columns: tuple = ()
    centroids: np.ndarray | None = None  # from a previous prototypes step of this run
    probes: np.ndarray | None = None     # (n, knn_probes) nearest prototypes, from the prototypes step in this process
    captions: object = None         # reads the caption texts (a callable), None without a caption column
    work: object = None             # the run's work folder (Path): by-cluster partitions, finished steps
    runner: object = None           # where per-block and per-cluster tasks run (curation.parallel)


def _query_folder(inp: _Inputs, name: str):
    """Where a kNN search copies its queries grouped by cluster (runs reading vectors on demand)."""
    return partitions_dir(inp.work, name) if inp.work is not None and isinstance(inp.X, Features) else None


def _by_cluster(inp: _Inputs, X, assign: np.ndarray, name: str, prog=None, step: str = "") -> None:
    """Give ``X`` (read on demand) a copy of its vectors in the order of ``assign``, so the rows of
    one cluster are one contiguous read for the per-cluster work (FPS, kNN). In-memory arrays and
    runs without a work folder need none."""
    if not isinstance(X, Features) or inp.work is None:
        return
    done = [0]

    def part_prog(m):
        done[0] += m
        if prog:
            prog(f"{step}: partition", done[0], len(assign) * len(X.kinds))

    X.partition(assign, partitions_dir(inp.work, name), progress=part_prog, name=name)


def _step_prototypes(inp: _Inputs, prog) -> StepResult:
    import pandas as pd


    cfg, n, X = inp.config, inp.n, inp.X
    prog("prototypes", 0, n)
    protos = P.fit_prototypes(X, inp.k, seed=cfg.seed, niter=cfg.kmeans_iters, max_train=cfg.kmeans_train_max,
                              runner=inp.runner, probes=cfg.knn_probes)
    pct = P.cluster_percentiles(protos.assign, protos.dist)
    band = P.bands(pct, cfg.core_pct, cfg.tail_pct)
    done = [0]

    def fps_prog(m):
        done[0] += m
        prog("prototypes", done[0], n)

    _by_cluster(inp, X, protos.assign, "prototypes", prog, "prototypes")
    fps = P.fps_ranks(X, protos.assign, protos.dist, band == P.BAND_CORE, cfg.fps_exact_max, progress=fps_prog,
                      runner=inp.runner)
    inp.centroids = protos.centroids
    inp.probes = protos.nearest  # the density step's probes: the same pass, not a second one

    if inp.captions is not None:
        rows = label_rows(protos.assign, protos.dist, LABEL_CAPTIONS_MAX)
        caps = inp.captions() if rows is None else inp.captions(rows)
        labels = cluster_labels(caps, protos.assign if rows is None else protos.assign[rows], inp.k,
                                centroids=protos.centroids)
        del caps
    else:
        labels = [""] * inp.k
    prog("prototypes", n, n)
    return StepResult(
        columns=dict(prototype=protos.assign, second_prototype=protos.second, proto_dist=protos.dist,
                     second_dist=protos.second_dist, proto_pct=pct, band=band, fps_rank=fps),
        tables={"prototypes": pd.DataFrame({"prototype": np.arange(inp.k), "size": protos.sizes,
                                            "label": labels,
                                            "centroid": [c.tobytes() for c in protos.centroids]})})


# a cluster is named from at most this many captions, its members nearest the prototype (its most
# typical ones): at 10M rows naming read and tokenised all 10M captions (about 0.8 GB of Python
# strings, left behind as fragmented heap through the density step); no cluster of the demo or
# MedPix is that large, so their names are unchanged
LABEL_CAPTIONS_MAX = 1000


def label_rows(assign: np.ndarray, dist: np.ndarray, cap: int) -> np.ndarray | None:
    """Ascending rows whose captions name the clusters: None (every row) when no cluster holds more
    than ``cap`` rows, else each cluster's ``cap`` rows nearest its prototype (ties by row)."""
    sizes = np.bincount(assign)
    if not len(sizes) or sizes.max() <= cap:
        return None
    n = len(assign)
    near = np.empty(n, np.int64)
    near[np.argsort(dist, kind="stable")] = np.arange(n)  # distance rank, ties by row
    o = np.argsort(assign.astype(np.int64) * n + near, kind="stable")
    rank = np.arange(n) - np.repeat(np.r_[0, np.cumsum(sizes)[:-1]], sizes)
    return np.sort(o[rank < cap])


def dedup_kind(slices) -> str:
    """The modality near-duplicates are decided on: the image embedding when there is one, else
    the text. In the joint space an identical caption lifts two different images above the
    threshold (MedPix: 290 "duplicates" in the joint space, 162 images with any image neighbour
    above 0.95), so duplicates are never decided there."""
    return "image" if "image" in slices else "text"


def _step_density(inp: _Inputs, prog) -> StepResult:
    """kNN density and the long-tail score in the analysis space; near-duplicate groups on the
    :func:`dedup_kind` embedding (its own kNN graph, unless the analysis space is that modality)."""

    cfg, n, X = inp.config, inp.n, inp.X
    kind = dedup_kind(inp.slices)
    same = cfg.space == kind
    total = n if same else 2 * n
    done = [0]

    def knn_prog(m):
        done[0] += m
        prog("density", done[0], total)

    probes, inp.probes = inp.probes, None
    if probes is None or len(probes) != n:  # a resumed run: the same search as the prototypes step's
        probes = P.nearest_prototypes(X, inp.centroids, cfg.knn_probes, runner=inp.runner)
    _by_cluster(inp, X, inp.out["prototype"].to_numpy(), "prototypes", prog, "density")
    nbr, sim = D.knn_within_clusters(X, inp.out["prototype"].to_numpy(), probes, k=cfg.knn_k, progress=knn_prog,
                                     query_folder=_query_folder(inp, "prototype-queries"), runner=inp.runner,
                                     centroids=inp.centroids, seed=cfg.seed)
    dens = D.knn_density(sim)
    cols = dict(knn_density=dens, tail_score=D.tail_score(dens))
    tables = {"knn": _knn_table(nbr, sim)}
    if same:
        dnbr, dsim = nbr, sim
    else:
        # the density graph is in its table now: its arrays (1.2 GB at 10M) and the by-prototype
        # copy of the vectors (20 GB of disk at 10M) are not needed by the duplicate search
        del nbr, sim
        tables["knn"] = spill(inp.work, "knn", tables["knn"])  # on disk while the next graph is built
        if isinstance(X, Features):
            X.drop_partition("prototypes")
        # a view of F (no copy): in the joint layout its rows have norm 1/sqrt(2), so every inner
        # product is half the cosine; k-means and the neighbour order are unaffected by the scale
        Xd = _half(inp.F, inp.slices, kind, copy=False)
        scale = np.float32(2.0 if len(inp.slices) == 2 else 1.0)
        # these clusters only cut the search into lists (4 probed per sample): a k-means on 64
        # samples per cluster and 10 iterations partitions as well, at a tenth of the cost
        pd_ = P.fit_prototypes(Xd, inp.k, seed=cfg.seed, niter=min(cfg.kmeans_iters, 10),
                               max_train=min(cfg.kmeans_train_max, 64 * inp.k), runner=inp.runner,
                               probes=cfg.knn_probes)
        dprobes, pd_.nearest = pd_.nearest, None
        _by_cluster(inp, Xd, pd_.assign, f"{kind}-clusters", prog, "density")
        dnbr, dsim = D.knn_within_clusters(Xd, pd_.assign, dprobes, k=cfg.knn_k, progress=knn_prog,
                                           query_folder=_query_folder(inp, f"{kind}-queries"), runner=inp.runner,
                                           centroids=pd_.centroids, seed=cfg.seed)
        dsim = np.where(np.isfinite(dsim), dsim * scale, dsim).astype(np.float32)
        tables["dedup_knn"] = _knn_table(dnbr, dsim)
        if kind == "image":
            cols["image_prototype"] = pd_.assign  # the quality step's image clusters too
    group, is_dup = D.duplicate_groups(dnbr, dsim, cfg.dedup_eps, case=inp.case,
                                       keep_key=inp.out["proto_dist"].to_numpy())
    cols.update(dup_group=group, is_dup=is_dup)
    return StepResult(columns=cols, tables=tables, outputs={"dedup_space": kind})


def _step_map(inp: _Inputs, prog) -> StepResult:
    cfg = inp.config
    if inp.n < MAP_MIN_ROWS:
        raise CurationError(f"the map step needs at least {MAP_MIN_ROWS} samples; this dataset has {inp.n}. "
                            f"Fix: leave out the map step (--steps prototypes,density,quality,confounders).")
    prog("map", 0, 2)
    xy, fitted = M.umap_map(inp.X, fit_max=cfg.map_fit_max, pca_dims=cfg.map_pca_dims, seed=cfg.seed,
                            assign=inp.out["prototype"].to_numpy() if "prototype" in inp.out.columns else None,
                            runner=inp.runner, scratch=partitions_dir(inp.work, "map") if inp.work is not None else None)
    prog("map", 1, 2)
    labels, glosh = D.hdbscan_glosh(xy, cfg.hdbscan_min_cluster_size, seed=cfg.seed)
    prog("map", 2, 2)
    return StepResult(columns=dict(map_x=xy[:, 0], map_y=xy[:, 1], map_fitted=fitted, hdbscan_label=labels,
                                   glosh_score=glosh),
                      outputs={"hdbscan_fitted": int(min(inp.n, D.HDBSCAN_FIT_MAX))})


def _step_quality(inp: _Inputs, prog) -> StepResult:
    """Fidelity (shared space only) and consistency. Consistency compares a caption with the
    captions of images like it, so it needs image clusters: the run's own prototypes when the
    analysis space is ``image``, else an image-space k-means with the run's k and seed, stored as
    the ``image_prototype`` column (an output, not a hidden side computation)."""

    cfg, slices = inp.config, inp.slices
    prog("quality", 0, 2)
    cols: dict = {}
    outputs: dict = {}
    if "image" in slices and "text" in slices:
        # views, not copies: at 1M x 512 a copy of each half would add 4 GB to the peak
        img, txt = _half(inp.F, slices, "image", copy=False), _half(inp.F, slices, "text", copy=False)
        if cfg.space == "image" and "prototype" in inp.out.columns:
            img_assign = inp.out["prototype"].to_numpy()
            outputs["consistency_clusters"] = "the run's prototypes (image space)"
        elif "image_prototype" in inp.out.columns:  # fitted by the density step for duplicates
            img_assign = inp.out["image_prototype"].to_numpy()
            outputs["consistency_clusters"] = f"image-space k-means, k={inp.k} (column image_prototype)"
        else:
            img_assign = P.fit_prototypes(img, inp.k, seed=cfg.seed, niter=cfg.kmeans_iters,
                                          max_train=cfg.kmeans_train_max, runner=inp.runner).assign
            cols["image_prototype"] = img_assign
            outputs["consistency_clusters"] = f"image-space k-means, k={inp.k} (column image_prototype)"
        prog("quality", 1, 2)
        # both axes from one pass over the pairs (and a second over the captions)
        fid, reason, cons = Q.fidelity_and_consistency(img, txt, img_assign, inp.shared_space)
        cols.update(consistency=cons, consistency_score=Q.rank_score(cons))
    else:
        fid, reason = None, "not available: the dataset lacks image or text embeddings"
        cols.update(consistency=np.full(inp.n, np.nan), consistency_score=np.full(inp.n, np.nan))
        outputs["consistency_reason"] = "not available: needs image and text embeddings"
    if fid is None:
        cols.update(fidelity=np.full(inp.n, np.nan), fidelity_score=np.full(inp.n, np.nan))
    else:
        cols.update(fidelity=fid, fidelity_score=Q.rank_score(fid))
    outputs["fidelity_reason"] = reason or "available"
    if inp.captions is not None:
        cq = Q.caption_quality(inp.captions(), inp.case)
        cols.update(cq, caption_score=Q.tied_rank_score(cq["caption_quality"]))
        outputs["caption_placeholders"] = int(cq["is_placeholder"].sum())
    else:
        outputs["caption_reason"] = "not available: the dataset has no captions"
    prog("quality", 2, 2)
    return StepResult(columns=cols, outputs=outputs)


def probe_rows(n: int, probe_max: int, seed: int) -> np.ndarray:
    """The rows the confounder probe trains on: all when ``n <= probe_max``, else a seeded sorted
    sample. Drawn once here and passed explicitly, so no two modules must draw the same sample."""
    if n <= probe_max:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, probe_max, replace=False))


def _step_confounders(inp: _Inputs, prog) -> StepResult:
    cfg, n = inp.config, inp.n
    meta = inp.meta
    meta_cols = list(meta.columns)
    if not meta_cols:  # an id + caption pool (DataComp, clip-retrieval): nothing to test, not an error
        prog("confounders", 1, 1)
        return StepResult(tables={"confounders": C.confounder_table(meta, inp.out["prototype"].to_numpy(),
                                                                    np.empty((0, 0), np.float32), rows=np.arange(0))},
                          outputs={"confounders_reason": "not available: the dataset has no metadata columns"})
    rows = probe_rows(n, cfg.probe_max, cfg.seed)
    Z = M.pca_reduce(inp.X[rows], 64, seed=cfg.seed)
    done = [0]

    def conf_prog(m):
        done[0] += m
        prog("confounders", done[0], len(meta_cols))

    case_col, labels = inp.case_column, list(cfg.label_columns)
    table = C.confounder_table(
        meta, inp.out["prototype"].to_numpy(), Z, rows=rows,
        case=meta[case_col].to_numpy() if case_col in meta.columns else None,
        label_columns=labels, skip_columns=[case_col] if case_col else [],
        v_threshold=cfg.confounder_v, lift_threshold=cfg.confounder_lift, seed=cfg.seed, progress=conf_prog)
    return StepResult(tables={"confounders": table}, outputs={"probe_rows": int(len(rows))})


STEP_FUNCS = {"prototypes": _step_prototypes, "density": _step_density, "map": _step_map,
              "quality": _step_quality, "confounders": _step_confounders}


MAP_MIN_ROWS = 20  # UMAP with 15 neighbours and HDBSCAN need a handful of points at least


def _knn_table(nbr: np.ndarray, sim: np.ndarray):
    """The kNN graph as an Arrow table of fixed-size lists (no per-row Python objects)."""
    import pyarrow as pa

    def fixed(a, typ):
        a = np.ascontiguousarray(a)
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), type=typ), a.shape[1])

    return pa.table({S.ROW: np.arange(len(nbr)), "nbr": fixed(nbr.astype(np.int32), pa.int32()),
                     "sim": fixed(sim.astype(np.float32), pa.float32())})
