"""What the app tests share: a fresh AppTest session on a page, a private data folder, a metric's value."""

import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def data_dir_copy(tmp_path, monkeypatch, db):
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(db, d / "demo.duckdb")
    (d / "demo_images").symlink_to(db.parent / "demo_images")
    monkeypatch.setenv("CURATION_DATA_DIR", str(d))
    return d


def open_app(page=None, params=None):
    """A fresh AppTest session (URL ``params`` optional), opened on ``page``, with no exception."""
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in (params or {}).items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)
