"""Impact of a subset against the pool, always beside a random subset of the same size, and the
offline subset-vs-random evaluation with a linear probe.

Every live metric is a bincount over the pool (tens of milliseconds at 1M rows), so the app can
recompute them on every knob change.
"""

from __future__ import annotations

import functools
import logging
import threading

import numpy as np

from curation.errors import CurationError
from curation.prototypes import rare_clusters
from curation.schema import category_values
from curation.selection import Filter, SelectionInputs, factorize_column, select

log = logging.getLogger(__name__)

# Offsets that give the random baselines their own random streams: the selection seed also seeds
# other draws (the held-out split), and a baseline drawn from the same stream would share its draws.
RANDOM_BASELINE_SEED_OFFSET = 7919        # a prime, so seed and seed + offset never coincide across seeds 0..7918
EVAL_RANDOM_SUBSET_SEED_OFFSET = 1000     # evaluate's i-th random subset uses seed + 1000 + i


def random_order(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of the pool: a random subset of size b is its first b rows."""
    return np.random.default_rng(seed + RANDOM_BASELINE_SEED_OFFSET).permutation(n)


def _cached_random(ctx, seed: int) -> np.ndarray:
    """The context's precomputed permutation for its own seed; others are computed (not stored)."""
    return ctx.random if seed == ctx.seed else random_order(ctx.n, seed)


class LabelColumn:
    """A label column (an answer, not an input) as classes per row: a multi-label value ``a|b|c``
    counts each class. ``rows``/``classes``: one entry per (row, class) pair; ``sizes``: rows per
    class in the pool; ``head``: the pool's most frequent class; ``rare``: classes with at most
    :data:`RARE_CLASS_MAX` rows."""

    def __init__(self, name: str, series):
        import pandas as pd


        self.name = name
        s = category_values(series)
        s = s.astype(object).where(s.notna(), None).map(lambda v: None if v is None else str(v))
        parts = s.str.split(LABEL_SEP, regex=False).explode().str.strip()
        parts = parts[parts.notna() & (parts != "")]
        self.rows = parts.index.to_numpy(np.int64)
        codes, names = pd.factorize(parts.to_numpy(), sort=True)
        self.classes = codes.astype(np.int64)
        self.names = [str(x) for x in names]
        self.sizes = np.bincount(self.classes, minlength=len(self.names))
        self.head = int(np.argmax(self.sizes)) if len(self.sizes) else -1
        self.rare = self.sizes <= RARE_CLASS_MAX
        self.holds_head = np.zeros(len(series), bool)
        self.holds_head[self.rows[self.classes == self.head]] = True

    def impact(self, mask: np.ndarray, size: int) -> dict:
        hit = np.zeros(len(self.names), bool)
        hit[self.classes[mask[self.rows]]] = True
        p = f"label_{self.name}"
        return {f"{p}_head_share": float(self.holds_head[mask].sum() / size) if size else float("nan"),
                f"{p}_class_coverage": float(hit.mean()) if len(hit) else float("nan"),
                f"{p}_rare_class_coverage": float(hit[self.rare].mean()) if self.rare.any() else float("nan")}


def _codes(series) -> tuple[np.ndarray, int]:
    """(codes, number of levels) of a metadata column, missing values a level of their own: the
    coding strata use (:func:`curation.selection.factorize_column`; a factorize of the column as
    it is, 3-50x faster at 10M rows than going through Python strings)."""
    codes, labels = factorize_column(series)
    return codes, len(labels)


def _p_hit(n: int, sizes: np.ndarray, b: int) -> np.ndarray:
    """P(a group of m rows gets at least one of a uniformly random b of n): 1 - C(n - m, b) / C(n, b)."""
    from scipy.special import gammaln

    rest = np.maximum(n - sizes - b, 0)
    log_miss = gammaln(n - sizes + 1) - gammaln(rest + 1) - gammaln(n + 1) + gammaln(n - b + 1)
    return np.where(n - sizes < b, 1.0, 1.0 - np.exp(log_miss))


def tvd(sub_codes: np.ndarray, pool_codes: np.ndarray | None, k: int, pool_dist: np.ndarray | None = None) -> float:
    """Total variation distance between the subset's and the pool's category distributions
    (``pool_dist``: the pool's, computed once by a caller that compares many subsets)."""
    if len(sub_codes) == 0:
        return float("nan")
    p = np.bincount(sub_codes, minlength=k) / len(sub_codes)
    q = pool_dist if pool_dist is not None else np.bincount(pool_codes, minlength=k) / len(pool_codes)
    return float(0.5 * np.abs(p - q).sum())


#: which way each impact metric is better ("" for size); tvd_* lower, *_score_mean higher
DIRECTIONS = {"size": "", "cluster_coverage": "higher", "rare_cluster_coverage": "higher", "sparse_share": "higher",
              "duplicate_rate": "lower"}
RARE_CLASS_MAX = 20    # a label class held by at most this many rows of the pool is rare
LABEL_SEP = "|"        # a multi-label value "a|b|c" holds three classes
DENSITY_BINS = 10      # deciles of the kNN tail score
DENSITY_MATCHED = ("consistency",)  # axes whose random baseline is matched to the subset's density mix
PREFIX_BACKGROUND_MIN = 1_000_000  # from this many rows an order's running counts are built in a thread
NOISE_SUBSETS = 5      # random subsets of the same size that measure TVD's noise (no formula for it)
NOISE_SIGMAS = 3.0     # worse than random by more than this many standard deviations (one-sided 0.13%)...
MIN_GAP = 0.01         # ...and by at least this much (counts: 1), so exact ties never warn
MIN_STRATUM = 5        # a stratum with fewer selected samples is warned about


def direction(metric: str) -> str:
    """"higher", "lower" or "" (no better side) for an impact metric name."""
    if metric.startswith("tvd_"):
        return "lower"
    if metric.endswith("_score_mean"):
        return "higher"
    if metric.startswith("label_") and metric.endswith("coverage"):
        return "higher"
    return DIRECTIONS.get(metric, "")


class ImpactContext:
    """Pool-level arrays precomputed once per dataset, so each subset costs a few bincounts.

    Immutable after construction (everything, the pool's own metrics and the random baseline's
    permutation for ``seed`` included, is computed here), so one context can serve many threads.

    Parameters
    ----------
    inp : SelectionInputs
    columns : iterable of str
        Metadata columns whose TVD to the pool is reported (the confounders).
    labels : iterable of str
        Label columns (answers, not inputs: :class:`LabelColumn`): the share of the head class and
        the share of classes and of rare classes the subset covers. ``label`` (one) is the older
        spelling.
    dedup_eps : float
        The duplicate rate is measured at this eps (use the selection's).
    seed : int
        Seed of the random baseline whose permutation is precomputed.
    """

    def __init__(self, inp: SelectionInputs, columns=(), label: str | None = None, dedup_eps: float = 0.05,
                 seed: int = 0, cache=None, labels=()):
        self.n = inp.n
        self.prototype = inp.prototype
        self.k = int(inp.prototype.max()) + 1

        self.rare = rare_clusters(np.bincount(inp.prototype, minlength=self.k))
        self.sparse = inp.tail_score >= 0.9  # the 10% lowest-density samples
        # density deciles: axes that depend on how many close neighbours a sample has (consistency
        # is agreement with the neighbours' captions) are compared with rows of similar density
        self.density_bin = np.minimum((np.nan_to_num(inp.tail_score, nan=0.0) * DENSITY_BINS).astype(np.int64),
                                      DENSITY_BINS - 1)
        self.dedup_eps = float(dedup_eps)
        self.is_dup = inp.duplicates(self.dedup_eps, cache)[1]
        self.scores = {a: v for a, v in inp.scores.items()}
        self.cols = {c: _codes(inp.meta[c]) for c in columns}  # the strata's own coding (missing: a level)
        # each column's pool distribution, once (every compare took two 10M-row bincounts per column)
        self._pool_dist = {c: np.bincount(codes, minlength=k) / len(codes) for c, (codes, k) in self.cols.items()}
        names = list(dict.fromkeys([*(labels or ()), *([label] if label else [])]))
        self.labels = [LabelColumn(c, inp.meta[c]) for c in names if c in inp.meta.columns]
        self.seed = int(seed)
        self.random = random_order(self.n, self.seed)
        self.pool = self.impact(np.arange(self.n))
        self._prefixes: list = []  # (order, PrefixImpact) of the last orders compared
        self._prefix_lock = threading.Lock()

    @functools.cached_property
    def noise_orders(self) -> list:
        """:data:`NOISE_SUBSETS` seeded permutations that measure TVD's noise, made on first use
        (only a proportional selection with strata reads them: at 10M rows they cost 1.8 s and
        400 MB). Deterministic, so two sessions computing them at once get the same lists."""
        return [random_order(self.n, self.seed + 1 + i) for i in range(NOISE_SUBSETS)]

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
            out[f"tvd_{c}"] = tvd(codes[rows], None, k, pool_dist=self._pool_dist[c])
        if self.labels:
            mask = np.zeros(self.n, bool)
            mask[rows] = True
            for lab in self.labels:
                out.update(lab.impact(mask, len(rows)))
        return out

    def compare(self, selected: np.ndarray, seed: int, order: np.ndarray | None = None) -> "object":
        """A DataFrame: one row per metric, columns ``subset``, ``random`` (same size), ``pool``.

        ``order``: the selection's priority order when ``selected`` is its first rows (a budget
        change takes another prefix): the subset's metrics then come from running counts along
        the order, built once per order, as the random baseline's come from its permutation's, so
        a budget change costs O(clusters + categories), not two passes over the subset (at 10M
        rows those were most of a budget change)."""
        import pandas as pd

        b = len(selected)
        if order is not None and b <= len(order) and (b == 0 or (selected[0] == order[0] and selected[-1] == order[b - 1])):
            pi = self._prefix(order)
            a = pi.impact(b) if pi is not None else self.impact(selected)
        else:
            a = self.impact(selected)
        rnd = self.random_prefix.impact(b) if seed == self.seed else self.impact(random_order(self.n, seed)[:b])
        out = pd.DataFrame({"subset": a, "random": rnd, "pool": self.pool})
        out["better"] = [direction(m) for m in out.index]
        return out

    @functools.cached_property
    def random_prefix(self) -> "PrefixImpact":
        """Running counts along the random baseline's permutation (:class:`PrefixImpact`)."""
        return PrefixImpact(self, self.random)

    def _ready_prefix(self, order: np.ndarray) -> "PrefixImpact | None":
        """The running counts of ``order`` if they are built already (never starts a build)."""
        if order is self.random and "random_prefix" in self.__dict__:
            return self.random_prefix
        with self._prefix_lock:
            return next((h.get("pi") for o, h in self._prefixes if o is order), None)

    def _prefix(self, order: np.ndarray) -> "PrefixImpact | None":
        """The :class:`PrefixImpact` of ``order``, kept for the last two orders asked (an order is
        held with its counts, so its id is not reused while it is kept). Below
        :data:`PREFIX_BACKGROUND_MIN` rows it is built here; from there (1.8 s at 10M rows, as long
        as the rest of a knob change) the first request starts building it in a thread and gets
        None (the caller measures the subset directly, 0.2 s), later ones get it once it is done."""
        with self._prefix_lock:
            for o, holder in self._prefixes:
                if o is order:
                    return holder.get("pi")
            holder: dict = {}
            self._prefixes[:] = [*self._prefixes[-1:], (order, holder)]
        if self.n < PREFIX_BACKGROUND_MIN:
            holder["pi"] = PrefixImpact(self, order)
            return holder["pi"]

        def build():
            try:
                holder["pi"] = PrefixImpact(self, order)
            except Exception:  # noqa: BLE001 - the direct measure stays in use
                log.exception("building the running counts of a selection order failed")

        threading.Thread(target=build, daemon=True, name="prefix-impact").start()
        return None

    def expected_random(self, size: int, tvd_columns=()) -> dict:
        """{metric: (mean, sd)} of a uniformly random subset of ``size``, computed exactly where a
        formula exists: hypergeometric hit probabilities for coverage, the finite-population
        standard error for shares and score means. TVD (only for ``tvd_columns``) uses
        :data:`NOISE_SUBSETS` simulations."""
        n, b = self.n, int(size)
        fpc = np.sqrt(max(n - b, 0) / max(n - 1, 1))
        out = {}
        sizes = np.bincount(self.prototype, minlength=self.k)
        p_hit = _p_hit(n, sizes, b)
        for name, mask in (("cluster_coverage", sizes > 0), ("rare_cluster_coverage", self.rare & (sizes > 0))):
            if mask.any():
                p = p_hit[mask]
                out[name] = (float(p.mean()), float(np.sqrt((p * (1 - p)).sum()) / mask.sum()))
        for name, v in (("sparse_share", self.sparse), ("duplicate_rate", self.is_dup)):
            p = float(np.mean(v))
            out[name] = (p, float(np.sqrt(p * (1 - p) / max(b, 1)) * fpc))
        for a, v in self.scores.items():
            x = v[np.isfinite(v)]
            if len(x):
                out[f"{a}_score_mean"] = (float(x.mean()), float(x.std() / np.sqrt(max(b, 1)) * fpc))
        for lab in self.labels:
            p = f"label_{lab.name}"
            h = float(lab.holds_head.mean())
            out[f"{p}_head_share"] = (h, float(np.sqrt(h * (1 - h) / max(b, 1)) * fpc))
            ph = _p_hit(n, lab.sizes, b)
            for name, mask in ((f"{p}_class_coverage", lab.sizes > 0), (f"{p}_rare_class_coverage", lab.rare)):
                if mask.any():
                    q = ph[mask]
                    out[name] = (float(q.mean()), float(np.sqrt((q * (1 - q)).sum()) / mask.sum()))
        cols = [c for c in tvd_columns if c in self.cols]
        if cols:
            sims = [[tvd(self.cols[c][0][o[:b]], None, self.cols[c][1], pool_dist=self._pool_dist[c])
                     for o in self.noise_orders] for c in cols]
            for c, vals in zip(cols, sims):
                out[f"tvd_{c}"] = (float(np.mean(vals)), float(np.std(vals, ddof=1)))
        return out

    def density_matched(self, selected: np.ndarray) -> dict:
        """{"<axis>_score_mean": (mean, sd)} for the axes in :data:`DENSITY_MATCHED`: what rows of
        the same density as ``selected`` score (a random draw of the subset's count from each
        density decile of the pool). A subset of rare samples is compared with rare samples, so a
        warning means worse captions, not fewer close neighbours."""
        out = {}
        counts = np.bincount(self.density_bin[selected], minlength=DENSITY_BINS).astype(np.float64)
        sizes = np.bincount(self.density_bin, minlength=DENSITY_BINS).astype(np.float64)
        for axis in DENSITY_MATCHED:
            v = self.scores.get(axis)
            if v is None or not np.isfinite(v).any():
                continue
            ok = np.isfinite(v)
            tot = np.bincount(self.density_bin[ok], weights=v[ok], minlength=DENSITY_BINS)
            sq = np.bincount(self.density_bin[ok], weights=v[ok] ** 2, minlength=DENSITY_BINS)
            m = np.bincount(self.density_bin[ok], minlength=DENSITY_BINS).astype(np.float64)
            mu = tot / np.maximum(m, 1)
            var = np.maximum(sq / np.maximum(m, 1) - mu ** 2, 0)
            fpc = np.maximum(sizes - counts, 0) / np.maximum(sizes - 1, 1)
            b = counts.sum()
            out[f"{axis}_score_mean"] = (float((counts * mu).sum() / b), float(np.sqrt((counts * var * fpc).sum()) / b))
        return out

    def warnings(self, selected: np.ndarray, summary: dict | None = None, mode: str = "proportional",
                 strata_columns=(), subset: dict | None = None) -> list[str]:
        """Where the subset is worse than a random subset of its size beyond noise.

        For every metric with a better side (:func:`direction`), the subset is compared with the
        random expectation (:meth:`expected_random`; for consistency, rows of the subset's own
        density mix, :meth:`density_matched`): a warning when it is worse by more than
        :data:`NOISE_SIGMAS` standard deviations and by at least :data:`MIN_GAP`. TVD is checked
        for the chosen ``strata_columns`` in ``proportional`` mode only (balanced and tempered change
        the mix on purpose; unchosen columns shift with the tail picks by design). Strata
        (``summary["strata"]``) with fewer than :data:`MIN_STRATUM` selected samples get one warning
        that lists them. ``subset``: the subset's metrics when :meth:`compare` already computed
        them (its "subset" column). Returns one sentence per warning.
        """
        out = []
        size = len(selected)
        if size == 0:
            return out
        sub = subset if subset is not None else self.impact(selected)
        checked_tvd = list(strata_columns) if mode == "proportional" else []
        expected = self.expected_random(size, checked_tvd)
        expected.update(self.density_matched(selected))
        for m, v in sub.items():
            d = direction(m)
            if not d or m not in expected or not np.isfinite(v):
                continue
            mean, sd = expected[m]
            gap = max(NOISE_SIGMAS * sd, MIN_GAP)
            if (v < mean - gap) if d == "higher" else (v > mean + gap):
                out.append(f"{m} is {v:.4g} in the subset against {mean:.4g} +- {sd:.2g} for a random subset of "
                           f"the same size ({d} is better).")
        strata = (summary or {}).get("strata", [])
        small = [st for st in strata if st["selected"] < MIN_STRATUM] if len(strata) > 1 else []
        if small:
            shown = ", ".join(f"'{st['stratum']}' ({st['selected']} of {st['pool']})" for st in small[:5])
            out.append(f"{len(small)} of {len(strata)} strata have fewer than {MIN_STRATUM} samples in the subset: "
                       f"{shown}{' ...' if len(small) > 5 else ''}. Too few to learn from or to balance with: merge "
                       f"rare levels or drop a confounder column.")
        return out

    def coverage_curve(self, order: np.ndarray, seed: int, points: int = 50):
        """Cluster coverage (all and rare) against the budget, for the selection order and random.

        Returns a long DataFrame: budget, coverage, which ("selection" / "random"), metric.
        """
        import pandas as pd

        budgets = np.unique(np.linspace(1, self.n, points).astype(int))
        frames = []
        for name, ordr in (("selection", order), ("random", _cached_random(self, seed))):
            # an order's running counts, when built, hold the sorted first positions already (a
            # budget change at 10M rows recomputed them: 0.5 s of the page's rerun)
            pi = self._ready_prefix(ordr)
            if pi is not None:
                first, first_rare = pi.first, pi.first_rare
            else:
                f = _first_positions(self.prototype[ordr], self.k, len(ordr))
                first, first_rare = np.sort(f), np.sort(f[self.rare])
            b = np.minimum(budgets, len(ordr))  # a cluster absent from the order is never covered
            for metric, f, m in (("cluster_coverage", first, self.k),
                                 ("rare_cluster_coverage", first_rare, int(self.rare.sum()))):
                with np.errstate(invalid="ignore", divide="ignore"):
                    cov = np.searchsorted(f, b, side="left") / m
                frames.append(pd.DataFrame({"budget": budgets, "coverage": cov, "which": name, "metric": metric}))
        return pd.concat(frames, ignore_index=True)


class PrefixImpact:
    """:meth:`ImpactContext.impact` of every prefix of one order, from running counts: the first
    position of each cluster and label class in the order, running sums of the shares and scores,
    and the positions of each category of the compared columns. ``impact(b)`` equals
    ``ctx.impact(order[:b])`` (score means up to float rounding: running sums, not pairwise) in
    O(clusters + classes + categories). Built in a few passes over the order (about 0.5 s at 10M
    rows); int32 positions and counts."""

    def __init__(self, ctx: ImpactContext, order: np.ndarray):
        order = np.asarray(order, np.int64)
        L = self.length = len(order)
        idx = np.int32 if L < 2**31 - 1 else np.int64
        self.k = ctx.k
        first = _first_positions(ctx.prototype[order], ctx.k, L)
        self.first = np.sort(first)
        self.first_rare = np.sort(first[ctx.rare])
        self.sparse = _running(ctx.sparse[order], idx)
        self.dup = _running(ctx.is_dup[order], idx)
        self.scores = {}
        for a, v in ctx.scores.items():
            vo = np.asarray(v, np.float64)[order]
            fin = np.isfinite(vo)
            cnt = None if fin.all() else _running(fin, idx)
            self.scores[a] = (np.concatenate([[0.0], np.cumsum(np.where(fin, vo, 0.0))]), cnt)
        self.cols = {}
        for c, (codes, kc) in ctx.cols.items():
            co = codes[order]
            if kc < 2**15:  # numpy's stable sort of 16-bit integers is a radix sort: one pass
                co = co.astype(np.int16)
            srt = np.argsort(co, kind="stable")  # positions of each category, ascending within it
            cuts = np.r_[0, np.cumsum(np.bincount(co, minlength=kc))]
            self.cols[c] = (srt.astype(idx), cuts, kc, ctx._pool_dist[c])
        self.labels = []
        if ctx.labels:
            where = np.full(ctx.n, L, np.int64)
            where[order] = np.arange(L)
            for lab in ctx.labels:
                first = np.full(len(lab.names), L, np.int64)
                pos = where[lab.rows]
                o = np.argsort(pos, kind="stable")[::-1]  # the last write is the earliest position
                first[lab.classes[o]] = pos[o]
                self.labels.append((lab, np.sort(first), np.sort(first[lab.rare]), _running(lab.holds_head[order], idx)))

    def impact(self, b: int) -> dict:
        b = int(min(max(b, 0), self.length))
        nan = float("nan")
        out = {"size": b}
        out["cluster_coverage"] = float(np.searchsorted(self.first, b) / self.k)
        out["rare_cluster_coverage"] = float(np.searchsorted(self.first_rare, b) / len(self.first_rare)) \
            if len(self.first_rare) else nan
        out["sparse_share"] = float(self.sparse[b] / b) if b else nan
        out["duplicate_rate"] = float(self.dup[b] / b) if b else nan
        for a, (cs, cnt) in self.scores.items():
            m = b if cnt is None else int(cnt[b])
            out[f"{a}_score_mean"] = float(cs[b] / m) if m else nan
        for c, (srt, cuts, kc, q) in self.cols.items():
            if not b:
                out[f"tvd_{c}"] = nan
                continue
            counts = np.array([np.searchsorted(srt[cuts[j]:cuts[j + 1]], b) for j in range(kc)], np.float64)
            out[f"tvd_{c}"] = float(0.5 * np.abs(counts / b - q).sum())
        for lab, first, first_rare, head in self.labels:
            p = f"label_{lab.name}"
            out[f"{p}_head_share"] = float(head[b] / b) if b else nan
            out[f"{p}_class_coverage"] = float(np.searchsorted(first, b) / len(first)) if len(first) else nan
            out[f"{p}_rare_class_coverage"] = float(np.searchsorted(first_rare, b) / len(first_rare)) \
                if len(first_rare) else nan
        return out


def _first_positions(codes: np.ndarray, k: int, length: int) -> np.ndarray:
    """(k,) the first position of each code in ``codes`` (``length`` where it never occurs)."""
    first = np.full(k, length, np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # the last write is the first position
    return first


def _running(mask: np.ndarray, dtype) -> np.ndarray:
    """(len + 1,) running count of ``mask``: entry b counts mask[:b]."""
    out = np.zeros(len(mask) + 1, dtype)
    np.cumsum(mask, dtype=dtype, out=out[1:])
    return out


# ---------------------------------------------------------------------------------------------
# offline evaluation: a linear probe trained on the subset vs on random subsets of the same size
HELDOUT_VALUES = ("test", "val", "valid", "validation", "dev", "holdout", "heldout", "held-out")


def heldout_split(meta, split_column: str | None, case=None, seed: int = 0, frac: float = 0.2):
    """Boolean held-out mask.

    With ``split_column``: the rows whose value is one of :data:`HELDOUT_VALUES` as a whole value
    (case and surrounding spaces ignored: ``Test`` and ``val`` are held out, ``trainval`` is not).
    A column with no such value, or with nothing else, is refused: a silent fallback to a random
    split would report the wrong split. Without one: a seeded group split by case id (or by row)
    holding out ``frac``.
    """
    n = len(meta)
    if split_column:
        s = meta[split_column].astype(str).str.strip().str.lower()
        mask = s.isin(HELDOUT_VALUES).to_numpy() & meta[split_column].notna().to_numpy()
        values = sorted(meta[split_column].dropna().astype(str).unique().tolist())
        shown = ", ".join(values[:8]) + (" ..." if len(values) > 8 else "")
        if not mask.any():
            raise CurationError(f"split column {split_column!r} names no held-out set (its values: {shown}). "
                                f"Fix: mark held-out rows as one of {', '.join(HELDOUT_VALUES)}, pass another "
                                f"--split-column, or leave it out for a case-grouped random 20%.")
        if mask.all():
            raise CurationError(f"split column {split_column!r} holds out every row (its values: {shown}); "
                                f"nothing is left to select from. Fix: pass another --split-column.")
        return mask
    from sklearn.model_selection import GroupShuffleSplit

    groups = case if case is not None else np.arange(n)
    _, test = next(GroupShuffleSplit(n_splits=1, test_size=frac, random_state=seed).split(np.zeros(n), groups=groups))
    mask = np.zeros(n, bool)
    mask[test] = True
    return mask


def probe_scores(Z_train, y_train, Z_test, y_test, classes, rare) -> dict:
    """Macro AUC (one-vs-rest), balanced accuracy and recall on the rare classes of a logistic
    probe trained on (Z_train, y_train) and tested on (Z_test, y_test). A training set with a
    single class cannot train a probe: every score is NaN then (reported, not raised)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

    if len(np.unique(y_train)) < 2:
        return {"macro_auc": float("nan"), "balanced_accuracy": float("nan"), "rare_class_recall": float("nan")}
    clf = LogisticRegression(max_iter=500)
    clf.fit(Z_train, y_train)
    proba = np.zeros((len(Z_test), len(classes)))
    proba[:, clf.classes_] = clf.predict_proba(Z_test)
    pred = proba.argmax(axis=1)
    present = np.unique(y_test)
    try:
        auc = roc_auc_score(y_test, proba[:, present] / np.maximum(proba[:, present].sum(1, keepdims=True), 1e-12),
                            multi_class="ovr", average="macro", labels=present)
    except ValueError:
        auc = float("nan")
    rare_present = [c for c in rare if c in set(present)]
    rare_recall = float(recall_score(y_test, pred, labels=rare_present, average="macro", zero_division=0)) \
        if rare_present else float("nan")
    return {"macro_auc": float(auc), "balanced_accuracy": float(balanced_accuracy_score(y_test, pred)),
            "rare_class_recall": rare_recall}


def evaluate(inp: SelectionInputs, features: np.ndarray, label: str, cfg, *, split_column=None,
             n_random: int = 5, progress=None):
    """Curated subset vs ``n_random`` random subsets of the same size, by a linear probe on ``label``.

    The selection runs on the training rows only (held-out rows are filtered out of the pool), the
    budget is taken relative to the training rows, and every probe is scored on the same held-out
    rows. Rare classes: the classes holding the smallest 10% of training samples.

    Returns
    -------
    dict with "curated" (scores), "random" (list of scores), "summary" (DataFrame: metric, curated,
    random mean, random std, difference), "n_train", "n_test", "budget".
    """
    import pandas as pd
    from dataclasses import replace


    if label not in inp.meta.columns:
        raise CurationError(f"unknown label column {label!r}. Fix: use one of: {', '.join(inp.meta.columns)}.")

    values = inp.meta[label]
    labelled = values.notna().to_numpy()
    codes = np.full(len(values), -1, np.int64)  # -1: no label
    codes[labelled], labels = factorize_column(values[labelled])
    if len(labels) < 2:
        raise CurationError(f"label {label!r} has {len(labels)} class(es) among its {int(labelled.sum()):,} labelled "
                            f"rows; a probe needs at least two. Fix: choose another --label.")
    test = heldout_split(inp.meta, split_column, inp.case, seed=cfg.seed)
    train_rows = np.flatnonzero(~test)
    notes = []
    if not labelled.all():
        notes.append(f"{int((~labelled).sum()):,} rows without a {label} are left out of every probe "
                     f"(selected like any other row)")
    if any("|" in str(c) for c in labels):
        notes.append(f"{label} holds multi-label values (a|b): the probe is single-label, so each whole value is "
                     f"one class here (the impact table counts each label)")
    test = test & labelled
    if len(np.unique(codes[test])) < 2:
        raise CurationError(f"the held-out rows hold {len(np.unique(codes[test]))} class(es) of {label!r}; the "
                            f"scores need two. Fix: another --split-column, or more labelled rows.")
    for name, where in (("training", ~test & labelled), ("held-out", test)):
        missing = sorted(set(range(len(labels))) - set(np.unique(codes[where]).tolist()))
        if missing:
            notes.append(f"class(es) not in the {name} rows: " + ", ".join(labels[c] for c in missing[:8])
                         + (" ..." if len(missing) > 8 else ""))
    b = cfg.budget
    count = int(round(b * len(train_rows))) if b <= 1 and not (isinstance(b, int) and b == 1) else int(b)
    count = min(count, len(train_rows))
    marker = "__train__"
    meta = inp.meta.assign(**{marker: np.where(test, "heldout", "train")})
    inp_t = inp.with_meta(meta)
    cfg_t = replace(cfg, budget=count, filters=tuple(cfg.filters) + (Filter(marker, "==", "train"),))
    res = select(inp_t, cfg_t)

    train_l = train_rows[labelled[train_rows]]
    rare = np.flatnonzero(rare_clusters(np.bincount(codes[train_l], minlength=len(labels)))).tolist()
    Zte, yte = features[test], codes[test]

    def scores(rows):
        rows = rows[labelled[rows]]
        return probe_scores(features[rows], codes[rows], Zte, yte, labels, rare)

    curated = scores(np.asarray(res.selected))
    if np.isnan(curated["balanced_accuracy"]):
        notes.append("the curated subset holds one class: no probe could be trained on it")
    if progress:
        progress(1, n_random + 1)
    rnd = []
    for i in range(n_random):
        rows = np.random.default_rng(cfg.seed + EVAL_RANDOM_SUBSET_SEED_OFFSET + i).choice(train_rows, len(res.selected), replace=False)
        rnd.append(scores(rows))
        if progress:
            progress(i + 2, n_random + 1)
    r = pd.DataFrame(rnd)
    summary = pd.DataFrame({"metric": list(curated), "curated": list(curated.values()),
                            "random_mean": r.mean().to_numpy(), "random_std": r.std(ddof=1).to_numpy()})
    summary["difference"] = summary.curated - summary.random_mean
    return {"curated": curated, "random": rnd, "summary": summary, "n_train": int(len(train_rows)),
            "n_test": int(test.sum()), "budget": int(len(res.selected)),
            "rare_classes": [str(labels[c]) for c in rare], "notes": notes}
