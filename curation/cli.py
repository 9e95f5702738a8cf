"""``python -m curation <command>``: a thin argparse face on the library.

Every command prints one clear error and exits non-zero on bad input (exit code 2), and never
leaves a half-written dataset behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from curation.errors import CurationError

EXIT_INPUT = 2


def _add_demo(sub):
    p = sub.add_parser("demo", help="build the synthetic demo dataset (with ground truth)",
                       description="Build the deterministic synthetic demo dataset.")
    p.add_argument("--db", default="data/demo.duckdb", help="target file (default: %(default)s)")
    p.add_argument("--rows", type=int, default=20_000, help="number of pairs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--dim", type=int, default=512, help="embedding dimension (default: %(default)s)")
    p.add_argument("--no-images", action="store_true", help="skip writing thumbnail images")
    p.add_argument("--replace", action="store_true", help="overwrite an existing dataset")
    p.set_defaults(func=cmd_demo)


def cmd_demo(a) -> int:
    from curation import demo

    if Path(a.db).exists() and not a.replace:
        raise CurationError(f"dataset {a.db} already exists. Fix: pass --replace to rebuild it.")
    if a.rows < 1000:
        raise CurationError(f"--rows {a.rows} is too small for the demo. Fix: use --rows 1000 or more.")
    k = 40 if a.rows >= 8000 else max(8, a.rows // 200)
    spec = demo.DemoSpec(n_rows=a.rows, seed=a.seed, dim=a.dim, n_clusters=k)
    t = time.time()
    fp = demo.build(a.db, spec, replace=a.replace, images=not a.no_images)
    print(f"demo dataset written to {a.db}: {a.rows} pairs, fingerprint {fp} ({time.time() - t:.1f} s)")
    return 0


def _add_ingest(sub):
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
    p.add_argument("--shared-space", action="store_true",
                   help="image and text come from one CLIP-style model (enables image-text fidelity)")
    p.add_argument("--label-column", help="a label column (kept out of confounder flags)")
    p.add_argument("--case-column", help="case/patient id column (duplicates and splits respect it)")
    p.add_argument("--replace", action="store_true", help="overwrite an existing dataset")
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(a) -> int:
    from curation import ingest

    t = time.time()
    if a.metadata:
        if a.image_column or a.text_column:
            raise CurationError("--image-column/--text-column go with --parquet. Fix: with --metadata "
                                "use --image-emb/--text-emb .npy files.")
        inp = ingest.read_metadata_npy(a.metadata, a.image_emb, a.text_emb, id_column=a.id_column,
                                       image_column=a.image_path_column,
                                       caption_column=a.caption_column, image_root=a.image_root)
    elif a.parquet:
        inp = ingest.read_parquet_embeddings(a.parquet, image_column=a.image_column,
                                             text_column=a.text_column, id_column=a.id_column,
                                             image_path_column=a.image_path_column,
                                             caption_column=a.caption_column, image_root=a.image_root)
    else:
        inp = ingest.read_clip_retrieval(a.clip_retrieval, id_column=a.id_column, image_root=a.image_root)
    names = inp.samples.column_names
    for opt, col in (("--label-column", a.label_column), ("--case-column", a.case_column)):
        if col and col not in names:
            raise CurationError(f"{opt} '{col}' is not a column. Fix: use one of: {', '.join(names)}.")
    from curation import schema as S
    case = a.case_column or next((c for c in S.CASE_CANDIDATES if c in names), None)
    fp = ingest.ingest(a.db, inp, replace=a.replace, image_model=a.image_model, text_model=a.text_model,
                       shared_space=a.shared_space,
                       extra_meta={"label_column": a.label_column, "case_column": case})
    dims = {k: (v.shape[1] if v is not None else None) for k, v in inp.vectors.items()}
    print(f"ingested {inp.samples.num_rows} samples into {a.db} (image dim {dims['image']}, "
          f"text dim {dims['text']}), fingerprint {fp} ({time.time() - t:.1f} s)")
    return 0


def _add_info(sub):
    p = sub.add_parser("info", help="summarise a dataset", description="Print a dataset's summary as JSON.")
    p.add_argument("db")
    p.set_defaults(func=cmd_info)


def cmd_info(a) -> int:
    from curation import store

    with store.open_store(a.db) as s:
        print(json.dumps(s.summary(), indent=2))
    return 0


def _add_analyze(sub):
    from curation.analysis import STEPS

    p = sub.add_parser(
        "analyze", help="prototypes, density, duplicates, map, quality and confounder statistics",
        description="Analyse a dataset and cache the results in it as a run (same config = same run).")
    p.add_argument("db")
    p.add_argument("--space", default="joint", choices=["joint", "image", "text"],
                   help="embedding space (default: %(default)s)")
    p.add_argument("--k", type=int, help="number of prototypes (default: about sqrt(N))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: %(default)s")
    p.add_argument("--core-pct", type=float, default=85.0, help="core band edge percentile (default: 85)")
    p.add_argument("--tail-pct", type=float, default=95.0, help="tail band edge percentile (default: 95)")
    p.add_argument("--dedup-eps", type=float, default=0.05, help="duplicate if cosine > 1 - eps (default: 0.05)")
    p.add_argument("--knn-k", type=int, default=10, help="neighbours for density (default: 10)")
    p.add_argument("--map-fit-max", type=int, default=20_000,
                   help="UMAP is fitted on at most this many samples (default: %(default)s)")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(a) -> int:
    from tqdm import tqdm

    from curation import analysis

    cfg = analysis.AnalysisConfig(space=a.space, k=a.k, seed=a.seed, core_pct=a.core_pct,
                                  tail_pct=a.tail_pct, dedup_eps=a.dedup_eps, knn_k=a.knn_k,
                                  map_fit_max=a.map_fit_max)
    bars: dict = {}

    def progress(step, done, total):
        bar = bars.get(step)
        if bar is None:
            for other in bars.values():  # one bar at a time: steps run one after another
                other.close()
            bar = bars[step] = tqdm(total=total, desc=f"{step:<12}", unit="row" if total > 10 else "step",
                                    leave=True, file=sys.stderr, mininterval=0.5)
        bar.update(done - bar.n)

    run_id = analysis.analyze(a.db, cfg, steps=[s.strip() for s in a.steps.split(",") if s.strip()],
                              progress=progress)
    for bar in bars.values():
        bar.close()
    print(_analysis_report(a.db, run_id))
    return 0


def _analysis_report(db, run_id) -> str:
    from curation import analysis, store

    with store.open_store(db) as s:
        df, cfg = analysis.load(s, run_id)
        run = s.runs("analysis").set_index("run_id").loc[run_id]
        timings = json.loads(run["timings"])
        outputs = json.loads(run["outputs"])
        lines = [f"analysis run {run_id} on {s.name} ({len(df):,} samples, space {cfg['space']}, "
                 f"k={outputs['k']})"]
        if "band" in df:
            b = df["band"].value_counts()
            lines.append(f"  bands: core {b.get('core', 0):,}, tail {b.get('tail', 0):,}, "
                         f"outlier {b.get('outlier', 0):,}")
        if "dup_group" in df:
            groups = df.loc[df["dup_group"] >= 0, "dup_group"].nunique()
            lines.append(f"  near-duplicate groups: {groups:,} ({int(df['is_dup'].sum()):,} samples "
                         f"would be dropped at eps={cfg['dedup_eps']})")
        if "hdbscan_label" in df:
            lines.append(f"  HDBSCAN clusters: {df['hdbscan_label'].max() + 1:,}, noise "
                         f"{(df['hdbscan_label'] < 0).mean():.1%}")
        if "fidelity" in df:
            lines.append(f"  fidelity: {timings.get('fidelity_reason', '')}")
        tables = outputs["tables"]
        if s.has_table(tables["confounders"]):
            conf = s.read_table(tables["confounders"])
            flagged = conf.loc[conf["is_confounder"], "column"].tolist()
            lines.append(f"  likely confounders: {', '.join(flagged) if flagged else 'none'}")
        lines.append("  timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()
                                               if isinstance(v, float)))
    return "\n".join(lines)


COMMANDS = [_add_demo, _add_ingest, _add_info, _add_analyze]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m curation",
                                description="Curate medical image-text datasets from precomputed embeddings.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except CurationError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted; nothing was written.", file=sys.stderr)
        return 130
