"""What every page shares: cached reads keyed by dataset fingerprint and analysis run, the
selection knobs in st.session_state (mirrored in the URL), and the bad-state messages.

Not a page (st.navigation lists pages explicitly); data and charts come from ``curation``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st

from curation import CurationError, analysis, selection, store
from curation.selection import Filter, Gate, SelectionConfig

# knob -> (default, parser from a URL string)
KNOBS = {
    "sel_budget": (0.25, float),
    "sel_confounders": ([], lambda v: [c for c in v.split(",") if c]),
    "sel_mode": ("proportional", str),
    "sel_temper": (0.5, float),
    "sel_tail_ratio": (0.44, float),
    "sel_outliers": ("drop", str),
    "sel_dedup": (True, lambda v: v == "1"),
    "sel_dedup_eps": (0.05, float),
    "sel_gate_fidelity": (1.0, float),
    "sel_gate_consistency": (1.0, float),
    "sel_gate_reward_fidelity": (1.0, float),
    "sel_gate_reward_consistency": (1.0, float),
    "sel_filter_col": ("(none)", str),
    "sel_filter_op": ("==", str),
    "sel_filter_value": ("", str),
    "sel_seed": (0, int),
}


GATE_AXES = ("fidelity", "consistency", "reward_fidelity", "reward_consistency")


def init_state() -> None:
    """Initialise the knobs once per session, from the URL when it carries them."""
    for key, (default, parse) in KNOBS.items():
        if key not in st.session_state:
            raw = st.query_params.get(key.removeprefix("sel_"))
            try:
                st.session_state[key] = parse(raw) if raw is not None else default
            except (TypeError, ValueError):
                st.session_state[key] = default


def sync_query() -> None:
    """Mirror the knobs into the URL so a view can be bookmarked and shared."""
    for key, (default, _) in KNOBS.items():
        v = st.session_state.get(key, default)
        name = key.removeprefix("sel_")
        if v == default:
            if name in st.query_params:
                del st.query_params[name]
            continue
        st.query_params[name] = ",".join(v) if isinstance(v, list) else ("1" if v is True else
                                                                         "0" if v is False else str(v))


def config_from_state() -> SelectionConfig:
    """The SelectionConfig the knobs describe."""
    s = st.session_state
    gates = tuple(Gate(axis, top_q=float(s[f"sel_gate_{axis}"])) for axis in GATE_AXES
                  if float(s.get(f"sel_gate_{axis}", 1.0)) < 1.0)
    filters = ()
    if s.get("sel_filter_col", "(none)") != "(none)":
        op = s["sel_filter_op"]
        raw = s.get("sel_filter_value", "")
        value = None
        if op in ("in", "not in"):
            value = [v.strip() for v in raw.split(",") if v.strip()]
        elif op not in ("is null", "not null"):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        filters = (Filter(s["sel_filter_col"], op, value),)
    return SelectionConfig(
        budget=float(s["sel_budget"]), confounders=tuple(s["sel_confounders"]), mode=s["sel_mode"],
        temper=float(s["sel_temper"]), tail_core_ratio=float(s["sel_tail_ratio"]),
        outliers=s["sel_outliers"], dedup_eps=float(s["sel_dedup_eps"]) if s["sel_dedup"] else None,
        gates=gates, filters=filters, seed=int(s["sel_seed"]))


# ---------------------------------------------------------------------------------------------
@st.cache_data(max_entries=16, show_spinner=False)
def dataset_info(path: str, mtime: float) -> dict:
    """Summary, latest analysis run and its side tables (cheap; keyed by file mtime)."""
    with store.open_store(path) as s:
        info = s.summary()
        info["run_id"] = analysis.latest_run(s)
        info["meta_columns"] = s.metadata_columns()
        info["label_column"] = s.meta.get("label_column")
        info["image_root"] = str(s.image_root()) if s.image_root() else None
        info["confounders"] = None
        info["run"] = None
        info["reward"] = reward_status(s)
        info["reward_key"] = info["reward"]["scored_run"]
        if info["run_id"]:
            runs = s.runs("analysis").set_index("run_id")
            info["run"] = {k: json.loads(runs.loc[info["run_id"], k]) for k in ("config", "timings", "outputs")}
            try:
                info["confounders"] = analysis.load_table(s, info["run_id"], "confounders")
            except CurationError:
                pass
    return info


def reward_status(s) -> dict:
    """Ratings, trained reward models (with held-out r) and which model scored the pool."""
    from curation import reward
    from curation import schema as S

    out = {"n_ratings": 0, "n_ok": 0, "models": [], "scored_by": None, "scored_run": None}
    if s.has_table(S.REWARD_RATINGS):
        r = s.read_table(S.REWARD_RATINGS, ["status"])
        out["n_ratings"], out["n_ok"] = len(r), int((r["status"] == "ok").sum())
    ms = reward.models(s)
    if ms is not None:
        out["models"] = [{"model_id": m.model_id, "created": m.created, "source": m.source,
                          "metrics": json.loads(m.metrics)} for m in ms.itertuples()]
    runs = s.runs("reward-score")
    if len(runs) and s.has_table(S.REWARD_SCORES):
        out["scored_run"] = runs["run_id"].iloc[-1]
        out["scored_by"] = json.loads(runs["config"].iloc[-1])["model_id"]
    return out


def _ensure_entry_point() -> None:
    """Make a deep link (``/quality?...``) to a freshly started server run through app.py.

    Streamlit treats an app with a ``pages/`` folder as a v1 multipage app until the entry point's
    ``st.navigation`` has run once in the server process; until then a deep link runs the page
    script alone, without app.py's dataset picker. When that happens, switch the server to v2
    (what ``st.navigation`` itself does on its first call) and rerun: the same URL then goes through
    app.py. Relies on ``PagesManager.uses_pages_directory`` (Streamlit 1.67, pinned).
    """
    if "dataset_path" in st.session_state:
        return
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the v1 fallback
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def current() -> tuple[str, dict]:
    """(path, info) of the chosen dataset, or a message on the page and st.stop()."""
    _ensure_entry_point()
    init_state()
    sync_query()  # widget changes reach session_state before the page runs
    path = st.session_state.get("dataset_path")
    if not path:
        st.info("No dataset yet. Run `python -m curation demo` to build the synthetic demo, or "
                "`python -m curation ingest` to load yours.")
        st.stop()
    try:
        return path, dataset_info(path, Path(path).stat().st_mtime)
    except (CurationError, OSError) as e:
        st.error(f"Cannot open {path}: {e}")
        st.stop()


def require_analysis(info: dict) -> str:
    if not info["run_id"]:
        st.warning("This dataset has no analysis yet. Run it on the **Overview** page, or with "
                   f"`python -m curation analyze {info['path']}`.")
        st.stop()
    return info["run_id"]


@st.cache_resource(max_entries=4, show_spinner="Reading the analysis...")
def analysis_frame(path: str, fingerprint: str, run_id: str, reward_key: str | None = None):
    """Per-sample analysis results joined with id, image, caption and metadata (row order).

    A shared resource, not cache_data: cache_data would unpickle a copy of a 1M-row frame on
    every rerun (about 0.5 s). Pages only read it."""
    with store.open_store(path) as s:
        df, _ = analysis.load(s, run_id)
        base = s.samples()
    return base.join(df.drop(columns=["row_idx"]))


@st.cache_resource(max_entries=4, show_spinner="Loading the selection arrays...")
def selection_bundle(path: str, fingerprint: str, run_id: str, reward_key: str | None = None) -> dict:
    """Selection inputs, an order cache and impact contexts, shared by all sessions (read-only)."""
    with store.open_store(path) as s:
        inp = selection.load_inputs(s, run_id)
    return {"inp": inp, "orders": {}, "contexts": {}}


def impact_context(bundle: dict, columns: tuple, label: str | None):
    from curation.metrics import ImpactContext

    key = (columns, label)
    if key not in bundle["contexts"]:
        bundle["contexts"][key] = ImpactContext(bundle["inp"], columns=columns, label=label)
    return bundle["contexts"][key]


def run_selection(path: str, info: dict):
    """(bundle, config, result) for the current knobs, or a message and st.stop()."""
    run_id = require_analysis(info)
    bundle = selection_bundle(path, info["fingerprint"], run_id, info["reward_key"])
    cfg = config_from_state()
    try:
        res = selection.select(bundle["inp"], cfg, cache=bundle["orders"])
    except CurationError as e:
        st.error(f"This configuration cannot run: {e}")
        st.stop()
    return bundle, cfg, res


def show_image(root: str | None, value, caption: str | None = None, width: int = 128) -> None:
    """A thumbnail read only from inside the image root; captions as plain text, never HTML."""
    try:
        p = store.resolve_image(Path(root) if root else None, value)
        st.image(str(p), width=width)
    except CurationError as e:
        st.caption(f"(no image: {e})")
    if caption is not None:
        st.text(str(caption))


def flagged_columns(info: dict) -> list[str]:
    conf = info.get("confounders")
    if conf is None:
        return []
    return conf.loc[conf["is_confounder"], "column"].tolist()


def rows_in_region(df, region: dict | None):
    """Rows whose map position lies inside a brushed interval {"map_x": [a, b], "map_y": [c, d]}."""
    if not region or "map_x" not in region or "map_y" not in region:
        return df.iloc[:0]
    (x0, x1), (y0, y1) = region["map_x"], region["map_y"]
    m = df.map_x.between(min(x0, x1), max(x0, x1)) & df.map_y.between(min(y0, y1), max(y0, y1))
    return df[m]


def selected_mask(n: int, rows: np.ndarray) -> np.ndarray:
    m = np.zeros(n, bool)
    m[rows] = True
    return m
