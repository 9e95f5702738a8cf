"""Use cases both faces (the CLI and the app) run, once: each takes what a user chose and returns
a typed outcome; the faces only turn flags or widgets into the call and draw what comes back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curation import analysis, analysis_steps, id_sets, ingest, manifest, metrics, runs, selection, store, vector_io
from curation import schema as S
from curation.confounders import flagged
from curation.errors import CurationError
from curation.projection import pca_reduce
from curation.selection import SelectionConfig
from curation.ingest import check_label_columns


@dataclass(frozen=True)
class ExportOutcome:
    """What :func:`export_selection` did: the sidecar written, and whether the run was recorded
    in the dataset's ``runs`` (``note`` says why not)."""

    path: Path
    sidecar: dict
    recorded: bool
    note: str | None = None


def export_selection(db, inp, result, cfg, run_id: str, out, fmt: str, *, impact: dict | None = None,
                     warnings=(), overwrite: bool = False, allow_missing: bool = False, columns=(),
                     reshard: int | None = None) -> ExportOutcome:
    """Write a selection's manifest, dropped list and sidecar (:func:`curation.manifest.export`)
    and record the selection run in the dataset, the same way from every face.

    The export is complete before the run is recorded; a dataset another process is writing
    leaves the export as it is and says so in ``note`` (``recorded=False``).
    """
    with store.open_store(db) as s:
        side = manifest.export(s, inp, result, cfg, run_id, out, fmt, impact=impact, overwrite=overwrite,
                               warnings=list(warnings or []), allow_missing=allow_missing, columns=columns,
                               reshard=reshard)
    try:
        with store.open_store(db, read_only=False) as s:
            s.record_run("selection", cfg.to_dict(), outputs={
                "manifest": str(Path(out).resolve()), "sha256": side["manifest"]["sha256"], "analysis_run": run_id,
                "format": fmt, "rows": side["manifest"]["rows"]})
    except CurationError as e:
        return ExportOutcome(Path(out), side, False, f"selection not recorded in the dataset's runs ({e})")
    return ExportOutcome(Path(out), side, True)


def declare_label_columns(db, labels) -> list[str]:
    """Store ``labels`` as the dataset's label columns (answers, not inputs: never confounders,
    never in the default selection, reported by the impact table). Returns them, checked."""

    with store.open_store(db, read_only=False) as s:
        labels = check_label_columns([c for c, _ in s.columns()], labels)
        if labels != s.label_columns():
            s.update_meta(label_columns=labels, label_column=labels[0] if labels else None)
    return labels


# --- describe a dataset -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSummary:
    """What a dataset is and what its analysis found, for the CLI's ``info`` and every page.

    The first fields are the file's own facts (``info`` prints them); the rest describe the analysis
    run a reader should show (:func:`curation.runs.best_analysis`) and what selection can use."""

    name: str
    path: str
    rows: int
    fingerprint: str
    columns: list
    image_dim: int | None
    text_dim: int | None
    image_model: str | None
    text_model: str | None
    shared_space: bool
    source: str | None
    tables: list
    size_mb: float
    meta_columns: list = field(default_factory=list)
    label_columns: tuple = ()
    image_root: str | None = None
    run_id: str | None = None
    run: dict | None = None             # config, timings, outputs, steps of that run
    confounders: object = None          # its confounder table (DataFrame) or None
    flagged: list = field(default_factory=list)
    reward: dict = field(default_factory=dict)
    reward_key: str | None = None       # the reward-score run the pool's reward scores come from
    gate_axes: list = field(default_factory=list)
    id_sets: list = field(default_factory=list)
    cluster_labels: dict = field(default_factory=dict)
    vectors: str = ""                   # where the vectors live (inside the file, or shards beside it)

    FACTS = ("name", "path", "rows", "fingerprint", "columns", "image_dim", "text_dim", "image_model", "text_model",
             "shared_space", "source", "tables", "size_mb", "vectors")

    def facts(self) -> dict:
        """The file's own facts as a JSON-ready dict (what ``python -m curation info`` prints)."""
        return {k: getattr(self, k) for k in self.FACTS}


def describe(db) -> DatasetSummary:
    """A dataset's :class:`DatasetSummary` (cheap: metadata, run records, the confounder table)."""
    with store.open_store(db) as s:
        m = s.meta
        rec = runs.best_analysis(s)
        reward = runs.reward_status(s)
        confounders, flags, axes, labels = None, [], [], {}
        if rec is not None:
            labels = analysis.cluster_label_map(s, rec.run_id)
            tname = rec.table("confounders")
            if tname and s.has_table(tname):
                confounders = s.read_table(tname)
                flags = flagged(confounders)
            if "quality" in rec.steps:  # the quality axes this run stored (older runs lack caption)
                cols = set(s.table_columns(rec.table("samples")))
                axes += [a for a in selection.QUALITY_AXES if f"{a}_score" in cols]
        if reward["scored_run"]:
            axes += [c[: -len("_score")] for c in s.table_columns(S.REWARD_SCORES)
                     if c.startswith("reward_") and c.endswith("_score")]
        return DatasetSummary(
            name=s.name, path=str(s.path), rows=s.n_rows, fingerprint=m["fingerprint"],
            columns=[n for n, _ in s.columns()], image_dim=m.get("image_dim"), text_dim=m.get("text_dim"),
            image_model=m.get("image_model"), text_model=m.get("text_model"),
            shared_space=bool(m.get("shared_space", False)), source=m.get("source"), tables=s.tables(),
            size_mb=round(s.path.stat().st_size / 2**20, 1), meta_columns=s.metadata_columns(),
            label_columns=tuple(s.label_columns()), image_root=str(s.image_root()) if s.image_root() else None,
            run_id=rec.run_id if rec else None,
            run=None if rec is None else {"config": rec.config, "timings": rec.timings, "outputs": rec.outputs,
                                          "steps": list(rec.steps), "created": rec.created},
            confounders=confounders, flagged=flags, reward=reward, reward_key=reward["scored_run"], gate_axes=axes,
            id_sets=id_sets.refs(s), cluster_labels=labels, vectors=vector_io.describe(m.get("vectors"), vector_io.vectors_folder(s.path) / m["fingerprint"]))


# --- analyze ---------------------------------------------------------------------------------------
def analysis_report(db, run_id) -> str:
    """A stored analysis run in a few lines: size, space, bands, duplicates, HDBSCAN, facts such as
    why fidelity is unavailable, likely confounders, timings (the CLI prints it, Overview shows it)."""
    with store.open_store(db) as s:
        rec = runs.get(s, run_id, "analysis")
        c = analysis.report_counts(s, run_id)
        cfg, out = rec.config, rec.outputs
        lines = [f"analysis run {run_id} on {s.name} ({c['n']:,} samples, space {cfg.get('space')}, "
                 f"k={out.get('k')}; steps: {', '.join(rec.steps)})"]
        if "band_core" in c:
            lines.append(f"  bands: core {c['band_core']:,}, tail {c['band_tail']:,}, "
                         f"outlier {c['band_outlier']:,}")
        if "dup_groups" in c:
            lines.append(f"  near-duplicate groups: {c['dup_groups']:,} ({int(c['dups']):,} samples "
                         f"would be dropped at eps={cfg.get('dedup_eps')})")
        if "hdbscan_clusters" in c:
            lines.append(f"  HDBSCAN clusters: {int(c['hdbscan_clusters']):,}, noise "
                         f"{(c['hdbscan_noise'] or 0.0):.1%}")
        if "fidelity_reason" in out:
            lines.append(f"  fidelity: {out['fidelity_reason']}")
        conf_table = rec.table("confounders")
        if "confounders_reason" in out:
            lines.append(f"  confounders: {out['confounders_reason']}")
        elif conf_table and s.has_table(conf_table):
            f = flagged(s.read_table(conf_table))
            lines.append(f"  likely confounders: {', '.join(f) if f else 'none'}")
        lines.append("  timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in rec.timings.items()
                                               if isinstance(v, (int, float))))
        ran = out.get("backend") or {}
        if ran.get("name") == "ray":
            lines.append(f"  ran on: a Ray cluster of {ran.get('workers')} CPUs (the same results as on one machine)")
    return "\n".join(lines)


def flagged_columns(s, run_id) -> list[str]:
    """The columns an analysis run flags as likely confounders ([] when it has no confounder table)."""
    try:
        return flagged(analysis.load_table(s, run_id, "confounders"))
    except CurationError:
        return []


# --- select and export -------------------------------------------------------------------------------
def read_config(path) -> SelectionConfig:
    """A SelectionConfig from a file: a config JSON, or an export's sidecar (its recorded config), so
    a recorded selection can be the start of a changed one."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CurationError(f"cannot read --config {path}: {e}. Fix: pass a UTF-8 JSON file (a selection config "
                            f"or an export's .sidecar.json).") from None
    if isinstance(d, dict) and isinstance(d.get("config"), dict) and "manifest" in d:
        d = d["config"]
    return SelectionConfig.from_dict(d)


def id_file_rows(s, path) -> np.ndarray:
    """Rows of the ids listed in a text file (one per line, no header; ids are exact: only the line
    ending goes, so ' x' and 'x ' are other ids than 'x'); unknown ids are refused."""
    p = Path(path)
    try:
        ids = [x.removesuffix("\r") for x in p.read_text(encoding="utf-8").split("\n")]
    except (OSError, UnicodeDecodeError) as e:
        raise CurationError(f"cannot read id file {p}: {e}. Fix: a UTF-8 text file, one id per line.") from None
    ids = [x for x in ids if x]  # a final newline and blank lines are not ids
    if not ids:
        raise CurationError(f"id file {p} lists no ids. Fix: one id per line.")
    all_ids = s.samples(["id"])["id"].astype(str)
    pos = dict(zip(all_ids, range(len(all_ids))))
    unknown = [i for i in ids if i not in pos]
    if unknown:
        raise CurationError(f"id file {p}: {len(unknown)} id(s) are not samples of {s.name} (first: "
                            f"{unknown[0]!r}, line {ids.index(unknown[0]) + 1}). Fix: list ids of this dataset.")
    return np.array([pos[i] for i in ids], np.int64)


def with_id_sets(db, cfg: SelectionConfig, *, exclude_file=None, include_file=None, exclude_names=(),
                 include_names=()) -> SelectionConfig:
    """``cfg`` with id-set rules added: id files are stored as sets (``exclude-<stem>``...), names
    mean their set's latest version; every rule is recorded as ``NAME@SHA12``."""
    from dataclasses import replace

    refs = {"exclude_sets": list(cfg.exclude_sets), "include_sets": list(cfg.include_sets)}
    files = [("exclude_sets", exclude_file), ("include_sets", include_file)]
    if any(f for _, f in files):
        with store.open_store(db, read_only=False) as s:
            for key, f in files:
                if f:
                    name = f"{key.split('_')[0]}-{Path(f).stem}"[:64]
                    safe = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in name)
                    refs[key].append(id_sets.save(s, safe, id_file_rows(s, f), kind="ids", meta={"file": str(f)}))
    named = [("exclude_sets", exclude_names or ()), ("include_sets", include_names or ())]
    if any(v for _, v in named):
        with store.open_store(db) as s:
            known = {r.split("@", 1)[0]: r for r in id_sets.refs(s)}  # a name means its latest version
        for key, names in named:
            for nm in names:
                if nm not in known:
                    raise CurationError(f"no id set {nm!r} in {db}. Fix: one of {', '.join(known) or '(none saved)'}.")
                refs[key].append(known[nm])
    return replace(cfg, exclude_sets=tuple(dict.fromkeys(refs["exclude_sets"])),
                   include_sets=tuple(dict.fromkeys(refs["include_sets"])))


def rule_warnings(inp, cfg: SelectionConfig, result) -> list[str]:
    """Rules that cannot do what they seem to: a filter that no row of the pool passes (with the
    column's values, so a typo shows; found while the order was built, so no filter runs twice), a
    set both excluded and included (exclusion wins)."""
    out = []
    for i in result.summary.get("filters_matching_nothing", []):
        f = cfg.filters[i]
        vals = inp.meta[f.column].dropna().astype(str).unique()[:6]
        out.append(f"filter {f.column} {f.op} {f.value!r} matches no row of the pool ({f.column}'s values "
                   f"include: {', '.join(map(repr, vals)) or 'none'}).")
    both = sorted(set(cfg.exclude_sets) & set(cfg.include_sets))
    if both:
        out.append(f"id set(s) {', '.join(both)} are both excluded and included; exclusion wins.")
    return out


@dataclass(frozen=True)
class SelectionOutcome:
    """What :func:`select_and_export` did: the result, its impact beside a random subset, the
    warnings, the export; with a sidecar to reproduce, whether the manifest matched it."""

    result: object
    impact: object            # DataFrame: metric x subset / random / pool / better
    warnings: list
    export: ExportOutcome
    fmt: str
    dedup_eps: float
    reproduced: bool | None = None
    mismatch: str | None = None
    notes: list = field(default_factory=list)


def select_and_export(db, cfg: SelectionConfig, out, fmt: str | None = None, *, run_id: str | None = None,
                      columns=(), reshard: int | None = None, labels=None, overwrite: bool = False,
                      allow_missing: bool = False, sidecar: dict | None = None) -> SelectionOutcome:
    """Select, measure the impact against a random subset, export and record the run.

    ``sidecar``: reproduce the selection it records (its dataset fingerprint must match; the outcome
    says whether the manifest came out byte for byte). ``labels``: the label columns the impact
    reports (default: the dataset's declared ones)."""
    fmt = manifest.format_for(out, fmt)
    with store.open_store(db) as s:
        if sidecar is not None:
            manifest.check_fingerprint(s, sidecar)
        run_id = runs.require(s, run_id).run_id
        inp = selection.load_inputs(s, run_id)
        res = selection.select(inp, cfg)
        labels = s.label_columns() if labels is None else ingest.check_label_columns(list(inp.meta.columns), labels)
        eps = cfg.dedup_eps if cfg.dedup_eps is not None else 0.05
        ctx = metrics.ImpactContext(inp, columns=cfg.confounders or flagged_columns(s, run_id), labels=labels,
                                    seed=cfg.seed, dedup_eps=eps)
        impact = ctx.compare(res.selected, cfg.seed, order=res.order)
        warns = ctx.warnings(res.selected, res.summary, cfg.mode, cfg.confounders, subset=impact["subset"].to_dict())
        warns = rule_warnings(inp, cfg, res) + warns
    exported = export_selection(db, inp, res, cfg, run_id, out, fmt, impact=impact.to_dict(orient="index"),
                                overwrite=overwrite, warnings=warns, allow_missing=allow_missing, columns=columns,
                                reshard=reshard)
    reproduced = mismatch = None
    if sidecar is not None:
        recorded = sidecar.get("manifest", {}) if isinstance(sidecar.get("manifest"), dict) else {}
        reproduced = recorded.get("sha256") == exported.sidecar["manifest"]["sha256"]
        if not reproduced:
            why = (f"it was written as {sidecar.get('format')}, this one as {fmt}" if sidecar.get("format") != fmt else
                   f"it carried the columns {sidecar.get('columns') or []}, this one {list(columns or [])}"
                   if list(sidecar.get("columns") or []) != list(columns or []) else
                   "the sidecar's config or the recorded hash was edited, or the software changed")
            mismatch = (f"the manifest written does not match the one the sidecar recorded (sha256 "
                        f"{exported.sidecar['manifest']['sha256'][:16]}... vs {str(recorded.get('sha256'))[:16]}...): "
                        f"{why}.")
    return SelectionOutcome(res, impact, warns, exported, fmt, float(eps), reproduced, mismatch,
                            [exported.note] if exported.note else [])


# --- evaluate -----------------------------------------------------------------------------------------
def evaluate(db, cfg: SelectionConfig, label: str, *, split_column: str | None = None, n_random: int = 5,
             run_id: str | None = None) -> dict:
    """The curated subset against ``n_random`` random subsets of the same size, by a linear probe for
    ``label`` trained on each and scored on the same held-out rows (:func:`curation.metrics.evaluate`).
    The split column defaults to ``split`` when the dataset has one."""
    if n_random < 1:
        raise CurationError(f"--random {n_random}: the curated subset is compared with random subsets; "
                            f"use 1 or more (default 5).")
    with store.open_store(db) as s:
        rec = runs.require(s, run_id)
        inp = selection.load_inputs(s, rec.run_id)
        F, slices = analysis.features(s)
        X = analysis_steps._space(F, slices, rec.config["space"])
        split = split_column or ("split" if "split" in inp.meta.columns else None)
        if split is not None and split not in inp.meta.columns:
            raise CurationError(f"--split-column {split!r} is not a column. Fix: use one of: "
                                f"{', '.join(inp.meta.columns)}, or omit it for a case-grouped 20% split.")
    Z = pca_reduce(X, 64, seed=cfg.seed)
    F.source.close()
    del F, X
    res = metrics.evaluate(inp, Z, label, cfg, split_column=split, n_random=n_random)
    return {**res, "split_column": split}
