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
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from curation import schema as S
from curation.errors import CurationError, InputError, PairError

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
        from curation.ingest import read_table_file, standardize_columns

        self.path = Path(table_path)
        table = read_table_file(self.path, string_columns=[c for c in (id_column, *S.ID_CANDIDATES) if c])
        table = standardize_columns(table, self.path, id_column, image_column, caption_column)
        for col, opt in ((S.IMAGE, "--image-path-column"), (S.CAPTION, "--caption-column")):
            if col not in table.column_names:
                raise InputError(f"no {col} column.", file=self.path,
                                 fix=f"name it with {opt}; columns are: {', '.join(table.column_names)}.")
        self.table = table
        self.image_root = Path(image_root) if image_root else self.path.parent
        if not self.image_root.is_dir():
            raise InputError("image folder not found.", file=self.image_root,
                             fix="pass --image-root, the folder the image paths are relative to.")
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
        from curation.store import resolve_image

        value = self.images[item]
        caption = self.captions[item]
        try:
            path = resolve_image(self.image_root, value)
        except CurationError as e:
            raise PairError(str(e)) from None
        return _open_image(path), caption


class TarPairs:
    """WebDataset tar shards; one output shard per input tar (keys grouped as WebDataset does)."""

    kind = "webdataset"

    def __init__(self, paths):
        files = []
        for p in [Path(x) for x in (paths if isinstance(paths, (list, tuple)) else [paths])]:
            if p.is_dir():
                files += sorted(p.glob("*.tar"))
            elif any(ch in str(p) for ch in "*?["):
                import glob

                files += sorted(Path(f) for f in glob.glob(str(p)))
            elif p.is_file():
                files.append(p)
            else:
                raise InputError("tar shard not found.", file=p, fix="pass tar files, a glob or a folder of .tar shards.")
        if not files:
            raise InputError("no .tar shards found.", file=paths if not isinstance(paths, list) else paths[0],
                             fix="pass WebDataset .tar files or the folder holding them.")
        self.files = files
        self._index = None

    def _build_index(self):
        if self._index is None:
            self._index = [_index_tar(f) for f in self.files]
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


def _index_tar(path: Path) -> dict:
    """Group a tar's members by WebDataset key; read captions and JSON metadata, note image offsets."""
    import pyarrow as pa

    groups: dict[str, dict] = {}
    order = []
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                d, base = os.path.split(m.name)
                if base.startswith("."):
                    continue
                key, _, ext = base.partition(".")
                key = f"{d}/{key}" if d else key
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                ext = ext.lower()
                if ext in IMAGE_EXTS:
                    groups[key].setdefault("image", (m.name, m.offset_data, m.size))
                elif ext in CAPTION_EXTS or ext == "json":
                    groups[key][ext] = tf.extractfile(m).read()
    except tarfile.ReadError as e:
        raise InputError(f"not a readable uncompressed tar ({e}).", file=path,
                         fix="WebDataset shards must be plain .tar files (decompress .tar.gz first).") from e
    items, skipped, rows = [], [], []
    for key in order:
        g = groups[key]
        meta = {}
        if "json" in g:
            try:
                obj = json.loads(g["json"].decode("utf-8"))
                meta = {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool)) or v is None} \
                    if isinstance(obj, dict) else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                skipped.append((key, f"{key}.json is not valid UTF-8 JSON"))
                continue
        caption = None
        for ext in CAPTION_EXTS:
            if ext in g:
                try:
                    caption = g[ext].decode("utf-8").strip()
                except UnicodeDecodeError:
                    caption = None
                    skipped.append((key, f"{key}.{ext} is not UTF-8 text"))
                break
        else:
            caption = next((str(meta[k]).strip() for k in JSON_CAPTION_KEYS if meta.get(k)), None)
        if skipped and skipped[-1][0] == key:
            continue
        if "image" not in g:
            skipped.append((key, "no image member (" + ", ".join(IMAGE_EXTS) + ")"))
            continue
        if not caption:
            skipped.append((key, "no caption (.txt member or 'caption' in .json)"))
            continue
        name, off, size = g["image"]
        items.append((str(path), off, size, caption, key))
        meta.pop(S.ID, None)
        rows.append({S.ID: key, S.CAPTION: caption, "source_tar": path.name, "image_member": name,
                     **{k: v for k, v in meta.items() if k not in (S.ID, S.CAPTION, S.IMAGE, S.ROW)}})
    table = pa.Table.from_pylist(rows) if rows else pa.table({S.ID: pa.array([], pa.string()),
                                                             S.CAPTION: pa.array([], pa.string())})
    return {"items": items, "skipped": skipped, "meta": table}


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
