"""Overview: the dataset's size, columns, embedding models and dims, and stored tables."""

from pathlib import Path

import streamlit as st

from curation import CurationError, store


@st.cache_data(max_entries=16, show_spinner=False)
def load_summary(path: str, mtime: float) -> dict:
    with store.open_store(path) as s:
        summary = s.summary()
        summary["preview"] = s.samples().head(20)
        summary["meta_columns"] = s.metadata_columns()
    return summary


st.title("Overview")
path = st.session_state.get("dataset_path")
if not path:
    st.info("No dataset yet. Run `python -m curation demo` to build the synthetic demo.")
    st.stop()
try:
    info = load_summary(path, Path(path).stat().st_mtime)
except (CurationError, OSError) as e:
    st.error(f"Cannot open {path}: {e}")
    st.stop()

c1, c2, c3, c4 = st.columns(4)
c1.metric("Samples", f"{info['rows']:,}")
c2.metric("Image dim", info["image_dim"] or "none")
c3.metric("Text dim", info["text_dim"] or "none")
c4.metric("File size", f"{info['size_mb']} MB")
st.caption(f"Fingerprint `{info['fingerprint']}` · source `{info['source']}`")
st.write("**Embedding models**: image: ", info["image_model"] or "not recorded",
         " · text: ", info["text_model"] or "not recorded")
if info["shared_space"]:
    st.success("Image and text embeddings share one space: image-text fidelity is available.")
else:
    st.warning("Image and text embeddings come from different encoders: image-text fidelity "
               "is not available (the joint space is still built from both).")
st.subheader("Columns")
st.write(", ".join(info["columns"]))
st.subheader("First rows")
# st.dataframe renders cell values as text, never as HTML
st.dataframe(info["preview"], hide_index=True)
st.subheader("Stored tables")
st.write(", ".join(info["tables"]))
