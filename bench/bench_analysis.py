"""Full analysis (joint space over 512-d image + 512-d text) at 100k or 1M rows, step by step,
against the obvious alternatives in the same run.

    python bench/bench_analysis.py [--rows 100000] [--skip-alternatives]

Phases run in separate processes so each peak memory (ru_maxrss) is its own:
- ``analyze``: curation's full default analysis (the numba compile of UMAP included);
- ``exact_knn``: faiss IndexFlatIP (exact, brute force) for a query sample, its time scaled to
  all N queries, and the recall@10 that curation's IVF-style search reaches against it;
- ``umap``: plain umap-learn on all points of a ``--umap-rows`` sample against curation's map
  (fit on ``map_fit_max`` + kNN interpolation) at the same size;
- ``hdbscan``: scikit-learn's HDBSCAN against the hdbscan package on the same 2-D layout.
Targets (issue 15): 100k in < 45 s, 1M in < 12 min with peak memory < 8 GB, the peak's step named.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def make_dataset(db: Path, n: int, k: int, d: int = 512, seed: int = 0) -> None:
    """Demo-like clustered pool (Zipf cluster sizes, site signature, shared image-text space)
    generated in chunks, so 1M x (512 + 512) fits in a few GB (demo.generate keeps more arrays)."""
    import pyarrow as pa

    from curation import demo, store

    rng = np.random.default_rng(seed)
    sizes = demo.cluster_sizes(n, k, 1.1, 15)
    cl = rng.permutation(np.repeat(np.arange(k), sizes))
    centres = demo._unit(rng.standard_normal((k, d)))
    site_dirs = demo._unit(rng.standard_normal((4, d)))
    site = np.where(rng.random(n) < 0.7, cl % 4, rng.integers(0, 4, n))
    img = np.empty((n, d), np.float32)
    txt = np.empty((n, d), np.float32)
    step = 100_000
    for i in range(0, n, step):
        c = cl[i:i + step]
        content = centres[c] + 0.8 * rng.standard_normal((len(c), d), dtype=np.float32) / np.sqrt(d)
        img[i:i + step] = demo._unit(content + 0.45 * site_dirs[site[i:i + step]]
                                     + 0.3 * rng.standard_normal((len(c), d), dtype=np.float32) / np.sqrt(d))
        txt[i:i + step] = demo._unit(content + 0.3 * rng.standard_normal((len(c), d), dtype=np.float32) / np.sqrt(d))
    samples = pa.table({"id": [f"s{i:08d}" for i in range(n)],
                        "caption": [f"finding {c}" for c in cl],
                        "site": np.array(demo.SITES)[site], "sex": rng.choice(["F", "M"], n),
                        "age": rng.integers(18, 91, n)})
    store.create_dataset(db, samples, {"image": img, "text": txt}, meta={"shared_space": True})


def phase(name: str, db: Path, args) -> dict:
    from curation import analysis, runs, store

    if name == "make":
        k = max(40, int(np.sqrt(args.rows) / 2))
        t = time.perf_counter()
        make_dataset(db, args.rows, k)
        return {"seconds": time.perf_counter() - t, "peak_gb": peak_gb(), "true_clusters": k}
    if name == "analyze":
        t = time.perf_counter()
        run = analysis.analyze(db, analysis.AnalysisConfig())
        total = time.perf_counter() - t
        with store.open_store(db) as s:
            table = s.runs("analysis").set_index("run_id")
            timings = json.loads(table.loc[run, "timings"])
            peaks = json.loads(table.loc[run, "outputs"]).get("peak_rss_gb", {})
        timings = {k: v for k, v in timings.items() if isinstance(v, float)}
        return {"seconds": total, "steps": timings, "peak_gb": peak_gb(), "run": run, "peaks": peaks}
    with store.open_store(db) as s:
        F, _ = analysis.features(s)
        X = np.asarray(F)  # the benchmarks compare against whole-matrix methods
        F.source.close()
        if name != "umap":
            df, _ = analysis.load(s)
            pt = analysis.load_table(s, runs.latest_run(s), "prototypes")
    if name == "exact_knn":
        from curation import density, prototypes
        q = np.random.default_rng(0).choice(len(X), args.queries, replace=False)
        t = time.perf_counter()
        exact, _ = density.exact_knn(X, 10, q)
        exact_s = (time.perf_counter() - t) * len(X) / len(q)
        cent = analysis.centroids_of(pt)
        out = {"exact_all_seconds_est": exact_s, "recall": {}}
        for p in (int(x) for x in args.probes.split(",")):
            t = time.perf_counter()
            nbr, _ = density.knn_within_clusters(X, df.prototype.to_numpy(),
                                                 prototypes.nearest_prototypes(X, cent, p), k=10)
            out["recall"][p] = (density.recall_at_k(nbr[q], exact), time.perf_counter() - t)
        return out
    if name == "umap":
        import umap

        from curation import projection
        m = min(args.umap_rows, len(X))
        rows = np.sort(np.random.default_rng(0).choice(len(X), m, replace=False))
        Xs = np.ascontiguousarray(X[rows])
        # compile numba once, outside both timings: 6,000 points take the NN-descent path that
        # larger fits use (below 4,096 umap searches neighbours exactly)
        projection.umap_map(Xs[:6000], fit_max=6000)
        t = time.perf_counter()
        projection.umap_map(Xs, fit_max=20_000)
        ours = time.perf_counter() - t
        Z = projection.pca_reduce(Xs, 50)
        t = time.perf_counter()
        umap.UMAP(n_components=2, metric="cosine", random_state=0, n_jobs=1).fit_transform(Z)
        plain = time.perf_counter() - t
        return {"rows": m, "ours": ours, "plain": plain}
    if name == "hdbscan":
        import hdbscan
        from sklearn.cluster import HDBSCAN
        m = min(args.hdbscan_rows, len(df))
        xy = df[["map_x", "map_y"]].to_numpy()[:m].astype(np.float64)
        mcs = max(10, m // 1000)
        t = time.perf_counter()
        hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=10, core_dist_n_jobs=2).fit(xy)
        pkg = time.perf_counter() - t
        t = time.perf_counter()
        HDBSCAN(min_cluster_size=mcs, min_samples=10, n_jobs=2).fit(xy)
        skl = time.perf_counter() - t
        return {"rows": m, "hdbscan_pkg": pkg, "sklearn": skl}
    raise ValueError(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--umap-rows", type=int, default=50_000)
    ap.add_argument("--hdbscan-rows", type=int, default=100_000)
    ap.add_argument("--probes", default="1,2,4,8", help="probe counts whose recall is measured")
    ap.add_argument("--skip-alternatives", action="store_true")
    ap.add_argument("--only", help="run only these phases after making the data, e.g. umap")
    ap.add_argument("--phase")
    ap.add_argument("--db")
    a = ap.parse_args()
    if a.phase:
        print(json.dumps(phase(a.phase, Path(a.db), a)))
        return
    phases = ["make", "analyze"] + ([] if a.skip_alternatives else ["exact_knn", "umap", "hdbscan"])
    if a.only:
        phases = ["make"] + [p for p in a.only.split(",") if p]
    res = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        db = Path(tmp) / "bench.duckdb"
        for name in phases:
            p = subprocess.run([sys.executable, __file__, "--phase", name, "--db", str(db), *sys.argv[1:]],
                               capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"phase {name} failed:\n{p.stderr[-3000:]}")
            res[name] = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"[{name} done]", flush=True)
    an = res.get("analyze")
    if an is None:
        an = {"steps": {}, "seconds": float("nan"), "peak_gb": float("nan")}
    print(f"\nfull analysis of {a.rows:,} x (512 + 512), joint space, 2 cores "
          f"(synthetic clustered data, {res['make']['true_clusters']} planted clusters)")
    peaks = an.get("peaks", {})
    print(f"{'step':<14}{'seconds':>9}{'peak GB so far':>16}")
    from curation.analysis import STEPS

    order = ["load", *STEPS, "total"]
    for k, v in sorted(an["steps"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        if k == "total":
            continue
        pk = peaks.get(k)
        print(f"{k:<14}{v:>9.1f}{pk if pk is not None else float('nan'):>16.2f}")
    target = 45 if a.rows <= 100_000 else 720
    print(f"{'TOTAL':<14}{an['seconds']:>9.1f}   (target < {target} s)   peak memory {an['peak_gb']:.2f} GB "
          f"(target < 8 GB)")
    from curation.analysis import peak_step

    top = peak_step(peaks)
    if top:
        print(f"the peak is set during the '{top[0]}' step ({top[1]:.2f} GB after it)")
    if "exact_knn" in res:
        e = res["exact_knn"]
        print(f"\nkNN (k=10): exact faiss flat over all {a.rows:,} queries ~ {e['exact_all_seconds_est']:.0f} s "
              f"(measured on {a.queries} queries)")
        for p, (rec, secs) in e["recall"].items():
            print(f"  curation, {p} probe(s): {secs:6.1f} s, recall@10 {rec:.3f}, "
                  f"{e['exact_all_seconds_est'] / secs:5.1f}x faster than exact")
    if "umap" in res:
        u = res["umap"]
        print(f"\nmap of {u['rows']:,} points: curation {u['ours']:.1f} s vs plain umap-learn {u['plain']:.1f} s "
              f"({u['plain'] / u['ours']:.1f}x)")
    if "hdbscan" in res:
        h = res["hdbscan"]
        print(f"HDBSCAN on {h['rows']:,} 2-D points: hdbscan package {h['hdbscan_pkg']:.1f} s vs "
              f"scikit-learn {h['sklearn']:.1f} s ({h['sklearn'] / h['hdbscan_pkg']:.1f}x)")


if __name__ == "__main__":
    main()
