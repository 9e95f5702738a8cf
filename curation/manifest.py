"""Export a selection: the manifest a training job reads, its sidecar, and the dropped samples.

Formats: Parquet (default), CSV, JSONL, and open_clip's training CSV (``filepath`` and ``title``,
tab-separated, as ``open_clip``'s ``--csv-separator`` default expects). Beside the manifest
``<stem>.sidecar.json`` (schema and software version, dataset fingerprint, analysis run, the
config, counts, impact metrics, the manifest's content hash) and ``<stem>.dropped.parquet``
(every pool sample not selected, with its reason).

Every file is written to a temporary name in the target folder and renamed into place, so no
half-written manifest ever exists at the target path. The manifest depends only on the dataset
and the config: the same inputs give byte-identical files, and ``--from SIDECAR`` reproduces it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from curation import __version__
from curation import schema as S
from curation import id_sets
from curation.atomic import replace_set, temp_name
from curation.errors import CurationError, StateError
from curation.pairs import iter_samples, split_key

SIDECAR_VERSION = 1
FORMATS = ("parquet", "csv", "jsonl", "openclip", "datacomp", "webdataset")
#: the file suffix each format is written with, and the formats a suffix means
EXTENSIONS = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl", "openclip": ".tsv", "datacomp": ".npy",
              "webdataset": ".json"}
SUFFIX_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".tsv": "openclip", ".npy": "datacomp",
                  ".json": "webdataset"}
#: columns of tar-sourced samples (``embed --webdataset``) that every manifest carries
TAR_COLUMNS = ("source_tar", "image_member")
WDS_SHARD_SIZE = 10_000
URL_PREFIXES = ("http://", "https://", "s3://", "gs://", "hf://", "az://", "ftp://")


def is_url(value) -> bool:
    """Whether an image value is a URL (kept as it is: never joined to the image root)."""
    return isinstance(value, str) and value.lower().startswith(URL_PREFIXES)


def datacomp_uids(uids, file=None):
    """DataComp's subset format: the 128-bit hex uids as a sorted structured array of two uint64
    (``np.dtype("u8,u8")``: high then low 64 bits), as its filtering track reads with ``np.load``.
    A value that is not 32 hex digits is refused with its row."""
    import re

    vals = [str(u).strip().lower() for u in uids]
    for i, u in enumerate(vals):
        if not re.fullmatch(r"[0-9a-f]{32}", u):
            raise CurationError(f"the DataComp format needs 32-hex-digit uids; row {i} of the subset has {u!r}. "
                                f"Fix: ingest with the uid as the id (or a 'uid' column), or use another --format.")
    out = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in vals], dtype=np.dtype("u8,u8"))
    out.sort(order=["f0", "f1"])
    return out


def format_for(out: str | Path, fmt: str | None = None) -> str:
    """The format of a manifest written to ``out``: ``fmt`` when given, else the one its suffix
    names (:data:`SUFFIX_FORMATS`). An unknown suffix without ``fmt`` is refused: writing Parquet
    under ``x.npy`` would mislead every reader."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise CurationError(f"unknown format {fmt!r}. Fix: use one of {', '.join(FORMATS)}.")
        return fmt
    suffix = Path(str(out)).suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    raise CurationError(f"--out {out}: the suffix {suffix or '(none)'} names no manifest format. Fix: end the "
                        f"name with {', '.join(SUFFIX_FORMATS)}, or pass --format ({', '.join(FORMATS)}).")


SIDE_SUFFIXES = (".sidecar.json", ".dropped.parquet")


def paths_for(out: str | Path) -> dict[str, Path]:
    """The three files of one export, named from the manifest's *whole* file name:
    ``v1.2.parquet`` -> ``v1.2.parquet.sidecar.json`` and ``v1.2.parquet.dropped.parquet``, so two
    exports (other names, or one name in two formats) never share a side file."""
    out = Path(out)
    return {"manifest": out, "sidecar": out.with_name(out.name + SIDE_SUFFIXES[0]),
            "dropped": out.with_name(out.name + SIDE_SUFFIXES[1])}


def default_name(dataset: str, run_id: str, cfg) -> str:
    """An export name that says what it holds: dataset, analysis run and budget (never a shared
    ``subset``), e.g. ``demo-3f2a9c1b07de-b0.25``."""
    run = run_id.split("-", 1)[-1]
    return f"{dataset}-{run}-b{cfg.budget}"


def _is_duckdb(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return head[8:12] == b"DUCK"


def check_out(out, dataset_path=None, overwrite: bool = False) -> dict[str, Path]:
    """Check an export target before anything is written; returns :func:`paths_for`.

    Refused: an empty name; a directory; anything that is not a regular file (``/dev/null``, a
    FIFO); the dataset itself or any DuckDB file; a name that is one of an export's side files
    (``*.sidecar.json``, ``*.dropped.parquet``); an existing manifest or side file unless
    ``overwrite``; a folder that cannot be created or written.
    """
    if out is None or not str(out).strip():
        raise CurationError("--out is empty. Fix: name the manifest file, e.g. data/exports/subset.parquet.")
    p = paths_for(out)
    target = Path(out)
    longest = len(f".{target.name}{max(SIDE_SUFFIXES, key=len)}.tmp-{os.getpid()}-00000000".encode())
    if longest > 255:  # NAME_MAX of every common file system; the side files and temporaries add to it
        raise CurationError(f"--out name {target.name[:40]}... is too long ({len(target.name.encode())} bytes; the "
                            f"side files need {longest - len(target.name.encode())} more, and names stop at 255). "
                            f"Fix: choose a shorter name.")
    if str(out).endswith(("/", os.sep)) or target.is_dir():
        raise CurationError(f"--out {out} is a directory. Fix: name a file inside it, e.g. {target / 'subset.parquet'}.")
    if target.name.endswith(SIDE_SUFFIXES):
        raise CurationError(f"--out {out} is named like an export's side file ({', '.join(SIDE_SUFFIXES)}); "
                            f"writing it would clobber another export's sidecar. Fix: choose another name.")
    if dataset_path is not None:
        ds = Path(dataset_path).resolve()
        # the dataset's own side files: DuckDB's write-ahead log and temporary folder, our temporary
        # writes; DuckDB would take an export named like its WAL for its log and delete it
        own = {ds, ds.with_name(ds.name + ".wal"), ds.with_name(ds.name + ".tmp")}
        for f in p.values():
            try:
                hit = f.resolve() in own or f.name.startswith(f".{ds.name}.tmp-") and f.resolve().parent == ds.parent
            except (OSError, RuntimeError):
                hit = False
            if hit:
                raise CurationError(f"--out {out} is the dataset itself or one of its side files ({f.name}: {ds.name}'s "
                                    f"file or .wal log); the export would replace it, or DuckDB would take it for "
                                    f"its log and delete it. Fix: write the manifest elsewhere, e.g. "
                                    f"data/exports/subset.parquet.")
    if target.name.endswith((".duckdb.wal", ".wal")) and Path(str(target)[:-4]).is_file() \
            and _is_duckdb(Path(str(target)[:-4])):
        raise CurationError(f"--out {out} is named like the write-ahead log of the DuckDB file "
                            f"{Path(str(target)[:-4]).name}; DuckDB would take it for its log. Fix: choose another name.")
    for role, f in p.items():
        if not f.exists() and not f.is_symlink():
            continue
        if not f.is_file():
            raise CurationError(f"{role} target {f} exists and is not a regular file (a device, a folder, a "
                                f"pipe...); refused. Fix: choose another --out.")
        if _is_duckdb(f):
            raise CurationError(f"{role} target {f} is a DuckDB database (a dataset?); refused. "
                                f"Fix: choose another --out.")
        if not overwrite:
            raise CurationError(f"{role} file {f} already exists. Fix: pass --overwrite to replace this export, "
                                f"or choose another --out.")
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CurationError(f"cannot create the folder {parent} for --out: {e.strerror}. Fix: choose a "
                            f"writable location.") from None
    if not os.access(parent, os.W_OK):
        raise CurationError(f"the folder {parent} is not writable. Fix: choose a writable location for --out.")
    return p


def check_columns(names, columns) -> list[str]:
    """The metadata columns asked for with ``--columns``, checked against the dataset's ``names``."""

    if not columns:
        return []
    bad = [c for c in columns if c not in names]
    if bad:
        raise CurationError(f"--columns: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a column of the "
                            f"dataset. Fix: use some of {', '.join(n for n in names if n not in (S.ID,))}.")
    return list(dict.fromkeys(columns))


def metadata_names(columns, taken) -> dict:
    """{metadata column: its name in the manifest}. A metadata column keeps its name unless the
    manifest has a column of that name (``rank``, ``reason``...); then it is ``meta_<name>``,
    with more ``meta_`` in front until the name is free, so no two columns ever share a name
    (``--columns meta_rank,rank`` gives ``meta_rank`` and ``meta_meta_rank``)."""
    taken = set(taken)
    out = {c: c for c in columns if c not in taken}
    taken |= set(out)
    for c in columns:
        if c in out:
            continue
        name = f"meta_{c}"
        while name in taken:
            name = f"meta_{name}"
        out[c] = name
        taken.add(name)
    return {c: out[c] for c in columns}


def build_frames(store, inp, result, cfg, run_id: str, columns=()):
    """(kept, dropped) DataFrames: kept in rank order with the scores the decision used, plus the
    tar columns of tar-sourced samples and the metadata ``columns`` asked for."""
    import pandas as pd


    names = [n for n, _ in store.columns()]
    extra = [c for c in (*TAR_COLUMNS, *check_columns(names, columns)) if c in names]
    extra = [c for c in dict.fromkeys(extra) if c not in (S.ID, S.IMAGE, S.CAPTION, "uid")]
    base_cols = [c for c in (S.ID, S.IMAGE, S.CAPTION, "uid") if c in names] + extra
    base = store.samples(base_cols)
    root = store.image_root()
    # the root is resolved once and each path joined and normalised as text: resolving every file
    # (an lstat per path component) took 52 us a row against 1.5 us (4,000 demo rows: 210 ms vs
    # 6 ms; about a minute per export at a million rows). An absolute path in the data is only
    # normalised; symlinks below the root are no longer resolved (the path still names the file).
    root = str(root.resolve()) if root is not None else None
    n = inp.n  # every analysis value the manifest carries is already in ``inp``
    frame = pd.DataFrame({
        "id": base[S.ID].astype(str),
        "image": base[S.IMAGE] if S.IMAGE in base else None,
        "image_path": ([p if is_url(p) else os.path.normpath(os.path.join(root, p)) if isinstance(p, str)
                        and root is not None else p for p in base[S.IMAGE]] if S.IMAGE in base else None),
        "caption": base[S.CAPTION] if S.CAPTION in base else None,
        "rank": result.rank(n),
        # text columns as object arrays whose rows share one str per value (a reason, a band, an
        # explanation): `.astype(str)` made a fixed-width copy (the details' widest, 4 bytes a
        # character) and then a new str per row; the values and the written bytes are the same
        "reason": result.reason,
        "detail": result.details(inp, cfg),  # an object array of str
        "stratum": np.asarray(result.stratum_labels, dtype=object)[result.stratum],
        "prototype": inp.prototype.astype(np.int64),
        "band": _band_text(inp),
        "fps_rank": inp.fps_rank.astype(np.int64),
        "proto_dist": inp.proto_dist.astype(np.float64),
        "tail_score": inp.tail_score.astype(np.float64),
    })
    for axis, v in inp.scores.items():
        frame[f"{axis}_score"] = v
    if "uid" in base:  # DataComp and other pools that carry a uid beside the id
        frame["uid"] = base["uid"].astype(str)
    for c, name in metadata_names(extra, frame.columns).items():
        frame[name] = base[c].to_numpy()
    kept = frame.iloc[result.selected].reset_index(drop=True)
    dropped_rows = np.setdiff1d(np.arange(n), result.selected)
    dropped = frame.iloc[dropped_rows].drop(columns=["rank"]).reset_index(drop=True)
    return kept, dropped


def _band_text(inp) -> np.ndarray:
    """The bands as an object array of one str per band (from the inputs' band codes: 0 core,
    1 tail, anything else 2, checked to be "outlier")."""
    if (inp.band[inp.band_code == 2] != "outlier").any():
        return inp.band.astype(str).astype(object)
    return np.asarray(["core", "tail", "outlier"], dtype=object)[inp.band_code]


def check_image_files(df, allow_missing: bool = False) -> list[str]:
    """For the open_clip format: manifest rows whose ``image_path`` is not an existing file (a URL
    is not a file either). Refused unless ``allow_missing``; returns the missing paths."""
    if "source_tar" in df and df["image_path"].isna().any():
        raise CurationError("these samples live inside WebDataset tars (no image files), which open_clip's CSV "
                            "loader cannot read. Fix: use --format webdataset --reshard: it writes new tars of the "
                            "subset for open_clip's --dataset-type webdataset.")
    paths = df["image_path"].tolist() if "image_path" in df else []
    missing = [str(p) for p in paths if not (isinstance(p, str) and not is_url(p) and Path(p).is_file())]
    if missing and not allow_missing:
        raise CurationError(f"{len(missing)} of {len(paths)} image files of the subset do not exist (first: "
                            f"{missing[0]}); open_clip's trainer would stop at the first. Fix: ingest with the right "
                            f"--image-root, or pass --allow-missing to write them anyway.")
    return missing


def _write_table(df, path: Path, fmt: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "parquet":
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, compression="zstd")
    elif fmt == "csv":
        df.to_csv(path, index=False, lineterminator="\n")
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    elif fmt == "datacomp":
        uids = df["uid"] if "uid" in df else df["id"]
        with open(path, "wb") as f:
            np.save(f, datacomp_uids(uids), allow_pickle=False)
    elif fmt == "webdataset":
        path.write_text(json.dumps(webdataset_keys(df), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    elif fmt == "openclip":
        if df["image_path"].isna().any():
            raise CurationError("the open_clip format needs an image path for every sample; this dataset "
                                "has samples without one. Fix: use --format parquet.")
        out = df[["image_path", "caption"]].rename(columns={"image_path": "filepath", "caption": "title"})
        out["title"] = out["title"].fillna("").str.replace(r"[\t\r\n]+", " ", regex=True)
        out.to_csv(path, index=False, sep="\t", lineterminator="\n")
    else:
        raise CurationError(f"unknown format {fmt!r}. Fix: use one of {', '.join(FORMATS)}.")


def webdataset_keys(df) -> dict:
    """The WebDataset subset manifest: per source tar, the keys of the kept samples (as a loader
    sees them: ``__key__``), in the manifest's order."""

    if "source_tar" not in df or df["source_tar"].isna().any():
        raise CurationError("the webdataset format is for samples embedded from WebDataset tars (they carry "
                            "source_tar and image_member); this dataset's samples are image files. Fix: use "
                            "--format openclip or parquet.")
    tars: dict[str, list] = {}
    for tar, member in zip(df["source_tar"], df["image_member"]):
        tars.setdefault(str(tar), []).append(split_key(str(member))[0])
    return {"format": "curation-webdataset-subset", "version": 1, "samples": int(len(df)),
            "tars": [{"tar": t, "keys": k} for t, k in tars.items()]}


def reshard_files(out: str | Path) -> list[Path]:
    """Tars an earlier ``--reshard`` export to ``out`` wrote (``NAME-000000.tar``...)."""
    import re

    out = Path(out)
    pat = re.compile(rf"{re.escape(out.stem)}-\d{{6}}\.tar")
    return sorted(f for f in out.parent.glob(f"{out.stem}-*.tar") if pat.fullmatch(f.name)) if out.parent.is_dir() else []


def write_reshard(df, out: str | Path, shard_size: int = WDS_SHARD_SIZE, progress=None) -> dict:
    """New tars holding only the kept samples, ``NAME-000000.tar``... beside the manifest.

    Every member of a kept sample (image, caption, json...) is copied byte for byte with its tar
    header; members are renamed to the sample's id (``<id>.<suffix>``), which is unique across
    source tars, so the new shards' ``__key__`` is the manifest id. Samples are written in
    source-tar order (one sequential read per source tar). Returns the record the sidecar keeps.
    """
    import copy
    import io
    import tarfile


    if shard_size < 1:
        raise CurationError(f"--reshard {shard_size}: samples per tar must be >= 1.")
    out = Path(out)
    stem = out.stem
    want: dict[str, dict[str, str]] = {}
    for sid, tar, member in zip(df["id"], df["source_tar"], df["image_member"]):
        want.setdefault(str(tar), {})[split_key(str(member))[0]] = str(sid)
    for tar in want:
        if not Path(tar).is_file():
            raise CurationError(f"source tar {tar} of the subset is missing. Fix: make the tars `embed` read available "
                                f"at that path (or export --format webdataset without --reshard).")
    files, counts, written = [], [], 0
    old = set(reshard_files(out))
    state = {"tf": None, "n": 0}

    def start():
        name = out.with_name(f"{stem}-{len(files):06d}.tar")
        tmp = temp_name(name)
        state.update(tf=tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT), n=0, name=name, tmp=tmp)

    def close():
        if state["tf"] is not None:
            state["tf"].close()
            os.replace(state["tmp"], state["name"])
            files.append(state["name"])
            counts.append(state["n"])
            state["tf"] = None

    try:
        for tar, keys in want.items():
            with open(tar, "rb") as raw:
                for key, members, problem in iter_samples(Path(tar)):
                    if key not in keys or problem:
                        continue
                    if state["tf"] is None or state["n"] >= shard_size:
                        close()
                        start()
                    for suffix, m in members.items():
                        info = copy.copy(m)
                        info.name = f"{keys[key]}.{suffix}"
                        raw.seek(m.offset_data)
                        state["tf"].addfile(info, io.BytesIO(raw.read(m.size)))
                    state["n"] += 1
                    written += 1
                    if progress:
                        progress(written, len(df))
        close()
    except OSError as e:
        raise CurationError(f"cannot write the resharded tars beside {out}: {e.strerror or e}. Fix: free disk "
                            f"space or choose a writable location.") from None
    finally:
        if state["tf"] is not None:
            state["tf"].close()
            Path(state["tmp"]).unlink(missing_ok=True)
    if written != len(df):
        raise CurationError(f"only {written} of {len(df)} kept samples were found in their source tars; the tars "
                            f"changed since `embed` read them. Fix: re-embed and re-ingest from the current tars.")
    for f in old - set(files):  # a smaller re-export: no stale shard of the last one stays behind
        f.unlink()
    n = len(files)
    return {"pattern": str(out.with_name(f"{stem}-{{000000..{n - 1:06d}}}.tar")), "files": [f.name for f in files],
            "samples_per_tar": counts, "samples": written,
            "sha256": [file_hash(f) for f in files]}


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(store, inp, result, cfg, run_id: str, out: str | Path, fmt: str = "parquet",
           impact: dict | None = None, overwrite: bool = False, warnings: list | None = None,
           allow_missing: bool = False, columns=(), reshard: int | None = None) -> dict:
    """Write manifest, dropped file and sidecar atomically; return the sidecar as a dict.

    The target is checked first (:func:`check_out`): an existing export is replaced only with
    ``overwrite``, and nothing is written when a check fails. ``columns`` are metadata columns
    the manifest carries; ``reshard`` (webdataset format) writes new tars of the kept samples,
    that many per tar.
    """

    if fmt not in FORMATS:
        raise CurationError(f"unknown format {fmt!r}. Fix: use one of {', '.join(FORMATS)}.")
    if reshard is not None and fmt != "webdataset":
        raise CurationError("--reshard writes WebDataset tars. Fix: add --format webdataset (or end --out in .json).")
    if columns and fmt in ("datacomp", "webdataset"):
        raise CurationError(f"--columns: the {fmt} format holds only {'uids' if fmt == 'datacomp' else 'keys'}. "
                            f"Fix: drop --columns, or use --format parquet / csv / jsonl.")
    p = check_out(out, store.path, overwrite)
    earlier = reshard_files(out) if reshard is not None and not overwrite else []
    if earlier:
        raise CurationError(f"resharded tars of an earlier export exist ({earlier[0]}...). Fix: pass "
                            f"--overwrite to replace this export, or choose another --out.")
    kept, dropped = build_frames(store, inp, result, cfg, run_id, columns)
    missing = check_image_files(kept, allow_missing) if fmt == "openclip" else []
    if fmt == "webdataset":
        webdataset_keys(kept)  # refuses a pool of image files before anything is written
    shards = write_reshard(kept, p["manifest"], reshard) if reshard is not None else None
    # all three files are written to temporary names first, then moved into place as one set with
    # the sidecar last (atomic.replace_set): the sidecar records the manifest's sha256, so a reader
    # (and `select --from`) can tell a complete export from an interrupted one
    tmps = {role: temp_name(p[role]) for role in ("dropped", "manifest", "sidecar")}
    try:
        _write_temp(p["manifest"], tmps["manifest"], lambda t: _write_table(kept, t, fmt))
        _write_temp(p["dropped"], tmps["dropped"], lambda t: _write_table(dropped, t, "parquet"))
        sidecar = {
            "sidecar_version": SIDECAR_VERSION, "software_version": __version__,
            "dataset": {"name": store.name, "path": str(store.path.resolve()), "fingerprint": store.fingerprint},
            "analysis_run": run_id, "config": cfg.to_dict(), "format": fmt, "columns": list(columns or []),
            "rules": id_sets.describe(store, [*cfg.exclude_sets, *cfg.include_sets]),
            **({"reshard": {"size": reshard, **shards}} if shards else {}),
            "manifest": {"file": p["manifest"].name, "sha256": file_hash(tmps["manifest"]), "rows": len(kept)},
            "dropped": {"file": p["dropped"].name, "rows": len(dropped), "sha256": file_hash(tmps["dropped"])},
            "summary": {k: v for k, v in result.summary.items() if k != "strata"},
            "strata": result.summary["strata"],
            "impact": impact or {},
            "warnings": list(warnings or []) + ([f"{len(missing)} image files do not exist (written anyway: "
                                                  f"--allow-missing), first {missing[0]}"] if missing else []),
        }
        _write_temp(p["sidecar"], tmps["sidecar"], lambda t: t.write_text(
            json.dumps(sidecar, indent=2, sort_keys=True, default=_json_default) + "\n"))
        replace_set({p[r]: tmps[r] for r in ("dropped", "manifest", "sidecar")}, stale_first=[p["sidecar"]])
    finally:
        for t in tmps.values():
            if t.exists():
                t.unlink()
    return sidecar


def _write_temp(target: Path, tmp: Path, write) -> None:
    """``write(tmp)``; a failing file system becomes one error naming ``target``."""
    try:
        write(tmp)
    except OSError as e:
        raise CurationError(f"cannot write {target}: {e.strerror or e}. Nothing was replaced. Fix: free disk space "
                            f"or choose a writable location.") from None


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if np.isnan(o) else float(o)
    raise TypeError(type(o))


def read_sidecar(path: str | Path) -> dict:
    """Load a sidecar; old sidecar versions keep loading, unknown newer ones are refused."""
    p = Path(path)
    if not p.is_file():
        raise CurationError(f"sidecar {p} not found. Fix: pass the <stem>.sidecar.json written by `select`.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CurationError(f"sidecar {p} is not UTF-8 text ({e.reason} at byte {e.start}). Fix: pass the "
                            f"sidecar `select` wrote.") from None
    except json.JSONDecodeError as e:
        raise CurationError(f"sidecar {p} is not valid JSON: {e}. Fix: pass the sidecar `select` wrote.") from None
    if not isinstance(data, dict):
        raise CurationError(f"sidecar {p} is a JSON {type(data).__name__}, not an object. Fix: pass the sidecar "
                            f"`select` wrote.")
    v = data.get("sidecar_version")
    if not isinstance(v, int) or v > SIDECAR_VERSION:
        raise CurationError(f"sidecar {p} has version {v!r}; this tool reads up to {SIDECAR_VERSION}. "
                            f"Fix: upgrade curation.")
    for key in ("dataset", "config", "analysis_run"):
        if key not in data:
            raise CurationError(f"sidecar {p} lacks '{key}'. Fix: re-export the selection.")
    ds = data["dataset"]
    if not isinstance(ds, dict) or not isinstance(ds.get("path"), str) or not isinstance(ds.get("fingerprint"), str):
        raise CurationError(f"sidecar {p}: 'dataset' must be an object with text 'path' and 'fingerprint'. "
                            f"Fix: re-export the selection.")
    if not isinstance(data["analysis_run"], str) or not data["analysis_run"]:
        raise CurationError(f"sidecar {p}: 'analysis_run' must be a run id. Fix: re-export the selection.")
    if not isinstance(data["config"], dict):
        raise CurationError(f"sidecar {p}: 'config' must be a JSON object. Fix: re-export the selection.")
    return data


def check_fingerprint(store, sidecar: dict) -> None:
    want = sidecar["dataset"]["fingerprint"]
    if store.fingerprint != want:
        raise StateError(f"dataset {store.path} has changed since this selection was exported "
                         f"(fingerprint {store.fingerprint}, the sidecar expects {want}); the manifest "
                         f"cannot be reproduced from it. Fix: use the dataset the sidecar names.")
