"""Use cases both faces (the CLI and the app) run, once: each takes what a user chose and returns
a typed outcome; the faces only turn flags or widgets into the call and draw what comes back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curation import manifest, store
from curation.errors import CurationError
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
