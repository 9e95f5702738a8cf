"""The distilled reward network (RefineNet): a small torch module on frozen embeddings.

Imported lazily by :mod:`curation.reward` (``train`` and ``score``), so ``import curation`` and the
app never import torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from curation.spaces import normalize


class RewardNet(nn.Module):
    """Embeddings -> fixed whitened PCA bases (fitted on the whole pool, stored as buffers) ->
    learned projections a (image), b (text) -> MLP on [a, b, a*b] -> one output per axis.

    In a shared CLIP-style space (image and text of one dimension, one basis for both) the
    image-text cosine, the strongest single fidelity signal, also has a linear path to the
    outputs. Few ratings (hundreds to thousands) against 512-768-d inputs: the PCA keeps the
    learned part small enough not to memorise rater noise.

    Parameters
    ----------
    d_img, d_txt : int
        Embedding dimensions (0 when that modality is absent).
    k : int
        PCA dimensions per modality.
    shared : bool
        Image and text come from one CLIP-style model (adds the cosine path).
    n_axes : int
        Outputs, one per rating axis.
    hidden : int
    dropout : float
    """

    def __init__(self, d_img: int, d_txt: int, k: int, shared: bool, n_axes: int, hidden: int, dropout: float):
        super().__init__()
        self.shared = bool(shared)
        for name, d in (("img", d_img), ("txt", d_txt)):
            if d:
                self.register_buffer(f"{name}_mean", torch.zeros(d))
                self.register_buffer(f"{name}_comp", torch.zeros(k, d))
                self.register_buffer(f"{name}_sd", torch.ones(k))
        self.pi = nn.Linear(k, hidden) if d_img else None
        self.pt = nn.Linear(k, hidden) if d_txt else None
        both = bool(d_img and d_txt)
        self.cos = nn.Linear(1, n_axes) if both and self.shared else None
        self.register_buffer("cos_stats", torch.tensor([0.0, 1.0]))  # pool mean, sd of the cosine
        n_in = hidden * (3 if both else 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_in, hidden), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, n_axes))

    def set_basis(self, name, mean, comp, sd):
        for part, v in (("mean", mean), ("comp", comp), ("sd", sd)):
            getattr(self, f"{name}_{part}").copy_(torch.as_tensor(v))

    def _pc(self, name, x):
        return (x - getattr(self, f"{name}_mean")) @ getattr(self, f"{name}_comp").T / \
            getattr(self, f"{name}_sd").clamp(min=1e-6)

    def forward(self, img, txt):
        a = self.pi(self._pc("img", img)) if self.pi is not None else None
        b = self.pt(self._pc("txt", txt)) if self.pt is not None else None
        parts = [x for x in (a, b) if x is not None]
        if a is not None and b is not None:
            parts.append(a * b)
        out = self.head(torch.cat(parts, dim=1))
        if self.cos is not None:
            c = (img * txt).sum(dim=1, keepdim=True)
            out = out + self.cos((c - self.cos_stats[0]) / self.cos_stats[1].clamp(min=1e-6))
        return out


def fit_bases(net, img_all, txt_all, k, shared, seed, fit_max=50_000):
    """PCA bases of the pool's (unit) embeddings: one basis for image and text in a shared space."""
    from curation.projection import pca_basis

    rng = np.random.default_rng(seed)
    n = len(img_all if img_all is not None else txt_all)
    rows = np.sort(rng.choice(n, min(n, fit_max), replace=False))
    if shared:
        img, txt = normalize(img_all[rows]), normalize(txt_all[rows])
        basis = pca_basis(np.concatenate([img, txt]), k, 2 * fit_max, seed)
        net.set_basis("img", *basis)
        net.set_basis("txt", *basis)
        c = (img * txt).sum(axis=1)
        net.cos_stats.copy_(torch.tensor([float(c.mean()), float(c.std())]))
        return
    for name, X in (("img", img_all), ("txt", txt_all)):
        if X is not None:
            net.set_basis(name, *pca_basis(normalize(X[rows]), k, fit_max, seed))
