"""Altair chart builders: pure functions of DataFrames / arrays (no streamlit here).

The map stays usable at 1M points without WebGPU: density is binned on the server
(:func:`binned_density`, numpy ``histogram2d``) and drawn as a heatmap, with a bounded sample of
points on top (:func:`sample_points`), so the browser never receives more than ``max_points`` rows.
"""

from __future__ import annotations

import numpy as np

MAX_POINTS = 20_000


def configure_altair() -> None:
    """Lift Altair's 5,000-row guard, once per process (the app calls it at start; call it in a
    notebook too). Altair's data transformer is global state: setting it on every chart build, as
    this module once did, changed it behind every caller's back. The builders below bound the rows
    they send themselves (:data:`MAX_POINTS`, binned density)."""
    import altair as alt

    alt.data_transformers.disable_max_rows()


def _alt():
    import altair as alt

    return alt


def binned_density(x: np.ndarray, y: np.ndarray, bins: int = 80):
    """2-D histogram of the map as a long DataFrame (x0, x1, y0, y1, count), empty bins left out."""
    import pandas as pd

    h, xe, ye = np.histogram2d(x, y, bins=bins)
    ix, iy = np.nonzero(h)
    return pd.DataFrame({"x0": xe[ix], "x1": xe[ix + 1], "y0": ye[iy], "y1": ye[iy + 1],
                         "count": h[ix, iy].astype(int)})


def sample_points(df, max_points: int = MAX_POINTS, seed: int = 0, always=None):
    """At most ``max_points`` rows of ``df`` (seeded); rows flagged in ``always`` (a boolean array)
    fill up to half of the sample first. Costs O(max_points), not O(n log n), at 1M rows."""
    n = len(df)
    if n <= max_points:
        return df
    rng = np.random.default_rng(seed)
    if always is not None and always.any():
        idx = np.flatnonzero(always)
        ka = min(len(idx), max_points // 2)
        keep = idx if ka == len(idx) else idx[rng.choice(len(idx), ka, replace=False)]
        need = max_points - ka
        cand = rng.choice(n, min(n, 2 * need + 1000), replace=False)
        cand = cand[~always[cand]][:need]
        pick = np.concatenate([keep, cand])
    else:
        pick = rng.choice(n, max_points, replace=False)
    return df.iloc[np.sort(pick)]


def map_chart(bins_df, points_df, color: str, *, categorical: bool, tooltip=(), height: int = 560,
              brush_name: str = "region"):
    """Heatmap of the binned density with sampled points coloured by ``color`` and an interval
    brush (``brush_name``) for selecting a region."""
    alt = _alt()
    heat = alt.Chart(bins_df).mark_rect(opacity=0.55).encode(
        x=alt.X("x0:Q", title="UMAP 1"), x2="x1:Q", y=alt.Y("y0:Q", title="UMAP 2"), y2="y1:Q",
        color=alt.Color("count:Q", scale=alt.Scale(scheme="greys", type="log"), legend=None),
        tooltip=[alt.Tooltip("count:Q", title="samples in bin")])
    brush = alt.selection_interval(name=brush_name, encodings=["x", "y"])
    ctype = "N" if categorical else "Q"
    enc = alt.Color(f"{color}:{ctype}", title=color,
                    scale=alt.Scale(scheme="tableau20") if categorical else alt.Scale(scheme="viridis"),
                    legend=alt.Legend(columns=2, symbolLimit=30) if categorical else alt.Legend())
    pts = alt.Chart(points_df).mark_circle(size=9, opacity=0.75).encode(
        x="map_x:Q", y="map_y:Q", color=enc, tooltip=list(tooltip)).add_params(brush)
    return (heat + pts).properties(height=height)


def rank_size_chart(sizes: np.ndarray, highlight: np.ndarray | None = None):
    """Cluster size against rank, log-log: the long tail at a glance."""
    import pandas as pd

    alt = _alt()
    order = np.argsort(-sizes, kind="stable")
    df = pd.DataFrame({"rank": np.arange(1, len(sizes) + 1), "size": sizes[order], "prototype": order,
                       "rare": highlight[order] if highlight is not None else False})
    return alt.Chart(df).mark_circle(size=40).encode(
        x=alt.X("rank:Q", scale=alt.Scale(type="log"), title="cluster rank"),
        y=alt.Y("size:Q", scale=alt.Scale(type="log"), title="samples in cluster"),
        color=alt.Color("rare:N", title="rare (smallest 10% of samples)"),
        tooltip=["prototype", "size", "rank"]).properties(height=320)


def histogram(values: np.ndarray, title: str, rules: dict | None = None, bins: int = 60):
    """Histogram of ``values`` (binned on the server) with vertical rules {label: x}."""
    import pandas as pd

    alt = _alt()
    v = values[np.isfinite(values)]
    h, e = np.histogram(v, bins=bins)
    df = pd.DataFrame({"x0": e[:-1], "x1": e[1:], "count": h})
    chart = alt.Chart(df).mark_rect().encode(x=alt.X("x0:Q", title=title), x2="x1:Q",
                                             y=alt.Y("count:Q", title="samples"), y2=alt.datum(0))
    if rules:
        r = pd.DataFrame({"x": list(rules.values()), "rule": list(rules.keys())})
        chart = chart + alt.Chart(r).mark_rule(color="crimson", strokeWidth=2).encode(
            x="x:Q", tooltip=["rule", "x"])
    return chart.properties(height=260)


def coverage_chart(curve_df, budget: int | None = None):
    """Budget-vs-coverage curves (selection vs random) from :meth:`ImpactContext.coverage_curve`."""
    import pandas as pd

    alt = _alt()
    base = alt.Chart(curve_df).mark_line().encode(
        x=alt.X("budget:Q", title="budget (samples)"), y=alt.Y("coverage:Q", title="clusters covered"),
        color=alt.Color("which:N", title=""), strokeDash=alt.StrokeDash("metric:N", title=""),
        tooltip=["which", "metric", "budget", alt.Tooltip("coverage:Q", format=".2f")])
    if budget:
        base = base + alt.Chart(pd.DataFrame({"budget": [budget]})).mark_rule(color="crimson").encode(x="budget:Q")
    return base.properties(height=300)


def stacked_share_chart(df, column: str, by: str = "prototype", top: int = 30):
    """Share of each ``column`` value inside the ``top`` largest clusters (stacked bars)."""
    alt = _alt()
    counts = df.groupby([by, column], dropna=False, observed=True).size().rename("n").reset_index()
    biggest = df[by].value_counts().index[:top]
    counts = counts[counts[by].isin(biggest)]
    counts[column] = counts[column].astype(str)
    return alt.Chart(counts).mark_bar().encode(
        x=alt.X(f"{by}:N", sort=list(biggest), title=f"{by} (largest {top})"),
        y=alt.Y("n:Q", stack="normalize", title="share"),
        color=alt.Color(f"{column}:N"), tooltip=[by, column, "n"]).properties(height=300)
