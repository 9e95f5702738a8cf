"""`embed --backend ray` on a Ray cluster of two nodes started here (two raylets, one CPU each),
shared by the module's tests: the generated pairs (a table, through the runtime_env) and the
WebDataset tars (a plain driver, interrupted and resumed) embedded with the tiny random model give
the single-machine output (same ids and order after ingest, same vectors), an interrupted run
resumes, a clean run logs no error, `curation` is shipped to the workers by the runtime_env, and a
missing Ray is one clear error. One cluster for every test: a second, local instance cost the suite
about ten CPU-seconds of Ray processes for nothing the cluster does not also test."""

import copy
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BAD, N_PAIRS
from curation import embed
from curation.errors import CurationError

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.xdist_group("ray")  # one worker runs every Ray test: one cluster at a time


@pytest.fixture
def ray_driver(cluster):
    """This process connected to the module's cluster as a plain driver (no runtime_env: the
    nodes share this machine and this environment), as a script calling embed_ray after its own
    ``ray.init`` would be; embed_ray then uses that connection and leaves it open."""
    address, _ = cluster
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)


#: an error-level line: Python logging's level name, or the ``E`` of Ray's C++ core ("[date time E pid tid]")
_ERROR_LINE = re.compile(r"\bERROR\b|^\[[^\]]* E \d+ \d+\]")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if _ERROR_LINE.search(line)]


def _cfg(model, **kw):
    return embed.EmbedConfig(model=model, **{"batch_size": 8, "workers": 0, "shard_size": 10, **kw})


def _read(out):
    from curation import ingest

    return ingest.read_clip_retrieval(out)


# the two-node cluster: tests/ray_cluster.py (one per session, shared with test_ray_analysis)


# First: it checks the jobs and named actors on the fresh cluster.
def test_two_node_cluster_equals_single_machine(cluster, tiny_model, pairs_dir, tmp_path, monkeypatch, capfd):
    """`embed_ray(address=...)` on a cluster of two raylets gives the single-machine output exactly.

    Proven: embed_ray connects with its runtime_env; under that runtime_env a worker on the second
    node imports `curation` from the copy Ray unpacked in that node's own folder (not from the
    checkout) and sees the driver's HF_HUB_OFFLINE; the job has workers on both nodes (one CPU each: the model actor holds one) and writes
    the same vectors and metadata as `embed.embed`, bit for bit; relative input paths work although
    the nodes run from other folders; the run logs no error.
    Not proven: another machine. The nodes share this file system and this venv, so Ray, torch and
    open_clip are there already, and where `pip install -e .` was run `curation` would be importable
    on them anyway (the runtime_env copy comes ahead of site-packages, which is what is checked).
    Checked by hand, not here: without the runtime_env (and no `pip install -e .`) this job fails with
    "No module named 'curation'"; with the relative image folder passed as is, no pair is embedded."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from curation import embed_ray

    address, root = cluster
    if ray.is_initialized():  # a driver of its own, connected with embed_ray's runtime_env
        ray.shutdown()
    # this process's working directory goes onto every worker's path: make it one without `curation`,
    # and give the inputs relative to it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs").symlink_to(pairs_dir)
    pairs = embed.TablePairs("pairs/captions.csv", "pairs/images")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as `embed --offline` sets it
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)  # (an earlier embed_ray set it to 0)

    ray.init(address=address, runtime_env=embed_ray.runtime_env(), logging_level=logging.ERROR,
             log_to_driver=False)
    t0 = time.time()
    while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() - t0 < 60:
        time.sleep(0.2)
    nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2 and ray.cluster_resources()["CPU"] == 2
    probe_job = ray.get_runtime_context().get_job_id()

    @ray.remote(num_cpus=0)
    def where_is_curation():
        import curation

        return curation.__file__, os.environ.get("HF_HUB_OFFLINE")

    seen = {nid: ray.get(where_is_curation.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote()) for nid in nodes}
    assert {offline for _, offline in seen.values()} == {"1"}, seen
    files = {nid: f for nid, (f, _) in seen.items()}
    folders = sorted(str(Path(f).relative_to(root)).split(os.sep)[0] for f in files.values())
    assert folders == ["t0", "t1"], files  # each node its own unpacked copy
    assert all("runtime_resources" in f for f in files.values()), files
    named_before = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert "DataUsageCollectionActor" not in named_before, named_before  # (else the check below proves nothing)
    ray.shutdown()

    def jobs_on(i):  # jobs with workers on node i: Ray names their logs worker-<worker>-<job>-<pid>.out
        return {f.name.split("-")[2] for f in (root / f"t{i}").glob("session_2*/logs/worker-*.out")}

    jobs_before = jobs_on(0) | jobs_on(1)

    inits = []
    real_init = ray.init
    # (a copy: ray.init swaps the local paths in the runtime_env for the uploaded packages)
    monkeypatch.setattr(ray, "init", lambda *a, **kw: inits.append(copy.deepcopy(kw)) or real_init(*a, **kw))
    capfd.readouterr()
    rec = embed_ray.embed_ray(pairs, tmp_path / "ray", _cfg(tiny_model), progress=False, address=address)
    out, err = capfd.readouterr()
    assert not error_lines(out + err), error_lines(out + err)
    assert [kw.get("runtime_env") for kw in inits] == [embed_ray.runtime_env()]
    assert not ray.is_initialized()  # it disconnects from the cluster it connected to
    assert rec["complete"] and rec["embedded"] == N_PAIRS and rec["skipped"] == len(BAD)
    assert rec["ray_address"] == address and rec["backend"] == "ray"

    embed_jobs = (jobs_on(0) | jobs_on(1)) - jobs_before - {probe_job, "ffffffff"}  # ffff...: started before any job
    assert len(embed_jobs) == 1 and embed_jobs <= jobs_on(0) and embed_jobs <= jobs_on(1), (jobs_on(0), jobs_on(1))
    # no usage statistics from the job: Ray Data records them in a named actor on a cluster that
    # allows them (as this one does for a driver that has not opted out), and embed_ray opts out
    real_init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    ray.shutdown()
    assert "DataUsageCollectionActor" not in named, named

    embed.embed(pairs, tmp_path / "local", _cfg(tiny_model), progress=False)
    a, b = _read(tmp_path / "ray"), _read(tmp_path / "local")
    assert a.samples.equals(b.samples)
    for kind in ("image", "text"):
        np.testing.assert_array_equal(a.vectors[kind], b.vectors[kind])
    assert embed.skipped_report(tmp_path / "ray") == embed.skipped_report(tmp_path / "local")


# --- the same cluster, this process connected as a plain driver -------------------------------
_TAR_RUNS: dict = {}


def tar_runs(tiny_model, tar_dir, tmp_path_factory) -> dict:
    """Ray on the two WebDataset tars, stopped by Ctrl-C in the driver right after its first shard
    is written, then run again to the end; and the single-machine run of the same tars. Done once
    for the two tests below that read it (the first to ask runs it, inside its own output capture):
    each Ray run starts a model actor, which imports torch and open_clip (about 8 CPU-seconds)."""
    if _TAR_RUNS:
        return _TAR_RUNS
    from curation import embed_ray

    out, pairs = tmp_path_factory.mktemp("ray-tars"), embed.TarPairs([tar_dir])
    cfg = _cfg(tiny_model, out_dtype="float32")
    real_flush, flushed = embed.flush_shard, []

    def flush_then_interrupt(*a, **kw):
        real_flush(*a, **kw)
        flushed.append(a[1].index)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(embed, "flush_shard", flush_then_interrupt)
        embed_ray.embed_ray(pairs, out / "ray", cfg, progress=False)
    kept = [int(f.stem.split("_")[-1]) for f in sorted((out / "ray" / "metadata").glob("*.parquet"))]
    first = out / "ray" / "img_emb" / f"img_emb_{flushed[0]:05d}.npy"
    stamp = first.stat().st_mtime_ns
    done_before = sum(len(np.load(f)) for f in (out / "ray" / "img_emb").glob("*.npy"))
    rec = embed_ray.embed_ray(pairs, out / "ray", cfg, progress=False, concurrency=2)
    embed.embed(pairs, out / "local", cfg, progress=False)
    _TAR_RUNS.update(flushed=flushed, kept=kept, first=first, stamp=stamp, done_before=done_before, rec=rec,
                     ray=out / "ray", local=out / "local")
    return _TAR_RUNS


def test_ray_equals_single_machine_and_resumes(ray_driver, tiny_model, tar_dir, tmp_path_factory, capfd):
    capfd.readouterr()
    r = tar_runs(tiny_model, tar_dir, tmp_path_factory)
    # a clean run logs no error (Ray core logged one about the model actors' constructor arguments,
    # once per process: the first run of the module is where it showed)
    out, err = capfd.readouterr()
    assert not error_lines(out + err), error_lines(out + err)
    assert r["kept"] == r["flushed"] and len(r["flushed"]) == 1  # the finished shard kept, no other
    rec = r["rec"]
    assert rec["complete"] and rec["embedded"] == N_PAIRS and rec["skipped"] == 2
    # the second run embedded only what the first had not written, and left the finished shard alone
    assert rec["embedded_last_run"] == N_PAIRS - r["done_before"] and r["first"].stat().st_mtime_ns == r["stamp"]
    assert embed.skipped_report(r["ray"]) == embed.skipped_report(r["local"])
    a, b = _read(r["ray"]), _read(r["local"])
    assert a.samples.equals(b.samples)


def test_ray_webdataset(ray_driver, tiny_model, tar_dir, tmp_path_factory):
    r = tar_runs(tiny_model, tar_dir, tmp_path_factory)
    assert r["rec"]["n_shards"] == 2 and r["rec"]["workers"] == 1  # (--concurrency 2 on 2 CPUs: one actor)
    a, b = _read(r["ray"]), _read(r["local"])
    assert a.samples.column("id").to_pylist() == [f"p{i:03d}" for i in range(N_PAIRS)]
    # uint8 pixels through the object store, tensor steps in the actor: the same vectors as one machine
    for kind in ("image", "text"):
        np.testing.assert_allclose(a.vectors[kind], b.vectors[kind], atol=1e-5)


def test_runtime_env_ships_the_package(monkeypatch):
    import curation
    from curation import embed_ray

    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    env = embed_ray.runtime_env()
    assert env["py_modules"] == [str(Path(curation.__file__).resolve().parent)]
    assert env["env_vars"] == {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")  # the user's opt-in travels as it is
    assert embed_ray.runtime_env()["env_vars"] == {"RAY_USAGE_STATS_ENABLED": "1"}


def test_missing_ray_is_one_clear_error(monkeypatch, tiny_model, pairs_dir, tmp_path, run_cli):
    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = run_cli("embed", tmp_path / "out", "--captions", pairs_dir / "captions.csv",
                           "--image-root", pairs_dir / "images", "--model", tiny_model, "--backend", "ray")
    assert code == 2 and "needs Ray" in err and "pip install" in err
    code, _, err = run_cli("embed", tmp_path / "out", "--captions", pairs_dir / "captions.csv",
                           "--image-root", pairs_dir / "images", "--model", tiny_model, "--address", "auto")
    assert code == 2 and "--backend ray" in err


def test_gpus_requested_on_a_cpu_cluster(ray_driver, tiny_model, pairs_dir, tmp_path):
    from curation import embed_ray

    if ray.cluster_resources().get("GPU"):
        pytest.skip("this cluster has GPUs")
    pairs = embed.TablePairs(pairs_dir / "captions.csv", pairs_dir / "images")
    with pytest.raises(CurationError, match="has no GPUs"):
        embed_ray.embed_ray(pairs, tmp_path / "o", _cfg(tiny_model), gpus_per_actor=1, progress=False)


# --- the read tasks' PIL side without torch ----------------------------------------------------
def _images():
    from PIL import Image

    rng = np.random.default_rng(1)
    for w, h in ((48, 40), (40, 48), (300, 7), (1, 500), (224, 224), (225, 224), (500, 333)):
        rgb = (rng.random((h, w, 3)) * 255).astype("uint8")
        yield Image.fromarray(rgb)
        yield Image.fromarray(rgb[..., 0])  # L
        yield Image.fromarray(np.dstack([rgb, rgb[..., :1]]))  # RGBA
        yield Image.fromarray(rgb).convert("P")


def test_pil_steps_equal_torchvision_pixel_for_pixel(tiny_model):
    from torchvision import transforms as T

    from curation import embed_ray, models

    _, preprocess, _, _ = models.load_model(tiny_model, None, "cpu")
    open_clip_side, _ = embed_ray.split_preprocess(preprocess)
    assert isinstance(open_clip_side, embed_ray.PilSteps)
    tv_side = T.Compose(preprocess.transforms[:3])
    cases = [(open_clip_side, tv_side)]
    for steps in ([T.Resize((200, 150), interpolation=T.InterpolationMode.BILINEAR)],
                  [T.Resize(64, max_size=80), T.CenterCrop(60)],
                  # (pads: that rare branch hands over to torchvision itself, so this only checks the hand-over)
                  [T.Resize(32, interpolation=T.InterpolationMode.NEAREST), T.CenterCrop((40, 20))],
                  [T.Resize([100])]):
        cases.append((embed_ray.PilSteps.from_transforms(steps), T.Compose(steps)))
    for mine, theirs in cases:
        for img in _images():
            try:
                b = theirs(img)
            except ValueError:  # (a 1 x 500 image under max_size=80 has a 0-pixel side) so must mine
                with pytest.raises(ValueError):
                    mine(img)
                continue
            a = mine(img)
            assert a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b)), (mine.steps, img)
    assert embed_ray.PilSteps.from_transforms([T.Resize(10), T.Grayscale()]) is None  # unknown step: torchvision's
    # settings torchvision refuses are left to it (it raises, as on the local path)
    assert embed_ray.PilSteps.from_transforms([T.Resize(64, max_size=64)]) is None


def test_pil_steps_unpickle_without_torch(tiny_model):
    """A read task unpickles the PIL side without importing torch, torchvision or open_clip."""
    import pickle

    from curation import embed_ray, models

    _, preprocess, _, _ = models.load_model(tiny_model, None, "cpu")
    blob = pickle.dumps(embed_ray.split_preprocess(preprocess)[0])
    code = ("import pickle, sys; from PIL import Image; f = pickle.loads(sys.stdin.buffer.read()); "
            "print(f(Image.new('L', (50, 30))).size, sorted(m for m in ('torch', 'torchvision', 'open_clip') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.decode()
    assert out.strip() == "(32, 32) []", out  # the tiny model: 32 x 32 input
