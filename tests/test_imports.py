import subprocess
import sys


def test_import_curation_is_light():
    """`import curation` (and the modules the app reads through) pulls in no heavy library."""
    code = ("import sys, curation, curation.store, curation.ingest, curation.demo, curation.cli; "
            "heavy = [m for m in ('streamlit', 'torch', 'open_clip', 'duckdb', 'faiss', 'umap', 'hdbscan') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "curation", "--help"], capture_output=True, text=True).stdout
    for cmd in ("demo", "ingest", "info"):
        assert cmd in out
