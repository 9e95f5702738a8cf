"""Table and column names, dtypes and the schema version: the one place they are spelled out."""

from __future__ import annotations

import decimal
import json

import numpy as np

from curation.errors import CurationError

SCHEMA_VERSION = 1

# Tables of a dataset file (data/<name>.duckdb).
SAMPLES = "samples"          # id, image, caption, metadata columns as given
EMBEDDINGS = "embeddings"    # row_idx, image_emb FLOAT[d_img], text_emb FLOAT[d_txt] (ids: samples)
META = "dataset_meta"        # key, value (JSON text): fingerprint, dims, models, image root...
RUNS = "runs"                # run_id, kind, created, config JSON, input fingerprint, version, timings
TRUTH = "demo_truth"         # ground truth of the generated demo only
REWARD_RATINGS = "reward_ratings"  # row_idx, id, source, prompt_version, status, one column per axis...
REWARD_MODELS = "reward_models"    # model_id, axes, config, metrics, arch, fingerprint, state (BLOB)
REWARD_SCORES = "reward_scores"    # row_idx, reward_<axis>, reward_<axis>_score
ID_SETS = "id_sets"                # name, kind (ids / region / search), sha256, created, n, rows BIGINT[], meta JSON

# Reserved sample columns.
ID = "id"
IMAGE = "image"
CAPTION = "caption"
ROW = "row_idx"
IMAGE_EMB = "image_emb"
TEXT_EMB = "text_emb"
EMB_KINDS = ("image", "text")

# Columns tried, in order, when the user does not name them.
ID_CANDIDATES = ("id", "sample_id", "key", "uid")
IMAGE_CANDIDATES = ("image", "image_path", "filepath", "file", "path", "url")
CAPTION_CANDIDATES = ("caption", "text", "title", "report", "description")
CASE_CANDIDATES = ("case_id", "patient_id", "patient", "study_id", "subject_id")


def emb_column(kind: str) -> str:
    """Column of the embeddings table that holds the ``kind`` ("image" or "text") vectors."""
    if kind not in EMB_KINDS:
        raise ValueError(f"embedding kind must be one of {EMB_KINDS}, got {kind!r}")
    return IMAGE_EMB if kind == "image" else TEXT_EMB


SEED_MAX = 2**31 - 1  # faiss takes an int32 seed; numpy and sklearn take it too


def check_seed(seed) -> int:
    """A seed every random step accepts: a whole number in [0, 2^31 - 1] (faiss takes an int32;
    one rule for the CLI, the config files and the app)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise CurationError(f"seed {seed!r} must be a whole number from 0 to {SEED_MAX}. Fix: e.g. --seed 0.")
    return int(seed)


# How a metadata value reads as a category (confounder statistics, strata, filters). DuckDB hands
# nested types to pandas as Python objects that cannot be hashed or compared, so each type is
# decided once, here:
#   LIST / STRUCT / MAP / arrays  -> canonical JSON text (sorted keys): one category per distinct value
#   DECIMAL                       -> float (a number, binned like any numeric column)
#   BLOB (bytes)                  -> not usable: raises UnusableColumn (binary data is no category)
#   TIMESTAMP WITH TIME ZONE, dates, booleans, text, numbers -> as they are
class UnusableColumn(ValueError):
    """A metadata column whose values cannot serve as categories (binary data)."""


def _canonical(v):
    if isinstance(v, np.ndarray):
        return [_canonical(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _canonical(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def category_values(series):
    """``series`` (a pandas Series of one metadata column) with hashable, comparable values.

    Columns of a plain dtype are returned as they are. An object column holding nested values
    (lists, structs, maps) becomes canonical JSON text; one holding decimals becomes float.
    Raises :class:`UnusableColumn` for binary data.
    """
    if series.dtype != object:
        return series
    kinds = set(series.dropna().map(type))
    if not kinds:
        return series
    if any(issubclass(k, (bytes, bytearray, memoryview)) for k in kinds):
        raise UnusableColumn(f"column {series.name!r} holds binary data")
    if kinds <= {decimal.Decimal}:
        return series.map(lambda v: None if v is None else float(v)).astype("float64")
    nested = (list, tuple, dict)
    if any(issubclass(k, nested + (np.ndarray,)) for k in kinds):
        return series.map(lambda v: v if v is None or (isinstance(v, float) and v != v)
                          else json.dumps(_canonical(v), sort_keys=True, default=str, ensure_ascii=False))
    return series
