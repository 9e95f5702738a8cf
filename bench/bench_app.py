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

    from curation import analysis, analysis_steps, prototypes, store

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
        knn = analysis_steps._knn_table(nbr, sim)
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
    """Bytes of every chart the page sends (Altair specs with their data, Plotly figures)."""
    return sum(len(c.proto.SerializeToString()) for kind in ("vega_lite_chart", "plotly_chart") for c in at.get(kind))


SCREENSHOT: Path | None = None


def browser_first_paint(data_dir: Path, points_list) -> dict | None:
    """{N: seconds} from opening /map?points=N in headless Chromium until the WebGL scatter has
    drawn its traces, for each N (None without chromium or playwright)."""
    import shutil
    import subprocess
    import urllib.request

    chromium = (shutil.which("chromium-headless-shell") or shutil.which("chromium")
                or shutil.which("chromium-browser"))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if chromium is None:
        return None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, CURATION_DATA_DIR=str(data_dir))
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port",
                             str(port), "--server.address", "127.0.0.1"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded", timeout=600_000)  # warm the server's caches
            page.get_by_text("Samples").first.wait_for(timeout=600_000)
            took = {}
            # Select & export in a fresh session, its selection arrays not read yet by anyone: the
            # knobs (first content) and then the impact table (the selection done)
            sp = b.new_page(viewport={"width": 1400, "height": 1000})
            t = time.perf_counter()
            sp.goto(f"{url}/select", wait_until="domcontentloaded", timeout=600_000)
            sp.get_by_text("Selection knobs").first.wait_for(timeout=600_000)
            took["select_knobs"] = time.perf_counter() - t
            sp.get_by_text("Impact: subset vs random").first.wait_for(timeout=600_000)
            took["select_results"] = time.perf_counter() - t
            sp.close()
            # a second fresh session: the inputs are shared in the server, the order is read from
            # the dataset's order store (selection.order_file), not computed again
            sp = b.new_page(viewport={"width": 1400, "height": 1000})
            t = time.perf_counter()
            sp.goto(f"{url}/select", wait_until="domcontentloaded", timeout=600_000)
            sp.get_by_text("Impact: subset vs random").first.wait_for(timeout=600_000)
            took["select_second"] = time.perf_counter() - t
            sp.close()
            for points in points_list:
                page.goto(f"{url}/map?points={points}", wait_until="domcontentloaded", timeout=600_000)
                page.locator(".js-plotly-plot").first.wait_for(timeout=600_000)  # first visit fills the caches
                page = b.new_page(viewport={"width": 1400, "height": 1000})  # a new session: ?points applies
                t = time.perf_counter()
                page.goto(f"{url}/map?points={points}", wait_until="domcontentloaded", timeout=600_000)
                page.wait_for_function("() => { const g = document.querySelector('.js-plotly-plot');"
                                       " return g && g._fullData && g._fullData.length > 1 &&"
                                       " g.querySelector('canvas') && g.querySelectorAll('svg image').length > 0; }",
                                       timeout=600_000)
                took[points] = time.perf_counter() - t
                if SCREENSHOT and points == points_list[0]:
                    page.wait_for_timeout(1500)
                    page.screenshot(path=str(SCREENSHOT))
            if SCREENSHOT:  # every page at this size, beside the map's picture
                for name, wait_text in (("", "Samples"), ("long_tail", "Rarest clusters"), ("confounders", "Stratify"),
                                        ("quality", "Quality"), ("select", "Impact")):
                    pg = b.new_page(viewport={"width": 1400, "height": 1000})
                    pg.goto(f"{url}/{name}", wait_until="domcontentloaded", timeout=600_000)
                    pg.get_by_text(wait_text).first.wait_for(timeout=600_000)
                    pg.wait_for_timeout(2500)
                    pg.screenshot(path=str(SCREENSHOT.with_name(f"{name or 'overview'}_{SCREENSHOT.stem}.png")))
                    pg.close()
            took["knob"] = browser_knob_latency(url, b)
            b.close()
        return took
    finally:
        proc.terminate()
        proc.wait(timeout=30)


#: armed before each key press: records (in the page's clock) when the "Selected" metric's text changes
_ARM = """(before) => { window.__done = null; window.__t0 = performance.now();
  const obs = new MutationObserver(() => {
    const m = [...document.querySelectorAll('[data-testid="stMetric"]')].find(e => e.innerText.includes('Selected'));
    const v = m && m.querySelector('[data-testid="stMetricValue"]');
    if (v && v.innerText !== before && window.__done === null) { window.__done = performance.now(); obs.disconnect(); }
  });
  obs.observe(document.body, {childList: true, subtree: true, characterData: true}); }"""


def browser_knob_latency(url: str, browser, repeats: int = 8) -> list[float]:
    """Seconds from a budget key press on Select & export (the slider focused, ArrowRight/Left)
    until the "Selected" metric shows the new count, timed inside the page (a MutationObserver),
    with the page left idle 1.5 s between presses, as a user's presses are spaced."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/select", wait_until="domcontentloaded", timeout=600_000)
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Selected").locator(
        '[data-testid="stMetricValue"]')
    metric.wait_for(timeout=600_000)
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="Budget (fraction").locator(
        "input[type=range]")  # streamlit's slider: a visually hidden range input
    slider.focus()
    page.wait_for_timeout(2000)
    took = []
    for i in range(repeats):
        page.evaluate(_ARM, metric.inner_text())
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_function("() => window.__done !== null", timeout=120_000)
        took.append(page.evaluate("() => window.__done - window.__t0") / 1000)
        page.wait_for_timeout(1500)
    page.close()
    return took


def server_map_figures(db: Path) -> dict:
    """Server-side map costs on every row: the image (numpy binning vs the same GROUP BY in DuckDB),
    a zoomed re-render, and the rows inside a lasso holding about 100k rows."""
    import duckdb

    from curation import analysis, charts, raster, regions, store

    with store.open_store(db) as s:
        df, _ = analysis.load(s)
    x, y, proto = df.map_x.to_numpy(), df.map_y.to_numpy(), df.prototype.to_numpy()
    out = {}
    t = time.perf_counter()
    colors = charts.category_colors(proto)
    codes, rgb = charts.category_codes(proto, colors)
    out["colours"] = time.perf_counter() - t
    t = time.perf_counter()
    img = raster.render(x, y, codes=codes, colors=rgb)
    out["image"] = time.perf_counter() - t
    t = time.perf_counter()
    img.png().save(os.devnull, "PNG")
    out["png"] = time.perf_counter() - t
    (x0, x1), (y0, y1) = img.x_range, img.y_range
    con = duckdb.connect()
    con.register("m", df[["map_x", "map_y", "prototype"]])
    t = time.perf_counter()
    con.execute("SELECT px, py, mode(prototype), count(*) FROM (SELECT floor((map_x - ?) / ? * 900)::INT AS px, "
                "floor((? - map_y) / ? * 620)::INT AS py, prototype FROM m) GROUP BY px, py",
                [x0, x1 - x0, y1, y1 - y0]).fetchall()
    out["duckdb_binning"] = time.perf_counter() - t
    t = time.perf_counter()
    raster.render(x, y, codes=codes, colors=rgb, x_range=(x0, x0 + (x1 - x0) / 4), y_range=(y0, y0 + (y1 - y0) / 4))
    out["zoom"] = time.perf_counter() - t
    # a lasso around the densest cluster's centre, grown until it holds about 100k rows
    cx, cy = np.median(x[proto == np.bincount(proto).argmax()]), np.median(y[proto == np.bincount(proto).argmax()])
    ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    r = 0.05 * (x1 - x0)
    for _ in range(60):
        poly = [[cx + r * np.cos(a), cy + r * np.sin(a)] for a in ang]
        inside = regions.rows_in_regions(x, y, [poly])
        if len(inside) >= min(100_000, len(x) // 2):
            break
        r *= 1.15
    t = time.perf_counter()
    inside = regions.rows_in_regions(x, y, [poly])
    out["lasso"] = time.perf_counter() - t
    out["lasso_rows"] = len(inside)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--no-browser", action="store_true", help="skip the headless Chromium first-paint measurement")
    ap.add_argument("--browser-only", action="store_true",
                    help="only the headless Chromium measurements (at 10M rows the browser's server beside the "
                         "AppTest process would need about 20 GB)")
    ap.add_argument("--screenshot", help="save the map's first paint as this PNG (the README's picture), and "
                                         "every other page beside it as <page>_<name>.png")
    a = ap.parse_args()
    global SCREENSHOT
    SCREENSHOT = Path(a.screenshot) if a.screenshot else None
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        t = time.perf_counter()
        db = build(Path(tmp), a.rows)
        print(f"dataset + synthetic analysis of {a.rows:,} rows built in {time.perf_counter() - t:.1f} s")
        os.environ["CURATION_DATA_DIR"] = tmp
        if a.browser_only:
            paint = browser_first_paint(Path(tmp), sorted({min(5_000, a.rows), min(20_000, a.rows)}))
            if paint is None:
                sys.exit("the browser measurements need chromium and playwright")
            _print_browser(paint, a.rows)
            return
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
        at.session_state["dataset"] = db.stem
        t_overview = timed(at.run)
        t_map = timed(at.switch_page("pages/map.py").run)
        assert not at.exception, at.exception
        map_payload = payload_bytes(at)
        t_map2 = timed(at.run)
        t_map200 = timed(at.slider(key="map_points").set_value(min(200_000, a.rows)).run)
        assert not at.exception, at.exception
        map200_payload = payload_bytes(at)
        t_sel = timed(at.switch_page("pages/select.py").run)
        assert not at.exception, at.exception
        t_budget = timed(at.slider(key="sel_budget").set_value(0.1).run)
        t_knob = timed(at.selectbox(key="sel_mode").set_value("balanced").run)
        sel_payload = payload_bytes(at)
        firsts = {}  # every other page, first render in a fresh session (its caches cold for this session)
        for page in ("long_tail", "confounders", "quality"):
            fresh = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
            fresh.session_state["dataset"] = db.stem
            fresh.run()
            firsts[page] = timed(fresh.switch_page(f"pages/{page}.py").run)
            assert not fresh.exception, (page, fresh.exception)
        server = server_map_figures(db)
        paint = (browser_first_paint(Path(tmp), sorted({min(5_000, a.rows), min(20_000, a.rows)}))
                 if not a.no_browser else None)
    print(f"\n{'page render at ' + format(a.rows, ','):<54}{'seconds':>9}")
    for label, v in [("overview, first", t_overview),
                     ("map, first render (cold caches: reads the analysis)", t_map),
                     ("map, re-render (cached)", t_map2),
                     (f"map, {min(200_000, a.rows):,} points drawn (server side)", t_map200),
                     ("select & export, first (loads selection arrays)", t_sel),
                     ("select & export, budget change", t_budget),
                     ("select & export, mode change (new order)", t_knob),
                     *[(f"{page.replace('_', ' ')}, first", v) for page, v in firsts.items()]]:
        print(f"{label:<54}{v:>9.2f}")
    print(f"\nchart payload: map page {map_payload / 2**20:.2f} MB (default 5,000 points and the image), "
          f"{map200_payload / 2**20:.2f} MB at {min(200_000, a.rows):,} points; select page {sel_payload / 2**20:.2f} MB "
          f"(all {a.rows:,} points as Arrow would be about {a.rows * 28 / 2**20:.0f} MB)")
    print(f"\nmap image of every row ({a.rows:,}, 900 x 620, majority cluster per pixel): colours of the levels "
          f"{server['colours'] * 1000:.0f} ms, numpy binning and colouring {server['image'] * 1000:.0f} ms, PNG "
          f"{server['png'] * 1000:.0f} ms; the same binning as a DuckDB GROUP BY with mode(): "
          f"{server['duckdb_binning'] * 1000:.0f} ms; "
          f"zoomed re-render of a quarter of the map: {server['zoom'] * 1000:.0f} ms; rows inside a 40-vertex lasso: "
          f"{server['lasso_rows']:,} in {server['lasso'] * 1000:.0f} ms")
    if paint is not None:
        _print_browser(paint, a.rows)
    else:
        print("map first paint in a browser: not measured (needs chromium and playwright, or --no-browser given)")


def _print_browser(paint: dict, rows: int) -> None:
    knob = paint.pop("knob")
    print(f"select & export in headless Chromium, a fresh session with nothing cached: the knobs "
          f"(first content) after {paint.pop('select_knobs'):.2f} s, the impact table after "
          f"{paint.pop('select_results'):.2f} s; a second fresh session (the order read from the dataset's order "
          f"store): the impact table after {paint.pop('select_second'):.2f} s")
    print(f"select & export in headless Chromium: a budget key press until the Selected metric shows the new "
          f"count: median {np.median(knob) * 1000:.0f} ms, max {max(knob) * 1000:.0f} ms over {len(knob)} presses "
          f"(target < {300 if rows <= 20_000 else 500} ms)")
    for pts, sec in paint.items():
        print(f"map: {rows:,} rows drawn, first paint {sec:.2f} s (headless Chromium, software WebGL, "
              f"server caches warm; the image of every row plus {pts:,} points to hover)")


if __name__ == "__main__":
    main()
