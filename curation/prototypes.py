"""Prototype curation (CheXficient): spherical k-means, distance bands and farthest-point orders.

All functions are pure: arrays in, arrays out. ``X`` is always a float32 array of shape (n, d)
with unit rows (see :mod:`curation.spaces`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from curation.parallel import LocalRunner
from curation.spaces import normalize

log = logging.getLogger(__name__)

BAND_CORE, BAND_TAIL, BAND_OUTLIER = "core", "tail", "outlier"


def default_k(n: int, k_min: int = 8, k_max: int = 2000) -> int:
    """About sqrt(n) prototypes, bounded to [k_min, k_max] and never more than n // 5."""
    return int(max(1, min(k_max, max(k_min, round(math.sqrt(n))), n // 5)))


@dataclass
class Prototypes:
    """Result of :func:`fit_prototypes`.

    Attributes
    ----------
    centroids : ndarray (k, d), unit rows
    assign : ndarray (n,) int32, the nearest prototype of each sample
    dist : ndarray (n,) float32, cosine distance (1 - cos) to it
    second : ndarray (n,) int32, the second-nearest prototype (-1 when k == 1)
    second_dist : ndarray (n,) float32
    sizes : ndarray (k,) int64
    nearest : ndarray (n, p) int32, the ``probes`` nearest prototypes of each sample, nearest first
        (the lists its kNN search probes: found in the same pass as ``assign``)
    """

    centroids: np.ndarray
    assign: np.ndarray
    dist: np.ndarray
    second: np.ndarray
    second_dist: np.ndarray
    sizes: np.ndarray
    nearest: np.ndarray | None = None


def fit_prototypes(X: np.ndarray, k: int, *, seed: int = 0, niter: int = 20,
                   max_train: int = 200_000, runner=None, probes: int = 2) -> Prototypes:
    """Spherical k-means with faiss, trained on at most ``max_train`` samples, then assigning all.

    Parameters
    ----------
    X : ndarray (n, d), float32; rows are normalised chunk by chunk (a view is fine)
    k : int
        Number of prototypes (``1 <= k <= n``).
    seed : int
        Seeds the training sample and faiss' initialisation: same seed, same result.
    runner : :mod:`curation.parallel` runner, optional
        Where the assignment's blocks run (the fit runs here).
    probes : int
        How many nearest prototypes to keep per row (``Prototypes.nearest``): the kNN search's
        probes come out of the assignment's pass (10M x 2,000 x 1024 is minutes; once, not twice).
    """
    import faiss

    n, d = X.shape
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, n={n}]")
    rng = np.random.default_rng(seed)
    # 256 training samples per centroid (faiss' own default) place centroids as well as the whole
    # pool does and cost a fraction at 100k+ rows; X may be a view (one half of the joint array):
    # only the sample and each chunk are copied
    max_train = min(max_train, 256 * k)
    train = np.ascontiguousarray(X if n <= max_train else X[np.sort(rng.choice(n, max_train, replace=False))],
                                 dtype=np.float32)
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max(256, math.ceil(len(train) / k)))
    km.train(train)
    cent = km.centroids.astype(np.float32)
    normalize(cent, out=cent, eps=1e-12)
    del train, km  # 2 GB at 10M (512k rows x 1024): not held through the assignment pass
    kk = min(max(2, probes), k)
    sims, ids = _nearest_all(X, cent, kk, runner, normalise=True)
    assign = ids[:, 0].astype(np.int32)
    sizes = np.bincount(assign, minlength=k)
    second = ids[:, 1].astype(np.int32) if kk >= 2 else np.full(n, -1, np.int32)
    second_dist = (1 - sims[:, 1]) if kk >= 2 else np.full(n, np.inf, np.float32)
    nearest = ids[:, :min(probes, k)].astype(np.int32)
    del ids
    dist = (1 - sims[:, 0]).astype(np.float32)
    second_dist = second_dist.astype(np.float32)
    del sims
    return Prototypes(cent, assign, dist, second, second_dist, sizes, nearest)


def nearest_prototypes(X: np.ndarray, centroids: np.ndarray, p: int, runner=None) -> np.ndarray:
    """The ``p`` nearest prototypes of each row (n, p) int32, nearest first (exact, faiss): the
    same pass as :func:`fit_prototypes`' assignment (rows normalised first), so the two agree."""
    kk = min(max(2, p), len(centroids))
    return _nearest_all(X, centroids, kk, runner, normalise=True)[1][:, :min(p, len(centroids))].astype(np.int32)


BLOCK_ROWS = 1 << 16  # rows per assignment task


def _nearest_all(X, centroids, p: int, runner, normalise: bool):
    """(sims, ids) (n, p) of every row's ``p`` nearest centroids, block by block (one task each)."""
    n = len(X)
    sims = np.empty((n, p), np.float32)
    ids = np.empty((n, p), np.int64)
    run = runner if runner is not None else LocalRunner()
    tasks = [(a, min(n, a + BLOCK_ROWS)) for a in range(0, n, BLOCK_ROWS)]
    shared = (run.put(X), np.ascontiguousarray(centroids, dtype=np.float32), p, normalise)
    for i, (s_, i_) in run.map(nearest_block, tasks, shared=shared):
        a, b = tasks[i]
        sims[a:b], ids[a:b] = s_, i_
    return sims, ids


def nearest_block(X, centroids: np.ndarray, p: int, normalise: bool, a: int, b: int):
    """Rows ``a:b`` of ``X`` (normalised first when ``normalise``): their ``p`` nearest centroids by
    inner product, (sims, ids), exact (faiss flat index)."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    chunk = np.ascontiguousarray(X[a:b], dtype=np.float32)
    if normalise:
        normalize(chunk, out=chunk, eps=1e-12)
    return index.search(chunk, p)


def rare_clusters(sizes: np.ndarray, frac: float = 0.1) -> np.ndarray:
    """Boolean mask of the smallest clusters that together hold (just over) ``frac`` of the
    samples: the "rare" end of the long tail that coverage metrics and pages report."""
    order = np.argsort(sizes, kind="stable")
    cum = np.cumsum(sizes[order])
    rare = np.zeros(len(sizes), bool)
    rare[order[: int(np.searchsorted(cum, frac * cum[-1])) + 1]] = True
    return rare


def cluster_percentiles(assign: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Percentile (0-100) of each sample's distance within its own cluster.

    The nearest member gets 0, the farthest 100 (a singleton gets 0). Ties break by row order,
    so the result is deterministic.
    """
    n = len(assign)
    order = np.lexsort((np.arange(n), dist, assign))  # by cluster, then distance, then row
    a_sorted = assign[order]
    starts = np.r_[0, np.flatnonzero(np.diff(a_sorted)) + 1]
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    denom = np.repeat(np.maximum(sizes - 1, 1), sizes)
    pct = np.empty(n, np.float32)
    pct[order] = 100.0 * rank / denom
    return pct


def bands(pct: np.ndarray, core_pct: float = 85.0, tail_pct: float = 95.0) -> np.ndarray:
    """CheXficient's bands: core (<= core_pct), tail (core_pct, tail_pct], outlier (> tail_pct)."""
    if not 0 <= core_pct <= tail_pct <= 100:
        raise ValueError(f"need 0 <= core_pct ({core_pct}) <= tail_pct ({tail_pct}) <= 100")
    out = np.full(len(pct), BAND_CORE, dtype=object)
    out[pct > core_pct] = BAND_TAIL
    out[pct > tail_pct] = BAND_OUTLIER
    return out


def fps_order(X: np.ndarray, start: int, exact_max: int = 2000,
              rest_key: np.ndarray | None = None, sq_norms: np.ndarray | None = None) -> np.ndarray:
    """Greedy farthest-point permutation of the rows of ``X`` (cosine distance).

    The first ``min(exact_max, n)`` entries are exact greedy FPS starting at ``start``: the
    first m of them are exactly FPS with m picks, for every m. Beyond ``exact_max`` the rest is
    ordered by ``rest_key`` descending (default: the distance to the picked set at that point),
    which costs nothing more: FPS over a whole huge cluster is n^2 d.

    ``sq_norms`` (the squared norms of rows that are not unit, such as a projection's): the
    distance is then half the squared Euclidean distance, which for unit rows is the cosine one.

    Returns
    -------
    ndarray (n,) of row indices into ``X``
    """
    n = len(X)
    if n == 0:
        return np.empty(0, np.int64)
    m = min(exact_max, n)
    order = np.empty(n, np.int64)
    picked = np.zeros(n, bool)
    mind = np.full(n, np.inf, np.float32)
    half = None if sq_norms is None else np.float32(0.5) * np.asarray(sq_norms, np.float32)
    cur = start
    for i in range(m):
        order[i] = cur
        picked[cur] = True
        d = 1.0 - X @ X[cur] if half is None else half + half[cur] - X @ X[cur]
        np.minimum(mind, d, out=mind)
        mind[picked] = -np.inf
        cur = int(np.argmax(mind))
    if m < n:
        rest = np.flatnonzero(~picked)
        key = mind[rest] if rest_key is None else rest_key[rest]
        order[m:] = rest[np.lexsort((rest, -key))]
    return order


def fps_ranks(X: np.ndarray, assign: np.ndarray, dist: np.ndarray, eligible: np.ndarray,
              exact_max: int = 2000, progress=None, runner=None) -> np.ndarray:
    """Within each cluster, the FPS rank of every eligible (core) sample; -1 elsewhere.

    FPS starts at the member nearest the prototype (the most typical sample), then spreads out.
    """
    rank = np.full(len(assign), -1, np.int32)
    members = _members(assign, eligible)
    run = runner if runner is not None else LocalRunner()
    tasks = [(rows, int(np.argmin(dist[rows]))) for rows in members.values()]
    # the threshold is read here, on the driver, and travels with the tasks
    for i, order in run.map(fps_cluster, tasks, shared=(run.put(X), exact_max, FPS_FULL_MAX)):
        rows = tasks[i][0]
        rank[rows[order]] = np.arange(len(rows), dtype=np.int32)
        if progress:
            progress(len(rows))
    return rank


# FPS reads every member once per pick: n x picks x d. Up to this many members the cluster's own
# vectors are used (1,024 x 1024 float32 = 4 MB, which stays in cache: 0.05 s for 1,024 picks);
# above, the picks are made in a seeded random projection to FPS_PROJ_DIMS dimensions
# (Johnson-Lindenstrauss: distances kept within about 1/sqrt(dims)), 8x less to read per pick and
# out of cache no more: a 4,096 x 1024 cluster took 0.56 s exact, 0.05 s projected. Was 4,096:
# at 10M rows the 1,315 clusters of 1,024-4,096 core members were most of FPS's 17 minutes, and
# FPS over the 1M bench pool went from 79 s to 27 s. bench/bench_fps.py measures the covering
# radius: on PadChest's large clusters the projected picks equal the exact ones; on the bench
# generator's isotropic clusters both are within 0.01 of a random order. No cluster of the demo
# or MedPix is that large.
FPS_FULL_MAX = 1024
FPS_PROJ_DIMS = 128


def fps_cluster(X, exact_max: int, full_max: int, rows: np.ndarray, start: int) -> np.ndarray:
    """One cluster's FPS order (:func:`fps_order`), reading only its ``rows``; in a random
    projection above ``full_max`` rows (:data:`FPS_FULL_MAX`, :func:`project_for_fps`)."""
    V = X[rows]
    if len(rows) <= full_max:
        return fps_order(V, start, exact_max)
    P = project_for_fps(V)
    return fps_order(P, start, exact_max, sq_norms=np.einsum("ij,ij->i", P, P))


def project_for_fps(V: np.ndarray, dims: int = FPS_PROJ_DIMS, seed: int = 0) -> np.ndarray:
    """``V`` (n, d) times a seeded Gaussian (d, dims) / sqrt(dims): squared distances are kept in
    expectation (the same matrix for every cluster of a dataset, so the order is reproducible)."""
    R = np.random.default_rng(seed).standard_normal((V.shape[1], dims)).astype(np.float32)
    R /= np.float32(np.sqrt(dims))
    return np.ascontiguousarray(V, dtype=np.float32) @ R


def _members(assign: np.ndarray, mask: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """{cluster: sorted row indices} for the rows in ``mask`` (all when None)."""
    rows = np.arange(len(assign)) if mask is None else np.flatnonzero(mask)
    a = assign[rows]
    order = np.argsort(a, kind="stable")
    rows, a = rows[order], a[order]
    cuts = np.flatnonzero(np.diff(a)) + 1
    return {int(g[0]): r for g, r in zip(np.split(a, cuts), np.split(rows, cuts)) if len(r)}
