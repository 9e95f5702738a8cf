"""The default priority order (``tail="density"``) in linear passes, for large pools.

:func:`curation.selection._order` builds the order with sorts: the rank of each row inside its
(queue, stratum, cluster), the round robin over clusters, the tail queue by rarity, the merge of
the two queues and the interleaving of the strata, five sorts of the eligible rows per knob change
(about 10 s at 10M rows on 2 cores). Most of that order does not depend on the knobs: the rows of a
cluster in FPS-then-distance order and the pool in rarity order are fixed per analysis. This
module keeps those two permutations per pool and derives every knob's order from them with
counting passes (numba) that walk a permutation's positions in sequence (the knob's arrays
gathered into that order first; visiting rows at random was most of the time at 10M rows), the
two queues merged by two pointers and the strata by a heap:

1. ``rk``: each eligible row's rank inside its (queue, stratum, cluster), one pass over the
   pool in (cluster, priority) order;
2. the core queue's position: rows with a smaller rank, plus rows of the same rank in a lower
   cluster, from a (queue-stratum, rank) histogram (the round robin over clusters);
3. the tail queue's position: one pass over the pool in rarity order;
4. each (queue, stratum)'s two queues merged at ``r`` tail picks per core pick (a row at its
   better place), the tiers concatenated per stratum;
5. the strata interleaved by ``(seq + 0.5) / weight`` with a heap (ties: lower stratum).

The result is identical to the sorting path, row for row (tested on random configurations); the
sorting path stays for the legacy ``tail="distance"`` queues and for strata x ranks tables too
large to count in (:data:`TABLE_MAX_CELLS`).
"""

from __future__ import annotations

import numpy as np

# the (queue-stratum, rank) histogram of step 2 is counted in a table of this many cells at most
# (int64: 256 MB); more strata x larger clusters fall back to the sorting path
TABLE_MAX_CELLS = 1 << 25


def tail_rank(inp) -> np.ndarray:
    """Every row's rank by rarity in the whole pool (highest ``tail_score`` first, ties by row).
    Ordering any subset of rows by it is ordering them by rarity: computed once per pool, not per
    knob (two float sorts of the eligible rows were a third of a knob change at 2M rows)."""
    r = np.empty(inp.n, np.int64)
    r[np.argsort(-inp.tail_score.astype(np.float64), kind="stable")] = np.arange(inp.n)
    return r


def pool_orders(inp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two knob-independent permutations of the pool: rows by (cluster, priority) (core rows
    by FPS rank, then the rest by distance, farthest first; ties by row) and rows by rarity (the
    global tail rank, :func:`tail_rank`); with the cluster of each entry
    of the first (ascending)."""

    from curation.selection_inputs import stable_argsort

    prio = np.where(inp.band_code == 0, inp.fps_rank, inp.n + inp.far_rank).astype(np.int64)
    # one int64 key (cluster x (2n + 1) + priority, priority in [-1, 2n)): a quicksort with ties
    # put back by row, 3x faster than np.lexsort((prio, prototype)) at 10M rows, the same order
    key = inp.prototype.astype(np.int64) * (2 * inp.n + 1) + (prio + 1)
    by_cluster = stable_argsort(key)
    rank = tail_rank(inp)
    by_rarity = np.empty(inp.n, np.int64)
    by_rarity[rank] = np.arange(inp.n)
    if inp.n < 2**31 - 1:  # kept per pool and read on every knob change: 4-byte entries
        by_cluster, by_rarity = by_cluster.astype(np.int32), by_rarity.astype(np.int32)
    return by_cluster, by_rarity, inp.prototype[by_cluster].astype(np.int32)


def _kernels():
    """The numba-compiled passes (compiled once per process, cached on disk beside umap's)."""
    from curation.compiled import kernel

    return tuple(kernel(f) for f in (_ranks_in_cluster, _core_positions, _running_positions, _fill_lists,
                                     _merge_and_interleave))


def density_order(inp, eligible: np.ndarray, stratum: np.ndarray, n_st: int, outlier: np.ndarray,
                  keep_first: bool, r: float, w: np.ndarray, orders) -> tuple[np.ndarray, np.ndarray] | None:
    """(order of the eligible rows, took_tail per pool row) of :func:`curation.selection._order`'s
    density queues, or None when the counting table would be too large (use the sorting path).

    ``outlier``: rows queued apart (their own tier: first with ``keep_first``, else last);
    ``w``: the strata's weights; ``orders``: :func:`pool_orders` of ``inp``."""
    if len(eligible) >= 2**31 - 1:  # positions are int32 below
        return None
    ranks_in_cluster, core_positions, running_positions, fill_lists, merge_and_interleave = _kernels()
    by_cluster, by_rarity, cl_c = orders
    n_q = 2 * n_st
    q_of = stratum.astype(np.int32)  # 4-byte codes: half the memory traffic of every gather below
    if outlier.any():
        q_of[outlier] += n_st
    # every pass runs over one permutation's positions in sequence (the rows' arrays gathered into
    # that order first): at 10M rows, visiting rows at random was most of the time (cache misses)
    e_c, q_c = eligible[by_cluster], q_of[by_cluster]
    rk_c = ranks_in_cluster(e_c, q_c, cl_c, n_q)
    R = int(rk_c.max()) + 1 if e_c.any() else 1
    if n_q * (R + 1) > TABLE_MAX_CELLS:
        return None
    core_c, sizes = core_positions(e_c, q_c, rk_c, n_q, R)
    e_t, q_t = eligible[by_rarity], q_of[by_rarity]
    tail_t = running_positions(e_t, q_t, n_q)
    n = len(eligible)
    core_pos = np.empty(n, np.int32)  # only eligible rows are read back (took_tail below)
    core_pos[by_cluster] = core_c
    tail_pos = np.empty(n, np.int32)
    tail_pos[by_rarity] = tail_t
    core, tail, off = fill_lists(e_c, q_c, core_c, by_cluster, e_t, q_t, tail_t, by_rarity, sizes, n_q)
    order = merge_and_interleave(n, core, tail, off, sizes, n_st, float(r), bool(keep_first),
                                 np.asarray(w, np.float64))
    # the row's own keys decide which queue it is credited to (strictly better tail), in one
    # vectorised pass rather than two random reads per row inside the merge
    took_tail = np.zeros(n, bool)
    if r > 0:
        took_tail[eligible] = ((tail_pos[eligible] + 0.5) * (1.0 + r) / r
                               < (core_pos[eligible] + 0.5) * (1.0 + r))
    return order, took_tail


# ---------------------------------------------------------------------------------------------
# the passes (plain Python, compiled by numba in _kernels; readable and testable as they are)

def _ranks_in_cluster(e_c, q_c, cl_c, n_q):
    """Along the (cluster, priority) order: each eligible entry's rank inside its (queue-stratum,
    cluster); -1 for other entries."""
    m = len(e_c)
    rk = np.full(m, -1, np.int32)
    cnt = np.zeros(n_q, np.int64)
    touched = np.empty(n_q, np.int64)
    nt = 0
    cur = -1
    for j in range(m):
        if not e_c[j]:
            continue
        c = cl_c[j]
        if c != cur:
            for t in range(nt):
                cnt[touched[t]] = 0
            nt = 0
            cur = c
        q = q_c[j]
        if cnt[q] == 0:
            touched[nt] = q
            nt += 1
        rk[j] = cnt[q]
        cnt[q] += 1
    return rk


def _core_positions(e_c, q_c, rk_c, n_q, R):
    """Along the (cluster, priority) order: each eligible entry's position in its core queue (the
    round robin: rank first, then cluster), and the rows per queue-stratum."""
    m = len(e_c)
    hist = np.zeros((n_q, R + 1), np.int64)
    for j in range(m):
        if e_c[j]:
            hist[q_c[j], rk_c[j] + 1] += 1
    for q in range(n_q):  # hist[q, r]: rows of q with a rank below r
        for r in range(1, R + 1):
            hist[q, r] += hist[q, r - 1]
    sizes = hist[:, R].copy()
    pos = np.full(m, -1, np.int32)
    for j in range(m):  # clusters ascending: among equal ranks, the lower cluster first
        if e_c[j]:
            q = q_c[j]
            pos[j] = hist[q, rk_c[j]]
            hist[q, rk_c[j]] += 1
    return pos, sizes


def _running_positions(e_t, q_t, n_q):
    """Along the rarity order: each eligible entry's position in its tail queue."""
    m = len(e_t)
    pos = np.full(m, -1, np.int32)
    cnt = np.zeros(n_q, np.int64)
    for j in range(m):
        if e_t[j]:
            q = q_t[j]
            pos[j] = cnt[q]
            cnt[q] += 1
    return pos


def _fill_lists(e_c, q_c, core_c, by_cluster, e_t, q_t, tail_t, by_rarity, sizes, n_q):
    """Each queue-stratum's core queue and tail queue as rows, side by side at ``off[q]``."""
    off = np.zeros(n_q + 1, np.int64)
    for q in range(n_q):
        off[q + 1] = off[q] + sizes[q]
    core = np.empty(off[n_q], np.int64)
    tail = np.empty(off[n_q], np.int64)
    for j in range(len(e_c)):
        if e_c[j]:
            core[off[q_c[j]] + core_c[j]] = by_cluster[j]
    for j in range(len(e_t)):  # each queue's tail positions come in increasing order: n_q streams
        if e_t[j]:
            tail[off[q_t[j]] + tail_t[j]] = by_rarity[j]
    return core, tail, off


def _merge_and_interleave(n, core, tail, off, sizes, n_st, r, keep_first, w):
    """Merge each queue-stratum's core and tail queues (a row at its better key; equal keys: the
    lower row), put each stratum's tiers in order, interleave the strata by (seq + 0.5) / w."""
    n_q = 2 * n_st
    done = np.zeros(n, np.bool_)
    merged = np.empty(off[n_q], np.int64)
    for q in range(n_q):
        a, b = off[q], off[q + 1]
        ic, it, o = a, a, a
        while o < b:
            while ic < b and done[core[ic]]:
                ic += 1
            while it < b and done[tail[it]]:
                it += 1
            if r > 0 and it < b:
                kt = ((it - a) + 0.5) * (1.0 + r) / r
            else:
                kt = np.inf
            kc = ((ic - a) + 0.5) * (1.0 + r) if ic < b else np.inf
            if kt < kc or (kt == kc and tail[it] < core[ic]):
                i = tail[it]
            else:
                i = core[ic]
            done[i] = True
            merged[o] = i
            o += 1
    # each stratum's sequence: its tiers in order (outliers first with keep_first, else last)
    seq_off = np.zeros(n_st + 1, np.int64)
    for s in range(n_st):
        seq_off[s + 1] = seq_off[s] + sizes[s] + sizes[n_st + s]
    seq = np.empty(seq_off[n_st], np.int64)
    for s in range(n_st):
        first, second = (n_st + s, s) if keep_first else (s, n_st + s)
        p = seq_off[s]
        for q in (first, second):
            for j in range(off[q], off[q + 1]):
                seq[p] = merged[j]
                p += 1
    # interleave the strata: a heap of (key, stratum), key = (position + 0.5) / w
    total = seq_off[n_st]
    order = np.empty(total, np.int64)
    heap_k = np.empty(n_st, np.float64)
    heap_s = np.empty(n_st, np.int64)
    pos = np.zeros(n_st, np.int64)
    m = 0
    for s in range(n_st):
        if seq_off[s + 1] > seq_off[s]:
            heap_k[m] = 0.5 / w[s]
            heap_s[m] = s
            j = m
            m += 1
            while j > 0:
                parent = (j - 1) // 2
                if heap_k[j] < heap_k[parent] or (heap_k[j] == heap_k[parent] and heap_s[j] < heap_s[parent]):
                    heap_k[j], heap_k[parent] = heap_k[parent], heap_k[j]
                    heap_s[j], heap_s[parent] = heap_s[parent], heap_s[j]
                    j = parent
                else:
                    break
    for o in range(total):
        s = heap_s[0]
        order[o] = seq[seq_off[s] + pos[s]]
        pos[s] += 1
        if seq_off[s] + pos[s] < seq_off[s + 1]:
            heap_k[0] = (pos[s] + 0.5) / w[s]
        else:
            m -= 1
            heap_k[0] = heap_k[m]
            heap_s[0] = heap_s[m]
        j = 0
        while True:
            lo, hi = 2 * j + 1, 2 * j + 2
            best = j
            if lo < m and (heap_k[lo] < heap_k[best] or (heap_k[lo] == heap_k[best] and heap_s[lo] < heap_s[best])):
                best = lo
            if hi < m and (heap_k[hi] < heap_k[best] or (heap_k[hi] == heap_k[best] and heap_s[hi] < heap_s[best])):
                best = hi
            if best == j:
                break
            heap_k[j], heap_k[best] = heap_k[best], heap_k[j]
            heap_s[j], heap_s[best] = heap_s[best], heap_s[j]
            j = best
    return order
