"""Overview: the dataset's size, columns, embedding models and dims, what the analysis found, and
running the analysis in the background (other pages and sessions keep the last complete run)."""

import pandas as pd
import streamlit as st

from curation import CurationError, analysis, jobs, workflows
from pages import _shared, _text

st.title("Overview")
path, info = _shared.current()

c1, c2, c3, c4 = st.columns(4)
c1.metric("Samples", f"{info.rows:,}")
c2.metric("Image dim", info.image_dim or "none")
c3.metric("Text dim", info.text_dim or "none")
c4.metric("File size", f"{info.size_mb} MB")
st.dataframe(pd.DataFrame({"": ["fingerprint", "source", "image model", "text model", "vectors"],
                           "value": [str(info.fingerprint), str(info.source),
                                     str(info.image_model or "not recorded"),
                                     str(info.text_model or "not recorded"), str(info.vectors)]}),
             hide_index=True, key="ov_facts")
if info.shared_space:
    st.success("Image and text embeddings share one space: image-text fidelity is available.")
elif info.image_dim and info.text_dim:
    st.warning("Image and text embeddings come from different encoders: image-text fidelity "
               "is not available (the joint space is still built from both).")

st.subheader("Analysis")
if info.run_id:
    run = info.run
    st.markdown(_text.esc(f"Run {info.run_id}: {run['outputs'].get('k')} clusters (k-means prototypes) in the "
                            f"{run['config'].get('space')} space (steps: {', '.join(run['steps'])})."))
    report = (_shared.analysis_report(path, _shared.data_key(info), info.run_id)
              if set(run["steps"]) >= {"prototypes", "density"} else None)
    if report:
        st.code(report, language=None)
else:
    st.info("No analysis yet: prototypes, density, duplicates, the map, quality and confounder "
            "statistics are computed once and cached in the dataset.")

space_options = (["joint", "image", "text"] if info.image_dim and info.text_dim else
                 ["image"] if info.image_dim else ["text"])
space = st.selectbox("Space", space_options, key="ov_space")
meta_columns = [c for c in info.meta_columns]
labels = st.multiselect("Label columns: answers, not inputs", meta_columns,
                        default=[c for c in info.label_columns if c in meta_columns], key="ov_labels",
                        help="Diagnosis or finding columns (a|b|c holds three labels): never flagged as confounders, "
                             "never used by the default selection; Select & export reports their head-class share "
                             "and class coverage against random subsets.")
cfg = analysis.AnalysisConfig(space=space, label_columns=tuple(labels))
job = jobs.job_for(path)
running = job is not None and job.snapshot()["status"] == "running"


@st.fragment(run_every=1.0 if running else None)
def job_panel():
    """Progress of a background analysis, polled every second; the page reloads when it ends."""
    j = jobs.job_for(path)
    if j is None:
        return
    snap = j.snapshot()
    if snap["status"] == "running":
        st.progress(snap["fraction"], text=_text.esc(f"{snap['step']}: {snap['done']:,} / {snap['total']:,} "
                                                       f"({snap['seconds']:.0f} s)"))
    elif snap["status"] == "failed":
        _text.error(f"The analysis failed: {snap['error']}")
    elif snap["status"] == "done" and st.session_state.get("ov_seen_run") != snap["run_id"]:
        st.session_state["ov_seen_run"] = snap["run_id"]
        st.rerun(scope="app")  # dataset_info is keyed by the file's mtime: the new run shows
    elif snap["status"] == "done":
        st.success(_text.esc(f"Analysis {snap['run_id']} finished in {snap['seconds']:.0f} s."))


label = "Run analysis" if not info.run_id else "Run analysis (cached when nothing changed)"
c1, c2 = st.columns([1, 3])
go = c1.button(label, key="ov_run", disabled=running)
force = c2.checkbox("Recompute even when this run is stored", key="ov_force")
with st.expander("Run on a Ray cluster (optional)"):
    st.caption("The same run and the same results as on this machine, its tasks spread over the cluster's "
               "CPUs. The dataset's folder must be on a file system every node sees.")
    backend = st.radio("Where", ["local", "ray"], key="ov_backend", horizontal=True,
                       format_func={"local": "this machine", "ray": "Ray"}.get)
    address = st.text_input("Cluster address (HEAD:PORT; empty: Ray started on this machine)", key="ov_address",
                            disabled=backend != "ray").strip() or None
if go:
    try:
        if list(labels) != list(info.label_columns):
            workflows.declare_label_columns(path, labels)
        jobs.start_analysis(path, cfg, force=force, backend=backend, address=address if backend == "ray" else None)
    except CurationError as e:
        _text.error(str(e))
    else:
        st.rerun()
job_panel()

st.subheader("Columns")
st.dataframe(pd.DataFrame({"column": [str(c) for c in info.columns]}), hide_index=True, key="ov_columns")
with st.expander("Stored tables"):
    st.dataframe(pd.DataFrame({"table": [str(t) for t in info.tables]}), hide_index=True, key="ov_tables")
