"""Select & export: every selection knob, live impact beside a random subset of the same size,
the budget-vs-coverage curve, the subset on the map, and export (download and under data/)."""

import json
from pathlib import Path

import numpy as np
import streamlit as st

from curation import CurationError, charts, manifest, store
from curation.selection import MODES, OPERATORS, OUTLIER_POLICIES
from pages import _shared

st.title("Select & export")
path, info = _shared.current()
run_id = _shared.require_analysis(info)

with st.sidebar:
    st.header("Selection knobs")
    st.slider("Budget (fraction of the pool)", 0.01, 1.0, step=0.01, key="sel_budget")
    usable = [c for c in info["meta_columns"]
              if info["confounders"] is None or c in set(info["confounders"].query("kind != 'skipped'").column)]
    st.session_state["sel_confounders"] = [c for c in st.session_state["sel_confounders"] if c in usable]
    st.multiselect("Confounders (strata)", usable, key="sel_confounders",
                   help=f"Flagged by the analysis: {', '.join(_shared.flagged_columns(info)) or 'none'}")
    st.selectbox("Allocation across strata", MODES, key="sel_mode")
    if st.session_state["sel_mode"] == "tempered":
        st.slider("Temper (0 = proportional, 1 = balanced)", 0.0, 1.0, step=0.05, key="sel_temper")
    st.number_input("Tail picks per core pick", 0.0, 10.0, step=0.04, key="sel_tail_ratio")
    st.selectbox("Outliers", OUTLIER_POLICIES, key="sel_outliers")
    st.checkbox("Drop near-duplicates", key="sel_dedup")
    if st.session_state["sel_dedup"]:
        st.number_input("Duplicate if cosine > 1 - eps; eps =", 0.001, 0.5, step=0.005, format="%.3f",
                        key="sel_dedup_eps")
    st.slider("Fidelity gate: keep best fraction", 0.05, 1.0, step=0.05, key="sel_gate_fidelity",
              disabled="fidelity" in _shared.selection_bundle(path, info["fingerprint"], run_id, info["reward_key"])["inp"].unavailable)
    st.slider("Consistency gate: keep best fraction", 0.05, 1.0, step=0.05, key="sel_gate_consistency")
    if info["reward_key"]:  # the pool was scored by a reward model (Quality page / `reward score`)
        st.slider("Reward fidelity gate: keep best fraction", 0.05, 1.0, step=0.05, key="sel_gate_reward_fidelity")
        st.slider("Reward consistency gate: keep best fraction", 0.05, 1.0, step=0.05,
                  key="sel_gate_reward_consistency")
    st.selectbox("Filter column", ["(none)"] + info["meta_columns"], key="sel_filter_col")
    if st.session_state["sel_filter_col"] != "(none)":
        st.selectbox("Operator", OPERATORS, key="sel_filter_op")
        st.text_input("Value (JSON or text; comma-separated for in)", key="sel_filter_value")
    st.number_input("Seed (random baseline)", 0, 2**31 - 1, step=1, key="sel_seed")

bundle, cfg, res = _shared.run_selection(path, info)
inp = bundle["inp"]
sm = res.summary
if sm["selected"] == 0:
    st.warning("This configuration selects nothing: every sample is filtered, gated, a duplicate or an "
               "outlier. Loosen a filter or a gate.")
    st.stop()
c1, c2, c3, c4 = st.columns(4)
c1.metric("Selected", f"{sm['selected']:,}", help="samples in the subset")
c2.metric("Budget", f"{sm['budget']:,}")
c3.metric("Eligible", f"{sm['eligible']:,}")
c4.metric("Pool", f"{sm['pool']:,}")
if sm["shortfall"]:
    st.warning(f"Only {sm['eligible']:,} samples are eligible: the subset is {sm['shortfall']:,} short of the budget.")

columns = tuple(cfg.confounders) or tuple(_shared.flagged_columns(info))
ctx = _shared.impact_context(bundle, columns, info["label_column"])
impact = ctx.compare(res.selected, cfg.seed)
left, right = st.columns([3, 2])
with left:
    st.subheader("Impact: subset vs random subset of the same size")
    st.dataframe(impact.round(4), key="impact_table")
with right:
    st.subheader("Reasons")
    st.dataframe({"reason": list(sm["reasons"]), "samples": list(sm["reasons"].values())}, hide_index=True)
    if len(res.stratum_labels) > 1:
        st.dataframe(sm["strata"], hide_index=True)

st.subheader("Budget vs cluster coverage")
st.altair_chart(charts.coverage_chart(ctx.coverage_curve(res.order, cfg.seed), sm["budget"]), width="stretch")

df = _shared.analysis_frame(path, info["fingerprint"], run_id, info["reward_key"])
if "map_x" in df:
    st.subheader("The subset on the map")
    sel = _shared.selected_mask(len(df), res.selected)
    sampled = charts.sample_points(df[["map_x"]], 10_000, always=sel).index
    pts = df.loc[sampled, ["id", "map_x", "map_y"]].assign(
        selection=np.where(sel[sampled], "selected", "not selected"))
    bins = charts.binned_density(df.map_x.to_numpy(), df.map_y.to_numpy())
    st.altair_chart(charts.map_chart(bins, pts, "selection", categorical=True, tooltip=["id"], height=420),
                    width="stretch")

st.subheader("Export")
fmt = st.selectbox("Format", manifest.FORMATS, key="exp_format")
name = st.text_input("File name (written under data/exports/)", "subset", key="exp_name")
ext = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl", "openclip": "tsv"}[fmt]
safe = "".join(ch for ch in name if ch.isalnum() or ch in "-_") or "subset"
out = Path(path).parent / "exports" / f"{safe}.{ext}"
if st.button("Export manifest", key="exp_go"):
    try:
        with store.open_store(path) as s:
            side = manifest.export(s, inp, res, cfg, run_id, out, fmt, impact=impact.to_dict(orient="index"))
        st.session_state["exp_last"] = {"path": str(out), "sidecar": side}
    except (CurationError, OSError) as e:
        st.error(f"Export failed: {e}")
last = st.session_state.get("exp_last")
if last and Path(last["path"]).is_file():
    st.success(f"Wrote {last['path']} ({last['sidecar']['manifest']['rows']:,} rows) with "
               f"{manifest.paths_for(last['path'])['sidecar'].name} and {manifest.paths_for(last['path'])['dropped'].name}.")
    st.download_button("Download the manifest", Path(last["path"]).read_bytes(),
                       file_name=Path(last["path"]).name, key="exp_download")
    st.json(json.loads(json.dumps(last["sidecar"])), expanded=False)
    st.caption(f"Reproduce from the command line: `python -m curation select --from "
               f"{manifest.paths_for(last['path'])['sidecar']} --out {last['path']}`")
