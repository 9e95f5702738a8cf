"""`analyze --backend ray` (issue 27) on the session's two-node Ray cluster (tests/ray_cluster.py):
the same run id and tables as the analysis here, so `select` writes byte-identical manifests; a
driver killed after the first step resumes to the same tables; an unreachable cluster, a missing
package on the workers and a flag without its backend are one clear error each."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import kill_analysis_after_first_step
from curation import analysis, demo, parallel, store, vector_io
from curation.errors import CurationError

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.xdist_group("ray")  # the worker that holds the session's cluster

SPEC = demo.DemoSpec(n_rows=1200, dim=32, n_clusters=10, min_cluster=15)


def _build(path: Path) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setattr(vector_io, "SHARD_ROWS", 350)  # four shards, the last one short
    try:
        demo.build(path, SPEC, images=False, vector_layout="shards")
    finally:
        mp.undo()
    return path


def _tables(db: Path, run_id: str) -> dict:
    with store.open_store(db) as s:
        names = analysis.table_names(run_id)
        return {k: s.read_table(v) for k, v in names.items() if s.has_table(v)}


def _assert_same_tables(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equals(b[k]), k  # every column, every row, exactly


def _sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pools(cluster, tmp_path_factory):
    """The same pool analysed here and on the cluster (its own copy: the run would be cached)."""
    address, _ = cluster
    if ray.is_initialized():  # analyze connects with its own runtime_env, as a user's driver would
        ray.shutdown()
    d = tmp_path_factory.mktemp("ray-analysis")
    here, there = _build(d / "here.duckdb"), d / "there.duckdb"
    store.copy_dataset(here, there)
    with store.open_store(there) as s:
        assert len(s.meta["vectors"]["files"]) == 8  # 4 shards x (image, text)
    run_here = analysis.analyze(here)
    run_there = analysis.analyze(there, backend="ray", address=address)
    return here, there, run_here, run_there


def test_the_large_pool_paths_on_two_nodes_equal_the_ones_here(cluster, tmp_path, monkeypatch):
    """What only 10M-row pools reach, on a small pool: lists above 60 rows cut into fine lists,
    FPS in a projection above 60 members, the query copies in batches of about 16 kB, the map
    fitted on 300 rows and the others placed through the HNSW graph from the projection's scratch
    file. The cluster gives the tables this machine gives, and they differ from the default
    path's (it ran)."""
    from curation import density, projection, prototypes

    address, _ = cluster
    here, there = _build(tmp_path / "here.duckdb"), tmp_path / "there.duckdb"
    store.copy_dataset(here, there)
    steps = ("prototypes", "density", "map")
    cfg = analysis.AnalysisConfig(map_fit_max=300)
    monkeypatch.setattr(density, "FINE_MAX", 60)
    monkeypatch.setattr(prototypes, "FPS_FULL_MAX", 60)
    monkeypatch.setattr(density, "QUERY_COPY_MAX_BYTES", 16_000)
    monkeypatch.setattr(projection, "PLACE_EXACT_MAX", 100)
    run_here = analysis.analyze(here, cfg, steps=steps)
    run_there = analysis.analyze(there, cfg, backend="ray", address=address, steps=steps)
    a, b = _tables(here, run_here), _tables(there, run_there)
    _assert_same_tables(a, b)
    monkeypatch.undo()
    plain = tmp_path / "plain.duckdb"
    store.copy_dataset(here, plain)
    analysis.analyze(plain, cfg, steps=steps, force=True)
    assert not a["knn"].equals(_tables(plain, run_here)["knn"])
    # the rows UMAP was not fitted on were placed (through the graph: above PLACE_EXACT_MAX)
    assert int((~a["samples"]["map_fitted"]).sum()) == SPEC.n_rows - 300


def test_the_analysis_on_two_nodes_equals_the_one_here(pools, run_cli, tmp_path):
    here, there, run_here, run_there = pools
    assert run_here == run_there
    _assert_same_tables(_tables(here, run_here), _tables(there, run_there))
    with store.open_store(there) as s:
        rec = analysis.runs.best_analysis(s)
    assert rec.outputs["backend"] == {"name": "ray", "workers": 2}
    from curation import workflows

    assert "ran on: a Ray cluster of 2 CPUs" in workflows.analysis_report(there, run_there)
    assert "ran on" not in workflows.analysis_report(here, run_here)
    assert not Path(str(there) + ".work").exists()  # nothing of the run left beside the dataset
    # the default selection and a stratified one: the same manifest bytes
    for name, extra in (("default", []), ("balanced", ["--confounders", "site", "--mode", "balanced"])):
        outs = []
        for db in (here, there):
            out = tmp_path / f"{db.stem}-{name}.parquet"
            code, _, err = run_cli("select", db, "--budget", "0.3", *extra, "--out", out)
            assert code == 0, err
            outs.append(out)
        assert _sha(outs[0]) == _sha(outs[1]), name


def test_a_killed_driver_resumes_on_the_cluster(pools, cluster, tmp_path):
    """kill -9 the driver once the first step is kept; a new driver reads it back and ends with the
    tables of the uninterrupted analysis."""
    here, _, run_here, _ = pools
    address, _ = cluster
    db = _build(tmp_path / "k.duckdb")  # the same pool, not analysed yet
    work = analysis.work_folder(db, run_here)
    kill_analysis_after_first_step([db, "--backend", "ray", "--address", address], work)
    assert (work / "step-prototypes").is_dir() and not (work / "step-map").exists()
    seen = []
    run = analysis.analyze(db, backend="ray", address=address, progress=lambda step, done, total: seen.append(step))
    assert run == run_here
    assert "prototypes: partition" not in seen  # the kept step was read back, not recomputed
    assert not work.exists()
    _assert_same_tables(_tables(here, run_here), _tables(db, run))


def test_cluster_errors_are_one_clear_message(cluster, pools, run_cli):
    address, _ = cluster
    here = pools[0]
    with pytest.raises(CurationError, match="could not reach the Ray cluster at 127.0.0.1:1"):
        parallel.RayRunner("127.0.0.1:1")
    code, _, err = run_cli("analyze", here, "--address", address)
    assert code == 2 and "--address goes with --backend ray" in err
    def needs_a_missing_package():  # (a local function: Ray ships it by value)
        import curation_not_installed_anywhere  # noqa: F401

    r = parallel.RayRunner(address)
    try:
        with pytest.raises(CurationError, match="lacks the package 'curation_not_installed_anywhere'"):
            list(r.map(needs_a_missing_package, [()]))
    finally:
        r.close()


def test_the_app_job_runs_on_the_cluster(pools, cluster, tmp_path):
    """The Overview page's background job (a thread of the app's server) with backend ray: the
    same run as here."""
    from curation import jobs

    here, _, run_here, _ = pools
    db = tmp_path / "app.duckdb"
    store.copy_dataset(here, db)
    job = jobs.start_analysis(db, force=True, steps=("prototypes", "density"), backend="ray", address=cluster[0])
    snap = job.wait(timeout=300)
    assert snap["status"] == "done", snap
    assert snap["run_id"] == run_here
    a, b = _tables(here, run_here), _tables(db, run_here)
    assert a["knn"].equals(b["knn"]) and a["prototypes"].equals(b["prototypes"])
