"""The app through streamlit.testing.v1.AppTest: every page on the demo, knobs set by key,
shown counts equal to select(), export equal to the CLI's, and bad states as messages."""

import hashlib
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import APP, data_dir_copy
from app_helpers import metric as _metric
from app_helpers import open_app as _app
from curation import runs, selection, store
from curation.selection import Gate, SelectionConfig

PAGES = ["pages/map.py", "pages/long_tail.py", "pages/confounders.py", "pages/quality.py", "pages/select.py"]


@pytest.fixture
def data_dir(analyzed_db, tmp_path, monkeypatch):
    return data_dir_copy(tmp_path, monkeypatch, analyzed_db)


def test_overview_shows_the_demo_summary(read_only_app_data):
    at = _app()
    assert at.title[0].value == "Overview"
    assert [m.value for m in at.metric][:3] == ["4,000", "64", "64"]
    assert at.sidebar.selectbox[0].value == "demo"
    assert any(md.value.startswith("Run analysis\\-") for md in at.markdown), [m.value for m in at.markdown]
    assert "near-duplicate groups" in at.code[0].value  # the CLI's report of the run


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(read_only_app_data, page):
    at = _app(page)
    assert not at.error, [e.value for e in at.error]
    if page == "pages/map.py":
        assert at.get("plotly_chart"), "no map on the page"
    elif page != "pages/confounders.py":
        assert at.get("vega_lite_chart"), "no chart on the page"


def _inputs(db):
    with store.open_store(db) as s:
        return selection.load_inputs(s, runs.latest_run(s))


def test_select_page_counts_match_select(read_only_app_data):
    at = _app("pages/select.py")
    at.slider(key="sel_budget").set_value(0.1).run()
    at.multiselect(key="sel_confounders").set_value(["site"]).run()
    at.selectbox(key="sel_mode").set_value("balanced").run()
    at.slider(key="sel_gate_fidelity").set_value(0.9).run()
    assert not at.exception
    res = selection.select(_inputs(read_only_app_data / "demo.duckdb"), SelectionConfig(
        budget=0.1, confounders=("site",), mode="balanced", gates=(Gate("fidelity", top_q=0.9),)))
    assert _metric(at, "Selected") == f"{len(res.selected):,}" == "400"
    assert _metric(at, "Eligible") == f"{res.summary['eligible']:,}"
    assert at.query_params["budget"] in ("0.1", ["0.1"]) and at.query_params["confounders"] in ("site", ["site"])


def test_export_from_the_page_equals_the_cli(data_dir, run_cli, tmp_path):
    at = _app("pages/select.py")
    at.slider(key="sel_budget").set_value(0.2).run()
    at.multiselect(key="sel_confounders").set_value(["scanner"]).run()
    at.text_input(key="exp_name").set_value("fromapp").run()
    at.button(key="exp_go").click().run()
    assert not at.exception and not at.error
    page_file = data_dir / "exports" / "fromapp.parquet"
    code, _, err = run_cli("select", data_dir / "demo.duckdb", "--budget", "0.2", "--confounders", "scanner",
                           "--out", tmp_path / "cli.parquet")
    assert code == 0, err
    sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert sha(page_file) == sha(tmp_path / "cli.parquet")
    # both exports are recorded in the dataset's runs, with the same fields (issue 23/25)
    from curation import runs

    with store.open_store(data_dir / "demo.duckdb") as s:
        recs = runs.list_runs(s, "selection")
    assert [Path(r.outputs["manifest"]).name for r in recs] == ["fromapp.parquet", "cli.parquet"]
    assert recs[0].config == recs[1].config and set(recs[0].outputs) == set(recs[1].outputs)
    assert recs[0].outputs["sha256"] == recs[1].outputs["sha256"] == sha(page_file)
    # exporting the same name again: the app's words, not the command line's
    at.button(key="exp_go").click().run()
    msg = " ".join(e.value for e in at.error)
    assert "Overwrite an existing export of this name" in msg and "--overwrite" not in msg, msg


def test_url_state_is_restored(read_only_app_data):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["budget"] = "0.05"
    at.query_params["mode"] = "tempered"
    at.run()
    at.switch_page("pages/select.py").run()
    assert at.slider(key="sel_budget").value == 0.05 and at.selectbox(key="sel_mode").value == "tempered"
    assert _metric(at, "Selected") == "200"


def test_a_config_that_selects_nothing_is_a_message(read_only_app_data):
    at = _app("pages/select.py")
    at.selectbox(key="sel_filter_col").set_value("age").run()
    at.selectbox(key="sel_filter_op").set_value(">").run()
    at.text_input(key="sel_filter_value").set_value("1000").run()
    assert not at.exception
    assert any("selects nothing" in w.value for w in at.warning)


def test_no_analysis_yet_is_a_message(demo_db, tmp_path, monkeypatch):
    data_dir_copy(tmp_path, monkeypatch, demo_db)
    for page in PAGES:
        at = _app(page)
        assert any("no analysis yet" in w.value for w in at.warning), page


def test_missing_image_is_a_message(analyzed_db, tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(analyzed_db, d / "demo.duckdb")
    (d / "demo_images").mkdir()  # the thumbnails are gone
    monkeypatch.setenv("CURATION_DATA_DIR", str(d))
    at = _app("pages/long_tail.py")
    assert any("missing" in t.value for t in at.text)


def test_no_dataset_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATION_DATA_DIR", str(tmp_path))
    at = _app()
    assert any("curation demo" in w.value for w in at.sidebar.warning)
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception


def test_brushed_region_selects_the_rows_inside():
    import pandas as pd

    from pages import _views

    df = pd.DataFrame({"map_x": [0.0, 1.0, 2.0, 3.0], "map_y": [0.0, 1.0, 2.0, 3.0]})
    assert _views.rows_in_region(df, {"map_x": [2.5, 0.5], "map_y": [0.5, 2.5]}).index.tolist() == [1, 2]
    assert _views.rows_in_region(df, None).empty and _views.rows_in_region(df, {"map_x": [0, 1]}).empty


def test_quality_page_reward_model_train_score_and_gate(data_dir, tmp_path):
    """Ratings stored -> Train button -> held-out r in the table -> Score button -> reward histograms
    and gates; the Select page's reward gate gives the counts select() gives."""
    import pandas as pd

    from curation import demo, reward
    from curation import schema as S

    db = data_dir / "demo.duckdb"
    r = demo.planted_ratings(db, 2000, seed=0)
    with store.open_store(db) as s:
        ids = s.samples(["id"])["id"]
    pos = pd.Series(range(len(ids)), index=ids)
    stored = pd.DataFrame({S.ROW: pos[r["id"]].to_numpy(), S.ID: r["id"], "source": "mllm:test",
                           "prompt_version": reward.PROMPT_VERSION, "created": "2026-11-23T00:00:00",
                           "status": "ok", "fidelity": r["fidelity"], "consistency": r["consistency"],
                           "attempts": 1, "answer": ""})
    reward._append_ratings(db, stored)
    at = _app("pages/quality.py")
    assert _metric(at, "Stored ratings") == "2,000" and _metric(at, "Trained models") == "0"
    at.button(key="reward_train").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert table["r (fidelity)"].iloc[0] >= 0.6 and table["r (consistency)"].iloc[0] >= 0.6
    at.button(key="reward_score").click().run()
    assert not at.exception
    assert _metric(at, "Pool scored") == "by the newest model"
    assert any(sub.value == "Reward: fidelity (rating scale)" for sub in at.subheader)
    at.switch_page("pages/select.py").run()
    at.slider(key="sel_gate_reward_fidelity").set_value(0.9).run()
    assert not at.exception and not at.error
    res = selection.select(_inputs(db), SelectionConfig(gates=(Gate("reward_fidelity", top_q=0.9),)))
    assert _metric(at, "Selected") == f"{len(res.selected):,}"
    assert _metric(at, "Eligible") == f"{res.summary['eligible']:,}"


def test_streamlit_config_keeps_patient_data_local():
    """Localhost only, no usage statistics, XSRF on, and no error details: an exception shows a
    short message without traceback or "Ask Google / ChatGPT" links that would carry its text out."""
    import tomllib

    cfg = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "localhost" and cfg["server"]["enableXsrfProtection"] is True
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["showErrorDetails"] == "none"
