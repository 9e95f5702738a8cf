"""Ingest and the full default analysis at growing pool sizes: time and peak memory per step.

    python bench/bench_scale.py --rows 250000,1000000 [--dim 512] [--dtype auto] [--dir /tmp/curation-scale]
    python bench/bench_scale.py --rows 50000 --shard-rows 12500 --backend local,ray --address HEAD:PORT

For each size: a Zipf-clustered pool (demo-like: site signature, shared image-text space) is generated
block by block into .npy inputs (never the whole matrix in memory; float16 inputs from 5M rows so 10M
fits on the disk), then `python -m curation ingest` and `python -m curation analyze` run as their own
processes under `/usr/bin/time -f %M` (the peak resident memory the issue measures). Per-step times
and peaks come from the run's record. Printed at the end: one line per size and step, and the ratios
peak(largest)/peak(smallest) and time(largest)/time(smallest).

With ``--backend local,ray`` the same dataset is analysed once per backend (``--force``), the per-step
times are printed side by side, and the default and a site-balanced selection are exported after each
run: the manifests' sha256 must match (printed). ``--address`` is a running Ray cluster (without it
Ray starts on this machine).

Inputs and datasets are kept under --dir (reused when the same size is asked again; --fresh rebuilds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _npy_writer(path: Path, n: int, d: int, dtype):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n, d)})
    f = open(path, "wb")
    f.write(buf.getvalue())
    return f


def generate(folder: Path, n: int, d: int, k: int, seed: int = 0) -> None:
    """Zipf cluster sizes (a=1.1), 4 sites with a signature direction, image and text sharing content."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation import demo

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = demo.cluster_sizes(n, k, 1.1, 15)
    cl = rng.permutation(np.repeat(np.arange(k), sizes)).astype(np.int32)
    centres = demo._unit(rng.standard_normal((k, d)).astype(np.float32))
    site_dirs = demo._unit(rng.standard_normal((4, d)).astype(np.float32))
    site = np.where(rng.random(n) < 0.7, cl % 4, rng.integers(0, 4, n)).astype(np.int8)
    dtype = np.float16 if n >= 5_000_000 else np.float32
    fi, ft = _npy_writer(folder / "image.npy", n, d, dtype), _npy_writer(folder / "text.npy", n, d, dtype)
    schema = pa.schema([("id", pa.string()), ("caption", pa.string()), ("site", pa.string()), ("sex", pa.string()),
                        ("age", pa.int16())])
    sites = np.array(["A", "B", "C", "D"])
    with pq.ParquetWriter(folder / "meta.parquet", schema) as w:
        step = 100_000
        for i in range(0, n, step):
            c = cl[i:i + step]
            m = len(c)
            content = centres[c] + 0.8 * rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d)
            img = demo._unit(content + 0.45 * site_dirs[site[i:i + step]]
                             + 0.3 * rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d))
            txt = demo._unit(content + 0.3 * rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d))
            fi.write(img.astype(dtype).tobytes())
            ft.write(txt.astype(dtype).tobytes())
            w.write_table(pa.table({"id": [f"s{j:09d}" for j in range(i, i + m)],
                                    "caption": [f"finding {x} of group {x % 97}" for x in c],
                                    "site": sites[site[i:i + step]], "sex": rng.choice(["F", "M"], m),
                                    "age": rng.integers(18, 91, m).astype(np.int16)}, schema=schema))
    fi.close()
    ft.close()


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak GB by /usr/bin/time %M, stdout tail) of one process."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M", *cmd], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    secs = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    kb = int(next(line for line in p.stderr.splitlines()[::-1] if line.startswith("PEAK_KB")).split()[1])
    return secs, kb / 2**20, p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""


def run_size(n: int, args) -> dict:
    from curation import store

    folder = Path(args.dir) / f"n{n}-d{args.dim}"
    if args.fresh or not (folder / "meta.parquet").exists():
        t = time.perf_counter()
        generate(folder, n, args.dim, k=max(20, int(np.sqrt(n) / 2)))
        print(f"[{n:,}] generated inputs in {time.perf_counter() - t:.0f} s", flush=True)
    db = folder / "pool.duckdb"
    py = sys.executable
    stages = set(args.stages.split(","))
    shards = ["--vector-layout", "shards", "--shard-rows", str(args.shard_rows)] if args.shard_rows else []
    out = {"n": n, "ingest_s": float("nan"), "ingest_gb": float("nan"), "backends": {}}
    if "ingest" in stages:
        if not (folder / "image.npy").exists():
            sys.exit(f"{folder}: the inputs were removed (--drop-inputs); rerun with --fresh to make them again")
        ingest_s, ingest_gb, _ = timed([py, "-m", "curation", "ingest", str(db), "--metadata",
                                        str(folder / "meta.parquet"), "--image-emb", str(folder / "image.npy"),
                                        "--text-emb", str(folder / "text.npy"), "--shared-space", "--vector-dtype",
                                        args.dtype, "--replace", *shards])
        print(f"[{n:,}] ingest {ingest_s:.0f} s, peak {ingest_gb:.2f} GB", flush=True)
        out.update(ingest_s=ingest_s, ingest_gb=ingest_gb)
        if args.drop_inputs:  # 10M x 1024 float16 inputs are 20 GB beside the 20 GB of shards
            for name in ("image.npy", "text.npy"):
                (folder / name).unlink()
    if "analyze" not in stages:
        return out
    for backend in args.backend.split(","):
        extra = ["--backend", backend] + (["--address", args.address] if backend == "ray" and args.address else [])
        # --resume: no --force, so an interrupted analysis goes on from the step and block it reached
        an_s, an_gb, _ = timed([py, "-m", "curation", "analyze", str(db), *([] if args.resume else ["--force"]),
                                *extra])
        print(f"[{n:,}] analyze ({backend}) {an_s:.0f} s, peak {an_gb:.2f} GB (driver)", flush=True)
        with store.open_store(db) as s:
            rec = s.runs("analysis").iloc[-1]
            timings, outputs = json.loads(rec["timings"]), json.loads(rec["outputs"])
            out["vectors"] = s.meta.get("vectors", {}).get("dtype", "inline float32")
            out["shards"] = len(s.meta.get("vectors", {}).get("files", [])) // 2
        shas = []
        for name, sel in (("default", []), ("balanced", ["--confounders", "site", "--mode", "balanced"])):
            m = folder / f"manifest-{backend}-{name}.parquet"
            timed([py, "-m", "curation", "select", str(db), "--budget", "0.3", *sel, "--out", str(m), "--overwrite"])
            shas.append(hashlib.sha256(m.read_bytes()).hexdigest())
        out["backends"][backend] = {"analyze_s": an_s, "analyze_gb": an_gb, "steps": timings,
                                    "peaks": outputs.get("peak_rss_gb", {}), "workers": outputs.get("backend", {}),
                                    "manifests": shas}
    first = next(iter(out["backends"].values()))
    out.update(analyze_s=first["analyze_s"], analyze_gb=first["analyze_gb"], steps=first["steps"], peaks=first["peaks"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="250000,1000000", help="pool sizes, comma-separated")
    ap.add_argument("--dim", type=int, default=512, help="dimension of each of image and text")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float16", "float32"), help="ingest --vector-dtype")
    ap.add_argument("--dir", default="/tmp/curation-scale")
    ap.add_argument("--fresh", action="store_true", help="regenerate the inputs")
    ap.add_argument("--backend", default="local", help="analysis backends, comma-separated: local, ray")
    ap.add_argument("--address", help="with ray: a running cluster's HEAD:PORT (default: Ray started here)")
    ap.add_argument("--shard-rows", type=int, help="ingest --shard-rows (with --vector-layout shards)")
    ap.add_argument("--stages", default="ingest,analyze", help="ingest, analyze or both (analyze reuses the dataset)")
    ap.add_argument("--drop-inputs", action="store_true", help="remove the .npy inputs after ingest (disk at 10M)")
    ap.add_argument("--resume", action="store_true", help="analyze without --force: resume an interrupted run")
    args = ap.parse_args()
    sizes = [int(float(x)) for x in args.rows.split(",")]
    res = [run_size(n, args) for n in sizes]
    if "analyze" not in args.stages.split(","):
        for r in res:
            print(f"{r['n']:>10,} rows: ingest {r['ingest_s']:.0f} s, peak {r['ingest_gb']:.2f} GB")
        return
    print("\nrows        vectors   ingest s  ingest GB  analyze s  analyze GB   per step (s, peak GB after it)")
    for r in res:
        steps = ", ".join(f"{k} {v:.0f} s/{r['peaks'].get(k, float('nan')):.2f}" for k, v in r["steps"].items()
                          if k not in ("total",) and isinstance(v, (int, float)))
        print(f"{r['n']:>10,}  {r['vectors']:>8}  {r['ingest_s']:>8.0f}  {r['ingest_gb']:>9.2f}  {r['analyze_s']:>9.0f}  "
              f"{r['analyze_gb']:>10.2f}   {steps}")
    backends = list(res[0]["backends"])
    if len(backends) > 1:
        print("\nper step, seconds: " + " vs ".join(backends))
        for r in res:
            b = r["backends"]
            steps = [k for k in b[backends[0]]["steps"] if isinstance(b[backends[0]]["steps"][k], (int, float))]
            print(f"{r['n']:>10,} rows, {r['shards']} shards: " + ", ".join(
                f"{k} " + " / ".join(f"{b[x]['steps'].get(k, float('nan')):.1f}" for x in backends) for k in steps))
            print(f"{'':>10}  workers: " + ", ".join(f"{x} {b[x]['workers']}" for x in backends))
            same = all(b[x]["manifests"] == b[backends[0]]["manifests"] for x in backends)
            print(f"{'':>10}  manifests (default, site-balanced) byte-identical across backends: {'yes' if same else 'NO'}")
    if len(res) > 1:
        a, b = res[0], res[-1]
        print(f"\npeak({b['n']:,}) / peak({a['n']:,}): ingest {b['ingest_gb'] / a['ingest_gb']:.2f}x, "
              f"analyze {b['analyze_gb'] / a['analyze_gb']:.2f}x (target <= 1.5x)")
        print(f"time({b['n']:,}) / time({a['n']:,}): ingest {b['ingest_s'] / a['ingest_s']:.2f}x, "
              f"analyze {b['analyze_s'] / a['analyze_s']:.2f}x (rows {b['n'] / a['n']:.0f}x)")


if __name__ == "__main__":
    main()
