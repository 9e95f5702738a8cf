"""The selection knobs: kept in session state across pages (per dataset) and mirrored in the URL.

Streamlit forgets a widget's value when a page that does not draw it runs, so the knobs live under
``st.session_state["knobs"]`` (plain values, never a widget key). Each knob widget is keyed
``sel_<name>``; :func:`knob` seeds that key from the store before drawing the widget and copies it
back when it changes. Every page writes the store into the URL, and a URL is read once per session
with the library's own parsers: a bad value is dropped with a notice, never a traceback.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import streamlit as st

from curation import CurationError, selection
from curation.selection import OPERATORS, Gate, SelectionConfig
from pages._text import esc, warning


DEFAULT = SelectionConfig()  # every knob's default comes from here: one source with the CLI


NO_FILTER = "(none)"


# the widgets' ranges: the CLI's rules (selection.validate_config), as sliders can show them
GATE_MIN = 0.01
TAIL_RATIO_MAX = 10.0   # the tail-ratio number input (the library takes any ratio >= 0)
GUARD_MAX = 0.45        # the guard slider (the library takes [0, 0.5))


COUNT_STEP = 1


# --- knobs ---------------------------------------------------------------------------------------
def _b(v: str) -> bool:
    if v not in ("0", "1", "true", "false"):
        raise CurationError("use 1 or 0")
    return v in ("1", "true")


def _field(name: str, cast=float, widget: tuple | None = None):
    """A URL value for the config field ``name``: cast, then checked by the library's own bounds
    (:meth:`curation.selection.SelectionConfig.check`, the CLI's and the config file's), then by
    the widget's range where it is narrower (a slider cannot show more)."""
    def parse(v: str):
        try:
            x = cast(v)
        except (TypeError, ValueError):
            raise CurationError(f"not a {cast.__name__}") from None
        replace(DEFAULT, **{name: x}).check()
        if widget is not None and not widget[0] <= x <= widget[1]:
            raise CurationError(f"the control shows {widget[0]} to {widget[1]}")
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
    "mode": (DEFAULT.mode, _field("mode", str)),
    "temper": (DEFAULT.temper, _field("temper")),
    "tail_ratio": (DEFAULT.tail_core_ratio, _field("tail_core_ratio", widget=(0.0, TAIL_RATIO_MAX))),
    "outliers": (DEFAULT.outliers, _field("outliers", str)),
    "tail": (DEFAULT.tail, _field("tail", str)),
    "caption_guard": (DEFAULT.caption_guard or 0.0, _field("caption_guard", widget=(0.0, GUARD_MAX))),
    "dedup": (DEFAULT.dedup_eps is not None, _b),
    "dedup_eps": (DEFAULT.dedup_eps or 0.05, _field("dedup_eps", widget=(0.0001, 0.999))),
    "filter_col": (NO_FILTER, str),
    "filter_op": ("==", _choice(OPERATORS)),  # checked against the column by the library's filter parser
    "filter_value": ("", str),
    "seed": (DEFAULT.seed, _field("seed", int)),
    "guard": (DEFAULT.fidelity_guard or 0.0, _field("fidelity_guard", widget=(0.0, GUARD_MAX))),
    "exclude_clusters": ([], lambda v: list(selection.parse_cluster_list(v))),
    "exclude_sets": ([], lambda v: [c for c in v.split(",") if c]),
    "include_sets": ([], lambda v: [c for c in v.split(",") if c]),
}


GATE_PREFIX = "gate_"  # gate_<axis>: keep the best fraction (1.0 = no gate); axes come from the data


def _parse_gate(v: str) -> float:
    """A URL gate: the best fraction kept, checked as a gate ``top=`` by the library."""
    try:
        x = float(v)
    except ValueError:
        raise CurationError("not a float") from None
    Gate("url", top_q=x).threshold()
    if not (np.isfinite(x) and GATE_MIN <= x):
        raise CurationError(f"the control shows {GATE_MIN} to 1.0")
    return x


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
    n = info.rows
    b = get("budget")
    if isinstance(b, int) and b > n:
        notices.append(f"budget {b:,} is larger than the pool ({n:,} samples); using all {n:,}.")
        put("budget", n)
    cols = info.meta_columns
    conf = [c for c in get("confounders") if c in cols]
    if conf != list(get("confounders")):
        gone = [c for c in get("confounders") if c not in cols]
        notices.append(f"confounder column(s) {', '.join(map(str, gone))} not in this dataset; ignored.")
        put("confounders", conf)
    if get("filter_col") not in [NO_FILTER] + cols:
        notices.append(f"filter column {get('filter_col')!r} not in this dataset; filter removed.")
        put("filter_col", NO_FILTER)
    k = len(info.cluster_labels or {})
    if k and any(not 0 <= c < k for c in get("exclude_clusters")):
        gone = [c for c in get("exclude_clusters") if not 0 <= c < k]
        notices.append(f"cluster(s) {', '.join(map(str, gone))} not in this analysis (clusters 0..{k - 1}); rule removed.")
        put("exclude_clusters", [c for c in get("exclude_clusters") if 0 <= c < k])
    sets = set(info.id_sets or ())
    for name in ("exclude_sets", "include_sets"):
        gone = [r for r in get(name) if r not in sets]
        if gone:
            notices.append(f"id set(s) {', '.join(gone)} not in this dataset (or changed since); rule removed.")
            put(name, [r for r in get(name) if r in sets])
    axes = set(info.gate_axes or ())
    for name in [k for k in _state() if k.startswith(GATE_PREFIX)]:
        if info.run_id and name[len(GATE_PREFIX):] not in axes:
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
        fidelity_guard=float(get("guard")) or None, tail=get("tail"),
        caption_guard=float(get("caption_guard")) or None,
        exclude_clusters=tuple(sorted(set(get("exclude_clusters")))), exclude_sets=tuple(get("exclude_sets")),
        include_sets=tuple(get("include_sets")))
    return cfg, hints


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
