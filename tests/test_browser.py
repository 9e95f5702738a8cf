"""A real browser: start the app, open it in headless Chromium, check the page renders.

Needs Debian's `chromium-headless-shell` (installed by `make test` when run as root) or `chromium`; skipped
without either.
The screenshots are saved under test-artifacts/ for a person to look at.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import _private_copy

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
#: Debian's chromium-headless-shell (the chromium source package's headless build: the same Blink
#: and V8, without the desktop browser's hidden UI; about 30% less CPU per page load here) when
#: installed, else the full chromium in headless mode
CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser"),  # one app server per worker
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(analyzed_db, tmp_path_factory):
    d = tmp_path_factory.mktemp("browser-data")
    shutil.copy(analyzed_db, d / "demo.duckdb")
    (d / "demo_images").symlink_to(analyzed_db.parent / "demo_images")
    from curation import demo, reward  # a trained and scored reward model, for the Quality page

    demo.planted_ratings(d / "demo.duckdb", 2000).to_csv(d / "ratings.csv", index=False)
    reward.train(d / "demo.duckdb", d / "ratings.csv", progress=False)
    reward.score(d / "demo.duckdb", progress=False)
    with _serve(d) as url:
        app_url.data_dir = d  # the region test reads the rule the page stored
        yield url


@contextlib.contextmanager
def _serve(data_dir):
    """A fresh `streamlit run app.py` on a free localhost port, serving ``data_dir``."""
    port = _free_port()
    env = dict(os.environ, CURATION_DATA_DIR=str(data_dir))
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("the app did not start: " + proc.stdout.read1().decode(errors="replace"))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (CHROMIUM above) driven by Playwright (no browser download:
    executable_path is given): one browser context for the module's pages, as one person's
    browser would be. Its HTTP cache keeps Streamlit's script bundle compiled between page loads
    (a fresh context per page compiled it each time: a fifth of Chromium's CPU per page load
    here). Each page is still its own Streamlit session."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = b.new_context()
        yield context
        context.close()
        b.close()


#: true once Streamlit has finished the run and every chart has drawn: the app's script state (the
#: attribute Streamlit's own end-to-end tests wait on) is "notRunning", no element is stale (greyed),
#: every Vega chart has its canvas or svg, every Plotly chart is laid out
_SETTLED = """() => !!document.querySelector('[data-testid=stApp][data-test-script-state=notRunning]'
                                          + '[data-test-connection-state=CONNECTED]')
    && !document.querySelector('[data-stale=true]')
    && [...document.querySelectorAll('.vega-embed')].every(v => v.querySelector('canvas, svg'))
    && [...document.querySelectorAll('.js-plotly-plot')].every(p => p._fullLayout && p.querySelector('.main-svg'))"""


def settle(page) -> None:
    """Wait until the page has settled: :data:`_SETTLED` holds, still holds 300 ms later, and again
    300 ms after that (a rerun that starts in between is waited for). The screenshots then show
    finished charts, without a fixed sleep per page."""
    for _ in range(2):
        page.wait_for_function(_SETTLED, timeout=60_000, polling=100)
        page.wait_for_timeout(300)
    page.wait_for_function(_SETTLED, timeout=60_000, polling=100)


#: the servers a page has been opened on (a server no page has been opened on is fresh)
_VISITED: set[str] = set()


def open_page(browser, url: str, height: int = 1000):
    """A new 1400-wide page at ``url`` (the server is recorded as visited)."""
    ARTIFACTS.mkdir(exist_ok=True)
    _VISITED.add(url.split("/")[2])
    page = browser.new_page()
    page.set_viewport_size({"width": 1400, "height": height})
    try:
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    except BaseException:
        page.close()
        raise
    return page


def assert_no_exception(page) -> None:
    assert not page.locator("[data-testid=stException]").count(), "the page shows an exception"


def render(browser, url: str, name: str, wait_for: str) -> str:
    """Open ``url``, wait until ``wait_for`` text shows and the page settles, save
    test-artifacts/<name>.png, return the text."""
    page = open_page(browser, url)
    try:
        page.get_by_text(wait_for, exact=False).first.wait_for(timeout=60_000)
        settle(page)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        assert_no_exception(page)
        return page.inner_text("body")
    finally:
        page.close()


def test_deep_link_to_a_fresh_server_goes_through_the_entry_point(browser, app_url, analyzed_db, tmp_path):
    """A bookmarked /quality?... opened before anyone opened / must still get app.py's dataset picker
    and navigation (Streamlit otherwise runs pages/quality.py alone, as a v1 multipage app).
    First in this file: the module's server is still fresh then; otherwise it starts one of its own."""
    with contextlib.ExitStack() as stack:
        url = app_url
        if app_url.split("/")[2] in _VISITED:
            url = stack.enter_context(_serve(_private_copy(analyzed_db, tmp_path).parent))
        text = render(browser, f"{url}/quality?gate_fidelity=0.9", "deep_link_quality", "Image-text fidelity")
    assert "No dataset yet" not in text and "Select & export" in text and "Dataset" in text


def test_overview_renders_in_chromium(browser, app_url):
    text = render(browser, app_url, "overview", "Samples")
    assert "Overview" in text and "4,000" in text, text[-2000:]


@pytest.fixture(scope="module")
def map_page(browser, app_url):
    """The Map page, open and drawn: one page load for the render check and the interactions after it."""
    page = open_page(browser, f"{app_url}/map?points=2000", height=1100)  # half the 4,000 rows drawn
    try:
        page.get_by_text("Colour by").first.wait_for(timeout=60_000)
        page.locator(".js-plotly-plot .nsewdrag").first.wait_for(timeout=60_000)
        settle(page)
        yield page
    finally:
        page.close()


def test_map_renders_in_chromium(map_page):
    map_page.screenshot(path=str(ARTIFACTS / "map.png"), full_page=True)
    assert_no_exception(map_page)
    text = map_page.inner_text("body")
    assert "the image shows every one of the 4,000 rows of the pool" in text
    assert "Colour by" in text
    # every row is one server-rendered image under the points (no WebGL needed for it)
    img = map_page.evaluate("() => { const gd = document.querySelector('.js-plotly-plot');"
                            " const im = (gd._fullLayout.images || [])[0];"
                            " return im ? [im.source.slice(0, 22), gd.querySelectorAll('svg image').length] : null; }")
    assert img is not None and img[0] == "data:image/png;base64," and img[1] >= 1


def test_select_page_renders_in_chromium(browser, app_url):
    text = render(browser, f"{app_url}/select?budget=0.1&confounders=site", "select", "Impact")
    assert "Selected" in text and "400" in text, text[:3000]


@pytest.mark.parametrize("page, wait_for", [("long_tail", "Rarest clusters"), ("confounders", "Stratify"),
                                            ("quality", "Reward model")])
def test_other_pages_render_in_chromium(browser, app_url, page, wait_for, request):
    text = (request.getfixturevalue("quality_page") if page == "quality"
            else render(browser, f"{app_url}/{page}", page, wait_for))
    assert wait_for in text


@pytest.fixture(scope="module")
def quality_page(browser, app_url) -> str:
    """The Quality page's text, opened once for the two checks that read it; screenshots of the
    whole page and of its reward section (held-out r table and reward histograms)."""
    page = open_page(browser, f"{app_url}/quality")
    try:
        page.get_by_text("Reward model").first.wait_for(timeout=60_000)
        page.get_by_text("Reward: fidelity (rating scale)").first.wait_for(timeout=60_000)
        settle(page)
        page.screenshot(path=str(ARTIFACTS / "quality.png"), full_page=True)
        page.get_by_text("Held-out Pearson r").first.scroll_into_view_if_needed()
        settle(page)
        page.screenshot(path=str(ARTIFACTS / "quality_reward.png"))
        assert_no_exception(page)
        return page.inner_text("body")
    finally:
        page.close()


def test_reward_model_section_in_chromium(quality_page):
    """The Quality page's reward section: held-out r table and the reward histograms (screenshot)."""
    assert "by the newest model" in quality_page and "Held-out Pearson r" in quality_page


def _plot_point_xy(page):
    """Page coordinates of the drawn point nearest the plot's centre (Plotly's own axis
    conversion), away from the legend, to click it."""
    return page.evaluate("""() => {
        const gd = document.querySelector('.js-plotly-plot');
        const fl = gd._fullLayout;
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        let best = null;
        for (const tr of gd._fullData) {
            if (tr.type !== 'scattergl') continue;
            for (let i = 0; i < tr.x.length; i++) {
                const px = fl.xaxis.l2p(tr.x[i]), py = fl.yaxis.l2p(tr.y[i]);
                const d = Math.hypot(px - box.width / 2, py - box.height / 2);
                if (best === null || d < best[0]) best = [d, box.left + px, box.top + py];
            }
        }
        return [best[1], best[2]];
    }""")


def test_map_zoom_click_inspect_lasso_exclude_in_chromium(map_page):
    """The map as a person uses it: scroll to zoom, click a point and read its neighbours in the
    inspector, lasso a region and exclude it; screenshots of each state. (Last in this file: it
    changes the shared Map page.)"""
    page = map_page
    plot = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    before = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullLayout.xaxis.range.slice()")
    page.mouse.move(plot["x"] + plot["width"] / 2, plot["y"] + plot["height"] / 2)
    # plotly applies a wheel zoom at once and reports it (plotly_relayout) a moment later
    page.evaluate("() => { window.__zoomed = false; document.querySelector('.js-plotly-plot')"
                  ".once('plotly_relayout', () => { window.__zoomed = true; }); }")
    page.mouse.wheel(0, -400)  # zoom in
    page.wait_for_function("() => window.__zoomed", timeout=10_000, polling=100)
    after = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullLayout.xaxis.range.slice()")
    assert after[1] - after[0] < before[1] - before[0], (before, after)
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "map_zoomed.png"))
    page.evaluate("() => Plotly.relayout(document.querySelector('.js-plotly-plot'), "
                  "{'xaxis.autorange': true, 'yaxis.autorange': true})")  # (awaits the promise)
    settle(page)
    x, y = _plot_point_xy(page)
    page.mouse.click(x, y)
    page.get_by_text("Nearest neighbours").first.wait_for(timeout=60_000)
    page.get_by_text("cosine 0.").nth(4).wait_for(timeout=60_000)  # five neighbours at least
    # the clicked point is ringed on the map, and the ring is the row the inspector shows
    page.wait_for_function("() => document.querySelector('.js-plotly-plot').data"
                           ".some(t => t.name === 'inspected')", timeout=60_000, polling=200)
    ringed = page.evaluate("() => document.querySelector('.js-plotly-plot').data"
                           ".find(t => t.name === 'inspected').customdata[0]")
    from curation import store as _store

    with _store.open_store(app_url.data_dir / "demo.duckdb") as s:
        ringed_id = s.samples(["id"])["id"].iloc[int(ringed)]
    page.get_by_text(ringed_id).first.wait_for(timeout=30_000)
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "map_inspector.png"), full_page=True)
    # closed, it stays closed (the click is still the chart's selection) and the ring goes
    page.get_by_role("button", name="Close the inspector").click()
    page.get_by_text("Nearest neighbours").first.wait_for(state="detached", timeout=60_000)
    page.wait_for_function("() => !document.querySelector('.js-plotly-plot').data"
                           ".some(t => t.name === 'inspected')", timeout=60_000, polling=200)
    settle(page)
    assert page.get_by_text("Nearest neighbours").count() == 0
    # lasso around the middle of the plot, with the toolbar's lasso tool
    page.locator(".js-plotly-plot").first.hover()
    page.locator('.modebar-btn[data-title="Lasso Select"]').first.click()
    plot = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    cx, cy = _plot_point_xy(page)  # around a drawn point: the lasso holds rows whatever the layout
    r = plot["height"] / 6
    page.mouse.move(cx - r, cy - r)
    page.mouse.down()
    for px, py in ((cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r), (cx - r, cy - r + 2)):
        page.mouse.move(px, py, steps=8)
    page.mouse.up()
    page.get_by_text("samples in the region").first.wait_for(timeout=60_000)
    shown = page.get_by_text("samples in the region").first.inner_text()
    page.get_by_role("button", name="Exclude this region from the subset").click()
    page.get_by_text("Rule added: exclude").first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "map_region_excluded.png"), full_page=True)
    assert_no_exception(page)
    # the rule holds every row inside the lasso, drawn or not: counted here independently (winding
    # numbers over the stored polygon and every row's map position)
    import json

    import numpy as np

    from curation import analysis, id_sets, store

    with store.open_store(app_url.data_dir / "demo.duckdb") as s:
        rule = id_sets.latest(s)
        rule = rule[rule["kind"] == "region"].iloc[-1]
        rows = id_sets.rows(s)[f"{rule['name']}@{rule['sha256'][:12]}"]
        df, _ = analysis.load(s)
    poly = np.asarray(json.loads(rule["meta"])["polygons"][0], np.float64)
    x, y = df.map_x.to_numpy(np.float64)[:, None], df.map_y.to_numpy(np.float64)[:, None]
    a = np.arctan2(poly[:, 1][None] - y, poly[:, 0][None] - x)
    turn = np.diff(np.concatenate([a, a[:, :1]], axis=1), axis=1)
    turn = (turn + np.pi) % (2 * np.pi) - np.pi
    inside = np.flatnonzero(np.abs(turn.sum(axis=1)) > np.pi)
    assert len(inside) > 0 and np.array_equal(np.sort(rows), inside)
    assert shown.startswith(f"{len(inside):,} samples in the region") and "drawn)" in shown, shown
    drawn = int(shown.split("of which ")[1].split(" drawn")[0].replace(",", ""))
    assert drawn < len(inside)  # the rule took the undrawn rows inside the lasso too
