"""Streamlit entry point: page config, dataset picker, navigation over pages/.

Run with `make app` (or `streamlit run app.py`). Datasets are the `*.duckdb` files under `data/`
(or the folder in the CURATION_DATA_DIR environment variable); the demo opens by default.
"""

import os
from pathlib import Path

import streamlit as st

from curation import charts, store
from pages import _knobs

DATA_DIR = Path(os.environ.get("CURATION_DATA_DIR", "data"))

st.set_page_config(page_title="curation", layout="wide")
charts.configure_altair()  # once per run of the entry point; the chart builders bound their rows

datasets = store.list_datasets(DATA_DIR)
names = [p.name.removesuffix(store.SUFFIX) for p in datasets]
if "dataset" not in st.session_state:
    wanted = st.query_params.get("dataset", "demo")
    st.session_state["dataset"] = wanted if wanted in names else (names[0] if names else None)
with st.sidebar:
    if names:
        st.selectbox("Dataset", names, key="dataset")
        st.query_params["dataset"] = st.session_state["dataset"]
    else:
        st.warning(f"No dataset under `{DATA_DIR}/`. Build the demo with "
                   "`python -m curation demo`, or load yours with `python -m curation ingest`.")
st.session_state["dataset_path"] = (
    str(DATA_DIR / f"{st.session_state['dataset']}{store.SUFFIX}") if st.session_state.get("dataset") else None
)

_knobs.init_state()
pages = [
    st.Page("pages/overview.py", title="Overview", default=True),
    st.Page("pages/map.py", title="Map", url_path="map"),
    st.Page("pages/long_tail.py", title="Long tail", url_path="long_tail"),
    st.Page("pages/confounders.py", title="Confounders", url_path="confounders"),
    st.Page("pages/quality.py", title="Quality", url_path="quality"),
    st.Page("pages/select.py", title="Select & export", url_path="select"),
]
st.navigation(pages).run()
