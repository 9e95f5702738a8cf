"""Inspect one sample and search captions: the library behind the app's inspector and search box
and the ``show`` / ``search`` commands.
"""

from __future__ import annotations

import numpy as np

from curation import analysis, runs, selection
from curation import schema as S
from curation.errors import CurationError

ANALYSIS_FIELDS = ("prototype", "band", "proto_dist", "proto_pct", "fps_rank", "knn_density", "tail_score",
                   "dup_group", "is_dup", "hdbscan_label", "glosh_score", "fidelity_score", "consistency_score",
                   "caption_score", "caption_quality", "map_x", "map_y")


def row_of(store, sample_id: str) -> int:
    """The row of sample ``sample_id``; a :class:`CurationError` naming the id when it is unknown."""
    ids = store.samples([S.ID])[S.ID].astype(str)
    hit = np.flatnonzero(ids.to_numpy() == str(sample_id))
    if not len(hit):
        raise CurationError(f"no sample with id {sample_id!r} in dataset {store.name}. Fix: check the id "
                            f"(`python -m curation search DB TEXT` finds ids by caption).")
    return int(hit[0])


def show(store, sample_id: str, *, run_id: str | None = None, neighbours: int = 10, config=None) -> dict:
    """Everything known about one sample.

    Returns
    -------
    dict with ``row``, ``sample`` (id, image, caption and metadata), ``analysis`` (the run's values,
    with ``cluster_label``), ``reason`` and ``detail`` (under ``config``, default
    :class:`~curation.selection.SelectionConfig`), and ``neighbours``: a list of {row, id, cosine,
    caption} from the run's stored kNN graph (the analysis space), nearest first.
    """

    rec = runs.require(store, run_id)
    row = row_of(store, sample_id)
    samples = store.samples()
    sample = samples.iloc[row].to_dict()
    df, _ = analysis.load(store, rec.run_id)
    values = {k: _plain(df[k].iat[row]) for k in ANALYSIS_FIELDS if k in df.columns}
    labels = analysis.cluster_label_map(store, rec.run_id)
    values["cluster_label"] = labels.get(int(df["prototype"].iat[row]), "")
    nbr, sim = analysis.load_knn(store, rec.run_id)
    k = max(0, min(int(neighbours), nbr.shape[1]))
    ids = samples
    near = []
    for j, c in zip(nbr[row][:k], sim[row][:k]):
        if j < 0:
            continue
        near.append({"row": int(j), "id": str(ids[S.ID].iat[j]), "cosine": float(c),
                     "caption": str(ids[S.CAPTION].iat[j]) if S.CAPTION in ids else None})
    inp = selection.load_inputs(store, rec.run_id)
    cfg = config or selection.SelectionConfig()
    res = selection.select(inp, cfg)
    return {"row": row, "run_id": rec.run_id, "sample": {k: _plain(v) for k, v in sample.items()},
            "analysis": values, "reason": str(res.reason[row]), "detail": str(res.details(inp, cfg, rows=[row])[0]),
            "neighbours": near}


def search(store, text: str, limit: int = 50):
    """Samples whose caption holds every word of ``text`` (case-insensitive): DataFrame row_idx,
    id, caption, at most ``limit`` rows in row order."""
    if limit < 1:
        raise CurationError(f"--limit {limit}: ask for at least one result.")
    return store.search_captions(text, limit)


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and v != v:
        return None
    return v
