"""The map on a 200,000-row pool in headless Chromium (issue 28): every row is in the image, a
lasso takes every row inside it (counted here independently), the exclusion reaches the export,
and the page asks nothing of any host but its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_browser import CHROMIUM, _serve, assert_no_exception  # noqa: E402

pytestmark = [pytest.mark.xdist_group("map_large"),
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it)")]
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
N = 200_000


@pytest.fixture(scope="module")
def big_app(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_app import build  # the benchmark's pool: Zipf clusters on the map, a synthetic analysis

    d = tmp_path_factory.mktemp("big")
    db = build(d, N)
    with _serve(d) as url:
        yield url, db


def _inside(poly, x, y) -> np.ndarray:
    """Rows inside the polygon by winding numbers (not the app's even-odd code)."""
    poly = np.asarray(poly, np.float64)
    out = []
    for i in range(0, len(x), 20_000):
        xs, ys = x[i:i + 20_000, None], y[i:i + 20_000, None]
        a = np.arctan2(poly[:, 1][None] - ys, poly[:, 0][None] - xs)
        turn = np.diff(np.concatenate([a, a[:, :1]], axis=1), axis=1)
        turn = (turn + np.pi) % (2 * np.pi) - np.pi
        out.append(i + np.flatnonzero(np.abs(turn.sum(axis=1)) > np.pi))
    return np.concatenate(out)


def test_lasso_on_200k_rows_excludes_every_row_inside_from_the_export(big_app):
    from playwright.sync_api import sync_playwright

    from curation import analysis, id_sets, store

    url, db = big_app
    ARTIFACTS.mkdir(exist_ok=True)
    foreign = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        page.on("request", lambda r: foreign.append(r.url) if urlparse(r.url).hostname not in
                ("127.0.0.1", "localhost", None) and not r.url.startswith(("data:", "blob:")) else None)
        page.goto(f"{url}/map?dataset=big&points=2000", wait_until="domcontentloaded", timeout=300_000)
        page.wait_for_function("() => { const g = document.querySelector('.js-plotly-plot');"
                               " return g && g.querySelectorAll('svg image').length > 0 && g.querySelector('canvas'); }",
                               timeout=300_000)
        body = page.inner_text("body")
        assert f"the image shows every one of the {N:,} rows of the pool" in body
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "map_200k.png"), full_page=True)
        page.locator(".js-plotly-plot").first.hover()
        page.locator('.modebar-btn[data-title="Lasso Select"]').first.click()
        plot = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
        cx, cy, r = plot["x"] + plot["width"] * 0.45, plot["y"] + plot["height"] * 0.5, plot["height"] / 5
        page.mouse.move(cx - r, cy)
        page.mouse.down()
        for t in np.linspace(0, 2 * np.pi, 24)[1:]:  # a rough circle
            page.mouse.move(cx - r * np.cos(t), cy + r * np.sin(t), steps=3)
        page.mouse.up()
        page.get_by_text("samples in the region").first.wait_for(timeout=120_000)
        shown = page.get_by_text("samples in the region").first.inner_text()
        page.get_by_text("The region beside the pool").first.wait_for(timeout=60_000)  # its distributions
        assert_no_exception(page)
        page.get_by_role("button", name="Exclude this region from the subset").click()
        page.get_by_text("Rule added: exclude").first.wait_for(timeout=120_000)
        # to Select & export in the same session (the sidebar link keeps the rule), and export
        page.get_by_role("link", name="Select & export").first.click()
        page.get_by_role("button", name="Export manifest").first.wait_for(timeout=300_000)
        page.get_by_role("button", name="Export manifest").first.click()
        page.get_by_text("Download the manifest").first.wait_for(timeout=300_000)
        page.screenshot(path=str(ARTIFACTS / "select_200k.png"), full_page=True)
        b.close()
    assert not foreign, f"requests to other hosts: {foreign[:5]}"
    with store.open_store(db) as s:
        rule = id_sets.latest(s)
        rule = rule[rule["kind"] == "region"].iloc[-1]
        rows = np.sort(id_sets.rows(s)[f"{rule['name']}@{rule['sha256'][:12]}"])
        df, _ = analysis.load(s)
        ids = s.samples(["id"])["id"].to_numpy()
    poly = json.loads(rule["meta"])["polygons"][0]
    inside = _inside(poly, df.map_x.to_numpy(np.float64), df.map_y.to_numpy(np.float64))
    assert len(inside) > 1_000 and np.array_equal(rows, inside)
    assert shown.startswith(f"{len(inside):,} samples in the region"), shown
    import pandas as pd

    exports = sorted((db.parent / "exports").glob("*.parquet"), key=lambda f: f.stat().st_mtime)
    manifest = [f for f in exports if not f.name.endswith(".dropped.parquet")][-1]
    kept = set(pd.read_parquet(manifest)["id"])
    assert len(kept) > 0 and not kept & set(ids[inside])
    side = json.loads(Path(str(manifest) + ".sidecar.json").read_text())
    assert any(rule["name"] in json.dumps(v) for v in side.values())
