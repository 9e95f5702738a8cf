"""``python -m curation <command>``: a thin argparse face on the library.

Every command prints one clear error and exits non-zero on bad input (exit code 2), and never
leaves a half-written dataset behind.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
from pathlib import Path

from curation import (analysis, cli_args, demo, embed, embed_ray, id_sets, ingest, inspect, manifest, reward,
                      selection, store, tables, vector_io, workflows)
from curation.errors import CurationError, InterruptedAfterWrite
from curation.selection import SelectionConfig

EXIT_INPUT = 2


def cmd_demo(a) -> int:
    if Path(a.db).exists() and not a.replace:
        raise CurationError(f"dataset {a.db} already exists. Fix: pass --replace to rebuild it.")
    if a.rows < 1000:
        raise CurationError(f"--rows {a.rows} is too small for the demo. Fix: use --rows 1000 or more.")
    k = 40 if a.rows >= 8000 else max(8, a.rows // 200)
    spec = demo.DemoSpec(n_rows=a.rows, seed=a.seed, dim=a.dim, n_clusters=k)
    t = time.time()
    fp = demo.build(a.db, spec, replace=a.replace, images=not a.no_images)
    print(f"demo dataset written to {a.db}: {a.rows} pairs, fingerprint {fp} ({time.time() - t:.1f} s)")
    if a.ratings:
        demo.planted_ratings(a.db, a.ratings_n, seed=a.seed).to_csv(a.ratings, index=False)
        print(f"planted ratings of {min(a.ratings_n, a.rows)} pairs written to {a.ratings}")
    return 0


def cmd_ingest(a) -> int:
    t = time.time()
    column_types = tables.parse_column_types(a.column_types)
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
    fp = ingest.ingest(a.db, inp, replace=a.replace, image_model=a.image_model, text_model=a.text_model,
                       shared_space=a.shared_space, case_column=a.case_column, label_column=a.label_column,
                       column_types=column_types, label_columns=_split_list(a.label_columns),
                       vector_layout=a.vector_layout, vector_dtype=a.vector_dtype, shard_rows=a.shard_rows)
    dims = {k: (v.shape[1] if v is not None else None) for k, v in inp.vectors.items()}
    with store.open_store(a.db) as s:
        where = vector_io.describe(s.meta.get("vectors"))
    print(f"ingested {inp.samples.num_rows} samples into {a.db} (image dim {dims['image']}, "
          f"text dim {dims['text']}; vectors {where}), fingerprint {fp} ({time.time() - t:.1f} s)")
    return 0


def cmd_embed(a) -> int:
    if a.offline:
        embed.set_offline()

    if a.image_root and not a.captions:
        raise CurationError("--image-root goes with --captions. Fix: drop it (tar shards hold their images).")
    if a.ingest and Path(a.ingest).exists() and not a.replace:
        raise CurationError(f"dataset {a.ingest} already exists. Fix: pass --replace, or another --ingest path.")
    cfg = embed.EmbedConfig(model=a.model, pretrained=a.pretrained, batch_size=a.batch_size, workers=a.workers,
                            device=a.device, precision=a.precision, out_dtype=a.dtype, shard_size=a.shard_size)
    cfg.check()
    if a.captions:
        pairs = embed.TablePairs(a.captions, a.image_root, id_column=a.id_column,
                                 image_column=a.image_path_column, caption_column=a.caption_column)
    else:
        pairs = embed.TarPairs(a.webdataset)
    if a.backend == "ray":

        rec = embed_ray.embed_ray(pairs, a.out, cfg, address=a.address, concurrency=a.concurrency,
                                  gpus_per_actor=a.gpus_per_actor, overwrite=a.overwrite, progress=not a.quiet)
    else:
        if a.address or a.concurrency or a.gpus_per_actor:
            raise CurationError("--address/--concurrency/--gpus-per-actor go with --backend ray.")
        rec = embed.embed(pairs, a.out, cfg, overwrite=a.overwrite, progress=not a.quiet)
    print(f"{rec['embedded']:,} pairs embedded into {a.out} with {rec['model']} "
          f"({rec['device']}, {rec['precision']}, stored {rec['out_dtype']}); "
          f"{rec['pairs_per_s_last_run'] or 0:.1f} pairs/s this run")
    if rec["skipped"]:
        rows = embed.skipped_report(a.out)
        print(f"{rec['skipped']:,} pairs skipped (listed in {Path(a.out) / 'skipped'}/), e.g.:")
        for rid, reason in rows[:5]:
            print(f"  {rid}: {reason}")
    if not rec["complete"]:
        print("not complete: run the same command again to finish (finished shards are kept).")
        return 1
    if a.ingest:

        inp = ingest.read_clip_retrieval(a.out)
        fp = ingest.ingest(a.ingest, inp, replace=a.replace)
        print(f"ingested {inp.samples.num_rows:,} samples into {a.ingest}, fingerprint {fp}")
    return 0


def cmd_reward_annotate(a) -> int:
    import os


    counts = reward.annotate(a.db, a.endpoint, a.model, a.sample, seed=a.seed, concurrency=a.concurrency,
                             retries=a.retries, timeout=a.timeout, api_key=os.environ.get(a.api_key_env),
                             progress=not a.quiet)
    print(f"rated {counts['rated']} pairs ({counts['malformed']} malformed answers after retries, "
          f"{counts['no_image']} without a readable image); {counts['total']} pairs rated by {a.model} in all "
          f"(prompt {reward.PROMPT_VERSION})")
    if counts["no_image"]:
        print(f"note: {counts['no_image']} pairs were not sent (their image could not be read) and are not stored; "
              f"fix the images (see `python -m curation show DB ID`) and rerun to rate them.", file=sys.stderr)
    return 0


def cmd_reward_train(a) -> int:
    if not 0.05 <= a.test_fraction <= 0.5:
        raise CurationError(f"--test-fraction {a.test_fraction}: use a value in [0.05, 0.5].")
    cfg = reward.RewardConfig(epochs=a.epochs, test_fraction=a.test_fraction, seed=a.seed)
    axes = [x.strip() for x in a.axes.split(",") if x.strip()] if a.axes else None
    res = reward.train(a.db, a.ratings, axes, cfg, progress=not a.quiet)
    print(f"reward model {res['model_id']} trained on {res['n_ratings']} ratings from {res['source']} "
          f"({res['seconds']:.1f} s); held out {'by case' if res['grouped_by_case'] else 'at random'}:")
    for axis, m in res["metrics"].items():
        print(f"  {axis:<14} Pearson r = {m['r']:.3f}  ({m['n_train']} train / {m['n_test']} held out)")
    print(f"next: python -m curation reward score {a.db}")
    return 0


def cmd_reward_score(a) -> int:
    res = reward.score(a.db, a.model_id, progress=not a.quiet)
    print(f"scored {res['n']:,} samples with {res['model_id']}; columns "
          + ", ".join(f"reward_{x}, reward_{x}_score" for x in res["axes"]))
    for axis, m in res["summary"].items():
        print(f"  {axis:<14} mean {m['mean']:.2f}  p10 {m['p10']:.2f}  p90 {m['p90']:.2f}")
    print("gate on them with `select --gate reward_<axis>:top=0.9` (or the sliders in the app).")
    return 0


def cmd_info(a) -> int:
    print(json.dumps(workflows.describe(a.db).facts(), indent=2))
    return 0


def cmd_analyze(a) -> int:
    from tqdm import tqdm


    if a.address and a.backend != "ray":
        raise CurationError("--address goes with --backend ray. Fix: add --backend ray, or drop --address.")
    if a.label_columns is not None:
        if not workflows.declare_label_columns(a.db, _split_list(a.label_columns)):
            print("note: no label columns declared now (an empty --label-columns clears them).", file=sys.stderr)
    cfg = analysis.AnalysisConfig(space=a.space, k=a.k, seed=a.seed, core_pct=a.core_pct,
                                  tail_pct=a.tail_pct, dedup_eps=a.dedup_eps, knn_k=a.knn_k,
                                  map_fit_max=a.map_fit_max)
    bars: dict = {}

    def progress(step, done, total):
        bar = bars.get(step)
        if bar is None or bar.disable:  # new, or closed while a sub-task (a partition) had its own bar
            for other in bars.values():  # one bar at a time: steps run one after another
                other.close()
            bar = bars[step] = tqdm(total=total, desc=f"{step:<12}", unit="row" if total > 10 else "step",
                                    leave=True, file=sys.stderr, mininterval=0.5)
        bar.update(done - bar.n)

    t = time.perf_counter()
    try:
        run_id = analysis.analyze(a.db, cfg, steps=[s.strip() for s in a.steps.split(",") if s.strip()],
                                  progress=progress, force=a.force, backend=a.backend, address=a.address)
    finally:
        for bar in bars.values():
            bar.close()
    if not bars:
        print(f"analysis {run_id} is already stored ({time.perf_counter() - t:.2f} s); pass --force to recompute.")
    print(workflows.analysis_report(a.db, run_id))
    return 0


def _config_from_args(a, base):
    from dataclasses import replace


    changes = {}
    if a.budget is not None:
        changes["budget"] = selection.parse_budget(a.budget)
    if a.confounders is not None:
        changes["confounders"] = tuple(c.strip() for c in a.confounders.split(",") if c.strip())
    for name in ("mode", "temper", "tail_core_ratio", "outliers", "dedup_eps", "seed"):
        if getattr(a, name) is not None:
            changes[name] = getattr(a, name)
    if a.no_dedup:
        changes["dedup_eps"] = None
    if getattr(a, "fidelity_guard", None) is not None:
        changes["fidelity_guard"] = a.fidelity_guard or None
    if getattr(a, "no_fidelity_guard", False):
        changes["fidelity_guard"] = None
    if a.gate:
        changes["gates"] = tuple(selection.parse_gate(g) for g in a.gate)
    if a.filter:
        changes["filters"] = tuple(selection.parse_filter(f) for f in a.filter)
    if getattr(a, "exclude_cluster", None):
        changes["exclude_clusters"] = selection.parse_cluster_list(a.exclude_cluster)
    return replace(base, **changes)


def cmd_select(a) -> int:
    side = None
    if a.from_sidecar:
        knobs = [flag for flag, given in (
            ("--config", a.config), ("--budget", a.budget),
            ("--confounders", a.confounders), ("--mode", a.mode), ("--temper", a.temper),
            ("--tail-core-ratio", a.tail_core_ratio), ("--outliers", a.outliers), ("--dedup-eps", a.dedup_eps),
            ("--no-dedup", a.no_dedup), ("--fidelity-guard", a.fidelity_guard),
            ("--no-fidelity-guard", a.no_fidelity_guard), ("--gate", a.gate), ("--filter", a.filter),
            ("--seed", a.seed), ("--exclude-cluster", a.exclude_cluster), ("--exclude-ids", a.exclude_ids),
            ("--include-ids", a.include_ids), ("--exclude-set", a.exclude_set), ("--include-set", a.include_set),
            ("--analysis-run", a.analysis_run)) if given not in (None, False, [])]
        if knobs:
            change = next((k for k in knobs if k != "--config"), "--budget")
            raise CurationError(f"--from reproduces the selection its sidecar records; {', '.join(knobs)} would "
                                f"change it. Fix: drop {', '.join(knobs)}, or start from that selection and change "
                                f"it: select DB --config {a.from_sidecar} {change} ...")
        side = manifest.read_sidecar(a.from_sidecar)
        lacking = sorted({"budget", "version"} - set(side["config"]))
        if lacking:
            raise CurationError(f"sidecar {a.from_sidecar}: its config lacks {', '.join(lacking)}; it was edited, and "
                                f"the selection it describes is unknown. Fix: re-export the selection.")
        db, run_id = a.db or side["dataset"]["path"], side["analysis_run"]
        cfg = SelectionConfig.from_dict(side["config"])
        fmt = manifest.format_for(a.out, a.format)  # what --out says, not what the sidecar's export was
        columns = _split_list(a.columns) if a.columns is not None else side.get("columns", [])
        reshard = a.reshard if a.reshard is not None else (side.get("reshard") or {}).get("size") \
            if fmt == "webdataset" else None
    else:
        if not a.db:
            raise CurationError("select needs a dataset (DB) or --from SIDECAR.")
        db, run_id = a.db, a.analysis_run
        if not a.config and a.budget is None:
            raise CurationError("--budget is required (a count such as 5000 or a fraction such as 0.25).")
        cfg = _config_from_args(a, workflows.read_config(a.config) if a.config else SelectionConfig())
        fmt, columns, reshard = manifest.format_for(a.out, a.format), _split_list(a.columns), a.reshard
        manifest.check_out(a.out, db, a.overwrite)  # before any id set is stored
        cfg = workflows.with_id_sets(db, cfg, exclude_file=a.exclude_ids, include_file=a.include_ids,
                                     exclude_names=a.exclude_set, include_names=a.include_set)
    o = workflows.select_and_export(db, cfg, a.out, fmt, run_id=run_id, columns=columns, reshard=reshard,
                                    labels=None if a.label_columns is None else _split_list(a.label_columns),
                                    overwrite=a.overwrite, allow_missing=a.allow_missing, sidecar=side)
    for note in o.notes:  # the app may hold the file open; the export itself is complete
        print(f"note: {note}", file=sys.stderr)
    if o.reproduced:
        print("reproduced: the manifest matches the sidecar's recorded sha256 byte for byte.")
    elif o.mismatch:
        print(f"warning: {o.mismatch}", file=sys.stderr)
    sm, side_out = o.result.summary, o.export.sidecar
    print(f"selected {sm['selected']:,} of {sm['pool']:,} (budget {sm['budget']:,}, eligible {sm['eligible']:,})"
          + (f"; short by {sm['shortfall']:,}: not enough eligible samples" if sm["shortfall"] else ""))
    print("reasons: " + ", ".join(f"{k} {v:,}" for k, v in sorted(sm["reasons"].items())))
    print(o.impact.round(4).to_string())
    print(f"(duplicate_rate measured at eps {o.dedup_eps:g}, the selection's; quality guards: fidelity "
          f"{sm['fidelity_guard']}; caption {sm['caption_guard']})")
    for w in o.warnings:
        print(f"warning: {w}", file=sys.stderr)
    paths = manifest.paths_for(a.out)
    print(f"wrote {a.out} ({o.fmt}, sha256 {side_out['manifest']['sha256'][:16]}...), {paths['sidecar'].name}, "
          f"{paths['dropped'].name}")
    if side_out.get("reshard"):
        r = side_out["reshard"]
        print(f"wrote {len(r['files'])} tar(s), {r['samples']:,} samples: {r['pattern']}\n"
              f"  train with: python -m open_clip_train.main --dataset-type webdataset --train-data "
              f"'{r['pattern']}' --train-num-samples {r['samples']}")
    return 0


def _split_list(text) -> list[str]:
    """``"split, case_id"`` -> ``["split", "case_id"]`` (empty items dropped)."""
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def cmd_evaluate(a) -> int:
    cfg = _config_from_args(a, workflows.read_config(a.config) if a.config else SelectionConfig())
    res = workflows.evaluate(a.db, cfg, a.label, split_column=a.split_column, n_random=a.random,
                             run_id=a.analysis_run)
    split = res["split_column"]
    print(f"label {a.label}: {res['n_train']:,} training rows, {res['n_test']:,} held out "
          f"({'split column ' + split if split else 'case-grouped random 20%'}); subset of {res['budget']:,}; "
          f"{len(res['random'])} random subsets of the same size")
    print(f"rare classes ({len(res['rare_classes'])}): {', '.join(res['rare_classes'][:10])}"
          + (" ..." if len(res["rare_classes"]) > 10 else ""))
    print(res["summary"].round(4).to_string(index=False))
    for note in res["notes"]:
        print(f"note: {note}")
    return 0


def cmd_show(a) -> int:
    if a.neighbours < 0:
        raise CurationError(f"--neighbours {a.neighbours}: use 0 or more.")
    with store.open_store(a.db) as s:
        info = inspect.show(s, a.id, run_id=a.analysis_run, neighbours=a.neighbours)
    if a.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"sample {info['sample'].get('id')} (row {info['row']}, analysis {info['run_id']})")
    for k, v in info["sample"].items():
        if k != "id":
            print(f"  {k}: {v}")
    an = info["analysis"]
    print(f"  cluster {an.get('prototype')} ({an.get('cluster_label') or 'no label'}), band {an.get('band')}")
    for k, v in an.items():
        if k not in ("prototype", "band", "cluster_label"):
            print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"  default selection: {info['reason']}" + (f" ({info['detail']})" if info["detail"] else ""))
    print(f"nearest neighbours ({len(info['neighbours'])}):")
    for nb in info["neighbours"]:
        print(f"  {nb['cosine']:.4f}  {nb['id']}  {nb['caption'] or ''}"[:160])
    return 0


def cmd_search(a) -> int:
    if a.save is not None and not a.save.strip():
        raise CurationError("--save needs a set name, e.g. --save ptx.")
    with store.open_store(a.db) as s:
        hits = inspect.search(s, a.text, a.limit)
        every = inspect.search(s, a.text, s.n_rows) if a.save and len(hits) == a.limit else hits
    for r in hits.itertuples():
        print(f"{r.id}\t{r.caption}")
    print(f"{len(hits)} match(es) shown{f' of {len(every):,}' if len(every) > len(hits) else ''}"
          f"{' (limit reached: --limit N shows more)' if len(hits) == a.limit else ''}", file=sys.stderr)
    if a.save:  # the set holds every match, not only the ones shown
        with store.open_store(a.db, read_only=False) as s:
            ref = id_sets.save(s, a.save, every["row_idx"].to_numpy(), kind="search", meta={"text": a.text})
        print(f"saved {len(every):,} match(es) as id set {ref}", file=sys.stderr)
    return 0


COMMANDS = [cli_args.add_demo, cli_args.add_embed, cli_args.add_ingest, cli_args.add_reward, cli_args.add_info,
            cli_args.add_analyze, cli_args.add_select, cli_args.add_evaluate, cli_args.add_show, cli_args.add_search]
HANDLERS = {"demo": cmd_demo, "embed": cmd_embed, "ingest": cmd_ingest, "reward_annotate": cmd_reward_annotate,
            "reward_train": cmd_reward_train, "reward_score": cmd_reward_score, "info": cmd_info, "analyze": cmd_analyze,
            "select": cmd_select, "evaluate": cmd_evaluate, "show": cmd_show, "search": cmd_search}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m curation",
                                description="Curate medical image-text datasets from precomputed embeddings.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return p


EXIT_INTERNAL = 1
# what an interrupted command leaves behind, said when Ctrl-C stops it
ON_INTERRUPT = {
    "embed": "finished shards are kept; run the same command again to resume.",
    "reward": "ratings received before the interrupt are stored.",
}


def _close_bars() -> None:
    """End any progress bar's line, so an error starts on a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def _safe_streams() -> None:
    """A terminal that cannot show a character (PYTHONIOENCODING=ascii, a latin-1 locale) gets an
    escape for it (``\\xe9``), never a UnicodeEncodeError halfway through a report."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):  # not a text stream we can reconfigure (pytest's capture...)
            pass


def main(argv=None) -> int:
    _safe_streams()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return HANDLERS[args.handler](args) or 0
    except CurationError as e:
        _close_bars()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except InterruptedAfterWrite as e:
        _close_bars()
        print(f"interrupted; {e} (complete), nothing after them.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        _close_bars()
        print(f"interrupted; {ON_INTERRUPT.get(args.command, 'nothing was written.')}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head -1` closed the pipe: not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep Python's exit flush quiet
        except OSError:
            pass
        return 0
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.ENAMETOOLONG):
            return _internal(args, e)
        _close_bars()
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the exit flush must not fail again
        except OSError:
            pass
        print(f"error: cannot write{' ' + repr(e.filename) if e.filename else ' the output'}: {e.strerror}. "
              f"Fix: free disk space, shorten the name, or send the output elsewhere.", file=sys.stderr)
        return EXIT_INPUT
    except MemoryError:
        _close_bars()
        print("error: out of memory. Fix: close other programs, or use a machine with more memory "
              "(the analysis needs about 4x the vectors' size).", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as e:  # a bug, not bad input: say so, and how to report it
        return _internal(args, e)


def _internal(args, e) -> int:
    _close_bars()
    logging.getLogger("curation").debug("internal error", exc_info=True)
    print(f"internal error: {type(e).__name__}: {e}\nThis is a bug in curation, not a problem with your "
          f"input. Please report it with the command you ran; `-v` shows the traceback.", file=sys.stderr)
    if args.verbose:
        import traceback

        traceback.print_exc()
    return EXIT_INTERNAL
