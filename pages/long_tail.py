"""Long tail: cluster sizes by rank (log-log), the density distribution, the rarest clusters."""

import numpy as np
import streamlit as st

from curation import charts, prototypes
from pages import _shared

st.title("Long tail")
path, info = _shared.current()
run_id = _shared.require_analysis(info, needs=("prototypes",))
df = _shared.analysis_frame(path, info["fingerprint"], run_id, info["reward_key"])

sizes = np.bincount(df.prototype.to_numpy())
order = np.argsort(sizes, kind="stable")
rare = prototypes.rare_clusters(sizes)
c1, c2, c3 = st.columns(3)
c1.metric("Prototype clusters", f"{len(sizes):,}")
c2.metric("Rare clusters (hold 10% of samples)", f"{rare.sum():,}")
c3.metric("Largest / smallest cluster", f"{sizes.max():,} / {sizes.min():,}")
st.altair_chart(charts.rank_size_chart(sizes, rare), width="stretch")
if "knn_density" in df:
    st.subheader("kNN density")
    st.altair_chart(charts.histogram(df.knn_density.to_numpy(), "mean cosine to the 10 nearest neighbours",
                                     {"10% sparsest": float(np.quantile(df.knn_density, 0.1))}),
                    width="stretch")

st.subheader("Rarest clusters")
n_show = st.slider("Clusters shown", 1, 20, 5, key="lt_n")
for c in order[:n_show]:
    members = df[df.prototype == c]
    with st.expander(f"cluster {c}: {len(members)} samples, mean tail score "
                     f"{members.tail_score.mean():.2f}" if "tail_score" in members else f"cluster {c}"):
        grid = st.columns(6)
        for i, (_, r) in enumerate(members.head(6).iterrows()):
            with grid[i % 6]:
                _shared.show_image(info["image_root"], r.get("image"), r.get("caption"))
