"""Export and import: a whole collection to one self-describing file, and back.

An export holds the collection's spec (schema, indexes, bound model) and every document, vectors
included, as the float32 values the engine stores: JSON Lines with a header line, or Parquet with
the header in its schema metadata (the formats are :mod:`lookalike.fileio`'s). Importing it
creates the collection from that spec and upserts the documents without normalising them again,
so export -> import gives back the same ids, vectors (bit for bit), metadata, schema and indexes.

``Collection.export`` and ``Client.import_collection`` are these functions; the CLI's ``export``
and ``import`` commands call them, and the HTTP export route streams :func:`export_lines`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import fileio
from .errors import ConflictError, InvalidInputError
from .schema import creation_options

if TYPE_CHECKING:
    from .client import Client
    from .collection import Collection

# Called after each batch with (documents done so far, documents in all or None if unknown).
OnBatch = Callable[[int, int | None], None]


def export_collection(
    collection: Collection,
    path: str | Path,
    format: str | None = None,
    *,
    batch_size: int = 1000,
    on_batch: OnBatch | None = None,
) -> int:
    """Write every document of ``collection``, vectors included, and its spec to one file.

    The collection is read ``batch_size`` documents at a time, so one larger than memory exports.
    The file is written beside ``path`` and renamed onto it at the end: a failed export leaves
    no truncated file under that name.

    Args:
        collection: the collection to export.
        path: the file to write (replaced if it exists); ``.jsonl``/``.ndjson`` or ``.parquet``.
        format: ``jsonl`` or ``parquet``, instead of the extension.
        batch_size: documents read from the engine, and written, at a time.
        on_batch: called after each batch with (documents written, documents in the collection).
    Returns:
        The number of documents written.
    """
    path = Path(path)
    fmt = _export_format(path, format, "export writes")
    _check_batch_size(batch_size)
    if not path.parent.is_dir():
        raise InvalidInputError(f"cannot export to {str(path)!r}: directory {str(path.parent)!r} "
                                "does not exist")
    header = export_header(collection)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with fileio.open_writer(partial, header, fmt) as writer:
            for batch in fileio.batched(collection.iterate(batch_size=batch_size), batch_size):
                writer.write(batch)
                if on_batch is not None:
                    on_batch(writer.rows, header["count"])
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return writer.rows


def export_lines(collection: Collection, *, batch_size: int = 1000) -> Iterator[str]:
    """The export of ``collection`` as JSON Lines, one line (newline included) at a time.

    The same text :func:`export_collection` writes to a ``.jsonl`` file: the header line, then one
    line per document. The header is read before this returns, so a missing collection or an
    unreachable engine raises here, before anything is sent; the documents are read lazily, in
    batches of ``batch_size``.

    Args:
        collection: the collection to export.
        batch_size: documents read from the engine at a time.
    Returns:
        An iterator of lines, for a streaming response or a file.
    """
    _check_batch_size(batch_size)
    first = fileio.header_line(export_header(collection))
    return _lines(first, collection.iterate(batch_size=batch_size))


def export_header(collection: Collection) -> dict[str, Any]:
    """The header an export of ``collection`` starts with: version, name, spec and count."""
    return {"version": fileio.EXPORT_VERSION, "collection": collection.name,
            "spec": collection.spec.to_json(), "count": collection.count()}


def read_export_header(path: str | Path, format: str | None = None) -> dict[str, Any]:
    """The header of an export file, checked: a plain file or a newer version is refused.

    Args:
        path: a file written by :func:`export_collection`.
        format: ``jsonl`` or ``parquet``, instead of the extension.
    Returns:
        The header: ``version``, ``collection`` (the exported name), ``spec`` and ``count``.
    """
    fmt = _export_format(path, format, _IMPORT_READS)
    header = fileio.read_header(path, fmt)
    if header is None:
        raise InvalidInputError(f"{path} has no lookalike export header: create the collection "
                                "and index the file into it (`lookalike index`) for a plain file")
    version = header.get("version")
    if not isinstance(version, int) or not 1 <= version <= fileio.EXPORT_VERSION:
        raise InvalidInputError(f"{path} is an export of version {version!r}; this lookalike reads "
                                f"versions 1 to {fileio.EXPORT_VERSION}: upgrade lookalike")
    if not isinstance(header.get("spec"), dict):
        raise InvalidInputError(f"{path}: the export header has no schema ('spec' object)")
    return header


def import_collection(
    client: Client,
    path: str | Path,
    name: str | None = None,
    *,
    format: str | None = None,
    batch_size: int = 1000,
    on_batch: OnBatch | None = None,
) -> tuple[Collection, int]:
    """Recreate a collection from an export: its schema and indexes, then its documents.

    A collection of that name with the same schema is reused (documents it holds that the file
    lacks stay); one with another schema is a :class:`ConflictError`. Documents are upserted by id,
    so importing again after a failure part-way is safe. Vectors are stored as exported, not
    normalised again (that could change their bits).

    Args:
        client: the organisation to import into.
        path: a file written by :func:`export_collection`.
        name: the collection to create; default the exported collection's name.
        format: ``jsonl`` or ``parquet``, instead of the extension.
        batch_size: documents read from the file, and written, at a time.
        on_batch: called after each batch with (documents read, documents in the export).
    Returns:
        The collection and the number of documents written.
    """
    _check_batch_size(batch_size)
    fmt = _export_format(path, format, _IMPORT_READS)
    header = read_export_header(path, fmt)
    name = header.get("collection") if name is None else name
    if not isinstance(name, str):
        raise InvalidInputError(f"{path}: the export header names no collection: pass a name")
    try:
        options = creation_options(header["spec"])
    except InvalidInputError as error:
        raise InvalidInputError(f"{path}: the export header's schema is not valid: {error}") from None
    try:
        collection = client.create_collection(name, **options)
    except ConflictError as error:
        raise ConflictError(f"cannot import {path} into {name!r}: {error}") from None
    total = header.get("count") if isinstance(header.get("count"), int) else None
    batches = fileio.read_batches(path, fmt, batch_size=batch_size)
    written = collection.index(_reported(batches, on_batch, total), normalize=False, upsert=True,
                               progress=False)
    return collection, written


_IMPORT_READS = "import reads what export writes:"


def _export_format(path: str | Path, format: str | None, verb: str) -> str:
    fmt = fileio.detect_format(path, format)
    if fmt not in fileio.EXPORT_FORMATS:
        raise InvalidInputError(f"{verb} JSON Lines (.jsonl) or Parquet (.parquet), not CSV "
                                f"({str(path)!r})")
    return fmt


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")


def _lines(first: str, documents: Iterable[dict[str, Any]]) -> Iterator[str]:
    yield first
    for document in documents:
        yield fileio.document_line(document)


def _reported(batches: Iterable[list[dict]], on_batch: OnBatch | None,
              total: int | None) -> Iterator[dict]:
    """The documents of ``batches``, one at a time, reporting after each batch."""
    done = 0
    for batch in batches:
        yield from batch
        done += len(batch)
        if on_batch is not None:
            on_batch(done, total)
