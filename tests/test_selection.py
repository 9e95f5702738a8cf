"""Selection invariants, allocation modes on the demo's planted confounders, reasons, config JSON."""

from dataclasses import replace

import numpy as np
import pytest

from curation import CurationError, runs, selection, store
from curation.metrics import ImpactContext, tvd
from curation.selection import Filter, Gate, SelectionCache, SelectionConfig, select


@pytest.fixture(scope="module")
def inp(analyzed_db):

    with store.open_store(analyzed_db) as s:
        run = runs.latest_run(s)
        i = selection.load_inputs(s, run)
        object.__setattr__(i, "truth", s.read_table("demo_truth"))  # test-only attachment
    return i


def test_cache_gives_the_same_result(inp):
    cache = SelectionCache()
    cfg = SelectionConfig(budget=300, confounders=("site",), mode="balanced")
    a = select(inp, cfg, cache=cache)
    b = select(inp, replace(cfg, budget=900), cache=cache)
    # one order, one column's strata codes and their strata, the two quality guards' masks and the
    # pool's rarity ranks: the second budget reused them all (duplicates at the analysis's eps are
    # the run's own)
    assert len(cache) == 6 and np.array_equal(b.selected[:300], a.selected)
    assert np.array_equal(b.selected, select(inp, replace(cfg, budget=900)).selected)
    assert np.array_equal(b.code, select(inp, replace(cfg, budget=900)).code)


def test_exact_budget_nested_and_deterministic(inp):
    cfg = SelectionConfig(budget=0.25, confounders=("site",))
    a = select(inp, cfg)
    assert len(a.selected) == 1000 == a.summary["selected"]
    assert np.array_equal(a.selected, select(inp, cfg).selected)
    previous = set()
    for b in (10, 100, 250, 999, 1000, 2000):
        sel = set(select(inp, replace(cfg, budget=b)).selected.tolist())
        assert len(sel) == b and previous <= sel
        previous = sel
    assert np.array_equal(a.selected, a.order[:1000])


CHEXFICIENT = dict(tail="distance", tail_core_ratio=0.44, outliers="drop", caption_guard=None)  # version 2's


def test_distance_tail_is_chexficient(inp):
    res = select(inp, SelectionConfig(budget=1000, **CHEXFICIENT))
    band = inp.band[res.selected]
    assert set(band) <= {"core", "tail"}  # outliers dropped
    _, is_dup = inp.duplicates(0.05)
    low = selection._low_fidelity(inp, 0.1)  # the default quality guard
    assert not is_dup[res.selected].any() and not low[res.selected].any()
    assert abs((band == "tail").mean() - 0.44 / 1.44) < 0.02  # the tail:core ratio
    # the core picks of each cluster are a prefix of its FPS order
    sel = np.zeros(inp.n, bool)
    sel[res.selected] = True
    for c in np.unique(inp.prototype):
        core = (inp.prototype == c) & (inp.band == "core") & ~is_dup & ~low
        ranks = np.sort(inp.fps_rank[core & sel])
        eligible_ranks = np.sort(inp.fps_rank[core])
        assert np.array_equal(ranks, eligible_ranks[: len(ranks)])
    # round-robin over clusters: every prototype is covered at this budget
    assert len(np.unique(inp.prototype[res.selected])) == len(np.unique(inp.prototype))


def test_default_density_tail_takes_the_rarest_and_covers_every_cluster(inp):
    cfg = SelectionConfig(budget=1000)
    assert (cfg.tail, cfg.tail_core_ratio, cfg.outliers) == ("density", 2.0, "keep")
    res = select(inp, cfg)
    sel = np.zeros(inp.n, bool)
    sel[res.selected] = True
    took_tail = res.reason[res.selected] == selection.KEPT_TAIL
    # the tail picks are the eligible rows of highest tail_score, a prefix of that order
    eligible = np.isin(res.reason, [selection.KEPT_TAIL, selection.KEPT_CORE, selection.DROP_BUDGET])
    tail_rows = res.selected[took_tail]
    threshold = inp.tail_score[tail_rows].min()
    assert not (inp.tail_score[eligible & ~sel] > threshold).any()
    # about two tail picks per core pick (a row comes once, at its better place)
    assert 0.55 < took_tail.mean() < 0.75, took_tail.mean()
    # round-robin over clusters: every prototype is covered at this budget
    assert len(np.unique(inp.prototype[res.selected])) == len(np.unique(inp.prototype))
    # outliers are eligible, the guards and duplicates are not
    _, is_dup = inp.duplicates(0.05)
    assert not is_dup[res.selected].any()
    assert not np.isin(res.reason[res.selected], [selection.DROP_GUARD, selection.DROP_CAPTION_GUARD]).any()


def test_every_sample_has_a_reason(inp):
    cfg = SelectionConfig(budget=500, gates=(Gate("fidelity", top_q=0.9),))
    res = select(inp, cfg)
    detail = res.details(inp, cfg)
    assert (res.code >= 0).all() and (detail[~np.isin(res.reason, [selection.KEPT_CORE, selection.KEPT_TAIL])] != "").all()
    counts = res.summary["reasons"]
    assert sum(counts.values()) == inp.n
    assert counts["kept_core_fps"] + counts["kept_tail"] == 500
    dup = np.flatnonzero(res.reason == selection.DROP_DUP)
    group, _ = inp.duplicates(0.05)
    for r in dup[:20]:
        assert detail[r] == f"duplicate of {inp.id_of(group[r])}"
        assert res.reason[group[r]] != selection.DROP_DUP  # the representative is never a duplicate
    gated = res.reason == selection.DROP_GATE
    assert gated.sum() > 0 and "fidelity score" in detail[np.flatnonzero(gated)[0]]
    # the planted mismatched pairs do not pass a 90% fidelity gate
    assert not np.isin(np.flatnonzero(inp.truth.is_mismatched), res.selected).any()


def test_proportional_keeps_confounders_close_to_the_pool(inp):
    res = select(inp, SelectionConfig(budget=0.25, confounders=("site", "scanner")))
    for col in ("site", "scanner"):
        codes, levels = np.unique(inp.meta[col].astype(str), return_inverse=True)
        assert tvd(levels[res.selected], levels, len(codes)) < 0.02
    unstratified = select(inp, SelectionConfig(budget=0.25))
    codes, levels = np.unique(inp.meta["site"].astype(str), return_inverse=True)
    assert tvd(levels[unstratified.selected], levels, len(codes)) > tvd(levels[res.selected], levels, len(codes))


def test_balanced_quotas_are_equal_and_water_filled(inp):
    res = select(inp, SelectionConfig(budget=400, confounders=("site",), mode="balanced"))
    counts = [s["selected"] for s in res.summary["strata"]]
    assert max(counts) - min(counts) <= 1 and sum(counts) == 400
    # sex has a tiny "(missing)" stratum: it gives all it has, the others share the rest equally
    res = select(inp, SelectionConfig(budget=1500, confounders=("sex",), mode="balanced"))
    st = {s["stratum"]: s for s in res.summary["strata"]}
    assert st["(missing)"]["selected"] == st["(missing)"]["eligible"] < 100
    assert abs(st["F"]["selected"] - st["M"]["selected"]) <= 1
    assert sum(s["selected"] for s in st.values()) == 1500


def test_tempered_lies_between(inp):
    def share_of_smallest(mode, temper=0.5):
        r = select(inp, SelectionConfig(budget=600, confounders=("scanner",), mode=mode, temper=temper))
        s = min(r.summary["strata"], key=lambda x: x["pool"])
        return s["selected"]
    p, t, b = share_of_smallest("proportional"), share_of_smallest("tempered"), share_of_smallest("balanced")
    assert p < t < b
    assert share_of_smallest("tempered", 0.0) == p and share_of_smallest("tempered", 1.0) == b


def test_outlier_policies(inp):
    first = select(inp, SelectionConfig(budget=50, outliers="keep_first"))
    assert (inp.band[first.selected] == "outlier").all()
    last = select(inp, SelectionConfig(budget=inp.n, outliers="keep_last"))
    bands = inp.band[last.selected]
    assert (bands[-(bands == "outlier").sum():] == "outlier").all()


def test_filters_and_missing_values(inp):
    res = select(inp, SelectionConfig(budget=100, filters=(Filter("site", "==", "site_A"),
                                                          Filter("age", ">=", 40))))
    assert (inp.meta.site.to_numpy()[res.selected] == "site_A").all()
    assert (inp.meta.age.to_numpy()[res.selected] >= 40).all()
    assert (res.reason == selection.DROP_FILTER).sum() > 0
    res = select(inp, SelectionConfig(budget=100, filters=(Filter("sex", "is null"),)))
    assert inp.meta.sex.isna().to_numpy()[res.selected].all()


def test_shortfall_when_too_few_eligible(inp):
    res = select(inp, SelectionConfig(budget=100, filters=(Filter("sex", "is null"),)))
    assert res.summary["shortfall"] == 100 - res.summary["eligible"] > 0


@pytest.mark.parametrize("cfg, message", [
    (SelectionConfig(confounders=("nope",)), "unknown confounder column 'nope'"),
    (SelectionConfig(budget=10**9), "larger than the pool"),
    (SelectionConfig(budget=-3), "positive"),
    (SelectionConfig(budget=2.5), "neither a whole count"),
    (SelectionConfig(mode="fair"), "unknown mode"),
    (SelectionConfig(tail_core_ratio=-1), "tail_core_ratio"),
    (SelectionConfig(gates=(Gate("fidelity", top_q=1.5),)), "within [0, 1]"),
    (SelectionConfig(gates=(Gate("beauty", top_q=0.5),)), "unknown quality axis"),
    (SelectionConfig(filters=(Filter("nope", "==", 1),)), "unknown column 'nope'"),
    (SelectionConfig(filters=(Filter("age", "~", 1),)), "unknown filter operator"),
    (SelectionConfig(filters=(Filter("age", ">", "old"),)), "numeric"),
])
def test_bad_configs(inp, cfg, message):
    with pytest.raises(CurationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        select(inp, cfg)


def test_unavailable_axis_is_named(inp):
    inp2 = replace(inp, unavailable={"fidelity": "not available: different encoders"},
                   scores={k: v for k, v in inp.scores.items() if k != "fidelity"})
    with pytest.raises(CurationError, match="different encoders"):
        select(inp2, SelectionConfig(gates=(Gate("fidelity", top_q=0.5),)))


def test_config_json_round_trip():
    cfg = SelectionConfig(budget=5000, confounders=("site", "sex"), mode="tempered", temper=0.3,
                          gates=(Gate("fidelity", top_q=0.8),), filters=(Filter("age", ">=", 18),),
                          dedup_eps=None, outliers="keep_last", seed=4)
    assert SelectionConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(CurationError, match="unknown selection config key"):
        SelectionConfig.from_dict({"budget": 3, "colour": "red"})
    with pytest.raises(CurationError, match="version 99"):
        SelectionConfig.from_dict({"version": 99})


def test_budget_fraction_rounds_to_nearest():
    assert SelectionConfig(budget=0.25).budget_count(4001) == 1000
    assert SelectionConfig(budget=1.0).budget_count(10) == 10
    assert SelectionConfig(budget=1).budget_count(10) == 1


def test_impact_against_random(inp):
    res = select(inp, SelectionConfig(budget=0.25, confounders=("site",)))
    ctx = ImpactContext(inp, columns=("site",), label="finding")
    table = ctx.compare(res.selected, seed=0)
    assert table.loc["size", "subset"] == table.loc["size", "random"] == 1000
    assert table.loc["duplicate_rate", "subset"] == 0 < table.loc["duplicate_rate", "random"]
    assert table.loc["rare_cluster_coverage", "subset"] >= table.loc["rare_cluster_coverage", "random"]
    assert table.loc["sparse_share", "subset"] > table.loc["sparse_share", "random"]
    curve = ctx.coverage_curve(res.order, seed=0)
    sel = curve[(curve.which == "selection") & (curve.metric == "cluster_coverage")]
    assert sel.coverage.is_monotonic_increasing and sel.coverage.iloc[-1] == 1.0


def test_evaluate_curated_beats_random_on_rare_classes(analyzed_copy, run_cli):
    code, out, err = run_cli("evaluate", analyzed_copy, "--label", "finding", "--budget", "0.25", "--random", "5")
    assert code == 0, err
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in out.splitlines()
            if line.strip().startswith(("macro_auc", "balanced_accuracy", "rare_class_recall"))}
    curated, random_mean, random_std, diff = rows["rare_class_recall"]
    assert curated > random_mean, out
    assert "held out (split column split)" in out


def test_evaluate_unknown_label(analyzed_copy, run_cli):
    code, _, err = run_cli("evaluate", analyzed_copy, "--label", "nope")
    assert code == 2 and "unknown label column 'nope'" in err


# --- one rule for missing values: they match only `is null`; every other operator leaves them out ---
@pytest.mark.parametrize("op, value, expected", [
    ("==", "F", [0]), ("!=", "F", [1]), ("in", ["F"], [0]), ("not in", ["F"], [1]),
    ("is null", None, [2, 3]), ("not null", None, [0, 1]),
])
def test_filter_operators_and_missing_text(op, value, expected):
    import pandas as pd

    from curation.selection import _filter_mask

    s = pd.Series(["F", "M", None, np.nan], dtype=object)
    assert np.flatnonzero(_filter_mask(Filter("sex", op, value), s)).tolist() == expected


@pytest.mark.parametrize("text, expected", [
    ("age == 30", [0]), ("age != 30", [1, 2]), ("age < 40", [0]), ("age <= 40", [0, 1]), ("age > 30", [1, 2]),
    ("age >= 30", [0, 1, 2]), ("age in 30,40", [0, 1]), ("age not in 30,40", [2]), ("age is null", [3]),
    ("age not null", [0, 1, 2]),
])
def test_filter_operators_and_missing_numbers(text, expected):
    import pandas as pd

    from curation.selection import _filter_mask, parse_filter

    s = pd.Series([30.0, 40.0, 50.0, np.nan])
    assert np.flatnonzero(_filter_mask(parse_filter(text), s)).tolist() == expected


def test_filter_values_follow_the_column_type():
    import pandas as pd

    from curation.selection import _filter_mask, parse_filter

    s = pd.Series(["1", "2", "x", None], dtype=object)  # a text column holding digits
    assert np.flatnonzero(_filter_mask(parse_filter("site == 1"), s)).tolist() == [0]
    assert np.flatnonzero(_filter_mask(parse_filter("site in 1,2"), s)).tolist() == [0, 1]
    with pytest.raises(CurationError, match="the column is numeric, 'old' is not a number"):
        _filter_mask(parse_filter("age == old"), pd.Series([1.0, 2.0]))


def test_stable_argsort_equals_numpys_stable_sort():
    """The faster sort behind the selection order gives numpy's stable order exactly: ties (many,
    few, none), floats, large integers, NaN."""
    from curation.selection import stable_argsort

    rng = np.random.default_rng(1)
    for t in range(200):
        n = int(rng.integers(0, 3000))
        k = rng.integers(0, int(rng.integers(1, 50)), n)
        if t % 3 == 0:
            k = k.astype(float) / 7
        if t % 5 == 0:
            k = k * np.int64(2**40)
        assert np.array_equal(stable_argsort(k), np.argsort(k, kind="stable")), t
    k = np.array([1.0, np.nan, 0.5, np.nan, 0.5])
    assert np.array_equal(stable_argsort(k), np.argsort(k, kind="stable"))


def test_duplicates_at_the_analysis_eps_come_from_the_run_and_the_graph_is_read_only_for_another(analyzed_db):
    """The analysis stored its duplicate groups: a selection at that eps uses them (the same groups
    the stored kNN graph gives), and reads the graph (1.2 GB at 10M) only for another eps."""
    from curation.density import duplicate_groups
    from curation.selection_inputs import load_inputs

    with store.open_store(analyzed_db) as s:
        fresh = load_inputs(s)
    assert fresh.knn_nbr is None
    group, is_dup = fresh.duplicates(0.05)
    assert fresh.knn_nbr is None and is_dup.any()
    nbr, sim = fresh.knn()
    g2, d2 = duplicate_groups(nbr, sim, 0.05, case=fresh.case, keep_key=fresh.proto_dist)
    np.testing.assert_array_equal(group, g2)
    np.testing.assert_array_equal(is_dup, d2)
    other = load_inputs(store.open_store(analyzed_db))
    assert other.duplicates(0.2)[1].sum() > is_dup.sum() and other.knn_nbr is not None


def _synthetic_inputs(n, seed, k=30):
    """Small inputs with ties: tail scores on a coarse grid, few clusters, strata of very
    different sizes, outliers, NaN scores."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    proto = rng.choice(k, n, p=np.r_[0.4, np.full(k - 1, 0.6 / (k - 1))]).astype(np.int32)
    band = rng.choice(["core", "tail", "outlier"], n, p=[0.8, 0.15, 0.05])
    fps = np.full(n, -1)
    for c in range(k):
        m = np.flatnonzero((proto == c) & (band == "core"))
        fps[m] = rng.permutation(len(m))
    fid = rng.random(n)
    fid[rng.random(n) < 0.05] = np.nan
    meta = pd.DataFrame({"site": rng.choice(["A", "B", "C"], n, p=[0.85, 0.13, 0.02]),
                         "sex": pd.Series(rng.choice(["F", "M", None], n))})
    return selection.SelectionInputs(ids=np.array([f"r{i}" for i in range(n)]), prototype=proto, band=band,
                                     proto_dist=rng.integers(0, 50, n) / 50.0, fps_rank=fps,
                                     tail_score=rng.integers(0, 20, n) / 20.0, meta=meta, scores={"fidelity": fid},
                                     knn_nbr=rng.integers(0, n, (n, 5)),
                                     knn_sim=np.sort(rng.uniform(0.5, 1.0, (n, 5)), axis=1)[:, ::-1].copy())


def test_the_counting_order_equals_the_sorting_order(inp, monkeypatch):
    """Large pools take the default queues' order from counting passes over two per-pool
    permutations (curation.selection_order): row for row the order, the reasons and the strata
    of the sorting path, over modes, confounders, outlier policies, ratios (0 too), gates and
    rules, on the demo and on pools with tied scores; a too-large counting table falls back."""
    from curation import selection_order

    cfgs = [SelectionConfig(budget=0.3), SelectionConfig(budget=0.5, confounders=("site",), mode="balanced"),
            SelectionConfig(budget=0.2, confounders=("site", "sex"), mode="tempered", temper=0.3),
            SelectionConfig(budget=0.4, confounders=("sex",), outliers="keep_first", tail_core_ratio=0.0),
            SelectionConfig(budget=0.4, outliers="keep_last", tail_core_ratio=2.5, dedup_eps=None),
            SelectionConfig(budget=0.4, outliers="keep", tail_core_ratio=1.0, confounders=("site",)),
            SelectionConfig(budget=0.6, outliers="drop", gates=(Gate("fidelity", top_q=0.7),), fidelity_guard=0.2)]
    pools = [inp, _synthetic_inputs(3000, 1), _synthetic_inputs(2500, 2, k=3)]
    for pool in pools:
        by_cluster, by_rarity, cl_c = selection_order.pool_orders(pool)
        np.testing.assert_array_equal(cl_c, pool.prototype[by_cluster])
        prio = np.where(pool.band_code == 0, pool.fps_rank, pool.n + pool.far_rank)
        np.testing.assert_array_equal(by_cluster, np.lexsort((prio, pool.prototype)))
        np.testing.assert_array_equal(by_rarity, np.argsort(-pool.tail_score, kind="stable"))
        for cfg in cfgs:
            if "sex" in cfg.confounders and "sex" not in pool.meta.columns:
                cfg = replace(cfg, confounders=("site",))
            monkeypatch.setattr(selection, "FAST_ORDER_MIN_ROWS", 10**12)
            want = select(pool, cfg)
            monkeypatch.setattr(selection, "FAST_ORDER_MIN_ROWS", 0)
            cache = SelectionCache()
            got = select(pool, cfg, cache=cache)
            again = select(pool, replace(cfg, budget=0.1), cache=cache)
            np.testing.assert_array_equal(got.order, want.order)
            np.testing.assert_array_equal(got.code, want.code)
            np.testing.assert_array_equal(got.stratum, want.stratum)
            assert got.summary == want.summary
            np.testing.assert_array_equal(again.order, want.order)
    monkeypatch.setattr(selection_order, "TABLE_MAX_CELLS", 4)  # the counting table refused: the sorts
    got = select(pools[1], cfgs[1])
    monkeypatch.setattr(selection, "FAST_ORDER_MIN_ROWS", 10**12)
    np.testing.assert_array_equal(got.order, select(pools[1], cfgs[1]).order)


def test_ids_are_read_on_first_use(analyzed_db):
    """A loaded selection reads no ids until an explanation names a duplicate's kept copy."""
    with store.open_store(analyzed_db) as s:
        i = selection.load_inputs(s, runs.latest_run(s))
        ids = s.samples(["id"])["id"].to_numpy().astype(str)
    assert i.ids is None
    res = select(i, SelectionConfig(budget=0.2))
    assert i.ids is None  # selecting needs none
    np.testing.assert_array_equal(i.id_of(np.array([0, 5, 3])), ids[[0, 5, 3]])
    np.testing.assert_array_equal(i.ids, ids)
    assert res.summary["selected"] > 0


def test_unavailable_axes_without_loading_the_inputs(analyzed_db, medpix_db):
    """The Select page draws its knobs from one aggregate: the same axes and reasons as the
    loaded inputs give, on the demo and on MedPix."""
    from curation.selection_inputs import unavailable_axes

    got = {}
    for db in (analyzed_db, medpix_db):
        with store.open_store(db) as s:
            got[db] = unavailable_axes(s)
            assert got[db] == selection.load_inputs(s).unavailable
    assert "fidelity" not in got[analyzed_db] and "fidelity" in got[medpix_db]  # MedPix: two encoders


def test_coverage_curve_from_running_counts_equals_the_direct_one(inp):
    """Once an order's running counts exist (after a compare), the budget-vs-coverage curve reads
    them: the same curve as computed from the order, for an order shorter than the pool too."""
    res = select(inp, SelectionConfig(budget=0.25, confounders=("site",)))
    assert len(res.order) < inp.n
    ctx = ImpactContext(inp, columns=("site",))
    direct = ctx.coverage_curve(res.order, seed=0)
    assert not ctx._prefixes and "random_prefix" not in ctx.__dict__
    ctx.compare(res.selected, 0, order=res.order)
    assert ctx._prefixes and "random_prefix" in ctx.__dict__
    import pandas as pd

    pd.testing.assert_frame_equal(ctx.coverage_curve(res.order, seed=0), direct)


def _same_result(a, b):
    for f in ("order", "selected", "code", "which", "stratum"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f
    assert a.stratum_labels == b.stratum_labels and a.summary == b.summary


def test_an_order_is_kept_for_the_next_process_and_read_back_exactly(analyzed_db, tmp_path, monkeypatch):
    """Large pools keep each config's priority order beside the dataset: the next process (a new
    app session, the next `select`) reads it instead of computing it, with the same result bit
    for bit; a budget change shares the file, another knob gets its own; the most recently used
    ORDER_STORE_MAX_FILES stay; a damaged file is computed again and replaced."""
    from curation.selection_inputs import load_inputs

    with store.open_store(analyzed_db) as s:
        fresh = load_inputs(s)
    # inputs read from a dataset know their store (nothing is written for a pool this small)
    assert fresh.order_store == analyzed_db.with_name(analyzed_db.name + ".cache") / "selection"
    assert selection.order_file(fresh, SelectionConfig()) is None
    assert fresh.with_meta(fresh.meta).order_store is None
    # a copy with other scores under the same key never reads the dataset's orders
    assert replace(fresh, scores={}).order_store is None

    monkeypatch.setattr(selection, "ORDER_STORE_MIN_ROWS", 0)
    folder = tmp_path / "orders"
    a = fresh.keeping_orders_in(folder)
    # a filter and a gate: their reasons and indices round-trip
    site = str(fresh.meta["site"].iloc[0])
    cfg = SelectionConfig(budget=300, confounders=("site",), mode="balanced", outliers="keep_last",
                          filters=(Filter("site", "!=", site),), gates=(Gate("fidelity", top_q=0.9),))
    first = select(a, cfg)
    selection.flush_order_store()  # written by a thread
    path = selection.order_file(a, cfg)
    assert [p.name for p in folder.iterdir()] == [path.name]

    computed = []
    real = selection._order
    monkeypatch.setattr(selection, "_order", lambda *x: computed.append(1) or real(*x))
    with store.open_store(analyzed_db) as s:
        b = load_inputs(s).keeping_orders_in(folder)  # another process: nothing in memory
    again = select(b, cfg, cache=SelectionCache())
    assert computed == [] and again.order.dtype == np.int64
    reasons = set(first.reason[first.which == 0])
    assert {selection.DROP_FILTER, selection.DROP_GATE} <= reasons
    _same_result(first, again)
    nothing = replace(cfg, filters=(Filter("site", "==", "no such site"),))  # an empty order, and its notice
    x = select(a, nothing)
    selection.flush_order_store()
    y = select(b, nothing, cache=SelectionCache())
    _same_result(x, y)
    assert len(computed) == 1 and len(y.order) == 0 and y.summary["filters_matching_nothing"] == [0]
    computed.clear()
    for f in folder.iterdir():
        if f != path:
            f.unlink()
    _same_result(select(b, replace(cfg, budget=900)), select(a, replace(cfg, budget=900), cache=SelectionCache()))
    assert computed == [] and len(list(folder.iterdir())) == 1  # the budget is not in the key

    monkeypatch.setattr(selection, "ORDER_STORE_MAX_FILES", 2)
    import os
    os.utime(path, (path.stat().st_mtime - 100,) * 2)  # the least recently used, on any clock resolution
    for mode in ("proportional", "tempered"):
        select(b, replace(cfg, mode=mode))
        selection.flush_order_store()
    assert len(computed) == 2 and len(list(folder.iterdir())) == 2 and not path.exists()  # the oldest went

    other = replace(cfg, mode="proportional")
    p2 = selection.order_file(b, other)
    p2.write_bytes(p2.read_bytes()[:100])  # damaged (a disk full in another tool, a copy cut short)
    out = select(b, other)
    selection.flush_order_store()
    assert len(computed) == 3
    _same_result(out, select(b.keeping_orders_in(None), other))
    _same_result(out, select(b, other))  # rewritten whole: read back
    assert len(computed) == 4  # (the check above computed it in memory once)

    # an order store that cannot be written (a read-only data folder): computed, nothing raised
    blocked = tmp_path / "file"
    blocked.write_text("")
    _same_result(select(b.keeping_orders_in(blocked / "selection"), cfg), first)
    selection.flush_order_store()


def test_a_rerun_step_of_the_analysis_is_other_data_for_the_order_store(analyzed_copy, monkeypatch):
    """Further steps of a run, or a --force rerun, re-record the same run id with other tables:
    the inputs' key (and so the stored order's file) changes with it, so no order computed on the
    run's earlier tables is read back."""
    from curation import analysis, workflows
    from curation.selection_inputs import load_inputs

    monkeypatch.setattr(selection, "ORDER_STORE_MIN_ROWS", 0)
    with store.open_store(analyzed_copy) as s:
        before = load_inputs(s)
    shown = workflows.describe(analyzed_copy).run["created"]  # the app's caches key on it too
    analysis.analyze(analyzed_copy, analysis.AnalysisConfig(), steps=["confounders"], force=True)
    assert workflows.describe(analyzed_copy).run["created"] > shown
    with store.open_store(analyzed_copy) as s:
        after = load_inputs(s)
        again = load_inputs(s)
    assert before.key.split("@")[0] == after.key.split("@")[0]  # the same run id
    assert before.key != after.key and after.key == again.key
    assert selection.order_file(before, SelectionConfig()) != selection.order_file(after, SelectionConfig())
    assert selection.order_file(after, SelectionConfig()) == selection.order_file(again, SelectionConfig())
