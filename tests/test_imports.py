import subprocess
import sys


def test_import_curation_is_light():
    """`import curation` (and the modules the app reads through) pulls in no heavy library."""
    code = ("import sys, curation, curation.store, curation.ingest, curation.demo, curation.cli, "
            "curation.embed, curation.embed_ray, curation.reward; "
            "heavy = [m for m in ('streamlit', 'torch', 'open_clip', 'duckdb', 'faiss', 'umap', 'hdbscan', 'ray') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "curation", "--help"], capture_output=True, text=True).stdout
    for cmd in ("demo", "embed", "ingest", "reward", "info"):
        assert cmd in out
