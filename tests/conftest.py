"""Shared fixtures: small demo datasets built once per test session."""

from pathlib import Path

import pytest

MEDPIX = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "medpix"


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> Path:
    """A 4,000-row demo (64-d, with images), the same for every test that reads it."""
    from curation import demo

    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    demo.build(path, demo.DemoSpec(n_rows=4000, dim=64, n_clusters=20, min_cluster=15))
    return path


@pytest.fixture
def run_cli(capsys):
    """Run `python -m curation ...` in-process; returns (exit code, stdout, stderr)."""
    from curation.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def analyzed_db(demo_db, tmp_path_factory) -> Path:
    """A copy of the demo with one full default analysis (UMAP's numba compile makes this the
    slowest fixture: about a minute, once per session)."""
    import shutil

    from curation import analysis

    d = tmp_path_factory.mktemp("analyzed")
    path = d / "demo.duckdb"
    shutil.copy(demo_db, path)
    shutil.copytree(demo_db.parent / "demo_images", d / "demo_images")
    analysis.analyze(path, analysis.AnalysisConfig())
    return path


@pytest.fixture
def analyzed_copy(analyzed_db, tmp_path) -> Path:
    """A private copy of the analysed demo (for tests that write to it); images are linked."""
    import shutil

    d = tmp_path / "ds"
    d.mkdir()
    shutil.copy(analyzed_db, d / "demo.duckdb")
    (d / "demo_images").symlink_to(analyzed_db.parent / "demo_images")
    return d / "demo.duckdb"
