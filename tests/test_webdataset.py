"""WebDataset in and out, with tars written by the ``webdataset`` library itself (its TarWriter)
and read back with its own loader: what a tar means to ``embed`` is what it means to training."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from curation import embed, ingest, pairs

wds = pytest.importorskip("webdataset")


def _img(seed: int, fmt: str = "PNG") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((20, 24, 3)) * 255).astype("uint8")).save(buf, format=fmt)
    return buf.getvalue()


def _write(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """Two tars with every metadata case of the issue. Returns the folder."""
    d = tmp_path_factory.mktemp("messy")
    _write(d / "shard-000000.tar", [
        # the first json has only case_id (and an int score): later fields must not be lost
        {"__key__": "s0", "png": _img(0), "txt": "axial CT of the chest", "json": {"case_id": "c0", "score": 3}},
        {"__key__": "s1", "png": _img(1), "txt": "coronal MR of the knee",
         "json": {"case_id": "c1", "modality": "MR", "age": 40, "id": "PMC-J1",
                  "acq": {"kv": 120, "site": {"name": "north"}}, "tags": ["knee", "MR"]}},
        {"__key__": "s2", "png": _img(2), "txt": "sagittal CT of the spine",
         "json": {"case_id": "c2", "modality": "CT", "age": "unknown"}},
        # a dotted name, split as webdataset splits it: key case_1/img, suffixes 2.jpg and txt
        {"__key__": "case_1/img", "2.jpg": _img(3, "JPEG"), "txt": "ultrasound of the liver"},
        {"__key__": "bad", "png": _img(4), "txt": "a caption", "json": b"{not json"},
        {"__key__": "dup", "png": _img(5), "txt": "duplicate key, first tar"},
    ])
    _write(d / "shard-000001.tar", [
        {"__key__": "dup", "png": _img(6), "txt": "duplicate key, second tar"},
        {"__key__": "t1", "png": _img(7), "txt": "axial CT of the head", "json": {"score": 2.5, "case_id": "c3"}},
        {"__key__": "t2", "png": _img(8), "json": {"caption": "caption from the json", "case_id": "c4"}},
    ])
    return d


@pytest.fixture(scope="module")
def messy_out(messy, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("messy_out")
    cfg = embed.EmbedConfig(model=tiny_model, batch_size=4, workers=0)
    embed.embed(embed.TarPairs([str(messy / "shard-{000000..000001}.tar")]), out, cfg, progress=False)
    return out


def test_metadata_union_promotion_flattening(messy_out):
    table = ingest.read_clip_retrieval(messy_out).samples
    t = table.to_pandas()
    assert t.id.tolist() == ["s0", "s1", "s2", "case_1/img", "shard-000000/dup", "shard-000001/dup", "t1", "t2"]
    s0, s1, s2 = (t.set_index("id").loc[k] for k in ("s0", "s1", "s2"))
    assert pd.isna(s0.modality) and s1.modality == "MR" and s2.modality == "CT"  # a field the first json lacks
    assert table.column("age").to_pylist()[:3] == [None, "40", "unknown"]  # int and text in one column: text
    assert t.score.dtype == np.float64 and t.set_index("id").score.to_dict()["t1"] == 2.5  # int + float: float
    assert s0.score == 3.0
    assert s1.json_id == "PMC-J1" and s1["acq.kv"] == 120 and s1["acq.site.name"] == "north"
    assert json.loads(s1.tags) == ["knee", "MR"]
    assert t.set_index("id").caption["t2"] == "caption from the json"
    assert {"source_tar", "image_member"} <= set(t.columns)
    assert t.set_index("id").image_member["case_1/img"] == "case_1/img.2.jpg"
    skipped = dict(embed.skipped_report(messy_out))
    assert list(skipped) == ["bad"] and "bad.json is not valid UTF-8 JSON" in skipped["bad"]


def test_keys_are_webdataset_keys(messy, messy_out):
    """Every sample webdataset's own loader sees is embedded or reported, under the same key."""
    seen = []
    for url in sorted(messy.glob("*.tar")):
        seen += [(url.name, s["__key__"]) for s in wds.WebDataset(str(url), shardshuffle=False)]
    t = ingest.read_clip_retrieval(messy_out).samples.to_pandas()
    ours = [(p.split("/")[-1], pairs.split_key(m)[0]) for p, m in zip(t.source_tar, t.image_member)]
    ours += [("shard-000000.tar", k) for k, _ in embed.skipped_report(messy_out)]
    assert sorted(ours) == sorted(seen)
    for name in ("a/b.c.d.jpg", "x.JPG", "__meta__/y.txt", ".hidden", "k.tar.gz"):
        from webdataset.tariterators import base_plus_ext

        key, suffix = base_plus_ext(name)
        want = (None, None) if name.startswith("__") else (key, suffix.lower() if suffix else suffix)
        assert pairs.split_key(name) == want


def test_ingest_and_ids(messy_out, tmp_path, run_cli):
    db = tmp_path / "w.duckdb"
    code, _, err = run_cli("ingest", db, "--clip-retrieval", messy_out)
    assert code == 0, err
    code, _, err = run_cli("ingest", tmp_path / "j.duckdb", "--clip-retrieval", messy_out, "--id-column", "image_member")
    assert code == 2 and "image_member" in err  # the same member name in two tars: not an id, said so
    from curation import store

    with store.open_store(db) as s:
        assert s.meta["shared_space"] is True and s.meta["image_model"].startswith("local-dir:")


def test_int_in_one_shard_float_in_another_ingests(tmp_path):
    """Shards written by another tool (one tar each) with conflicting types still ingest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for sub in ("metadata", "img_emb", "text_emb"):
        (tmp_path / sub).mkdir()
    metas = [pa.table({"id": ["a", "b"], "caption": ["x", "y"], "score": [1, 2], "note": ["n", "m"]}),
             pa.table({"id": ["c"], "caption": ["z"], "score": [2.5], "note": [7]})]
    rng = np.random.default_rng(0)
    for i, m in enumerate(metas):
        pq.write_table(m, tmp_path / "metadata" / f"metadata_{i}.parquet")
        for sub in ("img_emb", "text_emb"):
            np.save(tmp_path / sub / f"{sub}_{i}.npy", rng.normal(size=(m.num_rows, 8)).astype(np.float32))
    t = ingest.read_clip_retrieval(tmp_path).samples
    assert t.column("score").to_pylist() == [1.0, 2.0, 2.5] and t.column("note").to_pylist() == ["n", "m", "7"]


def test_brace_pattern_and_missing_shard(messy, tiny_model, tmp_path, run_cli):
    code, _, err = run_cli("embed", tmp_path / "o", "--webdataset", messy / "shard-{000000..000002}.tar",
                           "--model", tiny_model, "--workers", "0")
    assert code == 2 and "shard-000002.tar" in err and "expanded from" in err
    assert not (tmp_path / "o" / "embed_info.json").exists()


@pytest.fixture(scope="module")
def messy_db(messy_out, tmp_path_factory):
    from curation import analysis

    db = tmp_path_factory.mktemp("messy_db") / "w.duckdb"
    ingest.ingest(db, ingest.read_clip_retrieval(messy_out))
    analysis.analyze(db, steps=["prototypes", "density"], progress=False)
    return db


def test_subset_export_keys_and_reshard(messy, messy_db, tmp_path, run_cli):
    out = tmp_path / "exp" / "sub.json"
    code, stdout, err = run_cli("select", messy_db, "--budget", "5", "--out", out, "--reshard", "2",
                                "--columns", "case_id")
    assert code == 2 and "--columns" in err and not out.exists()  # keys only in this format
    code, stdout, err = run_cli("select", messy_db, "--budget", "5", "--out", out, "--reshard", "2")
    assert code == 0, err
    assert "--dataset-type webdataset --train-data" in stdout
    doc = json.loads(out.read_text())
    kept = pd.read_parquet(tmp_path / "exp" / "sub.json.dropped.parquet")
    assert doc["samples"] == 5 and sum(len(t["keys"]) for t in doc["tars"]) == 5
    assert {t["tar"] for t in doc["tars"]} <= {str((messy / f).resolve()) for f in ("shard-000000.tar", "shard-000001.tar")}
    side = json.loads((tmp_path / "exp" / "sub.json.sidecar.json").read_text())
    files = side["reshard"]["files"]
    assert files == ["sub-000000.tar", "sub-000001.tar", "sub-000002.tar"] and side["reshard"]["samples_per_tar"] == [2, 2, 1]
    # read the new shards with webdataset, through the brace pattern the CLI printed
    got = {s["__key__"]: s for s in wds.WebDataset(side["reshard"]["pattern"], shardshuffle=False)}
    assert len(got) == 5 and not set(got) & set(kept.id)
    originals = {}
    for url in sorted(messy.glob("*.tar")):
        for s in wds.WebDataset(str(url), shardshuffle=False):
            originals[(url.resolve().as_posix(), s["__key__"])] = s
    for tar in doc["tars"]:
        for key in tar["keys"]:
            src = originals[(tar["tar"], key)]
            new = next(v for k, v in got.items() if k == key or k.endswith("/" + key))
            img_suffix = next(k for k in src if k.endswith(("png", "jpg")))
            assert new[img_suffix] == src[img_suffix]  # members copied byte for byte
    # a second, smaller export to the same name needs --overwrite and leaves no stale shard
    code, _, err = run_cli("select", messy_db, "--budget", "2", "--out", out, "--reshard", "2")
    assert code == 2 and "--overwrite" in err
    assert run_cli("select", messy_db, "--budget", "2", "--out", out, "--reshard", "2", "--overwrite")[0] == 0
    assert sorted(p.name for p in (tmp_path / "exp").glob("sub-*.tar")) == ["sub-000000.tar"]


def test_openclip_export_of_tar_samples_points_to_webdataset(messy_db, tmp_path, run_cli):
    code, _, err = run_cli("select", messy_db, "--budget", "3", "--out", tmp_path / "t.tsv")
    assert code == 2 and "--format webdataset --reshard" in err and not (tmp_path / "t.tsv").exists()
    code, _, err = run_cli("select", messy_db, "--budget", "3", "--out", tmp_path / "m.parquet", "--columns",
                           "case_id,modality")
    assert code == 0, err
    m = pd.read_parquet(tmp_path / "m.parquet")
    assert {"source_tar", "image_member", "case_id", "modality"} <= set(m.columns)


def test_app_exports_a_resharded_subset(messy_db, tmp_path, monkeypatch):
    """The Select page offers the webdataset format for a tar pool, and its export equals the CLI's."""
    import shutil

    from streamlit.testing.v1 import AppTest

    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(messy_db, d / "w.duckdb")
    monkeypatch.setenv("CURATION_DATA_DIR", str(d))
    at = AppTest.from_file(str(__import__("pathlib").Path(__file__).parents[1] / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/select.py").run()
    assert not at.exception, at.exception
    assert "webdataset" in at.selectbox(key="exp_format").options
    at.slider(key="sel_budget").set_value(0.5).run()
    at.selectbox(key="exp_format").set_value("webdataset").run()
    at.checkbox(key="exp_reshard").check().run()
    at.number_input(key="exp_reshard_n").set_value(3).run()
    at.text_input(key="exp_name").set_value("fromapp").run()
    at.button(key="exp_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    doc = json.loads((d / "exports" / "fromapp.json").read_text())
    assert doc["samples"] == 4
    assert sorted(p.name for p in (d / "exports").glob("fromapp-*.tar")) == ["fromapp-000000.tar", "fromapp-000001.tar"]
    assert any("--dataset-type webdataset" in c.value for c in at.code)
