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
    return fidelity_and_consistency(None, text, image_assign, False, step)[2]


def fidelity_and_consistency(image: np.ndarray | None, text: np.ndarray, image_assign: np.ndarray,
                             shared_space: bool, step: int = 1 << 16):
    """:func:`fidelity` and :func:`consistency` from one read of the image vectors and two of the
    text (the first pass sums each image cluster's captions and scores the pairs on the way; read
    separately, the text was read three times). Results bit for bit those of the two functions.

    Returns (fidelity or None, its reason or None, consistency)."""
    from scipy.sparse import csr_matrix

    fid, reason = None, None
    if image is None:
        reason = "not available: the dataset lacks image or text embeddings"
    elif not shared_space or image.shape[1] != text.shape[1]:
        reason = NOT_SHARED
    else:
        fid = np.empty(len(image), np.float32)
    n = len(text)
    k = int(image_assign.max()) + 1
    sums = np.zeros((k, text.shape[1]), np.float64)
    for i in range(0, n, step):
        t = normalize(text[i:i + step])
        if fid is not None:
            fid[i:i + step] = (normalize(image[i:i + step]) * t).sum(axis=1)
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
    return fid, reason, np.where(counts[image_assign] > 1, out, 0.0).astype(np.float32)


def rank_score(x: np.ndarray) -> np.ndarray:
    """Percentile rank in [0, 1] (0 = lowest), ties broken by row: the ``<name>_score`` scale."""
    n = len(x)
    if n < 2:
        return np.ones(n, np.float32)
    order = np.lexsort((np.arange(n), x))
    r = np.empty(n, np.float64)
    r[order] = np.arange(n)
    return (r / (n - 1)).astype(np.float32)


# --- caption quality: a model-free axis that catches boilerplate ----------------------------------
# A caption that is only one of these (after lower-casing and trimming punctuation) says nothing.
PLACEHOLDER = (r"in progress|pending|tbd|to do|todo|n/?a|none|null|nil|no caption|no description|untitled|"
               r"unknown|image|images|figure|fig|picture|photo|see (?:text|report|above|below|case)|"
               r"lorem ipsum.*|test|xx+|\W*")
# Words that carry no finding: a caption made only of these ("MR Image", "Axial CT scan") is boilerplate.
GENERIC_WORDS = frozenset("""
a an the of and or in on at to with without for from by as is are was were be been this that these those
image images scan scans slice slices study series view views sequence sequences figure fig picture photo
ct mr mri cta mra pet spect xray x ray radiograph radiography ultrasound us sonogram
axial sagittal coronal oblique plane planes transverse weighted t1 t2 flair dwi adc gre swi stir contrast
enhanced non post pre phase arterial venous delayed shows showing demonstrates demonstrating seen see noted
level levels through above below left right bilateral patient case
impression findings finding consistent compatible suggestive noted report history clinical
""".split())
CONTENT_WORDS_FULL = 6  # captions with this many finding words or more get full length credit


def _normalize_caption(text) -> str:
    import re

    if not isinstance(text, str):
        return ""
    t = re.sub(r"\s+", " ", text.lower()).strip()
    return t.strip(" .,:;-_*#()[]\"'")


def caption_quality(captions, case=None) -> dict:
    """A caption quality score in [0, 1] from the text alone (no model), with its parts.

    Three signals, multiplied: **content** (words that are not generic imaging vocabulary,
    :data:`GENERIC_WORDS`; full credit at :data:`CONTENT_WORDS_FULL`), **placeholder** (a caption
    that is only boilerplate such as "IN PROGRESS" or "MR Image" scores 0), and **repetition** (the
    same caption on many different cases is a template, not a description: 1 / (1 + log2 r) for a
    caption shared by r cases; sharing within one case, as slices of one study do, costs nothing).

    Parameters
    ----------
    captions : sequence of str (n,)
    case : ndarray (n,) of case codes, optional (each row its own case when None)

    Returns
    -------
    dict of ndarrays (n,): ``caption_quality`` (float32), ``caption_words`` (content words, int32),
    ``caption_dup_cases`` (cases sharing the exact caption, int32), ``caption_dup_images`` (other
    images with the exact caption, int32: the caption-duplicate signal), ``is_placeholder`` (bool).
    """
    import re

    import pandas as pd

    norm = pd.Series([_normalize_caption(c) for c in captions], dtype=object)
    n = len(norm)
    placeholder = norm.str.fullmatch(PLACEHOLDER, flags=re.I).fillna(True).to_numpy(bool).copy()
    words = norm.map(lambda t: sum(1 for w in re.findall(r"[a-z][a-z0-9']+", t)
                                   if len(w) >= 3 and w not in GENERIC_WORDS)).to_numpy(np.int32)
    placeholder |= words == 0
    codes = pd.factorize(norm)[0]
    case = np.arange(n) if case is None else np.asarray(case)
    pairs = pd.DataFrame({"c": codes, "k": case}).drop_duplicates()
    cases_per_caption = np.bincount(pairs["c"].to_numpy(), minlength=codes.max() + 1 if n else 0)
    images_per_caption = np.bincount(codes, minlength=codes.max() + 1 if n else 0)
    r = cases_per_caption[codes] if n else np.zeros(0, np.int64)
    content = np.minimum(1.0, words / CONTENT_WORDS_FULL)
    repetition = 1.0 / (1.0 + np.log2(np.maximum(r, 1)))
    q = np.where(placeholder, 0.0, content * repetition).astype(np.float32)
    return {"caption_quality": q, "caption_words": words,
            "caption_dup_cases": r.astype(np.int32),
            "caption_dup_images": (images_per_caption[codes] - 1).astype(np.int32) if n else np.zeros(0, np.int32),
            "is_placeholder": placeholder}


def tied_rank_score(x: np.ndarray) -> np.ndarray:
    """Percentile rank in [0, 1] where equal values share the lowest rank (a gate then keeps or
    drops a tie as a whole; :func:`rank_score` breaks ties by row)."""
    from scipy.stats import rankdata

    n = len(x)
    if n < 2:
        return np.ones(n, np.float32)
    return ((rankdata(x, method="min") - 1) / (n - 1)).astype(np.float32)
