"""Select & export: every selection knob, live impact beside a random subset of the same size,
the budget-vs-coverage curve, the subset on the map, and export (download and under data/)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from curation import CurationError, charts, manifest, workflows
from curation.schema import SEED_MAX
from curation.selection import MODES, OPERATORS, OUTLIER_POLICIES, TAILS
from pages import _knobs, _shared, _text, _views

st.title("Select & export")
path, info = _shared.current()
run_id = _shared.require_analysis(info)
# the knobs need only the pool's size and which quality axes exist: drawn before the selection
# arrays are read (seconds at 10M rows), so the page has content at once and a spinner for the rest
unavailable = _shared.unavailable_axes(path, _shared.data_key(info), run_id)


def _remove_rule(key: str, value) -> None:
    _knobs.put(key, [v for v in _knobs.get(key) if v != value])


def knobs_panel() -> None:
    """Every selection knob; values live in the knob store (``_knobs.knob``)."""
    _knobs.budget_knob(info.rows)
    usable = [c for c in info.meta_columns
              if info.confounders is None or c in set(info.confounders.query("kind != 'skipped'").column)]
    _knobs.put("confounders", [c for c in _knobs.get("confounders") if c in usable])
    _knobs.knob(st.multiselect, "confounders", "Confounders (strata)", usable,
                 help="Flagged by the analysis: " + _text.esc(", ".join(_views.flagged_columns(info)) or "none"))
    _knobs.knob(st.selectbox, "mode", "Allocation across strata", MODES)
    if _knobs.get("mode") == "tempered":
        _knobs.knob(st.slider, "temper", "Temper (0 = proportional, 1 = balanced)", 0.0, 1.0, step=0.05)
    _knobs.knob(st.number_input, "tail_ratio", "Tail picks per core pick", 0.0, _knobs.TAIL_RATIO_MAX,
                step=0.04)
    _knobs.knob(st.selectbox, "tail", "Tail", TAILS,
                help="density: the pool's rarest rows by kNN density (the default); distance: CheXficient's "
                     "per-cluster p85-p95 distance band (the default before config version 3)")
    _knobs.knob(st.selectbox, "outliers", "Far from any cluster (outliers)", OUTLIER_POLICIES,
                help="keep: eligible like any row (rare findings live there; the quality guards remove junk); "
                     "drop; keep_last / keep_first: only after / before all others")
    _knobs.knob(st.checkbox, "dedup", "Drop near-duplicates")
    if _knobs.get("dedup"):
        _knobs.knob(st.number_input, "dedup_eps", "Near-copy threshold (eps: a near-copy has cosine above 1 - eps)", 0.0001, 0.999,
                     step=0.005, format="%.4f")
    _knobs.knob(st.number_input, "caption_guard", "Caption guard: drop the lowest caption-quality fraction "
                "(0 = off)", 0.0, _knobs.GUARD_MAX, step=0.05, disabled="caption" in unavailable,
                help="Placeholders such as 'IN PROGRESS' and content-free captions (model-free caption quality); "
                     "a cluster the guards would empty keeps its best pair.")
    _knobs.knob(st.number_input, "guard", "Quality guard: drop the lowest-fidelity fraction (0 = off)", 0.0,
                 _knobs.GUARD_MAX, step=0.05, disabled="fidelity" in unavailable,
                 help="Pairs in the pool's bottom fraction of image-text fidelity are not eligible (a cluster "
                      "made only of them keeps its best pair). On by default: the tail and farthest-point picks "
                      "favour atypical pairs, and a wrong caption makes a pair atypical. Needs a shared space.")
    for axis in info.gate_axes:
        reason = unavailable.get(axis)
        _knobs.gate_knob(axis, f"{axis.replace('_', ' ').capitalize()} gate: keep best fraction",
                          disabled=reason is not None, help=_text.esc(reason) if reason else None)
    _knobs.knob(st.selectbox, "filter_col", "Filter column", [_knobs.NO_FILTER] + info.meta_columns)
    if _knobs.get("filter_col") != _knobs.NO_FILTER:
        _knobs.knob(st.selectbox, "filter_op", "Operator", OPERATORS)
        if _knobs.get("filter_op") not in ("is null", "not null"):
            _knobs.knob(st.text_input, "filter_value", "Value (comma-separated for in / not in)",
                         help="Missing values match only `is null`; every other operator leaves them out.")
    _knobs.knob(st.number_input, "seed", "Seed (random baseline)", 0, SEED_MAX, step=1)
    rules = ([("exclude_clusters", c, f"exclude cluster {_views.cluster_name(info, c)}")
              for c in _knobs.get("exclude_clusters")] +
             [("exclude_sets", r, f"exclude set {r}") for r in _knobs.get("exclude_sets")] +
             [("include_sets", r, f"include set {r}") for r in _knobs.get("include_sets")])
    st.subheader("Rules")
    if not rules:
        st.caption("None. Exclude or include clusters on Long tail, regions and search hits on Map.")
    for i, (key, value, text) in enumerate(rules):
        r1, r2 = st.columns([4, 1])
        r1.text(text)
        # a callback: the rule is gone before this rerun draws the list and selects
        r2.button("Remove", key=f"rule_rm_{i}", on_click=_remove_rule, args=(key, value))


def results_panel() -> None:
    """The selection of the current knobs: counts, impact, reasons, coverage, the subset on the map, export."""
    with st.spinner(f"Selecting from {info.rows:,} samples..."):
        inp, cfg, res = _shared.run_selection(path, info)
        ctx = _shared.impact_context(path, info, cfg)
    sm = res.summary
    if sm["selected"] == 0:
        st.warning("This configuration selects nothing: every sample is filtered, gated, a duplicate or an "
                   "outlier. Loosen a filter or a gate.")
        return
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Selected", f"{sm['selected']:,}", help="samples in the subset")
    c2.metric("Budget", f"{sm['budget']:,}")
    c3.metric("Eligible", f"{sm['eligible']:,}")
    c4.metric("Pool", f"{sm['pool']:,}")
    if sm["shortfall"]:
        st.warning(f"Only {sm['eligible']:,} samples are eligible: the subset is {sm['shortfall']:,} short of the budget.")

    impact = ctx.compare(res.selected, cfg.seed, order=res.order)
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Impact: subset vs random subset of the same size")
        st.dataframe(impact.round(4), key="impact_table")
        warns = workflows.rule_warnings(inp, cfg, res) + ctx.warnings(res.selected, sm, cfg.mode, cfg.confounders,
                                                                 subset=impact["subset"].to_dict())
        for w in warns:
            st.warning(_text.esc(w))
        st.caption(f"Near-copy rate (duplicate_rate): share of samples that are near-copies of a kept sample of "
                   f"their group (cosine above {1 - ctx.dedup_eps:g}, eps {ctx.dedup_eps:g}).")
    with right:
        st.subheader("Reasons")
        st.dataframe({"why": [_text.plain(r, _text.PLAIN_REASONS) for r in sm["reasons"]],
                      "samples": list(sm["reasons"].values()), "reason code": list(sm["reasons"])}, hide_index=True)
        if len(res.stratum_labels) > 1:
            st.dataframe(sm["strata"], hide_index=True)

    st.subheader("Budget vs cluster coverage")
    st.altair_chart(charts.coverage_chart(ctx.coverage_curve(res.order, cfg.seed), sm["budget"]), width="stretch")

    xy = _shared.map_xy(path, _shared.data_key(info), run_id)
    if xy is not None:
        st.subheader("The subset on the map")
        x, y = xy
        sel = _views.selected_mask(len(x), res.selected)
        sampled = charts.sample_points(pd.DataFrame(index=pd.RangeIndex(len(x))), 10_000, always=sel).index.to_numpy()
        pts = _shared.sample_ids(path, _shared.data_key(info), sampled).assign(
            map_x=x[sampled], map_y=y[sampled], selection=np.where(sel[sampled], "selected", "not selected"))
        st.altair_chart(charts.map_chart(_shared.map_bins(path, _shared.data_key(info), run_id), pts, "selection",
                                         categorical=True, tooltip=["id"], height=420), width="stretch")

    st.subheader("Export")
    tar_pool = "source_tar" in info.meta_columns  # embedded from WebDataset tars: images live in the tars
    formats = [f for f in manifest.FORMATS if f != "webdataset" or tar_pool]
    fmt = st.selectbox("Format", formats, key="exp_format",
                       help="parquet / csv / jsonl: every sample with its reason and scores; openclip: the TSV open_clip's "
                            "trainer reads; datacomp: sorted uint64 uid pairs; webdataset: the kept keys per source tar")
    columns, reshard = [], None
    if fmt in ("parquet", "csv", "jsonl", "openclip"):
        columns = st.multiselect("Also carry these metadata columns", [c for c in info.meta_columns
                                                                        if c not in manifest.TAR_COLUMNS],
                                 key="exp_columns", help="e.g. split, case_id: the training job can filter on them")
    elif fmt == "webdataset" and st.checkbox("Also write new tars holding only the kept samples", key="exp_reshard"):
        reshard = int(st.number_input("Samples per tar", 1, 1_000_000, manifest.WDS_SHARD_SIZE, key="exp_reshard_n"))
    default_name = manifest.default_name(info.name, run_id, cfg)
    name = st.text_input("File name (written under data/exports/; the suffix follows the format)", default_name,
                         key="exp_name")
    safe = "".join(ch for ch in name if ch.isalnum() or ch in "-_.") .strip(".") or default_name
    out = Path(path).parent / "exports" / f"{safe}{manifest.EXTENSIONS[fmt]}"
    overwrite = st.checkbox("Overwrite an existing export of this name", key="exp_overwrite")
    if out.exists() and not overwrite:
        st.caption(_text.esc(f"{out.name} exists: tick Overwrite, or choose another name."))
    if st.button("Export manifest", key="exp_go"):
        try:
            outcome = workflows.export_selection(path, inp, res, cfg, run_id, out, fmt,
                                                 impact=impact.to_dict(orient="index"), overwrite=overwrite,
                                                 warnings=warns, columns=columns, reshard=reshard)
            st.session_state["exp_last"] = {"path": str(out), "sidecar": outcome.sidecar}
            if outcome.note:
                _text.warning(outcome.note)
        except (CurationError, OSError) as e:
            _text.error(f"Export failed: {_text.app_words(str(e))}")
    last = st.session_state.get("exp_last")
    if last and Path(last["path"]).is_file():
        side_paths = manifest.paths_for(last["path"])
        st.success(_text.esc(f"Wrote {last['path']} ({last['sidecar']['manifest']['rows']:,} rows) with "
                               f"{side_paths['sidecar'].name} and {side_paths['dropped'].name}."))
        c1, c2 = st.columns(2)
        c1.download_button("Download the manifest", Path(last["path"]).read_bytes(),
                           file_name=Path(last["path"]).name, key="exp_download")
        if side_paths["sidecar"].is_file():
            c2.download_button("Download the sidecar", side_paths["sidecar"].read_bytes(),
                               file_name=side_paths["sidecar"].name, key="exp_download_sidecar")
        if last["sidecar"].get("reshard"):
            r = last["sidecar"]["reshard"]
            st.text(f"{len(r['files'])} tar(s) of the subset; train with:")
            st.code(f"python -m open_clip_train.main --dataset-type webdataset --train-data '{r['pattern']}' "
                    f"--train-num-samples {r['samples']}", language="bash")
        st.json(json.loads(json.dumps(last["sidecar"])), expanded=False)
        st.text("Reproduce from the command line:")
        st.code(f"python -m curation select --from {side_paths['sidecar']} --out {last['path']} --overwrite",
                language="bash")


@st.fragment
def selection_view() -> None:
    """Knobs and results in one fragment: a knob change reruns this, not the page (the dataset
    picker, the navigation and the cached inputs above stay as they are)."""
    knobs, results = st.columns([1, 3], gap="medium")
    with knobs:
        st.subheader("Selection knobs")
        knobs_panel()
    with results:
        results_panel()
    _knobs.sync_query()  # the URL follows the knobs on a fragment rerun too


selection_view()
