"""Confounders: association of each metadata column with the clusters and the embeddings, the
per-cluster distributions, and choosing the columns the selection stratifies by."""

import streamlit as st

from curation import charts
from pages import _knobs, _shared, _text, _views

st.title("Confounders")
path, info = _shared.current()
run_id = _shared.require_analysis(info, needs=("prototypes", "confounders"))
conf = info.confounders
if conf is None:
    st.warning("The analysis has no confounder statistics: run the `confounders` step.")
    st.stop()
st.write("Which metadata columns the data gives away: a column tied to the clusters (bias-corrected "
         "Cramér's V and mutual information against the k-means clusters), or one a simple model guesses from "
         "the embeddings better than chance (a cross-validated linear probe, balanced accuracy). Flagged: "
         "either. A flagged column is worth balancing the subset over (stratify below).")
if "majority_accuracy" in conf.columns:  # runs stored before the rename held chance under this name
    conf = conf.rename(columns={"majority_accuracy": "chance_accuracy"})
show = conf[["column", "role", "kind", "levels", "cramers_v", "nmi", "probe_accuracy", "chance_accuracy",
             "probe_lift", "is_confounder", "note"]]
st.dataframe(show.round(3), hide_index=True)

usable = conf.loc[conf["kind"] != "skipped", "column"].tolist()
flagged = _views.flagged_columns(info)
if not _knobs.get("confounders") and flagged:
    st.caption(_text.esc(f"Suggested: {', '.join(flagged)}"))
_knobs.put("confounders", [c for c in _knobs.get("confounders") if c in usable])
_knobs.knob(st.multiselect, "confounders", "Stratify the selection by (applies on Select & export)", usable)

df = _shared.analysis_frame(path, _shared.data_key(info), run_id, info.reward_key)
col = st.selectbox("Distribution by cluster of", usable, key="conf_col") if usable else None
if col:
    st.altair_chart(charts.stacked_share_chart(df, col), width="stretch")
