"""Altair chart builders: pure functions of DataFrames / arrays (no streamlit here).

The map stays usable at 1M points without WebGPU: every row is rendered on the server as one image
(:mod:`curation.raster`), with a bounded sample of points on top (:func:`sample_points`) to hover and
click, so the browser never receives more than ``max_points`` rows.
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


def region_vs_pool(values, inside: np.ndarray, title: str, *, categorical: bool, top: int = 8, bins: int = 30):
    """One column's distribution inside a map region beside the whole pool's, as shares (Altair):
    grouped bars of the ``top`` levels (the rest summed as "other") for a categorical column, or
    two histograms on shared bins for a numeric one. Binned here: the browser gets a few dozen rows."""
    import pandas as pd

    alt = _alt()
    v = np.asarray(values)
    mask = np.zeros(len(v), bool)
    mask[np.asarray(inside, np.int64)] = True
    if categorical:
        s = pd.Series(v.astype(object)).fillna("(missing)").astype(str)
        keep = s.value_counts().index[:top]
        s = s.where(s.isin(keep), "other")
        rows = []
        for where, part in (("region", s[mask]), ("pool", s)):
            share = part.value_counts(normalize=True)
            rows += [{"level": lv, "where": where, "share": float(share.get(lv, 0.0))} for lv in [*keep, "other"]
                     if lv != "other" or (s == "other").any()]
        df = pd.DataFrame(rows)
        return alt.Chart(df).mark_bar().encode(
            y=alt.Y("level:N", title=title, sort=list(keep) + ["other"]), x=alt.X("share:Q", axis=alt.Axis(format="%")),
            yOffset="where:N", color=alt.Color("where:N", scale=alt.Scale(domain=["region", "pool"],
                                                                          range=[SELECTED_COLOR, "#999999"])),
            tooltip=["level", "where", alt.Tooltip("share:Q", format=".1%")]).properties(height=max(120, 34 * len(keep)))
    x = v.astype(float)
    finite = np.isfinite(x)
    if not finite.any():
        return None
    edges = np.histogram_bin_edges(x[finite], bins=bins)
    rows = []
    for where, part in (("region", x[mask & finite]), ("pool", x[finite])):
        h, _ = np.histogram(part, bins=edges)
        share = h / max(h.sum(), 1)
        rows += [{"x0": a, "x1": b, "share": float(c), "where": where} for a, b, c in zip(edges[:-1], edges[1:], share)]
    df = pd.DataFrame(rows)
    return alt.Chart(df).mark_bar(opacity=0.55).encode(
        x=alt.X("x0:Q", title=title), x2="x1:Q", y=alt.Y("share:Q", axis=alt.Axis(format="%"), stack=None),
        color=alt.Color("where:N", scale=alt.Scale(domain=["region", "pool"], range=[SELECTED_COLOR, "#999999"])),
        tooltip=["where", alt.Tooltip("share:Q", format=".1%")]).properties(height=200)


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


# --- the WebGL map (Plotly) -----------------------------------------------------------------------
# Plotly's scattergl draws 200k points smoothly with zoom, pan, box and lasso selection and click
# events, which Streamlit returns (st.plotly_chart(on_select=...)); pydeck draws more points but has
# no lasso. Density for all rows is a server-side 2-D histogram underneath, so 1M rows open without
# WebGPU and the browser receives at most the drawn sample.
# It opens in pan mode: Streamlit turns click-to-select on only there (in lasso or box mode a click
# selects nothing), so drag pans, the wheel zooms, a click inspects, and lasso / box are in the toolbar.
MAX_LEGEND = 24
SELECTED_COLOR, UNSELECTED_COLOR, OTHER_COLOR = "#d62728", "rgba(150,150,150,0.35)", "rgba(150,150,150,0.5)"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
           "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d", "#393b79",
           "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")


def _safe_hover(text) -> str:
    """Hover text for Plotly, which renders a few HTML tags (<b>, <a>...): every tag is escaped."""
    import html

    return html.escape(str(text))[:160]


def _category_order(values) -> list:
    """Levels sorted numerically when they are numbers (0, 1, 2, 10, not 0, 1, 10, 2), else as text."""
    levels = list(dict.fromkeys(values))
    try:
        return sorted(levels, key=lambda v: float(v))
    except (TypeError, ValueError):
        return sorted(levels, key=str)


def category_colors(values) -> dict:
    """{level: colour} for the colouring of every row: the :data:`MAX_LEGEND` levels holding the most
    rows each get their own colour in size order ("selected" red, noise and "not selected" grey);
    levels left out are drawn grey as "other levels". Computed over all rows, so the image of every
    row and the drawn sample agree."""
    import pandas as pd

    vals = np.asarray(values)
    if vals.dtype.kind in "iub":  # cluster ids: counted without a Python object per row
        levels, cnt = np.unique(vals, return_counts=True)
        ordered = [lv.item() for lv in levels[np.argsort(-cnt, kind="stable")]]
    else:
        ordered = list(pd.Series(vals.astype(object)).value_counts(sort=True).index)
    grey = {"-1", -1, "not selected", "noise"}
    out, i = {}, 0
    for v in ordered:
        if v == "selected":
            out[v] = SELECTED_COLOR
        elif v in grey:
            out[v] = UNSELECTED_COLOR
        elif i < min(MAX_LEGEND, len(PALETTE)):
            out[v] = PALETTE[i]
            i += 1
    return out


def category_codes(values, colors: dict):
    """Per-row codes into the colour list of :func:`category_colors` (-1: an "other" level) and that
    list as RGB tuples, for :func:`curation.raster.render`."""
    import pandas as pd

    levels = list(colors)
    vals = np.asarray(values)
    if vals.dtype.kind in "iub" and all(isinstance(lv, (int, np.integer)) for lv in levels):
        lv = np.asarray(levels, np.int64)
        order = np.argsort(lv)
        pos = np.searchsorted(lv[order], vals).clip(0, max(len(lv) - 1, 0))
        codes = np.where(len(lv) and (lv[order][pos] == vals), order[pos], -1).astype(np.int64) if len(lv) \
            else np.full(len(vals), -1, np.int64)
    else:
        codes = pd.Categorical(vals.astype(object), categories=levels).codes.astype(np.int64)
    rgb = []
    for lv in levels:
        c = colors[lv]
        if c.startswith("#"):
            rgb.append(tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)))
        else:  # rgba(...) greys
            rgb.append(tuple(int(float(t)) for t in c[c.index("(") + 1:c.rindex(")")].split(",")[:3]))
    return codes, rgb


def map_image(x, y, values, *, categorical: bool, view, colors: dict | None = None):
    """The image of every row for the map (:func:`curation.raster.render`) and how it was coloured:
    (raster, {level: colour} or None, numeric value range or None). Categorical levels get
    :func:`category_colors` unless ``colors`` is given."""
    from curation import raster

    if categorical:
        colors = colors if colors is not None else category_colors(values)
        codes, rgb = category_codes(values, colors)
        return raster.render(x, y, codes=codes, colors=rgb, x_range=view[0], y_range=view[1]), colors, None
    v = np.asarray(values, float)
    finite = np.isfinite(v)
    value_range = (float(np.min(v[finite])), float(np.max(v[finite]))) if finite.any() else (0.0, 1.0)
    img = raster.render(x, y, values=v, value_range=value_range, x_range=view[0], y_range=view[1])
    return img, None, value_range


def map_figure(x, y, rows, *, color_name: str, values=None, categorical: bool = True, labels=None,
               hover=None, highlight=None, density=None, height: int = 620, uirevision: str = "map",
               colors: dict | None = None, image=None, names=None, value_range=None, ring=None):
    """The map as a Plotly figure: an optional density heatmap (``density`` = (xc, yc, z)) under a
    scattergl of the drawn sample.

    Parameters
    ----------
    x, y : ndarray (m,), map coordinates of the drawn points
    rows : ndarray (m,) int, their dataset rows (``customdata``: selection events return them)
    values : ndarray (m,) or None, what colours the points; categorical values get one legend entry
        per level (numeric levels sorted as numbers), the largest :data:`MAX_LEGEND` coloured and the
        rest grey; -1 ("noise") and "not selected" are grey; numeric values use a colour scale with a
        colour bar
    labels : dict level -> legend text, optional (cluster labels)
    hover : sequence of str (m,), optional (escaped here)
    highlight : boolean ndarray (m,), optional: drawn again on top as rings (search hits)
    colors : {level: colour}, optional (:func:`category_colors` of every row; levels not in it are grey)
    image : :class:`curation.raster.Raster`, optional: every row, drawn under the points; the axes
        show its range
    names : list of (x, y, text), optional: cluster names written on the map
    value_range : (lo, hi), optional: the numeric colour scale's range (the image's)
    ring : (x, y, row), optional: the inspected point, ringed (drawn whether or not it is sampled)
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    if density is not None:
        xc, yc, z = density
        fig.add_trace(go.Heatmap(x=xc, y=yc, z=z, colorscale="Greys", showscale=False, opacity=0.5,
                                 hoverinfo="skip", name="density"))
    hov = None if hover is None else [_safe_hover(h) for h in hover]
    common = dict(mode="markers", hoverinfo="text" if hov is not None else "x+y")
    if values is None:
        fig.add_trace(go.Scattergl(x=x, y=y, customdata=rows, text=hov, marker=dict(size=4, color=PALETTE[0]),
                                   name="samples", **common))
    elif categorical and colors is not None:
        vals = np.asarray(values).astype(object)
        present = set(vals.tolist())
        for v, color in colors.items():
            if v not in present:
                continue
            m = vals == v
            name = f"{v} · {labels[v]}" if labels and v in labels and labels[v] else str(v)
            if v in (-1, "-1"):
                name = "noise (-1)"
            fig.add_trace(go.Scattergl(x=x[m], y=y[m], customdata=rows[m], text=None if hov is None else
                                       [hov[j] for j in np.flatnonzero(m)],
                                       marker=dict(size=4 if v != "selected" else 5, color=color),
                                       name=name[:40], **common))
        rest = ~np.isin(vals, list(colors)) if len(colors) else np.ones(len(vals), bool)
        if rest.any():
            n_other = len(present - set(colors))
            fig.add_trace(go.Scattergl(x=x[rest], y=y[rest], customdata=rows[rest], text=None if hov is None else
                                       [hov[j] for j in np.flatnonzero(rest)], marker=dict(size=4, color=OTHER_COLOR),
                                       name=f"grey: {n_other} smaller levels", **common))
    elif categorical:
        vals = np.asarray(values).astype(object)
        order = _category_order(vals)
        counts = {v: int((vals == v).sum()) for v in order}
        big = set(sorted(order, key=lambda v: -counts[v])[:MAX_LEGEND])
        grey = {"-1", -1, "not selected", "noise"}
        rest = np.zeros(len(vals), bool)
        for i, v in enumerate(order):
            m = vals == v
            if v not in big and v not in grey:
                rest |= m
                continue
            color = (SELECTED_COLOR if v == "selected" else UNSELECTED_COLOR if v in grey
                     else PALETTE[i % len(PALETTE)])
            name = f"{v} · {labels[v]}" if labels and v in labels and labels[v] else str(v)
            if v in (-1, "-1"):
                name = "noise (-1)"
            fig.add_trace(go.Scattergl(x=x[m], y=y[m], customdata=rows[m], text=None if hov is None else
                                       [hov[j] for j in np.flatnonzero(m)], marker=dict(size=4 if v != "selected" else 5,
                                                                                       color=color),
                                       name=name[:40], **common))
        if rest.any():
            fig.add_trace(go.Scattergl(x=x[rest], y=y[rest], customdata=rows[rest], text=None if hov is None else
                                       [hov[j] for j in np.flatnonzero(rest)], marker=dict(size=4, color=OTHER_COLOR),
                                       name=f"{len(order) - len(big & set(order))} other levels", **common))
    else:
        rng = dict(cmin=value_range[0], cmax=value_range[1]) if value_range else {}
        fig.add_trace(go.Scattergl(x=x, y=y, customdata=rows, text=hov, name=color_name,
                                   marker=dict(size=4, color=np.asarray(values, float), colorscale="Viridis",
                                               showscale=True, colorbar=dict(title=color_name), **rng), **common))
    if highlight is not None and np.any(highlight):
        h = np.asarray(highlight, bool)
        fig.add_trace(go.Scattergl(x=x[h], y=y[h], customdata=rows[h], mode="markers", name="search hits",
                                   marker=dict(size=10, color="rgba(0,0,0,0)", line=dict(width=2, color="#000"))))
    if ring is not None:
        fig.add_trace(go.Scattergl(x=[ring[0]], y=[ring[1]], customdata=[ring[2]], mode="markers",
                                   name="inspected", hoverinfo="skip",
                                   marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(width=3, color="#d62728"))))
    xaxis, yaxis = dict(title="UMAP 1", showgrid=False), dict(title="UMAP 2", showgrid=False)
    if image is not None:
        (x0, x1), (y0, y1) = image.x_range, image.y_range
        fig.add_layout_image(dict(source=image.png(), xref="x", yref="y", x=x0, y=y1, sizex=x1 - x0, sizey=y1 - y0,
                                  sizing="stretch", layer="below", opacity=1.0))
        xaxis.update(range=[x0, x1])
        yaxis.update(range=[y0, y1])
    for nx, ny, text in names or []:
        fig.add_annotation(x=nx, y=ny, text=_safe_hover(text)[:40], showarrow=False,
                           font=dict(size=12, color="#111"), bgcolor="rgba(255,255,255,0.7)")
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), dragmode="pan",
                      uirevision=uirevision, legend=dict(itemsizing="constant"),
                      xaxis=xaxis, yaxis=yaxis, plot_bgcolor="white")
    return fig


def map_names(x, y, prototype, labels: dict, view, limit: int = 12, min_gap=(0.16, 0.05)):
    """Where the map writes cluster names: ``[(x, y, name), ...]`` for the ``limit`` largest named
    groups with rows inside ``view``, each at the median of its rows in view, largest first; a name
    that would overlap one already placed (closer than ``min_gap`` of the view's width and height on
    both axes) is left out, so zooming in brings out the names that did not fit.

    Prototypes that share a name up to the size rank (``labels.family``: k-means splits a large
    finding into many prototypes, "normal chest x-ray", "normal chest x-ray #2", ...) are one group
    with one name, written once where its rows are, not once per piece.

    Parameters
    ----------
    x, y : ndarray (n,), every row's map coordinates; prototype : ndarray (n,) int, its cluster
    labels : {cluster: name}; view : ((x0, x1), (y0, y1))
    """
    from curation.labels import family

    (x0, x1), (y0, y1) = view
    prototype = np.asarray(prototype)
    if not labels or not len(prototype):
        return []
    k = int(prototype.max()) + 1
    fam_names = sorted({family(t) for t in labels.values() if t})
    code_of = {t: i for i, t in enumerate(fam_names)}
    fam = np.full(k, -1, np.int64)
    for c, t in labels.items():
        if t and 0 <= int(c) < k:
            fam[int(c)] = code_of[family(t)]
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    f = fam[prototype[inside]]
    keep = f >= 0
    f, px, py = f[keep], np.asarray(x)[inside][keep], np.asarray(y)[inside][keep]
    if not len(f):
        return []
    sizes = np.bincount(f, minlength=len(fam_names))
    top = [int(g) for g in np.lexsort((np.arange(len(sizes)), -sizes))[:limit] if sizes[g]]
    order = np.argsort(f, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    wx, wy = (x1 - x0) * min_gap[0], (y1 - y0) * min_gap[1]
    for g in top:
        members = order[starts[g]:starts[g + 1]]
        cx, cy = float(np.median(px[members])), float(np.median(py[members]))
        if all(abs(cx - nx) > wx or abs(cy - ny) > wy for nx, ny, _ in out):
            out.append((cx, cy, fam_names[g]))
    return out


def density_grid(x: np.ndarray, y: np.ndarray, bins: int = 120):
    """(x centres, y centres, log1p counts as a (bins, bins) grid, y first) for the heatmap."""
    h, xe, ye = np.histogram2d(x, y, bins=bins)
    return (xe[:-1] + xe[1:]) / 2, (ye[:-1] + ye[1:]) / 2, np.log1p(h.T)
