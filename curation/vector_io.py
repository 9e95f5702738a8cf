"""Vectors at rest and how the analysis reads them without holding the pool.

Two layouts, one reading interface (:class:`VectorSource`):

- **shards** (new datasets from :data:`SHARDS_FROM_ROWS` rows, or on request): row-ordered ``.npy``
  files of :data:`SHARD_ROWS` rows per embedding kind in the folder ``<dataset>.duckdb.vectors/<fingerprint>/``
  beside the dataset file, float16 or float32, each named with its row range and sha256 in the
  dataset's ``dataset_meta`` (key ``vectors``). Plain ``.npy``: ``numpy.load`` opens any of them.
- **inline** (small datasets, and every dataset written before shards existed): the ``embeddings``
  table inside the DuckDB file, read by row ranges through Arrow.

A source reads a row range or a set of rows of one kind as float32; nothing reads the whole
matrix unless asked (:meth:`curation.store.Store.vectors`). Reads go through ``read``/``pread`` into fresh
arrays, not memory maps, so the pages read are not counted as the process's resident memory for
the rest of the run.

:func:`write_partition` copies the vectors into the order of a clustering (all rows of cluster 0,
then cluster 1...): the by-cluster partition the per-cluster work (farthest-point orders, kNN inside
the probed clusters) reads one contiguous slice at a time. :class:`Features` is the analysis space
(each kind L2-normalised, joint halves scaled by 1/sqrt(2)) computed on read, block by block.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation import schema as S
from curation.errors import CurationError, StateError

SHARD_ROWS = 100_000
SHARDS_FROM_ROWS = 200_000       # "auto" layout: shards from this many rows, inline below
FLOAT32_MAX_BYTES = 2 << 30      # "auto" dtype: float32 while the vectors take at most 2 GiB, float16 above
LAYOUTS = ("auto", "shards", "inline")
DTYPES = ("auto", "float16", "float32")
GAP_ROWS = 32                    # a gather reads a whole span when the rows asked for are this close
SPAN_ROWS = 1 << 15              # ... and at most this many rows at a time


def vectors_folder(db: str | os.PathLike) -> Path:
    """The folder beside a dataset file that holds its vector shards (one sub-folder per content)."""
    db = Path(db)
    return db.with_name(db.name + ".vectors")


def resolve_layout(layout: str, dtype: str, n: int, dims: dict) -> tuple[str, str]:
    """("shards" | "inline", "float16" | "float32") for a pool of ``n`` rows with ``dims``.

    ``auto`` keeps small pools in one file (inline float32, as before); from
    :data:`SHARDS_FROM_ROWS` rows the vectors go to shards, float32 while they take at most
    :data:`FLOAT32_MAX_BYTES` (results identical to the inline layout) and float16 above (half the
    disk and the reading; cosines change by about 1e-4, measured in ``bench/bench_scale.py``).
    """
    if layout not in LAYOUTS:
        raise CurationError(f"unknown vector layout {layout!r}. Fix: use one of {', '.join(LAYOUTS)}.")
    if dtype not in DTYPES:
        raise CurationError(f"unknown vector dtype {dtype!r}. Fix: use one of {', '.join(DTYPES)}.")
    if layout == "auto":
        layout = "shards" if n >= SHARDS_FROM_ROWS else "inline"
    if layout == "inline":
        if dtype == "float16":
            raise CurationError("float16 vectors need the shards layout. Fix: add --vector-layout shards, or "
                                "leave --vector-dtype out.")
        return "inline", "float32"
    if dtype == "auto":
        total = 4 * n * sum(d for d in dims.values() if d)
        dtype = "float32" if total <= FLOAT32_MAX_BYTES else "float16"
    return "shards", dtype


# ----------------------------------------------------------------------------------------------
def _npy_header(dtype: str, shape) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                               "shape": tuple(int(s) for s in shape)})
    return buf.getvalue()


# rows converted and written at a time: the input's pages, the converted copy and the checks' masks
# of 8,192 x 512 are about 30 MB (32,768 rows held 110 MB beside a 1M-row ingest's 260 MB)
WRITE_ROWS = 1 << 13


def write_shards(folder: Path, vectors: dict, dtype: str, rows_per_shard: int | None = None,
                 hasher=None, progress=None) -> list[dict]:
    """Write each kind's (n, d) array (any array-like with row slicing: a memory map is read block
    by block, never whole) as row-ordered ``.npy`` shards in ``folder``. Returns the file records
    (kind, name, start, rows, dim, sha256). ``hasher``, when given, is fed every stored byte in
    row order per kind (the dataset fingerprint)."""
    rows_per_shard = rows_per_shard or SHARD_ROWS
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for kind in S.EMB_KINDS:
        v = vectors.get(kind)
        if hasher is not None:
            hasher.update(kind.encode())
        if v is None:
            continue
        n, d = v.shape
        if hasher is not None:
            hasher.update(str((n, d)).encode() + dtype.encode())
        for i, start in enumerate(range(0, max(n, 1), rows_per_shard)):
            stop = min(n, start + rows_per_shard)
            name = f"{kind}-{i:05d}.npy"
            h = hashlib.sha256()
            with open(folder / name, "wb") as f:
                head = _npy_header(dtype, (stop - start, d))
                f.write(head)
                for a in range(start, stop, WRITE_ROWS):
                    with np.errstate(over="ignore"):  # values beyond float16 are refused just below
                        block = np.ascontiguousarray(v[a:min(stop, a + WRITE_ROWS)], dtype=dtype)
                    if not np.isfinite(block).all():
                        bad = a + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                        raise CurationError(f"{kind} vector of row {bad} is not finite in {dtype} (too large "
                                            f"for float16?). Fix: pass --vector-dtype float32, or fix the input.")
                    if dtype == "float16" and (block == 0).all(axis=1).any():
                        bad = a + int(np.flatnonzero((block == 0).all(axis=1))[0])
                        raise CurationError(f"{kind} vector of row {bad} becomes all zeros in float16 (its values "
                                            f"are too small). Fix: pass --vector-dtype float32, or rescale the "
                                            f"vectors (only directions matter).")
                    raw = block.reshape(-1).view(np.uint8)
                    f.write(raw)
                    h.update(raw)
                    if hasher is not None:
                        hasher.update(raw)
                    release_rows(v, a, min(stop, a + WRITE_ROWS))  # after the last use of its pages
                f.flush()
                os.fsync(f.fileno())
            records.append({"kind": kind, "name": name, "start": start, "rows": stop - start, "dim": int(d),
                            "sha256": h.hexdigest()})
            if progress:
                progress(stop - start)
    return records


def release_rows(v, start: int, stop: int) -> None:
    """Tell the kernel this process is done with rows start:stop of a memory-mapped input (an .npy
    opened with mmap_mode="r"): their pages stop counting as its resident memory, which would
    otherwise grow to the whole input file while it is copied."""
    import mmap

    mm = getattr(v, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    row = v.strides[0]
    base = v.offset if hasattr(v, "offset") else 0
    lo = (base + start * row) // mmap.PAGESIZE * mmap.PAGESIZE
    hi = base + stop * row
    try:
        mm.madvise(mmap.MADV_DONTNEED, lo, max(0, min(hi, len(mm)) - lo))
    except (OSError, ValueError):
        pass


def install_shards(db: Path, fingerprint: str, tmp_folder: Path) -> Path:
    """Move freshly written shards into ``<db>.vectors/<fingerprint>``. A folder of that fingerprint
    already there (an earlier ingest of the same content) is replaced, so re-ingesting repairs a
    damaged shard."""
    final = vectors_folder(db) / fingerprint
    if final.exists():
        old = final.with_name(f".old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp_folder, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_folder, final)
    return final


def tmp_shard_folder(db: Path) -> Path:
    """A new temporary folder for shards being written (named with this process's id, so a later
    write removes only the temporaries of processes that are gone)."""
    base = vectors_folder(db)
    if base.exists() and not base.is_dir() or base.is_symlink() and not base.exists():
        raise CurationError(f"{base} is in the way: the vectors of {db.name} go in a folder of that name. "
                            f"Fix: move that file away, or choose another dataset path.")
    base.mkdir(parents=True, exist_ok=True)
    for p in base.glob(".tmp-*"):  # left by a killed ingest
        pid = p.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    return base / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_old_shards(db: Path, old: str | None, keep: str | None) -> None:
    """After a replace lands: delete the folder of the content the file held before (``old``), never
    another writer's, and the ``.vectors`` folder itself once nothing is left in it."""
    base = vectors_folder(db)
    if old and old != keep:
        shutil.rmtree(base / old, ignore_errors=True)
    try:
        base.rmdir()  # only when empty
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------
class VectorSource:
    """Row-ordered vectors of one dataset, read as float32 by row range or row set."""

    n: int
    dims: dict  # {kind: dim or None}

    def read_range(self, kind: str, start: int, stop: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_range_stored(self, kind: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` in the dtype they are stored in (copies need no conversion)."""
        return self.read_range(kind, start, stop)

    def read_rows(self, kind: str, rows: np.ndarray, stored: bool = False) -> np.ndarray:
        """Rows in any order (repeats allowed), float32 (``stored``: in the dtype they are stored in).
        Spans of nearby rows are read whole, in the stored dtype, and only the rows asked for are
        converted (a k-means sample of every 20th row converted whole spans: 20x the work)."""
        rows = np.asarray(rows, np.int64)
        d = self.dims[kind]
        out = None if stored else np.empty((len(rows), d), np.float32)
        if not len(rows):
            return out if out is not None else np.empty((0, d), np.float32)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        if srt[0] < 0 or srt[-1] >= self.n:
            raise IndexError(f"row {int(srt[0] if srt[0] < 0 else srt[-1])} outside 0..{self.n - 1}")
        # spans of rows at most GAP_ROWS apart, each at most SPAN_ROWS long (a sample spread over the
        # whole pool must not become one read of the whole pool)
        cuts = np.flatnonzero(np.diff(srt) > GAP_ROWS) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(srt)]):
            while a < b:
                lo = int(srt[a])
                e = a + int(np.searchsorted(srt[a:b], lo + SPAN_ROWS, side="left"))
                e = max(e, a + 1)
                hi = int(srt[e - 1]) + 1
                block = self.read_range_stored(kind, lo, hi)
                if out is None:
                    out = np.empty((len(rows), d), block.dtype)
                out[order[a:e]] = block[srt[a:e] - lo]
                a = e
        return out

    def close(self) -> None:
        pass


class ShardSource(VectorSource):
    """The shards of a dataset (see the module doc)."""

    def __init__(self, folder: Path, info: dict, n: int):
        self.folder = Path(folder)
        self.n = n
        self.dtype = np.dtype(info["dtype"])
        self.files: dict[str, list[dict]] = {}
        for rec in info["files"]:
            self.files.setdefault(rec["kind"], []).append(rec)
        self.dims = {k: (v[0]["dim"] if v else None) for k, v in self.files.items()}
        for k in S.EMB_KINDS:
            self.dims.setdefault(k, None)
        self.starts = {k: np.array([r["start"] for r in v], np.int64) for k, v in self.files.items()}
        self._offsets: dict[str, int] = {}
        self._fds: dict[str, tuple[int, int]] = {}
        for k, recs in self.files.items():
            if sum(r["rows"] for r in recs) != n:
                raise StateError(f"the {k} vector shards of {folder} hold {sum(r['rows'] for r in recs):,} rows, "
                                 f"the dataset {n:,}. Fix: re-ingest the dataset.")

    def _path(self, rec) -> Path:
        p = self.folder / rec["name"]
        if not p.is_file():
            raise StateError(f"vector shard {p} is missing. The vectors of a dataset live in the folder "
                             f"{self.folder.parent.name}/ beside it: copy or move it with the dataset file "
                             f"(curation.store.copy_dataset does both). Fix: restore the folder, or re-ingest.")
        return p

    def _header_len(self, rec) -> int:
        key = rec["name"]
        if key not in self._offsets:
            with open(self._path(rec), "rb") as f:
                try:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                except ValueError as e:
                    raise StateError(f"vector shard {self._path(rec)} is damaged ({e}). Fix: re-ingest the "
                                     f"dataset (ingest ... --replace).") from None
                if shape != (rec["rows"], rec["dim"]) or dtype != self.dtype:
                    raise StateError(f"vector shard {self._path(rec)} holds {shape} {dtype}, the dataset records "
                                     f"({rec['rows']}, {rec['dim']}) {self.dtype}: it was replaced or damaged. "
                                     f"Fix: re-ingest the dataset.")
                self._offsets[key] = f.tell()
        return self._offsets[key]

    def _fd(self, rec) -> tuple[int, int]:
        """(open file descriptor, header length) of a shard, opened once (reads are positioned)."""
        key = rec["name"]
        got = self._fds.get(key)
        if got is None:
            head = self._header_len(rec)
            got = self._fds[key] = (os.open(self._path(rec), os.O_RDONLY), head)
        return got

    def read_range(self, kind, start, stop):
        return self._read(kind, start, stop, np.float32)

    def read_range_stored(self, kind, start, stop):
        # a float16 copy read as float32 and converted back cost 2 conversions a value: 55% of the
        # time of the kNN's query copies at 10M (a scan of the vectors per batch)
        return self._read(kind, start, stop, self.dtype)

    def _read(self, kind, start, stop, dtype):
        d = self.dims[kind]
        out = np.empty((max(stop - start, 0), d), dtype)
        recs, starts = self.files[kind], self.starts[kind]
        item = self.dtype.itemsize
        pos = start
        while pos < stop:
            i = int(np.searchsorted(starts, pos, side="right")) - 1
            rec = recs[i]
            hi = min(stop, rec["start"] + rec["rows"])
            fd, head = self._fd(rec)
            want = (hi - pos) * d * item
            at = head + (pos - rec["start"]) * d * item
            if out.dtype == self.dtype:  # straight into place: no bytes object and no second copy
                got = _pread_into(fd, memoryview(out[pos - start:hi - start]).cast("B"), at)
            else:
                buf = os.pread(fd, want, at)
                got = len(buf)
                if got == want:
                    out[pos - start:hi - start] = np.frombuffer(buf, self.dtype).reshape(-1, d)
            if got != want:
                raise StateError(f"vector shard {self._path(rec)} is cut short. Fix: re-ingest the dataset.")
            pos = hi
        return out

    def __getstate__(self):  # a task on another process or node opens its own files
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def close(self) -> None:
        for fd, _ in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}

    def __del__(self):
        self.close()

    def verify(self, progress=None) -> list[str]:
        """Names of shards whose sha256 differs from the one recorded (all read in full)."""
        bad = []
        for recs in self.files.values():
            for rec in recs:
                h = hashlib.sha256()
                with open(self._path(rec), "rb") as f:
                    f.seek(self._header_len(rec))
                    for chunk in iter(lambda: f.read(1 << 24), b""):
                        h.update(chunk)
                if h.hexdigest() != rec["sha256"]:
                    bad.append(rec["name"])
                if progress:
                    progress(rec["rows"])
        return bad


def _pread_into(fd: int, mv: memoryview, at: int) -> int:
    """Read ``len(mv)`` bytes at offset ``at`` into ``mv`` (a read returns at most about 2 GB);
    the bytes read, fewer only at the end of the file."""
    got = 0
    while got < len(mv):
        m = os.preadv(fd, [mv[got:]], at + got)
        if m <= 0:
            break
        got += m
    return got


class InlineSource(VectorSource):
    """The ``embeddings`` table inside the DuckDB file (small and older datasets)."""

    def __init__(self, path: Path, dims: dict, n: int):
        import duckdb

        self.path, self.n, self.dims = Path(path), n, dict(dims)
        # a small buffer pool: DuckDB must not keep a second copy of the vectors in memory
        self.con = duckdb.connect(str(path), read_only=True, config={"memory_limit": "1GB"})  # as Store readers: one config per file and process

    def read_range(self, kind, start, stop):
        from curation.arrow_io import fixed_list_to_numpy

        d = self.dims[kind]
        out = np.empty((max(stop - start, 0), d), np.float32)
        if stop <= start:
            return out
        rel = self.con.sql(f"SELECT {S.ROW}, {S.emb_column(kind)} FROM {S.EMBEDDINGS} "
                           f"WHERE {S.ROW} >= ? AND {S.ROW} < ? ORDER BY {S.ROW}", params=[int(start), int(stop)])
        pos = 0
        for batch in rel.to_arrow_reader(1 << 16):
            m = batch.num_rows
            out[pos:pos + m] = fixed_list_to_numpy(batch.column(1), d)
            pos += m
        if pos != stop - start:
            raise StateError(f"{self.path}: the embeddings table lacks rows {start}..{stop - 1}. Fix: re-ingest.")
        return out

    def __getstate__(self):  # a task on another process opens its own read-only connection
        return {"path": self.path, "n": self.n, "dims": self.dims}

    def __setstate__(self, state):
        self.__init__(state["path"], state["dims"], state["n"])

    def close(self):
        try:
            self.con.close()
        except Exception:  # noqa: BLE001 - closing twice is fine
            pass


class ArraySource(VectorSource):
    """In-memory arrays as a source (tests, and callers that already hold the vectors)."""

    def __init__(self, vectors: dict):
        self.v = {k: (None if v is None else np.asarray(v)) for k, v in vectors.items()}
        self.dims = {k: (None if v is None else v.shape[1]) for k, v in self.v.items()}
        for k in S.EMB_KINDS:
            self.dims.setdefault(k, None)
        self.n = len(next(v for v in self.v.values() if v is not None))

    def read_range(self, kind, start, stop):
        return np.asarray(self.v[kind][start:stop], np.float32)


# ----------------------------------------------------------------------------------------------
@dataclass
class Partition:
    """Vectors copied into cluster order: ``order`` (the row at each position), ``where`` (the
    position of each row), ``offsets`` (cluster c's rows are positions offsets[c]:offsets[c+1])."""

    source: "ShardSource"
    order: np.ndarray
    where: np.ndarray
    offsets: np.ndarray
    name: str = ""

    def read_rows(self, kind: str, rows: np.ndarray, stored: bool = False) -> np.ndarray:
        return self.source.read_rows(kind, self.where[np.asarray(rows, np.int64)], stored=stored)


def write_partition(source: VectorSource, kinds, assign: np.ndarray, folder: Path,
                    dtype: str = "float32", progress=None, rows: np.ndarray | None = None) -> Partition:
    """Copy ``kinds`` of ``source`` into ``folder`` in the order of ``assign`` (stable inside a
    cluster), one block of rows at a time: each block's rows are written with one positioned write
    per run of consecutive positions. Returns the :class:`Partition` (positions -> rows and back).

    ``rows`` (ascending, repeats allowed; default every row once) copies those rows, ``assign``
    giving one cluster per entry: a row listed under several clusters (the clusters it searches) is
    written once for each, so every cluster's queries are one contiguous read too.
    """
    assign = np.asarray(assign)
    m = len(assign)
    listed = np.arange(source.n) if rows is None else np.asarray(rows, np.int64)
    k = int(assign.max()) + 1 if m else 0
    order = np.argsort(assign, kind="stable")
    where = np.empty(m, np.int64)
    where[order] = np.arange(m)
    offsets = np.r_[0, np.cumsum(np.bincount(assign, minlength=k))]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for kind in kinds:
        d = source.dims[kind]
        name = f"{kind}-00000.npy"
        head = _npy_header(dtype, (m, d))
        item = np.dtype(dtype).itemsize
        with open(folder / name, "wb") as f:
            f.write(head)
            f.truncate(len(head) + m * d * item)
            fd = f.fileno()
            step = 1 << 16
            for a in range(0, source.n, step):
                b = min(source.n, a + step)
                lo, hi = np.searchsorted(listed, [a, b])
                if hi > lo:
                    block = source.read_range_stored(kind, a, b).astype(dtype, copy=False)
                    pos = where[lo:hi]
                    srt = np.argsort(pos, kind="stable")
                    pos_s, src_s = pos[srt], listed[lo:hi][srt] - a
                    cuts = np.flatnonzero(np.diff(pos_s) != 1) + 1
                    for s_, e_ in zip(np.r_[0, cuts], np.r_[cuts, len(pos_s)]):
                        os.pwrite(fd, np.ascontiguousarray(block[src_s[s_:e_]]).tobytes(),
                                  len(head) + int(pos_s[s_]) * d * item)
                if progress:
                    progress(b - a)
        files.append({"kind": kind, "name": name, "start": 0, "rows": m, "dim": int(d), "sha256": ""})
    src = ShardSource(folder, {"dtype": dtype, "files": files}, m)
    return Partition(src, order, where if rows is None else None, offsets)  # a query copy has no row -> place


# ----------------------------------------------------------------------------------------------
class Features:
    """The analysis space over a :class:`VectorSource`, computed on read.

    Behaves like a read-only float32 array of shape (n, sum of dims) for what the analysis does with
    one: ``len``, ``shape``, ``F[a:b]`` (a row range), ``F[rows]`` (a row set) and ``F[:, cols]``
    (one kind's columns, another :class:`Features`). Each kind is L2-normalised; with two kinds
    each half is scaled by 1/sqrt(2), so joint rows have norm 1 (:func:`curation.spaces.build_space`).
    Row sets are read from a by-cluster :class:`Partition` when one is attached (:meth:`partition`):
    the rows of one cluster are then one contiguous read.
    """

    def __init__(self, source: VectorSource, kinds, scale: float | None = None, partitions=None):
        self.source = source
        self.kinds = [k for k in kinds if source.dims.get(k) is not None]
        self.dims = [source.dims[k] for k in self.kinds]
        self.scale = np.float32(scale) if scale is not None else (
            np.float32(1 / np.sqrt(2)) if len(self.kinds) == 2 else None)
        self.shape = (source.n, sum(self.dims))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        self.partitions = partitions if partitions is not None else []

    def __len__(self):
        return self.shape[0]

    @property
    def slices(self) -> dict:
        out, off = {}, 0
        for k, d in zip(self.kinds, self.dims):
            out[k] = slice(off, off + d)
            off += d
        return out

    def half(self, kind: str) -> "Features":
        """One kind's columns as they sit in the joint layout (scaled), sharing the partitions."""
        return Features(self.source, [kind], scale=self.scale if self.scale is not None else 1.0,
                        partitions=self.partitions)

    def _assemble(self, m: int, read) -> np.ndarray:
        """(m, dims) float32: rows lo:hi of each kind read by ``read(kind, lo, hi)`` (float32 or
        the stored dtype: the normalisation converts a cache-sized block at a time) and normalised
        into their place, :data:`SPAN_ROWS` rows at a time, so beside the result only one piece of
        raw rows exists (a 200k-row k-means sample costs its own 800 MB, not twice that)."""
        from curation.spaces import normalize

        out = np.empty((m, self.shape[1]), np.float32)
        for lo in range(0, m, SPAN_ROWS):
            hi = min(m, lo + SPAN_ROWS)
            for k, sl in self.slices.items():
                normalize(read(k, lo, hi), out=out[lo:hi, sl])
        if self.scale is not None and self.scale != 1:
            out *= self.scale
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, cols = key
            if not (isinstance(rows, slice) and rows == slice(None)) or not isinstance(cols, slice):
                raise TypeError("Features supports F[:, kind_slice] only")
            kind = next((k for k, s in self.slices.items() if s == cols), None)
            if kind is None:
                raise TypeError("Features: a column slice must be one kind's columns")
            return self.half(kind)
        if isinstance(key, slice):
            a, b, step = key.indices(len(self))
            if step != 1:
                raise TypeError("Features: row slices have step 1")
            return self._assemble(max(b - a, 0), lambda k, lo, hi: self.source.read_range_stored(k, a + lo, a + hi))
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        part = self._partition_for()
        src = part if part is not None else self.source
        return self._assemble(len(rows), lambda k, lo, hi: src.read_rows(k, rows[lo:hi], stored=True))

    def __array__(self, dtype=None, copy=None):
        out = self[0:len(self)]
        return out if dtype is None else out.astype(dtype)

    def _partition_for(self):
        for p in reversed(self.partitions):
            if all(k in p.source.dims and p.source.dims[k] is not None for k in self.kinds):
                return p
        return None

    def cluster_block(self, part: Partition, c: int) -> np.ndarray:
        """Cluster ``c``'s entries of ``part`` (one contiguous read), in this space."""
        a, b = int(part.offsets[c]), int(part.offsets[c + 1])
        return self._assemble(b - a, lambda k, lo, hi: part.source.read_range_stored(k, a + lo, a + hi))

    def partition(self, assign: np.ndarray, folder: Path, progress=None, name: str = "") -> Partition:
        """Copy this space's kinds into the order of ``assign`` (see :func:`write_partition`); later
        row-set reads of this object and of its halves come from there. One per ``name``."""
        for p in self.partitions:
            if name and p.name == name:
                return p
        dtype = getattr(self.source, "dtype", np.dtype(np.float32)).name
        part = write_partition(self.source, self.kinds, assign, folder, dtype=dtype, progress=progress)
        part.name = name
        self.partitions.append(part)
        return part

    def drop_partition(self, name: str) -> None:
        """Forget the partition called ``name`` and remove its files (it is as large as the vectors:
        20 GB at 10M x 1024 float16); later row-set reads come from another partition or the source."""
        import shutil

        for part in [q for q in self.partitions if q.name == name]:
            self.partitions.remove(part)
            part.source.close()
            shutil.rmtree(part.source.folder, ignore_errors=True)

    def query_partition(self, rows: np.ndarray, clusters: np.ndarray, folder: Path, progress=None) -> Partition:
        """Copy ``rows`` (ascending, a row once per cluster it searches) grouped by ``clusters``: the
        queries of each cluster's kNN search as one contiguous read (not kept as a row-set source)."""
        dtype = getattr(self.source, "dtype", np.dtype(np.float32)).name
        return write_partition(self.source, self.kinds, clusters, folder, dtype=dtype, progress=progress, rows=rows)


def open_source(store) -> VectorSource:
    """The :class:`VectorSource` of an open :class:`curation.store.Store` (shards or inline)."""
    info = store.meta.get("vectors")
    n = store.n_rows
    if info and info.get("layout") == "shards":
        folder = vectors_folder(store.path) / store.fingerprint
        if not folder.is_dir():
            raise StateError(f"the vectors of {store.path} are missing: the folder {folder} does not exist. A "
                             f"dataset's vectors live beside it in {vectors_folder(store.path).name}/; copy or "
                             f"move that folder with the file (curation.store.copy_dataset does both). "
                             f"Fix: restore the folder, or re-ingest the dataset.")
        return ShardSource(folder, info, n)
    return InlineSource(store.path, {k: store.dim(k) for k in S.EMB_KINDS}, n)


def shard_meta(dtype: str, records: list[dict]) -> dict:
    return {"layout": "shards", "dtype": dtype, "files": records}


def describe(info: dict | None, folder: Path | None = None) -> str:
    """Where a dataset's vectors live, in a few words; with ``folder`` (its shard folder), the shards
    that are not there are named."""
    if not info or info.get("layout") != "shards":
        return "inside the dataset file (float32)"
    text = f"{len(info['files'])} {info['dtype']} shards beside the dataset file"
    if folder is not None:
        missing = [r["name"] for r in info["files"] if not (Path(folder) / r["name"]).is_file()]
        if missing:
            text += (f"; MISSING {len(missing)} of them ({', '.join(missing[:3])}) in {folder}: restore the folder "
                     f"or re-ingest")
    return text


__all__ = ["ArraySource", "Features", "InlineSource", "Partition", "ShardSource", "VectorSource", "describe",
           "open_source", "resolve_layout", "vectors_folder", "write_partition", "write_shards"]
