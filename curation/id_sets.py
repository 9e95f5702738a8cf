"""Id sets: named sets of rows a selection rule refers to (an id list, a lassoed region, search hits).

Immutable and content-addressed: a set is stored with the sha256 of its ids, referred to as
``NAME@SHA12``; saving a name again adds a version and the name points to the latest, while every
earlier version stays readable by its reference, so an export that pinned one still reproduces.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Mapping

import numpy as np

from curation import schema as S
from curation.errors import CurationError
from curation.store import now


def save(store, name: str, rows, kind: str = "ids", meta: Mapping | None = None) -> str:
    """Store the rows ``rows`` as a new version of the id set ``name``. Returns its reference
    ``NAME@SHA12``.

    Sets are immutable and content-addressed: saving a name again adds a version and the name
    points to the latest (:func:`refs`), while every earlier version stays readable by
    its reference (:func:`rows`), so an export that pinned one still reproduces. Saving
    the same rows under the same name again stores nothing new."""
    import pandas as pd

    store._check_writable()
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", name):
        raise CurationError(f"id set name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting "
                            f"with a letter or digit.")
    rows = np.unique(np.asarray(rows, np.int64))
    if len(rows) and (rows[0] < 0 or rows[-1] >= store.n_rows):
        raise CurationError(f"id set {name}: rows outside the dataset (0..{store.n_rows - 1}).")
    ids = store.samples([S.ID])[S.ID].astype(str).to_numpy()[rows]
    sha = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    row = pd.DataFrame([{"name": name, "kind": kind, "sha256": sha, "created": now(), "n": len(rows),
                         "rows": rows.tolist(), "meta": json.dumps(dict(meta or {}), sort_keys=True)}])
    old = store.read_table(S.ID_SETS) if store.has_table(S.ID_SETS) else None
    ref = f"{name}@{sha[:12]}"
    if old is not None:
        same = (old["name"] == name) & (old["sha256"].str[:12] == sha[:12])
        if same.any():
            if old.loc[same, "sha256"].iloc[0] != sha:
                raise CurationError(f"id set {ref}: another set of that name shares the first 12 hex digits "
                                    f"of its hash. Fix: save it under another name.")
            # the same content again: it becomes the latest version (the name points to it)
            row = old[same].assign(created=now())
            old = old[~same]
    table = row if old is None else pd.concat([old, row], ignore_index=True)
    store.write_tables({S.ID_SETS: table})
    return ref

def latest(store):
    """The latest version of each stored id set (name, kind, sha256, created, n, meta), without
    their rows."""
    import pandas as pd

    if not store.has_table(S.ID_SETS):
        return pd.DataFrame(columns=["name", "kind", "sha256", "created", "n", "meta"])
    t = store.read_table(S.ID_SETS, ["name", "kind", "sha256", "created", "n", "meta"])
    return t.groupby("name", sort=True).tail(1).sort_values("name").reset_index(drop=True)

def refs(store) -> list[str]:
    """References ``NAME@SHA12`` of each set's latest version, sorted (their rows are not read)."""
    t = latest(store)
    return sorted(f"{nm}@{sha[:12]}" for nm, sha in zip(t["name"], t["sha256"]))

def rows(store) -> dict:
    """{"NAME@SHA12": rows (int64 array)} for every stored version of every set, oldest first."""
    if not store.has_table(S.ID_SETS):
        return {}
    t = store.read_table(S.ID_SETS, ["name", "sha256", "rows"])
    return {f"{nm}@{sha[:12]}": np.asarray(list(r), np.int64) for nm, sha, r in
            zip(t["name"], t["sha256"], t["rows"])}


def describe(store, refs) -> dict:
    """{"NAME@SHA12": {"kind", "n", "meta"}} for the given set references (what a sidecar records of
    the rules it used: a region's polygons and analysis run, a search's text, an id file's name)."""
    if not refs or not store.has_table(S.ID_SETS):
        return {}
    t = store.read_table(S.ID_SETS, ["name", "kind", "sha256", "n", "meta"])
    out = {}
    for nm, kind, sha, n, meta in zip(t["name"], t["kind"], t["sha256"], t["n"], t["meta"]):
        ref = f"{nm}@{sha[:12]}"
        if ref in refs:
            try:
                m = json.loads(meta) if meta else {}
            except (TypeError, json.JSONDecodeError):
                m = {}
            out[ref] = {"kind": str(kind), "n": int(n), "meta": m}
    return out
