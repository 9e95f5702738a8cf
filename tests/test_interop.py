"""Interop with the tools users train with: DataComp uid subsets and embeddings, URLs kept as
URLs, open_clip exports that a trainer can open."""

import numpy as np
import pandas as pd
import pytest

from curation import analysis, manifest, store


def _datacomp_pool(d, n=300, dim=16):
    """A DataComp-like pool: hex uids, URLs, captions, and an .npz of l14_img / l14_txt embeddings."""
    rng = np.random.default_rng(0)
    uids = [f"{rng.integers(0, 2**63):016x}{rng.integers(0, 2**63):016x}" for _ in range(n)]
    centres = rng.normal(size=(5, dim))
    img = centres[np.arange(n) % 5] + 1.0 * rng.normal(size=(n, dim))
    txt = img + 0.2 * rng.normal(size=(n, dim))
    pd.DataFrame({"uid": uids, "url": [f"https://example.org/img/{i}.jpg" for i in range(n)],
                  "text": [f"a photo of thing {i % 5}" for i in range(n)]}).to_parquet(d / "meta.parquet")
    np.savez(d / "emb.npz", l14_img=img.astype(np.float16), l14_txt=txt.astype(np.float16))
    return uids


def test_datacomp_in_and_out(tmp_path, run_cli):
    uids = _datacomp_pool(tmp_path)
    db = tmp_path / "dc.duckdb"
    code, out, err = run_cli("ingest", db, "--metadata", tmp_path / "meta.parquet", "--image-emb",
                             tmp_path / "emb.npz", "--text-emb", tmp_path / "emb.npz", "--shared-space")
    assert code == 0, err
    with store.open_store(db) as s:
        assert s.samples(["id"])["id"].tolist() == uids and s.dim("image") == 16
        assert s.samples(["image"])["image"].iloc[0] == "https://example.org/img/0.jpg"
    analysis.analyze(db, steps=["prototypes", "density"])
    code, out, err = run_cli("select", db, "--budget", "0.5", "--out", tmp_path / "subset.npy")
    assert code == 0, err
    arr = np.load(tmp_path / "subset.npy")
    assert arr.dtype == np.dtype("u8,u8") and len(arr) == 150
    assert (np.sort(arr, order=["f0", "f1"]) == arr).all()  # sorted, as DataComp's track expects
    back = {f"{a:016x}{b:016x}" for a, b in arr.tolist()}
    kept = pd.read_parquet(tmp_path / "subset.npy.dropped.parquet")  # the side files are Parquet
    assert back <= set(uids) and not back & set(kept.id)
    # URLs stay URLs in a manifest
    assert run_cli("select", db, "--budget", "0.5", "--out", tmp_path / "m.parquet")[0] == 0
    assert pd.read_parquet(tmp_path / "m.parquet").image_path.str.startswith("https://example.org/").all()


def test_npz_with_an_explicit_key_and_a_bad_one(tmp_path, run_cli):
    _datacomp_pool(tmp_path)
    db = tmp_path / "dc.duckdb"
    code, _, err = run_cli("ingest", db, "--metadata", tmp_path / "meta.parquet", "--image-emb",
                           f"{tmp_path / 'emb.npz'}:l14_txt")
    assert code == 0, err
    code, _, err = run_cli("ingest", tmp_path / "x.duckdb", "--metadata", tmp_path / "meta.parquet", "--image-emb",
                           f"{tmp_path / 'emb.npz'}:b32_img")
    assert code == 2 and "has no array 'b32_img'" in err


def test_datacomp_format_refuses_non_uid_ids():
    from curation.errors import CurationError

    with pytest.raises(CurationError, match="row 1 of the subset has 'demo-000001'"):
        manifest.datacomp_uids(["0" * 32, "demo-000001"])


def test_openclip_export_refuses_missing_image_files(analyzed_copy, run_cli, tmp_path):
    import shutil

    d = tmp_path / "moved"
    d.mkdir()
    shutil.copy(analyzed_copy, d / "demo.duckdb")  # without its images: every path now dangles
    code, _, err = run_cli("select", d / "demo.duckdb", "--budget", "50", "--out", tmp_path / "t.tsv")
    assert code == 2 and "50 of 50 image files of the subset do not exist" in err and not (tmp_path / "t.tsv").exists()
    code, _, err = run_cli("select", d / "demo.duckdb", "--budget", "50", "--out", tmp_path / "t.tsv", "--allow-missing")
    assert code == 0 and len(pd.read_csv(tmp_path / "t.tsv", sep="\t")) == 50
