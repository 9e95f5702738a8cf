"""Long tail: cluster sizes by rank (log-log), the density distribution, the rarest clusters."""

import numpy as np
import streamlit as st

from curation import charts, prototypes
from pages import _knobs, _shared, _text, _views

st.title("Long tail")
path, info = _shared.current()
run_id = _shared.require_analysis(info, needs=("prototypes",))
df = _shared.analysis_frame(path, _shared.data_key(info), run_id, info.reward_key)

sizes = np.bincount(df.prototype.to_numpy())
order = np.argsort(sizes, kind="stable")
rare = prototypes.rare_clusters(sizes)
c1, c2, c3 = st.columns(3)
c1.metric("Clusters (k-means prototypes)", f"{len(sizes):,}")
c2.metric("Rare clusters (hold 10% of samples)", f"{rare.sum():,}")
c3.metric("Largest / smallest cluster", f"{sizes.max():,} / {sizes.min():,}")
st.altair_chart(charts.rank_size_chart(sizes, rare), width="stretch")
if "knn_density" in df:
    st.subheader("How crowded each sample's neighbourhood is (kNN density)")
    st.altair_chart(charts.histogram(df.knn_density.to_numpy(), "mean cosine to the 10 nearest neighbours",
                                     {"10% sparsest": float(np.quantile(df.knn_density, 0.1))}),
                    width="stretch")

st.subheader("Rarest clusters")
st.caption("Each cluster is named by its most distinctive caption words (class-based TF-IDF).")
n_show = st.slider("Clusters shown", 1, min(40, len(sizes)), min(5, len(sizes)), key="lt_n")
excluded = set(_knobs.get("exclude_clusters"))
for c in order[:n_show]:
    members = df[df.prototype == c]
    title = (f"cluster {_views.cluster_name(info, c)}: {len(members)} samples"
             + (f", mean rarity (tail score) {members.tail_score.mean():.2f}" if "tail_score" in members else "")
             + (" (excluded)" if int(c) in excluded else ""))
    with st.expander(_text.esc(title)):
        if int(c) in excluded:
            if st.button("Stop excluding this cluster", key=f"lt_incl_{c}"):
                _knobs.put("exclude_clusters", [x for x in _knobs.get("exclude_clusters") if x != int(c)])
                st.rerun()
        elif st.button("Exclude this cluster from the subset", key=f"lt_excl_{c}"):
            _knobs.put("exclude_clusters", sorted(excluded | {int(c)}))
            st.rerun()
        _views.gallery(members, f"lt_{c}", info.image_root, page_size=6)
