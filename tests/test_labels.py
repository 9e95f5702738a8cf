"""Label columns (issue 24): answers, not inputs. Never flagged as confounders, never used by the
default selection, reported by the impact table (head share, class and rare-class coverage) against
random subsets of the same size. Exact shares on a hand-made table; PadChest's labels on real data."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curation import store
from curation.metrics import LabelColumn

PADCHEST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "padchest"


def test_label_column_counts_each_label_of_a_multi_label_value():
    lab = LabelColumn("finding", pd.Series(["a|b", "a", "c", None, "a | c", ""]))
    assert lab.names == ["a", "b", "c"] and lab.sizes.tolist() == [3, 1, 2] and lab.names[lab.head] == "a"
    mask = np.zeros(6, bool)
    mask[[0, 2]] = True   # "a|b" and "c": half the rows hold the head class, every class is covered
    assert lab.impact(mask, 2) == {"label_finding_head_share": 0.5, "label_finding_class_coverage": 1.0,
                                   "label_finding_rare_class_coverage": 1.0}
    mask = np.zeros(6, bool)
    mask[[1, 3]] = True   # "a" and a missing label
    got = lab.impact(mask, 2)
    assert got["label_finding_head_share"] == 0.5 and got["label_finding_class_coverage"] == pytest.approx(1 / 3)


def _pool(tmp_path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 16))
    lab = rng.integers(0, 5, n)
    np.save(tmp_path / "v.npy", (centres[lab] + 0.3 * rng.normal(size=(n, 16))).astype(np.float32))
    pd.DataFrame({"id": [f"s{i}" for i in range(n)], "caption": [f"report {x} of case {i}" for i, x in enumerate(lab)],
                  "diagnosis": [f"d{x}" for x in lab], "findings": [f"f{x}|f{(x + 1) % 5}" for x in lab],
                  "site": rng.choice(["A", "B"], n)}).to_csv(tmp_path / "m.csv", index=False)


def test_declared_labels_are_never_confounders_and_reach_the_impact_table(run_cli, tmp_path):
    _pool(tmp_path)
    db = tmp_path / "p.duckdb"
    code, _, err = run_cli("ingest", db, "--metadata", tmp_path / "m.csv", "--text-emb", tmp_path / "v.npy",
                           "--label-columns", "nosuch")
    assert code == 2 and "'nosuch' is not a metadata column" in err and not db.exists()
    assert run_cli("ingest", db, "--metadata", tmp_path / "m.csv", "--text-emb", tmp_path / "v.npy")[0] == 0
    code, out, err = run_cli("analyze", db, "--steps", "prototypes,density,quality,confounders")
    assert code == 0 and "likely confounders: diagnosis, findings" in out, out  # the embeddings predict them
    code, out, err = run_cli("analyze", db, "--steps", "prototypes,density,quality,confounders",
                             "--label-columns", "diagnosis,findings")
    assert code == 0 and "likely confounders: none" in out, out
    with store.open_store(db) as s:
        assert s.label_columns() == ["diagnosis", "findings"]
    code, out, err = run_cli("select", db, "--budget", "0.25", "--out", tmp_path / "s.parquet")
    assert code == 0, err
    for metric in ("label_diagnosis_head_share", "label_diagnosis_class_coverage",
                   "label_findings_rare_class_coverage"):
        assert metric in out
    code, out, err = run_cli("select", db, "--budget", "0.25", "--label-columns", "site", "--out", tmp_path / "t.parquet")
    assert code == 0 and "label_site_head_share" in out and "label_diagnosis" not in out


@pytest.mark.skipif(not PADCHEST.is_dir(), reason="PadChest sample not present")
def test_padchest_declared_labels_are_not_flagged(run_cli, tmp_path):
    """20,000 real PadChest reports: undeclared, is_normal is flagged (the embeddings predict it, as
    they should a label); declared, none of labels, label_major, is_normal is."""
    subprocess.run([sys.executable, str(PADCHEST / "expand.py"), str(PADCHEST), str(tmp_path), "--rows", "20000"],
                   check=True, capture_output=True)
    db = tmp_path / "pc.duckdb"
    code, _, err = run_cli("ingest", db, "--metadata", tmp_path / "metadata.csv", "--text-emb", tmp_path / "text.npy",
                           "--id-column", "id", "--label-columns", "labels,label_major,is_normal")
    assert code == 0, err
    code, out, err = run_cli("analyze", db, "--space", "text", "--steps", "prototypes,density,quality,confounders")
    assert code == 0, err
    flagged = out.split("likely confounders: ")[1].splitlines()[0]
    assert not {"labels", "label_major", "is_normal"} & set(flagged.split(", ")), flagged
    from curation import analysis, runs

    with store.open_store(db) as s:
        table = analysis.load_table(s, runs.require(s, None).run_id, "confounders").set_index("column")
    assert (table.loc[["labels", "label_major", "is_normal"], "role"] == "label").all()
