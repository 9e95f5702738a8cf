"""The run model: cached reruns, partial runs, unique run ids, background analysis, --space auto."""

import json
import time

import numpy as np
import pytest

from curation import CurationError, analysis, jobs, runs, selection, store
from curation.errors import StateError


def _runs(db):
    with store.open_store(db) as s:
        return runs.list_runs(s, "analysis")


def _tables(db, run_id):
    with store.open_store(db) as s:
        return {k: s.read_table(v) for k, v in analysis.table_names(run_id).items() if s.has_table(v)}


def test_analyze_twice_is_cached_one_row_identical_outputs(analyzed_copy, run_cli):
    before = _runs(analyzed_copy)
    tables = _tables(analyzed_copy, before[-1].run_id)
    t = time.perf_counter()
    code, out, err = run_cli("analyze", analyzed_copy)
    took = time.perf_counter() - t
    assert code == 0, err
    assert took < 1.0, f"cached analyze took {took:.2f} s"
    assert "already stored" in out and "near-duplicate groups" in out
    after = _runs(analyzed_copy)
    assert [r.run_id for r in after] == [r.run_id for r in before] and len(after) == 1
    again = _tables(analyzed_copy, after[-1].run_id)
    for name, df in tables.items():
        assert df.equals(again[name]), name


def test_force_recomputes_the_same_run_in_place(analyzed_copy):
    rid = _runs(analyzed_copy)[-1].run_id
    before = _tables(analyzed_copy, rid)["samples"]
    again = analysis.analyze(analyzed_copy, analysis.AnalysisConfig(), steps=["prototypes", "density"], force=True)
    assert again == rid and len(_runs(analyzed_copy)) == 1
    after = _tables(analyzed_copy, rid)["samples"]
    for c in ("prototype", "band", "fps_rank", "dup_group", "map_x"):  # deterministic; map kept from before
        assert np.array_equal(before[c].to_numpy(), after[c].to_numpy()), c
    assert set(_runs(analyzed_copy)[-1].steps) == set(analysis.STEPS)


def test_partial_run_after_full_run_keeps_select_working(analyzed_copy, run_cli, tmp_path):
    full = _runs(analyzed_copy)[-1].run_id
    code, out, err = run_cli("analyze", analyzed_copy, "--steps", "quality", "--seed", "1")
    assert code == 0, err
    rs = _runs(analyzed_copy)
    partial = rs[-1]
    assert partial.run_id != full and partial.steps == ("quality",)
    assert partial.outputs["fidelity_reason"] == "available" and "fidelity_reason" not in partial.timings
    assert "image_prototype" in _tables(analyzed_copy, partial.run_id)["samples"]  # explicit, not hidden
    with store.open_store(analyzed_copy) as s:
        assert runs.latest_run(s) == partial.run_id
        assert runs.latest_run(s, runs.SELECTION_NEEDS) == full
        assert runs.best_analysis(s).run_id == full
    code, out, err = run_cli("select", analyzed_copy, "--budget", "0.25", "--out", tmp_path / "m.parquet")
    assert code == 0, err and "selected 1,000 of 4,000" in out
    side = json.loads((tmp_path / "m.parquet.sidecar.json").read_text())
    assert side["analysis_run"] == full
    # naming the partial run explicitly is refused with the missing steps and the fix
    code, _, err = run_cli("select", analyzed_copy, "--budget", "0.25", "--analysis-run", partial.run_id,
                           "--out", tmp_path / "n.parquet")
    assert code == 2 and "lacks the step(s) prototypes, density" in err and not (tmp_path / "n.parquet").exists()


def test_more_steps_of_a_config_join_its_run(demo_db, tmp_path):
    import shutil

    db = tmp_path / "d.duckdb"
    shutil.copy(demo_db, db)
    cfg = analysis.AnalysisConfig(seed=3)
    rid = analysis.analyze(db, cfg, steps=["prototypes"])
    assert _runs(db)[-1].steps == ("prototypes",)
    with store.open_store(db) as s, pytest.raises(StateError, match="lacks the step"):
        selection.load_inputs(s, rid)
    assert analysis.analyze(db, cfg, steps=["density"]) == rid
    rs = _runs(db)
    assert len(rs) == 1 and rs[0].steps == ("prototypes", "density")
    with store.open_store(db) as s:
        inp = selection.load_inputs(s, rid)
    assert inp.n == 4000 and "knn_density" in _tables(db, rid)["samples"]


def test_unknown_analysis_run_is_one_clear_line(analyzed_copy, run_cli, tmp_path):
    code, _, err = run_cli("select", analyzed_copy, "--budget", "10", "--analysis-run", "bogus",
                           "--out", tmp_path / "m.parquet")
    assert code == 2 and "no analysis run 'bogus'" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_run_ids_are_a_primary_key(tmp_path, demo_db):
    import shutil

    db = tmp_path / "d.duckdb"
    shutil.copy(demo_db, db)
    with store.open_store(db, read_only=False) as s:
        s.record_run("analysis", {"k": 3}, {"total": 1.0}, {"steps": ["prototypes"]}, run_id="analysis-x")
        s.record_run("analysis", {"k": 3}, {"total": 2.0}, {"steps": ["prototypes", "density"]}, run_id="analysis-x")
        df = s.runs("analysis")
        assert df["run_id"].tolist() == ["analysis-x"]
        assert json.loads(df["outputs"].iloc[0])["steps"] == ["prototypes", "density"]
        import duckdb

        with pytest.raises(duckdb.ConstraintException, match="(?i)duplicate key"):
            s.con.execute("INSERT INTO runs SELECT * FROM runs")


def test_an_old_runs_table_with_repeated_ids_is_migrated(tmp_path, demo_db):
    """Files written before the primary key may hold a repeated id (the bug): the next write keeps
    the last row of each id and adds the key."""
    import shutil

    import pandas as pd

    db = tmp_path / "d.duckdb"
    shutil.copy(demo_db, db)
    row = {"run_id": "analysis-old", "kind": "analysis", "created": "2026-01-01T00:00:00", "config": "{}",
           "fingerprint": "f", "version": "0", "timings": "{}", "outputs": '{"steps": []}'}
    old = pd.DataFrame([row, {**row, "outputs": '{"steps": ["prototypes"]}'}])
    with store.open_store(db, read_only=False) as s:
        s.write_tables({"runs": old})
        s.record_run("selection", {"budget": 1})
        df = s.runs()
    assert df["run_id"].tolist().count("analysis-old") == 1
    assert json.loads(df.set_index("run_id").loc["analysis-old", "outputs"])["steps"] == ["prototypes"]


def test_space_auto_uses_the_modality_present(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    n = 300
    (tmp_path / "meta.csv").write_text("id,site\n" + "".join(f"s{i},{'AB'[i % 2]}\n" for i in range(n)))
    np.save(tmp_path / "img.npy", rng.normal(size=(n, 16)).astype(np.float32))
    db = tmp_path / "img.duckdb"
    assert run_cli("ingest", db, "--metadata", tmp_path / "meta.csv", "--image-emb", tmp_path / "img.npy")[0] == 0
    code, out, err = run_cli("analyze", db, "--steps", "prototypes,density")
    assert code == 0, err
    assert "space image" in out
    with store.open_store(db) as s:
        assert runs.latest(s).config["space"] == "image"


def test_background_analysis_refuses_a_second_start_and_readers_keep_reading(demo_db, tmp_path):
    import shutil

    db = tmp_path / "bg.duckdb"
    shutil.copy(demo_db, db)
    job = jobs.start_analysis(db, analysis.AnalysisConfig(seed=5), steps=("prototypes", "density"))
    with pytest.raises(CurationError, match="already running"):
        jobs.start_analysis(db, analysis.AnalysisConfig(seed=5), steps=("prototypes", "density"))
    reads = 0
    while job.snapshot()["status"] == "running":  # the dataset stays readable while it computes
        with store.open_store(db) as s:
            assert s.n_rows == 4000
        reads += 1
        time.sleep(0.05)
    snap = job.wait(60)
    assert snap["status"] == "done", snap["error"]
    assert reads > 0 and snap["fraction"] == 1.0
    with store.open_store(db) as s:
        assert runs.latest_run(s, runs.SELECTION_NEEDS) == snap["run_id"]
    # finished: a new start is allowed (and, the run being stored, returns at once)
    assert jobs.start_analysis(db, analysis.AnalysisConfig(seed=5), steps=("prototypes",)).wait(30)["status"] == "done"


def test_background_failure_is_a_message(tmp_path, demo_db):
    import shutil

    db = tmp_path / "bad.duckdb"
    shutil.copy(demo_db, db)
    job = jobs.start_analysis(db, analysis.AnalysisConfig(k=10**7), steps=("prototypes",))
    snap = job.wait(30)
    assert snap["status"] == "failed" and "k=10000000 must be between 1" in snap["error"]


@pytest.mark.parametrize("text, expected", [("0.25", 0.25), ("5000", 5000), ("1", 1), ("1.0", 1.0), ("1e3", 1000)])
def test_parse_budget_accepts(text, expected):
    v = selection.parse_budget(text)
    assert v == expected and type(v) is type(expected)


@pytest.mark.parametrize("text", ["-1", "0", "inf", "nan", "1e400", "2.5", "lots", ""])
def test_parse_budget_refuses(text):
    with pytest.raises(CurationError, match="budget"):
        selection.parse_budget(text)


@pytest.mark.parametrize("text, column, op, value", [
    ("age in 30,40", "age", "in", [30, 40]),
    ("site in A, B", "site", "in", ["A", "B"]),
    ("site == A", "site", "==", "A"),
    ("age >= 18", "age", ">=", 18),
    ("sex is null", "sex", "is null", None),
])
def test_one_filter_parser_for_cli_and_app(text, column, op, value):
    f = selection.parse_filter(text)
    assert (f.column, f.op, f.value) == (column, op, value)
    assert selection.make_filter(column, op, text.split(op, 1)[1]) == f


@pytest.mark.parametrize("text, message", [
    ('site == ["A"]', "JSON list"), ("age ==", "needs a value"), ("age ~ 3", "COLUMN OP VALUE")])
def test_filter_parser_refuses(text, message):
    with pytest.raises(CurationError, match=message):
        selection.parse_filter(text)
