"""Overview: the dataset's size, columns, embedding models and dims, and the analysis status."""

import streamlit as st

from curation import CurationError, analysis
from pages import _shared

st.title("Overview")
path, info = _shared.current()

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

st.subheader("Analysis")
if info["run_id"]:
    run = info["run"]
    st.write(f"Latest run `{info['run_id']}`: k = {run['outputs']['k']} prototypes in the "
             f"{run['config']['space']} space, steps {', '.join(run['outputs']['steps'])}.")
    st.dataframe({k: [round(v, 1)] for k, v in run["timings"].items() if isinstance(v, float)},
                 hide_index=True)
else:
    st.info("No analysis yet: prototypes, density, duplicates, the map, quality and confounder "
            "statistics are computed once and cached in the dataset.")
space_options = ["joint", "image", "text"] if info["image_dim"] and info["text_dim"] else \
    (["image"] if info["image_dim"] else ["text"])
space = st.selectbox("Space", space_options, key="ov_space")
if st.button("Run analysis" if not info["run_id"] else "Run analysis again", key="ov_run"):
    bar = st.progress(0.0, text="starting")
    steps = list(analysis.STEPS)

    def progress(step, done, total):
        i = steps.index(step) if step in steps else 0
        frac = (i + (done / total if total else 1)) / len(steps)
        bar.progress(min(frac, 1.0), text=f"{step}: {done:,} / {total:,}")

    try:
        analysis.analyze(path, analysis.AnalysisConfig(space=space), progress=progress)
    except CurationError as e:
        st.error(str(e))
    else:
        bar.progress(1.0, text="done")
        st.cache_data.clear()
        st.cache_resource.clear()
        st.rerun()

st.subheader("Columns")
st.write(", ".join(info["columns"]))
st.subheader("Stored tables")
st.write(", ".join(info["tables"]))
