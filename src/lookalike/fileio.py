"""Documents in files: streaming readers and writers for JSON Lines, CSV and Parquet.

Readers yield batches of plain dicts (``{"id": ..., "vec": [...], **metadata}``) so a file larger
than memory can be indexed; writers append batches. An export is one self-describing file: the
collection's spec travels with the documents, as a first line ``{"$lookalike": {...}}`` in JSON
Lines and as the ``lookalike`` key of the schema metadata in Parquet. Vectors are written as the
float32 values Milvus stores (JSON numbers in shortest float64 form, Parquet ``list<float32>``),
so reading them back gives the same float32 values bit for bit.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from .errors import InvalidInputError
from .schema import ID_FIELD, VECTOR_FIELD

FORMATS = ("jsonl", "csv", "parquet")
# What an export is written in, and so what an import reads: CSV cannot carry the schema header.
EXPORT_FORMATS = ("jsonl", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
               ".pq": "parquet"}
# The header key starts with "$", which no Milvus field name can, so it never hides a document.
HEADER_KEY = "$lookalike"
EXPORT_VERSION = 1
# Field types whose values are JSON in a CSV cell (and, for "json", in a Parquet string column).
_JSON_TYPES = {"json", "float_vector"}


def detect_format(path: str | Path, format: str | None = None) -> str:
    """The file's format: ``format`` if given, else from the extension (.jsonl, .csv, .parquet)."""
    if format:
        if format.lower() not in FORMATS:
            raise InvalidInputError(
                f"format {format!r} is unknown: use one of {', '.join(FORMATS)}"
            )
        return format.lower()
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise InvalidInputError(
            f"cannot tell the format of {str(path)!r} from its extension {suffix!r}: "
            f"name it .jsonl, .csv or .parquet, or pass a format ({', '.join(FORMATS)})"
        )
    return _EXTENSIONS[suffix]


def read_header(path: str | Path, format: str | None = None) -> dict | None:
    """The export header of a file written by :func:`open_writer`, or None for a plain file."""
    fmt = detect_format(path, format)
    if fmt == "parquet":
        return _parquet_header(_open_parquet(path))
    if fmt == "jsonl":
        with _open(path, "rb") as f:
            for line in f:
                if line.strip():
                    return _header_of(_parse_line(line, path, 1))
    return None


def count_rows(path: str | Path, format: str | None = None) -> int | None:
    """The number of documents when the file says so cheaply (Parquet), else None."""
    if detect_format(path, format) == "parquet":
        return _open_parquet(path).metadata.num_rows
    return None


def read_batches(
    path: str | Path,
    format: str | None = None,
    *,
    batch_size: int = 1000,
    field_types: Mapping[str, str] | None = None,
    rename: Mapping[str, str] | None = None,
) -> Iterator[list[dict]]:
    """The file's documents in lists of at most ``batch_size``, read lazily, one list at a time.

    Args:
        field_types: field name -> type name (as in a collection spec). CSV cells are strings, so
            they are converted by type; ``vec`` is always parsed as a JSON array, a field without
            a type stays a string.
        rename: keys to rename in each document (e.g. ``{"body": "text"}``).
    Returns:
        An iterator of batches; an export's header is skipped.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    fmt = detect_format(path, format)
    rows = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[fmt](
        path, dict(field_types or {}), batch_size)
    if rename:
        rows = ({rename.get(k, k): v for k, v in row.items()} for row in rows)
    return batched(rows, batch_size)


def batched(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Lists of at most ``size`` items, holding one list at a time."""
    batch: list[dict] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def read_vectors(path: str | Path) -> list[list[float]]:
    """Query vectors from a file: a JSON array (one vector or a list of them), JSON Lines of
    arrays, or a NumPy ``.npy`` array of shape (d,) or (n, d)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        import numpy as np

        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"cannot read vectors from {str(path)!r}: {e}") from None
        vectors = array.tolist()
    else:
        try:
            text = _open(path, "r").read()
        except UnicodeDecodeError:
            raise InvalidInputError(f"{str(path)!r} is not a JSON file of vectors") from None
        try:
            vectors = json.loads(text)
        except json.JSONDecodeError:
            vectors = [_parse_line(line, path, n) for n, line in enumerate(text.splitlines(), 1)
                       if line.strip()]
    if vectors and all(isinstance(x, (int, float)) for x in vectors):
        vectors = [vectors]
    if not vectors or not all(
        isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) for v in vectors
    ):
        raise InvalidInputError(
            f"{str(path)!r} holds no vectors: expected a JSON array of numbers or of arrays of "
            "numbers, JSON Lines of arrays, or a .npy array"
        )
    return vectors


class DocumentWriter:
    """Writes batches of documents to a JSON Lines or Parquet file, header first.

    Use as a context manager: ``with open_writer(path, header) as w: w.write(batch)``.
    """

    def __init__(self, path: Path, fmt: str, header: Mapping[str, Any]) -> None:
        self.path, self.format, self.header = path, fmt, dict(header)
        self.rows = 0
        self._types = _spec_types(self.header.get("spec") or {})
        self._file: IO[str] | None = None
        self._parquet: Any = None
        self._schema: Any = None
        if fmt == "jsonl":
            self._file = _open(path, "w")
            self._file.write(header_line(self.header))

    def write(self, documents: Iterable[Mapping[str, Any]]) -> None:
        """Append documents; the first Parquet batch fixes the columns of the file."""
        docs = [dict(d) for d in documents]
        if not docs:
            return
        if self._file is not None:
            self._file.write("".join(map(document_line, docs)))
        else:
            self._write_parquet(docs)
        self.rows += len(docs)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.format == "parquet":
            if self._parquet is None:  # an empty collection still gets a readable file
                self._write_parquet([])
            self._parquet.close()

    def __enter__(self) -> DocumentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_parquet(self, docs: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        json_fields = [n for n, t in self._types.items() if t == "json"]
        for d in docs:
            for name in json_fields:
                if name in d:
                    d[name] = _dumps(d[name])
        if self._parquet is None:
            self._schema = _arrow_schema(self._types, docs).with_metadata(
                {b"lookalike": _dumps(self.header).encode()}
            )
            self._parquet = pq.ParquetWriter(self.path, self._schema)
        self._parquet.write_table(pa.Table.from_pylist(docs, schema=self._schema))


def open_writer(path: str | Path, header: Mapping[str, Any],
                format: str | None = None) -> DocumentWriter:
    """A writer for an export: ``header`` holds at least ``spec`` (the collection's spec).

    Args:
        path: the file to write (replaced if it exists).
        header: the export header; ``version`` is added.
        format: ``jsonl`` or ``parquet``; default from the extension.
    Returns:
        A :class:`DocumentWriter` (a context manager).
    """
    fmt = detect_format(path, format)
    if fmt not in EXPORT_FORMATS:
        raise InvalidInputError("export writes JSON Lines (.jsonl) or Parquet (.parquet), not CSV")
    return DocumentWriter(Path(path), fmt, {"version": EXPORT_VERSION, **header})


def header_line(header: Mapping[str, Any]) -> str:
    """An export's first JSON Lines line, newline included: ``{"$lookalike": {...}}``.

    ``version`` is added when ``header`` lacks it.
    """
    return _dumps({HEADER_KEY: {"version": EXPORT_VERSION, **header}}) + "\n"


def document_line(document: Mapping[str, Any]) -> str:
    """One document as a JSON Lines line, newline included; float32 vectors stay exact."""
    return _dumps(document) + "\n"


# -- readers -----------------------------------------------------------------------------------

def _jsonl_rows(path: str | Path, field_types: dict, batch_size: int) -> Iterator[dict]:
    with _open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = _parse_line(line, path, number)
            if not isinstance(row, dict):
                raise InvalidInputError(
                    f"{path}:{number}: expected a JSON object, got {line[:60]!r}"
                )
            if not _header_of(row):
                yield row


def _csv_rows(path: str | Path, field_types: dict, batch_size: int) -> Iterator[dict]:
    # A 768-d vector as JSON is ~13 kB, beyond nothing, but 4096-d ones pass csv's 128 kB default.
    csv.field_size_limit(max(csv.field_size_limit(), 64 * 1024 * 1024))
    field_types[VECTOR_FIELD] = "float_vector"
    with _open(path, "r", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row:
                raise InvalidInputError(f"{path}:{reader.line_num}: more cells than header columns")
            yield {name: _cell(value, field_types.get(name), path, reader.line_num, name)
                   for name, value in row.items()
                   if value is not None and (value != "" or field_types.get(name) == "varchar")}


def _parquet_rows(path: str | Path, field_types: dict, batch_size: int) -> Iterator[dict]:
    parquet = _open_parquet(path)
    header = _parquet_header(parquet) or {}
    json_fields = [n for n, t in _spec_types(header.get("spec") or {}).items() if t == "json"]
    for record_batch in parquet.iter_batches(batch_size=batch_size):
        for row in record_batch.to_pylist():
            for name in json_fields:
                if row.get(name) is not None:
                    row[name] = json.loads(row[name])
            # A null cell is a missing value: the library applies defaults or names the field.
            yield {k: v for k, v in row.items() if v is not None}


def _cell(value: str, type_name: str | None, path: str | Path, line: int, name: str) -> Any:
    try:
        if type_name in _JSON_TYPES:
            return json.loads(value)
        if type_name in ("int8", "int16", "int32", "int64"):
            return int(value)
        if type_name in ("float", "double"):
            return float(value)
        if type_name == "bool":
            lowered = value.strip().lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError(value)
    except ValueError:
        shown = value if len(value) < 40 else value[:37] + "..."
        raise InvalidInputError(
            f"{path}:{line}: column {name!r}: {shown!r} is not a valid {type_name}"
        ) from None
    return value


def _parse_line(line: bytes | str, path: str | Path, number: int) -> Any:
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{path}:{number}: not valid JSON ({e})") from None


def _header_of(row: Any) -> dict | None:
    if isinstance(row, dict) and set(row) == {HEADER_KEY} and isinstance(row[HEADER_KEY], dict):
        return row[HEADER_KEY]
    return None


def _open_parquet(path: str | Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise InvalidInputError(f"file {str(path)!r} does not exist") from None
    except (OSError, pa.ArrowException) as e:
        raise InvalidInputError(f"{str(path)!r} is not a readable Parquet file: {e}") from None


def _parquet_header(parquet: Any) -> dict | None:
    raw = (parquet.schema_arrow.metadata or {}).get(b"lookalike")
    return json.loads(raw) if raw else None


def _open(path: str | Path, mode: str, **kwargs: Any) -> IO:
    try:
        return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}), **kwargs)
    except FileNotFoundError:
        missing = "file" if "r" in mode else "directory of"
        raise InvalidInputError(f"{missing} {str(path)!r} does not exist") from None
    except (IsADirectoryError, PermissionError) as e:
        raise InvalidInputError(f"cannot open {str(path)!r}: {e.strerror}") from None


# -- writers -----------------------------------------------------------------------------------

def _spec_types(spec: Mapping[str, Any]) -> dict[str, str]:
    """Field name -> lower-case type name: ``id`` and ``vec``, then the spec's ``fields``."""
    types = {ID_FIELD: "varchar", VECTOR_FIELD: "float_vector"}
    types.update({f["name"]: str(f.get("type", "")).lower() for f in spec.get("fields", [])
                  if isinstance(f, Mapping) and "name" in f})
    return types


def _arrow_schema(types: Mapping[str, str], docs: list[dict]) -> Any:
    """Columns typed by the spec (vectors as list<float32>: the values Milvus stores), other
    keys typed from the first batch."""
    import pyarrow as pa

    by_type = {"varchar": pa.string(), "json": pa.string(), "bool": pa.bool_(),
               "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
               "float": pa.float32(), "double": pa.float64(),
               "float_vector": pa.list_(pa.float32())}
    fields = [pa.field(name, by_type[t]) for name, t in types.items() if t in by_type]
    known = {f.name for f in fields}
    extra = [k for d in docs for k in d if k not in known]
    if extra:
        inferred = pa.Table.from_pylist([{k: d.get(k) for k in dict.fromkeys(extra)} for d in docs])
        fields += [f for f in inferred.schema if f.name not in known]
    return pa.schema(fields)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, default=_json_default,
                      separators=(",", ":"))


def _json_default(value: Any) -> Any:
    # Documents read back from Milvus may hold NumPy scalars and arrays; float32 -> Python float
    # is exact, so the JSON number parses back to the same float32.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")
