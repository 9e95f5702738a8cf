"""kNN density, the long-tail score, SemDeDup near-duplicate groups, and HDBSCAN with GLOSH.

kNN method and its recall
-------------------------
A global kNN of all N samples is the most expensive step on 2 cores (faiss flat over 100k took
about 3 minutes here; HNSW/IVF at 1M reached recall 0.4-0.7 in 10-40 minutes). Near neighbours
live in nearby prototype clusters, so :func:`knn_within_clusters` searches, with exact inner
products (BLAS), the members of each sample's ``n_probe`` nearest prototypes (an IVF index whose
lists are the prototypes, searched exactly). The cost is about N x n_probe x (mean cluster size) x d.
Recall@10 against exact flat search is printed by ``bench/bench_analysis.py`` and checked by the
tests: on the demo (isotropic blobs that k-means splits arbitrarily, the worst case for any
partition) it is about 0.66 with 2 probes and 0.8 with 4, while the density *ranking* that the
long-tail score uses agrees with exact density at Spearman 0.97; near-duplicates (cosine > 0.95)
are found at recall 1.0, since a near-copy shares its source's nearest prototypes.
"""

from __future__ import annotations

import logging

import numpy as np

from curation.compiled import kernel
from curation.parallel import LocalRunner
from curation.prototypes import _members
from curation.quality import rank_score
from curation.spaces import normalize

log = logging.getLogger(__name__)


# core distances on the 2-D layout in parallel: the target machines have 2 cores (DESIGN section 7)
HDBSCAN_JOBS = 2


# kNN lists (prototypes) of more rows than this are split into fine lists of about this size or
# fewer by a k-means inside the list, so the search costs N x probes x ~FINE_MAX x d at any N (a
# 10M pool has 2,000 prototypes of 5,000 rows on average, and Zipf-sized ones of 50,000+). Up to
# this size nothing changes: no prototype of the demo or MedPix is split.
FINE_MAX = 2000
# at most this much disk (and at most half of what is free) for one batch of query copies: at 10M x
# 1024 float16 the copies of 4 probes are 80 GB, so they are written, searched and removed in batches
QUERY_COPY_MAX_BYTES = 16 << 30


def knn_within_clusters(X: np.ndarray, assign: np.ndarray, probes: np.ndarray, k: int = 10,
                        progress=None, query_folder=None, runner=None, centroids: np.ndarray | None = None,
                        fine_max: int | None = None, seed: int = 0,
                        copy_max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate kNN (cosine): each sample searches the members of its ``probes`` clusters.

    Like an IVF index with the prototypes as its lists, but the search inside the lists is exact
    (BLAS inner products), and clusters too small to hold k neighbours are merged into their
    neighbours' searches by the caller's probe lists.

    With ``centroids``, a list of more than ``fine_max`` rows (default :data:`FINE_MAX`) is split into fine lists
    (:func:`split_list`: a seeded k-means inside it) and each sample searches the ``p`` fine lists
    nearest to it among those of its ``p`` probed clusters (:func:`fine_probe_group`), so the cost
    stays N x p x ~fine_max x d however large the clusters grow. Lists are searched parent by
    parent: a parent's members are one contiguous read of the by-cluster partition, its fine
    lists are cut from it in memory.

    Parameters
    ----------
    X : ndarray (n, d), float32, unit rows
    assign : ndarray (n,) int, the prototype each sample belongs to (the lists searched)
    probes : ndarray (n, p) int, the clusters each sample searches (its p nearest prototypes;
        -1 entries are ignored)
    k : int
        Neighbours per sample (self excluded).
    query_folder : path, optional
        With X read on demand (:class:`curation.vector_io.Features`): where to copy every row once
        per list it searches, grouped by list, so each list's queries are one contiguous read. The
        copies are written, searched and removed in batches of parents of at most
        ``copy_max_bytes`` (default: :data:`QUERY_COPY_MAX_BYTES` or half the free disk, the
        smaller). Without it, queries are gathered row set by row set.
    runner : :mod:`curation.parallel` runner, optional
        Where each parent's search runs (one task per parent list; default here).

    Returns
    -------
    nbr : ndarray (n, k) int32 (int64 from 2^31 rows), neighbour rows by decreasing similarity (-1 where fewer exist)
    sim : ndarray (n, k) float32, their cosine similarities (-inf where fewer exist)
    """
    import shutil
    from pathlib import Path

    n = len(X)
    # int32 row ids below 2^31 rows: the graph is 10M x 10, 381 MB a array instead of 762
    nbr = np.full((n, k), -1, np.int32 if n < 2**31 - 1 else np.int64)
    sim = np.full((n, k), -np.inf, np.float32)
    run = runner if runner is not None else LocalRunner()
    Xref = run.put(X)
    fine, parent = np.asarray(assign), None
    if centroids is not None:
        fine_max = FINE_MAX if fine_max is None else fine_max
        fine, parent, fcent = split_lists(Xref, assign, centroids, fine_max, seed, run)
        if parent is not None:
            probes = fine_probes(Xref, assign, probes, fcent, parent, run)
    if parent is None:  # every list is its own (a probed list may be empty)
        parent = np.arange(max(int(fine.max()) if n else -1, int(probes.max()) if probes.size else -1) + 1)
    p = probes.shape[1]
    n_lists = len(parent)
    # entry e of the flat probe array is row e // p searching list flat_probe[e]; the entries grouped
    # by list (rows ascending inside) in one counting pass: no row array, no int64 sort of all the
    # entries (at 10M x 4 those were 1 GB of transient arrays on top of the graph)
    flat_probe = probes.reshape(-1)
    by_list = np.empty(int(np.count_nonzero(flat_probe >= 0)), np.int32 if n * p < 2**31 - 1 else np.int64)
    cuts = np.zeros(n_lists + 1, np.int64)
    kernel(_group_by_list)(flat_probe, by_list, cuts)
    q_count = np.diff(cuts)
    members = _members(np.asarray(assign))  # parent -> its rows (one contiguous partition read)
    q_of_parent = np.bincount(parent, weights=q_count)
    parents = list(members)
    # X read on demand (vector_io.Features with a by-cluster partition): a list's rows are one
    # contiguous read, and with query_folder its queries too. Measured at 1M x 1024: the queries of
    # one cluster come from ~120 other clusters, so gathering them costs ~900 reads a cluster, and
    # a cache of whole clusters read 12,138 clusters for 100 (both 3x slower than the faiss search)
    copies = query_folder is not None and hasattr(X, "query_partition")
    batches = [parents]
    if copies:
        row_bytes = sum(X.dims) * np.dtype(getattr(X.source, "dtype", np.float32)).itemsize
        Path(query_folder).mkdir(parents=True, exist_ok=True)
        budget = copy_max_bytes or min(QUERY_COPY_MAX_BYTES, shutil.disk_usage(query_folder).free // 2)
        batches, cur, used = [], [], 0
        for c in parents:
            b = int(q_of_parent[c]) * row_bytes
            if cur and used + b > budget:
                batches.append(cur)
                cur, used = [], 0
            cur.append(c)
            used += b
        batches.append(cur)
    kids = _members(parent)  # parent -> its fine lists
    for bi, batch in enumerate(batches):
        qpart = None
        folder = Path(query_folder) / f"batch-{bi:04d}" if copies else None
        if copies:
            in_batch = np.zeros(n_lists + 1, bool)  # the last slot: the -1 entries (none searched)
            in_batch[np.concatenate([kids[c] for c in batch])] = True
            ent = np.flatnonzero(in_batch[flat_probe])  # ascending entries, so ascending rows
            qpart = X.query_partition(ent // p, flat_probe[ent], folder)
            del ent
        tasks = []
        for c in batch:
            lists = [(int(f), by_list[cuts[f]:cuts[f + 1]] // p) for f in kids[c]]
            tasks.append((members[c], fine[members[c]], lists))
        for i, found in run.map(list_candidates, tasks, shared=(Xref, run.put(qpart), k)):
            for q, cand_idx, cand_sim in found:
                merge_candidates(nbr, sim, q, cand_idx, cand_sim)
            if progress:
                progress(len(tasks[i][0]))
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return nbr, sim


def _group_by_list(flat_probe, by_list, cuts):
    """Entries ``e`` of ``flat_probe`` (the list each (row, probe) searches; -1: none) grouped by list
    into ``by_list``, ascending inside a list; ``cuts`` (lists + 1,) zeros in, each list's bounds out
    (plain Python, compiled by numba: :func:`curation.compiled.kernel`)."""
    for e in range(len(flat_probe)):
        f = flat_probe[e]
        if f >= 0:
            cuts[f + 1] += 1
    for f in range(1, len(cuts)):
        cuts[f] += cuts[f - 1]
    fill = cuts[:-1].copy()
    for e in range(len(flat_probe)):
        f = flat_probe[e]
        if f >= 0:
            by_list[fill[f]] = e
            fill[f] += 1


def split_lists(X, assign: np.ndarray, centroids: np.ndarray, fine_max: int, seed: int, runner):
    """Fine lists: every list of more than ``fine_max`` rows split by :func:`split_list`.

    Returns (fine (n,) int64, parent (m,) int64 or None when nothing was split, centroids (m, d)).
    Fine list ids 0..k-1 are the lists themselves (a split list keeps its id for its first part);
    the further parts are numbered from k on, list by list, so an unsplit pool is unchanged."""
    assign = np.asarray(assign)
    k = len(centroids)
    sizes = np.bincount(assign, minlength=k)
    big = np.flatnonzero(sizes > fine_max)
    if not len(big):
        return assign, None, centroids
    members = _members(assign)
    fine = assign.astype(np.int64)
    parent, cents = list(range(k)), [np.asarray(centroids, np.float32)]
    tasks = [(int(c), members[int(c)]) for c in big]
    results: dict = {}
    for i, res in runner.map(split_list, tasks, shared=(X, fine_max, seed)):
        results[tasks[i][0]] = res
    nxt = k
    for c in big.tolist():  # numbered in list order, whatever order the tasks finished in
        sub, sub_cent = results[c]
        rows = members[c]
        ids = np.r_[c, np.arange(nxt, nxt + len(sub_cent) - 1)]
        fine[rows] = ids[sub]
        cents[0][c] = sub_cent[0]
        cents.append(sub_cent[1:])
        parent.extend([c] * (len(sub_cent) - 1))
        nxt += len(sub_cent) - 1
    return fine, np.asarray(parent, np.int64), np.concatenate(cents)


def split_list(X, fine_max: int, seed: int, c: int, rows: np.ndarray):
    """List ``c`` (its ``rows``, one contiguous partition read) cut into ceil(size / fine_max) parts
    by a seeded spherical k-means (faiss, 10 iterations, at most 256 rows per part trained on).
    Returns (part of each row (len(rows),), unit part centroids (m, d)); every part is non-empty."""
    import faiss

    V = np.ascontiguousarray(X[rows], dtype=np.float32)
    m = -(-len(rows) // fine_max)
    km = faiss.Kmeans(V.shape[1], m, niter=10, seed=seed + c, spherical=True, verbose=False,
                      max_points_per_centroid=256)
    km.train(V)
    cent = km.centroids.astype(np.float32)
    normalize(cent, out=cent, eps=1e-12)
    _, part = km.index.search(V, 1)
    part = part[:, 0]
    used = np.unique(part)  # drop parts no row chose (the ids stay dense)
    remap = np.full(m, -1, np.int64)
    remap[used] = np.arange(len(used))
    return remap[part], cent[used]


def fine_probes(X, assign: np.ndarray, probes: np.ndarray, fcent: np.ndarray, parent: np.ndarray,
                runner) -> np.ndarray:
    """Each row's ``p`` nearest fine lists among those of its ``p`` probed lists (nearest first;
    ties to the lower id). Rows whose probed lists are all unsplit keep their probes. One task
    per list of rows (their vectors one contiguous read)."""
    p = probes.shape[1]
    split = np.bincount(parent, minlength=int(probes.max()) + 1) > 1
    need = (split[np.maximum(probes, 0)] & (probes >= 0)).any(axis=1)
    out = probes.copy()
    groups = _members(np.asarray(assign), need)
    tasks = [(rows, probes[rows]) for rows in groups.values()]
    for i, fp in runner.map(fine_probe_group, tasks, shared=(X, fcent, parent, p)):
        out[tasks[i][0]] = fp
    return out


def fine_probe_group(X, fcent: np.ndarray, parent: np.ndarray, p: int, rows: np.ndarray,
                     probes: np.ndarray) -> np.ndarray:
    """(len(rows), p) fine list ids: for each row, the p fine lists with the most similar centroid
    among the fine lists of its probed lists (``probes``, -1 ignored); -1 where fewer exist."""
    cand_all = np.flatnonzero(np.isin(parent, probes[probes >= 0]))
    if not len(cand_all):
        return np.full((len(rows), p), -1, np.int64)
    V = np.ascontiguousarray(X[rows], dtype=np.float32)
    step = max(1, (1 << 22) // len(cand_all))  # rows x candidates bounded (a 50k-row list probes 2k lists)
    return np.concatenate([_fine_probe_chunk(V[i:i + step], fcent, parent, p, probes[i:i + step])
                           for i in range(0, len(rows), step)])


def _fine_probe_chunk(V, fcent, parent, p, probes):
    cand = np.flatnonzero(np.isin(parent, probes[probes >= 0]))
    if not len(cand):
        return np.full((len(V), p), -1, np.int64)
    S = V @ fcent[cand].T
    allowed = (parent[cand][None, :, None] == probes[:, None, :]).any(axis=2)
    S[~allowed] = -np.inf
    want, p = p, min(p, S.shape[1])
    # the p best by (similarity, then lower id): a partition, then a sort of those p; rows with a
    # tie at the p-th value (or too few candidates) are sorted whole, so the rule holds exactly
    top = np.argpartition(-S, p - 1, axis=1)[:, :p] if p < S.shape[1] else np.broadcast_to(
        np.arange(S.shape[1]), S.shape).copy()
    kth = np.take_along_axis(S, top, axis=1).min(axis=1)
    tie = (S >= kth[:, None]).sum(axis=1) > p
    if tie.any():
        top[tie] = np.lexsort((np.broadcast_to(cand, (int(tie.sum()), len(cand))), -S[tie]))[:, :p]
    o = np.lexsort((cand[top], -np.take_along_axis(S, top, axis=1)))
    top = np.take_along_axis(top, o, axis=1)
    fp = cand[top]
    fp[~np.isfinite(np.take_along_axis(S, top, axis=1))] = -1
    if p < want:
        fp = np.concatenate([fp, np.full((len(fp), want - p), -1, fp.dtype)], axis=1)
    return fp


def list_candidates(X, qpart, k: int, db_rows: np.ndarray, fine_of_db: np.ndarray, lists):
    """The kNN candidates of one parent list: its members ``db_rows`` read once (one contiguous
    partition read), then for each of its fine lists ``(f, q_rows)`` the exact top-(k+1) of the
    queries ``X[q_rows]`` (or their copy, block f of ``qpart``) against the members in f, self
    excluded. Returns [(q_rows, cand_idx (m, <=k+1), cand_sim)] for :func:`merge_candidates`.

    faiss' brute-force search (BLAS products + a top-k heap) asked for one extra neighbour, so a
    query's own row can be dropped: 1.7x faster than a product + argpartition in numpy."""
    block = np.ascontiguousarray(X[db_rows], dtype=np.float32)
    out = []
    for f, q_rows in lists:
        if not len(q_rows):
            continue
        inside = fine_of_db == f
        db = block if inside.all() else np.ascontiguousarray(block[inside])
        q_vectors = X.cluster_block(qpart, f) if qpart is not None else None
        out.append(_search(X, q_vectors, k, q_rows, db_rows[inside], db))
    return out


def _search(X, q_vectors, k: int, q_rows: np.ndarray, db_rows: np.ndarray, db: np.ndarray):
    import faiss

    want = min(k + 1, len(db_rows))
    idx_out = np.empty((len(q_rows), want), np.int64)
    sim_out = np.empty((len(q_rows), want), np.float32)
    step = max(1, (1 << 23) // max(len(db_rows), 1))  # bounded similarity blocks inside faiss
    for i in range(0, len(q_rows), step):
        q = q_rows[i:i + step]
        qv = X[q] if q_vectors is None else q_vectors[i:i + step]
        cand_sim, pos = faiss.knn(np.ascontiguousarray(qv, dtype=np.float32), db, want,
                                  metric=faiss.METRIC_INNER_PRODUCT)
        cand_idx = np.where(pos >= 0, db_rows[np.maximum(pos, 0)], -1)
        idx_out[i:i + step] = cand_idx
        sim_out[i:i + step] = np.where((cand_idx == q[:, None]) | (pos < 0), -np.inf, cand_sim)
    return q_rows, idx_out, sim_out


def merge_candidates(nbr, sim, q, cand_idx, cand_sim) -> None:
    """Merge candidates into what other lists found for the queries ``q``, keeping the best k
    under one total order (similarity, then the lower row; -1 rows last): the result does not
    depend on the order in which lists are searched or their tasks finish. Entries of similarity
    -inf (a query's own row, a short list) come out as row -1.

    One compiled pass over the queries (:func:`_merge_rows`): the numpy form (a lexsort of the
    2k+1 entries of every query) cost 13 s per million queries merged, about half the kNN search's
    time at 1M (each query is merged once per probed list)."""
    if not len(q):
        return
    kernel(_merge_rows)(nbr, sim, np.asarray(q, np.int64), np.ascontiguousarray(cand_idx, np.int64),
                        np.ascontiguousarray(cand_sim, np.float32))


def _merge_rows(nbr, sim, q, cand_idx, cand_sim):
    """:func:`merge_candidates`' pass (plain Python, compiled by numba: :func:`curation.compiled.kernel`).

    An entry (s, i) comes before (t, j) when s > t, or s == t and i < j with -1 read as the
    largest row; NaN similarities come last. ``nbr[q]`` is kept in that order, so each candidate is
    inserted into a sorted list of k."""
    k = nbr.shape[1]
    big = np.iinfo(np.int64).max
    ti = np.empty(k, np.int64)
    ts = np.empty(k, np.float32)
    for a in range(len(q)):
        r = q[a]
        for j in range(k):
            ti[j] = nbr[r, j] if nbr[r, j] >= 0 else big
            ts[j] = sim[r, j]
        for c in range(cand_idx.shape[1]):
            s = cand_sim[a, c]
            i = cand_idx[a, c] if cand_idx[a, c] >= 0 else big
            # the position the candidate takes: after every entry that comes before it
            pos = k
            while pos > 0:
                t, j = ts[pos - 1], ti[pos - 1]
                if s != s:  # NaN: after everything
                    break
                if t != t or s > t or (s == t and i < j):
                    pos -= 1
                else:
                    break
            if pos == k:
                continue
            for m in range(k - 1, pos, -1):
                ts[m], ti[m] = ts[m - 1], ti[m - 1]
            ts[pos], ti[pos] = s, i
        for j in range(k):
            sim[r, j] = ts[j]
            nbr[r, j] = -1 if (ts[j] == -np.inf or ti[j] == big) else ti[j]


def exact_knn(X: np.ndarray, k: int = 10, queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine kNN (faiss IndexFlatIP) of ``X[queries]`` (all rows when None), self excluded."""
    import faiss

    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    q = np.arange(len(X)) if queries is None else np.asarray(queries)
    s, i = index.search(X[q], k + 1)
    keep = i != q[:, None]
    out_i = np.array([row[m][:k] for row, m in zip(i, keep)])
    out_s = np.array([row[m][:k] for row, m in zip(s, keep)])
    return out_i, out_s


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact k neighbours that the approximate list found."""
    hits = [len(np.intersect1d(a[a >= 0], e)) / len(e) for a, e in zip(approx, exact)]
    return float(np.mean(hits))


def knn_density(sim: np.ndarray) -> np.ndarray:
    """Mean cosine similarity to the k nearest neighbours (higher = denser); -1 with none."""
    valid = np.isfinite(sim)
    cnt = valid.sum(axis=1)
    tot = np.where(valid, sim, 0).sum(axis=1)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), -1.0).astype(np.float32)


def tail_score(density: np.ndarray) -> np.ndarray:
    """Long-tail score in [0, 1]: 1 - the density's percentile rank (1 = the sparsest sample)."""

    return (1.0 - rank_score(density)).astype(np.float32)


def duplicate_groups(nbr: np.ndarray, sim: np.ndarray, eps: float = 0.05, *,
                     case: np.ndarray | None = None, keep_key: np.ndarray | None = None):
    """SemDeDup near-duplicates from a stored kNN graph, for any threshold.

    Two samples are near when their cosine exceeds ``1 - eps`` (and, when ``case`` is given, they
    belong to the same case/patient: images of different patients are never merged). Samples are
    visited in keep priority (largest ``keep_key`` first: SemDeDup keeps the one farthest from its
    prototype, so pass the cosine distance; ties by the lower row). A sample near a sample already
    *kept* is a duplicate of it (its most similar kept neighbour); otherwise it is kept. So every
    dropped sample is within ``1 - eps`` of the kept sample it is dropped for, which grouping by
    connected components cannot promise (a chain a~b~c drops c for a even when c is far from a).
    Changing ``eps`` needs no new kNN pass, only this function.

    Returns
    -------
    group : ndarray (n,) int64, the kept row a sample duplicates (the row itself for a kept sample
        that has duplicates), -1 for samples with no near neighbour
    is_dup : ndarray (n,) bool, the samples to drop
    """
    from scipy.sparse import coo_matrix

    n, k = nbr.shape
    cols = nbr.reshape(-1)
    s = sim.reshape(-1)
    # only the pairs above the threshold get a row index (a row per graph entry was 800 MB at 10M)
    hit = np.flatnonzero((cols >= 0) & (s > 1 - eps))
    rows, cols, s = hit // k, cols[hit].astype(np.int64), s[hit]
    if case is not None:
        same = case[rows] == case[cols]
        rows, cols, s = rows[same], cols[same], s[same]
    group = np.full(n, -1, np.int64)
    is_dup = np.zeros(n, bool)
    if len(rows) == 0:
        return group, is_dup
    # symmetric adjacency (a kNN graph is not), best similarity per pair
    a = coo_matrix((np.r_[s, s].astype(np.float64), (np.r_[rows, cols], np.r_[cols, rows])), shape=(n, n)).tocsr()
    a.sum_duplicates()  # pairs listed both ways add up; only the order of neighbours matters below
    key = np.zeros(n) if keep_key is None else np.asarray(keep_key, np.float64)
    cand = np.flatnonzero(np.diff(a.indptr) > 0)
    order = cand[np.lexsort((cand, -key[cand]))]
    kept = np.zeros(n, bool)
    indptr, indices, data = a.indptr, a.indices, a.data
    for i in order.tolist():
        nb = indices[indptr[i]:indptr[i + 1]]
        hit = kept[nb]
        if hit.any():
            w = data[indptr[i]:indptr[i + 1]]
            j = int(nb[hit][np.argmax(w[hit])])
            group[i] = j
            group[j] = j
            is_dup[i] = True
        else:
            kept[i] = True
    return group, is_dup


HDBSCAN_FIT_MAX = 1_000_000  # HDBSCAN fits every 2-D point up to this many, a seeded sample above


def hdbscan_glosh(xy: np.ndarray, min_cluster_size: int | None = None, min_samples: int | None = None,
                  fit_max: int = HDBSCAN_FIT_MAX, seed: int = 0):
    """HDBSCAN (the hdbscan package) on a low-dimensional layout, with GLOSH outlier scores.

    Up to ``fit_max`` points it is fitted on all of them. Above, it is fitted on a seeded sample of
    ``fit_max`` points (with its prediction data) and every other point gets the sample's cluster
    and outlier score by ``approximate_predict`` / ``approximate_predict_scores``, in blocks: the
    memory and time of the condensed tree stay those of the sample (DESIGN section 9).

    Parameters
    ----------
    xy : ndarray (n, 2 or a few)
    min_cluster_size : int, optional
        Default max(10, m // 1000), m the points fitted; a given size is scaled to the sample.

    Returns
    -------
    labels : ndarray (n,) int (-1 = noise), outlier : ndarray (n,) float32 in [0, 1] (GLOSH)
    """
    import hdbscan

    n = len(xy)
    xy = np.ascontiguousarray(xy, dtype=np.float64)
    sampled = n > fit_max
    fit_rows = np.sort(np.random.default_rng(seed).choice(n, fit_max, replace=False)) if sampled else None
    m = fit_max if sampled else n
    mcs = (max(2, round(min_cluster_size * m / n)) if min_cluster_size else max(10, m // 1000))
    model = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=min_samples or min(10, mcs),
                            core_dist_n_jobs=HDBSCAN_JOBS, prediction_data=sampled)
    labels = model.fit_predict(xy[fit_rows] if sampled else xy)
    scores = np.nan_to_num(model.outlier_scores_, nan=0.0, posinf=1.0).astype(np.float32)
    if not sampled:
        return labels.astype(np.int32), scores
    out_l, out_s = np.empty(n, np.int32), np.empty(n, np.float32)
    out_l[fit_rows], out_s[fit_rows] = labels, scores
    rest = np.setdiff1d(np.arange(n), fit_rows, assume_unique=True)
    step = 1 << 18
    predict = _Predictor(model)
    for i in range(0, len(rest), step):
        r = rest[i:i + step]
        lab, sc = predict(xy[r])
        out_l[r] = lab
        out_s[r] = np.nan_to_num(sc, nan=0.0, posinf=1.0)
    return out_l, out_s


class _Predictor:
    """hdbscan's ``approximate_predict`` labels and ``approximate_predict_scores`` GLOSH for new
    points, computed for a whole block at once. hdbscan loops over the points and finds each
    point's row of the condensed tree by scanning the whole tree (``get_tree_row_with_child``):
    about 0.6 ms a point against a 1M-point fit, hours for the 9M rows a 10M pool predicts. Here
    the tree is indexed once (child -> row, cluster -> parent and lambda) and every step is an
    array operation; the results are hdbscan's (tested against it)."""

    def __init__(self, model):
        pdata = model.prediction_data_
        tree = model.condensed_tree_._raw_tree
        self.model, self.pdata = model, pdata
        self.min_samples = model.min_samples or model.min_cluster_size
        self.empty = pdata.cluster_tree.shape[0] == 0
        child, parent, lam = tree["child"].astype(np.int64), tree["parent"].astype(np.int64), tree["lambda_val"]
        size = int(max(child.max(), parent.max())) + 1
        self.row_of = np.full(size, -1, np.int64)
        self.row_of[child] = np.arange(len(tree))
        self.parent, self.lam = parent, lam.astype(np.float64)
        # the largest lambda under each cluster, propagated up the tree as approximate_predict_scores does
        ml = np.full(size, -np.inf)
        np.maximum.at(ml, parent, self.lam)
        has = np.isfinite(ml)
        for n in range(len(tree) - 1, -1, -1):
            c, par = child[n], parent[n]
            if has[c] and ml[c] > ml[par]:
                ml[par] = ml[c]
        self.max_lambda = np.where(has, ml, 0.0)
        ct = pdata.cluster_tree
        self.up_parent = np.full(size, -1, np.int64)
        self.up_lambda = np.full(size, -np.inf)
        self.up_parent[ct["child"].astype(np.int64)] = ct["parent"]
        self.up_lambda[ct["child"].astype(np.int64)] = ct["lambda_val"]
        self.root = int(ct["parent"].min()) if len(ct) else 0
        self.label_of = np.full(size, -1, np.int64)
        for c, label in pdata.cluster_map.items():
            self.label_of[int(c)] = label

    def __call__(self, points: np.ndarray):
        m = len(points)
        if self.empty:
            return np.full(m, -1, np.int32), np.ones(m)
        ms = self.min_samples
        dist, idx = self.pdata.tree.query(points, k=2 * ms)
        mr = np.maximum(np.maximum(self.pdata.core_distances[idx], dist[:, ms:ms + 1]), dist)
        j = mr.argmin(axis=1)
        r = np.arange(m)
        neigh, d = idx[r, j], mr[r, j]
        lam = np.full(m, np.finfo(np.double).max)
        lam[d > 0] = 1.0 / d[d > 0]
        row = self.row_of[neigh]
        cluster, nlam = self.parent[row], self.lam[row]
        # GLOSH: a point in the fitted data (distance 0) takes its own lambda
        lam_s = np.where(dist.min(axis=1) == 0, nlam, lam)
        mx = self.max_lambda[cluster]
        scores = np.where(mx > 0, (mx - lam_s) / np.where(mx > 0, mx, 1.0), 0.0)
        # the label: walk up from the neighbour's cluster while the point joins above its lambda
        pc = cluster.copy()
        walk = np.flatnonzero(nlam > lam)
        while len(walk):
            cur = pc[walk]
            ok = (cur > self.root) & (self.up_parent[cur] >= 0) & (self.up_lambda[cur] >= lam[walk])
            walk = walk[ok]
            pc[walk] = self.up_parent[pc[walk]]
        return self.label_of[pc].astype(np.int32), scores
