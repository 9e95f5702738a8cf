"""Export through the CLI: formats, byte-identical re-export, reproduction from the sidecar,
atomic writes, the golden sidecar, and bad input."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from curation import CurationError, manifest, store
from curation.selection import SelectionConfig

GOLDEN = Path(__file__).parent / "golden" / "sidecar_v1.json"


@pytest.fixture
def db(analyzed_copy):
    return analyzed_copy


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def test_select_writes_manifest_sidecar_and_dropped(db, tmp_path, run_cli):
    out = tmp_path / "out" / "subset.parquet"
    code, stdout, err = run_cli("select", db, "--budget", "0.25", "--confounders", "site,scanner",
                                "--mode", "proportional", "--seed", "0", "--out", out)
    assert code == 0, err
    kept = pq.read_table(out).to_pandas()
    dropped = pq.read_table(tmp_path / "out" / "subset.parquet.dropped.parquet").to_pandas()
    side = json.loads((tmp_path / "out" / "subset.parquet.sidecar.json").read_text())
    assert len(kept) == 1000 and len(kept) + len(dropped) == 4000
    assert {"id", "image", "image_path", "caption", "rank", "reason", "fidelity_score", "proto_dist"} <= set(kept)
    assert kept["rank"].tolist() == list(range(1000))
    assert set(kept.reason) <= {"kept_tail", "kept_core_fps"} and "kept" not in "".join(dropped.reason)
    assert Path(kept.image_path[0]).is_file()  # absolute, inside the dataset's image root
    with store.open_store(db) as s:
        assert side["dataset"]["fingerprint"] == s.fingerprint
        assert s.runs("selection")["config"].map(json.loads).iloc[-1]["budget"] == 0.25
    assert side["manifest"]["sha256"] == _sha(out) and side["summary"]["selected"] == 1000
    assert side["impact"]["tvd_site"]["subset"] < 0.02
    assert "selected 1,000 of 4,000" in stdout


def test_same_config_byte_identical_and_reproducible_from_sidecar(db, tmp_path, run_cli):
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    args = ("--budget", "700", "--confounders", "sex", "--mode", "balanced", "--gate", "fidelity:top=0.9")
    assert run_cli("select", db, *args, "--out", a)[0] == 0
    assert run_cli("select", db, *args, "--out", b)[0] == 0
    assert _sha(a) == _sha(b)
    code, _, err = run_cli("select", "--from", tmp_path / "a.parquet.sidecar.json", "--out", c)
    assert code == 0, err
    assert _sha(a) == _sha(c)


def test_from_sidecar_refuses_a_changed_dataset(db, tmp_path, run_cli):
    assert run_cli("select", db, "--budget", "100", "--out", tmp_path / "a.parquet")[0] == 0
    side = json.loads((tmp_path / "a.parquet.sidecar.json").read_text())
    side["dataset"]["fingerprint"] = "0" * 32
    (tmp_path / "x.sidecar.json").write_text(json.dumps(side))
    code, _, err = run_cli("select", "--from", tmp_path / "x.sidecar.json", "--out", tmp_path / "z.parquet")
    assert code == 2 and "has changed" in err and not (tmp_path / "z.parquet").exists()


@pytest.mark.parametrize("fmt, name", [("csv", "m.csv"), ("jsonl", "m.jsonl"), ("openclip", "m.tsv")])
def test_formats(db, tmp_path, run_cli, fmt, name):
    out = tmp_path / name
    assert run_cli("select", db, "--budget", "50", "--out", out, "--format", fmt)[0] == 0
    if fmt == "csv":
        df = pd.read_csv(out)
    elif fmt == "jsonl":
        df = pd.read_json(out, lines=True)
    else:
        df = pd.read_csv(out, sep="\t")
        assert list(df.columns) == ["filepath", "title"]
        assert Path(df.filepath[0]).is_file() and df.title.str.len().min() > 0
        return
    assert len(df) == 50 and df["rank"].tolist() == list(range(50))


def test_a_failed_export_leaves_the_old_manifest(db, tmp_path, run_cli, monkeypatch):
    out = tmp_path / "m.parquet"
    assert run_cli("select", db, "--budget", "50", "--out", out)[0] == 0
    before = _sha(out)

    def boom(df, path, fmt):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(manifest, "_write_table", boom)
    code, _, err = run_cli("select", db, "--budget", "60", "--out", out, "--overwrite")
    assert code == 2 and "disk full" in err and "Nothing was replaced" in err
    assert _sha(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("args, message", [
    (("--budget", "0.25", "--confounders", "nope"), "unknown confounder column 'nope'"),
    (("--budget", "999999"), "larger than the pool"),
    (("--budget", "-5"), "positive"),
    (("--budget", "lots"), "not a number"),
    (("--budget", "10", "--gate", "fidelity>0.3"), "AXIS:min=S"),
    (("--budget", "10", "--filter", "age ~ 3"), "COLUMN OP VALUE"),
])
def test_bad_select_arguments(db, tmp_path, run_cli, args, message):
    code, _, err = run_cli("select", db, *args, "--out", tmp_path / "m.parquet")
    assert code == 2 and message in err, err
    assert not (tmp_path / "m.parquet").exists()


def test_golden_sidecar_keeps_loading():
    side = manifest.read_sidecar(GOLDEN)
    cfg = SelectionConfig.from_dict(side["config"])
    assert cfg.mode == "tempered" and cfg.gates[0].top_q == 0.9 and cfg.filters[0].value == 18
    assert side["sidecar_version"] == 1 and len(side["dataset"]["fingerprint"]) == 32


def test_unknown_sidecar_version_refused(tmp_path):
    side = json.loads(GOLDEN.read_text())
    side["sidecar_version"] = 7
    (tmp_path / "s.json").write_text(json.dumps(side))
    with pytest.raises(CurationError, match="has version 7; this tool reads up to 1"):
        manifest.read_sidecar(tmp_path / "s.json")
