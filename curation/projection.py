"""The 2-D map: PCA fitted on a sample, UMAP fitted on a bounded sample, the rest placed by kNN.

Plain UMAP on all points takes tens of minutes at 1M on 2 cores (and over a minute at 20k), and
numba compiles it for 60-90 s once per process, so the map is never computed in the app: it is
computed once per analysis and cached in the store. Here:

1. PCA to ``pca_dims`` fitted on at most ``pca_fit_max`` samples, applied to all rows in chunks;
2. UMAP to 2-D fitted on at most ``fit_max`` samples (spectral init is fine at that size; at 1M
   it never finished in 9 minutes);
3. every other row is placed at the similarity-weighted mean of the 2-D positions of its
   ``interp_k`` nearest fitted samples in PCA space (exact faiss search), which is about 20x
   faster than ``umap.transform`` (``bench/bench_analysis.py`` compares both and plain UMAP).
"""

from __future__ import annotations

import logging

import numpy as np

from curation import density as D
from curation.compiled import numba_cache_dir
from curation.parallel import LocalRunner
from curation.spaces import normalize

log = logging.getLogger(__name__)


def cache_umap_kernels() -> int:
    """Turn on numba's on-disk cache for umap's and pynndescent's jitted functions that were not
    declared ``cache=True`` (most of the layout and fuzzy-set code): without it they are compiled
    again in every process (about 10 s of each map step here). Call after :func:`numba_cache_dir`
    and the umap import, before the first fit. Returns how many functions were switched."""
    import sys

    from numba.core.dispatcher import Dispatcher

    switched = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith(("umap.", "pynndescent.")) or mod is None:
            continue
        for obj in list(vars(mod).values()):
            if isinstance(obj, Dispatcher) and not obj._cache.__class__.__name__ == "FunctionCache":
                try:
                    obj.enable_caching()
                    switched += 1
                except Exception as e:  # noqa: BLE001 - numba refuses some functions: they compile as before
                    log.debug("numba cannot cache %s: %s", obj, e)
    return switched


def umap_epochs(n_fit: int) -> int:
    """Layout epochs sized to the sample: umap-learn's own rule (500 below 10k points, 200 above)
    would give 200 at 20k; the layout of a bounded sample converges well before that."""
    return 500 if n_fit <= 2_000 else 200 if n_fit <= 10_000 else 150


# Sharpness of the soft kNN placement: a neighbour 0.05 less similar than the nearest weighs
# exp(-1) as much, so a point lands near its closest fitted neighbours, not their centroid.
PLACE_TEMPERATURE = 20.0


def pca_basis(X: np.ndarray, dims: int = 50, fit_max: int = 100_000, seed: int = 0):
    """Top ``dims`` principal axes of the rows of ``X``, fitted on a seeded sample of at most
    ``fit_max`` rows. Returns (mean (d,), components (dims, d), sd (dims,)) as float32; signs are
    fixed so the result does not depend on the LAPACK build."""
    n, d = X.shape
    dims = min(dims, d, max(n - 1, 1))
    rng = np.random.default_rng(seed)
    rows = None if n <= fit_max else np.sort(rng.choice(n, fit_max, replace=False))
    m = n if rows is None else len(rows)
    # the covariance by chunks (one BLAS product each, float64 accumulation) and its eigenvectors:
    # the same axes as an SVD of the centred sample, 10x faster at 100k x 1024 (17 s -> under 2 s)
    step = 1 << 15

    def chunk(i):
        return X[i:i + step] if rows is None else X[rows[i:i + step]]

    mean = np.zeros(d, np.float64)
    for i in range(0, m, step):
        mean += chunk(i).sum(axis=0, dtype=np.float64)
    mean /= m
    mean32 = mean.astype(np.float32)
    if m < d:
        # fewer rows than dimensions (60 x 10,000): the d x d covariance would cost d^3 to decompose
        # (minutes); the m x m Gram matrix of the centred rows has the same non-zero spectrum, and
        # its eigenvectors map to the principal axes (C^T u / sqrt(lambda))
        C = np.concatenate([chunk(i) for i in range(0, m, step)]).astype(np.float64) - mean
        vals, u = np.linalg.eigh(C @ C.T)
        order = np.argsort(vals)[::-1][:dims]
        vals = np.maximum(vals[order], 0)
        comp = (C.T @ u[:, order]) / np.sqrt(np.maximum(vals, 1e-30))
        comp = comp.T.astype(np.float32)
    else:
        vals, comp = _cov_axes(chunk, m, d, step, mean32, dims)
    comp *= np.sign(comp[np.arange(dims), np.abs(comp).argmax(axis=1)])[:, None]
    sd = np.sqrt(vals / max(m - 1, 1))
    return mean32, comp, sd.astype(np.float32)


def _cov_axes(chunk, m, d, step, mean32, dims):
    """Top ``dims`` eigenvalues and axes (dims, d) of the covariance, accumulated chunk by chunk."""
    cov = np.zeros((d, d), np.float64)
    for i in range(0, m, step):
        c = chunk(i) - mean32
        cov += (c.T @ c).astype(np.float64)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:dims]
    return np.maximum(vals[order], 0), vecs[:, order].T.astype(np.float32)


def pca_reduce(X: np.ndarray, dims: int = 50, fit_max: int = 100_000, seed: int = 0) -> np.ndarray:
    """Project rows of ``X`` (n, d) onto the top ``dims`` principal axes (float32 (n, dims)).

    Fitted on a seeded sample of at most ``fit_max`` rows, applied in chunks.
    """
    mean, comp, _ = pca_basis(X, dims, fit_max, seed)
    out = np.empty((len(X), len(comp)), np.float32)
    step = 1 << 16
    for i in range(0, len(X), step):
        out[i:i + step] = (X[i:i + step] - mean) @ comp.T
    return out


def sample_knn(Z: np.ndarray, k: int, assign: np.ndarray | None = None, probes: int = 4):
    """Exact cosine kNN among the rows of ``Z`` (self first, as umap's ``precomputed_knn`` wants):
    (indices (m, k) int64, distances (m, k) float32). With ``assign`` (a cluster per row) each row
    searches its own and its nearest clusters only (:func:`curation.density.knn_within_clusters`)."""

    U = normalize(Z)
    m = len(U)
    if assign is None or m <= 5_000:
        assign = np.zeros(m, np.int64)
        probe = np.zeros((m, 1), np.int64)
    else:
        k_cl = int(assign.max()) + 1
        cent = np.zeros((k_cl, U.shape[1]), np.float32)
        np.add.at(cent, assign, U)
        cent = normalize(cent)
        probe = np.argsort(-(U @ cent.T), axis=1)[:, :probes]
    nbr, sim = D.knn_within_clusters(U, assign, probe, k=k - 1)
    idx = np.concatenate([np.arange(m)[:, None], nbr], axis=1)
    dist = np.concatenate([np.zeros((m, 1), np.float32), 1 - sim], axis=1).astype(np.float32)
    missing = idx < 0  # fewer than k - 1 neighbours found: repeat self at distance 0 (umap accepts it)
    idx[missing] = np.repeat(np.arange(m)[:, None], idx.shape[1], axis=1)[missing]
    dist[missing] = 0
    return idx.astype(np.int64), np.maximum(dist, 0)


def umap_map(X: np.ndarray, *, fit_max: int = 20_000, pca_dims: int = 50, interp_k: int = 10,
             n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0, assign: np.ndarray | None = None,
             runner=None, scratch=None):
    """2-D map of all rows of ``X`` (n, d).

    The UMAP fit gets its kNN graph precomputed (:func:`sample_knn`, exact within each sample row's
    nearest prototype clusters when ``assign`` is given) instead of building one with NN-descent, and
    its epochs sized to the sample (:func:`umap_epochs`); numba's compiled code is cached across
    processes (:func:`numba_cache_dir`). The PCA and the UMAP fit run here; projecting and placing
    the rows runs block by block, one task per block on ``runner`` (:mod:`curation.parallel`).

    ``X`` is read once: every block's PCA projection is kept (``(n, pca_dims)`` float32, in a file
    under ``scratch`` when given, 2 GB at 10M rows, else in memory) and the placement reads it back,
    not the vectors (at 1M x 1024 float16 the second read and normalisation of the vectors were 10%
    of the step). The rows are placed among their nearest fitted rows found exactly up to
    :data:`PLACE_EXACT_MAX` placed rows, and above it by an HNSW graph of the fitted rows
    (:func:`place_index`: recall@10 0.984 against the exact search on the 250k benchmark pool, a
    mean displacement of 0.05% of the map's extent, 4.4x faster, ``bench/bench_placement.py``; the
    exact search was 40% of the step at 1M).

    Returns
    -------
    xy : ndarray (n, 2) float32
    fitted : ndarray (n,) bool, rows UMAP was fitted on (the others were interpolated)
    """
    numba_cache_dir()
    import umap

    cache_umap_kernels()
    n = len(X)
    mean, comp, _ = pca_basis(X, pca_dims, seed=seed)
    rng = np.random.default_rng(seed)
    fit_rows = np.arange(n) if n <= fit_max else np.sort(rng.choice(n, fit_max, replace=False))
    fitted = np.zeros(n, bool)
    fitted[fit_rows] = True
    # every row projected in the same fixed blocks (so a row's coordinates never depend on which rows
    # share its block), kept for the placement
    run = runner if runner is not None else LocalRunner()
    step = 1 << 16
    blocks = [(i, min(n, i + step)) for i in range(0, n, step)]
    Xr = run.put(X)
    Z = _Projection(n, len(comp), None if fit_max >= n else scratch)
    try:
        for j, z in run.map(project_block, blocks, shared=(Xr, mean, comp)):
            Z.write(blocks[j][0], z)
        Z_fit = Z.rows(fit_rows)
        k = min(n_neighbors, len(fit_rows) - 1)
        knn = sample_knn(Z_fit, k, None if assign is None else assign[fit_rows]) if len(fit_rows) > 2 * k else None
        reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, metric="cosine", random_state=seed,
                            n_jobs=1, n_epochs=umap_epochs(len(fit_rows)),
                            init="spectral" if len(fit_rows) > 20 else "random",
                            precomputed_knn=(knn[0], knn[1], None) if knn is not None else (None, None, None))
        import warnings

        with warnings.catch_warnings():  # "no search index: transform unavailable": we never transform
            warnings.filterwarnings("ignore", message=".*precomputed_knn.*")
            warnings.filterwarnings("ignore", message=".*transform.*")
            xy_fit = reducer.fit_transform(Z_fit).astype(np.float32)
        xy = np.empty((n, 2), np.float32)
        xy[fit_rows] = xy_fit
        if len(fit_rows) < n:
            todo = [b for b in blocks if not fitted[b[0]:b[1]].all()]
            index = place_index(Z_fit, approximate=n - len(fit_rows) > PLACE_EXACT_MAX)
            shared = (run.put(Z.source()), fitted, run.put(index), run.put(xy_fit), interp_k)
            for j, (rest, placed) in run.map(place_block, todo, shared=shared):
                xy[rest] = placed
    finally:
        Z.close()
    return xy, fitted


# rows placed by an exact search of the fitted rows up to this many; above, by an HNSW graph of them
PLACE_EXACT_MAX = 100_000
# the graph: 32 links a node, built with 80 candidates, searched with 32 (recall@10 0.985, 0.996 at 64)
PLACE_HNSW = dict(M=32, ef_construction=80, ef_search=32)


def place_index(Z_fit: np.ndarray, approximate: bool) -> np.ndarray:
    """The fitted rows' unit PCA vectors as a serialised faiss index (a byte array a task on another
    process or node can read): exact (``IndexFlatIP``) or an HNSW graph (:data:`PLACE_HNSW`), built
    on one thread so the graph, and every position placed with it, is the same on every run."""
    import faiss

    if not approximate:
        return faiss.serialize_index(_unit_index(Z_fit))
    U = _unit(Z_fit)
    index = faiss.IndexHNSWFlat(U.shape[1], PLACE_HNSW["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = PLACE_HNSW["ef_construction"]
    index.hnsw.efSearch = PLACE_HNSW["ef_search"]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # parallel inserts link nodes in a different order each run
    try:
        index.add(U)
    finally:
        faiss.omp_set_num_threads(threads)
    return faiss.serialize_index(index)


class _Projection:
    """The (n, dims) float32 PCA projection of every row: in memory, or in a ``.npy`` file under
    ``folder`` written block by block with ``pwrite`` and read back by row range (never mapped whole,
    so its pages do not stay in this process's resident memory)."""

    def __init__(self, n: int, dims: int, folder=None):
        from pathlib import Path

        self.n, self.dims, self.path, self.fd = n, dims, None, None
        if folder is None:
            self.arr = np.empty((n, dims), np.float32)
            return
        import io
        import os

        self.arr = None
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = str(Path(folder) / "map-projection.npy")
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (n, dims)})
        self.header = buf.getvalue()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, self.header, 0)

    def write(self, a: int, z: np.ndarray) -> None:
        import os

        z = np.ascontiguousarray(z, np.float32)
        if self.arr is not None:
            self.arr[a:a + len(z)] = z
        else:
            os.pwrite(self.fd, z.tobytes(), len(self.header) + a * self.dims * 4)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The projection of ``rows`` (only their pages are read: the fitted sample is spread over
        the whole file, 2 GB at 10M rows)."""
        if self.arr is not None:
            return self.arr[rows]
        z = np.load(self.path, mmap_mode="r")
        out = np.asarray(z[np.asarray(rows)], np.float32)
        del z
        return out

    def source(self):
        """What a placement task reads its rows from: the array, or the file's path."""
        return self.arr if self.arr is not None else self.path

    def close(self) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)
            os.unlink(self.path)
            self.fd = None


def read_projection(src, a: int, b: int) -> np.ndarray:
    """Rows ``a:b`` of a projection (an array, or a ``.npy`` file written by :class:`_Projection`)."""
    if not isinstance(src, str):
        return src[a:b]
    z = np.load(src, mmap_mode="r")  # mapped only while the rows are copied out
    out = np.array(z[a:b])
    del z
    return out


def project_block(X, mean, comp, a: int, b: int) -> np.ndarray:
    """The PCA projection of rows ``a:b`` (float32 (b - a, dims))."""
    return ((X[a:b] - mean) @ comp.T).astype(np.float32, copy=False)


def place_block(Z, fitted, index, xy_fit, interp_k: int, a: int, b: int):
    """(rows, 2-D positions) of the rows among ``a:b`` UMAP was not fitted on (:func:`interpolate`),
    their projection read from ``Z`` (:func:`read_projection`), their neighbours from ``index``
    (:func:`place_index`)."""
    import faiss

    rest = np.flatnonzero(~fitted[a:b])
    Z_blk = read_projection(Z, a, b)[rest]
    return a + rest, interpolate(None, xy_fit, Z_blk, k=interp_k, index=faiss.deserialize_index(index))


def _unit(a):
    return normalize(a, eps=1e-12)


def _unit_index(Z_fit):
    import faiss

    index = faiss.IndexFlatIP(Z_fit.shape[1])
    index.add(_unit(Z_fit))
    return index


def interpolate(Z_fit: np.ndarray | None, xy_fit: np.ndarray, Z_new: np.ndarray, k: int = 10,
                index=None) -> np.ndarray:
    """Place new rows at the similarity-weighted mean 2-D position of their k nearest fitted rows
    (``index``: the fitted rows' faiss index, when the caller places rows block by block; then
    ``Z_fit`` may be None). A neighbour an approximate index did not fill (-1) weighs nothing."""
    unit = _unit
    index = index if index is not None else _unit_index(Z_fit)
    k = min(k, len(xy_fit))
    out = np.empty((len(Z_new), 2), np.float32)
    step = 1 << 15
    for i in range(0, len(Z_new), step):
        s, idx = index.search(unit(Z_new[i:i + step]), k)
        w = np.exp((s - s[:, :1]) * PLACE_TEMPERATURE)  # soft weights favouring the closest neighbours
        w[idx < 0] = 0
        w /= w.sum(axis=1, keepdims=True)
        out[i:i + step] = np.einsum("nk,nkd->nd", w, xy_fit[idx])
    return out
