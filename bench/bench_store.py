"""Ingest and read-back of 1M x 512 image + 1M x 512 text embeddings with metadata.

    python bench/bench_store.py [--rows 1000000] [--dim 512]

Each phase runs in its own process so its peak memory (ru_maxrss) is its own. Compared, in the
same run, against the other obvious layout (one BLOB of float32 per vector, which DuckDB moves to
Arrow as one contiguous buffer too) and against plain .npy loading (the floor).
Targets (DESIGN section 7): ingest < 60 s, read-back < 10 s on 2 cores.
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


def make_inputs(folder: Path, n: int, d: int) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    for kind in ("image", "text"):
        v = rng.standard_normal((n, d), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        np.save(folder / f"{kind}.npy", v)
    pd.DataFrame({
        "id": [f"s{i:08d}" for i in range(n)], "image": [f"img/{i % 1000}/{i}.png" for i in range(n)],
        "caption": [f"chest radiograph {i % 977}, finding {i % 31}" for i in range(n)],
        "site": rng.choice(["A", "B", "C", "D"], n), "sex": rng.choice(["F", "M"], n),
        "age": rng.integers(18, 90, n), "split": rng.choice(["train", "val", "test"], n),
    }).to_parquet(folder / "meta.parquet")


def phase(name: str, folder: Path) -> dict:
    t = time.perf_counter()
    if name == "ingest":
        from curation import ingest
        inp = ingest.read_metadata_npy(folder / "meta.parquet", folder / "image.npy", folder / "text.npy")
        ingest.ingest(folder / "curation.duckdb", inp, replace=True)
    elif name == "read":
        from curation import store
        with store.open_store(folder / "curation.duckdb") as s:
            v = s.vectors()
            assert v["image"].shape[0] == s.n_rows
    elif name == "ingest_blob":  # the alternative: one BLOB per vector
        import duckdb
        import pyarrow as pa
        import pyarrow.parquet as pq
        meta = pq.read_table(folder / "meta.parquet")
        cols = {"row_idx": np.arange(meta.num_rows), "id": meta.column("id")}
        for kind in ("image", "text"):
            v = np.load(folder / f"{kind}.npy", mmap_mode="r")
            cols[f"{kind}_emb"] = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(v.shape[1] * 4), len(v), [None, pa.py_buffer(v)])
        p = folder / "blob.duckdb"
        p.unlink(missing_ok=True)
        con = duckdb.connect(str(p))
        con.register("m", meta)
        con.execute("CREATE TABLE samples AS SELECT * FROM m")
        con.register("e", pa.table(cols))
        con.execute("CREATE TABLE embeddings AS SELECT * FROM e")
        con.close()
    elif name == "read_blob":
        import duckdb
        con = duckdb.connect(str(folder / "blob.duckdb"), read_only=True)
        n = con.execute("SELECT count(*) FROM embeddings").fetchall()[0][0]
        out = {k: np.empty((n, 512), np.float32) for k in ("image_emb", "text_emb")}
        pos = 0
        for b in con.sql("SELECT image_emb, text_emb FROM embeddings").to_arrow_reader(1 << 18):
            m = b.num_rows
            for j, k in enumerate(out):
                col = b.column(j)
                off = np.frombuffer(col.buffers()[1], np.int32)[col.offset]
                out[k][pos:pos + m] = np.frombuffer(col.buffers()[2], np.float32, m * 512, off).reshape(m, 512)
            pos += m
    elif name == "npy":  # the floor: plain .npy load of both arrays
        for kind in ("image", "text"):
            np.load(folder / f"{kind}.npy").sum()
    secs = time.perf_counter() - t
    return {"phase": name, "seconds": round(secs, 2),
            "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--phase")
    ap.add_argument("--folder")
    a = ap.parse_args()
    if a.phase:
        print(json.dumps(phase(a.phase, Path(a.folder))))
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        make_inputs(folder, a.rows, a.dim)
        print(f"inputs: {a.rows:,} x {a.dim} image + text float32 + 7 metadata columns "
              f"({time.perf_counter() - t:.1f} s to generate)")
        res = {}
        for name in ("ingest", "read", "ingest_blob", "read_blob", "npy"):
            out = subprocess.run([sys.executable, __file__, "--phase", name, "--folder", tmp],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"phase {name} failed:\n{out.stderr}")
            out = out.stdout
            res[name] = json.loads(out.strip().splitlines()[-1])
        size = {k: (folder / f"{k}.duckdb").stat().st_size / 2**30 for k in ("curation", "blob")}
    print(f"\n{'phase':<34}{'seconds':>9}{'peak GB':>9}")
    labels = {"ingest": "ingest (curation, FLOAT[d])", "read": "read-back (curation)",
              "ingest_blob": "ingest (BLOB per vector)", "read_blob": "read-back (BLOB per vector)",
              "npy": "np.load of the two .npy files"}
    for k, lab in labels.items():
        print(f"{lab:<34}{res[k]['seconds']:>9.2f}{res[k]['peak_gb']:>9.2f}")
    print(f"\nfile size: curation {size['curation']:.2f} GB, BLOB layout {size['blob']:.2f} GB")
    print(f"ingest: {res['ingest']['seconds']:.1f} s (target < 60 s); "
          f"BLOB/curation = {res['ingest_blob']['seconds'] / res['ingest']['seconds']:.2f}x")
    print(f"read-back: {res['read']['seconds']:.1f} s (target < 10 s); "
          f"BLOB/curation = {res['read_blob']['seconds'] / res['read']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
