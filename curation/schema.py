"""Table and column names, dtypes and the schema version: the one place they are spelled out."""

from __future__ import annotations

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
