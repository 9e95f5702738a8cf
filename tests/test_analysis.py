"""The analysis on the demo's ground truth, and the pure algorithms on data with known answers."""

import numpy as np
import pandas as pd
import pytest

from curation import runs as runs_mod
from curation import CurationError, analysis, density, prototypes, store
from curation.confounders import cramers_v_corrected

from conftest import MEDPIX


def _pairs(groups):
    out = set()
    for key, idx in pd.Series(np.arange(len(groups))).groupby(groups):
        if key >= 0 and len(idx) > 1:
            idx = sorted(idx)
            out |= {(a, b) for i, a in enumerate(idx) for b in idx[i + 1:]}
    return out


@pytest.fixture(scope="module")
def result(analyzed_db):
    with store.open_store(analyzed_db) as s:
        df, cfg = analysis.load(s)
        truth = s.read_table("demo_truth")
        run = runs_mod.latest_run(s)
        conf = analysis.load_table(s, run, "confounders").set_index("column")
    return df, cfg, truth, conf


def test_planted_near_duplicates_found(result):
    df, _, truth, _ = result
    found, planted = _pairs(df["dup_group"].to_numpy()), _pairs(truth["dup_group"].to_numpy())
    precision = len(found & planted) / len(found)
    recall = len(found & planted) / len(planted)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    # one representative kept per group, never all members dropped
    groups = df[df.dup_group >= 0].groupby("dup_group").is_dup
    assert (groups.sum() == groups.size() - 1).all()


def test_smallest_clusters_land_in_the_tail(result):
    df, _, truth, _ = result
    smallest = truth.cluster_size <= np.sort(truth.cluster_size.unique())[4]  # 5 rarest clusters
    rare_end = (df.band != "core") | (df.tail_score >= 0.9)
    assert rare_end[smallest].mean() >= 2.5 * rare_end.mean(), (rare_end[smallest].mean(), rare_end.mean())


def test_mismatched_pairs_in_bottom_decile_of_fidelity(result):
    df, _, truth, _ = result
    mm = truth.is_mismatched.to_numpy()
    assert (df.fidelity_score[mm] < 0.1).mean() >= 0.95
    assert (df.consistency_score[mm] < 0.1).mean() >= 0.9


def test_planted_confounders_flagged_random_columns_not(result):
    *_, conf = result
    assert conf.loc["site", "is_confounder"] and conf.loc["scanner", "is_confounder"]
    for col in ("sex", "age", "view"):
        assert not conf.loc[col, "is_confounder"], conf.loc[col]
        assert abs(conf.loc[col, "probe_lift"]) < 0.05 and conf.loc[col, "cramers_v"] < 0.1
    assert conf.loc["finding", "role"] == "label" and not conf.loc["finding", "is_confounder"]
    assert conf.loc["age", "kind"] == "binned"
    assert "case_id" not in conf.index


def test_bands_and_fps_ranks(result):
    df, cfg, _, _ = result
    assert set(df.band) == {"core", "tail", "outlier"}
    assert (df.loc[df.band == "core", "proto_pct"] <= cfg["core_pct"]).all()
    assert (df.loc[df.band == "outlier", "proto_pct"] > cfg["tail_pct"]).all()
    core = df[df.band == "core"]
    # fps ranks are a permutation 0..m-1 within each cluster's core, -1 elsewhere
    for _, g in core.groupby("prototype"):
        assert sorted(g.fps_rank) == list(range(len(g)))
    assert (df.loc[df.band != "core", "fps_rank"] == -1).all()
    assert df[["map_x", "map_y"]].notna().all().all() and df.glosh_score.between(0, 1).all()


def test_same_config_same_run_new_config_new_run(analyzed_copy, result):
    analyzed_db = analyzed_copy
    df, _, _, _ = result
    cfg = analysis.AnalysisConfig()
    again = analysis.analyze(analyzed_db, cfg, steps=["prototypes", "density"])
    with store.open_store(analyzed_db) as s:
        assert again == runs_mod.latest_run(s)
        df2, _ = analysis.load(s, again)
    pd.testing.assert_frame_equal(df, df2)  # identical, map and quality columns kept too
    other = analysis.analyze(analyzed_db, analysis.AnalysisConfig(k=12), steps=["prototypes"])
    with store.open_store(analyzed_db) as s:
        assert other != again and set(s.runs("analysis").run_id) >= {again, other}
        assert analysis.load(s, other)[0].prototype.nunique() == 12
        assert analysis.load(s, again)[0].prototype.nunique() == df.prototype.nunique()


def test_a_step_needs_its_input_step(analyzed_copy):
    with pytest.raises(CurationError, match="prototypes"):
        analysis.analyze(analyzed_copy, analysis.AnalysisConfig(k=7), steps=["density"])
    with pytest.raises(CurationError, match="unknown step"):
        analysis.analyze(analyzed_copy, analysis.AnalysisConfig(), steps=["nope"])


def test_knn_recall_against_exact(analyzed_db, result):
    df, _, _, _ = result
    """The demo's isotropic blobs are the worst case for a partition-based search: recall grows
    with the probes, and the density ranking (what the tail score uses) stays close to exact."""
    from scipy.stats import spearmanr

    from curation.analysis import features

    with store.open_store(analyzed_db) as s:
        F, _ = features(s)
        X = np.asarray(F)
        F.source.close()
        run = runs_mod.latest_run(s)
        pt = analysis.load_table(s, run, "prototypes")
    cent = analysis.centroids_of(pt)
    q = np.random.default_rng(0).choice(len(X), 300, replace=False)
    exact, exact_sim = density.exact_knn(X, 10, q)
    recalls = []
    for p in (1, 4, 12):
        nbr, sim = density.knn_within_clusters(X, df.prototype.to_numpy(),
                                               prototypes.nearest_prototypes(X, cent, p), k=10)
        recalls.append(density.recall_at_k(nbr[q], exact))
        if p == 4:
            assert recalls[-1] >= 0.75
            assert spearmanr(density.knn_density(sim)[q], exact_sim.mean(1)).statistic >= 0.95
    assert recalls[0] < recalls[1] < recalls[2] and recalls[2] >= 0.9, recalls


def test_fps_prefix_is_exact_greedy_fps():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 5)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    order = prototypes.fps_order(X, start=3, exact_max=60)
    # brute force greedy FPS for every prefix
    picked = [3]
    for _ in range(59):
        d = np.min(1 - X @ X[picked].T, axis=1)
        d[picked] = -np.inf
        picked.append(int(np.argmax(d)))
    assert order.tolist() == picked
    capped = prototypes.fps_order(X, start=3, exact_max=10)
    assert capped[:10].tolist() == picked[:10] and sorted(capped) == list(range(60))


def test_duplicate_threshold_and_case_rule():
    # 4 samples: 0~1 very close (same case), 2~3 very close (different cases)
    nbr = np.array([[1], [0], [3], [2]])
    sim = np.array([[0.99], [0.99], [0.97], [0.97]], np.float32)
    g, dup = density.duplicate_groups(nbr, sim, eps=0.05, keep_key=np.array([0.1, 0.2, 0.0, 0.0]))
    assert g.tolist() == [1, 1, 2, 2] and dup.tolist() == [True, False, False, True]
    g, _ = density.duplicate_groups(nbr, sim, eps=0.02)
    assert g.tolist() == [0, 0, -1, -1]
    g, _ = density.duplicate_groups(nbr, sim, eps=0.05, case=np.array([7, 7, 8, 9]))
    assert g.tolist() == [0, 0, -1, -1]


def test_cluster_percentiles_and_default_k():
    assign = np.array([0, 0, 0, 1, 1])
    dist = np.array([0.3, 0.1, 0.2, 0.5, 0.4])
    assert prototypes.cluster_percentiles(assign, dist).tolist() == [100, 0, 50, 100, 0]
    assert prototypes.default_k(20_000) == 141 and prototypes.default_k(100) == 10 and prototypes.default_k(30) == 6
    assert prototypes.default_k(10**8) == 2000


def test_cramers_v():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 5000)
    assert cramers_v_corrected(a, a) == pytest.approx(1.0)
    assert cramers_v_corrected(a, rng.integers(0, 4, 5000)) < 0.03


def test_config_json_round_trip_and_bad_keys():
    cfg = analysis.AnalysisConfig(k=5, space="image")
    import json

    assert analysis.AnalysisConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(CurationError, match="unknown"):
        analysis.AnalysisConfig.from_dict({"kk": 3})


def test_no_analysis_yet_is_a_clear_error(demo_db):
    with store.open_store(demo_db) as s, pytest.raises(CurationError, match="curation analyze"):
        analysis.load(s)


@pytest.mark.skipif(not MEDPIX.is_dir(), reason="MedPix sample not present")
def test_medpix_analysis_runs(medpix_db, tmp_path, run_cli):
    """The shared MedPix fixture (every step but the map) completed by the CLI: the map step joins
    its run, and a plain `analyze` then finds everything stored and prints the report."""
    import shutil

    db = tmp_path / "medpix.duckdb"
    shutil.copy(medpix_db, db)
    code, _, err = run_cli("analyze", db, "--steps", "map")
    assert code == 0, err
    code, out, err = run_cli("analyze", db)
    assert code == 0, err
    with store.open_store(db) as s:
        assert len(s.runs("analysis")) == 1  # one run, all five steps
        assert set(runs_mod.latest(s).steps) == set(analysis.STEPS)
    assert "different encoders" in out and "likely confounders" in out
    with store.open_store(db) as s:
        df, _ = analysis.load(s)
        assert df.fidelity.isna().all() and df.consistency.notna().all()


def test_fine_lists_cut_large_lists_and_keep_the_search_exact_where_nothing_is_cut(analyzed_db, result):
    """Lists above fine_max are split by a k-means inside them (issue 26: kNN cost N x list size at
    any N); with no list above it the search is the one without fine lists, bit for bit; the
    split search reads far fewer rows per query and its recall against exact kNN is measured."""
    df, _, _, _ = result
    from curation.analysis import features

    with store.open_store(analyzed_db) as s:
        F, _ = features(s)
        X = np.asarray(F)
        F.source.close()
        pt = analysis.load_table(s, runs_mod.latest_run(s), "prototypes")
    cent = analysis.centroids_of(pt)
    assign = df.prototype.to_numpy()
    probes = prototypes.nearest_prototypes(X, cent, 4)
    base = density.knn_within_clusters(X, assign, probes, k=10)
    uncut = density.knn_within_clusters(X, assign, probes, k=10, centroids=cent, fine_max=int(np.bincount(assign).max()))
    np.testing.assert_array_equal(base[0], uncut[0])
    np.testing.assert_array_equal(base[1], uncut[1])

    fine, parent, fcent = density.split_lists(X, assign, cent, 40, 0, density.LocalRunner())
    sizes = np.bincount(fine)
    big = np.bincount(assign) > 40
    assert parent is not None and len(parent) == len(fcent) == len(sizes)
    assert (sizes > 0).all() and (parent[fine] == assign).all()  # dense ids, parts inside their list
    assert (np.bincount(parent) == np.where(big, -(-np.bincount(assign) // 40), 1)).sum() >= big.size - 2
    fp = density.fine_probes(X, assign, probes, fcent, parent, density.LocalRunner())
    assert (np.isin(parent[fp], probes).reshape(fp.shape) | (fp < 0)).all()  # inside the probed lists
    assert (fp[:, 0] >= 0).all()
    cut_nbr, cut_sim = density.knn_within_clusters(X, assign, probes, k=10, centroids=cent, fine_max=40)
    read_before = np.bincount(assign)[probes].sum()
    read_after = sizes[fp[fp >= 0]].sum()
    assert read_after < read_before / 2
    q = np.random.default_rng(0).choice(len(X), 300, replace=False)
    exact, _ = density.exact_knn(X, 10, q)
    r_base, r_cut = density.recall_at_k(base[0][q], exact), density.recall_at_k(cut_nbr[q], exact)
    print("recall@10 without / with fine lists:", r_base, r_cut, "rows read:", read_before, read_after)
    assert r_cut >= 0.4 and r_cut <= r_base, (r_base, r_cut)
    assert np.isfinite(cut_sim[:, 0]).all()


def test_fps_of_a_large_cluster_runs_in_a_projection(monkeypatch):
    """Above FPS_FULL_MAX members the picks are made in a seeded random projection: a permutation
    starting at the given member, reproducible, covering the cluster about as well as exact FPS."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((12, 64)).astype(np.float32)
    X = centres[rng.integers(0, 12, 900)] + 0.2 * rng.standard_normal((900, 64)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    rows = np.arange(900)
    monkeypatch.setattr(prototypes, "FPS_FULL_MAX", 100)
    order = prototypes.fps_cluster(X, 40, prototypes.FPS_FULL_MAX, rows, 5)
    assert order[0] == 5 and np.array_equal(np.sort(order), rows)
    np.testing.assert_array_equal(order, prototypes.fps_cluster(X, 40, 100, rows, 5))
    assert not np.array_equal(order, prototypes.fps_cluster(X, 40, 900, rows, 5))  # 900 members: exact
    exact = prototypes.fps_order(X, 5, 40)

    def radius(o, m):
        return float((1 - (X @ X[o[:m]].T).max(axis=1)).max())

    rnd = rng.permutation(900)
    assert radius(order, 12) <= radius(exact, 12) + 0.05  # one pick per blob, as exact FPS
    assert radius(order, 12) < radius(rnd, 12)


def test_fine_probes_pick_the_best_lists_with_ties_to_the_lower_id():
    """The partition-then-sort of fine_probe_group gives what sorting every candidate gives, ties
    and rows with too few candidates included (random small cases, many exact ties)."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        m, c, p, k = rng.integers(1, 50), rng.integers(1, 30), rng.integers(1, 6), rng.integers(1, 8)
        parent = rng.integers(0, k, c)
        parent[:min(c, k)] = np.arange(min(c, k))
        fcent = rng.standard_normal((c, 8)).astype(np.float32)
        if trial % 3 == 0:
            fcent = np.round(fcent)
        X = np.round(rng.standard_normal((m, 8))).astype(np.float32)
        probes = rng.integers(-1, k, (m, p))
        got = density.fine_probe_group(X, fcent, parent, p, np.arange(m), probes)
        cand = np.flatnonzero(np.isin(parent, probes[probes >= 0]))
        S = X @ fcent[cand].T
        S[~(parent[cand][None, :, None] == probes[:, None, :]).any(axis=2)] = -np.inf
        top = np.lexsort((np.broadcast_to(cand, S.shape), -S))[:, :p]
        ref = np.full((m, p), -1)
        ref[:, :top.shape[1]] = np.where(np.isfinite(np.take_along_axis(S, top, axis=1)), cand[top], -1)
        assert np.array_equal(got, ref), trial


def test_the_assignment_pass_gives_the_knn_probes(analyzed_db, result):
    """The prototypes step keeps each row's 4 nearest prototypes from its assignment pass; a resumed
    density step computes them again: the same arrays, whose first two columns are the assignment."""
    df, _, _, _ = result
    from curation.analysis import features

    with store.open_store(analyzed_db) as s:
        F, _ = features(s)
        X = np.asarray(F)
        F.source.close()
    fit = prototypes.fit_prototypes(X, 12, seed=3, probes=4)
    again = prototypes.nearest_prototypes(X, fit.centroids, 4)
    assert fit.nearest.shape == (len(X), 4) and fit.nearest.dtype == np.int32
    np.testing.assert_array_equal(fit.nearest, again)
    np.testing.assert_array_equal(fit.nearest[:, 0], fit.assign)
    np.testing.assert_array_equal(fit.nearest[:, 1], fit.second)
    plain = prototypes.fit_prototypes(X, 12, seed=3)
    np.testing.assert_array_equal(plain.assign, fit.assign)
    np.testing.assert_array_equal(plain.second, fit.second)
    np.testing.assert_array_equal(plain.nearest, fit.nearest[:, :2])
    one = prototypes.fit_prototypes(X[:50], 1, probes=4)
    assert one.nearest.shape == (50, 1) and (one.second == -1).all()


def test_cluster_names_read_at_most_the_cap_of_captions_per_cluster(monkeypatch):
    """A cluster is named from its members nearest the prototype, at most LABEL_CAPTIONS_MAX of
    them; with no cluster above the cap every row is read (the names are what they were)."""
    from curation import analysis_steps

    rng = np.random.default_rng(0)
    assign = rng.choice(4, 1000, p=[0.7, 0.2, 0.05, 0.05]).astype(np.int32)
    dist = rng.integers(0, 30, 1000) / 30.0  # ties
    assert analysis_steps.label_rows(assign, dist, 1000) is None
    rows = analysis_steps.label_rows(assign, dist, 100)
    assert (np.diff(rows) > 0).all()
    for c in range(4):
        members = np.flatnonzero(assign == c)
        want = members[np.lexsort((members, dist[members]))][:100]  # nearest first, ties by row
        np.testing.assert_array_equal(np.sort(rows[assign[rows] == c]), np.sort(want))


def _merge_by_lexsort(nbr, sim, q, cand_idx, cand_sim):
    """The merge's definition: all 2k+1 entries of a query sorted by (similarity desc, row asc,
    -1 last), the first k kept, -inf entries as row -1 (the numpy form the kernel replaced)."""
    all_sim = np.concatenate([sim[q], cand_sim], axis=1)
    all_idx = np.concatenate([nbr[q], cand_idx], axis=1)
    key = np.where(all_idx < 0, np.iinfo(np.int64).max, all_idx)
    top = np.lexsort((key, -all_sim))[:, : nbr.shape[1]]
    sv, nb = np.take_along_axis(all_sim, top, axis=1), np.take_along_axis(all_idx, top, axis=1)
    nb[np.isneginf(sv)] = -1
    sim[q], nbr[q] = sv, nb


def test_candidate_merge_keeps_the_total_order_with_ties_and_empty_slots():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, k = int(rng.integers(5, 40)), int(rng.integers(1, 12))
        kind = np.int32 if trial % 2 else np.int64
        a = (np.full((n, k), -1, kind), np.full((n, k), -np.inf, np.float32))
        b = (a[0].copy(), a[1].copy())
        for _ in range(int(rng.integers(1, 6))):  # several lists' candidates for the same queries
            q = np.sort(rng.choice(n, int(rng.integers(0, n)), replace=False))
            w = int(rng.integers(1, k + 3))
            idx = rng.integers(-1, n, (len(q), w))
            s = np.round(rng.random((len(q), w)), 1).astype(np.float32)  # many ties
            s[(rng.random(s.shape) < 0.2) | (idx < 0)] = -np.inf  # self rows and short lists
            _merge_by_lexsort(*a, q, idx.copy(), s.copy())
            density.merge_candidates(*b, q, idx, s)
        np.testing.assert_array_equal(b[0], a[0])
        np.testing.assert_array_equal(b[1], a[1])
        assert b[0].dtype == kind


def test_blockwise_normalisation_is_bit_for_bit_numpys():
    from curation.spaces import NORM_BLOCK, normalize

    rng = np.random.default_rng(1)
    for shape, dt in [((3 * NORM_BLOCK + 5, 64), np.float32), ((300, 48), np.float16), ((0, 8), np.float32)]:
        x = rng.standard_normal(shape).astype(dt)
        if len(x):
            x[1] = 0
        ref = np.asarray(x, np.float32)
        norms = np.linalg.norm(ref, axis=1, keepdims=True)
        norms[norms == 0] = 1
        np.testing.assert_array_equal(normalize(x), ref / norms)
        y = np.asarray(x, np.float32).copy()
        normalize(y, out=y, eps=1e-12)
        np.testing.assert_array_equal(y, ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12))


def _blobs(n, d, k, seed):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, d)).astype(np.float32)
    X = (c[rng.integers(0, k, n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_the_map_keeps_its_projection_on_disk_and_places_the_same_rows(tmp_path):
    """The map reads the vectors once: the projection kept in a scratch file gives the positions
    of the in-memory run bit for bit, and the file is gone afterwards."""
    from curation import projection

    X = _blobs(6000, 32, 12, 0)
    mem, fitted = projection.umap_map(X, fit_max=400)
    disk, fitted2 = projection.umap_map(X, fit_max=400, scratch=tmp_path / "map")
    assert fitted.sum() == 400 and np.array_equal(fitted, fitted2)
    assert np.array_equal(mem, disk)
    assert list((tmp_path / "map").iterdir()) == []


def test_placement_by_the_hnsw_graph_is_repeatable_and_close_to_the_exact_search():
    """Above PLACE_EXACT_MAX placed rows the fitted rows are searched through an HNSW graph built on
    one thread: two builds are byte for byte the same, and the rows land where the exact search
    puts them (mean displacement under 0.1% of the map's extent)."""
    import faiss

    from curation import projection

    Z = _blobs(60_000, 24, 40, 1)
    fit, new = Z[:5000], Z[5000:]
    xy_fit = np.random.default_rng(2).standard_normal((5000, 2)).astype(np.float32) * 10
    exact_ix, graph_ix = projection.place_index(fit, approximate=False), projection.place_index(fit, approximate=True)
    assert np.array_equal(graph_ix, projection.place_index(fit, approximate=True))
    assert isinstance(faiss.deserialize_index(graph_ix), faiss.IndexHNSWFlat)
    exact = projection.interpolate(None, xy_fit, new, index=faiss.deserialize_index(exact_ix))
    graph = projection.interpolate(None, xy_fit, new, index=faiss.deserialize_index(graph_ix))
    assert np.array_equal(exact, projection.interpolate(fit, xy_fit, new))  # the flat index is the old search
    disp = np.linalg.norm(graph - exact, axis=1) / np.ptp(xy_fit, axis=0).max()
    assert disp.mean() < 1e-3
    assert (disp < 0.01).mean() > 0.99


def test_fidelity_and_consistency_in_one_pass_equal_the_two_functions():
    from curation import quality as Q

    rng = np.random.default_rng(4)
    img, txt = rng.normal(size=(3000, 16)).astype(np.float32), rng.normal(size=(3000, 16)).astype(np.float32)
    assign = rng.integers(0, 30, 3000)
    assign[7] = 30  # a singleton cluster: consistency 0
    fid, reason, cons = Q.fidelity_and_consistency(img, txt, assign, True, step=1000)
    ref_fid, ref_reason = Q.fidelity(img, txt, True)
    assert reason is None and ref_reason is None
    assert np.array_equal(fid, ref_fid) and cons[7] == 0
    assert np.array_equal(cons, Q.consistency(txt, assign, step=1000))
    # by hand: each caption against the mean of the other captions of its image cluster
    t = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    for r in (0, 1, 2999):
        others = t[(assign == assign[r]) & (np.arange(3000) != r)].sum(axis=0)
        assert cons[r] == pytest.approx(float(t[r] @ others / np.linalg.norm(others)), abs=1e-5)
    # not a shared space, or other dims: no fidelity, the reason fidelity() gives, the same consistency
    for other, shared in ((img, False), (img[:, :8], True)):
        fid, reason, cons2 = Q.fidelity_and_consistency(other, txt, assign, shared, step=1000)
        assert fid is None and reason == Q.fidelity(other, txt, shared)[1] and np.array_equal(cons2, cons)
