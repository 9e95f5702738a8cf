"""Finished analysis steps kept on disk until the run is recorded, so an interrupted analysis
resumes at the step where it stopped.

A run's work folder (:func:`curation.analysis.work_folder`, ``<dataset>.work/<run id>/``) holds one
sub-folder per finished step: its per-sample columns (``columns.npz``, no pickles), its side tables
(Parquet) and its facts (``step.json``), written to a temporary folder and renamed into place, so a
step is there whole or not at all. The run id hashes the config and the dataset's fingerprint:
a checkpoint is only ever read back by the same analysis of the same data. The by-cluster
partitions (``partitions/``) are as large as the vectors and are dropped when the process ends.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np


def _step_dir(work: Path, step: str) -> Path:
    return Path(work) / f"step-{step}"


def save(work: Path | None, step: str, res, seconds: float) -> None:
    """Keep one finished step (:class:`curation.analysis_steps.StepResult`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if work is None:
        return
    final = _step_dir(work, step)
    tmp = Path(work) / f".tmp-{step}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        cols, kinds = {}, {}
        for name, v in res.columns.items():
            a = np.asarray(v)
            if a.dtype == object:  # text labels (band): stored as fixed-width unicode, read back as objects
                a, kinds[name] = a.astype(str), "object"
            cols[name] = a
        np.savez(tmp / "columns.npz", **cols)
        tables = {}
        for name, t in res.tables.items():
            if _is_dataset(t):  # a table its step already wrote out (spill): one file
                (src,) = t.files
                shutil.copyfile(src, tmp / f"{name}.parquet")
                tables[name] = "arrow"
                continue
            is_arrow = isinstance(t, pa.Table)
            pq.write_table(t if is_arrow else pa.Table.from_pandas(t, preserve_index=False), tmp / f"{name}.parquet")
            tables[name] = "arrow" if is_arrow else "pandas"
        (tmp / "step.json").write_text(json.dumps({"columns": kinds, "tables": tables, "outputs": res.outputs,
                                                   "seconds": seconds}, sort_keys=True, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(work: Path | None, step: str):
    """The kept result of ``step`` as (columns, tables, outputs, seconds), or None."""
    import pyarrow.parquet as pq

    d = _step_dir(work, step) if work is not None else None
    if d is None or not (d / "step.json").is_file():
        return None
    try:
        info = json.loads((d / "step.json").read_text())
        with np.load(d / "columns.npz", allow_pickle=False) as z:
            cols = {k: (z[k].astype(object) if info["columns"].get(k) == "object" else z[k]) for k in z.files}
        tables = {}
        for name, kind in info["tables"].items():
            if kind == "arrow":  # read from disk when the run is recorded (see on_disk)
                tables[name] = _dataset(d / f"{name}.parquet")
            else:
                tables[name] = pq.read_table(d / f"{name}.parquet").to_pandas()
    except (OSError, ValueError, KeyError):  # a damaged checkpoint is recomputed, never trusted
        shutil.rmtree(d, ignore_errors=True)
        return None
    return cols, tables, info["outputs"], info["seconds"]


def on_disk(work: Path | None, step: str, tables: dict) -> dict:
    """``tables`` of a step just kept, its Arrow tables replaced by datasets over their Parquet files.

    The kNN graphs are Arrow tables of 880 MB each at 10M rows; held from their step to the end of
    the run they were 1.8 GB of every later step's memory. DuckDB reads a dataset when the run is
    recorded (:meth:`curation.store.Store.record_run` registers it like a table)."""
    import pyarrow as pa

    if work is None:
        return tables
    d = _step_dir(work, step)
    return {name: _dataset(d / f"{name}.parquet") if isinstance(t, pa.Table) or _is_dataset(t) else t
            for name, t in tables.items()}


def spill(work: Path | None, name: str, table):
    """``table`` (Arrow) written to the work folder now, returned as a dataset over that file, so the
    rest of its step does not hold it (the density graph's 880 MB at 10M while the duplicate graph
    is built); kept in memory when there is no work folder."""
    import pyarrow.parquet as pq

    if work is None:
        return table
    path = Path(work) / "spilled" / f"{name}-{uuid.uuid4().hex[:8]}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return _dataset(path)


def _dataset(path: Path):
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet")


def _is_dataset(t) -> bool:
    import pyarrow.dataset as ds

    return isinstance(t, ds.FileSystemDataset)


def partitions_dir(work: Path, name: str) -> Path:
    return Path(work) / "partitions" / name


def drop_partitions(work: Path | None) -> None:
    if work is not None:
        shutil.rmtree(Path(work) / "partitions", ignore_errors=True)


def clear(work: Path | None) -> None:
    """Remove a recorded run's work folder (and the dataset's ``.work`` folder once empty)."""
    if work is None:
        return
    shutil.rmtree(work, ignore_errors=True)
    try:
        Path(work).parent.rmdir()
    except OSError:
        pass
