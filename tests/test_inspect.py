"""Inspect and act from the library and the CLI: cluster labels, show, search, exclude/include rules."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from curation import CurationError, analysis, inspect, runs, selection, store
from curation.selection import SelectionConfig


def _sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def test_cluster_labels_name_the_planted_findings(analyzed_db):
    with store.open_store(analyzed_db) as s:
        run = runs.latest_run(s)
        labels = analysis.cluster_label_map(s, run)
        df, _ = analysis.load(s, run)
        finding = s.samples(["finding"])["finding"]
    major = df.assign(finding=finding).groupby("prototype")["finding"].agg(lambda x: x.value_counts().index[0])
    hits = [any(w in labels[c].split() for w in f.split()) for c, f in major.items()]
    assert np.mean(hits) >= 0.8, [(c, major[c], labels[c]) for c, h in zip(major.index, hits) if not h]
    assert not any(w in " ".join(labels.values()).split() for w in ("axial", "image", "impression"))


def test_show_lists_exactly_the_stored_neighbours(analyzed_db, run_cli):
    with store.open_store(analyzed_db) as s:
        run = runs.latest_run(s)
        nbr, sim = analysis.load_knn(s, run)
        ids = s.samples(["id"])["id"].tolist()
        info = inspect.show(s, ids[7], neighbours=5)
    assert [n["id"] for n in info["neighbours"]] == [ids[j] for j in nbr[7][:5]]
    assert [round(n["cosine"], 5) for n in info["neighbours"]] == [round(float(x), 5) for x in sim[7][:5]]
    assert info["sample"]["id"] == ids[7] and info["analysis"]["cluster_label"]
    assert info["reason"] in selection.REASONS
    code, out, err = run_cli("show", analyzed_db, ids[7], "--neighbours", "3")
    assert code == 0, err
    assert [line.split()[1] for line in out.split("nearest neighbours (3):\n")[1].splitlines()] == \
        [ids[j] for j in nbr[7][:3]]
    code, _, err = run_cli("show", analyzed_db, "no-such-id")
    assert code == 2 and "no sample with id 'no-such-id'" in err


def test_search_finds_planted_terms(analyzed_db, run_cli):
    with store.open_store(analyzed_db) as s:
        captions = s.samples(["caption"])["caption"]
        hits = inspect.search(s, "PNEUMOTHORAX", limit=10_000)
        both = inspect.search(s, "foot calcification", limit=10_000)
        odd = inspect.search(s, "100%_' OR 1=1 --", limit=10)
    expected = captions[captions.str.contains("pneumothorax", case=False)]
    assert len(expected) > 0 and hits["caption"].tolist() == expected.tolist()
    assert all("foot" in c.lower() and "calcification" in c.lower() for c in both.caption) and len(both)
    assert odd.empty  # words are bound parameters with %/_ escaped: nothing matches, nothing breaks
    code, out, err = run_cli("search", analyzed_db, "pneumothorax", "--limit", "3")
    assert code == 0 and len(out.splitlines()) == 3 and "limit reached" in err


def test_excluding_a_cluster_removes_all_its_members_and_reproduces(analyzed_copy, run_cli, tmp_path):
    out = tmp_path / "m.parquet"
    code, _, err = run_cli("select", analyzed_copy, "--budget", "0.5", "--exclude-cluster", "3,5", "--out", out)
    assert code == 0, err
    kept = pd.read_parquet(out)
    assert not kept["prototype"].isin([3, 5]).any() and len(kept) == 2000
    dropped = pd.read_parquet(str(out) + ".dropped.parquet")
    with store.open_store(analyzed_copy) as s:
        df, _ = analysis.load(s)
    assert (dropped[dropped.reason == "dropped_by_rule"].prototype.isin([3, 5])).all()
    assert (dropped.reason == "dropped_by_rule").sum() == int(df.prototype.isin([3, 5]).sum())
    side = json.loads((tmp_path / "m.parquet.sidecar.json").read_text())
    assert side["config"]["exclude_clusters"] == [3, 5]
    code, stdout, err = run_cli("select", "--from", tmp_path / "m.parquet.sidecar.json", "--out", tmp_path / "again.parquet")
    assert code == 0 and "reproduced" in stdout and _sha(out) == _sha(tmp_path / "again.parquet")


def test_id_files_exclude_and_include(analyzed_copy, run_cli, tmp_path):
    with store.open_store(analyzed_copy) as s:
        ids = s.samples(["id"])["id"].tolist()
    base = tmp_path / "base.parquet"
    assert run_cli("select", analyzed_copy, "--budget", "100", "--out", base)[0] == 0
    first = pd.read_parquet(base)["id"].tolist()
    (tmp_path / "bad.txt").write_text("\n".join(first[:10]) + "\n")
    with store.open_store(analyzed_copy) as s:
        bands = selection.load_inputs(s).band
    outliers = [i for i, b in zip(ids, bands) if b == "outlier"][:3]
    (tmp_path / "want.txt").write_text("\n".join(outliers) + "\n")
    out = tmp_path / "m.parquet"
    code, _, err = run_cli("select", analyzed_copy, "--budget", "100", "--exclude-ids", tmp_path / "bad.txt",
                           "--include-ids", tmp_path / "want.txt", "--out", out)
    assert code == 0, err
    kept = pd.read_parquet(out)
    assert not set(first[:10]) & set(kept.id) and kept.id.tolist()[:3] == outliers  # forced first, even outliers
    assert (kept.reason[:3] == "kept_by_rule").all() and len(kept) == 100
    side = json.loads((tmp_path / "m.parquet.sidecar.json").read_text())
    assert side["config"]["exclude_sets"][0].startswith("exclude-bad@")
    code, stdout, err = run_cli("select", "--from", tmp_path / "m.parquet.sidecar.json", "--out", tmp_path / "r.parquet")
    assert code == 0 and _sha(out) == _sha(tmp_path / "r.parquet")
    # the set saved again under its name (another file named bad.txt): a new version; the export
    # pinned the old one, which stays, so it still reproduces byte for byte
    (tmp_path / "bad.txt").write_text("\n".join(first[:5]) + "\n")
    assert run_cli("select", analyzed_copy, "--budget", "100", "--exclude-ids", tmp_path / "bad.txt",
                   "--out", tmp_path / "n.parquet")[0] == 0
    side_n = json.loads((tmp_path / "n.parquet.sidecar.json").read_text())
    assert side_n["config"]["exclude_sets"][0] != side["config"]["exclude_sets"][0]
    code, stdout, err = run_cli("select", "--from", tmp_path / "m.parquet.sidecar.json", "--out", tmp_path / "r2.parquet")
    assert code == 0 and "reproduced" in stdout and _sha(out) == _sha(tmp_path / "r2.parquet"), err
    (tmp_path / "unknown.txt").write_text("nope\n")
    code, _, err = run_cli("select", analyzed_copy, "--budget", "10", "--exclude-ids", tmp_path / "unknown.txt",
                           "--out", tmp_path / "u.parquet")
    assert code == 2 and "'nope', line 1" in err


def test_saved_search_as_a_rule(analyzed_copy, run_cli, tmp_path):
    code, _, err = run_cli("search", analyzed_copy, "pneumothorax", "--limit", "100000", "--save", "ptx")
    assert code == 0 and "as id set ptx@" in err
    code, _, err = run_cli("select", analyzed_copy, "--budget", "0.5", "--exclude-set", "ptx", "--out", tmp_path / "m.parquet")
    assert code == 0, err
    assert not pd.read_parquet(tmp_path / "m.parquet").caption.str.contains("pneumothorax", case=False).any()


def test_bad_rules_are_one_line(analyzed_copy, run_cli, tmp_path):
    code, _, err = run_cli("select", analyzed_copy, "--budget", "10", "--exclude-cluster", "999", "--out", tmp_path / "m.parquet")
    assert code == 2 and "clusters 0.." in err
    code, _, err = run_cli("select", analyzed_copy, "--budget", "10", "--exclude-set", "nosuch", "--out", tmp_path / "m.parquet")
    assert code == 2 and "no id set 'nosuch'" in err
    with pytest.raises(CurationError, match="id set 'x@000000000000' is not in this dataset"):
        with store.open_store(analyzed_copy) as s:
            selection.select(selection.load_inputs(s), SelectionConfig(exclude_sets=("x@000000000000",)))


def test_distinct_clusters_get_distinct_names(analyzed_db):
    """k-means splits the demo's head finding over many prototypes; each still gets its own name."""
    from curation.labels import _distinct, cluster_labels

    with store.open_store(analyzed_db) as s:
        labels = analysis.cluster_label_map(s, runs.latest_run(s))
    names = [v for v in labels.values() if v]
    assert len(set(names)) == len(names)
    shared = "edema knee " * 6
    caps = [shared + "effusion", shared + "fracture", shared + "fracture", shared, "tumor lung"]
    names = cluster_labels(caps, np.array([0, 1, 1, 2, 3]), 4, words=2)
    # clusters 1 and 2 share "edema knee"; the word that sets cluster 1 apart is added to its name
    assert names == ["effusion edema", "edema knee · fracture", "edema knee", "lung tumor"]
    # identical texts cannot be told apart by words: numbered by size
    import scipy.sparse as sp

    assert _distinct(["a", "a", "b"], sp.csr_matrix(np.ones((3, 2))), np.array(["x", "y"])) == ["a", "a #2", "b"]


def test_names_are_weighed_against_the_neighbouring_clusters():
    """Clusters 0 and 1 sit side by side (both "knee"); "effusion" is common in the pool but, near
    cluster 1, only cluster 1 has it: against its neighbour it is cluster 1's name, where contrast
    with the whole pool names it "knee" (what both neighbours share)."""
    from curation.labels import cluster_labels

    caps = ["knee knee fracture", "knee knee effusion"] + ["lung lung effusion"] * 3
    assign = np.arange(5)
    cents = np.array([[1, 0.1, 0], [1, 0, 0.1], [0, 1, 0], [0.1, 1, 0], [0, 1, 0.1]], np.float32)
    assert cluster_labels(caps, assign, 5, words=1)[:2] == ["fracture", "knee"]
    assert cluster_labels(caps, assign, 5, words=1, centroids=cents, neighbours=1)[:2] == ["fracture", "effusion"]
    # with too few clusters for a neighbourhood, the whole pool is the contrast
    assert cluster_labels(caps[:2], assign[:2], 2, words=1, centroids=cents[:2]) == ["fracture", "effusion"]


def test_the_demo_planted_clusters_get_distinct_names_on_the_map(analyzed_db):
    """Every planted (region, finding) cluster of the demo is named on the map by its region and
    its finding, no two alike; the prototypes k-means splits one finding into carry one name."""
    from curation import charts, demo, raster
    from curation.labels import family

    with store.open_store(analyzed_db) as s:
        run = runs.latest_run(s)
        labels = analysis.cluster_label_map(s, run)
        df, _ = analysis.load(s, run)
        truth = s.read_table("demo_truth").sort_values("row_idx")
    x, y, proto = df.map_x.to_numpy(), df.map_y.to_numpy(), df.prototype.to_numpy()
    names = charts.map_names(x, y, proto, labels, raster.view_of(x, y), limit=1000, min_gap=(0, 0))
    texts = [t for _, _, t in names]
    assert len(texts) == len(set(texts)) == len({family(t) for t in labels.values()})
    fam = pd.Series(np.array([family(labels[c]) for c in range(len(labels))])[proto])
    major = fam.groupby(truth.true_cluster.to_numpy()).agg(lambda v: v.value_counts().index[0])
    assert len(major) == 20 and major.nunique() == 20, major
    n_regions = len(demo.REGIONS)
    for t, name in major.items():  # the generator's (region, finding) of planted cluster t
        region = demo.REGIONS[t % n_regions]
        finding = demo.FINDINGS[(13 * (t // n_regions) + t) % len(demo.FINDINGS)]
        words = name.split()
        assert region in words and any(w in words for w in finding.split()), (t, region, finding, name)
    # the default: the 12 largest in the view, none overlapping, the largest planted cluster first
    shown = charts.map_names(x, y, proto, labels, raster.view_of(x, y))
    assert 1 <= len(shown) <= 12 and shown[0][2] == major[0]
