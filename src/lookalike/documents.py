"""Documents in: validation against the collection's spec, normalisation, and chunked writes.

Every check happens before a chunk reaches Milvus, because Milvus Lite stores empty ids,
duplicate ids within one call, NaN and inf without complaint. Each refusal names the document
(``document #3 (id 'x')``), the field and the value at fault.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConflictError, InvalidInputError, LookalikeError
from .schema import ID_FIELD, ID_MAX_LENGTH, VECTOR_FIELD, CollectionSpec, FieldSpec, shown

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


FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38

# The largest norm a vector may have as the engine receives it (stored, or as a query). Both
# engines compute scores in float32, and Milvus Lite's FAISS indexes take any score >= 1e30 for
# their padding sentinel and drop the hit (milvus_lite/index/faiss_*.py). With norms up to 1e14,
# an inner product is at most 1e28 and a squared L2 distance at most (2e14)^2 = 4e28: every score
# stays a real one, and 1e10 below float32's 3.4e38 whatever the dimension or summation order.
# Unbounded, one vector of [3e38] * 4 overflowed every score and FAISS's HNSW then returned no
# hit at all for every query of the collection. Real embeddings are unit vectors, or norms of tens.
MAX_VECTOR_NORM = 1e14

# The smallest norm of a vector stored or searched in a COSINE collection without normalize. The
# engines divide by norms they compute in float32: a zero norm, or one whose squares underflow,
# made the Milvus 2.3.5 server score such a document +inf for every query (the top hit of every
# search). At norm >= 1e-15 the largest component is >= 1e-15 / sqrt(32768) = 5.5e-18 whatever
# the dimension, and its square (3e-35) is a normal float32.
MIN_COSINE_NORM = 1e-15


def vector_norm(vector: Any) -> float:
    """The L2 norm of ``vector``, computed in float64 without overflow or underflow.

    Huge or tiny components are scaled by the largest one before squaring; between 1e-100 and
    1e100 the squares are safe in float64 as they are, and the scaling pass is skipped.
    """
    values = np.asarray(vector, dtype=np.float64)
    return _norm(values, float(np.max(np.abs(values))) if values.size else 0.0)


def _norm(values: np.ndarray, largest: float) -> float:
    if largest == 0.0:
        return 0.0
    if 1e-100 < largest < 1e100:
        return math.sqrt(float(values @ values))
    return largest * float(np.linalg.norm(values / largest))


def as_vector(
    value: Any, dim: int, what: str, normalize: bool, remedy: str = "scale it down", min_norm: float = 0.0
) -> np.ndarray:
    """Check one vector and return it as float32, unit-length when ``normalize``.

    ``what`` names it in messages (``"document #3 (id 'x'): 'vec'"``, ``"vectors[0]"``). Refused:
    anything but ``dim`` real numbers, NaN and infinity, components beyond float32's range, a
    zero vector when normalising and, when not, a norm over MAX_VECTOR_NORM. The norm is
    computed without overflow, so a huge but finite vector normalises correctly. ``remedy``
    ends the message about a norm over the limit; ``min_norm`` (MIN_COSINE_NORM for a COSINE
    collection) refuses smaller norms, zero included, when not normalising.
    """
    try:
        vec = np.asarray(value)
    except (TypeError, ValueError):  # ragged lists
        vec = None
    if vec is None or vec.dtype.kind not in "iuf":
        raise InvalidInputError(f"{what} must be a list of numbers, not {shown(value)}")
    vec = vec.astype(np.float64, copy=False)
    if vec.ndim != 1:
        raise InvalidInputError(f"{what} must be a flat list of {dim} numbers, got shape {vec.shape}: {shown(value)}")
    if vec.shape[0] != dim:
        raise InvalidInputError(f"{what} has dimension {vec.shape[0]}, the collection expects {dim}: {shown(value)}")
    magnitudes = np.abs(vec)
    position = int(np.argmax(magnitudes))  # the first NaN, if there is one
    largest = float(magnitudes[position])
    if not largest <= FLOAT32_MAX:
        finite = np.isfinite(vec)
        if not finite.all():
            first = int(np.flatnonzero(~finite)[0])
            raise InvalidInputError(f"{what} contains NaN or infinity ({_component(vec, first)})")
        raise InvalidInputError(
            f"{what} has a component beyond the float32 range ±{FLOAT32_MAX:.4g} ({_component(vec, position)})"
        )
    norm = _norm(vec, largest)
    if normalize:
        if norm == 0.0:
            raise InvalidInputError(f"{what} is all zeros and cannot be normalised: {shown(value)}")
        return (vec / norm).astype(np.float32)
    if norm < min_norm:
        raise InvalidInputError(
            f"{what} has norm {norm:.4g}, under the limit {min_norm:.0e} of a COSINE collection: the engines "
            f"cannot tell its direction in float32; scale it up (or index it with normalize=True): {shown(value)}"
        )
    if norm > MAX_VECTOR_NORM:
        raise InvalidInputError(
            f"{what} has norm {_over(norm, MAX_VECTOR_NORM)}, over the limit "
            f"{MAX_VECTOR_NORM:.0e} (its largest component "
            f"{_component(vec, position)}): larger vectors overflow the engine's float32 distances; {remedy}"
        )
    return vec.astype(np.float32)


def _over(value: float, limit: float) -> str:
    """``value`` in 4 digits, or all of them when 4 would not show it above ``limit``."""
    short = f"{value:.4g}"
    return short if float(short) > limit else np.format_float_scientific(value, unique=True)


def _component(vec: np.ndarray, position: int) -> str:
    return f"at position {position}: {float(vec[position])!r}"


def check_id(value: Any, what: str) -> str:
    """Check a document id: a non-empty string of at most ID_MAX_LENGTH characters."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what}: 'id' must be a string, not {type(value).__name__} ({shown(value)})")
    if not value:
        raise InvalidInputError(f"{what}: 'id' is empty")
    if len(value) > ID_MAX_LENGTH:
        raise InvalidInputError(
            f"{what}: 'id' is {len(value)} characters long (at most {ID_MAX_LENGTH}): {shown(value)}"
        )
    return value


def check_ids(ids: Any, parameter: str = "ids") -> list[str]:
    """Check a list of ids given to a read or delete call."""
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        raise InvalidInputError(f"{parameter} must be a list of strings, not {type(ids).__name__} ({shown(ids)})")
    if not isinstance(ids, list):
        ids = list(ids)
    if _all_good(ids):
        return ids
    # the loop checks each and names the first bad one
    return [check_id(value, f"{parameter}[{i}]") for i, value in enumerate(ids)]


def check_exclusions(ids: Sequence[Any], parameter: str = "exclude_ids") -> list[str]:
    """Check an exclusion list: strings, any of them. A string that is no stored id (even ``""``
    or one longer than any id) leaves nothing out, as an id not stored does, so only the type is
    checked: in one pass at C speed (str.join takes strings only), where check_ids's length check
    would cost a 10,000-id list as much again (measured in bench/README.md)."""
    ids = ids if isinstance(ids, list) else list(ids)
    try:
        "".join(ids)
        return ids
    except TypeError:
        pass
    # the loop names the first non-string (check_id refuses it)
    return [value if isinstance(value, str) else check_id(value, f"{parameter}[{i}]") for i, value in enumerate(ids)]


# From this many ids on, _all_good reads the lengths with numpy: ~14 µs to start, then half the
# cost per id of bytes(map(len, ...)) (measured: 125 against 250 µs for 10,000 ids).
_MANY_IDS = 1000


def _all_good(ids: list[Any]) -> bool:
    """Whether every id is a non-empty string of at most ID_MAX_LENGTH characters, checked at C
    speed (an exclusion list holds 10,000s of ids); False leaves the naming to check_id.

    str.join takes strings only. A few ids: bytes() takes lengths of 0 to 255, which leaves the
    empty id to one memchr. Many: joined with NULs, the gaps between the NULs are their lengths
    (one byte a character for ASCII, else four); an id holding a NUL goes to the loop."""
    try:
        if len(ids) < _MANY_IDS:
            "".join(ids)
            return 0 not in bytes(map(len, ids))
        joined = "\0".join(ids)
    except (TypeError, ValueError):
        return False
    if joined.isascii():
        codes = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    else:
        # surrogatepass: a lone surrogate (JSON's "\ud800" decodes to one) is a character too
        codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    nuls = np.flatnonzero(codes == 0)
    if len(nuls) != len(ids) - 1:
        return False
    lengths = np.diff(nuls, prepend=-1, append=len(codes)) - 1
    return bool(lengths.min() >= 1 and lengths.max() <= ID_MAX_LENGTH)


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
            raise InvalidInputError(f"{where} must be an integer ({kind}), not {_typed(value)}")
        low, high = _INT_RANGES[kind]
        if not low <= int(value) <= high:
            raise InvalidInputError(f"{where} = {shown(int(value))} is out of the {kind} range [{low}, {high}]")
        return int(value)
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidInputError(f"{where} must be a number ({kind}), not {_typed(value)}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond float64
            number = math.inf
        if not math.isfinite(number) or (kind == "float" and abs(number) > FLOAT32_MAX):
            raise InvalidInputError(f"{where} must be a finite {kind}, not {shown(value)}")
        return number
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidInputError(f"{where} must be a boolean, not {_typed(value)}")
        return bool(value)
    if kind == "varchar":
        if not isinstance(value, str):
            raise InvalidInputError(f"{where} must be a string, not {_typed(value)}")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise InvalidInputError(
                f"{where} is {len(value)} characters long, over its max_length {spec.max_length}: {shown(value)}"
            )
        return value
    # json: anything json can encode
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise InvalidInputError(
            f"{where} is not JSON-serialisable (or holds NaN or infinity): {shown(value)}"
        ) from None
    return value


def _typed(value: Any) -> str:
    """``int (424242)``: a wrong value's type, then the value itself."""
    return f"{type(value).__name__} ({shown(value)})"


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
            raise InvalidInputError(f"document #{position} must be a dict, not {_typed(document)}")
        if ID_FIELD not in document:
            raise InvalidInputError(
                f"document #{position} has no 'id' (its keys: {', '.join(shown(k) for k in document) or 'none'})"
            )
        doc_id = check_id(document[ID_FIELD], f"document #{position}")
        what = f"document #{position} (id {doc_id!r})"
        if doc_id in self.seen:
            raise InvalidInputError(f"{what}: id appears twice in this call")
        text = None
        values: dict[str, Any] = {ID_FIELD: doc_id}
        if document.get(VECTOR_FIELD) is not None:
            values[VECTOR_FIELD] = as_vector(
                document[VECTOR_FIELD], self.spec.dim, f"{what}: {VECTOR_FIELD!r}", self.normalize,
                remedy="scale it down, or index it with normalize=True",
                min_norm=MIN_COSINE_NORM if self.spec.metric == "COSINE" else 0.0,
            )
        elif self.embeds_text and isinstance(document.get(TEXT_FIELD), str) and document[TEXT_FIELD].strip():
            text = document[TEXT_FIELD]
        elif self.embeds_text:
            got = f" ({TEXT_FIELD!r} = {shown(document[TEXT_FIELD])})" if TEXT_FIELD in document else ""
            raise InvalidInputError(f"{what} has neither 'vec' nor a non-empty '{TEXT_FIELD}' to embed{got}")
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
                    f"{what}: unknown field {shown(key)} = {shown(value)} "
                    f"(the collection has {', '.join(self.spec.field_names)})"
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
        if isinstance(documents, (Mapping, str, bytes)) or not isinstance(documents, Iterable):
            raise InvalidInputError(f"documents must be a list (or iterable) of dicts, not {_typed(documents)}")
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
            # A copy keeps what the error carries (a StorageError's disk_full and HTTP status);
            # the original may be a failed collection's own error, raised again by every call.
            failure = copy.copy(exc)
            failure.args = (f"{exc} ({self._landed()})",)
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

