"""Cluster labels: a few distinctive caption words per prototype cluster (class-based TF-IDF).

Each cluster's captions form one document; a word's weight in a cluster is its frequency there
times ``log(1 + A / f)``, with ``A`` the mean number of words per cluster and ``f`` the word's
frequency over all clusters (c-TF-IDF, as BERTopic names topics). Generic imaging words ("axial",
"image", "ct"...: :data:`curation.quality.GENERIC_WORDS`) and English stop words are left out, so
a label says what a cluster holds ("edema knee"), not how it was imaged.
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
    out = []
    for c in range(k):
        row = w.getrow(c)
        if row.nnz == 0:
            out.append("")
            continue
        top = row.indices[np.argsort(-row.data, kind="stable")[:words]]
        out.append(" ".join(vocab[top]))
    return out
