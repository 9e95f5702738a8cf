"""Map: the 2-D UMAP layout as a binned density heatmap with a bounded sample of points on top,
coloured by cluster, density, band, metadata or selection status; brush a region to see its rows."""

import numpy as np
import streamlit as st

from curation import charts
from pages import _shared

st.title("Map")
path, info = _shared.current()
run_id = _shared.require_analysis(info, needs=("prototypes", "map"))
df = _shared.analysis_frame(path, info["fingerprint"], run_id, info["reward_key"])

numeric = ["knn_density", "tail_score", "glosh_score", "proto_dist", "fidelity_score", "consistency_score"]
categorical = ["prototype", "hdbscan_label", "band", "selection"] + info["meta_columns"]
can_select = "density" in info["run"]["steps"]
options = [c for c in categorical + numeric if (c == "selection" and can_select) or c in df.columns]
color = st.selectbox("Colour by", options, key="map_color")
n_rows = len(df)
if n_rows > 2_000:
    max_points = st.slider("Points drawn (a sample; the heatmap shows all)", 2_000, min(50_000, n_rows),
                           min(15_000, n_rows), step=1_000, key="map_points")
else:
    max_points = n_rows

always = None
if color == "selection":
    inp, cfg, res = _shared.run_selection(path, info)
    always = _shared.selected_mask(len(df), res.selected)
    st.caption(f"{len(res.selected):,} selected with the knobs of the **Select & export** page.")
is_cat = color in categorical
# sample first, then build the (small) frame the browser receives
sampled = charts.sample_points(df[["map_x"]], max_points, always=always).index
pts = df.loc[sampled, ["id", "map_x", "map_y"]]
if color == "selection":
    pts["selection"] = np.where(always[sampled], "selected", "not selected")
else:
    pts[color] = df.loc[sampled, color].astype(str) if is_cat else df.loc[sampled, color]
bins = charts.binned_density(df.map_x.to_numpy(), df.map_y.to_numpy())
chart = charts.map_chart(bins, pts, color, categorical=is_cat, tooltip=["id", color])
event = st.altair_chart(chart, width="stretch", on_select="rerun", key="map_chart")
st.caption(f"{len(df):,} samples; heatmap of all, {len(pts):,} points drawn. Drag on the map to "
           "select a region.")

region = None
if event and event.get("selection"):
    region = event["selection"].get("region")
rows = _shared.rows_in_region(df, region)
if len(rows):
    st.subheader(f"{len(rows):,} samples in the region")
    cols = [c for c in ["id", "caption", "prototype", "band", "tail_score", "hdbscan_label"] if c in rows.columns]
    st.dataframe(rows[cols].head(500), hide_index=True)
    st.write("Examples")
    grid = st.columns(6)
    for i, (_, r) in enumerate(rows.head(12).iterrows()):
        with grid[i % 6]:
            _shared.show_image(info["image_root"], r.get("image"), r.get("caption"))
