"""Farthest-point order of large clusters: exact (every dimension) against the random projection
that :func:`curation.prototypes.fps_cluster` uses above ``FPS_FULL_MAX`` members, and against a
random order, on the largest prototype clusters of an analysed dataset (``--around SIZE``: the
clusters whose core is nearest that size, such as the 1,024-4,096 range the projection took over).

    python bench/bench_fps.py DATASET.duckdb [--clusters 3] [--picks 250,1000,2000] [--around SIZE]

Printed per cluster and number of picks m: the covering radius (the largest cosine distance from a
member to its nearest pick among the first m, in the full space: what FPS minimises) and the mean
of that distance, for each order, with the time each order took.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def coverage(V: np.ndarray, order: np.ndarray, m: int) -> tuple[float, float]:
    """(max, mean) over rows of V of the cosine distance to the nearest of the first m picks."""
    sims = np.full(len(V), -np.inf, np.float32)
    picks = order[:m]
    for a in range(0, m, 512):
        np.maximum(sims, (V @ V[picks[a:a + 512]].T).max(axis=1), out=sims)
    d = 1.0 - sims
    return float(d.max()), float(d.mean())


def main() -> None:
    from curation import analysis, prototypes as P, store
    from curation.runs import latest
    from curation.vector_io import Features

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("db")
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--picks", default="250,1000,2000")
    ap.add_argument("--around", type=int, help="clusters whose core size is nearest this (default: the largest)")
    args = ap.parse_args()
    picks = [int(x) for x in args.picks.split(",")]
    with store.open_store(args.db) as s:
        run = latest(s)
        t = s.read_table(analysis.table_names(run.run_id)["samples"], ["prototype", "proto_dist", "band"])
        src = s.vector_source()
        X = Features(src, ["image", "text"])
        assign = t["prototype"].to_numpy()
        core = t["band"].to_numpy() == P.BAND_CORE
        sizes = np.bincount(assign[core])
        print(f"{args.db}: {len(assign):,} rows; FPS_FULL_MAX {P.FPS_FULL_MAX}, projection {P.FPS_PROJ_DIMS} dims")
        print(f"{'cluster':>8} {'core':>6} {'m':>5}  {'exact max/mean':>16}  {'projected max/mean':>19}  "
              f"{'random max/mean':>16}")
        pick = np.argsort(-sizes) if args.around is None else np.argsort(np.abs(sizes - args.around), kind="stable")
        for c in pick[:args.clusters]:
            rows = np.flatnonzero((assign == c) & core)
            V = X[rows]
            start = int(np.argmin(t["proto_dist"].to_numpy()[rows]))
            t0 = time.perf_counter()
            picks_c = [m for m in picks if m <= len(rows)]
            exact = P.fps_order(V, start, max(picks))
            t1 = time.perf_counter()
            Pv = P.project_for_fps(V)
            proj = P.fps_order(Pv, start, max(picks), sq_norms=np.einsum("ij,ij->i", Pv, Pv))
            t2 = time.perf_counter()
            rnd = np.random.default_rng(0).permutation(len(rows))
            for m in picks_c:
                e, p, r = coverage(V, exact, m), coverage(V, proj, m), coverage(V, rnd, m)
                print(f"{c:>8} {len(rows):>6} {m:>5}  {e[0]:.3f} / {e[1]:.3f}    {p[0]:.3f} / {p[1]:.3f}       "
                      f"{r[0]:.3f} / {r[1]:.3f}")
            print(f"{'':>8} time: exact {t1 - t0:.2f} s, projected {t2 - t1:.2f} s ({(t1 - t0) / (t2 - t1):.1f}x)")
        src.close()


if __name__ == "__main__":
    main()
