"""Pools of image-caption pairs that ``embed`` reads, on the conventions training loaders use.

- :class:`TablePairs`: a captions table (CSV / TSV / Parquet / JSONL) naming an image path and a
  caption per row, images resolved against an image folder.
- :class:`TarPairs`: WebDataset tar shards, as Open-PMC-style sets are distributed.

Each source cuts the pool into :class:`Shard` s (one output shard each), loads one pair on demand
(:meth:`load`, raising :class:`~curation.errors.PairError` for a pair that cannot be embedded), and
gives the metadata rows of the pairs that were embedded (:meth:`shard_meta`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from curation import schema as S
from curation.errors import CurationError, InputError, PairError
from curation.ingest import standardize_columns
from curation.tables import read_table_file
from curation.images import resolve_image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
CAPTION_EXTS = ("txt", "caption", "cap")
JSON_CAPTION_KEYS = ("caption", "text", "title")


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
@dataclass
class Shard:
    """One unit of output: ``items`` to load and the metadata rows (pyarrow Table) they belong to."""

    index: int
    items: list
    meta: object
    skipped: list = field(default_factory=list)  # (id, reason) found while indexing


class TablePairs:
    """A captions table plus an image folder. Shards are consecutive row ranges of the table."""

    kind = "table"

    def __init__(self, table_path, image_root=None, *, id_column=None, image_column=None,
                 caption_column=None):

        self.path = Path(table_path)
        table = read_table_file(self.path, string_columns=[c for c in (id_column, *S.ID_CANDIDATES) if c])
        table = standardize_columns(table, self.path, id_column, image_column, caption_column)
        for col, opt in ((S.IMAGE, "--image-path-column"), (S.CAPTION, "--caption-column")):
            if col not in table.column_names:
                raise InputError(f"no {col} column.", file=self.path,
                                 fix=f"name it with {opt}; columns are: {', '.join(table.column_names)}.")
        # absolute: workers (DataLoader processes, Ray nodes) may not share the driver's cwd
        self.image_root = Path(os.path.abspath(image_root if image_root else self.path.parent))
        if not self.image_root.is_dir():
            raise InputError("image folder not found.", file=self.image_root,
                             fix="pass --image-root, the folder the image paths are relative to.")
        if "image_path" not in table.column_names:
            # clip-retrieval's column (its back end and notebooks read it): the file's absolute path
            import pyarrow as pa

            root = os.path.abspath(self.image_root)
            table = table.append_column("image_path", pa.array(
                [v if not isinstance(v, str) or "://" in v else os.path.normpath(os.path.join(root, v))
                 for v in table.column(S.IMAGE).to_pylist()], pa.string()))
        ids = table.column(S.ID).to_pylist() if S.ID in table.column_names else []
        if len(set(ids)) < len(ids):  # found now, not at ingest after the GPU time
            seen, dup = set(), None
            for i, v in enumerate(ids):
                if v in seen:
                    dup = (i, v)
                    break
                seen.add(v)
            raise InputError(f"id {dup[1]!r} appears more than once (again at row {dup[0]}).", file=self.path,
                             row=dup[0], fix="give every pair its own id.")
        self.table = table
        self.images = table.column(S.IMAGE).to_pylist()
        self.captions = table.column(S.CAPTION).to_pylist()

    def __len__(self) -> int:
        return self.table.num_rows

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=12)
        for name in (S.ID, S.IMAGE, S.CAPTION):
            for chunk in self.table.column(name).chunks:
                for buf in chunk.buffers():
                    if buf is not None:
                        h.update(memoryview(buf))
        return h.hexdigest()

    def describe(self) -> dict:
        return {"kind": self.kind, "table": str(self.path.resolve()),
                "image_root": str(self.image_root.resolve()), "rows": len(self)}

    def shards(self, shard_size: int) -> list[Shard]:
        n = len(self)
        return [Shard(i, range(s, min(s + shard_size, n)), None)
                for i, s in enumerate(range(0, n, shard_size))]

    def shard_meta(self, shard: Shard, ok_pos):
        return self.table.slice(shard.items[0], len(shard.items)).take(ok_pos) if shard.items else \
            self.table.slice(0, 0)

    def shard_ids(self, shard: Shard) -> list:
        return self.table.column(S.ID).slice(shard.items[0], len(shard.items)).to_pylist()

    def load(self, item, _handles):
        value = self.images[item]
        caption = self.captions[item]
        try:
            path = resolve_image(self.image_root, value)
        except CurationError as e:
            raise PairError(str(e)) from None
        return _open_image(path), caption


class TarPairs:
    """WebDataset tar shards; one output shard per input tar.

    A tar means here what it means to a WebDataset training loader: members are grouped into
    samples by :func:`split_key` (``webdataset.tariterators.base_plus_ext``: the key is the path up to
    the first dot of the file name, so ``case_1/img.2.jpg`` is key ``case_1/img``, suffix ``2.jpg``),
    consecutive members with one key form one sample, ``__*__`` members are skipped, and a member is
    an image or a caption by its last suffix. Paths may be brace patterns
    (``shard-{000000..000009}.tar``), globs, folders of ``*.tar`` or files.

    Metadata is the union of the ``.json`` keys of every sample of every tar: nested objects are
    flattened to ``a.b``, lists kept as JSON text, and a column whose values have several types
    is promoted (int and float to float, any other mix to text), so every output shard has one
    schema. The json's own ``id`` (and any other reserved name) is kept with a ``json_`` prefix.
    Sample ids are the keys, made unique across tars by prefixing the tar's name only where a
    key occurs in more than one tar. Rows carry ``source_tar`` (absolute path) and
    ``image_member``; a sample with bad json, no image or no caption is skipped with its reason.
    """

    kind = "webdataset"

    def __init__(self, paths):
        self.files = expand_shards(paths)
        self._index = None

    def _build_index(self):
        if self._index is None:
            self._index = _index_tars(self.files)
        return self._index

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=12)
        for f in self.files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"kind": self.kind, "tars": [str(f.resolve()) for f in self.files]}

    def shards(self, shard_size: int) -> list[Shard]:
        # the tar is the shard; shard_size does not apply
        return [Shard(i, x["items"], x["meta"], x["skipped"]) for i, x in enumerate(self._build_index())]

    def shard_meta(self, shard: Shard, ok_pos):
        return shard.meta.take(ok_pos)

    def shard_ids(self, shard: Shard) -> list:
        return shard.meta.column(S.ID).to_pylist() + [s[0] for s in shard.skipped]

    def load(self, item, handles):
        tar_path, offset, size, caption, key = item
        f = handles.get(tar_path)
        if f is None:
            f = handles[tar_path] = open(tar_path, "rb")
        try:
            f.seek(offset)
            data = f.read(size)
        except OSError as e:
            raise PairError(f"cannot read the image member from {Path(tar_path).name} ({e})") from None
        if len(data) != size:
            raise PairError(f"the image member is truncated in {Path(tar_path).name}") from None
        import io

        return _open_image(io.BytesIO(data)), caption


#: webdataset's rule (``tariterators.base_plus_ext``) and its meta-member pattern
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META_RE = re.compile(r"__[^/]*__($|/)")
#: metadata columns a json key would clash with; such keys are kept as ``json_<key>``
RESERVED = (S.ID, S.IMAGE, S.CAPTION, S.ROW, "source_tar", "image_member", "image_path")


def split_key(name: str) -> tuple[str | None, str | None]:
    """(key, suffix) of a tar member as WebDataset splits it; (None, None) for a name it skips."""
    if _META_RE.match(name):
        return None, None
    m = _KEY_RE.match(name)
    return (m.group(1), m.group(2).lower()) if m else (None, None)


def expand_shards(paths) -> list[Path]:
    """Tar files from brace patterns (as ``braceexpand``/WebDataset expand them), globs, folders
    (their ``*.tar``, sorted) and file names, in the order given; a missing file is refused by name."""
    import glob

    from braceexpand import braceexpand

    specs = list(paths) if isinstance(paths, (list, tuple)) else [paths]
    files: list[Path] = []
    for spec in specs:
        for one in braceexpand(str(spec)):
            p = Path(one)
            if p.is_dir():
                files += sorted(p.glob("*.tar"))
            elif any(ch in one for ch in "*?["):
                files += sorted(Path(f) for f in glob.glob(one))
            elif p.is_file():
                files.append(p)
            else:
                raise InputError("tar shard not found" + (f" (expanded from {spec})" if one != str(spec) else "") + ".",
                                 file=p, fix="pass tar files, a brace pattern such as shard-{000000..000009}.tar, "
                                             "a glob or a folder of .tar shards.")
    if not files:
        raise InputError("no .tar shards found.", file=specs[0] if specs else ".",
                         fix="pass WebDataset .tar files or the folder holding them.")
    seen, out = set(), []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            out.append(f)
    return out


def iter_samples(path: Path):
    """(key, {suffix: TarInfo}, tarfile) for each sample of a tar, grouped as WebDataset groups
    (consecutive members with one key). A key met again later, or a suffix twice in one sample,
    is yielded with ``None`` in place of the members and the problem as the third element."""
    try:
        tf = tarfile.open(path, "r:")
    except (tarfile.ReadError, OSError) as e:
        raise InputError(f"not a readable uncompressed tar ({e}).", file=path,
                         fix="WebDataset shards must be plain .tar files (decompress .tar.gz first).") from e
    with tf:
        cur_key, cur, seen = None, {}, set()
        problem = None
        try:
            for m in tf:
                if not m.isfile():
                    continue
                key, suffix = split_key(m.name)
                if key is None:
                    continue
                if key != cur_key:
                    if cur_key is not None:
                        yield cur_key, cur, problem
                    problem = ("the key appears again later in the tar (a sample's members must be "
                               "consecutive)") if key in seen else None
                    cur_key, cur = key, {}
                    seen.add(key)
                if suffix in cur:
                    problem = f"two members named {key}.{suffix}"
                cur[suffix] = m
        except tarfile.ReadError as e:
            raise InputError(f"the tar is truncated or corrupt ({e}).", file=path,
                             fix="re-create or re-download this shard.") from e
        if cur_key is not None:
            yield cur_key, cur, problem


def _kind(suffix: str) -> str | None:
    last = suffix.rsplit(".", 1)[-1]
    return "image" if last in IMAGE_EXTS else "caption" if last in CAPTION_EXTS else \
        "json" if last == "json" else None


def flatten_json(obj: dict, prefix: str = "") -> dict:
    """Nested objects as dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); lists as JSON text."""
    out = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_json(v, name + ".") if v else {name: None})
        elif isinstance(v, list):
            out[name] = json.dumps(v, ensure_ascii=False, sort_keys=True)
        else:
            out[name] = v
    return out


def _column_type(values) -> str:
    """The arrow type of a metadata column: one type kept, int+float -> float, any other mix -> text."""
    kinds = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int):
            kinds.add("int" if -(2 ** 63) <= v < 2 ** 63 else "str")
        elif isinstance(v, float):
            kinds.add("float")
        else:
            kinds.add("str")
    if kinds == {"int", "float"}:
        return "float"
    return kinds.pop() if len(kinds) == 1 else "str" if kinds else "null"


def _as_text(v):
    return None if v is None else v if isinstance(v, str) else json.dumps(v)


def _index_tars(files: list[Path]) -> list[dict]:
    """Index every tar (image member offsets, captions, metadata), then give all of them one
    metadata schema and ids unique across tars. Returns per tar: items, skipped, meta table."""
    import pyarrow as pa

    per_tar = [_index_tar(f) for f in files]
    # ids: a key in more than one tar gets its tar's name in front
    count: dict[str, int] = {}
    for t in per_tar:
        for r in t["rows"]:
            count[r[S.ID]] = count.get(r[S.ID], 0) + 1
    labels = _tar_labels(files)
    taken = {k for k, n in count.items() if n == 1}
    for t, label in zip(per_tar, labels):
        keep_rows, keep_items = [], []
        for r, item in zip(t["rows"], t["items"]):
            if count[r[S.ID]] > 1:
                new = f"{label}/{r[S.ID]}"
                if new in taken:
                    t["skipped"].append((new, f"key {r[S.ID]} is in several tars and {new} is taken"))
                    continue
                r[S.ID] = new
                taken.add(new)
            keep_rows.append(r)
            keep_items.append(item)
        t["rows"], t["items"] = keep_rows, keep_items
    # one schema: the union of columns in first-seen order, each with its promoted type
    columns: dict[str, list] = {}
    for t in per_tar:
        for r in t["rows"]:
            for k in r:
                columns.setdefault(k, [])
    types = {}
    for name in columns:
        types[name] = "str" if name in (S.ID, S.CAPTION, "source_tar", "image_member") else \
            _column_type(r.get(name) for t in per_tar for r in t["rows"])
    arrow = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "null": pa.string()}
    schema = pa.schema([(n, arrow[types[n]]) for n in columns])
    out = []
    for t in per_tar:
        cols = []
        for n in columns:
            vals = [r.get(n) for r in t["rows"]]
            if types[n] in ("str", "null"):
                vals = [_as_text(v) for v in vals]
            elif types[n] == "float":
                vals = [None if v is None else float(v) for v in vals]
            cols.append(pa.array(vals, arrow[types[n]]))
        meta = pa.Table.from_arrays(cols, schema=schema) if columns else \
            pa.table({S.ID: pa.array([], pa.string()), S.CAPTION: pa.array([], pa.string())})
        out.append({"items": t["items"], "skipped": t["skipped"], "meta": meta})
    return out


def _tar_labels(files: list[Path]) -> list[str]:
    """Short unique names for tars: the stem, or the path under the common folder when stems repeat."""
    stems = [f.name[:-4] if f.name.endswith(".tar") else f.name for f in files]
    if len(set(stems)) == len(stems):
        return stems
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    return [str(r.relative_to(common))[:-4] if r.name.endswith(".tar") else str(r.relative_to(common))
            for r in resolved]


def _index_tar(path: Path) -> dict:
    """One tar's samples: (items to load, rows of metadata as dicts, skipped (key, reason))."""
    items, skipped, rows = [], [], []
    src = str(Path(path).resolve())
    with open(path, "rb") as raw:
        for key, members, problem in iter_samples(path):
            _sample(raw, key, members, problem, src, items, skipped, rows)
    return {"items": items, "skipped": skipped, "rows": rows}


def _sample(raw, key, members, problem, src, items, skipped, rows) -> None:
    """Index one sample into ``items``/``rows``, or note why it is skipped."""
    if problem:
        skipped.append((key, problem))
        return
    image = caption_m = json_m = None
    for suffix, m in members.items():
        kind = _kind(suffix)
        if kind == "image" and image is None:
            image = m
        elif kind == "caption" and caption_m is None:
            caption_m = m
        elif kind == "json" and json_m is None:
            json_m = m
    meta = {}
    if json_m is not None:
        try:
            obj = json.loads(_read_member(raw, json_m).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            skipped.append((key, f"{json_m.name} is not valid UTF-8 JSON ({e})"))
            return
        if not isinstance(obj, dict):
            skipped.append((key, f"{json_m.name} holds a JSON {type(obj).__name__}, not an object"))
            return
        meta = flatten_json(obj)
    caption = None
    if caption_m is not None:
        try:
            caption = _read_member(raw, caption_m).decode("utf-8").strip()
        except UnicodeDecodeError:
            skipped.append((key, f"{caption_m.name} is not UTF-8 text"))
            return
    else:
        caption = next((str(meta[k]).strip() for k in JSON_CAPTION_KEYS if isinstance(meta.get(k), str)
                        and meta[k].strip()), None)
    if image is None:
        skipped.append((key, "no image member (" + ", ".join(IMAGE_EXTS) + ")"))
        return
    if not caption:
        skipped.append((key, "no caption (.txt member or 'caption' in .json)"))
        return
    items.append((src, image.offset_data, image.size, caption, key))
    row = {S.ID: key, S.CAPTION: caption, "source_tar": src, "image_member": image.name}
    for k, v in meta.items():
        row[f"json_{k}" if k in RESERVED else k] = v
    rows.append(row)


def _read_member(raw, m) -> bytes:
    raw.seek(m.offset_data)
    return raw.read(m.size)


def _open_image(src):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(src)
        img.load()
    except FileNotFoundError:
        raise PairError("image file is missing") from None
    except UnidentifiedImageError:
        raise PairError("not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:
        raise PairError(f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PairError(f"image could not be decoded ({e})") from None
    return img
