"""Recall of an analysed dataset's stored kNN graphs against exact search, at any size.

    python bench/bench_knn_recall.py DATASET.duckdb [--queries 1000] [--seed 0]

For a seeded sample of query rows, the exact top-k (cosine, every row of the pool, self excluded)
is found by streaming the dataset's vectors block by block (faiss flat search per block, merged),
so it runs at 10M rows in bounded memory. Printed for the density graph (analysis space) and the
duplicate graph (image space): recall@k of the stored neighbours, the Spearman correlation of the
stored kNN density with the exact one (what the long-tail score ranks by), and how many exact
near-duplicates (cosine > 0.95) the stored graph holds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def exact_topk(F, q: np.ndarray, k: int, step: int = 1 << 17):
    """(nbr (m, k), sim (m, k)) exact top-k of rows ``F[q]`` over all rows of F, self excluded."""
    import faiss

    Q = np.ascontiguousarray(F[q], dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for a in range(0, len(F), step):
        block = np.ascontiguousarray(F[a:min(len(F), a + step)], dtype=np.float32)
        s, i = faiss.knn(Q, block, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        i = np.where(i >= 0, i + a, -1)
        s = np.where(i == q[:, None], -np.inf, s)
        all_s, all_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    return best_i, best_s


def main() -> None:
    from scipy.stats import spearmanr

    from curation import analysis, density, store
    from curation.analysis_steps import dedup_kind
    from curation.runs import best_analysis

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with store.open_store(args.db) as s:
        rec = best_analysis(s)
        F, slices = analysis.features(s)
        n = len(F)
        q = np.sort(np.random.default_rng(args.seed).choice(n, min(args.queries, n), replace=False))
        graphs = {"density (analysis space)": (F, "knn", 1.0)}
        kind = dedup_kind(slices)
        if s.has_table(analysis.table_names(rec.run_id)["dedup_knn"]):
            graphs[f"duplicates ({kind} space)"] = (F.half(kind), "dedup_knn", 2.0 if len(slices) == 2 else 1.0)
        print(f"{args.db}: {n:,} rows, run {rec.run_id}, {len(q):,} query rows")
        for name, (X, table, scale) in graphs.items():
            nbr, sim = analysis.load_knn(s, rec.run_id, table)
            k = nbr.shape[1]
            t = time.perf_counter()
            ex_i, ex_s = exact_topk(X, q, k)
            ex_s = ex_s * scale
            secs = time.perf_counter() - t
            rec_k = density.recall_at_k(nbr[q], ex_i)
            rho = spearmanr(density.knn_density(sim[q]), density.knn_density(ex_s)).statistic
            near = ex_s > 0.95
            found = sum(len(np.intersect1d(ex_i[j][near[j]], nbr[q[j]])) for j in range(len(q)))
            print(f"  {name}: recall@{k} {rec_k:.3f}, density Spearman {rho:.3f}, near-duplicates "
                  f"(cos > 0.95) found {found}/{int(near.sum())} (exact search {secs:.0f} s)")
        F.source.close()


if __name__ == "__main__":
    main()
