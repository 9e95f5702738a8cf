"""Impact of a subset against the pool, always beside a random subset of the same size, and the
offline subset-vs-random evaluation with a linear probe.

Every live metric is a bincount over the pool (tens of milliseconds at 1M rows), so the app can
recompute them on every knob change.
"""

from __future__ import annotations

import numpy as np

from curation.selection import MISSING, SelectionInputs


def random_order(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of the pool: a random subset of size b is its first b rows."""
    return np.random.default_rng(seed + 7919).permutation(n)


def _cached_random(ctx, seed: int) -> np.ndarray:
    if seed not in ctx._random:
        ctx._random[seed] = random_order(ctx.n, seed)
    return ctx._random[seed]


def _codes(series) -> tuple[np.ndarray, int]:
    import pandas as pd

    s = series.astype(object).where(series.notna(), MISSING).astype(str)
    codes, levels = pd.factorize(s, sort=True)
    return codes, len(levels)


def tvd(sub_codes: np.ndarray, pool_codes: np.ndarray, k: int) -> float:
    """Total variation distance between the subset's and the pool's category distributions."""
    if len(sub_codes) == 0:
        return float("nan")
    p = np.bincount(sub_codes, minlength=k) / len(sub_codes)
    q = np.bincount(pool_codes, minlength=k) / len(pool_codes)
    return float(0.5 * np.abs(p - q).sum())


class ImpactContext:
    """Pool-level arrays precomputed once per dataset, so each subset costs a few bincounts.

    Parameters
    ----------
    inp : SelectionInputs
    columns : iterable of str
        Metadata columns whose TVD to the pool is reported (the confounders).
    label : str, optional
        A label column for class coverage.
    """

    def __init__(self, inp: SelectionInputs, columns=(), label: str | None = None, dedup_eps: float = 0.05):
        self.n = inp.n
        self.prototype = inp.prototype
        self.k = int(inp.prototype.max()) + 1
        sizes = np.bincount(inp.prototype, minlength=self.k)
        # rare prototypes: the smallest clusters that together hold 10% of the pool
        order = np.argsort(sizes, kind="stable")
        cum = np.cumsum(sizes[order])
        self.rare = np.zeros(self.k, bool)
        self.rare[order[: max(1, int(np.searchsorted(cum, 0.1 * self.n)) + 1)]] = True
        self.sparse = inp.tail_score >= 0.9  # the 10% lowest-density samples
        self.is_dup = inp.duplicates(dedup_eps)[1]
        self.scores = {a: v for a, v in inp.scores.items()}
        self.cols = {c: _codes(inp.meta[c]) for c in columns}
        self._random: dict = {}
        self._pool: dict | None = None
        self.label = None
        if label:
            codes, k = _codes(inp.meta[label])
            self.label = (label, codes, k)

    def impact(self, rows: np.ndarray) -> dict:
        """Metrics of the subset ``rows`` (row indices into the pool)."""
        out = {"size": int(len(rows))}
        hit = np.bincount(self.prototype[rows], minlength=self.k) > 0
        out["cluster_coverage"] = float(hit.mean())
        out["rare_cluster_coverage"] = float(hit[self.rare].mean())
        out["sparse_share"] = float(self.sparse[rows].mean()) if len(rows) else float("nan")
        out["duplicate_rate"] = float(self.is_dup[rows].mean()) if len(rows) else float("nan")
        for a, v in self.scores.items():
            out[f"{a}_score_mean"] = float(np.nanmean(v[rows])) if len(rows) else float("nan")
        for c, (codes, k) in self.cols.items():
            out[f"tvd_{c}"] = tvd(codes[rows], codes, k)
        if self.label:
            name, codes, k = self.label
            counts = np.bincount(codes[rows], minlength=k)
            out["label_coverage"] = float((counts > 0).mean())
            out["label_min_count"] = int(counts.min())
        return out

    def compare(self, selected: np.ndarray, seed: int) -> "object":
        """A DataFrame: one row per metric, columns ``subset``, ``random`` (same size), ``pool``."""
        import pandas as pd

        rnd = _cached_random(self, seed)[: len(selected)]
        if self._pool is None:
            self._pool = self.impact(np.arange(self.n))
        a, b, p = self.impact(selected), self.impact(rnd), self._pool
        return pd.DataFrame({"subset": a, "random": b, "pool": p})

    def coverage_curve(self, order: np.ndarray, seed: int, points: int = 50):
        """Cluster coverage (all and rare) against the budget, for the selection order and random.

        Returns a long DataFrame: budget, coverage, which ("selection" / "random"), metric.
        """
        import pandas as pd

        budgets = np.unique(np.linspace(1, self.n, points).astype(int))
        frames = []
        for name, ordr in (("selection", order), ("random", _cached_random(self, seed))):
            first = np.full(self.k, np.iinfo(np.int64).max)
            cl = self.prototype[ordr]
            # first position at which each cluster appears in the order
            pos = np.arange(len(ordr))
            np.minimum.at(first, cl, pos)
            for metric, mask in (("cluster_coverage", np.ones(self.k, bool)), ("rare_cluster_coverage", self.rare)):
                f = np.sort(first[mask])
                cov = np.searchsorted(f, budgets, side="left") / mask.sum()
                frames.append(pd.DataFrame({"budget": budgets, "coverage": cov, "which": name, "metric": metric}))
        return pd.concat(frames, ignore_index=True)
