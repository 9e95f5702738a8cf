"""`python -m curation embed`: open_clip embeddings of image-caption pairs, on CPU with a tiny
random model (no download). Exact expectations: which ids are embedded, which are skipped and why,
unit norms, the stored layout, resume without recomputation, and equality with the model itself."""

import json

import numpy as np
import pytest

from conftest import BAD, N_PAIRS
from curation import embed
from curation.errors import CurationError


def _cfg(model, **kw):
    return embed.EmbedConfig(model=model, **{"batch_size": 8, "workers": 0, "shard_size": 10, **kw})


def _read(out):
    from curation import ingest

    return ingest.read_clip_retrieval(out)


def test_embeds_table_pairs_skips_bad_ones(tiny_model, pairs_dir, tmp_path):
    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    rec = embed.embed(pairs, tmp_path / "out", _cfg(tiny_model), progress=False)
    assert rec["complete"] and rec["embedded"] == N_PAIRS and rec["skipped"] == len(BAD)
    assert rec["n_shards"] == 4 and rec["embed_dim"] == 32 and len(rec["weights_sha256"]) == 64
    skipped = dict(embed.skipped_report(tmp_path / "out"))
    assert set(skipped) == set(BAD)
    for rid, words in BAD.items():
        assert words in skipped[rid]
    inp = _read(tmp_path / "out")
    assert inp.samples.column("id").to_pylist() == [f"p{i:03d}" for i in range(N_PAIRS)]
    assert inp.samples.column_names == ["id", "image", "caption", "site", "image_path"]
    # clip-retrieval's column: the absolute file path beside the relative `image`
    assert inp.samples.column("image_path")[0].as_py() == str((pairs_dir / "images" / "0.png").resolve())
    for kind in ("image", "text"):
        v = inp.vectors[kind]
        assert v.shape == (N_PAIRS, 32) and v.dtype == np.float16
        np.testing.assert_allclose(np.linalg.norm(v.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert inp.meta["shared_space"] and inp.meta["embed"]["weights_sha256"] == rec["weights_sha256"]
    assert inp.image_root.resolve() == (pairs_dir / "images").resolve()


def test_vectors_equal_the_model_applied_directly(tiny_model, pairs_dir, tmp_path):
    import torch
    from PIL import Image

    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    embed.embed(pairs, tmp_path / "out", _cfg(tiny_model, out_dtype="float32"), progress=False)
    inp = _read(tmp_path / "out")
    net, preprocess, tok, _ = embed.load_model(tiny_model)
    with torch.inference_mode():
        im = net.encode_image(torch.stack([preprocess(Image.open(pairs_dir / "images" / f"{i}.{'jpg' if i % 2 else 'png'}"))
                                           for i in (0, 7)]), normalize=True)
        tx = net.encode_text(tok(["axial CT slice 0 showing finding 0", "axial CT slice 7 showing finding 2"]),
                             normalize=True)
    assert inp.vectors["image"].dtype == np.float32
    np.testing.assert_allclose(inp.vectors["image"][[0, 7]], im.numpy(), atol=1e-5)
    np.testing.assert_allclose(inp.vectors["text"][[0, 7]], tx.numpy(), atol=1e-5)


def test_resume_skips_finished_shards_and_matches_one_run(tiny_model, pairs_dir, tmp_path):
    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    out = tmp_path / "out"
    rec = embed.embed(pairs, out, _cfg(tiny_model), progress=False, max_shards=2)  # "interrupted"
    assert not rec["complete"] and rec["embedded"] == 20
    with pytest.raises(CurationError, match="has not finished"):
        _read(out)
    first = out / "img_emb" / "img_emb_00000.npy"
    stamp = first.stat().st_mtime_ns
    rec = embed.embed(pairs, out, _cfg(tiny_model), progress=False)
    assert rec["complete"] and rec["embedded_last_run"] == N_PAIRS - 20  # only the two missing shards ran
    assert first.stat().st_mtime_ns == stamp
    embed.embed(pairs, tmp_path / "once", _cfg(tiny_model), progress=False)
    a, b = _read(out), _read(tmp_path / "once")
    assert a.samples.equals(b.samples)
    np.testing.assert_array_equal(a.vectors["image"], b.vectors["image"])
    np.testing.assert_array_equal(a.vectors["text"], b.vectors["text"])


def test_half_written_shard_is_redone(tiny_model, pairs_dir, tmp_path):
    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    out = tmp_path / "out"
    embed.embed(pairs, out, _cfg(tiny_model), progress=False)
    (out / "metadata" / "metadata_00001.parquet").unlink()  # killed before the shard's last write
    (out / "text_emb" / "text_emb_00001.npy").write_bytes(b"garbage")
    rec = embed.embed(pairs, out, _cfg(tiny_model), progress=False)
    assert rec["complete"] and rec["embedded_last_run"] == 10 and _read(out).samples.num_rows == N_PAIRS


def test_other_run_in_folder_is_refused_then_overwritten(tiny_model, pairs_dir, tmp_path):
    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    out = tmp_path / "out"
    embed.embed(pairs, out, _cfg(tiny_model), progress=False, max_shards=1)
    with pytest.raises(CurationError, match="different run.*out_dtype"):
        embed.embed(pairs, out, _cfg(tiny_model, out_dtype="float32"), progress=False)
    assert len(list((out / "metadata").iterdir())) == 1  # nothing touched
    rec = embed.embed(pairs, out, _cfg(tiny_model, out_dtype="float32"), progress=False, overwrite=True)
    assert rec["complete"] and _read(out).vectors["image"].dtype == np.float32


def test_worker_processes_give_the_same_vectors(tiny_model, pairs_dir, tmp_path):
    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    embed.embed(pairs, tmp_path / "w0", _cfg(tiny_model, shard_size=100), progress=False)
    embed.embed(pairs, tmp_path / "w2", _cfg(tiny_model, shard_size=100, workers=2, batch_size=5), progress=False)
    a, b = _read(tmp_path / "w0"), _read(tmp_path / "w2")
    assert a.samples.equals(b.samples)
    np.testing.assert_allclose(a.vectors["image"].astype(np.float32), b.vectors["image"].astype(np.float32), atol=1e-3)


def test_webdataset_shards(tiny_model, tar_dir, tmp_path):
    pairs = embed.TarPairs([tar_dir])
    rec = embed.embed(pairs, tmp_path / "out", _cfg(tiny_model), progress=False)
    assert rec["n_shards"] == 2 and rec["embedded"] == N_PAIRS and rec["skipped"] == 2
    skipped = dict(embed.skipped_report(tmp_path / "out"))
    assert "not a readable image" in skipped["broken"] and "no caption" in skipped["nocaption"]
    inp = _read(tmp_path / "out")
    t = inp.samples
    assert t.column("id").to_pylist() == [f"p{i:03d}" for i in range(N_PAIRS)]
    assert {"site", "pmcid", "source_tar", "image_member"} <= set(t.column_names)
    assert t.column("source_tar").to_pylist()[:20] == [str((tar_dir / "shard-0000.tar").resolve())] * 20
    assert t.column("pmcid").to_pylist()[3] == "PMC003"
    assert "image" not in t.column_names  # images stay inside the tars


def test_webdataset_equals_folder_path(tiny_model, tar_dir, pairs_dir, tmp_path):
    embed.embed(embed.TarPairs([tar_dir]), tmp_path / "tar", _cfg(tiny_model), progress=False)
    embed.embed(embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images"), tmp_path / "table",
                _cfg(tiny_model), progress=False)
    a, b = _read(tmp_path / "tar"), _read(tmp_path / "table")
    np.testing.assert_array_equal(a.vectors["image"], b.vectors["image"])
    np.testing.assert_array_equal(a.vectors["text"], b.vectors["text"])


def test_cli_embed_and_ingest(tiny_model, pairs_dir, tmp_path, run_cli):
    from curation import store

    db = tmp_path / "emb.duckdb"
    code, out, err = run_cli("embed", tmp_path / "out", "--captions", pairs_dir / "captions.csv",
                             "--image-root", pairs_dir / "images", "--model", tiny_model, "--batch-size", 16,
                             "--workers", 0, "--quiet", "--ingest", db)
    assert code == 0, err
    assert f"{N_PAIRS} pairs embedded" in out and f"{len(BAD)} pairs skipped" in out and "corrupt:" in out
    with store.open_store(db) as s:
        assert s.n_rows == N_PAIRS and s.dim("image") == 32 and s.meta["shared_space"] is True
        assert s.meta["image_model"] == tiny_model and s.meta["embed"]["skipped"] == len(BAD)
        assert s.resolve_image(s.samples(["image"])["image"][0]).is_file()
    # the output folder also ingests on its own
    code, out, err = run_cli("ingest", tmp_path / "again.duckdb", "--clip-retrieval", tmp_path / "out")
    assert code == 0, err
    with store.open_store(tmp_path / "again.duckdb") as s:
        assert s.meta["shared_space"] is True and s.fingerprint == store.open_store(db).fingerprint


def test_cli_clear_errors(tiny_model, pairs_dir, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ("embed", tmp_path / "out", "--captions", pairs_dir / "captions.csv", "--image-root", pairs_dir / "images",
            "--offline")
    code, _, err = run_cli(*args, "--model", "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    assert code == 2 and "could not be fetched" in err and "local-dir:" in err and "--pretrained" in err
    code, _, err = run_cli(*args, "--model", "ViT-B-16", "--pretrained", "laion2b_s34b_b88k")
    assert code == 2 and "could not be fetched" in err
    code, _, err = run_cli(*args, "--model", "ViT-B-16", "--pretrained", str(tmp_path / "nope.pt"))
    assert code == 2 and "neither a known tag" in err
    code, _, err = run_cli(*args, "--model", "ViT-B-16")
    assert code == 2 and "needs weights" in err and "laion2b_s34b_b88k" in err
    code, _, err = run_cli(*args, "--model", "No-Such-Net", "--pretrained", "random")
    assert code == 2 and "unknown open_clip architecture" in err
    code, _, err = run_cli(*args, "--model", tiny_model, "--caption-column", "nope")
    assert code == 2 and "caption column not found" in err and "captions.csv" in err
    code, _, err = run_cli("embed", tmp_path / "o2", "--webdataset", tmp_path / "none", "--model", tiny_model)
    assert code == 2 and "tar shard not found" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists()


def test_jsonl_captions(tiny_model, pairs_dir, tmp_path):
    import csv

    rows = list(csv.DictReader(open(pairs_dir / "captions.csv", encoding="utf-8")))[:5]
    with open(tmp_path / "caps.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"uid": r["id"], "filepath": r["image"], "text": r["caption"]}) + "\n")
    rec = embed.embed(embed.TablePairs(tmp_path / "caps.jsonl", pairs_dir / "images"), tmp_path / "out",
                      _cfg(tiny_model), progress=False)
    assert rec["embedded"] == 5 and _read(tmp_path / "out").samples.column("id").to_pylist() == \
        [r["id"] for r in rows]


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu(tiny_model, pairs_dir, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    embed.embed(pairs, tmp_path / "cpu", _cfg(tiny_model, device="cpu"), progress=False)
    rec = embed.embed(pairs, tmp_path / "gpu", _cfg(tiny_model, device="cuda", workers=2), progress=False)
    assert rec["precision"] in ("bf16", "fp16")
    a, b = _read(tmp_path / "cpu"), _read(tmp_path / "gpu")
    cos = (a.vectors["image"].astype(np.float32) * b.vectors["image"].astype(np.float32)).sum(1)
    assert cos.min() > 0.99


def test_weights_hash_changes_with_weights(tiny_model):
    import torch

    net, *_ , info = embed.load_model(tiny_model)
    assert embed.weights_hash(net) == info["weights_sha256"]
    with torch.no_grad():
        next(net.parameters()).add_(1e-3)
    assert embed.weights_hash(net) != info["weights_sha256"]


def test_load_pair_skips_decoding_errors_but_a_transform_bug_fails(pairs_dir):
    """A missing or corrupt image is a skipped pair with its reason; a bug in the transform is not
    swallowed as "skipped" (the run would otherwise end marked complete with every pair skipped)."""
    from curation.errors import CurationError, PairError

    assert issubclass(PairError, CurationError)
    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    shards = pairs.shards(1000)
    items = shards[0].items
    ok = embed.load_pair(pairs, items[0], {}, lambda im: "tensor")
    assert ok == ("tensor", ok[1], None)

    def buggy(im):
        raise TypeError("a bug in the transform")

    with pytest.raises(TypeError, match="a bug in the transform"):
        embed.load_pair(pairs, items[0], {}, buggy)

    def odd_mode(im):
        raise OSError("cannot convert mode I;16")

    assert embed.load_pair(pairs, items[0], {}, odd_mode)[2].startswith("image could not be converted")


def test_ctrl_c_during_embed_says_what_was_kept():
    from curation.cli import ON_INTERRUPT

    assert "finished shards are kept" in ON_INTERRUPT["embed"]
