"""The dataset store: one DuckDB file per dataset. The only module that imports duckdb.

Layout of a dataset file (names in :mod:`curation.schema`):

- ``samples``: ``row_idx`` (0..N-1, the canonical order), ``id``, ``image``, ``caption`` and the
  metadata columns as they came.
- ``embeddings``: ``row_idx``, ``image_emb FLOAT[d_img]``, ``text_emb FLOAT[d_txt]``
  (either may be absent; the dims may differ). Vectors go in and out through Arrow fixed-size
  lists, whose values are one contiguous float buffer: numpy arrays are wrapped without a copy on
  the way in, and read back with one memcpy per batch, never through Python lists. A BLOB-per-vector
  layout was measured too and ingests 4x slower (``bench/bench_store.py``).
- ``dataset_meta``: key/value (JSON): fingerprint, dims, models, image root, source.
- ``runs``: one row per analysis or selection run.
- Analysis outputs (written by :mod:`curation.analysis`) are plain tables keyed by ``row_idx``.

Writers are atomic. A new or replaced dataset is written to a temporary file beside the target
and moved over it with ``os.replace``: a failure leaves the previous file untouched, and readers
that have the old file open keep reading it. Derived tables are written inside one transaction
(:meth:`Store.write_tables`): either all of them change or none.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from curation import __version__
from curation import schema as S
from curation.arrow_io import compute_fingerprint, fingerprint_hasher, fixed_list_to_numpy, vectors_to_arrow
from curation.atomic import atomic_write, remove_stale_temps
from curation.errors import CurationError, StateError
from curation.images import resolve_image

log = logging.getLogger(__name__)

SUFFIX = ".duckdb"


def quote_ident(name: str) -> str:
    """Quote a column or table name for SQL. Values are never pasted into SQL: they are bound."""
    return '"' + str(name).replace('"', '""') + '"'


def list_datasets(data_dir: str | os.PathLike = "data") -> list[Path]:
    """Dataset files (``*.duckdb``) under ``data_dir``, sorted by name."""
    d = Path(data_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob(f"*{SUFFIX}") if p.is_file())


def open_store(path: str | os.PathLike, read_only: bool = True, wait: float = 10.0) -> "Store":
    """Open an existing dataset file. Readers (the app) open read-only.

    A file held by a writer (another process's lock, or this process's writing connection) is
    retried for up to ``wait`` seconds: writers hold it only for their final transaction.
    """
    p = Path(path)
    if not p.exists():
        raise CurationError(
            f"dataset {p} does not exist. Fix: create it with `python -m curation demo --db {p}` "
            f"or `python -m curation ingest {p} ...`."
        )
    return Store(p, read_only=read_only, wait=wait)


def is_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a curation dataset (a DuckDB file with a ``dataset_meta`` table)."""
    import duckdb

    p = Path(path)
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as f:
            if f.read(16)[8:12] != b"DUCK":
                return False
        con = duckdb.connect(str(p), read_only=True)
    except (OSError, duckdb.Error):
        return False
    try:
        return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                                [S.META]).fetchone()[0])
    finally:
        con.close()


# DuckDB's memory while a run's tables are written (Store.record_run): the tables go to the file
# block by block instead of staying in the buffer pool until the commit (None: DuckDB's default,
# 80% of the machine)
WRITE_MEMORY_LIMIT = "1GB"


def _parquet_files(data) -> list[str] | None:
    """The files of a pyarrow dataset over Parquet files (a run's side tables handed over from disk,
    :func:`curation.checkpoint.on_disk`), else None."""
    mod = type(data).__module__
    if not mod.startswith("pyarrow"):
        return None
    import pyarrow.dataset as ds

    if isinstance(data, ds.FileSystemDataset) and isinstance(data.format, ds.ParquetFileFormat):
        return list(data.files)
    return None


class Store:
    """A handle on one dataset file.

    Parameters
    ----------
    path : path-like
        The ``.duckdb`` file.
    read_only : bool
        Open read-only (several processes may read at once; DuckDB allows one writer process).
    """

    def __init__(self, path: str | os.PathLike, read_only: bool = True, wait: float = 0.0):
        import duckdb

        self.path = Path(path)
        self.read_only = read_only
        # readers stream: a small buffer pool keeps DuckDB from holding a second copy of the
        # vectors while numpy holds the first
        config = {"memory_limit": "1GB"} if read_only else {}
        deadline = time.monotonic() + wait
        while True:
            try:
                self.con = duckdb.connect(str(self.path), read_only=read_only, config=config)
                break
            except duckdb.Error as e:  # locked by a writer, or not a DuckDB file
                msg = str(e).lower()
                busy = bool(re.search(r"conflicting lock|could not set lock|\block\b|different configuration", msg)) \
                    and "corrupt" not in msg
                if busy and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                if busy:
                    raise CurationError(f"cannot open dataset {self.path}: another process or session is "
                                        f"writing it ({e}). Fix: wait for it to finish, then try again.") from e
                raise CurationError(f"cannot open dataset {self.path}: {_first_line(e)}. The file is damaged (cut "
                                    f"short or altered) or is not a DuckDB dataset. Fix: restore it, or ingest the "
                                    f"data again (ingest ... --replace).") from e
        self._meta: dict | None = None
        self._columns_cache: dict[str, list[tuple[str, str]] | None] = {}

    def _table_columns(self, name: str) -> list[tuple[str, str]] | None:
        """(column, duckdb type) of table ``name`` in column order; None when there is no such table.

        A read-only handle asks for the one table (under a millisecond; a catalog-wide query costs
        8-17 ms on a fresh connection) and remembers the answer for its lifetime: DuckDB's file
        lock keeps writers out while it is open, so its tables cannot change (an app rerun asks a
        dozen times). A writable handle asks the catalog each time, without raising: a failed
        statement would abort the write transaction it may be in."""
        if name in self._columns_cache:
            return self._columns_cache[name]
        if not self.read_only:  # maybe inside a write transaction, which a failed statement would abort
            cols = self.con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
                "AND schema_name = 'main' AND table_name = ? ORDER BY column_index", [name]).fetchall()
            return cols or None
        import duckdb

        try:
            cols = self.con.execute("SELECT name, type FROM pragma_table_info(?)", [name]).fetchall()
        except duckdb.CatalogException:
            cols = None
        self._columns_cache[name] = cols
        return cols

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.path.name[: -len(SUFFIX)] if self.path.name.endswith(SUFFIX) else self.path.stem

    # -- metadata --------------------------------------------------------------------------
    def tables(self) -> list[str]:
        """Names of the dataset's tables (and views), sorted."""
        rows = self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
        return sorted(r[0] for r in rows)

    def has_table(self, name: str) -> bool:
        return self._table_columns(name) is not None

    @property
    def meta(self) -> dict:
        """The dataset's key/value metadata (fingerprint, dims, models, image root...)."""
        if self._meta is None:
            if not self.has_table(S.META):
                raise StateError(f"{self.path} is not a curation dataset (no {S.META} table).")
            rows = self.con.execute(f"SELECT key, value FROM {S.META}").fetchall()
            try:
                meta = {k: json.loads(v) for k, v in rows}
            except (TypeError, json.JSONDecodeError) as e:
                raise StateError(f"{self.path}: the {S.META} table holds a value that is not JSON ({e}). "
                                 f"Fix: re-ingest the dataset.") from None
            missing = [k for k in ("fingerprint", "n_rows") if k not in meta]
            if missing or not isinstance(meta.get("n_rows"), int):
                raise StateError(f"{self.path}: the {S.META} table lacks {', '.join(missing) or 'a whole n_rows'}; "
                                 f"the file is damaged or was not written by curation. Fix: re-ingest the dataset.")
            version = meta.get("schema_version", 1)
            if not isinstance(version, int) or isinstance(version, bool) or version > S.SCHEMA_VERSION:
                raise StateError(f"{self.path} was written by a newer curation (dataset schema version {version!r}; "
                                 f"this one reads up to {S.SCHEMA_VERSION}); reading or writing it could damage it. "
                                 f"Fix: upgrade curation (git pull && make install).")
            sharded = (meta.get("vectors") or {}).get("layout") == "shards"
            absent = [t for t in (S.SAMPLES, *(() if sharded else (S.EMBEDDINGS,))) if not self.has_table(t)]
            if absent:
                raise StateError(f"{self.path} lacks its {' and '.join(absent)} table; the file is damaged or was "
                                 f"edited. Fix: re-ingest the dataset (ingest ... --replace).")
            self._meta = meta
        return self._meta

    def label_columns(self) -> list[str]:
        """The columns declared as labels (answers, not inputs: never confounders, never used by
        the default selection, reported by the impact table), in declaration order."""
        cols = self.meta.get("label_columns") or ([self.meta["label_column"]] if self.meta.get("label_column") else [])
        return [c for c in cols if isinstance(c, str)]

    def update_meta(self, **values) -> None:
        """Set dataset metadata keys (JSON values) in one transaction. Not for the fingerprint."""
        import pandas as pd

        self._check_writable()
        if "fingerprint" in values or "n_rows" in values:
            raise ValueError("the fingerprint and n_rows are written by ingest only")
        meta = {**self.meta, **values}
        self.write_tables({S.META: pd.DataFrame({"key": list(meta),
                                                 "value": [json.dumps(meta[k], sort_keys=True) for k in meta]})})
        self._meta = None

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def n_rows(self) -> int:
        return int(self.meta["n_rows"])

    def dim(self, kind: str) -> int | None:
        """Embedding dimension of ``kind`` ("image" or "text"), None when absent."""
        return self.meta.get(f"{kind}_dim")

    def image_root(self) -> Path | None:
        """Folder that relative image paths resolve against (None: the dataset has no images)."""
        root = self.meta.get("image_root")
        if root is None:
            return None
        p = Path(root)
        return p if p.is_absolute() else (self.path.parent / p)

    def resolve_image(self, value) -> Path:
        """The file of an ``image`` value, which must lie inside the image root.

        Raises :class:`CurationError` when the dataset has no image root, the path escapes it
        (``..``, an absolute path elsewhere, a symlink out), or the file is missing.
        """
        return resolve_image(self.image_root(), value)

    def columns(self) -> list[tuple[str, str]]:
        """(name, duckdb type) of the samples table, ``row_idx`` left out."""
        return [(n, t) for n, t in self._table_columns(S.SAMPLES) or [] if n != S.ROW]

    def table_columns(self, name: str) -> list[str]:
        """Column names of any table of the dataset ([] when it does not exist)."""
        return [c for c, _ in self._table_columns(name) or []]

    def metadata_columns(self) -> list[str]:
        """Metadata columns (everything but id, image and caption)."""
        return [n for n, _ in self.columns() if n not in (S.ID, S.IMAGE, S.CAPTION)]

    # -- reads -----------------------------------------------------------------------------
    def samples(self, columns: Iterable[str] | None = None):
        """The samples table as a pandas DataFrame in ``row_idx`` order.

        Parameters
        ----------
        columns : iterable of str, optional
            Columns to read (``row_idx`` is not returned); all when None. Unknown names raise.
        """
        known = [n for n, _ in self.columns()]
        cols = list(known if columns is None else columns)
        unknown = [c for c in cols if c not in known]
        if unknown:
            raise CurationError(
                f"unknown column(s) {unknown} in dataset {self.name}; it has: {', '.join(known)}"
            )
        if not cols:
            import pandas as pd

            return pd.DataFrame(index=pd.RangeIndex(self.n_rows))
        sel = ", ".join(quote_ident(c) for c in [S.ROW, *cols])
        df = self._arrow_frame(f"SELECT {sel} FROM {S.SAMPLES}")
        return df.drop(columns=[S.ROW])

    def sample_rows(self, rows, columns: Iterable[str]):
        """``columns`` of the samples at ``rows`` (row indices), as a DataFrame in the order of
        ``rows``: a join with the row list in DuckDB, so a 10,000-point chart over 10M rows reads
        10,000 ids, not the column."""
        import pyarrow as pa

        cols = list(columns)
        known = {n for n, _ in self.columns()}
        unknown = [c for c in cols if c not in known]
        if unknown:
            raise CurationError(f"unknown column(s) {unknown} in dataset {self.name}")
        want = pa.table({"_pos": np.arange(len(rows), dtype=np.int64), "_row": np.asarray(rows, np.int64)})
        cur = self.con.cursor()
        try:
            cur.register("_want", want)
            sel = ", ".join(f"s.{quote_ident(c)}" for c in cols)
            df = cur.sql(f"SELECT w._pos, {sel} FROM _want w JOIN {S.SAMPLES} s ON s.{S.ROW} = w._row").to_arrow_table().to_pandas()
        finally:
            cur.close()
        df = df.sort_values("_pos", kind="stable").drop(columns=["_pos"]).reset_index(drop=True)
        if len(df) != len(rows):
            raise CurationError(f"dataset {self.name} has no row(s) among the {len(rows)} asked for "
                                f"(it has {self.n_rows:,}).")
        return df

    def _arrow_frame(self, query: str):
        """A query's rows as pandas through Arrow, in stored order, restored to ``row_idx`` order
        when the scan did not keep it: at 10M rows `ORDER BY row_idx` + fetch_df took 11.6 s, this
        2.3 s. Tables are written in row order and DuckDB keeps insertion order on a plain scan
        (preserve_insertion_order); the order is checked, not assumed. A cursor of its own leaves a
        pending result of the connection alone."""
        cur = self.con.cursor()
        try:
            df = cur.sql(query).to_arrow_table().to_pandas()
        finally:
            cur.close()
        if S.ROW in df.columns:
            rows = df[S.ROW].to_numpy()
            if len(rows) > 1 and not (rows[1:] > rows[:-1]).all():
                df = df.sort_values(S.ROW, kind="stable", ignore_index=True)
        return df

    def embeddings(self, kind: str) -> np.ndarray | None:
        """All ``kind`` ("image" or "text") vectors as float32 of shape (n_rows, dim), or None."""
        return self.vectors((kind,))[kind]

    def vectors(self, kinds: Iterable[str] = S.EMB_KINDS,
                out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray | None]:
        """Several embedding kinds in one scan: {kind: float32 (n_rows, dim) or None}.

        Read through Arrow: each batch's fixed-size-list values are one contiguous float buffer,
        copied into a preallocated array, so no Python object is made per row. One scan for both
        kinds reads 1M x 512 x 2 in about half the time of two scans.
        """
        kinds = list(kinds)
        out_arrays = out
        out: dict[str, np.ndarray | None] = {k: None for k in kinds}
        present = [k for k in kinds if self.dim(k) is not None]
        if not present:
            return out
        n = self.n_rows
        given = dict(out_arrays or {})
        for k in present:
            out[k] = given[k] if k in given else np.empty((n, self.dim(k)), dtype=np.float32)
        if self.sharded:
            src = self.vector_source()
            for k in present:
                for a in range(0, n, 1 << 16):
                    out[k][a:a + (1 << 16)] = src.read_range(k, a, min(n, a + (1 << 16)))
            return out
        cols = ", ".join(S.emb_column(k) for k in present)
        reader = self.con.sql(f"SELECT {S.ROW}, {cols} FROM {S.EMBEDDINGS}").to_arrow_reader(1 << 16)
        rows = np.empty(n, dtype=np.int64)
        pos = 0
        for batch in reader:
            m = batch.num_rows
            if pos + m > n:
                raise StateError(f"{self.path}: embeddings table has more rows than samples ({n}).")
            rows[pos : pos + m] = batch.column(0).to_numpy()
            for j, k in enumerate(present, start=1):
                out[k][pos : pos + m] = fixed_list_to_numpy(batch.column(j), self.dim(k))
            pos += m
        if pos != n:
            raise StateError(f"{self.path}: embeddings table has {pos} rows, samples has {n}.")
        if not np.array_equal(rows, np.arange(n)):  # DuckDB keeps insertion order; safety net
            order = np.argsort(rows, kind="stable")
            for v in out.values():
                if v is not None:
                    v[...] = v[order]  # in place: a caller's preallocated view is filled too
        return out

    @property
    def sharded(self) -> bool:
        """Whether the vectors live in shards beside the file (:mod:`curation.vector_io`)."""
        return (self.meta.get("vectors") or {}).get("layout") == "shards"

    def vector_source(self):
        """The vectors as a :class:`curation.vector_io.VectorSource`: row ranges and row sets read
        on demand (shards, or the embeddings table of an inline dataset). Close it when done."""
        from curation.vector_io import open_source

        return open_source(self)

    def read_table(self, name: str, columns: Iterable[str] | None = None):
        """A derived table as a pandas DataFrame (ordered by row_idx when it has one)."""
        known = self._table_columns(name)
        if known is None:
            raise StateError(f"dataset {self.name} has no table {name!r}.")
        sel = "*" if columns is None else ", ".join(quote_ident(c) for c in columns)
        return self._arrow_frame(f"SELECT {sel} FROM {quote_ident(name)}")

    def aggregate(self, name: str, exprs: Mapping[str, str]) -> dict:
        """One row of aggregates over table ``name``: {key: value of SQL expression}, computed by
        DuckDB without reading the table into Python. The expressions are the library's own (never
        user text); the table name is quoted."""
        if not self.has_table(name):
            raise StateError(f"dataset {self.name} has no table {name!r}.")
        keys = list(exprs)
        row = self.con.execute(f"SELECT {', '.join(exprs[k] for k in keys)} FROM {quote_ident(name)}").fetchone()
        return dict(zip(keys, row))

    def read_arrow(self, name: str, columns: Iterable[str] | None = None):
        """A table as a pyarrow Table (row_idx order when it has one), without pandas."""
        if not self.has_table(name):
            raise StateError(f"dataset {self.name} has no table {name!r}.")
        sel = "*" if columns is None else ", ".join(quote_ident(c) for c in columns)
        cur = self.con.cursor()  # stored order, checked (see _arrow_frame)
        try:
            t = cur.sql(f"SELECT {sel} FROM {quote_ident(name)}").to_arrow_table()
        finally:
            cur.close()
        if S.ROW in t.column_names and t.num_rows > 1:
            rows = t.column(S.ROW).to_numpy()
            if not (rows[1:] > rows[:-1]).all():
                t = t.take(np.argsort(rows, kind="stable"))
        return t

    # -- writes ----------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise CurationError(f"dataset {self.path} is open read-only; open it for writing.")

    def write_tables(self, tables: Mapping[str, object]) -> None:
        """Create or replace several tables in one transaction: all change, or none does.

        Parameters
        ----------
        tables : mapping of name -> pandas DataFrame or pyarrow Table
        """
        self._check_writable()
        self._transaction(lambda: self._replace_tables(tables))

    def _transaction(self, work) -> None:
        import duckdb

        self.con.execute("BEGIN TRANSACTION")
        try:
            work()
            self.con.execute("COMMIT")
        except BaseException as e:
            try:
                self.con.execute("ROLLBACK")
            except duckdb.Error:  # the failed statement already ended the transaction
                pass
            if isinstance(e, duckdb.Error):
                raise CurationError(f"cannot write to dataset {self.path}: {_first_line(e)}. "
                                    f"Nothing was changed.") from e
            raise

    def _replace_tables(self, tables: Mapping[str, object]) -> None:
        for name, data in tables.items():
            files = _parquet_files(data)
            if files is not None:
                # DuckDB's own Parquet reader: through Arrow, writing a 10M-row kNN graph (880 MB)
                # held 2.2 GB more (the scanned batches stay referenced until the query ends), read
                # natively 0.75 GB; the rows keep the file's order (preserve_insertion_order)
                self.con.execute(f"CREATE OR REPLACE TABLE {quote_ident(name)} AS SELECT * FROM read_parquet(?)",
                                 [files])
                continue
            view = f"_incoming_{uuid.uuid4().hex}"
            self.con.register(view, data)
            try:
                self.con.execute(f"CREATE OR REPLACE TABLE {quote_ident(name)} AS SELECT * FROM {view}")
            finally:
                self.con.unregister(view)

    def _ensure_runs_table(self) -> None:
        """The runs table with ``run_id`` as its primary key (older files are migrated, keeping the
        last row of any repeated id)."""
        cols = ", ".join(f"{c} VARCHAR" for c in RUN_COLUMNS[1:])
        if not self.has_table(S.RUNS):
            self.con.execute(f"CREATE TABLE {S.RUNS} (run_id VARCHAR PRIMARY KEY, {cols})")
            return
        has_pk = self.con.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'",
            [S.RUNS]).fetchone()[0]
        if has_pk:
            return
        old = self.read_table(S.RUNS)
        old = old.drop_duplicates("run_id", keep="last")
        self.con.execute(f"DROP TABLE {S.RUNS}")
        self.con.execute(f"CREATE TABLE {S.RUNS} (run_id VARCHAR PRIMARY KEY, {cols})")
        view = f"_incoming_{uuid.uuid4().hex}"
        self.con.register(view, old[list(RUN_COLUMNS)])
        try:
            self.con.execute(f"INSERT INTO {S.RUNS} SELECT * FROM {view}")
        finally:
            self.con.unregister(view)

    def record_run(self, kind: str, config: Mapping, timings: Mapping | None = None,
                   outputs: Mapping | None = None, run_id: str | None = None,
                   extra_tables: Mapping[str, object] | None = None) -> str:
        """Record a run (config, input fingerprint, software version, timings) atomically with
        its output tables. Returns the run id.

        ``run_id`` is the table's primary key: recording an id that exists replaces that row (an
        analysis run that completed more steps), never adds a second one.
        """

        self._check_writable()
        run_id = run_id or f"{kind}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        row = [run_id, kind, now(), json.dumps(dict(config), sort_keys=True), self.fingerprint,
               __version__, json.dumps(dict(timings or {}), sort_keys=True),
               json.dumps(dict(outputs or {}), sort_keys=True)]

        def work():
            self._replace_tables(dict(extra_tables or {}))
            self._ensure_runs_table()
            self.con.execute(f"INSERT OR REPLACE INTO {S.RUNS} VALUES ({', '.join('?' * len(row))})", row)

        # DuckDB's buffer pool (up to 80% of the machine by default) kept the new tables' blocks
        # in memory until the commit: at 10M rows the analysis's write set its peak (8.76 GB against
        # 6.94 in its largest step); with a limit the blocks go to the file as they fill
        limited = bool(extra_tables) and bool(WRITE_MEMORY_LIMIT)  # None: DuckDB's default
        if limited:
            self.con.execute(f"SET memory_limit = '{WRITE_MEMORY_LIMIT}'")
        try:
            self._transaction(work)
        finally:
            if limited:
                self.con.execute("RESET memory_limit")
        return run_id

    # -- named id sets: what exclude / include rules refer to ------------------------------------
    def search_captions(self, text: str, limit: int = 100):
        """Rows whose caption contains every word of ``text`` (case-insensitive substring match,
        words bound as parameters, never pasted into SQL). Returns a DataFrame row_idx, id, caption
        in row order."""
        words = [w for w in str(text).split() if w]
        if not words:
            raise CurationError("search: give at least one word.")
        if S.CAPTION not in [c for c, _ in self.columns()]:
            raise CurationError(f"dataset {self.name} has no captions to search.")
        esc = [w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for w in words]
        where = " AND ".join(f"{S.CAPTION} ILIKE ? ESCAPE '\\'" for _ in esc)
        sql = (f"SELECT {S.ROW}, {S.ID}, {S.CAPTION} FROM {S.SAMPLES} WHERE {where} "
               f"ORDER BY {S.ROW} LIMIT ?")
        return self.con.execute(sql, [f"%{w}%" for w in esc] + [int(limit)]).fetch_df()

    def runs(self, kind: str | None = None):
        """Recorded runs, oldest first (DataFrame; empty when none)."""
        import pandas as pd

        if not self.has_table(S.RUNS):
            return pd.DataFrame(columns=list(RUN_COLUMNS))
        df = self.read_table(S.RUNS)
        df = df.sort_values("created", kind="stable").reset_index(drop=True)
        return df if kind is None else df[df["kind"] == kind].reset_index(drop=True)


def _first_line(e) -> str:
    """An error's first line: DuckDB adds multi-line advice meant for programmers."""
    return (str(e).strip().splitlines() or [""])[0].rstrip(".")


RUN_COLUMNS = ("run_id", "kind", "created", "config", "fingerprint", "version", "timings", "outputs")


def now() -> str:
    """Creation time with microseconds, so runs recorded within one second keep their order."""
    from datetime import datetime

    return datetime.now().isoformat(timespec="microseconds")


def create_dataset(path: str | os.PathLike, samples, vectors: Mapping[str, np.ndarray | None],
                   meta: Mapping | None = None, replace: bool = False,
                   extra_tables: Mapping[str, object] | None = None, *, vector_layout: str = "auto",
                   vector_dtype: str = "auto", progress=None, shard_rows: int | None = None) -> str:
    """Write a whole dataset file atomically and return its fingerprint.

    Parameters
    ----------
    path : path-like
        Target ``.duckdb`` file.
    samples : pyarrow.Table
        Validated samples with ``id`` (unique, non-null strings) and optional ``image``,
        ``caption`` and metadata columns, in the canonical row order.
    vectors : mapping {"image": ndarray (n, d_img) or None, "text": ndarray (n, d_txt) or None}
        Row-aligned with ``samples``; stored as float32 (a memory-mapped float32 file is not copied).
    meta : mapping, optional
        Extra metadata (models, image_root, shared_space, source...).
    replace : bool
        Replace an existing dataset. Without it an existing file is refused (never merged).
    extra_tables : mapping, optional
        Further tables to write into the new file (the demo's ground truth).
    vector_layout, vector_dtype : str
        Where and how the vectors are kept (:func:`curation.vector_io.resolve_layout`): "auto" keeps
        pools under 200k rows inside the file as float32 and shards larger ones beside it
        (float16 once float32 would pass 2 GiB); "shards" / "inline", "float16" / "float32" on request.
        Shards are written block by block from ``vectors`` (a memory-mapped input is never read whole).
    progress : callable(rows), optional
        Called as shards are written.
    shard_rows : int, optional
        Rows per shard (default :data:`curation.vector_io.SHARD_ROWS`).

    The file is built at a temporary path beside the target and moved over it only when complete;
    shards go to a temporary folder first and into ``<file>.vectors/<fingerprint>/`` before it.
    """
    from curation import vector_io as V
    import duckdb
    import pyarrow as pa

    path = Path(path)
    if path.exists() and not replace:
        raise CurationError(
            f"dataset {path} already exists. Fix: pass --replace to overwrite it, or choose "
            f"another path; datasets are never merged silently."
        )
    if path.exists() and not is_dataset(path):
        raise CurationError(f"{path} exists and is not a curation dataset; refused to replace it. "
                            f"Fix: choose another path.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CurationError(f"cannot create the folder {path.parent}: {e.strerror}. Fix: choose a writable "
                            f"location for the dataset.") from None
    if not os.access(path.parent, os.W_OK):
        raise CurationError(f"the folder {path.parent} is not writable. Fix: choose a writable location "
                            f"for the dataset, or fix its permissions.")
    remove_stale_temps(path)
    n = samples.num_rows
    dims = {k: (None if vectors.get(k) is None else int(vectors[k].shape[1])) for k in S.EMB_KINDS}
    layout, vdtype = V.resolve_layout(vector_layout, vector_dtype, n, dims)
    if shard_rows is not None and (shard_rows < 1 or layout != "shards"):
        raise CurationError(f"--shard-rows {shard_rows}: " + ("give at least 1 row per shard." if shard_rows < 1 else
                            f"this dataset's vectors go inside the file ({n:,} rows). Fix: add --vector-layout "
                            "shards, or leave --shard-rows out."))
    samples = samples.add_column(0, S.ROW, pa.array(np.arange(n, dtype=np.int64)))
    m = dict(meta or {})
    m.pop("vectors", None)
    m.update({f"{k}_dim": d for k, d in dims.items()})
    tables = [(S.SAMPLES, samples)]
    shard_dir = created_dir = None
    old_fp = _sharded_fingerprint(path)  # the content a replace removes once it has landed
    if layout == "shards":
        hasher = fingerprint_hasher(samples)
        tmp_dir = V.tmp_shard_folder(path)
        try:
            records = V.write_shards(tmp_dir, vectors, vdtype, rows_per_shard=shard_rows, hasher=hasher,
                                      progress=progress)
            fingerprint = hasher.hexdigest()
            created_dir = not (V.vectors_folder(path) / fingerprint).exists()
            shard_dir = V.install_shards(path, fingerprint, tmp_dir)
        except BaseException as e:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            try:
                tmp_dir.parent.rmdir()  # the folder beside the file, when this write made it
            except OSError:
                pass
            if isinstance(e, OSError):
                raise CurationError(f"cannot write the vector shards of {path} in {tmp_dir.parent}: "
                                    f"{e.strerror or e}. Nothing was changed. Fix: make that folder writable "
                                    f"(or free space), or choose another dataset path.") from None
            raise
        m["vectors"] = V.shard_meta(vdtype, records)
    else:
        vectors = {k: (None if v is None else np.ascontiguousarray(v, dtype=np.float32))
                   for k, v in vectors.items()}
        fingerprint = compute_fingerprint(samples, vectors)
        emb_cols = {S.ROW: samples.column(S.ROW)}  # ids live in samples; row_idx joins them
        for kind in S.EMB_KINDS:
            if vectors.get(kind) is not None:
                emb_cols[S.emb_column(kind)] = vectors_to_arrow(vectors[kind])
        tables.append((S.EMBEDDINGS, pa.table(emb_cols)))
    m.update(fingerprint=fingerprint, n_rows=n, schema_version=S.SCHEMA_VERSION,
             created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    meta_table = pa.table({"key": list(m), "value": [json.dumps(m[k], sort_keys=True) for k in m]})

    def write(tmp):
        con = duckdb.connect(str(tmp))
        try:
            con.execute("SET preserve_insertion_order = true")
            for name, data in [*tables, (S.META, meta_table), *(extra_tables or {}).items()]:
                con.register("_incoming", data)
                con.execute(f"CREATE TABLE {quote_ident(name)} AS SELECT * FROM _incoming")
                con.unregister("_incoming")
            con.execute("CHECKPOINT")
        except duckdb.InterruptException:
            raise KeyboardInterrupt from None  # Ctrl-C inside a query: the CLI's interrupt message
        except duckdb.Error as e:
            raise CurationError(f"cannot write dataset {path}: {_first_line(e)}. Nothing was changed.") from None
        finally:
            con.close()

    try:  # a new dataset is created exclusively: of two ingests to one new path only the first lands
        atomic_write(path, write, what="dataset", exclusive=not replace)
    except BaseException as e:
        if created_dir and shard_dir is not None:  # shards nobody refers to
            shutil.rmtree(shard_dir, ignore_errors=True)
        if not isinstance(e, FileExistsError):
            raise
        raise CurationError(f"dataset {path} was created by another process while this one was writing it; "
                            f"nothing was changed. Fix: choose another path, or pass --replace to overwrite "
                            f"it.") from None
    V.remove_old_shards(path, old_fp, keep=fingerprint if layout == "shards" else None)  # a replaced dataset's
    log.info("wrote dataset %s: %d rows, fingerprint %s", path, n, fingerprint)
    return fingerprint


def _sharded_fingerprint(path: Path) -> str | None:
    """The fingerprint of the sharded dataset at ``path`` (None: none, or its vectors are inline)."""
    if not is_dataset(path):
        return None
    try:
        with open_store(path, wait=0) as s:
            return s.fingerprint if s.sharded else None
    except CurationError:
        return None


def copy_dataset(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a dataset file and its vector shards (when it has them, checked against their sha256)
    to ``dst``; the copy opens on its own. ``dst`` and its vectors folder must not exist; a failed
    copy leaves nothing behind."""
    from curation import vector_io as V

    src, dst = Path(src), Path(dst)
    if dst.exists() or V.vectors_folder(dst).exists():
        raise CurationError(f"{dst} (or its vectors folder {V.vectors_folder(dst).name}) exists. Fix: choose "
                            f"another path, or remove them first.")
    with open_store(src) as s:
        fp, sharded = s.fingerprint, s.sharded
        if sharded:
            bad = s.vector_source().verify()
            if bad:
                raise CurationError(f"the vector shards {', '.join(bad)} of {src} do not match their checksums; "
                                    f"nothing was copied. Fix: re-ingest {src} (ingest ... --replace).")
    try:
        shutil.copyfile(src, dst)
        if sharded:
            shutil.copytree(V.vectors_folder(src) / fp, V.vectors_folder(dst) / fp)
    except OSError as e:
        dst.unlink(missing_ok=True)
        shutil.rmtree(V.vectors_folder(dst), ignore_errors=True)
        raise CurationError(f"cannot copy {src} to {dst}: {e.strerror or e}. Nothing was left at {dst}.") from None
    return dst
