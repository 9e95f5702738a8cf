"""Map regions act on every row inside them (issue 28, first part): point-in-polygon over all rows,
boxes, the selection state Streamlit hands back, and the rule recorded in the sidecar."""

import json

import numpy as np

from curation import regions


def test_rows_in_polygon_on_a_grid_with_known_answers():
    g = np.arange(10, dtype=np.float64)
    x, y = np.meshgrid(g, g)
    x, y = x.ravel(), y.ravel()                      # 100 points on the integer grid 0..9
    square = ([1.5, 4.5, 4.5, 1.5], [1.5, 1.5, 4.5, 4.5])
    got = regions.rows_in_polygon(x, y, *square)
    assert sorted(zip(x[got], y[got])) == [(a, b) for a in (2, 3, 4) for b in (2, 3, 4)]
    tri = ([0.5, 6.5, 0.5], [0.5, 0.5, 6.5])         # x + y < 7 with x, y >= 1: 15 points
    got = regions.rows_in_polygon(x, y, *tri)
    assert len(got) == 15 and ((x[got] + y[got]) < 7).all() and (x[got] >= 1).all()
    # an L-shaped (concave) lasso: the notch is outside
    ell = ([0.5, 5.5, 5.5, 2.5, 2.5, 0.5], [0.5, 0.5, 2.5, 2.5, 5.5, 5.5])
    got = set(map(tuple, np.c_[x, y][regions.rows_in_polygon(x, y, *ell)].astype(int)))
    # the bottom bar x 1..5, y 1..2 (10 points) and the left bar x 1..2, y 3..5 (6 points)
    assert (4, 4) not in got and (1, 4) in got and (4, 1) in got and len(got) == 16
    assert len(regions.rows_in_polygon(x, y, [1, 2], [1, 2])) == 0   # not a polygon


def test_chunks_give_the_same_rows(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=5000), rng.normal(size=5000)
    t = np.linspace(0, 2 * np.pi, 50, endpoint=False)
    whole = regions.rows_in_polygon(x, y, np.cos(t), np.sin(t))
    monkeypatch.setattr(regions, "CHUNK", 777)
    assert np.array_equal(regions.rows_in_polygon(x, y, np.cos(t), np.sin(t)), whole)
    assert np.isin(np.flatnonzero(x ** 2 + y ** 2 < np.cos(np.pi / 50) ** 2), whole).all()  # the inscribed disc


def test_selection_state_boxes_and_lassos():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    y = np.array([0.0, 1.0, 2.0, 3.0])
    sel = {"points": [], "box": [{"x": [2.5, 0.5], "y": [0.5, 2.5]}], "lasso": [{"x": [2.9, 3.1, 3.1], "y": [2.9, 2.9, 3.2]}]}
    polys = regions.selection_regions(sel)
    assert polys[0] == [[0.5, 0.5], [2.5, 0.5], [2.5, 2.5], [0.5, 2.5]] and len(polys) == 2
    assert regions.rows_in_regions(x, y, polys).tolist() == [1, 2, 3]
    assert regions.selection_regions({"points": [{"x": 1}]}) == [] and regions.selection_regions(None) == []
    assert regions.rows_in_box(x, y, [2.5, 0.5], [0.5, 2.5]).tolist() == [1, 2]


def test_a_region_rule_is_recorded_in_the_sidecar(analyzed_copy, run_cli, tmp_path):
    from curation import analysis, id_sets, store

    with store.open_store(analyzed_copy) as s:
        df, _ = analysis.load(s)
        ids = s.samples(["id"])["id"].to_numpy()
    poly = [[float(df.map_x.min()), float(df.map_y.min())], [float(df.map_x.median()), float(df.map_y.min())],
            [float(df.map_x.median()), float(df.map_y.median())]]
    rows = regions.rows_in_regions(df.map_x.to_numpy(), df.map_y.to_numpy(), [poly])
    assert len(rows) > 0
    with store.open_store(analyzed_copy, read_only=False) as s:
        ref = id_sets.save(s, "lower-left", rows, kind="region", meta={"polygons": [poly], "n": len(rows)})
    code, _, err = run_cli("select", analyzed_copy, "--budget", "0.25", "--exclude-set", "lower-left",
                           "--out", tmp_path / "r.parquet")
    assert code == 0, err
    side = json.loads((tmp_path / "r.parquet.sidecar.json").read_text())
    assert side["rules"][ref]["kind"] == "region" and side["rules"][ref]["meta"]["polygons"] == [poly]
    import pandas as pd

    kept = set(pd.read_parquet(tmp_path / "r.parquet").id)
    assert kept and not kept & set(ids[rows])  # every row inside the polygon is out of the subset
