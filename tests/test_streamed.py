"""Vectors at rest as shards and the analysis that reads them on demand (issue 26): the same tables
from shards as from the vectors inside the file, float16 shards close to them, interrupted analyses
resuming at the step where they stopped, and datasets whose shards went missing refused clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import kill_analysis_after_first_step
from curation import analysis, demo, store, vector_io
from curation.errors import CurationError, StateError

pytestmark = pytest.mark.xdist_group("streamed")

SPEC = demo.DemoSpec(n_rows=2400, dim=32, n_clusters=12, min_cluster=15)
NO_MAP = ("prototypes", "density", "quality", "confounders")


def _build(path: Path, monkeypatch, **kw) -> Path:
    monkeypatch.setattr(vector_io, "SHARD_ROWS", 700)  # several shards, the last one short
    demo.build(path, SPEC, images=False, **kw)
    return path


def _tables(db: Path) -> dict:
    with store.open_store(db) as s:
        rec = analysis.runs.best_analysis(s)
        names = analysis.table_names(rec.run_id)
        return {k: s.read_table(v) for k, v in names.items() if s.has_table(v)}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("layouts")
    out = {}
    for name, kw in {"inline": {}, "shards32": dict(vector_layout="shards"),
                     "shards16": dict(vector_layout="shards", vector_dtype="float16")}.items():
        out[name] = _build(d / f"{name}.duckdb", mp, **kw)
        analysis.analyze(out[name], steps=NO_MAP)
    mp.undo()
    return out


def test_shards_are_plain_npy_files_named_in_the_dataset(layouts):
    db = layouts["shards32"]
    with store.open_store(db) as s:
        info = s.meta["vectors"]
        assert s.sharded and info["dtype"] == "float32"
        assert [(r["kind"], r["start"], r["rows"]) for r in info["files"] if r["kind"] == "image"] == [
            ("image", 0, 700), ("image", 700, 700), ("image", 1400, 700), ("image", 2100, 300)]
        folder = vector_io.vectors_folder(db) / s.fingerprint
        whole = np.concatenate([np.load(folder / r["name"]) for r in info["files"] if r["kind"] == "text"])
        np.testing.assert_array_equal(whole, s.embeddings("text"))
        assert s.vector_source().verify() == []
        assert not s.has_table("embeddings")
    with store.open_store(layouts["inline"]) as s:
        assert not s.sharded and s.has_table("embeddings")
        # float32 shards hold the same bytes: the same fingerprint, so the same run ids
        fp_inline = s.fingerprint
    with store.open_store(db) as s:
        assert s.fingerprint == fp_inline
    with store.open_store(layouts["shards16"]) as s:
        assert s.meta["vectors"]["dtype"] == "float16" and s.fingerprint != fp_inline


def test_analysis_from_shards_equals_analysis_from_the_file(layouts):
    a, b = _tables(layouts["inline"]), _tables(layouts["shards32"])
    assert a.keys() == b.keys()
    for k in a:
        if hasattr(a[k], "equals"):
            assert a[k].equals(b[k]), k
    # nothing of the run is left beside the dataset once it is recorded
    assert not Path(str(layouts["shards32"]) + ".work").exists()


def test_float16_shards_agree_with_float32(layouts):
    """float16 moves each cosine by about 1e-4: fidelity stays within 2e-4, the duplicates and the
    density ranking hold; k-means on the demo's isotropic blobs (split arbitrarily by any k-means)
    moves some borders (measured here: ARI 0.86, bands 96% equal)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import adjusted_rand_score

    a, b = _tables(layouts["inline"])["samples"], _tables(layouts["shards16"])["samples"]
    assert np.abs(a.fidelity - b.fidelity).max() < 5e-4
    assert a.is_dup.sum() == b.is_dup.sum() and (a.is_dup == b.is_dup).mean() > 0.995
    assert spearmanr(a.knn_density, b.knn_density)[0] > 0.99
    assert adjusted_rand_score(a.prototype, b.prototype) > 0.8 and (a.band == b.band).mean() > 0.9


def test_a_killed_analysis_resumes_where_it_stopped(layouts, tmp_path, monkeypatch):
    """kill -9 once the first step is kept; the rerun reads it back and ends with the tables of an
    analysis that was never interrupted (the same data as layouts["shards32"], not yet analysed)."""
    db = _build(tmp_path / "k.duckdb", monkeypatch, vector_layout="shards")
    steps = ",".join(NO_MAP)
    cfg = analysis.resolve_space(analysis.AnalysisConfig(), ["image", "text"])
    with store.open_store(db) as s:
        if not cfg.label_columns and s.label_columns():
            cfg = analysis.replace(cfg, label_columns=tuple(s.label_columns()))
        run_id = analysis.run_id_for(cfg, s.fingerprint)
    work = analysis.work_folder(db, run_id)
    kill_analysis_after_first_step([db, "--steps", steps], work, timeout=120)
    assert (work / "step-prototypes").is_dir()
    seen = []
    analysis.analyze(db, steps=NO_MAP, progress=lambda step, done, total: seen.append(step))
    assert "prototypes: partition" not in seen  # the kept step was read back, not recomputed
    assert not work.exists()
    a, b = _tables(layouts["shards32"]), _tables(db)
    for k in a:
        if hasattr(a[k], "equals"):
            assert a[k].equals(b[k]), k


def test_interrupt_between_steps_in_process_keeps_what_finished(layouts, tmp_path):
    db = tmp_path / "i.duckdb"
    store.copy_dataset(layouts["inline"], db)

    def stop_at_quality(step, done, total):
        if step == "quality":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analysis.analyze(db, steps=NO_MAP, progress=stop_at_quality, force=True)
    kept = sorted(p.name for p in Path(str(db) + ".work").glob("*/step-*"))
    assert kept == ["step-density", "step-prototypes"]
    assert not list(Path(str(db) + ".work").glob("*/partitions"))  # the large copies never outlive the process
    analysis.analyze(db, steps=NO_MAP, force=False)  # the recorded run has these steps: nothing to do
    analysis.analyze(db, steps=NO_MAP, force=True)
    assert not Path(str(db) + ".work").exists()


def test_missing_or_damaged_shards_are_refused_with_the_fix(layouts, tmp_path, monkeypatch):
    db = _build(tmp_path / "m.duckdb", monkeypatch, vector_layout="shards")
    copy = tmp_path / "moved.duckdb"
    import shutil

    shutil.copy(db, copy)  # the file without its folder
    with store.open_store(copy) as s, pytest.raises(StateError, match=r"moved\.duckdb\.vectors.*copy_dataset"):
        s.vector_source()
    from curation import workflows

    assert "MISSING 8 of them" in workflows.describe(copy).vectors
    with store.open_store(db) as s:
        rec = s.meta["vectors"]["files"][1]
        f = vector_io.vectors_folder(db) / s.fingerprint / rec["name"]
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with store.open_store(db) as s:
        assert s.vector_source().verify() == [rec["name"]]
    f.write_bytes(bytes(data[:-100]))
    with store.open_store(db) as s, pytest.raises(StateError, match="cut short"):
        s.embeddings("image")


def test_replacing_a_sharded_dataset_keeps_one_folder(tmp_path, monkeypatch):
    db = _build(tmp_path / "r.duckdb", monkeypatch, vector_layout="shards")
    demo.build(db, demo.DemoSpec(n_rows=2400, dim=32, n_clusters=12, min_cluster=15, seed=1), images=False,
               vector_layout="shards", replace=True)
    with store.open_store(db) as s:
        assert [p.name for p in vector_io.vectors_folder(db).iterdir()] == [s.fingerprint]
    demo.build(db, SPEC, images=False, replace=True)  # back inside the file: the folder goes
    assert not vector_io.vectors_folder(db).exists()
    with pytest.raises(CurationError, match="float16 vectors need the shards layout"):
        demo.build(tmp_path / "x.duckdb", SPEC, images=False, vector_layout="inline", vector_dtype="float16")


def test_ingest_cli_writes_shards_on_request(tmp_path, run_cli):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 300
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(n)], "caption": ["a finding"] * n}), tmp_path / "m.parquet")
    np.save(tmp_path / "img.npy", rng.normal(size=(n, 16)).astype(np.float32))
    code, out, err = run_cli("ingest", str(tmp_path / "d.duckdb"), "--metadata", str(tmp_path / "m.parquet"),
                             "--image-emb", str(tmp_path / "img.npy"), "--vector-layout", "shards",
                             "--vector-dtype", "float16")
    assert code == 0, err
    assert "vectors 1 float16 shards beside the dataset file" in out


def test_values_beyond_float16_are_refused_naming_the_row_and_nothing_is_left(tmp_path):
    import pyarrow as pa

    v = np.ones((50, 8), np.float32)
    v[17, 3] = 1e5  # beyond float16's 65,504
    db = tmp_path / "f.duckdb"
    with pytest.raises(CurationError, match=r"row 17 .*--vector-dtype float32"):
        store.create_dataset(db, pa.table({"id": [f"r{i}" for i in range(50)]}), {"image": v},
                             vector_layout="shards", vector_dtype="float16")
    assert not db.exists() and not vector_io.vectors_folder(db).exists()


def test_shard_trouble_found_by_a_fuzz_run(tmp_path, monkeypatch):
    """Re-ingesting repairs a damaged shard; a shard with a garbled header, tiny vectors in float16,
    a file where the vectors folder goes, and a copy onto an existing folder are each one clear error."""
    import pyarrow as pa

    db = _build(tmp_path / "h.duckdb", monkeypatch, vector_layout="shards")
    with store.open_store(db) as s:
        folder = vector_io.vectors_folder(db) / s.fingerprint
    first = folder / "image-00000.npy"
    first.write_bytes(b"\x93NUMPY garbage" + bytes(200))
    with store.open_store(db) as s, pytest.raises(StateError, match="is damaged"):
        s.embeddings("image")
    _build(db, monkeypatch, vector_layout="shards", replace=True)  # the same content, written again
    with store.open_store(db) as s:
        assert s.vector_source().verify() == []
    with pytest.raises(CurationError, match="exists"):
        store.copy_dataset(db, db)
    v = np.ones((40, 8), np.float32)
    v[9] *= 1e-9
    with pytest.raises(CurationError, match="row 9 becomes all zeros in float16"):
        store.create_dataset(tmp_path / "z.duckdb", pa.table({"id": [f"r{i}" for i in range(40)]}), {"image": v},
                             vector_layout="shards", vector_dtype="float16")
    (tmp_path / "y.duckdb.vectors").write_text("in the way")
    with pytest.raises(CurationError, match="is in the way"):
        store.create_dataset(tmp_path / "y.duckdb", pa.table({"id": [f"r{i}" for i in range(40)]}),
                             {"image": np.ones((40, 8), np.float32)}, vector_layout="shards")
    assert not (tmp_path / "y.duckdb").exists() and not (tmp_path / "z.duckdb.vectors").exists()


def test_features_read_on_demand_equal_the_space_built_in_memory(tmp_path):
    """Row ranges, row sets (any order, repeats), one kind's half, and reads through a by-cluster
    partition all give the bytes spaces.build_space gives."""
    from curation.spaces import build_space

    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(5000, 8)).astype(np.float32), rng.normal(size=(5000, 4)).astype(np.float32)
    F = vector_io.Features(vector_io.ArraySource({"image": img, "text": txt}), ["image", "text"])
    X = build_space({"image": img, "text": txt})
    rows = rng.choice(5000, 3000)
    assert np.array_equal(F[10:4000], X[10:4000]) and np.array_equal(F[rows], X[rows])
    assert np.array_equal(F.half("text")[0:100], X[:100, 8:]) and np.array_equal(F[:, slice(0, 8)][0:5], X[:5, :8])
    F.partition(rng.integers(0, 7, 5000), tmp_path / "p", name="c")
    assert np.array_equal(F[rows], X[rows]) and np.array_equal(np.asarray(F), X)


def test_row_sets_from_float16_shards_convert_only_the_rows_asked_for(layouts):
    """A row set read from float16 shards comes back in float16 on request (spans are read whole,
    only the asked rows converted), equal to the float32 read, and the analysis space built from it
    is the one built from the whole range, bit for bit."""
    from curation.spaces import normalize

    with store.open_store(layouts["shards16"]) as s:
        src = s.vector_source()
        rows = np.random.default_rng(3).choice(src.n, 900)  # dense: spans read whole; repeats
        raw16 = src.read_rows("image", rows, stored=True)
        raw32 = src.read_rows("image", rows)
        assert raw16.dtype == np.float16 and raw32.dtype == np.float32
        assert np.array_equal(raw16.astype(np.float32), raw32)
        assert np.array_equal(raw32, src.read_range("image", 0, src.n)[rows])
        F = vector_io.Features(src, ["image", "text"])
        whole = np.asarray(F)
        assert np.array_equal(F[rows], whole[rows])
        assert np.array_equal(F[rows][:, F.slices["image"]], normalize(raw32) * np.float32(1 / np.sqrt(2)))
        src.close()


def test_query_copies_in_batches_give_the_same_neighbours(layouts, tmp_path):
    """At 10M the query copies (80 GB) are written, searched and removed in batches of lists under
    a disk budget: any budget gives the neighbours of one batch, with fine lists too, and no copy
    is left behind."""
    from curation import density, prototypes

    with store.open_store(layouts["shards16"]) as s:
        F, _ = analysis.features(s)
        rec = analysis.runs.best_analysis(s)
        assign = s.read_table(analysis.table_names(rec.run_id)["samples"], ["prototype"])["prototype"].to_numpy()
        cent = analysis.centroids_of(s.read_table(analysis.table_names(rec.run_id)["prototypes"]))
    try:
        probes = prototypes.nearest_prototypes(F, cent, 4)
        F.partition(assign, tmp_path / "part", name="prototypes")
        ref = density.knn_within_clusters(F, assign, probes, k=10, query_folder=tmp_path / "q1", centroids=cent,
                                          fine_max=50)
        small = density.knn_within_clusters(F, assign, probes, k=10, query_folder=tmp_path / "q2", centroids=cent,
                                            fine_max=50, copy_max_bytes=20_000)  # a batch per list or so
        mem = density.knn_within_clusters(np.asarray(F), assign, probes, k=10, centroids=cent, fine_max=50)
    finally:
        F.source.close()
    for a, b in ((ref, small), (ref, mem)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert list((tmp_path / "q2").iterdir()) == [] and list((tmp_path / "q1").iterdir()) == []
    assert np.bincount(assign).max() > 50  # lists were cut


def test_cluster_names_from_the_capped_captions(layouts, tmp_path, monkeypatch):
    """Above LABEL_CAPTIONS_MAX rows a cluster is named from its rows nearest the prototype, read
    by row: the step's names equal the names computed by hand from those rows' captions."""
    from curation import analysis_steps
    from curation.labels import cluster_labels

    db = tmp_path / "capped.duckdb"
    store.copy_dataset(layouts["shards32"], db)
    monkeypatch.setattr(analysis_steps, "LABEL_CAPTIONS_MAX", 20)  # clusters of ~200 rows
    analysis.analyze(db, steps=("prototypes",), force=True)
    t = _tables(db)
    with store.open_store(db) as s:
        rec = analysis.runs.best_analysis(s)
        df, _ = analysis.load(s, rec.run_id)
        caps = s.samples(["caption"])["caption"].to_numpy()
    assign, dist = df.prototype.to_numpy(), df.proto_dist.to_numpy()
    rows = analysis_steps.label_rows(assign, dist, 20)
    assert rows is not None and len(rows) == np.minimum(np.bincount(assign), 20).sum() < len(assign)
    want = cluster_labels(list(caps[rows]), assign[rows], len(t["prototypes"]),
                          centroids=analysis.centroids_of(t["prototypes"]))
    assert t["prototypes"]["label"].tolist() == want and any(want)


def test_side_tables_go_to_disk_after_their_step_and_come_back_equal(tmp_path):
    """A kept step's Arrow tables (the kNN graphs: 880 MB each at 10M) are handed on as datasets over
    their Parquet files, spilled tables too, and DuckDB reads them back equal when the run is recorded."""
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as ds

    from curation import checkpoint
    from curation.analysis_steps import StepResult

    knn = pa.table({"row": np.arange(5), "nbr": pa.FixedSizeListArray.from_arrays(
        pa.array(np.arange(15, dtype=np.int32)), 3)})
    other = pa.table({"row": np.arange(3), "x": [0.5, 1.5, 2.5]})
    res = StepResult(columns={"c": np.arange(5)}, tables={"knn": checkpoint.spill(tmp_path, "knn", knn),
                                                          "other": other}, outputs={})
    assert isinstance(res.tables["knn"], ds.FileSystemDataset)
    checkpoint.save(tmp_path, "density", res, 1.0)
    handed = checkpoint.on_disk(tmp_path, "density", res.tables)
    kept = checkpoint.load(tmp_path, "density")[1]
    con = duckdb.connect()
    for tables in (handed, kept):
        assert all(isinstance(t, ds.FileSystemDataset) for t in tables.values())
        for name, want in (("knn", knn), ("other", other)):
            con.register("v", tables[name])
            assert con.sql("SELECT * FROM v ORDER BY row").fetch_arrow_table().equals(want)
            con.unregister("v")
    assert checkpoint.spill(None, "knn", knn) is knn  # no work folder: kept in memory
