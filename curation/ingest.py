"""Readers for precomputed-embedding inputs -> validated arrays + metadata -> the store.

Three input layouts:

- a metadata table (CSV or Parquet with an id column) plus row-aligned ``.npy`` files
  (:func:`read_metadata_npy`);
- one Parquet file, or a folder of them, with list/array embedding columns beside the metadata
  (:func:`read_parquet_embeddings`);
- a clip-retrieval output folder: ``img_emb/img_emb_{i}.npy``, ``text_emb/text_emb_{i}.npy``,
  ``metadata/metadata_{i}.parquet`` (:func:`read_clip_retrieval`).

Every reader validates everything before anything is written (:func:`validate`), and every
failure is one :class:`~curation.errors.InputError` naming the file, row or column, and the fix.
:func:`ingest` then writes the dataset atomically, so a failed ingest never changes what was stored.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from dataclasses import replace as with_fields  # ingest() has a `replace` flag
from pathlib import Path

import numpy as np

from curation import arrow_io, store
from curation import schema as S
from curation.errors import InputError
from curation.tables import _storable, apply_column_types, read_table_file
from curation.vector_io import release_rows

log = logging.getLogger(__name__)

_CHUNK = 1 << 13  # rows per validation chunk: bounded memory on memory-mapped inputs (float64 norms: 32 MB at 512-d)


@dataclass
class IngestInput:
    """What a reader produces: a samples table and row-aligned vectors, not yet validated.

    Attributes
    ----------
    samples : pyarrow.Table
        ``id`` first, then ``image`` / ``caption`` when present, then metadata columns.
    vectors : dict
        {"image": ndarray (n, d_img) or None, "text": ndarray (n, d_txt) or None}.
    sources : dict
        {"metadata" | "image" | "text": file name} used in error messages.
    image_root : Path or None
        Folder that relative image paths resolve against.
    """

    samples: object
    vectors: dict
    sources: dict = field(default_factory=dict)
    image_root: Path | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)  # what the input says of itself (models, shared space)


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------
# keys of an .npz archive tried for each kind: DataComp's (ViT-L/14, then B/32), then common names
NPZ_KEYS = {"image": ("l14_img", "b32_img", "img_emb", "image_emb", "image", "img"),
            "text": ("l14_txt", "b32_txt", "text_emb", "txt_emb", "text", "txt")}


def load_npy(path: str | Path, kind: str | None = None) -> np.ndarray:
    """A 2-D embedding array (float16/32/64): a ``.npy`` file (memory-mapped), or one array of an
    ``.npz`` archive such as DataComp's embedding files: ``FILE.npz:KEY``, or the first of
    :data:`NPZ_KEYS` for ``kind`` that the archive holds."""
    key = None
    if ":" in str(path) and not Path(str(path)).exists():
        path, key = str(path).rsplit(":", 1)
    p = Path(path)
    if not p.is_file():
        raise InputError("embedding file not found.", file=p, fix="check the path.")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # numpy's errors for a bad header or a truncated file
        raise InputError(f"not a readable .npy array ({e}).", file=p,
                         fix="save embeddings with numpy.save as a 2-D float array.") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive (np.load returns an NpzFile), whatever its name
        keys = list(getattr(arr, "files", []))
        pick = key or next((k for k in NPZ_KEYS.get(kind or "", ()) if k in keys), None)
        if pick is None or pick not in keys:
            raise InputError(f"this is an .npz archive (arrays {', '.join(keys[:6])}), and "
                             + (f"it has no array {key!r}" if key else f"none of its arrays is a known {kind or ''} "
                                f"embedding name ({', '.join(NPZ_KEYS.get(kind or '', ()))})") + ".", file=p,
                             fix=f"name the array: {p}:KEY (e.g. {p}:{keys[0] if keys else 'l14_img'}).")
        arr = arr[pick]
    if arr.ndim != 2:
        raise InputError(f"expected a 2-D array (rows x dim), got shape {arr.shape}.", file=p,
                         fix="reshape to (n_samples, dim) before saving.")
    if arr.dtype.kind != "f":
        raise InputError(f"expected floats, got dtype {arr.dtype}.", file=p,
                         fix="save the embeddings as float32.")
    return arr


def read_metadata_npy(metadata, image_emb=None, text_emb=None, *, id_column=None,
                      image_column=None, caption_column=None, image_root=None) -> IngestInput:
    """Metadata table (CSV/Parquet) plus row-aligned ``.npy`` embedding files."""
    if image_emb is None and text_emb is None:
        raise InputError("no embeddings given.", file=metadata,
                         fix="pass --image-emb FILE.npy and/or --text-emb FILE.npy.")
    cand = [c for c in (id_column, image_column, caption_column) if c] + list(S.ID_CANDIDATES)
    table = read_table_file(metadata, string_columns=cand + list(S.CAPTION_CANDIDATES))
    table = standardize_columns(table, metadata, id_column, image_column, caption_column)
    vectors = {"image": load_npy(image_emb, "image") if image_emb else None,
               "text": load_npy(text_emb, "text") if text_emb else None}
    sources = {"metadata": str(metadata), "image": str(image_emb), "text": str(text_emb)}
    root = Path(image_root) if image_root else Path(metadata).resolve().parent
    return IngestInput(table, vectors, sources, root, source=f"metadata+npy:{Path(metadata).name}")


def read_parquet_embeddings(path, *, image_column=None, text_column=None, id_column=None,
                            image_path_column=None, caption_column=None,
                            image_root=None) -> IngestInput:
    """One Parquet file (or a folder of them) with list/array embedding columns."""
    if not image_column and not text_column:
        raise InputError("no embedding column named.", file=path,
                         fix="pass --image-column NAME and/or --text-column NAME.")
    table = read_table_file(path)
    vectors = {}
    for kind, col in (("image", image_column), ("text", text_column)):
        if not col:
            vectors[kind] = None
            continue
        if col not in table.column_names:
            raise InputError("embedding column not found.", file=path, column=col,
                             fix=f"use one of: {', '.join(table.column_names)}.")
        vectors[kind] = list_column_to_array(table.column(col), path, col)
        table = table.drop_columns([col])
    table = standardize_columns(table, path, id_column, image_path_column, caption_column)
    root = Path(image_root) if image_root else Path(path).resolve().parent
    return IngestInput(table, vectors, {"metadata": str(path), "image": f"{path}:{image_column}",
                                        "text": f"{path}:{text_column}"}, root,
                       source=f"parquet:{Path(path).name}")


def list_column_to_array(col, path, name) -> np.ndarray:
    """Arrow list / large_list / fixed_size_list column of floats -> (n, d) float array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise InputError(f"expected a list/array of floats, got {t}.", file=path, column=name,
                         fix="store each embedding as a list<float> value.")
    if not pa.types.is_floating(t.value_type):
        raise InputError(f"expected float values, got {t.value_type}.", file=path, column=name,
                         fix="store embeddings as float32.")
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError("missing embedding.", file=path, column=name, row=row,
                         fix="drop rows without an embedding or compute it.")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) == 0:
        raise InputError("no rows.", file=path, fix="check that the file holds data.")
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        raise InputError("empty embedding (a list with no values).", file=path, column=name, row=int(empty[0]),
                         fix="compute that embedding or drop the sample.")
    d = int(np.bincount(lengths).argmax())  # the common length: one odd row is that row's fault
    bad = np.flatnonzero(lengths != d)
    if len(bad):
        raise InputError(f"embedding has {lengths[bad[0]]} values where the others have {d}: mixed dimensions.",
                         file=path, column=name, row=int(bad[0]),
                         fix="every embedding in a column must have the same length.")
    values = pc.list_flatten(col)
    return values.to_numpy(zero_copy_only=False).reshape(len(col), d)


def concat_promoting(tables, files=()):
    """One table from shards whose column types differ (int64 in one shard and double in another,
    a column missing from some): numbers promote to the wider type, any other conflict to text,
    and missing columns are null, instead of a type error after an hour of embedding."""
    import pyarrow as pa

    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    kinds: dict[str, set] = {}
    for t in tables:
        for f in t.schema:
            kinds.setdefault(f.name, set()).add(f.type)
    mixed = {n for n, ts in kinds.items() if len({t for t in ts if not pa.types.is_null(t)}) > 1}

    def numeric(ts):
        return all(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t) for t in ts)

    fixed = []
    for t in tables:
        for n in mixed & set(t.column_names):
            i = t.column_names.index(n)
            col = t.column(i)
            try:
                col = col.cast(pa.float64() if numeric(kinds[n]) else pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # nested values: as JSON text
                import json

                col = pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()],
                               pa.string())
            t = t.set_column(i, n, col)
        fixed.append(t)
    try:
        return pa.concat_tables(fixed, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InputError(f"metadata shards cannot be combined ({e}).", file=files[0] if files else None,
                         fix="give every shard the same columns and types.") from None


def read_clip_retrieval(folder, *, id_column=None, image_root=None) -> IngestInput:
    """A clip-retrieval output folder: ``img_emb/``, ``text_emb/`` and ``metadata/`` shards."""
    import pyarrow as pa

    root = Path(folder)
    if not root.is_dir():
        raise InputError("folder not found.", file=root, fix="pass the clip-retrieval output folder.")

    def shards(sub, prefix, ext):
        """{shard number: file} of ``sub/PREFIX_<number>.EXT``; any other file there is refused,
        since pairing by position would give rows another shard's vectors."""
        d = root / sub
        out = {}
        for f in sorted(d.iterdir()) if d.is_dir() else []:
            if f.name.startswith(".") or not f.is_file():
                continue
            m = re.fullmatch(rf"{prefix}_(\d+)\.{ext}", f.name)
            if not m:
                raise InputError(f"unexpected file {f.name}: shards must be named {prefix}_<number>.{ext}.",
                                 file=f, fix="remove or rename it; shards are paired by their number.")
            num = int(m.group(1))
            if num in out:
                raise InputError(f"two shards with number {num} ({out[num].name}, {f.name}).", file=d,
                                 fix="keep one of them.")
            out[num] = f
        return out

    meta_files = shards("metadata", "metadata", "parquet")
    if not meta_files:
        raise InputError("no metadata/*.parquet shards.", file=root / "metadata",
                         fix="point at the folder clip-retrieval wrote (it has metadata/, img_emb/, text_emb/).")
    img_files, txt_files = shards("img_emb", "img_emb", "npy"), shards("text_emb", "text_emb", "npy")
    if not img_files and not txt_files:
        raise InputError("no img_emb/*.npy or text_emb/*.npy shards.", file=root,
                         fix="run clip-retrieval inference with image and/or text embeddings enabled.")
    numbers = sorted(meta_files)
    for sub, files in (("img_emb", img_files), ("text_emb", txt_files)):
        if files and sorted(files) != numbers:
            missing = sorted(set(numbers) - set(files))
            extra = sorted(set(files) - set(numbers))
            raise InputError(f"shard numbers do not match metadata/: {sub} lacks {missing or 'none'}, has extra "
                             f"{extra or 'none'}.", file=root / sub,
                             fix="re-run or remove incomplete shards; every metadata_<n> needs its "
                                 f"{sub}_<n>.")
    tables = []
    for num in numbers:
        mf = meta_files[num]
        t = read_table_file(mf)
        tables.append(t)
        for files in (img_files, txt_files):
            if files:
                rows = load_npy(files[num]).shape[0]
                if rows != t.num_rows:
                    raise InputError(f"shard has {rows} rows, its metadata {mf.name} has {t.num_rows}.",
                                     file=files[num], fix="re-run the shard; embeddings and metadata must align.")
    img_files = [img_files[k] for k in numbers] if img_files else []
    txt_files = [txt_files[k] for k in numbers] if txt_files else []
    table = concat_promoting(tables, [meta_files[k] for k in numbers])
    vectors = {"image": np.concatenate([load_npy(f) for f in img_files]) if img_files else None,
               "text": np.concatenate([load_npy(f) for f in txt_files]) if txt_files else None}
    if id_column is None and not any(c in table.column_names for c in S.ID_CANDIDATES):
        # clip-retrieval writes no id: the image path is one when unique, else the row number
        key = next((c for c in ("image_path", "url") if c in table.column_names), None)
        if key and table.column(key).null_count == 0 and \
                len(set(table.column(key).to_pylist())) == table.num_rows:
            table = table.append_column(S.ID, table.column(key).cast(pa.string()))
        else:
            table = table.append_column(S.ID, pa.array([f"{i:09d}" for i in range(table.num_rows)]))
    table = standardize_columns(table, root / "metadata", id_column, None, None)
    meta, source = {}, f"clip-retrieval:{root.name}"
    info_file = root / "embed_info.json"  # written by `python -m curation embed`
    if info_file.exists():
        info = _read_embed_info(info_file)
        if not info.get("complete"):
            raise InputError("the embed run that wrote this folder has not finished.", file=info_file,
                             fix="run the same `python -m curation embed` command again: it resumes.")
        model = info["model"] + (f" ({info['pretrained']})" if info.get("pretrained") else "")
        meta = {"image_model": model, "text_model": model, "shared_space": True,
                "embed": {k: info.get(k) for k in ("model", "pretrained", "weights_sha256", "out_dtype",
                                                   "input_fingerprint", "embedded", "skipped")}}
        source = f"embed:{root.name}"
        if image_root is None and info.get("image_root"):
            image_root = info["image_root"]
    elif vectors["image"] is not None and vectors["text"] is not None \
            and vectors["image"].shape[1] == vectors["text"].shape[1]:
        # clip-retrieval embeds images and captions with one CLIP model: a shared space
        # (--no-shared-space says otherwise)
        meta = {"shared_space": True}
    return IngestInput(table, vectors, {"metadata": str(root / "metadata"), "image": str(root / "img_emb"),
                                        "text": str(root / "text_emb")},
                       Path(image_root) if image_root else root, source=source, meta=meta)


def _read_embed_info(path: Path) -> dict:
    """``embed_info.json`` checked: a JSON object naming its model, in UTF-8."""
    import json

    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"not valid UTF-8 JSON ({e}).", file=path,
                         fix="restore the file `embed` wrote, or delete it and pass --image-model/--text-model.") from None
    if not isinstance(info, dict):
        raise InputError(f"expected a JSON object, found a {type(info).__name__}.", file=path,
                         fix="restore the file `embed` wrote, or delete it.")
    if not isinstance(info.get("model"), str) or not info["model"]:
        raise InputError("it names no model (the 'model' field).", file=path,
                         fix="restore the file `embed` wrote, or delete it and pass --image-model/--text-model.")
    return info


# ---------------------------------------------------------------------------------------------
# standardisation and validation
# ---------------------------------------------------------------------------------------------
def standardize_columns(table, file, id_column=None, image_column=None, caption_column=None):
    """Rename the id / image / caption columns to ``id``, ``image``, ``caption`` and put them first.

    When not named, the first present of :data:`curation.schema.ID_CANDIDATES` (etc.) is used.
    Metadata columns are kept as they come.
    """
    import pyarrow as pa

    names = table.column_names
    if table.num_rows == 0:
        raise InputError("no rows.", file=file, fix="check that the file holds data.")
    if S.ROW in names:
        raise InputError(f"column name '{S.ROW}' is reserved.", file=file, column=S.ROW,
                         fix="rename that column.")

    def pick(given, candidates, role, required):
        if given:
            if given not in names:
                raise InputError(f"{role} column not found.", file=file, column=given,
                                 fix=f"use one of: {', '.join(names)}.")
            return given
        found = next((c for c in candidates if c in names), None)
        if found is None and required:
            raise InputError(f"no {role} column (looked for {', '.join(candidates)}).", file=file,
                             fix=f"name it with --id-column; columns are: {', '.join(names)}.")
        return found

    chosen = {S.ID: pick(id_column, S.ID_CANDIDATES, "id", True),
              S.IMAGE: pick(image_column, S.IMAGE_CANDIDATES, "image path", False),
              S.CAPTION: pick(caption_column, S.CAPTION_CANDIDATES, "caption", False)}
    cols, fields = [], []
    for std, src in chosen.items():
        if src is None:
            continue
        if src != std and std in names:
            raise InputError(f"both '{src}' and '{std}' exist; '{src}' was chosen as the {std} column.",
                             file=file, column=std, fix=f"rename or drop the '{std}' column.")
        col = table.column(src)
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
        cols.append(col)
        fields.append(std)
    used = {v for v in chosen.values() if v}
    for n in names:
        if n not in used:
            cols.append(table.column(n))
            fields.append(n)
    return pa.table(cols, names=fields)


def validate(inp: IngestInput) -> None:
    """Check ids and vectors; raise one :class:`InputError` for the first problem found.

    Checks: empty input; missing or duplicate ids; row-count mismatch between each embedding file
    and the metadata; NaN, inf and all-zero vectors (reported by row and id).
    """
    import pyarrow.compute as pc

    t = inp.samples
    mfile = inp.sources.get("metadata")
    n = t.num_rows
    if n == 0:
        raise InputError("no rows.", file=mfile, fix="check that the file holds data.")
    ids = t.column(S.ID)
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True)
    if pc.any(empty).as_py():
        row = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
        raise InputError("missing id.", file=mfile, column=S.ID, row=row,
                         fix="give every row a unique id.")
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    del counts, empty
    arrow_io.release_unused_memory()  # the id hash table (100 MB at 1M ids) goes back to the system, not the pool
    if len(dup):
        first = dup.field("values")[0].as_py()
        rows = np.flatnonzero(pc.equal(ids, first).to_numpy(zero_copy_only=False))
        raise InputError(f"duplicate id '{first}' (rows {', '.join(map(str, rows[:5]))}); "
                         f"{len(dup)} id(s) repeat.", file=mfile, column=S.ID, row=int(rows[1]),
                         fix="make ids unique, or drop the repeated rows.")
    id_list = None
    for kind, v in inp.vectors.items():
        if v is None:
            continue
        vfile = inp.sources.get(kind)
        if v.shape[0] != n:
            raise InputError(f"{v.shape[0]} embedding rows but the metadata has {n} rows.", file=vfile,
                             fix=f"embeddings must be row-aligned with {mfile} (one row per sample, same order).")
        if v.shape[1] == 0:
            raise InputError("embeddings have dimension 0.", file=vfile, fix="compute the embeddings.")
        for start in range(0, n, _CHUNK):
            block = np.asarray(v[start : start + _CHUNK])
            finite = np.isfinite(block).all(axis=1)
            nonzero = (block != 0).any(axis=1)
            if finite.all() and nonzero.all():
                _check_float32_range(block, start, kind, vfile, ids)
                release_rows(v, start, start + _CHUNK)  # a memory-mapped input is read once, never held
                continue
            if id_list is None:
                id_list = ids
            bad = int(np.flatnonzero(~finite)[0]) if not finite.all() else None
            if bad is not None:
                r = start + bad
                raise InputError(f"{kind} embedding of id '{id_list[r].as_py()}' contains NaN or inf.",
                                 file=vfile, row=r, fix="recompute that embedding or drop the sample.")
            r = start + int(np.flatnonzero(~nonzero)[0])
            raise InputError(f"{kind} embedding of id '{id_list[r].as_py()}' is all zeros.",
                             file=vfile, row=r, fix="recompute that embedding (all-zero usually means "
                             "the image or caption failed to load) or drop the sample.")


F32_MAX = float(np.finfo(np.float32).max)


def _check_float32_range(block: np.ndarray, start: int, kind: str, vfile, ids) -> None:
    """Vectors are stored as float32 and L2-normalised: refuse a value that overflows float32, and
    a row whose float32 norm is 0 or not finite (values that underflow, or whose squares overflow)."""
    if block.dtype.itemsize > 4:  # only wider floats can exceed float32 (float16 never does)
        big = np.abs(block) > F32_MAX
        if big.any():
            r, c = map(int, np.argwhere(big)[0])
            raise InputError(f"{kind} embedding of id '{ids[start + r].as_py()}' has the value {block[r, c]:g} "
                             f"(dimension {c}), beyond float32's range (about 3.4e38).", file=vfile, row=start + r,
                             fix="recompute that embedding, or rescale the vectors (only directions matter).")
    b32 = block.astype(np.float32, copy=False)
    with np.errstate(over="ignore", under="ignore"):
        norms = np.sqrt(np.einsum("nd,nd->n", b32.astype(np.float64), b32.astype(np.float64)))
    tiny = ~(norms > 1e-30) | (b32 == 0).all(axis=1)
    if tiny.any():
        r = int(np.flatnonzero(tiny)[0])
        raise InputError(f"{kind} embedding of id '{ids[start + r].as_py()}' is zero or too small to normalise "
                         f"in float32 (norm {norms[r]:.3g}).", file=vfile, row=start + r,
                         fix="recompute that embedding (it is effectively all zeros) or drop the sample.")


def check_target(db: Path, inp: "IngestInput | None" = None, replace: bool = False) -> None:
    """Refuse a dataset target that would lose data: an existing file without ``replace``; with
    ``replace``, anything that is not a curation dataset (a folder, an input file, a foreign
    database); a target that is one of the input files."""

    db = Path(db)
    if str(db).endswith(("/", "\\")) or db.is_dir():
        raise InputError("the target is a folder.", file=db, fix="name a file such as data/mydata.duckdb.")
    inputs = []
    for v in (inp.sources.values() if inp is not None else []):
        head = str(v).split(":", 1)[0] if not Path(str(v)).exists() else str(v)
        if head and head != "None" and Path(head).exists():
            inputs.append(Path(head).resolve())
    if db.exists() and db.resolve() in inputs:
        raise InputError("the target is one of the input files; writing it would destroy the input.", file=db,
                         fix="name a new .duckdb file for the dataset.")
    if not db.exists():
        return
    if not replace:
        raise InputError("dataset already exists.", file=db,
                         fix="pass --replace to overwrite it, or choose another path; "
                             "datasets are never merged silently.")
    if not store.is_dataset(db):
        raise InputError("--replace refused: this file is not a curation dataset (no dataset_meta table), "
                         "so replacing it would destroy something else.", file=db,
                         fix="name a new .duckdb file, or delete that file yourself if it is really unwanted.")


def infer_case_column(names, given: str | None = None) -> str | None:
    """The case/patient id column: ``given`` (checked to exist), else the first of
    :data:`curation.schema.CASE_CANDIDATES` among ``names``, else None."""
    names = list(names)
    if given:
        if given not in names:
            raise InputError(f"--case-column '{given}' is not a column.", fix=f"use one of: {', '.join(names)}.")
        return given
    return next((c for c in S.CASE_CANDIDATES if c in names), None)


def check_label_columns(names, labels) -> list[str]:
    """Declared label columns, checked against the dataset's column ``names`` (order kept, once each)."""
    labels = list(dict.fromkeys(c for c in labels if c))
    bad = [c for c in labels if c not in names or c in (S.ID, S.IMAGE, S.CAPTION)]
    if bad:
        raise InputError(f"--label-columns: {', '.join(repr(c) for c in bad)} is not a metadata column.",
                         fix=f"use some of: {', '.join(n for n in names if n not in (S.ID, S.IMAGE, S.CAPTION))}.")
    return labels


def ingest(db, inp: IngestInput, *, replace=False, image_model=None, text_model=None,
           shared_space=None, extra_meta=None, case_column=None, label_column=None, column_types=None,
           label_columns=(), vector_layout="auto", vector_dtype="auto", shard_rows=None) -> str:
    """Validate ``inp`` and write it as the dataset ``db`` atomically. Returns the fingerprint.

    Parameters
    ----------
    db : path-like
        Target ``.duckdb`` file. Existing datasets are refused unless ``replace``.
    shared_space : bool, optional
        True when image and text embeddings come from one CLIP-style model (so an image-text
        cosine means something). Defaults to False: fidelity is then reported as not available.
    case_column : str, optional
        Case/patient id column (duplicates and held-out splits respect it); inferred from
        :data:`curation.schema.CASE_CANDIDATES` when not given.
    vector_layout, vector_dtype : str
        Where the vectors are kept (:func:`curation.vector_io.resolve_layout`; "auto": inside the
        file under 200k rows, float16/float32 shards beside it from there); ``shard_rows`` rows per
        shard (default :data:`curation.vector_io.SHARD_ROWS`).
    label_column, label_columns : str, iterable of str, optional
        Label columns (answers, not inputs): never flagged as confounders, reported by the impact
        table; must exist.
    column_types : dict {column: "text" | "number" | "integer" | "boolean"}, optional
        Types forced on metadata columns (:func:`parse_column_types`). Without it a CSV column is a
        number only when every value comes back unchanged from it (codes with leading zeros and
        numbers too long for their type stay text).

    Models and ``shared_space`` not given are taken from what the input says of itself
    (``inp.meta``: an ``embed`` output folder records its model), as is the embed record.
    """

    if column_types:
        inp = with_fields(inp, samples=apply_column_types(inp.samples, column_types, inp.sources.get("metadata")))
    inp = with_fields(inp, samples=_storable(inp.samples))
    names = inp.samples.column_names
    labels = check_label_columns(names, [*([label_column] if label_column else []), *label_columns])
    extra_meta = {"case_column": infer_case_column(names, case_column), "label_column": labels[0] if labels else None,
                  "label_columns": labels,
                  **(extra_meta or {})}
    image_model = image_model or inp.meta.get("image_model")
    text_model = text_model or inp.meta.get("text_model")
    shared_space = inp.meta.get("shared_space", False) if shared_space is None else shared_space
    if "embed" in inp.meta:
        extra_meta = {"embed": inp.meta["embed"], **(extra_meta or {})}

    db = Path(db)
    check_target(db, inp, replace)
    validate(inp)
    dims = {k: (v.shape[1] if v is not None else None) for k, v in inp.vectors.items()}
    if shared_space and (dims["image"] is None or dims["image"] != dims["text"]):
        raise InputError(f"--shared-space given but image dim {dims['image']} != text dim {dims['text']}.",
                         file=inp.sources.get("image"), fix="drop --shared-space: these come from different encoders.")
    vectors = dict(inp.vectors)  # as read (memory maps stay maps): the store converts block by block
    root = inp.image_root
    if root is not None:
        root = Path(root).resolve()
        try:
            root = root.relative_to(db.resolve().parent)
        except ValueError:
            pass
    meta = {"image_model": image_model, "text_model": text_model,
            "shared_space": bool(shared_space), "source": inp.source,
            "image_root": str(root) if root is not None else None, **(extra_meta or {})}
    return store.create_dataset(db, inp.samples, vectors, meta=meta, replace=replace, vector_layout=vector_layout,
                                vector_dtype=vector_dtype, shard_rows=shard_rows)
