"""What every page shares: cached reads keyed by dataset fingerprint and analysis run (and when it was recorded: `data_key`), the current
dataset, the analysis a page needs, and the selection for the current knobs (:mod:`pages._knobs`).

Not a page (st.navigation lists pages explicitly); data and charts come from ``curation``. Shared
caches hold immutable objects only (:class:`~curation.selection.SelectionInputs`,
:class:`~curation.metrics.ImpactContext`, the analysis frame); each session's memoised selection
work is its own :class:`~curation.selection.SelectionCache`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import streamlit as st

from curation import CurationError, charts, selection, store, workflows
from curation.selection import SelectionConfig
from curation.selection_inputs import unavailable_axes as _unavailable_axes
from pages._knobs import DEFAULT, check_knobs, config_from_state, init_state, show_notices, sync_query
from pages._text import error, esc, warning


log = logging.getLogger("curation.app")


# --- data --------------------------------------------------------------------------------------
@st.cache_data(max_entries=16, show_spinner=False)
def dataset_info(path: str, mtime: float) -> workflows.DatasetSummary:
    """The dataset's summary and the analysis run to show (cheap; keyed by file mtime)."""
    return workflows.describe(path)


@st.cache_data(max_entries=8, show_spinner=False)
def analysis_report(path: str, data: str, run_id: str) -> str | None:
    """The report of a run the CLI prints too (Overview only: it reads the whole per-sample table)."""
    try:
        return workflows.analysis_report(path, run_id)
    except CurationError:
        return None


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
    path = st.session_state.get("dataset_path")
    if not path:
        st.info("No dataset yet. Run `python -m curation demo` to build the synthetic demo, or "
                "`python -m curation ingest` to load yours.")
        st.stop()
    try:
        info = dataset_info(path, Path(path).stat().st_mtime)
    except (CurationError, OSError) as e:
        error(f"Cannot open {path}: {e}")
        st.stop()
    check_knobs(info)
    sync_query()
    show_notices()
    _job_banner(path)
    return path, info


def _job_banner(path: str) -> None:
    from curation import jobs

    job = jobs.job_for(path)
    if job is None:
        return
    snap = job.snapshot()
    if snap["status"] == "running":
        st.info(esc(f"An analysis of this dataset is running ({snap['step']}, {snap['fraction']:.0%}). "
                    "The pages show the last complete run until it finishes."))


def require_analysis(info: dict, needs=("prototypes", "density")) -> str:
    """The run to show, or a message and st.stop(): no run, or a run without the steps a page needs."""
    if not info.run_id:
        st.warning("This dataset has no analysis yet. Run it on the **Overview** page, or with "
                   f"`python -m curation analyze {esc(info.path)}`.")
        st.stop()
    missing = [s for s in needs if s not in info.run["steps"]]
    if missing:
        warning(f"The analysis run {info.run_id} lacks the step(s) {', '.join(missing)}. Run them with "
                f"python -m curation analyze {info.path} --steps {','.join(missing)} (or all steps on the "
                "Overview page).")
        st.stop()
    return info.run_id


@st.cache_resource(max_entries=4, show_spinner="Reading the analysis...")
def analysis_frame(path: str, data: str, run_id: str, reward_key: str | None = None):
    """Per-sample analysis results joined with id, image, caption and metadata (row order).

    A shared resource, not cache_data: cache_data would unpickle a copy of a 1M-row frame on
    every rerun (about 0.5 s). Pages only read it (never assign into it)."""
    from curation import analysis

    with store.open_store(path) as s:
        df, _ = analysis.load(s, run_id)
        base = s.samples()
    return base.join(df.drop(columns=["row_idx"]))


@st.cache_resource(max_entries=4, show_spinner=False)
def map_xy(path: str, data: str, run_id: str):
    """(map_x, map_y) of every row, read-only, or None before the map step (two columns read
    through Arrow: the Select page's subset map does not need the whole analysis frame)."""
    from curation import analysis

    with store.open_store(path) as s:
        table = analysis.table_names(run_id)["samples"]
        if not {"map_x", "map_y"} <= set(s.table_columns(table)):
            return None
        t = s.read_arrow(table, ["map_x", "map_y"])
    x, y = t.column("map_x").to_numpy(), t.column("map_y").to_numpy()
    if np.isnan(x).all():
        return None
    x.flags.writeable = y.flags.writeable = False
    return x, y


@st.cache_data(max_entries=4, show_spinner=False)
def map_bins(path: str, data: str, run_id: str):
    """The map's binned density (the heatmap under the sampled points)."""
    x, y = map_xy(path, data, run_id)
    return charts.binned_density(x, y)


def sample_ids(path: str, data: str, rows) -> "object":
    """A DataFrame with the ``id`` of each of ``rows`` (a chart's sampled points), in that order."""
    with store.open_store(path) as s:
        return s.sample_rows(rows, ["id"])


def sets_key(info: dict) -> str:
    """Identifies the dataset's stored id sets: part of every selection cache key."""
    return ",".join(info.id_sets or ())


@st.cache_resource(max_entries=4, show_spinner="Loading the selection arrays...")
def selection_inputs(path: str, data: str, run_id: str, reward_key: str | None = None, sets: str = ""):
    """Immutable selection inputs shared by all sessions (``data``: :func:`data_key`)."""
    with store.open_store(path) as s:
        return selection.load_inputs(s, run_id)


@st.cache_data(max_entries=16, show_spinner=False)
def unavailable_axes(path: str, data: str, run_id: str) -> dict:
    """{quality axis: why it cannot be used}, without reading the selection arrays."""
    with store.open_store(path) as s:
        return _unavailable_axes(s, run_id)


@st.cache_resource(max_entries=16, show_spinner=False)
def _impact_context(path: str, data: str, run_id: str, reward_key, columns: tuple, labels: tuple, eps: float,
                    seed: int, sets: str = ""):
    from curation.metrics import ImpactContext

    inp = selection_inputs(path, data, run_id, reward_key, sets)
    return ImpactContext(inp, columns=columns, labels=labels, dedup_eps=eps, seed=seed)


def impact_context(path: str, info: dict, cfg: SelectionConfig):
    """The (immutable, shared) impact context for this dataset, the strata columns shown, the
    selection's eps and seed."""
    columns = tuple(cfg.confounders) or tuple(info.flagged)
    eps = cfg.dedup_eps if cfg.dedup_eps is not None else (DEFAULT.dedup_eps or 0.05)
    return _impact_context(path, data_key(info), info.run_id, info.reward_key, columns,
                           info.label_columns, float(eps), int(cfg.seed), sets_key(info))


def data_key(info) -> str:
    """What the server's caches of a dataset's run are keyed by: the dataset's fingerprint and when
    the shown run was recorded (a run extended by a step, or rerun, keeps its id and gets other
    tables: ``analyze --steps quality`` from the CLI while the app is open)."""
    return f"{info.fingerprint}@{_recorded(info)}"


def run_key(info) -> str:
    """The shown run's id and when it was recorded (for caches keyed by the run alone)."""
    return f"{info.run_id}@{_recorded(info)}"


def _recorded(info) -> str:
    return (info.run or {}).get("created", "")


def session_cache() -> selection.SelectionCache:
    """This session's memoised selection work (never shared with another session)."""
    if "sel_cache" not in st.session_state:
        st.session_state["sel_cache"] = selection.SelectionCache()
    return st.session_state["sel_cache"]


def run_selection(path: str, info: dict):
    """(inputs, config, result) for the current knobs, or a message and st.stop()."""
    run_id = require_analysis(info)
    inp = selection_inputs(path, data_key(info), run_id, info.reward_key, sets_key(info))
    cfg, hints = config_from_state(inp.n)
    for h in hints:
        st.caption(esc(h))
    try:
        res = selection.select(inp, cfg, cache=session_cache())
    except CurationError as e:
        error(f"This configuration cannot run: {e}")
        st.stop()
    return inp, cfg, res


@st.cache_resource(max_entries=4, show_spinner=False)
def knn_graph(path: str, data: str, run_id: str, which: str = "knn"):
    """A stored kNN graph of the run, read-only, shared: "knn" (analysis space) or "dedup_knn"
    (the space duplicates are decided in)."""
    from curation import analysis as A

    with store.open_store(path) as s:
        nbr, sim = A.load_knn(s, run_id, which)
    nbr.flags.writeable = False
    sim.flags.writeable = False
    return nbr, sim


@st.cache_data(max_entries=16, show_spinner=False)
def search_rows(path: str, data: str, text: str, limit: int = 5000):
    with store.open_store(path) as s:
        return s.search_captions(text, limit)


@st.cache_data(max_entries=16, show_spinner=False)
def map_image(path: str, run: str, reward_key, column: str, view, is_cat: bool, as_text: bool, _x, _y, _values):
    """The map's image of every row coloured by a stored column (:func:`curation.charts.map_image`),
    kept per run, column and view: a rerun for a click, a region or a rule name draws nothing again."""
    values = _values.astype(str) if as_text else _values
    return charts.map_image(_x, _y, values, categorical=is_cat, view=view)


@st.cache_data(max_entries=8, show_spinner=False)
def map_names(path: str, run: str, view, _prototype, _x, _y, _labels):
    """Cluster names to write on the map for this run and view (:func:`curation.charts.map_names`)."""
    return charts.map_names(_x, _y, _prototype, _labels, view)
