"""Map: the 2-D UMAP layout: every row as an image rendered on the server (no WebGL needed), under a
WebGL sample of points to hover and click (Plotly: zoom, pan, box and lasso selection). Zoom into a
region to see every row of it. Click a point to inspect it (neighbours included); lasso
or box a region to see its samples page by page and exclude or force-include them; search
captions and see the hits ringed on the map."""

import numpy as np
import streamlit as st

from curation import charts, raster, regions
from pages import _shared, _text, _views

st.title("Map")
path, info = _shared.current()
run_id = _shared.require_analysis(info, needs=("prototypes", "map"))
df = _shared.analysis_frame(path, _shared.data_key(info), run_id, info.reward_key)
n_rows = len(df)

numeric = ["knn_density", "tail_score", "glosh_score", "proto_dist", "fidelity_score", "consistency_score",
           "caption_score"]
categorical = ["prototype", "hdbscan_label", "band", "selection"] + info.meta_columns
can_select = "density" in info.run["steps"]
options = [c for c in categorical + numeric if (c == "selection" and can_select) or c in df.columns]
c1, c2, c3 = st.columns([2, 2, 3])
color = c1.selectbox("Colour by", options, key="map_color", format_func=_text.plain,
                     help="Each choice names the technical column in brackets (the CLI's and the exports' name).")
if n_rows > 2_000:
    top = min(200_000, n_rows)
    if "map_points" not in st.session_state:  # ?points=N opens the map with N points drawn
        try:
            st.session_state["map_points"] = int(min(top, max(1_000, int(st.query_params.get("points", 5_000)))))
        except ValueError:
            st.session_state["map_points"] = min(5_000, top)
    max_points = c2.slider("Points to hover and click (every row is in the image under them)", 1_000, top,
                           step=1_000, key="map_points")
else:
    max_points = n_rows
    c2.text(f"All {n_rows:,} points drawn")
query = c3.text_input("Search captions (every word must appear)", key="map_search")


def _picked_rows(event) -> list[int]:
    """Dataset rows of the points a Plotly selection event holds."""
    out = []
    for p in ((event or {}).get("selection") or {}).get("points", []):
        cd = p.get("customdata")
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is not None:
            out.append(int(cd))
    return sorted(set(out))


def _open_clicked(event) -> None:
    """A click (one point, no region) opens the inspector on it, once: closing the inspector keeps
    it closed while the same click is still the chart's selection."""
    rows = _picked_rows(event)
    if len(rows) == 1 and not regions.selection_regions((event or {}).get("selection")):
        if st.session_state.get("map_click_seen") != rows[0]:
            st.session_state["inspect_row"] = rows[0]
        st.session_state["map_click_seen"] = rows[0]
    else:
        st.session_state.pop("map_click_seen", None)


# a click opens the inspector and rings the point: read from the chart's state before anything is
# drawn, so this run computes the inspector's selection and draws the ring (a figure that changed on
# the next run, a lasso's, would lose that lasso)
_open_clicked(st.session_state.get("map_plot"))

always = None
res = inp = cfg = None
if can_select and (color == "selection" or st.session_state.get("inspect_row") is not None):
    inp, cfg, res = _shared.run_selection(path, info)  # only when the colouring or the inspector needs it
if color == "selection":
    always = _views.selected_mask(n_rows, res.selected)
    st.caption(f"{len(res.selected):,} selected with the knobs of the **Select & export** page.")

hits = None
if query.strip():
    from curation import CurationError

    try:
        found = _shared.search_rows(path, _shared.data_key(info), query)
    except CurationError as e:
        _text.error(str(e))
        found = None
    if found is not None:
        hits = np.zeros(n_rows, bool)
        hits[found["row_idx"].to_numpy()] = True
        st.caption(f"{int(hits.sum()):,} caption(s) match" + (" (first 5,000)" if hits.sum() >= 5000 else "") +
                   ": ringed on the map, listed below.")
        always = hits if always is None else (always | hits)

all_x, all_y = df.map_x.to_numpy(), df.map_y.to_numpy()
view_key = f"map_view:{run_id}"
full_view = raster.view_of(all_x, all_y)
view = st.session_state.get(view_key) or full_view
in_view = ((all_x >= view[0][0]) & (all_x <= view[0][1]) & (all_y >= view[1][0]) & (all_y <= view[1][1]))
view_rows = np.flatnonzero(in_view)
pick = charts.sample_points(df[["map_x"]].iloc[view_rows], max_points,
                            always=None if always is None else always[view_rows]).index.to_numpy()
sampled = pick  # dataset rows (the frame's index is row_idx order)
x, y = all_x[sampled], all_y[sampled]
if color == "selection":  # per session and knob: drawn each time
    every = np.where(_views.selected_mask(n_rows, res.selected), "selected", "not selected")
    is_cat = True
    image, colors, value_range = charts.map_image(all_x, all_y, every, categorical=True, view=view)
    values = every[sampled]
else:  # a stored column: the image is cached per run, column and view
    is_cat = color in categorical
    as_text = is_cat and color not in ("prototype", "hdbscan_label")
    image, colors, value_range = _shared.map_image(path, _shared.run_key(info), info.reward_key, color, view, is_cat, as_text,
                                                   all_x, all_y, df[color].to_numpy())
    values = df[color].to_numpy()[sampled]
    values = values.astype(str) if as_text else values
labels = ({c: l for c, l in (info.cluster_labels or {}).items()} if color == "prototype" else None)
names = None
if color == "prototype" and labels:  # the largest named groups in view, written where their rows are
    names = _shared.map_names(path, _shared.run_key(info), view, df.prototype.to_numpy(), all_x, all_y, labels)
hover = None
if len(sampled) <= 20_000:
    cap = df["caption"].to_numpy()[sampled] if "caption" in df else [""] * len(sampled)
    hover = [f"{i} · {str(c)[:80]}" for i, c in zip(df["id"].to_numpy()[sampled], cap)]
ring = st.session_state.get("inspect_row")
ring = (ring if ring is not None and 0 <= int(ring) < n_rows and in_view[int(ring)] else None)
fig = charts.map_figure(x, y, sampled, color_name=color, values=values, categorical=is_cat, labels=labels,
                        hover=hover, highlight=None if hits is None else hits[sampled], colors=colors,
                        image=image, names=names, value_range=value_range, uirevision=f"{run_id}:{view}",
                        ring=None if ring is None else (float(all_x[ring]), float(all_y[ring]), int(ring)))
event = st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"), key="map_plot",
                        config={"scrollZoom": True, "displaylogo": False})
zoomed = view != full_view
st.caption(f"{n_rows:,} samples; the image shows every one of the {image.n_rows:,} rows "
           f"{'in this zoomed view' if zoomed else 'of the pool'} (colour: "
           f"{'the level most rows of a pixel hold' if is_cat else 'the mean per pixel'}; stronger where more rows "
           f"fall), with {len(sampled):,} points on top to hover and click. Lasso or box a region to act on every "
           f"row inside it, or to zoom into it.")
if zoomed and st.button("Show the whole map", key="map_unzoom"):
    st.session_state.pop(view_key, None)
    st.rerun()

picked = sorted(set(_picked_rows(event)) & set(sampled.tolist()))  # drawn points (not the ring)

row = st.session_state.get("inspect_row")
if row is not None and 0 <= int(row) < n_rows:
    with st.container(border=True):
        _views.inspector(path, info, df, int(row), res, inp, cfg)
        if st.button("Close the inspector", key="insp_close"):
            st.session_state.pop("inspect_row", None)
            st.rerun()

polygons = regions.selection_regions(event.get("selection") if event else None)
if polygons:  # a box or lasso: every row inside it, drawn or not (the map draws a sample)
    inside = regions.rows_in_regions(df.map_x.to_numpy(), df.map_y.to_numpy(), polygons)
    rows = df.iloc[inside]
    st.subheader(f"{len(inside):,} samples in the region (every row inside it, of which {len(picked):,} drawn)")
    if st.button("Zoom into this region (every row of it drawn)", key="map_zoom"):
        px = np.concatenate([np.asarray(p)[:, 0] for p in polygons])
        py = np.concatenate([np.asarray(p)[:, 1] for p in polygons])
        st.session_state[view_key] = raster.view_of(px, py, pad=0.05)
        st.rerun()
    name = st.text_input("Rule name", f"region-{len(inside)}", key="region_name")
    dist_cols = [c for c in [*info.meta_columns, "band", "tail_score", "fidelity_score", "caption_score"]
                 if c in df.columns]
    if dist_cols and len(inside):
        col = st.selectbox("The region beside the pool: distribution of", dist_cols, key="region_dist",
                           format_func=_text.plain)
        is_cat_col = col in categorical or df[col].dtype == object
        chart = charts.region_vs_pool(df[col].to_numpy(), inside, _text.plain(col), categorical=is_cat_col)
        if chart is not None:
            st.altair_chart(chart, use_container_width=True)
    meta = {"n": int(len(inside)), "analysis_run": run_id, "polygons": polygons}
    b1, b2 = st.columns(2)
    if b1.button("Exclude this region from the subset", key="region_exclude", disabled=not len(inside)):
        ref = _views.save_rule(path, name, inside, "exclude", "region", meta)
        if ref:
            st.success(_text.esc(f"Rule added: exclude {ref} ({len(inside):,} samples). It applies on Select & "
                                 f"export and in exports."))
    if b2.button("Force-include this region", key="region_include", disabled=not len(inside)):
        ref = _views.save_rule(path, name, inside, "include", "region", meta)
        if ref:
            st.success(_text.esc(f"Rule added: include {ref} ({len(inside):,} samples)."))
    _views.gallery(rows, "region", info.image_root)

if hits is not None and hits.any():
    st.subheader("Search hits")
    hit_rows = np.flatnonzero(hits)
    name = st.text_input("Rule name", f"search-{'-'.join(query.split())[:40]}", key="search_rule_name")
    if st.button("Exclude every hit from the subset", key="search_exclude"):
        ref = _views.save_rule(path, "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in name),
                                hit_rows, "exclude", "search", {"text": query})
        if ref:
            st.success(_text.esc(f"Rule added: exclude {ref}."))
    _views.gallery(df.iloc[hit_rows], "hits", info.image_root)
