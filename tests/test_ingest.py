"""Ingest of each input layout, and every bad-input case: exit code, message, nothing changed."""

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import store

from conftest import MEDPIX

N = 30


def _frame(n=N):
    return pd.DataFrame({"id": [f"x{i:03d}" for i in range(n)], "image": [f"img/{i}.png" for i in range(n)],
                         "caption": [f"caption {i}" for i in range(n)], "site": ["s1", "s2", "s3"] * (n // 3),
                         "age": np.arange(n)})


def _vecs(n=N, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.fixture
def csv_input(tmp_path):
    _frame().to_csv(tmp_path / "meta.csv", index=False)
    np.save(tmp_path / "img.npy", _vecs(d=8))
    np.save(tmp_path / "txt.npy", _vecs(d=6, seed=1))
    return tmp_path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_plus_npy(csv_input, run_cli):
    db = csv_input / "d.duckdb"
    code, out, err = run_cli("ingest", db, "--metadata", csv_input / "meta.csv",
                             "--image-emb", csv_input / "img.npy", "--text-emb", csv_input / "txt.npy")
    assert code == 0, err
    with store.open_store(db) as s:
        assert s.n_rows == N and s.dim("image") == 8 and s.dim("text") == 6
        np.testing.assert_array_equal(s.embeddings("image"), _vecs(d=8))
        df = s.samples()
        assert df["id"].tolist() == _frame()["id"].tolist()
        assert df["age"].tolist() == list(range(N))  # metadata kept as it comes, with its type
        assert [c for c, _ in s.columns()] == ["id", "image", "caption", "site", "age"]
        assert s.meta["shared_space"] is False


def test_ids_keep_leading_zeros_and_custom_id_column(tmp_path, run_cli):
    f = _frame().rename(columns={"id": "study"})
    f["study"] = [f"{i:05d}" for i in range(N)]
    f.to_csv(tmp_path / "m.csv", index=False)
    np.save(tmp_path / "i.npy", _vecs())
    code, _, err = run_cli("ingest", tmp_path / "d.duckdb", "--metadata", tmp_path / "m.csv",
                           "--image-emb", tmp_path / "i.npy", "--id-column", "study")
    assert code == 0, err
    with store.open_store(tmp_path / "d.duckdb") as s:
        assert s.samples(["id"])["id"].iloc[1] == "00001"


def test_parquet_metadata_plus_npy(tmp_path, run_cli):
    _frame().to_parquet(tmp_path / "m.parquet")
    np.save(tmp_path / "t.npy", _vecs())
    code, _, err = run_cli("ingest", tmp_path / "d.duckdb", "--metadata", tmp_path / "m.parquet",
                           "--text-emb", tmp_path / "t.npy")
    assert code == 0, err
    with store.open_store(tmp_path / "d.duckdb") as s:
        assert s.dim("image") is None and s.dim("text") == 8


def _list_table(n=N, d=8, offset=0):
    f = _frame(n)
    f["id"] = [f"x{i + offset:03d}" for i in range(n)]
    t = pa.Table.from_pandas(f, preserve_index=False)
    return (t.append_column("img_vec", pa.array(list(_vecs(n, d)), type=pa.list_(pa.float32())))
             .append_column("txt_vec", pa.array(list(_vecs(n, 4, 2)), type=pa.list_(pa.float32(), 4))))


def test_parquet_with_list_columns_file_and_folder(tmp_path, run_cli):
    pq.write_table(_list_table(), tmp_path / "one.parquet")
    code, _, err = run_cli("ingest", tmp_path / "a.duckdb", "--parquet", tmp_path / "one.parquet",
                           "--image-column", "img_vec", "--text-column", "txt_vec")
    assert code == 0, err
    with store.open_store(tmp_path / "a.duckdb") as s:
        np.testing.assert_array_equal(s.embeddings("image"), _vecs(N, 8))
        np.testing.assert_array_equal(s.embeddings("text"), _vecs(N, 4, 2))
        assert "img_vec" not in s.metadata_columns()
    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(_list_table(), folder / "part-0.parquet")
    pq.write_table(_list_table(offset=N), folder / "part-1.parquet")
    code, _, err = run_cli("ingest", tmp_path / "b.duckdb", "--parquet", folder, "--image-column", "img_vec")
    assert code == 0, err
    with store.open_store(tmp_path / "b.duckdb") as s:
        assert s.n_rows == 2 * N


def _clip_retrieval(root, shards=2, n=N):
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True)
    for i in range(shards):
        np.save(root / "img_emb" / f"img_emb_{i}.npy", _vecs(n, 8, i))
        np.save(root / "text_emb" / f"text_emb_{i}.npy", _vecs(n, 8, 10 + i))
        pd.DataFrame({"image_path": [f"/imgs/{i}_{j}.jpg" for j in range(n)],
                      "caption": [f"c {i} {j}" for j in range(n)]}).to_parquet(
            root / "metadata" / f"metadata_{i}.parquet")


def test_clip_retrieval_folder(tmp_path, run_cli):
    _clip_retrieval(tmp_path / "out", shards=12)  # 12 shards: numeric, not lexical, shard order
    code, _, err = run_cli("ingest", tmp_path / "d.duckdb", "--clip-retrieval", tmp_path / "out")
    assert code == 0, err
    with store.open_store(tmp_path / "d.duckdb") as s:
        assert s.n_rows == 12 * N
        df = s.samples()
        assert df["id"].iloc[N * 10] == "/imgs/10_0.jpg"  # image path used as id when unique
        assert df["image"].iloc[N * 10] == "/imgs/10_0.jpg"
        np.testing.assert_array_equal(s.embeddings("image")[N * 10: N * 11], _vecs(N, 8, 10))


def test_replace_is_explicit(csv_input, run_cli):
    db = csv_input / "d.duckdb"
    args = ("ingest", db, "--metadata", csv_input / "meta.csv", "--image-emb", csv_input / "img.npy")
    assert run_cli(*args)[0] == 0
    before = _digest(db)
    code, _, err = run_cli(*args)
    assert code == 2 and "--replace" in err and _digest(db) == before
    assert run_cli(*args, "--replace")[0] == 0


# --- bad input: each case names file / row / column, exits 2, and leaves the stored dataset alone ----
def _case_missing_id(d):
    f = _frame(); f.loc[7, "id"] = None; f.to_csv(d / "meta.csv", index=False)
    return ["meta.csv", "row 7", "missing id"]


def _case_duplicate_id(d):
    f = _frame(); f.loc[9, "id"] = "x002"; f.to_csv(d / "meta.csv", index=False)
    return ["meta.csv", "duplicate id 'x002'", "row 9"]


def _case_nan(d):
    v = _vecs(); v[11, 3] = np.nan; np.save(d / "img.npy", v)
    return ["img.npy", "row 11", "NaN"]


def _case_inf(d):
    v = _vecs(); v[4, 0] = np.inf; np.save(d / "img.npy", v)
    return ["img.npy", "row 4", "inf"]


def _case_zero(d):
    v = _vecs(); v[13] = 0; np.save(d / "img.npy", v)
    return ["img.npy", "row 13", "all zeros"]


def _case_rows(d):
    np.save(d / "img.npy", _vecs(N - 1))
    return ["img.npy", f"{N - 1} embedding rows", f"{N} rows"]


def _case_wrong_dims(d):
    np.save(d / "img.npy", np.ones((N, 2, 2), np.float32))
    return ["img.npy", "2-D"]


def _case_int_vectors(d):
    np.save(d / "img.npy", np.ones((N, 4), np.int64))
    return ["img.npy", "floats"]


def _case_empty(d):
    (d / "meta.csv").write_text("")
    return ["meta.csv", "empty"]


def _case_header_only(d):
    (d / "meta.csv").write_text("id,caption\n")
    return ["meta.csv", "no rows"]


def _case_not_utf8(d):
    raw = _frame().to_csv(index=False).encode().replace(b"caption 5", b"caption \xe9")
    (d / "meta.csv").write_bytes(raw)
    return ["meta.csv", "UTF-8", "line 7"]


def _case_no_id_column(d):
    _frame().drop(columns="id").to_csv(d / "meta.csv", index=False)
    return ["meta.csv", "no id column", "--id-column"]


BAD = [_case_missing_id, _case_duplicate_id, _case_nan, _case_inf, _case_zero, _case_rows, _case_wrong_dims,
       _case_int_vectors, _case_empty, _case_header_only, _case_not_utf8, _case_no_id_column]


@pytest.mark.parametrize("case", BAD, ids=lambda f: f.__name__[6:])
def test_bad_input_is_refused_and_nothing_changes(csv_input, run_cli, case):
    db = csv_input / "d.duckdb"
    args = ("ingest", db, "--metadata", csv_input / "meta.csv", "--image-emb", csv_input / "img.npy")
    assert run_cli(*args)[0] == 0
    before = _digest(db)
    expected = case(csv_input)
    code, out, err = run_cli(*args, "--replace")
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one clear line
    for part in expected:
        assert part in err, (part, err)
    assert "Fix:" in err
    assert _digest(db) == before
    assert sorted(p.name for p in csv_input.iterdir() if p.name.startswith(".")) == []  # no temp files


def test_mixed_dimensions_in_parquet(tmp_path, run_cli):
    t = _list_table()
    vals = [list(v) for v in _vecs(N, 8)]
    vals[5] = vals[5][:7]
    t = t.set_column(t.column_names.index("img_vec"), "img_vec", pa.array(vals, type=pa.list_(pa.float32())))
    pq.write_table(t, tmp_path / "m.parquet")
    code, _, err = run_cli("ingest", tmp_path / "d.duckdb", "--parquet", tmp_path / "m.parquet",
                           "--image-column", "img_vec")
    assert code == 2 and "row 5" in err and "img_vec" in err and "mixed dimensions" in err
    assert not (tmp_path / "d.duckdb").exists()


def test_clip_retrieval_shard_mismatch(tmp_path, run_cli):
    _clip_retrieval(tmp_path / "out")
    np.save(tmp_path / "out" / "img_emb" / "img_emb_1.npy", _vecs(N + 2, 8))
    code, _, err = run_cli("ingest", tmp_path / "d.duckdb", "--clip-retrieval", tmp_path / "out")
    assert code == 2 and "img_emb_1.npy" in err and "metadata_1.parquet" in err


def test_unknown_columns_named(csv_input, run_cli):
    code, _, err = run_cli("ingest", csv_input / "d.duckdb", "--metadata", csv_input / "meta.csv",
                           "--image-emb", csv_input / "img.npy", "--caption-column", "nope")
    assert code == 2 and "'nope'" in err and "site" in err
    code, _, err = run_cli("ingest", csv_input / "d.duckdb", "--metadata", csv_input / "meta.csv",
                           "--image-emb", csv_input / "img.npy", "--label-column", "nope")
    assert code == 2 and "nope" in err


def test_shared_space_needs_equal_dims(csv_input, run_cli):
    code, _, err = run_cli("ingest", csv_input / "d.duckdb", "--metadata", csv_input / "meta.csv",
                           "--image-emb", csv_input / "img.npy", "--text-emb", csv_input / "txt.npy",
                           "--shared-space")
    assert code == 2 and "different encoders" in err


@pytest.mark.skipif(not MEDPIX.is_dir(), reason="MedPix sample not present")
def test_medpix_ingests_with_one_command(tmp_path, run_cli):
    code, out, err = run_cli("ingest", tmp_path / "medpix.duckdb", "--metadata", MEDPIX / "metadata.csv",
                             "--image-emb", MEDPIX / "image_mobilenetv2.npy",
                             "--text-emb", MEDPIX / "text_minilm.npy")
    assert code == 0, err
    with store.open_store(tmp_path / "medpix.duckdb") as s:
        assert s.n_rows == 2050 and s.dim("image") == 1280 and s.dim("text") == 384
        assert s.meta["case_column"] == "case_id" and s.meta["shared_space"] is False
        assert {"modality", "plane", "sex", "age", "split"} <= set(s.metadata_columns())
        assert s.image_root().resolve() == MEDPIX.resolve()
