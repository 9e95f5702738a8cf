"""Page-render speed at 1M points from a cached analysis, through streamlit's AppTest.

    python bench/bench_app.py [--rows 1000000]

Builds a dataset of ``--rows`` samples (8-d vectors: the app never reads vectors) with a synthetic
analysis run (prototypes, bands, FPS ranks, kNN graph, map coordinates, quality, confounders), then
reports: the map page's first render (cold caches), a re-render, a budget change and another knob
change on the Select page, and the chart payload sent to the browser.
Targets (DESIGN section 7): map first paint < 2 s, a knob change reflected < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(folder: Path, n: int) -> Path:
    import pandas as pd
    import pyarrow as pa

    from curation import analysis, prototypes, store

    rng = np.random.default_rng(0)
    k = 1000
    w = 1 / np.arange(1, k + 1) ** 1.1
    proto = rng.choice(k, n, p=w / w.sum()).astype(np.int32)
    site = rng.choice(["A", "B", "C", "D"], n)
    samples = pa.table({"id": [f"s{i:08d}" for i in range(n)], "caption": [f"finding {p}" for p in proto],
                        "site": site, "sex": rng.choice(["F", "M"], n), "age": rng.integers(18, 90, n)})
    vec = rng.standard_normal((n, 8)).astype(np.float32)
    db = folder / "big.duckdb"
    store.create_dataset(db, samples, {"image": vec, "text": vec}, meta={"shared_space": True})
    dist = rng.random(n).astype(np.float32)
    pct = prototypes.cluster_percentiles(proto, dist)
    band = prototypes.bands(pct)
    centres = rng.normal(0, 10, (k, 2))
    xy = centres[proto] + rng.normal(0, 0.6, (n, 2))
    cfg = analysis.AnalysisConfig(space="joint")
    with store.open_store(db, read_only=False) as s:
        run_id = analysis.run_id_for(cfg, s.fingerprint)
        names = analysis.table_names(run_id)
        out = pd.DataFrame({
            "row_idx": np.arange(n), "prototype": proto, "second_prototype": (proto + 1) % k,
            "proto_dist": dist, "second_dist": dist + 0.1, "proto_pct": pct, "band": band,
            "fps_rank": np.where(band == "core", rng.permutation(n), -1), "knn_density": rng.random(n),
            "tail_score": rng.random(n), "dup_group": -1, "is_dup": False, "map_x": xy[:, 0],
            "map_y": xy[:, 1], "map_fitted": True, "hdbscan_label": proto % 50,
            "glosh_score": rng.random(n), "fidelity": rng.random(n), "fidelity_score": rng.random(n),
            "consistency": rng.random(n), "consistency_score": rng.random(n)})
        nbr = rng.integers(0, n, (n, 10)).astype(np.int32)
        sim = np.sort(rng.uniform(0.3, 0.9, (n, 10)).astype(np.float32), axis=1)[:, ::-1]
        knn = analysis._knn_table(nbr, sim)
        conf = pd.DataFrame([{"column": c, "role": "metadata", "kind": "categorical", "levels": 4,
                              "cramers_v": 0.5 if c == "site" else 0.0, "mutual_info": 0.0, "nmi": 0.0,
                              "probe_accuracy": 0.5, "majority_accuracy": 0.25, "probe_lift": 0.25,
                              "is_confounder": c == "site", "note": ""} for c in ("site", "sex", "age")])
        s.record_run("analysis", json.loads(cfg.to_json()), {"total": 0.0},
                     {"tables": names, "k": k, "steps": list(analysis.STEPS), "n": n}, run_id=run_id,
                     extra_tables={names["samples"]: out, names["knn"]: knn,
                                   names["prototypes"]: pd.DataFrame({"prototype": np.arange(k)}),
                                   names["confounders"]: conf})
    return db


def timed(step) -> float:
    """Seconds one call of ``step`` (an AppTest ``run``) takes."""
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


def payload_bytes(at) -> int:
    return sum(len(c.proto.SerializeToString()) for c in at.get("vega_lite_chart"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    a = ap.parse_args()
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        t = time.perf_counter()
        db = build(Path(tmp), a.rows)
        print(f"dataset + synthetic analysis of {a.rows:,} rows built in {time.perf_counter() - t:.1f} s")
        os.environ["CURATION_DATA_DIR"] = tmp
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
        at.session_state["dataset"] = db.stem
        t_overview = timed(at.run)
        t_map = timed(at.switch_page("pages/map.py").run)
        assert not at.exception, at.exception
        map_payload = payload_bytes(at)
        t_map2 = timed(at.run)
        t_sel = timed(at.switch_page("pages/select.py").run)
        assert not at.exception, at.exception
        t_budget = timed(at.slider(key="sel_budget").set_value(0.1).run)
        t_knob = timed(at.selectbox(key="sel_mode").set_value("balanced").run)
        sel_payload = payload_bytes(at)
    print(f"\n{'page render at ' + format(a.rows, ','):<54}{'seconds':>9}")
    for label, v in [("overview, first", t_overview),
                     ("map, first render (cold caches: reads the analysis)", t_map),
                     ("map, re-render (cached)", t_map2),
                     ("select & export, first (loads selection arrays)", t_sel),
                     ("select & export, budget change", t_budget),
                     ("select & export, mode change (new order)", t_knob)]:
        print(f"{label:<54}{v:>9.2f}")
    print(f"\nchart payload: map page {map_payload / 2**20:.2f} MB, select page {sel_payload / 2**20:.2f} MB "
          f"(all {a.rows:,} points as Arrow would be about {a.rows * 28 / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
