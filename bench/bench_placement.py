"""The map's placement of the rows UMAP was not fitted on: exact search of the fitted rows against the
HNSW graph the map step uses above ``projection.PLACE_EXACT_MAX`` placed rows.

    python bench/bench_placement.py DATASET.duckdb [--queries 100000]

On an analysed dataset (the map step ran: its fitted rows and their 2-D positions are read from the
run), the fitted rows' PCA projection is recomputed as the map step computes it, and ``--queries``
rows it did not fit are placed both ways (``projection.place_index`` exact and approximate, then
``projection.interpolate``). Printed: the index build and search seconds, recall@10 of the graph
against the exact neighbours, how often the nearest neighbour is the same, and the displacement of
the placed rows from their exact-search positions as a fraction of the map's extent (mean, p99,
max), with the speed-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import faiss

    from curation import analysis, projection, store
    from curation.runs import latest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db")
    ap.add_argument("--queries", type=int, default=100_000)
    a = ap.parse_args()
    with store.open_store(a.db) as s:
        rec = latest(s, needs=("map",))
        if rec is None:
            sys.exit(f"{a.db}: no analysis run with a map. Fix: python -m curation analyze {a.db}")
        frame, _ = analysis.load(s, rec.run_id, columns=["map_x", "map_y", "map_fitted"])
        F, _ = analysis.features(s)
        cfg = analysis.AnalysisConfig.from_dict(rec.config)
        fitted = frame["map_fitted"].to_numpy(bool)
        fit_rows = np.flatnonzero(fitted)
        rest = np.flatnonzero(~fitted)
        if not len(rest):
            sys.exit(f"{a.db}: every row was fitted (pool at most map_fit_max); nothing is placed")
        rng = np.random.default_rng(0)
        q_rows = np.sort(rng.choice(rest, min(a.queries, len(rest)), replace=False))
        t = time.perf_counter()
        mean, comp, _ = projection.pca_basis(F, cfg.map_pca_dims, seed=cfg.seed)
        Z_fit = ((F[fit_rows] - mean) @ comp.T).astype(np.float32)
        Z_q = ((F[q_rows] - mean) @ comp.T).astype(np.float32)
        print(f"{a.db}: {len(F):,} rows, {len(fit_rows):,} fitted; projected {len(q_rows):,} queries in "
              f"{time.perf_counter() - t:.1f} s")
        F.source.close()
    xy_fit = frame[["map_x", "map_y"]].to_numpy(np.float32)[fit_rows]
    extent = float(np.ptp(xy_fit, axis=0).max())
    U = projection._unit(Z_q)
    out = {}
    for name, approx in (("exact", False), ("graph", True)):
        t = time.perf_counter()
        index = faiss.deserialize_index(projection.place_index(Z_fit, approximate=approx))
        build = time.perf_counter() - t
        t = time.perf_counter()
        _, nbr = index.search(U, 10)
        search = time.perf_counter() - t
        xy = projection.interpolate(None, xy_fit, Z_q, index=index)
        out[name] = (nbr, xy, build, search)
        print(f"  {name:5s}: index {build:.2f} s, search {search:.2f} s")
    (e_nbr, e_xy, _, e_s), (g_nbr, g_xy, g_b, g_s) = out["exact"], out["graph"]
    recall = np.mean([len(np.intersect1d(x, y)) / 10 for x, y in zip(g_nbr, e_nbr)])
    disp = np.linalg.norm(g_xy - e_xy, axis=1) / extent
    print(f"  graph vs exact: recall@10 {recall:.4f}, same nearest {np.mean(g_nbr[:, 0] == e_nbr[:, 0]):.4f}, "
          f"displacement / extent mean {disp.mean():.5f}, p99 {np.quantile(disp, 0.99):.4f}, "
          f"max {disp.max():.3f}; search {e_s / g_s:.1f}x faster ({e_s / (g_s + g_b):.1f}x with the build)")


if __name__ == "__main__":
    main()
