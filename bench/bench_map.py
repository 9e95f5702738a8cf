"""The map step against plain umap-learn, each in a fresh process (as an `analyze` run is).

    python bench/bench_map.py [--rows 30000] [--fit 20000] [--dim 256]

Both sides get the same PCA-50 features of a clustered pool. "plain" fits ``umap.UMAP`` (its own
NN-descent graph, default epochs) on the same ``--fit`` sample; "map step" is
``curation.projection.umap_map`` on all rows (precomputed kNN within prototype clusters, epochs
sized to the sample, numba's cache under ~/.cache/curation/numba, the rest placed by kNN). Each
runs twice in new processes: the first pays for any compile not cached yet, the second shows a
warm cache. Prints seconds and the ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

PLAIN = """
import sys, time, numpy as np
t0 = time.perf_counter()
import umap
Z = np.load(sys.argv[1]); rows = np.load(sys.argv[2])
umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, metric="cosine", random_state=0, n_jobs=1).fit(Z[rows])
print(time.perf_counter() - t0)
"""

OURS = """
import sys, time, numpy as np
sys.path.insert(0, sys.argv[4])
t0 = time.perf_counter()
from curation.projection import umap_map
X = np.load(sys.argv[1]); assign = np.load(sys.argv[3])
umap_map(X, fit_max=int(sys.argv[5]), assign=assign)
print(time.perf_counter() - t0)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=30_000)
    ap.add_argument("--fit", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=256)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from curation.projection import pca_reduce
    from curation.prototypes import default_k, fit_prototypes
    from curation.spaces import normalize

    rng = np.random.default_rng(0)
    k = 60
    centres = rng.standard_normal((k, a.dim))
    sizes = np.maximum(5, (a.rows * (np.arange(1, k + 1) ** -1.0) / (np.arange(1, k + 1) ** -1.0).sum()).astype(int))
    lab = np.repeat(np.arange(k), sizes)[: a.rows]
    lab = np.concatenate([lab, rng.integers(0, k, a.rows - len(lab))])
    X = normalize((centres[lab] + 0.6 * rng.standard_normal((a.rows, a.dim))).astype(np.float32))
    assign = fit_prototypes(X, default_k(a.rows), seed=0).assign
    Z = pca_reduce(X, 50, seed=0)
    rows = np.sort(np.random.default_rng(0).choice(a.rows, min(a.fit, a.rows), replace=False))
    with tempfile.TemporaryDirectory() as d:
        paths = [str(Path(d) / f) for f in ("X.npy", "Z.npy", "rows.npy", "assign.npy")]
        for p, arr in zip(paths, (X, Z, rows, assign)):
            np.save(p, arr)

        def run(code, *args):
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            return float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t

        print(f"{a.rows:,} rows x {a.dim} (UMAP fitted on {len(rows):,}), each in a fresh process")
        res = {}
        for attempt in (1, 2):
            res[("plain", attempt)] = run(PLAIN, paths[1], paths[2])
            res[("ours", attempt)] = run(OURS, paths[0], paths[2], paths[3], str(ROOT), str(a.fit))
        print(f"{'':<34}{'run 1':>10}{'run 2':>10}   (seconds inside the process; process wall in brackets)")
        for name, label in (("plain", f"plain umap-learn fit of {len(rows):,}"),
                            ("ours", f"map step, all {a.rows:,} rows")):
            r1, r2 = res[(name, 1)], res[(name, 2)]
            print(f"{label:<34}{r1[0]:>10.1f}{r2[0]:>10.1f}   [{r1[1]:.1f}, {r2[1]:.1f}]")
        ratio = res[("ours", 2)][0] / res[("plain", 2)][0]
        print(f"ratio map step / plain umap-learn (run 2): {ratio:.2f}  (target <= 0.5)")


if __name__ == "__main__":
    main()
