"""Quality proxies that need no model (RefineNet's two axes, approximated from embeddings).

- **fidelity**: image-text cosine, meaningful only when both come from one CLIP-style model
  (``shared_space``); otherwise it is *not available* and :func:`fidelity` says why.
- **consistency**: how well a caption agrees with the captions of images like it: the cosine of
  the sample's text vector with the mean text vector of its image-space neighbourhood (its
  image-space prototype cluster, itself left out). Works with different encoders (only text is
  compared with text), and a caption that does not fit its image scores low.

Scores are rescaled to ``<name>_score`` in [0, 1] by rank, so gates read as "bottom q%".
"""

from __future__ import annotations

import numpy as np

from curation.spaces import normalize

NOT_SHARED = "not available: image and text embeddings come from different encoders"


def fidelity(image: np.ndarray | None, text: np.ndarray | None, shared_space: bool):
    """Image-text cosine per pair, or (None, reason) when it would be meaningless.

    Returns
    -------
    scores : ndarray (n,) float32 or None
    reason : str or None
    """
    if image is None or text is None:
        return None, "not available: the dataset lacks image or text embeddings"
    if not shared_space or image.shape[1] != text.shape[1]:
        return None, NOT_SHARED
    out = np.empty(len(image), np.float32)
    step = 1 << 16
    for i in range(0, len(image), step):
        out[i:i + step] = (normalize(image[i:i + step]) * normalize(text[i:i + step])).sum(axis=1)
    return out, None


def consistency(text: np.ndarray, image_assign: np.ndarray, step: int = 1 << 16) -> np.ndarray:
    """Cosine of each caption's vector with the mean caption vector of its image cluster (self
    excluded). Singletons get 0. Works on views (e.g. one half of the joint array) in chunks, so it
    never copies all of ``text``.

    Parameters
    ----------
    text : ndarray (n, d_txt), any row norms (rows are normalised here)
    image_assign : ndarray (n,) int, image-space prototype of each sample
    """
    from scipy.sparse import csr_matrix

    n = len(text)
    k = int(image_assign.max()) + 1
    sums = np.zeros((k, text.shape[1]), np.float64)
    for i in range(0, n, step):
        t = normalize(text[i:i + step])
        a = image_assign[i:i + step]
        onehot = csr_matrix((np.ones(len(a)), (a, np.arange(len(a)))), shape=(k, len(a)))
        sums += onehot @ t
    counts = np.bincount(image_assign, minlength=k)
    out = np.empty(n, np.float32)
    for i in range(0, n, step):
        t = normalize(text[i:i + step])
        others = sums[image_assign[i:i + step]] - t  # leave the sample itself out
        norms = np.linalg.norm(others, axis=1)
        out[i:i + step] = np.einsum("nd,nd->n", t, others) / np.maximum(norms, 1e-12)
    return np.where(counts[image_assign] > 1, out, 0.0).astype(np.float32)


def rank_score(x: np.ndarray) -> np.ndarray:
    """Percentile rank in [0, 1] (0 = lowest), ties broken by row: the ``<name>_score`` scale."""
    n = len(x)
    if n < 2:
        return np.ones(n, np.float32)
    order = np.lexsort((np.arange(n), x))
    r = np.empty(n, np.float64)
    r[order] = np.arange(n)
    return (r / (n - 1)).astype(np.float32)
