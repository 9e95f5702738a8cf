import numpy as np
import pyarrow as pa
import pytest

from curation import CurationError, images, store
from curation.errors import StateError


def _samples(n):
    return pa.table({"id": [f"s{i}" for i in range(n)], "site": ["a", "b"] * (n // 2)})


def test_roundtrip_vectors_of_different_dims(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((100, 48)).astype(np.float32)
    txt = rng.standard_normal((100, 16)).astype(np.float16)
    fp = store.create_dataset(tmp_path / "d.duckdb", _samples(100), {"image": img, "text": txt})
    with store.open_store(tmp_path / "d.duckdb") as s:
        v = s.vectors()
        assert v["image"].dtype == np.float32 and v["text"].dtype == np.float32
        np.testing.assert_array_equal(v["image"], img)
        np.testing.assert_array_equal(v["text"], txt.astype(np.float32))
        assert s.fingerprint == fp and s.n_rows == 100
        assert s.dim("image") == 48 and s.dim("text") == 16
        assert list(s.samples()["id"][:3]) == ["s0", "s1", "s2"]
        assert s.metadata_columns() == ["site"]


def test_absent_kind_reads_as_none(tmp_path):
    img = np.ones((10, 4), np.float32)
    store.create_dataset(tmp_path / "d.duckdb", _samples(10), {"image": img, "text": None})
    with store.open_store(tmp_path / "d.duckdb") as s:
        assert s.embeddings("text") is None and s.dim("text") is None
        assert s.embeddings("image").shape == (10, 4)


def test_fingerprint_changes_with_any_value(tmp_path):
    img = np.ones((10, 4), np.float32)
    a = store.create_dataset(tmp_path / "a.duckdb", _samples(10), {"image": img})
    img2 = img.copy()
    img2[3, 2] = 2.0
    b = store.create_dataset(tmp_path / "b.duckdb", _samples(10), {"image": img2})
    c = store.create_dataset(tmp_path / "c.duckdb", _samples(10), {"image": img})
    assert a != b and a == c


def test_existing_dataset_refused_without_replace(tmp_path):
    img = np.ones((10, 4), np.float32)
    store.create_dataset(tmp_path / "d.duckdb", _samples(10), {"image": img})
    with pytest.raises(CurationError, match="--replace"):
        store.create_dataset(tmp_path / "d.duckdb", _samples(10), {"image": img})


def test_failed_replace_leaves_old_file(tmp_path, monkeypatch):
    img = np.ones((10, 4), np.float32)
    fp = store.create_dataset(tmp_path / "d.duckdb", _samples(10), {"image": img})
    bad_extra = {"broken": object()}  # registering an object fails halfway through the write
    with pytest.raises(CurationError, match=r"cannot write dataset .*not suitable.*Nothing was changed"):
        store.create_dataset(tmp_path / "d.duckdb", _samples(20), {"image": np.ones((20, 4), np.float32)},
                             replace=True, extra_tables=bad_extra)
    with store.open_store(tmp_path / "d.duckdb") as s:
        assert s.fingerprint == fp and s.n_rows == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.duckdb"]  # no temp file left


def test_write_tables_is_atomic(tmp_path):
    import pandas as pd

    store.create_dataset(tmp_path / "d.duckdb", _samples(10), {"image": np.ones((10, 4), np.float32)})
    with store.open_store(tmp_path / "d.duckdb", read_only=False) as s:
        s.write_tables({"t1": pd.DataFrame({"x": [1, 2]})})
        with pytest.raises(CurationError, match=r"cannot write to dataset .*not suitable.*Nothing was changed"):
            s.write_tables({"t1": pd.DataFrame({"x": [9, 9, 9]}), "t2": object()})
        assert s.read_table("t1")["x"].tolist() == [1, 2]
        assert not s.has_table("t2")


def test_table_lookups_on_writable_and_read_only_handles(tmp_path):
    """A writable handle sees its own new tables at once, and asking for a missing table inside its
    write transaction does not abort it; a read-only handle answers the same, with column types."""
    import pandas as pd

    store.create_dataset(tmp_path / "d.duckdb", _samples(10), {"image": np.ones((10, 4), np.float32)})
    with store.open_store(tmp_path / "d.duckdb", read_only=False) as s:
        assert not s.has_table("t1") and s.table_columns("t1") == []
        s.write_tables({"t1": pd.DataFrame({"x": [1, 2], "y": ["a", "b"]})})
        assert s.has_table("t1") and s.table_columns("t1") == ["x", "y"]
        asked = []
        s._transaction(lambda: asked.append(s.has_table("nosuch")) or s._replace_tables(
            {"t2": pd.DataFrame({"z": [3]})}))
        assert asked == [False] and s.read_table("t2")["z"].tolist() == [3]
    with store.open_store(tmp_path / "d.duckdb") as s:
        for _ in range(2):  # the second answers come from the handle's memory: the same
            assert s.has_table("t1") and s.has_table("t2") and not s.has_table("nosuch")
            assert s.table_columns("t1") == ["x", "y"] and s.table_columns("nosuch") == []
            assert [c for c, _ in s.columns()] == ["id", "site"] and dict(s.columns())["site"] == "VARCHAR"
        with pytest.raises(StateError, match="no table 'nosuch'"):
            s.read_table("nosuch")
        assert s.read_table("t1")["y"].tolist() == ["a", "b"] and "t2" in s.tables()


def test_read_only_store_refuses_writes(tmp_path):
    import pandas as pd

    store.create_dataset(tmp_path / "d.duckdb", _samples(10), {"image": np.ones((10, 4), np.float32)})
    with store.open_store(tmp_path / "d.duckdb") as s, pytest.raises(CurationError, match="read-only"):
        s.write_tables({"t": pd.DataFrame({"x": [1]})})


def test_runs_are_recorded_and_kept(tmp_path):
    store.create_dataset(tmp_path / "d.duckdb", _samples(10), {"image": np.ones((10, 4), np.float32)})
    with store.open_store(tmp_path / "d.duckdb", read_only=False) as s:
        r1 = s.record_run("analysis", {"k": 3}, {"total": 1.0})
        r2 = s.record_run("analysis", {"k": 4}, {"total": 1.0})
        runs = s.runs("analysis")
        assert runs["run_id"].tolist() == [r1, r2]
        assert (runs["fingerprint"] == s.fingerprint).all()


def test_unknown_column_and_missing_file(tmp_path):
    store.create_dataset(tmp_path / "d.duckdb", _samples(10), {"image": np.ones((10, 4), np.float32)})
    with store.open_store(tmp_path / "d.duckdb") as s, pytest.raises(CurationError, match="site"):
        s.samples(["nope"])
    with pytest.raises(CurationError, match="does not exist"):
        store.open_store(tmp_path / "missing.duckdb")
    with store.open_store(tmp_path / "d.duckdb") as s, pytest.raises(StateError):
        s.read_table("nope")


def test_list_datasets(tmp_path):
    assert store.list_datasets(tmp_path / "none") == []
    store.create_dataset(tmp_path / "b.duckdb", _samples(10), {"image": np.ones((10, 4), np.float32)})
    store.create_dataset(tmp_path / "a.duckdb", _samples(10), {"image": np.ones((10, 4), np.float32)})
    assert [p.name for p in store.list_datasets(tmp_path)] == ["a.duckdb", "b.duckdb"]


def test_resolve_image_stays_inside_the_root(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("no")
    assert images.resolve_image(root, "a/x.png") == (root / "a" / "x.png").resolve()
    for bad in ("../secret.txt", "a/../../secret.txt"):
        with pytest.raises(CurationError, match="leaves"):
            images.resolve_image(root, bad)
    # an absolute path is what the data says (clip-retrieval's image_path): taken as it is
    assert images.resolve_image(root, str(tmp_path / "secret.txt")) == (tmp_path / "secret.txt").resolve()
    assert images.resolve_image(None, str(root / "a" / "x.png")) == (root / "a" / "x.png").resolve()
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(CurationError, match="leaves"):
        images.resolve_image(root, "link.txt")
    with pytest.raises(CurationError, match="missing"):
        images.resolve_image(root, "a/none.png")
    with pytest.raises(CurationError, match="no image root"):
        images.resolve_image(None, "a/x.png")


def test_sample_rows_reads_the_rows_asked_in_their_order(tmp_path):
    """A chart's sampled points read their ids by a join, in the order asked, repeats kept; a row
    past the end is an error naming the dataset, not a shorter frame."""
    db = tmp_path / "d.duckdb"
    store.create_dataset(db, _samples(50), {"image": np.eye(50, 8, dtype=np.float32) + 0.1, "text": None})
    with store.open_store(db) as s:
        got = s.sample_rows(np.array([7, 0, 49, 7]), ["id"])
        assert got["id"].tolist() == s.samples(["id"])["id"].to_numpy()[[7, 0, 49, 7]].tolist()
        assert s.sample_rows(np.array([], np.int64), ["id"]).empty
        with pytest.raises(CurationError, match="no row"):
            s.sample_rows(np.array([3, 50]), ["id"])
        with pytest.raises(CurationError, match="unknown column"):
            s.sample_rows(np.array([3]), ["nope"])
