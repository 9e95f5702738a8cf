"""The command line's flags and help: one ``add_<command>(sub)`` per command, every default taken
from the config classes. Which function runs a command is :mod:`curation.cli`'s business (``handler``)."""

from __future__ import annotations

import argparse

from curation.analysis import STEPS, AnalysisConfig
from curation.manifest import FORMATS, WDS_SHARD_SIZE
from curation.selection import MODES, OUTLIER_POLICIES, SelectionConfig

LABEL_HELP = ("columns that are answers, not inputs (diagnosis, finding labels; a|b|c holds three): never flagged "
              "as confounders, never used by the default selection, reported by the impact table against random "
              "subsets")


def add_demo(sub):
    p = sub.add_parser("demo", help="build the synthetic demo dataset (with ground truth)",
                       description="Build the deterministic synthetic demo dataset.")
    p.add_argument("--db", default="data/demo.duckdb", help="target file (default: %(default)s)")
    p.add_argument("--rows", type=int, default=20_000, help="number of pairs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--dim", type=int, default=512, help="embedding dimension (default: %(default)s)")
    p.add_argument("--no-images", action="store_true", help="skip writing thumbnail images")
    p.add_argument("--replace", action="store_true", help="overwrite an existing dataset")
    p.add_argument("--ratings", metavar="CSV",
                   help="also write ratings of --ratings-n random pairs from the planted ground truth plus "
                        "noise (for trying `reward train --ratings CSV`)")
    p.add_argument("--ratings-n", type=int, default=2000, help="pairs in --ratings (default: %(default)s)")
    p.set_defaults(handler="demo")


def add_ingest(sub):
    p = sub.add_parser(
        "ingest", help="load precomputed embeddings + metadata into a dataset",
        description="Validate and load precomputed embeddings and metadata into DB (a .duckdb file). "
                    "Give one input: --metadata (+ --image-emb/--text-emb .npy), --parquet, or "
                    "--clip-retrieval.")
    p.add_argument("db", help="target dataset file, e.g. data/mydata.duckdb")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--metadata", help="CSV or Parquet metadata table with an id column")
    src.add_argument("--parquet", help="Parquet file or folder with list embedding columns")
    src.add_argument("--clip-retrieval", help="clip-retrieval output folder")
    p.add_argument("--image-emb", help=".npy image embeddings, row-aligned with --metadata")
    p.add_argument("--text-emb", help=".npy text embeddings, row-aligned with --metadata")
    p.add_argument("--image-column", help="with --parquet: the image-embedding column")
    p.add_argument("--text-column", help="with --parquet: the text-embedding column")
    p.add_argument("--id-column", help="the id column (default: first of id, sample_id, key, uid)")
    p.add_argument("--image-path-column", help="column with image paths (default: image, image_path, filepath...)")
    p.add_argument("--caption-column", help="column with captions (default: caption, text, title...)")
    p.add_argument("--image-root", help="folder image paths are relative to (default: the input's folder)")
    p.add_argument("--image-model", help="name of the image encoder (recorded)")
    p.add_argument("--text-model", help="name of the text encoder (recorded)")
    p.add_argument("--shared-space", action=argparse.BooleanOptionalAction, default=None,
                   help="image and text come from one CLIP-style model (enables image-text fidelity); "
                        "default: what the input says (an embed or clip-retrieval folder is one model)")
    p.add_argument("--label-column", help="one label column (same as --label-columns COL)")
    p.add_argument("--label-columns", metavar="COL[,COL]", help=LABEL_HELP)
    p.add_argument("--case-column", help="case/patient id column (duplicates and splits respect it)")
    p.add_argument("--column-types", metavar="COL=TYPE[,...]",
                   help="force metadata column types: text, number, integer, boolean (e.g. zip=text,age=number). "
                        "Without it a CSV column is a number only when every value reads back unchanged: "
                        "codes with leading zeros (02139) and over-long numbers stay text")
    p.add_argument("--vector-layout", choices=("auto", "shards", "inline"), default="auto",
                   help="where the vectors are kept: inside the dataset file, or as row-ordered .npy shards of "
                        "100k rows in DB.vectors/ beside it (auto: shards from 200k rows)")
    p.add_argument("--vector-dtype", choices=("auto", "float16", "float32"), default="auto",
                   help="shards' number type (auto: float32 up to 2 GiB of vectors, float16 above)")
    p.add_argument("--shard-rows", type=int, default=None, metavar="N",
                   help="rows per vector shard (default 100,000)")
    p.add_argument("--replace", action="store_true", help="overwrite an existing dataset")
    p.set_defaults(handler="ingest")


def add_embed(sub):
    p = sub.add_parser(
        "embed", help="compute image + caption embeddings with open_clip (GPU or CPU)",
        description="Embed image-caption pairs with an open_clip model into OUT (shards `ingest "
                    "--clip-retrieval OUT` reads; or pass --ingest DB). Give one input: --captions TABLE "
                    "(+ --image-root) or --webdataset TARS. Rerunning the same command resumes.")
    p.add_argument("out", help="output folder for embedding shards")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--captions", help="CSV / TSV / Parquet / JSONL table naming image paths and captions")
    src.add_argument("--webdataset", nargs="+", help="WebDataset .tar shards, a glob, or a folder of them")
    p.add_argument("--image-root", help="with --captions: folder image paths are relative to "
                   "(default: the table's folder)")
    p.add_argument("--id-column", help="id column (default: first of id, sample_id, key, uid)")
    p.add_argument("--image-path-column", help="image path column (default: image, image_path, filepath...)")
    p.add_argument("--caption-column", help="caption column (default: caption, text, title...)")
    p.add_argument("--model", required=True,
                   help="open_clip architecture (ViT-B-16), hf-hub:ORG/REPO (BiomedCLIP: "
                        "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224) or local-dir:FOLDER")
    p.add_argument("--pretrained", help="weights tag (laion2b_s34b_b88k), a checkpoint file, or 'random'")
    p.add_argument("--batch-size", type=int, default=256, help="pairs per batch (default: %(default)s)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: per machine)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1... (default: %(default)s)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="compute precision; auto = bf16 on CUDA, fp32 on CPU")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                   help="stored vector type (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=10_000,
                   help="pairs per output shard with --captions (default: %(default)s)")
    p.add_argument("--backend", default="local", choices=("local", "ray"),
                   help="local (this machine) or ray (Ray Data, a cluster or a local Ray instance)")
    p.add_argument("--address", help="with --backend ray: the cluster's address (default: start Ray locally)")
    p.add_argument("--concurrency", type=int, help="with --backend ray: model actors (default: GPUs, or 1)")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help="with --backend ray: GPUs per model actor (default: 1 when the cluster has GPUs)")
    p.add_argument("--offline", action="store_true", help="never contact the model hub (HF_HUB_OFFLINE=1)")
    p.add_argument("--overwrite", action="store_true", help="discard shards of a different earlier run in OUT")
    p.add_argument("--ingest", metavar="DB", help="ingest the result into this dataset file when done")
    p.add_argument("--replace", action="store_true", help="with --ingest: overwrite an existing dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler="embed")


def add_reward(sub):
    p = sub.add_parser("reward", help="RefineNet reward model: annotate with an MLLM, train, score",
                       description="Distil image-text fidelity and semantic consistency ratings (from an "
                                   "MLLM or experts) into a small reward model that scores the whole pool.")
    rs = p.add_subparsers(dest="reward_command", metavar="STEP", required=True)
    a = rs.add_parser("annotate", help="rate sampled pairs with an OpenAI-compatible chat endpoint",
                      description="Ask an OpenAI-compatible endpoint (e.g. a local vLLM server) to rate N "
                                  "sampled pairs with a fixed, versioned prompt; ratings are stored in DB. "
                                  "Rerunning adds N more (rated pairs are skipped).")
    a.add_argument("db")
    a.add_argument("--endpoint", required=True, help="base URL, e.g. http://localhost:8000/v1")
    a.add_argument("--model", required=True, help="model name the endpoint serves")
    a.add_argument("--sample", type=int, required=True, help="number of pairs to rate")
    a.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    a.add_argument("--retries", type=int, default=2, help="retries of a malformed answer (default: %(default)s)")
    a.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: %(default)s)")
    a.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key, if any (default: %(default)s)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(handler="reward_annotate")
    t = rs.add_parser("train", help="train the reward model on stored or CSV ratings",
                      description="Train a small torch model on the embeddings to predict the ratings; hold "
                                  "out a split (grouped by case id when the dataset has one) and report "
                                  "Pearson r per axis. The model is stored in DB with its config and metrics.")
    t.add_argument("db")
    t.add_argument("--ratings", help="CSV/Parquet: id plus one numeric column per axis (any scale)")
    t.add_argument("--axes", help="comma list of rating columns (default: every column but id)")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--test-fraction", type=float, default=0.2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(handler="reward_train")
    c = rs.add_parser("score", help="score every sample with the reward model",
                      description="Score every sample with a stored reward model (default: the newest); the "
                                  "reward_<axis>_score columns become quality gates of `select`.")
    c.add_argument("db")
    c.add_argument("--model-id", help="a stored reward model (default: the newest)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(handler="reward_score")


def add_info(sub):
    p = sub.add_parser("info", help="summarise a dataset", description="Print a dataset's summary as JSON.")
    p.add_argument("db")
    p.set_defaults(handler="info")


def add_analyze(sub):
    d = AnalysisConfig()  # every default below comes from the config: one source
    p = sub.add_parser(
        "analyze", help="prototypes, density, duplicates, map, quality and confounder statistics",
        description="Analyse a dataset and cache the results in it as a run. The same config on the same "
                    "data is the same run: a rerun returns it at once (--force recomputes); running more "
                    "--steps of a config adds them to its run.")
    p.add_argument("db")
    p.add_argument("--space", default=d.space, choices=["auto", "joint", "image", "text"],
                   help="embedding space; auto = joint when both image and text exist, else the one present "
                        "(default: %(default)s)")
    p.add_argument("--k", type=int, default=d.k, help="number of prototypes (default: about sqrt(N))")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every random step (default: %(default)s)")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: %(default)s")
    p.add_argument("--core-pct", type=float, default=d.core_pct, help="core band edge percentile (default: %(default)s)")
    p.add_argument("--tail-pct", type=float, default=d.tail_pct, help="tail band edge percentile (default: %(default)s)")
    p.add_argument("--dedup-eps", type=float, default=d.dedup_eps,
                   help="duplicate if cosine > 1 - eps (default: %(default)s)")
    p.add_argument("--knn-k", type=int, default=d.knn_k, help="neighbours for density (default: %(default)s)")
    p.add_argument("--map-fit-max", type=int, default=d.map_fit_max,
                   help="UMAP is fitted on at most this many samples (default: %(default)s)")
    p.add_argument("--label-columns", metavar="COL[,COL]",
                   help="declare the dataset's label columns (stored with it; default: those declared at ingest): "
                   + LABEL_HELP)
    p.add_argument("--force", action="store_true", help="recompute even when this run is already stored")
    p.add_argument("--backend", default="local", choices=("local", "ray"),
                   help="where the per-block and per-cluster tasks run: here, or on a Ray cluster; the same "
                        "run and tables either way (default: %(default)s)")
    p.add_argument("--address", help="with --backend ray: the cluster's address, HEAD:PORT (default: RAY_ADDRESS, "
                                     "else Ray started on this machine); the dataset must be on a file system "
                                     "every node sees")
    p.set_defaults(handler="analyze")


def add_select(sub):
    d = SelectionConfig()  # the defaults the help shows are the config's: one source

    p = sub.add_parser(
        "select", help="select a budgeted subset and export its manifest",
        description="Select a subset under a budget and write the manifest, its sidecar "
                    "(<stem>.sidecar.json) and the dropped samples (<stem>.dropped.parquet). "
                    "`select --from SIDECAR --out PATH` reproduces an earlier export.")
    p.add_argument("db", nargs="?", help="dataset file (not needed with --from)")
    p.add_argument("--from", dest="from_sidecar", help="reproduce the selection a sidecar describes")
    p.add_argument("--config", help="a SelectionConfig JSON file (flags below override it)")
    p.add_argument("--budget", help="a count (5000) or a fraction of the pool (0.25); 1 is one sample, 1.0 the "
                                    "whole pool")
    p.add_argument("--confounders", help="comma-separated metadata columns to stratify by")
    p.add_argument("--mode", choices=MODES, help=f"allocation across strata (default: {d.mode})")
    p.add_argument("--temper", type=float,
                   help=f"for --mode tempered: 0 = proportional, 1 = balanced (default: {d.temper})")
    p.add_argument("--tail-core-ratio", type=float, help=f"tail picks per core pick (default: {d.tail_core_ratio})")
    p.add_argument("--outliers", choices=OUTLIER_POLICIES, help=f"outlier policy (default: {d.outliers})")
    p.add_argument("--dedup-eps", type=float, help=f"near-duplicate threshold (default: {d.dedup_eps})")
    p.add_argument("--no-dedup", action="store_true", help="keep near-duplicates")
    p.add_argument("--fidelity-guard", type=float, metavar="Q",
                   help=f"quality guard: pairs in the pool's bottom Q of image-text fidelity are not eligible "
                        f"(a cluster made only of them keeps its best); needs a shared space "
                        f"(default: {d.fidelity_guard})")
    p.add_argument("--no-fidelity-guard", action="store_true", help="turn the quality guard off")
    p.add_argument("--gate", action="append", default=[],
                   help="quality gate AXIS:min=S or AXIS:top=Q, e.g. fidelity:top=0.9 (repeatable)")
    p.add_argument("--filter", action="append", default=[],
                   help='metadata filter "COLUMN OP VALUE", e.g. "modality == CT" or "age >= 18" (repeatable)')
    p.add_argument("--seed", type=int, help=f"seed of the random baseline (default: {d.seed})")
    p.add_argument("--exclude-cluster", metavar="C,C", help="prototype clusters to leave out, e.g. 3,17")
    p.add_argument("--exclude-ids", metavar="FILE",
                   help="text file, one id per line, exact (only the line ending is removed): never select these")
    p.add_argument("--include-ids", metavar="FILE",
                   help="text file, one id per line, exact (only the line ending is removed): select these first")
    p.add_argument("--exclude-set", action="append", default=[], metavar="NAME",
                   help="a stored id set (from `search --save`, the app's lasso...) to leave out")
    p.add_argument("--include-set", action="append", default=[], metavar="NAME", help="a stored id set to select first")
    p.add_argument("--analysis-run", help="analysis run id (default: the latest with prototypes and density)")
    p.add_argument("--out", required=True, help="manifest path, e.g. data/subset.parquet")
    p.add_argument("--format", choices=FORMATS,
                   help="manifest format (default: from --out's suffix: .parquet, .csv, .jsonl, .tsv = openclip, "
                        ".npy = datacomp uids, .json = webdataset keys per source tar)")
    p.add_argument("--columns", metavar="C,C",
                   help="metadata columns the manifest carries too, e.g. split,case_id (one named like a manifest "
                        "column, e.g. rank, is written as meta_rank)")
    p.add_argument("--label-columns", metavar="COL[,COL]",
                   help="label columns the impact table reports (default: those declared with the dataset)")
    p.add_argument("--reshard", type=int, nargs="?", const=WDS_SHARD_SIZE, metavar="N",
                   help="with --format webdataset: also write new tars of the kept samples beside --out "
                        f"(NAME-000000.tar..., N samples per tar, default {WDS_SHARD_SIZE:,})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export of the same --out")
    p.add_argument("--allow-missing", action="store_true",
                   help="with --format openclip: write rows whose image file does not exist (refused by default)")
    p.set_defaults(handler="select")


def add_evaluate(sub):
    p = sub.add_parser(
        "evaluate", help="linear probe on the curated subset vs random subsets of the same size",
        description="Select on the training rows, train a logistic-regression probe for --label on the "
                    "subset and on --random random subsets of the same size, and score all on the same "
                    "held-out rows (the split column's test/val/dev rows, else a case-grouped 20%%).")
    p.add_argument("db")
    p.add_argument("--label", required=True, help="label column to predict")
    p.add_argument("--config", help="a SelectionConfig JSON file (flags below override it)")
    p.add_argument("--budget", help="a count or a fraction of the training rows (default: 0.25)")
    p.add_argument("--confounders", help="comma-separated columns to stratify by")
    p.add_argument("--mode", choices=MODES)
    p.add_argument("--split-column", help="column naming the split (default: 'split' when present)")
    p.add_argument("--random", type=int, default=5, help="random subsets to compare with (default: 5)")
    p.add_argument("--seed", type=int)
    p.add_argument("--analysis-run", help="analysis run id (default: the latest)")
    p.set_defaults(handler="evaluate", temper=None, tail_core_ratio=None, outliers=None, dedup_eps=None,
                   no_dedup=False, gate=[], filter=[])


def add_show(sub):
    p = sub.add_parser("show", help="one sample: metadata, analysis values, selection reason, nearest neighbours",
                       description="Show one sample as the app's inspector does: its metadata, its analysis values "
                                   "(cluster and label, band, density, scores), why the default selection keeps or "
                                   "drops it, and its nearest neighbours from the stored kNN graph.")
    p.add_argument("db")
    p.add_argument("id", help="the sample id")
    p.add_argument("--neighbours", type=int, default=10, help="neighbours listed (default: %(default)s)")
    p.add_argument("--analysis-run", help="analysis run id (default: the latest with prototypes and density)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler="show")


def add_search(sub):
    p = sub.add_parser("search", help="find samples by caption words",
                       description="List samples whose caption contains every word of TEXT (case-insensitive).")
    p.add_argument("db")
    p.add_argument("text")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
    p.add_argument("--save", metavar="NAME", help="store every match (not only the --limit shown) as the id set NAME "
                                                  "(for --exclude-set/--include-set)")
    p.set_defaults(handler="search")
