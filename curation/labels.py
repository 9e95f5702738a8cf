"""Cluster labels: a few distinctive caption words per prototype cluster (class-based TF-IDF).

Each cluster's captions form one document; a word's weight in a cluster is its frequency there
times ``log(1 + A / f)``, with ``A`` the mean number of words per cluster and ``f`` the word's
frequency over all clusters (c-TF-IDF, as BERTopic names topics). Generic imaging words ("axial",
"image", "ct"...: :data:`curation.quality.GENERIC_WORDS`) and English stop words are left out, so
a label says what a cluster holds ("edema knee"), not how it was imaged. Distinct clusters get
distinct names (:func:`_distinct`).
"""

from __future__ import annotations

import numpy as np
from curation.quality import GENERIC_WORDS

DEFAULT_WORDS = 3


def cluster_labels(captions, assign: np.ndarray, k: int, words: int = DEFAULT_WORDS) -> list[str]:
    """One label per cluster ``0..k-1``: its ``words`` highest c-TF-IDF words, space-separated
    ("" for a cluster without caption words).

    Parameters
    ----------
    captions : sequence of str (n,), None entries allowed
    assign : ndarray (n,) int, cluster of each caption
    k : int, number of clusters
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
    freq = np.asarray(counts.sum(axis=0)).ravel()
    idf = np.log1p(per_class.mean() / np.maximum(freq, 1))
    w = tf.multiply(idf[None, :]).tocsr()
    out = [_top_words(w.getrow(c), vocab, words) for c in range(k)]
    return _distinct(out, counts.tocsr(), vocab)


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
