"""Cluster labels: a few distinctive caption words per prototype cluster (class-based TF-IDF).

Each cluster's captions form one document; a word's weight in a cluster is its frequency there
times ``log(1 + A / f)``, with ``A`` the mean number of words per cluster and ``f`` the word's
frequency over the clusters it is told apart from (c-TF-IDF, as BERTopic names topics). Given the
cluster centres, those are the cluster's nearest neighbouring clusters (:data:`NEIGHBOURS`), not the
whole pool: two neighbouring clusters of the same finding are named by what sets them apart, as a
map reader needs, where contrast with the whole pool names both by the finding they share. Generic
imaging words ("axial", "image", "ct"...: :data:`curation.quality.GENERIC_WORDS`) and English stop
words are left out, so a label says what a cluster holds ("edema knee"), not how it was imaged.
Distinct clusters get distinct names (:func:`_distinct`).
"""

from __future__ import annotations

import numpy as np
from curation.quality import GENERIC_WORDS

DEFAULT_WORDS = 3
NEIGHBOURS = 8  # a cluster's words are weighed against its 8 nearest clusters (by centre cosine)


def cluster_labels(captions, assign: np.ndarray, k: int, words: int = DEFAULT_WORDS,
                   centroids: np.ndarray | None = None, neighbours: int = NEIGHBOURS) -> list[str]:
    """One label per cluster ``0..k-1``: its ``words`` highest c-TF-IDF words, space-separated
    ("" for a cluster without caption words).

    Parameters
    ----------
    captions : sequence of str (n,), None entries allowed
    assign : ndarray (n,) int, cluster of each caption
    k : int, number of clusters
    centroids : ndarray (k, d), optional; the cluster centres. Given, a word's rarity is measured
        among the cluster and its ``neighbours`` nearest clusters; without, among all clusters.
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    docs = [""] * k
    parts: list[list[str]] = [[] for _ in range(k)]
    for c, text in zip(np.asarray(assign), captions):
        if isinstance(text, str) and text:
            parts[int(c)].append(text)
    docs = [" ".join(p) for p in parts]
    if not any(docs):
        return [""] * k
    stop = sorted(set(ENGLISH_STOP_WORDS) | set(GENERIC_WORDS))
    cv = CountVectorizer(lowercase=True, token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z\-]{2,}\b", stop_words=stop)
    try:
        counts = cv.fit_transform(docs).astype(np.float64)
    except ValueError:  # only stop words
        return [""] * k
    vocab = np.asarray(cv.get_feature_names_out())
    per_class = np.asarray(counts.sum(axis=1)).ravel()
    tf = counts.multiply(1.0 / np.maximum(per_class, 1)[:, None]).tocsr()
    if centroids is None or k <= neighbours + 1:
        freq = np.asarray(counts.sum(axis=0)).ravel()
        idf = np.log1p(per_class.mean() / np.maximum(freq, 1))
        w = tf.multiply(idf[None, :]).tocsr()
    else:
        w = _against_neighbours(tf, counts.tocsr(), per_class, _nearest_clusters(centroids, neighbours))
    out = [_top_words(w.getrow(c), vocab, words) for c in range(k)]
    return _distinct(out, counts.tocsr(), vocab)


def family(label: str) -> str:
    """A label without the size rank :func:`_distinct` adds to equal names ("normal chest x-ray #3"
    -> "normal chest x-ray"): the clusters of one family hold captions no word tells apart."""
    import re

    return re.sub(r" #\d+$", "", label)


def _nearest_clusters(centroids: np.ndarray, neighbours: int) -> np.ndarray:
    """(k, neighbours) the nearest other clusters of each cluster by cosine of the centres
    (ties by index); k x k similarities in blocks of 1,024 rows (k is at most a few thousand)."""
    c = np.asarray(centroids, np.float32)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    out = np.empty((len(c), neighbours), np.int64)
    for a in range(0, len(c), 1024):
        sim = c[a:a + 1024] @ c.T
        sim[np.arange(len(sim)), np.arange(a, a + len(sim))] = -np.inf  # not itself
        top = np.argpartition(-sim, neighbours - 1, axis=1)[:, :neighbours]
        order = np.lexsort((top, -np.take_along_axis(sim, top, axis=1)), axis=1)
        out[a:a + len(sim)] = np.take_along_axis(top, order, axis=1)
    return out


def _against_neighbours(tf, counts, per_class: np.ndarray, nearest: np.ndarray):
    """c-TF-IDF with each cluster's idf taken over itself and its nearest clusters:
    ``tf(w, c) * log(1 + A_c / f_c(w))``, ``A_c`` the mean words per cluster of the neighbourhood and
    ``f_c(w)`` the word's count in it."""
    import scipy.sparse as sp

    rows, cols, vals = [], [], []
    for c in range(counts.shape[0]):
        row = tf.getrow(c)
        if row.nnz == 0:
            continue
        hood = np.concatenate([[c], nearest[c]])
        f = np.asarray(counts[hood][:, row.indices].sum(axis=0)).ravel()
        idf = np.log1p(per_class[hood].mean() / np.maximum(f, 1))
        rows.append(np.full(row.nnz, c))
        cols.append(row.indices)
        vals.append(row.data * idf)
    if not rows:
        return tf
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=tf.shape)


def _top_words(row, vocab, words: int, skip=()) -> str:
    """The ``words`` highest-weighted words of a sparse row (ties by vocabulary order), minus ``skip``."""
    if row.nnz == 0:
        return ""
    order = row.indices[np.argsort(-row.data, kind="stable")]
    return " ".join([vocab[i] for i in order if vocab[i] not in skip][:words])


def _distinct(labels: list[str], counts, vocab) -> list[str]:
    """Distinct names for distinct clusters. Clusters that share a label (k-means splits a big
    head, 52 of the demo's 141 prototypes read "normal chest x-ray") get the word that sets each
    apart from the others of its group: c-TF-IDF again, inside the group only ("normal chest x-ray ·
    lateral"); any still equal are numbered by size ("... #2")."""
    out = list(labels)
    groups: dict[str, list[int]] = {}
    for c, lab in enumerate(labels):
        if lab:
            groups.setdefault(lab, []).append(c)
    for lab, members in groups.items():
        if len(members) < 2:
            continue
        sub = counts[members]
        per = np.asarray(sub.sum(axis=1)).ravel()
        tf = sub.multiply(1.0 / np.maximum(per, 1)[:, None]).tocsr()
        idf = np.log1p(per.mean() / np.maximum(np.asarray(sub.sum(axis=0)).ravel(), 1))
        w = tf.multiply(idf[None, :]).tocsr()
        extras = [_top_words(w.getrow(i), vocab, 1, skip=set(lab.split())) for i in range(len(members))]
        common = {e for e in set(extras) if extras.count(e) > len(members) / 2}  # shared by most: sets none apart
        for c, extra in zip(members, extras):
            out[c] = f"{lab} · {extra}" if extra and extra not in common else lab
    seen: dict[str, list[int]] = {}
    for c, lab in enumerate(out):
        if lab:
            seen.setdefault(lab, []).append(c)
    sizes = np.asarray(counts.sum(axis=1)).ravel()
    for lab, members in seen.items():
        if len(members) > 1:
            for rank, c in enumerate(sorted(members, key=lambda m: (-sizes[m], m))):
                out[c] = lab if rank == 0 else f"{lab} #{rank + 1}"
    return out
