"""Documents in: validation against the collection's spec, normalisation, and chunked writes.

Every check happens before a chunk reaches Milvus, because Milvus Lite stores empty ids,
duplicate ids within one call, NaN and inf without complaint.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConflictError, InvalidInputError, LookalikeError
from .schema import ID_FIELD, ID_MAX_LENGTH, VECTOR_FIELD, CollectionSpec, FieldSpec

# Milvus refuses messages over 64 MB; chunks stay far below it and small enough for a steady
# progress bar, while large enough that per-call overhead does not dominate.
CHUNK_BYTES = 16 * 1024 * 1024
CHUNK_ROWS = 5000
TEXT_FIELD = "text"

_INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


def as_vector(value: Any, dim: int, what: str, normalize: bool) -> np.ndarray:
    """Check one vector (length, finiteness, non-zero when normalising) and return it as float32."""
    try:
        vec = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what}: 'vec' must be a list of numbers") from None
    if vec.ndim != 1:
        raise InvalidInputError(f"{what}: 'vec' must be a flat list of {dim} numbers, got shape {vec.shape}")
    if vec.shape[0] != dim:
        raise InvalidInputError(f"{what}: 'vec' has dimension {vec.shape[0]}, the collection expects {dim}")
    if not np.isfinite(vec).all():
        raise InvalidInputError(f"{what}: 'vec' contains NaN or infinity")
    if normalize:
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            raise InvalidInputError(f"{what}: 'vec' is all zeros and cannot be normalised")
        vec = vec / norm
    return vec


def check_id(value: Any, what: str) -> str:
    """Check a document id: a non-empty string of at most ID_MAX_LENGTH characters."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what}: 'id' must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidInputError(f"{what}: 'id' is empty")
    if len(value) > ID_MAX_LENGTH:
        raise InvalidInputError(f"{what}: 'id' is {len(value)} characters long (at most {ID_MAX_LENGTH})")
    return value


def check_ids(ids: Any, parameter: str = "ids") -> list[str]:
    """Check a list of ids given to a read or delete call."""
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        raise InvalidInputError(f"{parameter} must be a list of strings, not {type(ids).__name__}")
    return [check_id(value, f"{parameter}[{i}]") for i, value in enumerate(ids)]


def id_filter(ids: Sequence[str], negate: bool = False) -> str:
    """A filter expression matching ``ids``; each is a JSON string literal, so no quote,
    backslash or expression syntax inside an id can escape it."""
    literals = ", ".join(json.dumps(i, ensure_ascii=False) for i in ids)
    return f"{ID_FIELD} {'not in' if negate else 'in'} [{literals}]"


def _check_value(spec: FieldSpec, value: Any, what: str) -> Any:
    where = f"{what}: field {spec.name!r}"
    kind = spec.type
    if kind in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidInputError(f"{where} must be an integer ({kind}), not {type(value).__name__}")
        low, high = _INT_RANGES[kind]
        if not low <= int(value) <= high:
            raise InvalidInputError(f"{where} = {value} is out of the {kind} range")
        return int(value)
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidInputError(f"{where} must be a number ({kind}), not {type(value).__name__}")
        if not math.isfinite(float(value)):
            raise InvalidInputError(f"{where} must be finite, not {value}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidInputError(f"{where} must be a boolean, not {type(value).__name__}")
        return bool(value)
    if kind == "varchar":
        if not isinstance(value, str):
            raise InvalidInputError(f"{where} must be a string, not {type(value).__name__}")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise InvalidInputError(
                f"{where} is {len(value)} characters long, over its max_length {spec.max_length}"
            )
        return value
    # json: anything json can encode
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where} is not JSON-serialisable") from None
    return value


@dataclass
class Row:
    """A validated document, ready to write."""

    id: str
    values: dict[str, Any]
    text: str | None = None  # to embed, when the document came without a vector

    @property
    def size(self) -> int:
        """A rough byte count for chunking (a vector counts its float32 bytes)."""
        return 64 + sum(
            len(v) if isinstance(v, str) else v.nbytes if isinstance(v, np.ndarray) else 16
            for v in self.values.values()
        )


class DocumentValidator:
    """Turns user dicts into rows for one collection; remembers ids to refuse duplicates."""

    def __init__(self, spec: CollectionSpec, normalize: bool, embeds_text: bool) -> None:
        self.spec = spec
        self.normalize = normalize
        self.embeds_text = embeds_text
        self.seen: set[str] = set()
        self._fields = {f.name: f for f in spec.fields}

    def __call__(self, document: Any, position: int) -> Row:
        if not isinstance(document, Mapping):
            raise InvalidInputError(f"document #{position} must be a dict, not {type(document).__name__}")
        if ID_FIELD not in document:
            raise InvalidInputError(f"document #{position} has no 'id'")
        doc_id = check_id(document[ID_FIELD], f"document #{position}")
        what = f"document #{position} (id {doc_id!r})"
        if doc_id in self.seen:
            raise InvalidInputError(f"{what}: id appears twice in this call")
        text = None
        values: dict[str, Any] = {ID_FIELD: doc_id}
        if document.get(VECTOR_FIELD) is not None:
            values[VECTOR_FIELD] = as_vector(document[VECTOR_FIELD], self.spec.dim, what, self.normalize)
        elif self.embeds_text and isinstance(document.get(TEXT_FIELD), str) and document[TEXT_FIELD].strip():
            text = document[TEXT_FIELD]
        elif self.embeds_text:
            raise InvalidInputError(f"{what} has neither 'vec' nor a non-empty '{TEXT_FIELD}' to embed")
        else:
            raise InvalidInputError(f"{what} has no 'vec'")
        for key, value in document.items():
            if key in (ID_FIELD, VECTOR_FIELD):
                continue
            spec = self._fields.get(key)
            if spec is None:
                if key == TEXT_FIELD and self.embeds_text:
                    continue
                raise InvalidInputError(
                    f"{what}: unknown field {key!r} (the collection has {', '.join(self.spec.field_names)})"
                )
            values[key] = _check_value(spec, value, what)
        missing = [name for name in self._fields if name not in values]
        if missing:
            raise InvalidInputError(f"{what}: missing field(s) {', '.join(missing)}")
        self.seen.add(doc_id)
        return Row(doc_id, values, text)


def chunks(rows: Iterable[Row]) -> Iterator[list[Row]]:
    """Group rows into chunks under CHUNK_BYTES and CHUNK_ROWS."""
    chunk: list[Row] = []
    size = 0
    for row in rows:
        row_size = row.size
        if chunk and (size + row_size > CHUNK_BYTES or len(chunk) >= CHUNK_ROWS):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_size
    if chunk:
        yield chunk


class DocumentWriter:
    """Validates documents and writes them in chunks, reporting what did not land on failure.

    Args:
        write: writes one chunk of row dicts (insert or upsert) to the engine.
        existing: returns which of some ids are stored already (for ``upsert=False``).
        embed: turns texts into vectors (None when the collection has no embedder).
    """

    def __init__(
        self,
        spec: CollectionSpec,
        write: Callable[[list[dict[str, Any]]], None],
        existing: Callable[[list[str]], set[str]] | None,
        embed: Callable[[list[str]], np.ndarray] | None,
        normalize: bool,
    ) -> None:
        self.spec = spec
        self.write = write
        self.existing = existing
        self.embed = embed
        self.validate = DocumentValidator(spec, normalize, embeds_text=embed is not None)
        self.written = 0

    def __call__(self, documents: Iterable[Mapping[str, Any]], progress: bool | None = None) -> int:
        if isinstance(documents, Mapping) or isinstance(documents, (str, bytes)):
            raise InvalidInputError("documents must be a list (or iterable) of dicts, not a single value")
        # A list is validated whole before anything is written, so a bad document in it stores
        # nothing; an iterator is validated chunk by chunk as it streams.
        rows: Iterable[Row]
        if isinstance(documents, Sequence):
            rows = [self.validate(d, i) for i, d in enumerate(documents)]
            total: int | None = len(rows)
        else:
            rows = (self.validate(d, i) for i, d in enumerate(documents))
            total = None
        bar = _progress_bar(total, progress)
        try:
            for chunk in chunks(rows):
                self._write_chunk(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        except InvalidInputError as exc:
            if self.written:
                exc.args = (f"{exc.args[0]} ({self._landed()})",)
            raise
        finally:
            if bar is not None:
                bar.close()
        return self.written

    def _write_chunk(self, chunk: list[Row]) -> None:
        ids = [row.id for row in chunk]
        if self.existing is not None:
            clash = self.existing(ids)
            if clash:
                raise ConflictError(
                    f"upsert=False but {len(clash)} id(s) are stored already: "
                    f"{', '.join(sorted(clash)[:10])}{' ...' if len(clash) > 10 else ''} ({self._landed()})"
                )
        to_embed = [row for row in chunk if row.text is not None]
        if to_embed:
            vectors = self.embed([row.text for row in to_embed])  # type: ignore[misc]
            for row, vec in zip(to_embed, vectors, strict=True):
                row.values[VECTOR_FIELD] = vec
        try:
            self.write([row.values for row in chunk])
        except LookalikeError as exc:
            failure = type(exc)(f"{exc} ({self._landed()})")
            failure.failed_ids = ids  # type: ignore[attr-defined]
            raise failure from None
        self.written += len(chunk)

    def _landed(self) -> str:
        """Which documents of this call are stored: chunks are written in order."""
        if not self.written:
            return "no document of this call was stored"
        return f"documents #0-#{self.written - 1} of this call were stored; #{self.written} onwards were not"


def _progress_bar(total: int | None, progress: bool | None):
    """A tqdm bar on a terminal for long writes; None otherwise."""
    if progress is None:
        progress = sys.stderr.isatty() and (total is None or total > CHUNK_ROWS)
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="doc", desc="indexing", file=sys.stderr)

