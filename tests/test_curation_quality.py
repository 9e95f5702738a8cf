"""Curation that beats random: duplicates per modality, the quality guard, the caption axis and the
warnings, on the demo's ground truth and on real MedPix data."""

import json

import numpy as np
import pandas as pd
import pytest

from curation import analysis, runs, selection, store
from curation.metrics import ImpactContext
from curation.selection import Gate, SelectionConfig
from curation.spaces import normalize


@pytest.fixture(scope="module")
def demo(analyzed_db):
    with store.open_store(analyzed_db) as s:
        inp = selection.load_inputs(s)
        truth = s.read_table("demo_truth")
        df, _ = analysis.load(s)
    return inp, truth, df


def _pairs(group):
    return {(min(i, g), max(i, g)) for i, g in enumerate(group) if g >= 0 and g != i}


def test_planted_duplicates_found_on_the_image_side(demo):
    _, truth, df = demo
    found, planted = _pairs(df["dup_group"].to_numpy()), _pairs(truth["dup_group"].to_numpy())
    precision, recall = len(found & planted) / len(found), len(found & planted) / len(planted)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)


def test_default_subset_holds_at_most_half_the_pools_mismatched_share(demo):
    inp, truth, _ = demo
    mm = truth["is_mismatched"].to_numpy()
    res = selection.select(inp, SelectionConfig())
    impact = ImpactContext(inp).compare(res.selected, 0)
    assert mm[res.selected].mean() <= mm.mean() / 2, (mm[res.selected].mean(), mm.mean())
    assert impact.loc["rare_cluster_coverage", "subset"] == 1.0
    assert res.summary["fidelity_guard"].startswith("applied")
    # without the guard the tail picks favour the atypical, mismatched pairs (the bug it fixes)
    off = selection.select(inp, SelectionConfig(fidelity_guard=None))
    assert mm[off.selected].mean() > mm.mean()


def test_the_guard_never_removes_a_whole_cluster(demo):
    inp, _, _ = demo
    low = selection._low_fidelity(inp, 0.45)
    sizes = np.bincount(inp.prototype)
    kept = np.bincount(inp.prototype[~low], minlength=len(sizes))
    assert (kept[sizes > 0] >= 1).all()


def test_a_version_1_config_reads_without_the_guard():
    cfg = SelectionConfig.from_dict({"budget": 0.25, "version": 1})
    assert cfg.fidelity_guard is None and cfg.version == 3 and cfg.tail == "distance"
    assert SelectionConfig().fidelity_guard == 0.1


def test_impact_says_which_side_is_better(demo):
    inp, _, _ = demo
    res = selection.select(inp, SelectionConfig())
    imp = ImpactContext(inp, columns=("site",)).compare(res.selected, 0)
    assert imp.loc["cluster_coverage", "better"] == "higher" and imp.loc["duplicate_rate", "better"] == "lower"
    assert imp.loc["tvd_site", "better"] == "lower" and imp.loc["fidelity_score_mean", "better"] == "higher"


def test_warnings_fire_for_a_subset_worse_than_random(demo):
    inp, _, _ = demo
    ctx = ImpactContext(inp)
    # the worst-fidelity quarter of the pool: far below random on fidelity
    worst = np.argsort(inp.scores["fidelity"])[: inp.n // 4]
    assert any(w.startswith("fidelity_score_mean is") for w in ctx.warnings(worst))
    # random subsets are not worse than random: no false alarm over 20 of them, at three sizes
    rng = np.random.default_rng(99)
    for size in (200, 1000, 3000):
        for _ in range(20):
            assert ctx.warnings(rng.permutation(inp.n)[:size]) == []
    # the analytic expectation agrees with simulation
    exp = ctx.expected_random(1000)
    sims = [ctx.impact(rng.permutation(inp.n)[:1000]) for _ in range(200)]
    for m in ("cluster_coverage", "rare_cluster_coverage", "sparse_share", "fidelity_score_mean"):
        vals = np.array([r[m] for r in sims])
        assert abs(vals.mean() - exp[m][0]) < 0.01 and abs(vals.std() - exp[m][1]) < 0.5 * exp[m][1] + 1e-3, m


def test_caption_gate_from_the_cli(analyzed_copy, run_cli, tmp_path):
    code, out, err = run_cli("select", analyzed_copy, "--budget", "0.25", "--gate", "caption:top=0.9",
                             "--out", tmp_path / "m.parquet")
    assert code == 0, err
    kept = pd.read_parquet(tmp_path / "m.parquet")
    assert kept["caption_score"].min() >= 0.1 - 1e-9


# --- MedPix: real CT/MR slices and captions ------------------------------------------------------
@pytest.fixture(scope="module")
def medpix(medpix_db):
    with store.open_store(medpix_db) as s:
        df, _ = analysis.load(s)
        img = normalize(s.embeddings("image"))
        meta = s.samples(["caption", "case_id", "sex", "modality"])
        inp = selection.load_inputs(s)
    return df.join(meta), img, inp


def test_medpix_every_dropped_duplicate_is_an_image_duplicate_of_a_kept_sample(medpix):
    df, img, inp = medpix
    eps = 0.05
    res = selection.select(inp, SelectionConfig(budget=1.0))
    dropped = np.flatnonzero(res.code == selection._CODE[selection.DROP_DUP])
    group, _ = inp.duplicates(eps)
    assert 0 < len(dropped) < 120  # 290 when decided in the joint space
    kept = np.zeros(inp.n, bool)
    kept[res.selected] = True
    rep = group[dropped]
    cos = (img[dropped] * img[rep]).sum(axis=1)
    assert (cos > 1 - eps).all(), cos.min()
    assert (df.case_id.to_numpy()[dropped] == df.case_id.to_numpy()[rep]).all()  # never across cases
    assert kept[rep].all() or (res.code[rep] != selection._CODE[selection.DROP_DUP]).all()


def test_medpix_junk_caption_cluster_is_in_the_caption_axis_bottom_decile(medpix):
    df, _, _ = medpix
    share = df.groupby("prototype")["is_placeholder"].mean()
    junk = share[share >= 0.75].index
    assert len(junk) >= 1, share.sort_values().tail()
    members = df[df.prototype.isin(junk)]
    assert {"MR Image", "IN PROGRESS"} & set(members.caption.str.strip(" .")), members.caption.tolist()
    assert (members["caption_score"] <= df["caption_score"].quantile(0.1)).all()
    worst = df.nsmallest(10, "caption_quality").caption.tolist()
    assert all(len(c.split()) <= 4 for c in worst), worst


def test_medpix_balanced_sex_by_modality_prints_warnings(medpix_db, run_cli, tmp_path):
    code, out, err = run_cli("select", medpix_db, "--budget", "0.25", "--confounders", "sex,modality", "--mode",
                             "balanced", "--out", tmp_path / "b.parquet")
    assert code == 0, err
    lines = [x for x in err.splitlines() if x.startswith("warning:")]
    assert any("strata have fewer than 5 samples" in x for x in lines), err
    side = json.loads((tmp_path / "b.parquet.sidecar.json").read_text())
    assert side["warnings"] == [x[len("warning: "):] for x in lines]


def test_medpix_default_subset_beats_random_where_curation_should(medpix):
    """Redundancy down, the tail up: no near-duplicate kept, every cluster and every rare cluster
    covered, and more of the sparse tail than a random subset of the same size."""
    _, _, inp = medpix
    res = selection.select(inp, SelectionConfig())
    imp = ImpactContext(inp).compare(res.selected, 0)
    assert imp.loc["duplicate_rate", "subset"] == 0 < imp.loc["duplicate_rate", "random"]
    assert imp.loc["cluster_coverage", "subset"] == 1.0 and imp.loc["rare_cluster_coverage", "subset"] == 1.0
    assert imp.loc["sparse_share", "subset"] > 1.5 * imp.loc["sparse_share", "random"]
    assert res.summary["fidelity_guard"].startswith("not applied")  # two encoders: no fidelity


def test_gate_on_the_caption_axis_on_medpix(medpix):
    _, _, inp = medpix
    res = selection.select(inp, SelectionConfig(gates=(Gate("caption", top_q=0.9),)))
    assert (inp.scores["caption"][res.selected] >= 0.1).all()


def test_impact_is_measured_at_the_selections_eps(demo):
    inp, _, _ = demo
    res = selection.select(inp, SelectionConfig(dedup_eps=None))
    rates = {eps: ImpactContext(inp, dedup_eps=eps).compare(res.selected, 0).loc["duplicate_rate", "pool"]
             for eps in (0.02, 0.05, 0.3)}
    assert rates[0.02] <= rates[0.05] < rates[0.3]  # a looser eps counts more duplicates


def test_impact_eps_in_the_cli(analyzed_copy, run_cli, tmp_path):
    code, out, _ = run_cli("select", analyzed_copy, "--budget", "0.25", "--dedup-eps", "0.2", "--out", tmp_path / "m.parquet")
    assert code == 0 and "duplicate_rate measured at eps 0.2" in out


def test_confounder_table_names_chance_not_majority(demo, analyzed_db):
    with store.open_store(analyzed_db) as s:
        conf = analysis.load_table(s, runs.latest_run(s), "confounders")
    assert "chance_accuracy" in conf.columns and "majority_accuracy" not in conf.columns
    levels = conf.set_index("column")["levels"]
    chance = conf.set_index("column")["chance_accuracy"].dropna()
    assert np.allclose(chance, 1 / levels[chance.index])  # 1 / n_classes, as the name says


def test_chart_builders_leave_altairs_global_settings_alone():
    import altair as alt

    from curation import charts

    before = alt.data_transformers.active, dict(alt.data_transformers.options)
    charts.histogram(np.arange(10.0), "x", {})
    charts.rank_size_chart(np.array([5, 3, 1]), np.array([False, False, True]))
    assert (alt.data_transformers.active, dict(alt.data_transformers.options)) == before


def test_default_raises_no_warning_but_planted_mismatches_still_do(demo):
    """Consistency is compared with rows of the subset's own density: the default's rare picks have
    fewer close neighbours, which is no quality problem; the planted mismatched pairs are one."""
    inp, truth, _ = demo
    ctx = ImpactContext(inp)
    res = selection.select(inp, SelectionConfig())
    assert ctx.warnings(res.selected, res.summary) == []
    mm = np.flatnonzero(truth["is_mismatched"].to_numpy())
    rng = np.random.default_rng(0)
    rest = rng.permutation(np.setdiff1d(np.arange(inp.n), mm))[: 4 * len(mm)]
    worse = np.concatenate([mm, rest])  # 20% mismatched pairs, against 2% in the pool
    warns = ctx.warnings(worse)
    assert any(w.startswith("consistency_score_mean is") for w in warns), warns
    exp = ctx.density_matched(worse)["consistency_score_mean"]
    assert ctx.impact(worse)["consistency_score_mean"] < exp[0] - 3 * exp[1]


def test_hdbscan_on_a_sample_predicts_the_rest():
    """Above fit_max points HDBSCAN is fitted on a seeded sample and the rest predicted: three planted
    blobs are found in the unfitted points as in the fitted ones, and uniform background points
    score as outliers (GLOSH) there too."""
    from sklearn.metrics import adjusted_rand_score

    from curation.density import hdbscan_glosh

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    truth = np.repeat(np.arange(3), 2000)
    xy = np.concatenate([centres[truth] + rng.normal(0, 0.5, (6000, 2)), rng.uniform(-5, 15, (300, 2))])
    truth = np.concatenate([truth, np.full(300, -1)])
    full_l, full_s = hdbscan_glosh(xy, min_cluster_size=100)
    part_l, part_s = hdbscan_glosh(xy, min_cluster_size=100, fit_max=2000, seed=1)
    blob = truth >= 0
    assert adjusted_rand_score(truth[blob], part_l[blob]) > 0.95
    assert adjusted_rand_score(full_l[blob], part_l[blob]) > 0.95
    assert np.median(part_s[~blob]) > 2 * np.median(part_s[blob])
    assert part_l.dtype == np.int32 and part_s.dtype == np.float32 and len(part_l) == len(xy)
    # the same seed, the same sample and the same answer
    again_l, again_s = hdbscan_glosh(xy, min_cluster_size=100, fit_max=2000, seed=1)
    assert np.array_equal(again_l, part_l) and np.array_equal(again_s, part_s)
    # the block-at-once prediction gives hdbscan's own per-point answers (labels and GLOSH)
    import hdbscan

    from curation.density import _Predictor

    model = hdbscan.HDBSCAN(min_cluster_size=40, min_samples=10, prediction_data=True).fit(xy[::3])
    new = np.concatenate([xy[1::3], xy[:50:3]])  # unseen points, and a few fitted ones (distance 0)
    lab, sc = _Predictor(model)(new)
    assert np.array_equal(lab, hdbscan.approximate_predict(model, new)[0])
    np.testing.assert_allclose(sc, hdbscan.approximate_predict_scores(model, new), rtol=1e-12, atol=1e-12)


def test_prefix_impact_equals_the_impact_of_every_prefix(demo):
    """compare(order=) reads a budget's metrics from running counts along the order: the same
    numbers as the direct impact of the prefix, at every budget, with NaN scores, a multi-label
    column with missing values, and for the random baseline's permutation."""
    from dataclasses import replace

    from curation.metrics import PrefixImpact

    inp, _, _ = demo
    rng = np.random.default_rng(5)
    fid = inp.scores["fidelity"].copy()
    fid[rng.random(inp.n) < 0.1] = np.nan
    labs = pd.Series(rng.choice(["a", "b|c", "rare", None, "a|b"], inp.n, p=[0.5, 0.2, 0.0005, 0.1, 0.1995]))
    inp2 = replace(inp, scores={**inp.scores, "fidelity": fid}, meta=inp.meta.assign(finding=labs))
    ctx = ImpactContext(inp2, columns=("site",), labels=("finding",))
    res = selection.select(inp2, SelectionConfig(budget=0.3))
    for order in (res.order, ctx.random, res.order[: len(res.order) // 3]):
        pi = PrefixImpact(ctx, order)
        for b in (0, 1, 7, len(order) // 2, len(order) - 1, len(order)):
            want, got = ctx.impact(order[:b]), pi.impact(b)
            assert want.keys() == got.keys()
            for m in want:
                if m.endswith("_score_mean"):
                    np.testing.assert_allclose(got[m], want[m], rtol=1e-5, err_msg=m)
                else:
                    assert got[m] == want[m] or (np.isnan(got[m]) and np.isnan(want[m])), (m, b, got[m], want[m])
    budget = int(0.1 * inp.n)
    a = ctx.compare(res.order[:budget], 0, order=res.order)
    b = ctx.compare(res.order[:budget], 0)  # no order: the direct impact of the subset
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)
    assert ctx.compare(res.order[:budget], 0, order=res.order) is not a  # cached counts, a new table
    assert len(ctx._prefixes) == 1


def test_large_pools_build_an_orders_running_counts_in_the_background(demo, monkeypatch):
    """From PREFIX_BACKGROUND_MIN rows the first compare of a new order measures the subset
    directly and starts the running counts in a thread; once built, budgets read them: the same
    table either way."""
    import time

    from curation import metrics

    monkeypatch.setattr(metrics, "PREFIX_BACKGROUND_MIN", 0)
    inp, _, _ = demo
    ctx = ImpactContext(inp, columns=("site",))
    res = selection.select(inp, SelectionConfig(budget=0.3))
    first = ctx.compare(res.selected, 0, order=res.order)
    holder = ctx._prefixes[-1][1]
    for _ in range(200):
        if "pi" in holder:
            break
        time.sleep(0.05)
    assert "pi" in holder and ctx._prefix(res.order) is holder["pi"]
    pd.testing.assert_frame_equal(ctx.compare(res.selected, 0, order=res.order), first, rtol=1e-9)
    small = res.order[: len(res.selected) // 2]
    pd.testing.assert_frame_equal(ctx.compare(small, 0, order=res.order), ctx.compare(small, 0), rtol=1e-9)
