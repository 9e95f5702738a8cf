"""Quality: fidelity and consistency distributions with the current gates, and the worst pairs."""

import numpy as np
import streamlit as st

from curation import charts
from pages import _shared

st.title("Quality")
path, info = _shared.current()
run_id = _shared.require_analysis(info)
df = _shared.analysis_frame(path, info["fingerprint"], run_id)
reason = info["run"]["timings"].get("fidelity_reason", "")

for axis, title in (("fidelity", "Image-text fidelity (cosine)"), ("consistency",
                                                                   "Caption consistency with similar images")):
    st.subheader(title)
    if axis not in df or df[axis].isna().all():
        st.info(reason if axis == "fidelity" else "Not computed: run the `quality` step.")
        continue
    key = f"sel_gate_{axis}"
    st.slider(f"Keep the best fraction by {axis} (1.0 = no gate)", 0.05, 1.0, key=key, step=0.05)
    keep = float(st.session_state[key])
    rules = {}
    if keep < 1.0:
        rules[f"gate: keep top {keep:.0%}"] = float(np.quantile(df[axis].dropna(), 1 - keep))
    st.altair_chart(charts.histogram(df[axis].to_numpy(dtype=float), axis, rules), width="stretch")
    worst = df.nsmallest(6, axis)
    st.write(f"Lowest {axis}")
    grid = st.columns(6)
    for i, (_, r) in enumerate(worst.iterrows()):
        with grid[i]:
            _shared.show_image(info["image_root"], r.get("image"), r.get("caption"))
            st.caption(f"{r['id']}: {r[axis]:.3f}")

st.subheader("Reward model")
st.info("Reward-model distillation from MLLM or expert ratings (RefineNet) is not built yet; "
        "when it is, its scores appear here as further gates.")
