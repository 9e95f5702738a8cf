"""Quality: fidelity and consistency distributions with the current gates, the worst pairs, and the
RefineNet reward model (ratings, training with held-out r, pool scores as further gates)."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from curation import CurationError, charts
from pages import _knobs, _shared, _text, _views

st.title("Quality")
path, info = _shared.current()
run_id = _shared.require_analysis(info, needs=("quality",))
df = _shared.analysis_frame(path, _shared.data_key(info), run_id, info.reward_key)
reason = info.run["outputs"].get("fidelity_reason", "")


def axis_section(axis: str, title: str, value_col: str, fmt: str = "{:.3f}") -> None:
    """Histogram of one axis with its gate as a red rule, a gate slider, and the six worst pairs."""
    st.subheader(title)
    _knobs.gate_knob(axis, f"Keep the best fraction by {axis.replace('_', ' ')} (1.0 = no gate; applies on "
                            "Select & export)")
    keep = float(_knobs.get(_knobs.GATE_PREFIX + axis))
    values = df[value_col].to_numpy(dtype=float)
    rules = {}
    if keep < 1.0:
        rules[f"gate: keep top {keep:.0%}"] = float(np.quantile(values[np.isfinite(values)], 1 - keep))
    st.altair_chart(charts.histogram(values, value_col, rules), width="stretch")
    worst = df.nsmallest(120, value_col)
    st.markdown(f"Lowest {axis.replace('_', ' ')} (worst first)")
    _views.gallery(worst, f"worst_{axis}", info.image_root, extra=lambda r: f"{value_col} {fmt.format(r[value_col])}")


for axis, title, value_col in (("fidelity", "Image-text fidelity (cosine)", "fidelity"),
                               ("consistency", "Caption consistency with similar images", "consistency"),
                               ("caption", "Caption quality (content words, placeholders, repetition)",
                                "caption_quality")):
    if value_col not in df or df[value_col].isna().all():
        st.subheader(title)
        st.info(_text.esc(reason) if axis == "fidelity" else
                "Not computed: run the `quality` step (caption quality needs a caption column).")
        continue
    axis_section(axis, title, value_col)
    if axis == "caption":
        st.caption(_text.esc(
            f"{int(df['is_placeholder'].sum()):,} placeholder or content-free captions; "
            f"{int((df['caption_dup_cases'] > 1).sum()):,} captions shared by more than one case; "
            f"{int((df['caption_dup_images'] > 0).sum()):,} images share their exact caption with another image "
            "(a caption signal: never a duplicate drop)."))

# ---------------------------------------------------------------------------------------------
st.header("Reward model (RefineNet)")
rw = info.reward
st.caption("A multimodal language model, or experts, rates a subset of pairs on fidelity and consistency; a small model on the "
           "embeddings learns those ratings and scores every pair. Its scores become two more gates.")
c1, c2, c3 = st.columns(3)
c1.metric("Stored ratings", f"{rw['n_ok']:,}", help=f"{rw['n_ratings'] - rw['n_ok']:,} malformed or without image")
c2.metric("Trained models", len(rw["models"]))
newest = rw["models"][-1]["model_id"] if rw["models"] else None
c3.metric("Pool scored", "no" if not rw["scored_by"] else "by the newest model" if rw["scored_by"] == newest
          else "by an older model", help=_text.esc(rw["scored_by"]) if rw["scored_by"] else "Train a model, then score the pool.")
if not rw["n_ratings"] and not rw["models"]:
    st.info("No ratings yet. Rate pairs with a local multimodal model server (command below), or upload a ratings CSV "
            "(`id` plus one numeric column per axis, any scale, from a model or from experts).")
    st.code(f"python -m curation reward annotate {path} --endpoint http://localhost:8000/v1 "
            "--model MODEL --sample 2000", language="bash")

with st.expander("Train a reward model", expanded=not rw["models"]):
    up = st.file_uploader("Ratings CSV (id + one numeric column per axis); leave empty to use the stored ratings",
                          type=["csv"], key="reward_csv")
    if st.button("Train", key="reward_train", disabled=not (up or rw["n_ok"])):
        from curation import reward

        with tempfile.TemporaryDirectory() as tmp:
            csv = None
            if up is not None:
                csv = Path(tmp) / Path(up.name).name
                csv.write_bytes(up.getvalue())
            try:
                with st.spinner("Training the reward model..."):
                    res = reward.train(path, csv, progress=False)
            except CurationError as e:
                _text.error(str(e))
            else:
                st.success(_text.esc(f"Trained {res['model_id']} on {res['n_ratings']:,} ratings "
                                       f"({res['seconds']:.1f} s)."))
                _shared.dataset_info.clear()
                st.rerun()

def _axis_order(a: str):
    return ({"fidelity": 0, "consistency": 1}.get(a, 2), a)


if rw["models"]:
    rows = [{"model": m["model_id"], "created": m["created"], "ratings from": m["source"],
             **{f"r ({a})": m["metrics"][a]["r"] for a in sorted(m["metrics"], key=_axis_order)},
             "held out": next(iter(m["metrics"].values()))["n_test"]} for m in rw["models"]]
    st.write("Held-out Pearson r per axis (held out by case when the dataset has case ids; RefineNet reports "
             "r = 0.67 against experts):")
    st.dataframe(pd.DataFrame(rows[::-1]), hide_index=True, width="stretch")
    if rw["scored_by"] != newest and st.button(_text.esc(f"Score the pool with {newest}"), key="reward_score"):
        from curation import reward

        try:
            with st.spinner("Scoring every sample..."):
                reward.score(path, newest, progress=False)
        except CurationError as e:
            _text.error(str(e))
        else:
            _shared.dataset_info.clear()
            st.rerun()

for gate_axis in info.gate_axes:  # every reward axis the scored model has, not a fixed pair
    if gate_axis.startswith("reward_") and gate_axis in df:
        axis_section(gate_axis, f"Reward: {gate_axis[len('reward_'):]} (rating scale)", gate_axis, "{:.2f}")

# ---------------------------------------------------------------------------------------------
if "dup_group" in df and (df["dup_group"] >= 0).any():
    st.header("Near-copies (near-duplicate groups)")
    st.caption("Decided on the image embedding (text when a dataset has no images): each dropped sample is "
               "a near-copy of the kept sample it is dropped for (cosine above 1 - eps). Identical captions on different "
               "images are a caption signal (Caption quality above), never a drop.")
    groups = df[df["is_dup"]].groupby("dup_group").size().sort_values(ascending=False)
    st.text(f"{len(groups):,} groups, {int(df['is_dup'].sum()):,} samples dropped as near-copies "
            f"(at the analysis threshold, eps {info.run['config'].get('dedup_eps', 0.05):g})")
    page = st.number_input(f"Group (of {len(groups)})", 1, len(groups), 1, key="dup_page")
    rep = int(groups.index[page - 1])
    members = df[(df["dup_group"] == rep)]
    members = members.loc[[rep] + [i for i in members.index if i != rep]]
    nbr, sim = _shared.knn_graph(path, _shared.data_key(info), run_id, "dedup_knn")

    def cosine_to_kept(i: int) -> float:
        """From the stored duplicate-space graph, in whichever direction it lists the pair."""
        for a, b in ((i, rep), (rep, i)):
            hit = np.flatnonzero(nbr[a] == b)
            if len(hit):
                return float(sim[a][hit[0]])
        return float("nan")

    _views.gallery(members, f"dup_{rep}", info.image_root,
                    extra=lambda r: "kept" if r.name == rep else f"dropped: cosine {cosine_to_kept(r.name):.3f} to the kept")
