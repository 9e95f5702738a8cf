"""The selection kernel on a 12-row table whose expected order, strata quotas and reasons are
worked out by hand below (no analysis, no randomness), and golden orders of a synthetic 20,000-row
pool that refactorings must keep byte for byte."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from curation import selection
from curation.selection import SelectionConfig, SelectionInputs

#            row:  0    1    2    3    4      5    6    7    8      9    10   11
PROTOTYPE = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
BAND = ["core", "core", "core", "core", "tail", "core", "core", "core", "tail", "core", "core", "outlier"]
FPS = [1, 3, 0, 2, -1, 1, 0, 2, -1, 1, 0, -1]
TAIL_SCORE = [0.1, 0.2, 0.3, 0.05, 0.9, 0.4, 0.15, 0.5, 0.8, 0.6, 0.25, 0.95]
SITE = ["A"] * 6 + ["B"] * 6


def _inputs():
    n = 12
    return SelectionInputs(
        ids=np.array([f"r{i}" for i in range(n)]), prototype=np.array(PROTOTYPE), band=np.array(BAND),
        proto_dist=np.linspace(0.1, 0.3, n), fps_rank=np.array(FPS), tail_score=np.array(TAIL_SCORE, np.float32),
        meta=pd.DataFrame({"site": SITE}), scores={}, knn_nbr=np.full((n, 2), -1), knn_sim=np.zeros((n, 2), np.float32),
        key="by-hand")


def test_default_order_worked_out_by_hand():
    """Default: density tail, 2 tail picks per core pick, outliers kept, one stratum.

    Core queue (clusters in turn; in each, FPS order then the far band): rank 0 of clusters 0, 1, 2
    is rows 2, 6, 10; rank 1: 0, 5, 9; rank 2: 3, 7, 11; rank 3: 1, 8; rank 4: 4. Its i-th item comes
    at (i + 0.5) x 3. Tail queue (tail_score, highest first): 11, 4, 8, 9, 7, 5, 2, 10, 1, 6, 0, 3;
    its i-th item comes at (i + 0.5) x 1.5. Each row takes its better place:
      row  0: core 10.5 | 1: tail 12.75 | 2: core 1.5 | 3: tail 17.25 | 4: tail 2.25 | 5: tail 8.25
      row  6: core 4.5  | 7: tail 6.75  | 8: tail 3.75 | 9: tail 5.25 | 10: core 7.5 | 11: tail 0.75
    """
    res = selection.select(_inputs(), SelectionConfig(budget=5))
    assert res.order.tolist() == [11, 2, 4, 8, 6, 9, 7, 10, 5, 0, 1, 3]
    assert res.selected.tolist() == [11, 2, 4, 8, 6]
    reason = dict(zip(range(12), res.reason))
    assert [reason[r] for r in (11, 2, 4, 8, 6)] == ["kept_tail", "kept_core_fps", "kept_tail", "kept_tail",
                                                     "kept_core_fps"]
    assert {reason[r] for r in (9, 7, 10, 5, 0, 1, 3)} == {"dropped_over_budget"}


def test_chexficient_balanced_order_worked_out_by_hand():
    """Distance bands, 1 tail pick per core pick, outliers dropped, balanced over site (A: rows 0-5,
    B: rows 6-10; row 11 is the outlier).

    A: core in turn (cluster 0 by FPS: 2, 0, 3, 1; cluster 1: 5) -> 2, 5, 0, 3, 1 at 1, 3, 5, 7, 9;
       tail: 4 at 1; ties by row -> A's sequence 2, 4, 5, 0, 3, 1.
    B: core in turn (cluster 1: 6, 7; cluster 2: 10, 9) -> 6, 10, 7, 9 at 1, 3, 5, 7; tail: 8 at 1
       -> B's sequence 6, 8, 10, 7, 9.
    Balanced: equal weights, the j-th of each stratum at j + 0.5, A before B on ties.
    """
    cfg = SelectionConfig(budget=5, tail="distance", tail_core_ratio=1.0, outliers="drop", caption_guard=None,
                          confounders=("site",), mode="balanced")
    res = selection.select(_inputs(), cfg)
    assert res.order.tolist() == [2, 6, 4, 8, 5, 10, 0, 7, 3, 9, 1]
    assert res.selected.tolist() == [2, 6, 4, 8, 5]
    assert [(s["stratum"], s["pool"], s["eligible"], s["selected"]) for s in res.summary["strata"]] == [
        ("A", 6, 6, 3), ("B", 6, 5, 2)]
    assert res.reason[11] == "dropped_outlier" and res.reason[4] == "kept_tail" and res.reason[2] == "kept_core_fps"


def test_gates_and_filters_by_hand():
    inp = _inputs()
    inp = SelectionInputs(**{**{f: getattr(inp, f) for f in ("ids", "prototype", "band", "proto_dist", "fps_rank",
                                                           "tail_score", "knn_nbr", "knn_sim", "key")},
                             "meta": pd.DataFrame({"site": SITE, "age": [20, 30, 40, 50, 60, 70] * 2}),
                             "scores": {"caption": np.linspace(0, 1, 12)}})
    # caption gate top 0.5 keeps rank scores >= 0.5: rows 6..11; the filter age >= 50 keeps rows 3, 4, 5, 9, 10, 11
    cfg = SelectionConfig(budget=12, gates=(selection.Gate("caption", top_q=0.5),),
                          filters=(selection.Filter("age", ">=", 50),), caption_guard=None)
    res = selection.select(inp, cfg)
    assert sorted(res.selected.tolist()) == [9, 10, 11]
    # row 0 fails both (the filter is checked first), row 3 passes the filter and fails the gate
    assert [res.reason[r] for r in (0, 3, 6)] == ["dropped_filtered", "dropped_below_gate", "dropped_filtered"]
    assert res.summary["shortfall"] == 9


# --- golden orders: a synthetic 20,000-row pool, integer arithmetic only ----------------------------
@pytest.fixture(scope="module")
def synthetic():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_selection import make_inputs

    return make_inputs(20_000)


CONFIGS = {
    "default": SelectionConfig(budget=0.25),
    "chexficient": SelectionConfig(budget=0.25, **selection.V2_DEFAULTS),
    "balanced_site": SelectionConfig(budget=0.1, confounders=("site",), mode="balanced"),
    "tempered_site_scanner": SelectionConfig(budget=0.3, confounders=("site", "scanner"), mode="tempered", temper=0.3),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_golden_orders_hold(synthetic, name):
    res = selection.select(synthetic, CONFIGS[name])
    digest = hashlib.sha256(res.order.astype("<i8").tobytes() + res.code.astype("<i1").tobytes()).hexdigest()[:16]
    assert digest == GOLDEN_DIGESTS[name], (name, digest)


#: sha256 (first 16 hex digits) of order + reason codes; "chexficient" equals main before the default
#: changed (config version 2's values on the version-2 code), so old sidecars reproduce
GOLDEN_DIGESTS = {
    "balanced_site": "71253a2ce39e87e5",
    "chexficient": "cae883654918e32f",
    "default": "4fa6fefba08dfac9",
    "tempered_site_scanner": "21a7621a381bf404",
}
