"""App state you can trust: knobs survive page changes and stay in the URL, junk URL values are
notices, user strings render as text, sessions do not share selection state, analysis runs in the
background."""


import numpy as np
import pytest

from curation import analysis, jobs, runs, selection, store
from app_helpers import data_dir_copy as _data_dir
from app_helpers import metric as _metric
from app_helpers import open_app as _app
from curation.selection import Gate, SelectionConfig

OTHER_PAGES = ["pages/map.py", "pages/long_tail.py", "pages/confounders.py", "pages/quality.py", "pages/overview.py"]


@pytest.fixture
def data_dir(analyzed_db, tmp_path, monkeypatch):
    return _data_dir(tmp_path, monkeypatch, analyzed_db)




def _qp(at, name):
    v = at.query_params.get(name)
    return v[0] if isinstance(v, list) else v


def _inputs(db):
    with store.open_store(db) as s:
        return selection.load_inputs(s)


def test_knobs_and_url_survive_every_page(read_only_app_data):
    at = _app("pages/select.py")
    at.slider(key="sel_budget").set_value(0.4).run()
    at.selectbox(key="sel_mode").set_value("balanced").run()
    at.multiselect(key="sel_confounders").set_value(["site"]).run()
    assert _metric(at, "Selected") == "1,600"
    for page in OTHER_PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert (_qp(at, "budget"), _qp(at, "mode"), _qp(at, "confounders")) == ("0.4", "balanced", "site"), page
        if page == "pages/map.py":  # the map's selection colouring uses the same knobs
            at.selectbox(key="map_color").set_value("selection").run()
            assert any("1,600 selected" in c.value for c in at.caption), [c.value for c in at.caption]
    at.switch_page("pages/select.py").run()
    assert at.slider(key="sel_budget").value == 0.4
    assert at.selectbox(key="sel_mode").value == "balanced"
    assert at.multiselect(key="sel_confounders").value == ["site"]
    assert _metric(at, "Selected") == "1,600"


def test_strata_from_confounders_and_gate_from_quality_reach_select(read_only_app_data):
    at = _app("pages/confounders.py")
    at.multiselect(key="sel_confounders").set_value(["scanner"]).run()
    at.switch_page("pages/quality.py").run()
    at.slider(key="sel_gate_fidelity").set_value(0.5).run()
    at.switch_page("pages/select.py").run()
    assert not at.exception
    res = selection.select(_inputs(read_only_app_data / "demo.duckdb"), SelectionConfig(
        confounders=("scanner",), gates=(Gate("fidelity", top_q=0.5),)))
    assert _metric(at, "Eligible") == f"{res.summary['eligible']:,}"
    assert at.multiselect(key="sel_confounders").value == ["scanner"]
    assert at.slider(key="sel_gate_fidelity").value == 0.5


@pytest.mark.parametrize("name, value", [
    ("budget", "-1"), ("budget", "1e400"), ("budget", "2.5"), ("budget", "lots"), ("mode", "foo"),
    ("temper", "2"), ("tail_ratio", "-1"), ("outliers", "sometimes"), ("dedup", "maybe"),
    ("dedup_eps", "0"), ("dedup_eps", "1.5"), ("gate_fidelity", "-1"), ("gate_fidelity", "nan"),
    ("gate_nosuch", "0.5"), ("filter_col", "nosuch"), ("filter_op", "~"), ("confounders", "nosuch"),
    ("seed", "x"), ("seed", "-3"), ("seed", str(2**31)), ("tail", "sideways"), ("caption_guard", "0.6"),
    ("exclude_clusters", "x,y"), ("exclude_clusters", "999"), ("budget", "nan"),
])
def test_junk_url_values_are_notices_not_tracebacks(read_only_app_data, name, value):
    at = _app(None, {name: value})  # the notice shows on the page the link opens
    assert not at.exception
    notices = [w.value for w in at.warning]
    assert any("ignored" in w or "removed" in w or "not in this dataset" in w for w in notices), notices
    at.switch_page("pages/select.py").run()
    assert not at.exception
    assert _metric(at, "Selected") == "1,000"  # the defaults apply
    assert name not in at.query_params  # a dropped value leaves the URL too


@pytest.mark.parametrize("name, value, widget, shown", [
    ("budget", "5", "number_input", 5), ("budget", "0.00001", "slider", 0.01), ("dedup_eps", "0.9", "number_input", 0.9),
    ("seed", "2147483647", "number_input", 2**31 - 1),  # the library's bound (faiss takes an int32 seed)
    ("tail", "distance", "selectbox", "distance"), ("caption_guard", "0.2", "number_input", 0.2),
])
def test_valid_url_values_are_kept_as_given(read_only_app_data, name, value, widget, shown):
    at = _app("pages/select.py", {name: value})
    assert not at.exception
    got = getattr(at, widget)(key=f"sel_{name}").value
    assert got == pytest.approx(shown)


def test_a_junk_deep_link_renders_every_notice(read_only_app_data):
    at = _app(None, {"exclude_clusters": "x,y", "budget": "nan"})
    assert not at.exception
    notices = " ".join(w.value for w in at.warning)
    assert "give cluster numbers" in notices and "budget" in notices  # (markdown-escaped text)
    at.switch_page("pages/select.py").run()
    assert not at.exception and _metric(at, "Selected") == "1,000"


def test_switching_datasets_keeps_each_ones_rules_and_export_name(data_dir):
    import shutil

    shutil.copy(data_dir / "demo.duckdb", data_dir / "other.duckdb")
    at = _app("pages/select.py")
    at.text_input(key="exp_name").set_value("mine").run()
    at.slider(key="sel_budget").set_value(0.4).run()
    at.session_state["knobs"]["exclude_clusters"] = [1]  # as the Long tail page's exclude button does
    # what the sidebar's dataset picker does (AppTest runs a page without the entry point's sidebar)
    at.session_state["dataset_path"] = str(data_dir / "other.duckdb")
    at.run()
    assert not at.exception
    assert at.session_state["knobs"]["exclude_clusters"] == [] and at.session_state["knobs"]["budget"] == 0.25
    assert at.text_input(key="exp_name").value != "mine"
    at.session_state["dataset_path"] = str(data_dir / "demo.duckdb")
    at.run()
    assert at.session_state["knobs"]["exclude_clusters"] == [1] and at.session_state["knobs"]["budget"] == 0.4
    assert at.text_input(key="exp_name").value == "mine"


def test_budget_as_a_count(read_only_app_data):
    at = _app("pages/select.py")
    at.radio(key="sel_budget_unit").set_value("count").run()
    assert at.number_input(key="sel_budget").value == 1000  # 0.25 of 4,000, converted
    at.number_input(key="sel_budget").set_value(123).run()
    assert _metric(at, "Selected") == "123" and _qp(at, "budget") == "123"
    at.switch_page("pages/map.py").run()
    at.switch_page("pages/select.py").run()
    assert at.number_input(key="sel_budget").value == 123 and _metric(at, "Selected") == "123"


def test_an_incomplete_filter_is_a_hint_not_an_error(read_only_app_data):
    at = _app("pages/select.py")
    at.selectbox(key="sel_filter_col").set_value("age").run()
    assert not at.exception and not at.error
    assert _metric(at, "Selected") == "1,000"
    assert any("Filter not applied yet" in c.value for c in at.caption)
    at.text_input(key="sel_filter_value").set_value("40").run()
    at.selectbox(key="sel_filter_op").set_value(">=").run()
    res = selection.select(_inputs(read_only_app_data / "demo.duckdb"), SelectionConfig(
        filters=(selection.Filter("age", ">=", 40),)))
    assert _metric(at, "Eligible") == f"{res.summary['eligible']:,}"


def test_two_sessions_interleaved_get_their_own_results(read_only_app_data):
    """Two sessions changing knobs in turn share the cached inputs but never each other's state.
    (Interleaved, not in threads: AppTest installs one process-wide mock runtime per run and
    removes it afterwards, so two AppTests cannot run at the same instant; the threaded case is
    tested on the shared objects themselves below.)"""
    a, b = _app("pages/select.py"), _app("pages/select.py")
    for _ in range(2):
        a.slider(key="sel_budget").set_value(0.1).run()
        b.slider(key="sel_budget").set_value(0.3).run()
        b.selectbox(key="sel_mode").set_value("balanced").run()
        a.checkbox(key="sel_dedup").set_value(False).run()
        a.checkbox(key="sel_dedup").set_value(True).run()
    assert (_metric(a, "Selected"), _metric(b, "Selected")) == ("400", "1,200")
    assert a.selectbox(key="sel_mode").value == "proportional" and b.selectbox(key="sel_mode").value == "balanced"


def test_shared_inputs_and_impact_serve_threads_at_once(read_only_app_data):
    """What the app shares between sessions (SelectionInputs, ImpactContext) is read by many
    threads at once, each with its own SelectionCache: every thread gets the sequential answer."""
    from concurrent.futures import ThreadPoolExecutor

    from curation.metrics import ImpactContext

    inp = _inputs(read_only_app_data / "demo.duckdb")
    ctx = ImpactContext(inp, columns=("site",), label="finding")
    cfgs = [SelectionConfig(budget=b, confounders=c, mode=m, dedup_eps=e)
            for b in (0.1, 0.3) for c in ((), ("site",)) for m in ("proportional", "balanced") for e in (0.05, 0.1)]
    expected = [selection.select(inp, c).selected for c in cfgs]

    def work(i):
        cache = selection.SelectionCache()
        out = []
        for _ in range(3):
            for c in cfgs[i % 2::2]:
                res = selection.select(inp, c, cache=cache)
                ctx.compare(res.selected, c.seed)
                out.append((cfgs.index(c), res.selected))
        return out

    with ThreadPoolExecutor(4) as ex:
        results = [r for chunk in ex.map(work, range(8)) for r in chunk]
    assert len(results) == 8 * 3 * len(cfgs) // 2
    for i, sel in results:
        assert np.array_equal(sel, expected[i]), cfgs[i]
    assert not inp.prototype.flags.writeable and not inp.knn_sim.flags.writeable  # shared arrays are read-only


HOSTILE = "![x](http://127.0.0.1:8999/a) <img src=x onerror=alert(1)> **bold** :red[r]"


@pytest.fixture(scope="module")
def _hostile_module(tmp_path_factory):
    """A dataset whose ids, image paths, model names and a column name are Markdown/HTML (built
    once for the module: the tests only read it)."""
    from curation.cli import main

    tmp_path = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    n = 240
    d = tmp_path / "data"
    d.mkdir()
    lines = ["id,image,caption,site"]
    for i in range(n):
        ident = f"\"{HOSTILE.replace(chr(34), '')} {i}\""
        lines.append(f"{ident},\"![p](http://127.0.0.1:8999/p{i}).png\",\"caption **{i}** <b>x</b>\",s{i % 3}")
    (tmp_path / "meta.csv").write_text("\n".join(lines) + "\n")
    centres = rng.normal(size=(6, 16))
    img = centres[np.arange(n) % 6] + 0.3 * rng.normal(size=(n, 16))
    np.save(tmp_path / "img.npy", img.astype(np.float32))
    np.save(tmp_path / "txt.npy", (img + 0.3 * rng.normal(size=(n, 16))).astype(np.float32))
    db = d / "demo.duckdb"
    code = main([str(a) for a in ("ingest", db, "--metadata", tmp_path / "meta.csv", "--image-emb",
                                  tmp_path / "img.npy", "--text-emb", tmp_path / "txt.npy", "--shared-space",
                                  "--image-model", HOSTILE, "--text-model", HOSTILE)])
    assert code == 0
    analysis.analyze(db, analysis.AnalysisConfig(), steps=["prototypes", "density", "quality", "confounders"])
    return d


@pytest.fixture
def hostile_dir(_hostile_module, monkeypatch):
    monkeypatch.setenv("CURATION_DATA_DIR", str(_hostile_module))
    return _hostile_module


def _markdown_values(at):
    els = [*at.markdown, *at.caption, *at.error, *at.warning, *at.info, *at.success, *at.subheader, *at.title]
    return [e.value for e in els]


@pytest.mark.parametrize("page", ["pages/overview.py", "pages/quality.py", "pages/long_tail.py",
                                  "pages/confounders.py", "pages/select.py", "pages/map.py"])
def test_user_strings_render_as_text(hostile_dir, page):
    at = _app(None if page == "pages/overview.py" else page)
    assert not at.exception
    for v in _markdown_values(at):
        for raw in ("![x](", "![p](", "<img", "**bold**", ":red[", "**0**", "<b>"):
            assert raw not in v, (page, v)
    texts = [t.value for t in at.text]
    if page == "pages/quality.py":
        assert any(HOSTILE in t for t in texts), texts[:5]  # the id is shown, as literal text


def test_run_analysis_button_runs_in_the_background(data_dir):
    db = data_dir / "demo.duckdb"
    at = _app()
    at.button(key="ov_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job = jobs.job_for(db)
    assert job is not None
    snap = job.wait(120)
    assert snap["status"] == "done", snap["error"]
    at.run()
    assert not at.exception
    with store.open_store(db) as s:
        assert len(s.runs("analysis")) == 1  # the stored run was reused: no second row


def test_label_columns_declared_on_overview_are_stored_and_reported(data_dir):
    db = data_dir / "demo.duckdb"
    at = _app()
    assert at.multiselect(key="ov_labels").value == ["finding"]  # the demo declares its label
    at.multiselect(key="ov_labels").set_value(["finding", "view"]).run()
    at.button(key="ov_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    snap = jobs.job_for(db).wait(240)
    assert snap["status"] == "done", snap["error"]
    with store.open_store(db) as s:
        assert s.label_columns() == ["finding", "view"]
        conf = analysis.load_table(s, snap["run_id"], "confounders").set_index("column")
    assert conf.loc["view", "role"] == "label"
    at.switch_page("pages/select.py").run()
    assert not at.exception
    shown = " ".join(str(x) for df in at.dataframe for x in df.value.index)
    assert "label_view_class_coverage" in shown or "label_view_class_coverage" in " ".join(
        str(v) for df in at.dataframe for v in df.value.to_numpy().ravel()), shown[:500]


def test_inspector_shows_the_stored_neighbours(read_only_app_data):
    from curation import analysis

    with store.open_store(read_only_app_data / "demo.duckdb") as s:
        nbr, _ = analysis.load_knn(s, runs.latest_run(s))
        ids = s.samples(["id"])["id"].tolist()
    at = _app("pages/map.py")
    at.session_state["inspect_row"] = 11
    at.run()
    assert not at.exception
    texts = [t.value for t in at.text]
    shown = [t.split("\n")[0] for t in texts if "\ncosine " in t]
    # every stored neighbour and nothing else (AppTest lists a grid column by column, hence the sort)
    assert sorted(shown) == sorted(ids[j] for j in nbr[11]) and len(shown) == nbr.shape[1]
    at.button(key=f"nbr_11_{nbr[11][0]}").click().run()  # a neighbour, one click away
    assert at.session_state["inspect_row"] == nbr[11][0]


def test_search_on_the_map_excludes_hits_from_the_subset(data_dir):
    at = _app("pages/map.py")
    at.text_input(key="map_search").set_value("pneumothorax").run()
    assert not at.exception
    assert any("caption(s) match" in c.value for c in at.caption)
    at.button(key="search_exclude").click().run()
    assert not at.exception and not at.error
    at.switch_page("pages/select.py").run()
    assert any(t.value.startswith("exclude set search-pneumothorax@") for t in at.text)
    with store.open_store(data_dir / "demo.duckdb") as s:
        inp = selection.load_inputs(s)
        caps = s.samples(["caption"])["caption"]
        refs = list(inp.id_sets)
    res = selection.select(inp, SelectionConfig(exclude_sets=tuple(refs)))
    assert not caps.iloc[res.selected].str.contains("pneumothorax", case=False).any()
    assert _metric(at, "Eligible") == f"{res.summary['eligible']:,}"
    at.button(key="rule_rm_0").click().run()  # removing the rule restores the default
    assert _metric(at, "Selected") == "1,000" and not [t for t in at.text if t.value.startswith("exclude set")]


def test_excluding_a_cluster_on_long_tail_reaches_select(read_only_app_data):
    at = _app("pages/long_tail.py")
    rare = [b.key for b in at.button if b.key and b.key.startswith("lt_excl_")]
    at.button(key=rare[0]).click().run()
    c = int(rare[0].split("_")[-1])
    at.switch_page("pages/select.py").run()
    res = selection.select(_inputs(read_only_app_data / "demo.duckdb"), SelectionConfig(exclude_clusters=(c,)))
    assert _metric(at, "Eligible") == f"{res.summary['eligible']:,}" and _qp(at, "exclude_clusters") == str(c)


def test_duplicate_groups_show_the_cosine_to_the_kept_sample(read_only_app_data):
    at = _app("pages/quality.py")
    assert not at.exception
    shown = [t.value for t in at.text if t.value.startswith("dropped: cosine ")]
    assert shown and all(float(t.split()[2]) > 0.95 for t in shown)  # eps 0.05: every drop above 1 - eps


def test_a_run_extended_from_the_cli_shows_in_the_open_app(demo_db, tmp_path, monkeypatch):
    """`analyze --steps quality` while the app is open re-records the same run id with more
    columns: the server's caches of that run (keyed by when it was recorded) read it again, so the
    Quality page shows the new step instead of failing on the cached tables."""
    d = _data_dir(tmp_path, monkeypatch, demo_db)
    db = d / "demo.duckdb"
    run_id = analysis.analyze(db, analysis.AnalysisConfig(), steps=["prototypes", "density"])
    at = _app("pages/long_tail.py")  # caches the run's frame (no quality columns yet)
    at.switch_page("pages/quality.py").run()
    assert not at.exception and any("quality" in w.value for w in at.warning)
    assert analysis.analyze(db, analysis.AnalysisConfig(), steps=["quality"]) == run_id  # the same run, extended
    at = _app("pages/long_tail.py")
    at.switch_page("pages/quality.py").run()
    assert not at.exception, at.exception
    assert not any("lacks the step" in w.value for w in at.warning)
    # the three axes drawn (the cached frame of the run before it had them said "Not computed")
    assert not any("Not computed" in i.value for i in at.info) and len(at.get("vega_lite_chart")) == 3
