"""`embed --backend ray`: a local Ray instance (2 cores) embeds the generated pairs with the tiny
random model; the result equals the single-machine path (same ids and order after ingest, vectors
within float tolerance), an interrupted run resumes, and a missing Ray is one clear error."""

import sys

import numpy as np
import pytest

from conftest import BAD, N_PAIRS
from curation import embed
from curation.errors import CurationError

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (embed_ray leaves an instance it did not start running)."""
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()


def _cfg(model, **kw):
    return embed.EmbedConfig(model=model, **{"batch_size": 8, "workers": 0, "shard_size": 10, **kw})


def _read(out):
    from curation import ingest

    return ingest.read_clip_retrieval(out)


def test_ray_equals_single_machine_and_resumes(ray_local, tiny_model, pairs_dir, tmp_path):
    from curation import embed_ray

    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    rec = embed_ray.embed_ray(pairs, tmp_path / "ray", _cfg(tiny_model), progress=False, max_shards=2)
    assert not rec["complete"] and rec["embedded"] == 20 and rec["backend"] == "ray"
    first = tmp_path / "ray" / "img_emb" / "img_emb_00000.npy"
    stamp = first.stat().st_mtime_ns
    rec = embed_ray.embed_ray(pairs, tmp_path / "ray", _cfg(tiny_model), progress=False, concurrency=2)
    assert rec["complete"] and rec["embedded"] == N_PAIRS and rec["skipped"] == len(BAD)
    assert rec["embedded_last_run"] == N_PAIRS - 20 and first.stat().st_mtime_ns == stamp
    assert dict(embed.skipped_report(tmp_path / "ray")).keys() == BAD.keys()

    embed.embed(pairs, tmp_path / "local", _cfg(tiny_model), progress=False)
    a, b = _read(tmp_path / "ray"), _read(tmp_path / "local")
    assert a.samples.equals(b.samples)
    for kind in ("image", "text"):
        np.testing.assert_allclose(a.vectors[kind].astype(np.float32), b.vectors[kind].astype(np.float32),
                                   atol=2e-3)


def test_ray_webdataset(ray_local, tiny_model, tar_dir, tmp_path):
    from curation import embed_ray

    cfg = _cfg(tiny_model, out_dtype="float32")
    rec = embed_ray.embed_ray(embed.TarPairs([tar_dir]), tmp_path / "ray", cfg, progress=False)
    assert rec["complete"] and rec["n_shards"] == 2 and rec["embedded"] == N_PAIRS and rec["skipped"] == 2
    a = _read(tmp_path / "ray")
    assert a.samples.column("id").to_pylist() == [f"p{i:03d}" for i in range(N_PAIRS)]
    # uint8 pixels through the object store, tensor steps in the actor: the same vectors as one machine
    embed.embed(embed.TarPairs([tar_dir]), tmp_path / "local", cfg, progress=False)
    b = _read(tmp_path / "local")
    for kind in ("image", "text"):
        np.testing.assert_allclose(a.vectors[kind], b.vectors[kind], atol=1e-5)


def test_missing_ray_is_one_clear_error(monkeypatch, tiny_model, pairs_dir, tmp_path, run_cli):
    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = run_cli("embed", tmp_path / "out", "--captions", pairs_dir / "captions.csv",
                           "--image-root", pairs_dir / "images", "--model", tiny_model, "--backend", "ray")
    assert code == 2 and "needs Ray" in err and "pip install" in err
    code, _, err = run_cli("embed", tmp_path / "out", "--captions", pairs_dir / "captions.csv",
                           "--image-root", pairs_dir / "images", "--model", tiny_model, "--address", "auto")
    assert code == 2 and "--backend ray" in err


def test_gpus_requested_on_a_cpu_cluster(ray_local, tiny_model, pairs_dir, tmp_path):
    from curation import embed_ray

    if ray.cluster_resources().get("GPU"):
        pytest.skip("this cluster has GPUs")
    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    with pytest.raises(CurationError, match="has no GPUs"):
        embed_ray.embed_ray(pairs, tmp_path / "o", _cfg(tiny_model), gpus_per_actor=1, progress=False)
