"""The app through streamlit.testing.v1.AppTest: every page renders on the demo without exceptions."""

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def data_dir(demo_db, tmp_path, monkeypatch):
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(demo_db, d / "demo.duckdb")
    shutil.copytree(demo_db.parent / "demo_images", d / "demo_images")
    monkeypatch.setenv("CURATION_DATA_DIR", str(d))
    return d


def _run(page=None):
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_overview_shows_the_demo_summary(data_dir):
    at = _run()
    assert at.title[0].value == "Overview"
    assert [m.value for m in at.metric][:3] == ["4,000", "64", "64"]
    assert at.sidebar.selectbox[0].value == "demo"


def test_no_dataset_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATION_DATA_DIR", str(tmp_path))
    at = _run()
    assert any("curation demo" in w.value for w in at.sidebar.warning)
