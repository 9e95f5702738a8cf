"""Metadata tables into Arrow: CSV, TSV, JSON lines and Parquet (a file or a folder), UTF-8 checked,
and values that keep their text (a CSV column is a number only when every value reads back unchanged
from it; ``--column-types`` forces a type). Every problem is one error naming the file, row or column.
"""

from __future__ import annotations

import re
from pathlib import Path

from curation import schema as S
from curation.errors import InputError


def read_table_file(path: str | Path, string_columns=()) -> object:
    """Read a CSV or Parquet file (or folder of Parquet files) into a pyarrow Table.

    CSV text must be UTF-8: the first invalid byte is reported with its line number. Columns in
    ``string_columns`` are read as strings (so ids like ``007`` keep their zeros).
    """
    import pyarrow as pa

    p = Path(path)
    if not p.exists():
        raise InputError("file not found.", file=p, fix="check the path.")
    if p.is_dir() or p.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
        if not files:
            raise InputError("folder holds no .parquet files.", file=p,
                             fix="point at a Parquet file or a folder of them.")
        parts = []
        for f in files:
            try:
                parts.append(pq.read_table(f))
            except (pa.ArrowException, OSError) as e:
                raise InputError(f"cannot read Parquet: {e}", file=f,
                                 fix="check that the file is valid Parquet.") from None
        try:
            table = pa.concat_tables(parts, promote_options="default")
        except pa.ArrowException as e:
            col = next((n for n in parts[0].column_names if any(
                n in t.column_names and t.schema.field(n).type != parts[0].schema.field(n).type for t in parts)), None)
            other = next((f for f, t in zip(files, parts) if col in t.column_names and
                          t.schema.field(col).type != parts[0].schema.field(col).type), None)
            raise InputError(f"the files disagree on a column's type ({files[0].name}: "
                             f"{parts[0].schema.field(col).type if col else '?'}, "
                             f"{other.name if other else '?'}: "
                             f"{parts[files.index(other)].schema.field(col).type if other else '?'}): {e}",
                             file=p, column=col, fix="write that column with one type in every file.") from None
        _check_unique_names(table.column_names, p)
        _check_utf8_arrow(table, p)
        return table
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        import pyarrow.json as pjson

        try:
            table = pjson.read_json(p)
        except pa.ArrowInvalid as e:
            m = re.search(r"[Rr]ow #?(\d+)", str(e))
            raise InputError(f"cannot parse JSON lines: {e}", file=p, row=int(m.group(1)) if m else None,
                             fix="one JSON object per line, UTF-8.") from e
        _check_unique_names(table.column_names, p)
        for c in string_columns:
            if c in table.column_names and not pa.types.is_string(table.column(c).type):
                table = table.set_column(table.column_names.index(c), c, table.column(c).cast(pa.string()))
        return table
    if p.suffix.lower() not in (".csv", ".tsv", ".txt"):
        raise InputError(f"unsupported metadata format '{p.suffix}'.", file=p,
                         fix="use a .csv, .tsv, .jsonl or .parquet file.")
    raw = p.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not part of the first column's name
        raw = raw[3:]
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"text is not valid UTF-8 (byte 0x{raw[e.start]:02x} at line {line}).", file=p,
            row=max(line - 2, 0), fix="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
        ) from None
    if not raw.strip():
        raise InputError("file is empty.", file=p, fix="export the metadata with a header row.")
    import pyarrow.csv as pcsv

    header = raw.split(b"\n", 1)[0].decode("utf-8")
    delim = "\t" if p.suffix.lower() == ".tsv" or ("\t" in header and "," not in header) else ","
    names = [h.strip().strip('"') for h in header.rstrip("\r").split(delim)]
    _check_unique_names(names, p)
    types = {c: pa.string() for c in string_columns if c in names}
    def parse(block_size=None):
        return pcsv.read_csv(
            pa.py_buffer(raw), parse_options=pcsv.ParseOptions(delimiter=delim, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True),
            read_options=pcsv.ReadOptions(block_size=block_size) if block_size else None,
        )

    try:
        try:
            table = parse()
            block = None
        except pa.ArrowInvalid as e:
            if "straddl" not in str(e) or len(raw) >= 2**31 - 1:
                raise
            # a value longer than Arrow's 1 MB block (a 10 MB caption): parse the file as one block
            block = len(raw) + 1
            table = parse(block_size=block)
        numeric = [f.name for f in table.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
        if numeric:
            types.update({c: pa.string() for c in numeric})
            return keep_codes_as_text(table, parse(block_size=block))
        return table
    except pa.ArrowException as e:
        msg = str(e)
        line = _csv_error_line(raw, msg)
        where = f" (line {line} of the file)" if line else ""
        m = re.search(r"[Rr]ow #?(\d+)", msg)
        row = int(m.group(1)) if m else (line - 2 if line and line >= 2 else None)
        raise InputError(f"cannot parse CSV{where}: {msg.splitlines()[0][:300]}", file=p, row=row,
                         fix="check quoting and the number of fields on that row.") from None


# a number whose text does not come back from it: a code with leading zeros (zip 02139, case 00012),
# or more digits than the column's type holds exactly (an int64 has 18 safe digits, a float64 15)
_LEADING_ZERO = r"^\s*[-+]?0[0-9]"


_INT_TEXT = r"^\s*[-+]?[0-9]+\s*$"


def keep_codes_as_text(table, as_text):
    """``table`` (a CSV parsed with Arrow's type inference) with every numeric column whose values
    would not survive the round trip as numbers put back as the text it was read from
    (``as_text``: the same file with those columns as strings). Numbers that are numbers stay."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in table.column_names:
        typ = table.schema.field(name).type
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
            continue
        text = as_text.column(name)
        digits = pc.utf8_length(pc.replace_substring_regex(text, r"[^0-9]", ""))
        whole = pc.match_substring_regex(text, _INT_TEXT)
        lossy = pc.or_kleene(pc.match_substring_regex(text, _LEADING_ZERO),
                             pc.and_kleene(whole, pc.greater(digits, 15 if pa.types.is_floating(typ) else 18)))
        if pc.any(lossy).as_py():
            table = table.set_column(table.column_names.index(name), name, text)
    return table


def _storable(table):
    """Metadata column types DuckDB cannot take from Arrow, widened losslessly: float16 -> float32
    (DuckDB's "Unsupported Internal Arrow Type e" named neither the column nor the type)."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_float16(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.float32()))
    return table


COLUMN_TYPES = {"text": "string", "number": "float64", "integer": "int64", "boolean": "bool"}


def parse_column_types(text: str | None) -> dict[str, str]:
    """``"zip=text,age=number"`` -> {"zip": "text", "age": "number"} (types: text, number,
    integer, boolean)."""
    out = {}
    if text is None:
        return out
    if not text.strip():
        raise InputError("--column-types is empty.", fix="e.g. zip=text,age=number, or leave the flag out.")
    for item in (text or "").split(","):
        if not item.strip():
            raise InputError(f"--column-types {text!r} has an empty item.", fix="e.g. zip=text,age=number.")
        name, sep, kind = item.partition("=")
        kind = kind.strip().lower()
        if not sep or not name.strip() or kind not in COLUMN_TYPES:
            raise InputError(f"--column-types item {item.strip()!r} is not COLUMN=TYPE.",
                             fix=f"e.g. zip=text,age=number (types: {', '.join(COLUMN_TYPES)}).")
        if out.get(name.strip(), kind) != kind:
            raise InputError(f"--column-types gives {name.strip()!r} two types ({out[name.strip()]}, {kind}).",
                             fix="give each column one type.")
        out[name.strip()] = kind
    return out


def apply_column_types(table, column_types: dict, file=None):
    """Cast the named columns of ``table`` (pyarrow) to the types a user forced; one clear error
    naming the column and the first value that does not convert."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name, kind in (column_types or {}).items():
        if name not in table.column_names:
            raise InputError(f"--column-types names {name!r}, which is not a column.", file=file,
                             fix=f"use one of: {', '.join(table.column_names)}.")
        if name in (S.ID,):
            raise InputError("the id column is always text.", column=name, fix="leave it out of --column-types.")
        col = table.column(name)
        target = pa.type_for_alias(COLUMN_TYPES[kind])
        if kind == "text" and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            col = pc.cast(col, pa.string())
        else:
            try:
                col = pc.cast(pc.utf8_trim_whitespace(col) if pa.types.is_string(col.type) and kind != "text" else col,
                              target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InputError(f"column {name!r} cannot be read as {kind}: {str(e).splitlines()[0][:200]}.",
                                 file=file, column=name, fix=f"clean its values, or drop {name}={kind}.") from None
        table = table.set_column(table.column_names.index(name), name, col)
    return table


def _check_unique_names(names, path) -> None:
    seen, dup = set(), []
    for n in names:
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    if dup:
        raise InputError(f"column name(s) {', '.join(repr(d) for d in dup)} appear more than once in the header.",
                         file=path, fix="give every column its own name.")


def _csv_error_line(raw: bytes, msg: str) -> int | None:
    """1-based line of the file Arrow's parse error quotes (it quotes the row, not its number)."""
    m = re.search(r"got \d+: (.*)$", msg, re.S)
    if not m:
        return None
    quoted = m.group(1).strip().encode("utf-8", "replace")
    pos = raw.find(quoted[:200]) if quoted else -1
    return raw.count(b"\n", 0, pos) + 1 if pos >= 0 else None


def _check_utf8_arrow(table, path) -> None:
    import pyarrow as pa

    try:
        table.validate(full=True)
    except pa.ArrowInvalid:
        for name in table.column_names:
            col = table.column(name)
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                continue
            for i, v in enumerate(col.cast(pa.large_binary()).to_pylist()):
                if v is not None:
                    try:
                        v.decode("utf-8")
                    except UnicodeDecodeError:
                        raise InputError("text is not valid UTF-8.", file=path, column=name, row=i,
                                         fix="re-encode that column as UTF-8.") from None
        raise
