"""What every page shares: cached reads keyed by dataset fingerprint and analysis run, the
selection knobs (kept in session state across pages and mirrored in the URL), and safe text.

Not a page (st.navigation lists pages explicitly); data and charts come from ``curation``.

Knob state. Streamlit forgets a widget's value when a page that does not draw it runs, so the
knobs live under ``st.session_state["knobs"]`` (plain values, never a widget key). Each knob
widget is keyed ``sel_<name>``; :func:`knob` seeds that key from the store before drawing the
widget and copies it back when it changes. Every page writes the store into the URL, and a URL
is read once per session, with the same rules the CLI applies: a bad value is dropped with a
notice, never a traceback.

Shared caches hold immutable objects only (:class:`~curation.selection.SelectionInputs`,
:class:`~curation.metrics.ImpactContext`, the analysis frame); each session's memoised selection
work is its own :class:`~curation.selection.SelectionCache`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import streamlit as st

from curation import CurationError, runs, selection, store, workflows
from curation.selection import MODES, OPERATORS, OUTLIER_POLICIES, Gate, SelectionConfig

log = logging.getLogger("curation.app")
DEFAULT = SelectionConfig()  # every knob's default comes from here: one source with the CLI
NO_FILTER = "(none)"
# the widgets' ranges: the CLI's rules (selection.validate_config), as sliders can show them
GATE_MIN = 0.01
COUNT_STEP = 1


# --- safe text ---------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&\"'=^])")


def esc(value) -> str:
    """``value`` as literal text inside Markdown: every Markdown, directive (``:red[...]``), LaTeX
    and HTML character is backslash-escaped, so ids, paths, column names, model names and error
    messages can never become links, images or markup."""
    return _MD_SPECIAL.sub(r"\\\1", str(value)).replace("\n", " ")


def error(msg) -> None:
    st.error(esc(msg))


def warning(msg) -> None:
    st.warning(esc(msg))


# --- knobs ---------------------------------------------------------------------------------------
def _b(v: str) -> bool:
    if v not in ("0", "1", "true", "false"):
        raise CurationError("use 1 or 0")
    return v in ("1", "true")


def _in_range(lo, hi, cast=float, lo_open=False):
    def parse(v: str):
        try:
            x = cast(v)
        except (TypeError, ValueError):
            raise CurationError(f"not a {cast.__name__}") from None
        if isinstance(x, float) and not np.isfinite(x):
            raise CurationError("not a finite number")
        if x < lo or x > hi or (lo_open and x == lo):
            raise CurationError(f"must lie in {'(' if lo_open else '['}{lo}, {hi}]")
        return x
    return parse


def _choice(options):
    def parse(v: str):
        if v not in options:
            raise CurationError(f"use one of {', '.join(options)}")
        return v
    return parse


def _budget(v: str):
    return selection.parse_budget(v)


# knob name (also its URL parameter) -> (default, parser of a URL string that raises CurationError)
KNOBS = {
    "budget": (DEFAULT.budget, _budget),
    "confounders": (list(DEFAULT.confounders), lambda v: [c for c in v.split(",") if c]),
    "mode": (DEFAULT.mode, _choice(MODES)),
    "temper": (DEFAULT.temper, _in_range(0.0, 1.0)),
    "tail_ratio": (DEFAULT.tail_core_ratio, _in_range(0.0, 10.0)),
    "outliers": (DEFAULT.outliers, _choice(OUTLIER_POLICIES)),
    "dedup": (DEFAULT.dedup_eps is not None, _b),
    "dedup_eps": (DEFAULT.dedup_eps or 0.05, _in_range(0.0, 0.999, lo_open=True)),
    "filter_col": (NO_FILTER, str),
    "filter_op": ("==", _choice(OPERATORS)),
    "filter_value": ("", str),
    "seed": (DEFAULT.seed, _in_range(0, 2**31 - 1, int)),
    "guard": (DEFAULT.fidelity_guard or 0.0, _in_range(0.0, 0.45)),
    "exclude_clusters": ([], lambda v: list(selection.parse_cluster_list(v))),
    "exclude_sets": ([], lambda v: [c for c in v.split(",") if c]),
    "include_sets": ([], lambda v: [c for c in v.split(",") if c]),
}
GATE_PREFIX = "gate_"  # gate_<axis>: keep the best fraction (1.0 = no gate); axes come from the data


def _parse_gate(v: str) -> float:
    return _in_range(GATE_MIN, 1.0)(v)


def _state() -> dict:
    return st.session_state.setdefault("knobs", {})


# what belongs to one dataset: its knobs (cluster rules, sets, filters...), the export form and the
# last export, the inspected row. Switching datasets puts them aside and brings back the other's.
PER_DATASET = ("knobs", "exp_name", "exp_columns", "exp_format", "exp_overwrite", "exp_reshard", "exp_reshard_n",
               "exp_last", "inspect_row", "sel_budget_unit")


def init_state() -> None:
    """Initialise the knob store once per session and dataset, from the URL where it carries valid
    values (only for the dataset the session opened on: another dataset starts from defaults)."""
    ds = st.session_state.get("dataset_path")  # set by app.py on every run (a plain key, not the widget's)
    if "knobs" in st.session_state:
        old = st.session_state.get("state_dataset", ds)
        if old == ds:
            return
        saved = st.session_state.setdefault("state_by_dataset", {})
        saved[old] = {k: st.session_state.pop(k) for k in PER_DATASET if k in st.session_state}
        for k in [k for k in st.session_state if str(k).startswith("sel_")]:
            del st.session_state[k]  # widget copies of the old dataset's knobs
        st.session_state.update(saved.pop(ds, {}))
        st.session_state["state_dataset"] = ds
        if "knobs" not in st.session_state:
            st.session_state["knobs"] = {name: list(d) if isinstance(d, list) else d for name, (d, _) in KNOBS.items()}
        return
    st.session_state["state_dataset"] = ds
    knobs, notices = {}, []
    for name, (default, parse) in KNOBS.items():
        knobs[name] = list(default) if isinstance(default, list) else default
        raw = st.query_params.get(name)
        if raw is None:
            continue
        try:
            knobs[name] = parse(raw)
        except (CurationError, ValueError, TypeError) as e:  # a junk URL value is a notice, never an error page
            notices.append(f"URL value {name}={raw[:40]!r} ignored ({e}); using {default!r}.")
    for name in list(st.query_params):
        if name.startswith(GATE_PREFIX):
            raw = st.query_params.get(name)
            try:
                knobs[name] = _parse_gate(raw)
            except CurationError as e:
                notices.append(f"URL value {name}={raw[:40]!r} ignored ({e}); no gate.")
    st.session_state["knobs"] = knobs
    st.session_state["url_notices"] = notices


def get(name: str, default=None):
    k = _state()
    if name in k:
        return k[name]
    return KNOBS[name][0] if name in KNOBS else default


def put(name: str, value) -> None:
    _state()[name] = value


def knob(widget, name: str, *args, **kwargs):
    """Draw a knob widget keyed ``sel_<name>`` whose value lives in the knob store.

    ``widget`` is a Streamlit widget function (st.slider, st.selectbox...); its value is seeded
    from the store before it is drawn and copied back on change, so a page that does not draw
    it never resets it.
    """
    key = f"sel_{name}"
    st.session_state[key] = get(name)

    def changed():
        put(name, st.session_state[key])

    return widget(*args, key=key, on_change=changed, **kwargs)


def sync_query() -> None:
    """Mirror the knob store into the URL (on every page) so a view can be bookmarked and shared."""
    k = _state()
    wanted = {}
    for name, value in k.items():
        default = KNOBS[name][0] if name in KNOBS else 1.0
        if value == default or (isinstance(value, list) and list(value) == list(default)):
            continue
        wanted[name] = (",".join(map(str, value)) if isinstance(value, list) else
                        "1" if value is True else "0" if value is False else str(value))
    for name in list(st.query_params):
        if (name in KNOBS or name.startswith(GATE_PREFIX)) and name not in wanted:
            del st.query_params[name]
    for name, v in wanted.items():
        if st.query_params.get(name) != v:
            st.query_params[name] = v


def check_knobs(info: dict) -> None:
    """Drop (with a notice) knob values that do not fit this dataset: unknown columns, a count
    budget larger than the pool, gates on axes it has not got."""
    notices = st.session_state.setdefault("url_notices", [])
    n = info["rows"]
    b = get("budget")
    if isinstance(b, int) and b > n:
        notices.append(f"budget {b:,} is larger than the pool ({n:,} samples); using all {n:,}.")
        put("budget", n)
    cols = info["meta_columns"]
    conf = [c for c in get("confounders") if c in cols]
    if conf != list(get("confounders")):
        gone = [c for c in get("confounders") if c not in cols]
        notices.append(f"confounder column(s) {', '.join(map(str, gone))} not in this dataset; ignored.")
        put("confounders", conf)
    if get("filter_col") not in [NO_FILTER] + cols:
        notices.append(f"filter column {get('filter_col')!r} not in this dataset; filter removed.")
        put("filter_col", NO_FILTER)
    k = len(info.get("cluster_labels") or {})
    if k and any(not 0 <= c < k for c in get("exclude_clusters")):
        gone = [c for c in get("exclude_clusters") if not 0 <= c < k]
        notices.append(f"cluster(s) {', '.join(map(str, gone))} not in this analysis (clusters 0..{k - 1}); rule removed.")
        put("exclude_clusters", [c for c in get("exclude_clusters") if 0 <= c < k])
    sets = set(info.get("id_sets") or ())
    for name in ("exclude_sets", "include_sets"):
        gone = [r for r in get(name) if r not in sets]
        if gone:
            notices.append(f"id set(s) {', '.join(gone)} not in this dataset (or changed since); rule removed.")
            put(name, [r for r in get(name) if r in sets])
    axes = set(info.get("gate_axes") or ())
    for name in [k for k in _state() if k.startswith(GATE_PREFIX)]:
        if info.get("run_id") and name[len(GATE_PREFIX):] not in axes:
            notices.append(f"no quality axis {name[len(GATE_PREFIX):]!r} in this dataset; gate removed.")
            del _state()[name]


def show_notices() -> None:
    for msg in st.session_state.pop("url_notices", []):
        warning(msg)


def config_from_state(n: int) -> tuple[SelectionConfig, list[str]]:
    """(the SelectionConfig the knobs describe, hints). An incomplete filter is left out with a hint."""
    hints = []
    gates = tuple(Gate(name[len(GATE_PREFIX):], top_q=float(v)) for name, v in sorted(_state().items())
                  if name.startswith(GATE_PREFIX) and float(v) < 1.0)
    filters = ()
    col = get("filter_col")
    if col != NO_FILTER:
        try:
            filters = (selection.make_filter(col, get("filter_op"), get("filter_value")),)
        except CurationError as e:
            hints.append(f"Filter not applied yet: {e} Type a value, or pick (none).")
    b = get("budget")
    cfg = SelectionConfig(
        budget=min(int(b), n) if isinstance(b, int) else float(b), confounders=tuple(get("confounders")),
        mode=get("mode"), temper=float(get("temper")), tail_core_ratio=float(get("tail_ratio")),
        outliers=get("outliers"), dedup_eps=float(get("dedup_eps")) if get("dedup") else None,
        gates=gates, filters=filters, seed=int(get("seed")),
        fidelity_guard=float(get("guard")) or None,
        exclude_clusters=tuple(sorted(set(get("exclude_clusters")))), exclude_sets=tuple(get("exclude_sets")),
        include_sets=tuple(get("include_sets")))
    return cfg, hints


# --- data --------------------------------------------------------------------------------------
@st.cache_data(max_entries=16, show_spinner=False)
def dataset_info(path: str, mtime: float) -> dict:
    """Summary, the analysis run to show and its side tables (cheap; keyed by file mtime)."""
    from curation import analysis
    from curation.confounders import flagged

    with store.open_store(path) as s:
        info = s.summary()
        rec = runs.best_analysis(s)
        info["run_id"] = rec.run_id if rec else None
        info["run"] = None if rec is None else {"config": rec.config, "timings": rec.timings,
                                                "outputs": rec.outputs, "steps": list(rec.steps)}
        info["meta_columns"] = s.metadata_columns()
        info["label_columns"] = tuple(s.label_columns())
        info["image_root"] = str(s.image_root()) if s.image_root() else None
        info["confounders"] = None
        info["flagged"] = []
        info["reward"] = runs.reward_status(s)
        info["reward_key"] = info["reward"]["scored_run"]
        info["gate_axes"] = []
        info["id_sets"] = s.id_set_refs()
        info["cluster_labels"] = {}
        if rec is not None:
            info["cluster_labels"] = analysis.cluster_label_map(s, rec.run_id)
            tname = rec.table("confounders")
            if tname and s.has_table(tname):
                info["confounders"] = s.read_table(tname)
                info["flagged"] = flagged(info["confounders"])
            if "quality" in rec.steps:  # the quality axes this run stored (older runs lack caption)
                cols = set(s.table_columns(rec.table("samples")))
                info["gate_axes"] += [a for a in selection.QUALITY_AXES if f"{a}_score" in cols]
        if info["reward_key"]:
            info["gate_axes"] += [f"reward_{a}" for a in _reward_axes(s)]
    return info


def _reward_axes(s) -> list[str]:
    from curation import schema as S

    return [c[len("reward_"):-len("_score")] for c in s.table_columns(S.REWARD_SCORES)
            if c.startswith("reward_") and c.endswith("_score")]


@st.cache_data(max_entries=8, show_spinner=False)
def analysis_report(path: str, fingerprint: str, run_id: str) -> str | None:
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
    if not info["run_id"]:
        st.warning("This dataset has no analysis yet. Run it on the **Overview** page, or with "
                   f"`python -m curation analyze {esc(info['path'])}`.")
        st.stop()
    missing = [s for s in needs if s not in info["run"]["steps"]]
    if missing:
        warning(f"The analysis run {info['run_id']} lacks the step(s) {', '.join(missing)}. Run them with "
                f"python -m curation analyze {info['path']} --steps {','.join(missing)} (or all steps on the "
                "Overview page).")
        st.stop()
    return info["run_id"]


@st.cache_resource(max_entries=4, show_spinner="Reading the analysis...")
def analysis_frame(path: str, fingerprint: str, run_id: str, reward_key: str | None = None):
    """Per-sample analysis results joined with id, image, caption and metadata (row order).

    A shared resource, not cache_data: cache_data would unpickle a copy of a 1M-row frame on
    every rerun (about 0.5 s). Pages only read it (never assign into it)."""
    from curation import analysis

    with store.open_store(path) as s:
        df, _ = analysis.load(s, run_id)
        base = s.samples()
    return base.join(df.drop(columns=["row_idx"]))


def sets_key(info: dict) -> str:
    """Identifies the dataset's stored id sets: part of every selection cache key."""
    return ",".join(info.get("id_sets") or ())


@st.cache_resource(max_entries=4, show_spinner="Loading the selection arrays...")
def selection_inputs(path: str, fingerprint: str, run_id: str, reward_key: str | None = None, sets: str = ""):
    """Immutable selection inputs shared by all sessions."""
    with store.open_store(path) as s:
        return selection.load_inputs(s, run_id)


@st.cache_resource(max_entries=16, show_spinner=False)
def _impact_context(path: str, fingerprint: str, run_id: str, reward_key, columns: tuple, labels: tuple, eps: float,
                    seed: int, sets: str = ""):
    from curation.metrics import ImpactContext

    inp = selection_inputs(path, fingerprint, run_id, reward_key, sets)
    return ImpactContext(inp, columns=columns, labels=labels, dedup_eps=eps, seed=seed)


def impact_context(path: str, info: dict, cfg: SelectionConfig):
    """The (immutable, shared) impact context for this dataset, the strata columns shown, the
    selection's eps and seed."""
    columns = tuple(cfg.confounders) or tuple(info["flagged"])
    eps = cfg.dedup_eps if cfg.dedup_eps is not None else (DEFAULT.dedup_eps or 0.05)
    return _impact_context(path, info["fingerprint"], info["run_id"], info["reward_key"], columns,
                           info["label_columns"], float(eps), int(cfg.seed), sets_key(info))


def session_cache() -> selection.SelectionCache:
    """This session's memoised selection work (never shared with another session)."""
    if "sel_cache" not in st.session_state:
        st.session_state["sel_cache"] = selection.SelectionCache()
    return st.session_state["sel_cache"]


def run_selection(path: str, info: dict):
    """(inputs, config, result) for the current knobs, or a message and st.stop()."""
    run_id = require_analysis(info)
    inp = selection_inputs(path, info["fingerprint"], run_id, info["reward_key"], sets_key(info))
    cfg, hints = config_from_state(inp.n)
    for h in hints:
        st.caption(esc(h))
    try:
        res = selection.select(inp, cfg, cache=session_cache())
    except CurationError as e:
        error(f"This configuration cannot run: {e}")
        st.stop()
    return inp, cfg, res


def show_image(root: str | None, value, caption: str | None = None, width: int = 128) -> None:
    """A thumbnail read only from inside the image root; captions as plain text, never HTML."""
    try:
        p = store.resolve_image(Path(root) if root else None, value)
        st.image(str(p), width=width)
    except CurationError as e:
        st.text(f"(no image: {e})")
    if caption is not None:
        st.text(str(caption))


def flagged_columns(info: dict) -> list[str]:
    return list(info.get("flagged") or [])


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


def budget_knob(n: int) -> None:
    """The budget as a fraction of the pool (slider) or a count (number input), one stored value."""
    b = get("budget")
    unit = "count" if isinstance(b, int) else "fraction"
    st.session_state["sel_budget_unit"] = unit

    def unit_changed():
        new = st.session_state["sel_budget_unit"]
        cur = get("budget")
        if new == "count" and not isinstance(cur, int):
            put("budget", max(1, min(n, int(round(float(cur) * n)))))
        elif new == "fraction" and isinstance(cur, int):
            put("budget", min(1.0, max(0.01, round(cur / n, 2))))

    st.radio("Budget as", ["fraction", "count"], key="sel_budget_unit", horizontal=True, on_change=unit_changed)
    if unit == "count":
        knob(st.number_input, "budget", "Budget (samples)", min_value=1, max_value=n, step=COUNT_STEP)
    else:
        if not 0.01 <= float(b) <= 1.0:  # a valid but tiny fraction from the URL or CLI habit
            put("budget", min(1.0, max(0.01, float(b))))
            st.caption(esc(f"Budget {b} is below the slider's smallest fraction; set to 0.01. Use a count "
                           "for smaller subsets."))
        knob(st.slider, "budget", "Budget (fraction of the pool)", 0.01, 1.0, step=0.01)


def gate_knob(axis: str, label: str, disabled: bool = False, help: str | None = None) -> None:
    name = GATE_PREFIX + axis
    if name not in _state():
        put(name, 1.0)
    knob(st.slider, name, label, GATE_MIN, 1.0, step=0.01, disabled=disabled, help=help)


# --- inspect and act ---------------------------------------------------------------------------
def cluster_name(info: dict, c) -> str:
    """ "12 · edema knee": a cluster's number and its label."""
    label = (info.get("cluster_labels") or {}).get(int(c), "")
    return f"{int(c)} · {label}" if label else str(int(c))


def gallery(df, key: str, root: str | None, page_size: int = 12, extra=None) -> None:
    """Thumbnails and captions of ``df``'s rows, ``page_size`` a page, with a page picker; each
    tile has an Inspect button (the inspector shows on the Map page)."""
    n = len(df)
    if n == 0:
        st.text("(nothing to show)")
        return
    pages = (n + page_size - 1) // page_size
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page") if pages > 1 else 1
    part = df.iloc[(page - 1) * page_size: page * page_size]
    grid = st.columns(6)
    for i, (row, r) in enumerate(part.iterrows()):
        with grid[i % 6]:
            show_image(root, r.get("image"), None)
            st.text(str(r.get("id")))
            if r.get("caption") is not None:
                st.text(str(r.get("caption"))[:160])
            if extra is not None:
                st.text(extra(r))
            if st.button("Inspect", key=f"{key}_inspect_{row}"):
                st.session_state["inspect_row"] = int(row)
                st.switch_page("pages/map.py")


# the library's errors name the CLI's flags; on a page they name the widget that does the same
APP_WORDS = (
    ("pass --overwrite to replace this export", "tick 'Overwrite an existing export of this name'"),
    ("--overwrite", "'Overwrite an existing export of this name'"),
    ("--out name", "the file name"), ("--out", "the file name"), ("choose another name", "type another file name"),
    ("--columns", "'Also carry these metadata columns'"), ("--format", "the Format box"),
    ("--reshard", "'Also write new tars'"), ("--allow-missing", "the command line's --allow-missing"),
    ("--budget", "the budget"), ("--confounders", "the confounder columns"), ("--filter", "the filter"),
)


def app_words(msg: str) -> str:
    """An error written for the command line, in the words of the app's widgets."""
    for cli, app in APP_WORDS:
        msg = msg.replace(cli, app)
    return msg


def save_rule(path: str, name: str, rows, action: str, kind: str, meta: dict | None = None) -> str | None:
    """Store ``rows`` as an id set and add it to the exclude or include rules; returns its reference."""
    try:
        with store.open_store(path, read_only=False) as s:
            ref = s.save_id_set(name, rows, kind=kind, meta=meta)
    except CurationError as e:
        error(f"Could not save the rule: {e}")
        return None
    key = "exclude_sets" if action == "exclude" else "include_sets"
    put(key, [r for r in get(key) if r.split("@", 1)[0] != name] + [ref])
    dataset_info.clear()
    return ref


def inspector(path: str, info: dict, df, row: int, res=None, inp=None, cfg=None) -> None:
    """One sample: image, caption (text), metadata, analysis values, reason under the current
    knobs, and its nearest neighbours from the stored kNN graph, each one click away."""
    r = df.iloc[row]
    st.subheader("Sample " + esc(r["id"]))
    c1, c2 = st.columns([1, 2])
    with c1:
        show_image(info["image_root"], r.get("image"), None, width=220)
    with c2:
        if r.get("caption") is not None:
            st.text(str(r["caption"]))
        if res is not None and inp is not None:
            detail = res.details(inp, cfg, session_cache(), rows=[row])[0] if cfg is not None else ""
            st.text(f"selection: {res.reason[row]}" + (f" ({detail})" if detail else ""))
        st.text(f"cluster {cluster_name(info, r['prototype'])}, band {r.get('band')}")
    fields = {k: r[k] for k in df.columns if k not in ("image", "caption", "map_x", "map_y", "map_fitted")}
    st.dataframe({"field": [str(k) for k in fields], "value": [str(v) for v in fields.values()]},
                 hide_index=True, key=f"insp_fields_{row}")
    nbr, sim = knn_graph(path, info["fingerprint"], info["run_id"])
    st.markdown("**Nearest neighbours** (stored kNN graph, analysis space)")
    grid = st.columns(5)
    for i, (j, c) in enumerate(zip(nbr[row], sim[row])):
        if j < 0:
            continue
        with grid[i % 5]:
            show_image(info["image_root"], df["image"].iat[j] if "image" in df else None, None, width=100)
            st.text(f"{df['id'].iat[j]}\ncosine {c:.3f}")
            if st.button("Inspect", key=f"nbr_{row}_{j}"):
                st.session_state["inspect_row"] = int(j)
                st.rerun()


@st.cache_resource(max_entries=4, show_spinner=False)
def knn_graph(path: str, fingerprint: str, run_id: str, which: str = "knn"):
    """A stored kNN graph of the run, read-only, shared: "knn" (analysis space) or "dedup_knn"
    (the space duplicates are decided in)."""
    from curation import analysis as A

    with store.open_store(path) as s:
        nbr, sim = A.load_knn(s, run_id, which)
    nbr.flags.writeable = False
    sim.flags.writeable = False
    return nbr, sim


@st.cache_data(max_entries=16, show_spinner=False)
def search_rows(path: str, fingerprint: str, text: str, limit: int = 5000):
    with store.open_store(path) as s:
        return s.search_captions(text, limit)
