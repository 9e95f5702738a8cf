"""open_clip's own trainer (``python -m open_clip_train.main``, from open_clip_torch[training]) runs
on an export, started from another working directory, as a training job would be: the TSV's
absolute paths and columns are what its CSV loader reads, and the resharded tars are what its
WebDataset loader reads."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("open_clip_train")
pytest.importorskip("webdataset")


def _train(args, cwd: Path, model: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA", "WANDB"))}
    env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "open_clip_train.main", "--model", model, "--batch-size", "8", "--epochs", "1",
           "--workers", "0", "--lr", "1e-4", "--warmup", "0", "--logs", str(cwd / "logs"), "--save-frequency", "0",
           "--log-every-n-steps", "1", "--report-to", "", "--seed", "0", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    return log


def test_trainer_runs_two_steps_on_an_openclip_export(analyzed_copy, tiny_model, run_cli, tmp_path):
    out = tmp_path / "exports" / "train.tsv"
    code, _, err = run_cli("select", analyzed_copy, "--budget", "16", "--out", out)
    assert code == 0, err
    job = tmp_path / "job"  # the trainer starts elsewhere: paths in the TSV must not depend on the cwd
    job.mkdir()
    log = _train(["--train-data", str(out), "--dataset-type", "csv", "--csv-img-key", "filepath",
                  "--csv-caption-key", "title", "--train-num-samples", "16", "--name", "tsv"], job, tiny_model)
    steps = re.findall(r"Train Epoch: 0 \[\s*(\d+)/(\d+)", log)
    assert steps and steps[-1][1] == "16" and len(steps) == 2, log[-2000:]
    assert "Loss" in log


def test_trainer_reads_a_resharded_webdataset_export(tiny_model, run_cli, tmp_path, tmp_path_factory):
    """tars written by webdataset, embedded, selected, resharded, then trained on with
    ``--dataset-type webdataset``."""
    import numpy as np
    import webdataset as wds
    from PIL import Image
    import io

    from curation import analysis, embed, ingest

    src = tmp_path / "wds"
    src.mkdir()
    rng = np.random.default_rng(0)
    for s in range(2):
        with wds.TarWriter(str(src / f"shard-{s:06d}.tar")) as sink:
            for i in range(24):
                buf = io.BytesIO()
                Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(buf, format="PNG")
                sink.write({"__key__": f"{s}_{i:03d}", "png": buf.getvalue(), "txt": f"CT slice {i} of case {s}",
                            "json": {"case_id": f"c{i % 6}"}})
    emb = tmp_path / "emb"
    embed.embed(embed.TarPairs([str(src / "shard-{000000..000001}.tar")]), emb,
                embed.EmbedConfig(model=tiny_model, workers=0, batch_size=16), progress=False)
    db = tmp_path / "w.duckdb"
    ingest.ingest(db, ingest.read_clip_retrieval(emb))
    analysis.analyze(db, steps=["prototypes", "density"], progress=False)
    out = tmp_path / "exports" / "sub.json"
    code, stdout, err = run_cli("select", db, "--budget", "16", "--out", out, "--reshard", "8")
    assert code == 0, err
    pattern = re.search(r"--train-data '([^']+)'", stdout).group(1)
    job = tmp_path / "job"
    job.mkdir()
    log = _train(["--train-data", pattern, "--dataset-type", "webdataset", "--train-num-samples", "16",
                  "--name", "wds"], job, tiny_model)
    assert re.findall(r"Train Epoch: 0 \[", log), log[-2000:]
