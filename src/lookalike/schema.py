"""Collection specs: the fields beside ``id`` and ``vec``, the indexes, and their validation.

A :class:`CollectionSpec` is what lookalike knows about a collection. It is validated before
anything reaches Milvus, stored with the collection (a collection property) so that another
process reads it back, and serialised to plain JSON for the CLI, the HTTP service and exports.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymilvus import DataType, FieldSchema

from .errors import InvalidInputError

ID_FIELD = "id"
VECTOR_FIELD = "vec"
ID_MAX_LENGTH = 512
DEFAULT_DIM = 768
MAX_DIM = 32768
SPEC_PROPERTY = "lookalike.spec"
# A full-text field's BM25 output: a sparse vector field and the function that fills it, named
# after the field by this suffix (the user never names them; field names may not end with it).
FULL_TEXT_SUFFIX = "__bm25"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")

# Metadata types a collection may declare, by the names the CLI and JSON specs use.
FIELD_TYPES: dict[str, DataType] = {
    "bool": DataType.BOOL,
    "int8": DataType.INT8,
    "int16": DataType.INT16,
    "int32": DataType.INT32,
    "int64": DataType.INT64,
    "float": DataType.FLOAT,
    "double": DataType.DOUBLE,
    "varchar": DataType.VARCHAR,
    "json": DataType.JSON,
}
_TYPE_NAMES = {dtype: name for name, dtype in FIELD_TYPES.items()}
MAX_VARCHAR = 65535

# Vector indexes that both Milvus Lite 3.x and Milvus servers build, with the parameters each takes
# and the range each accepts (checked here because Lite accepts unknown index types silently).
VECTOR_INDEXES: dict[str, dict[str, tuple[int, int]]] = {
    "FLAT": {},
    "HNSW": {"M": (2, 2048), "efConstruction": (1, 2**31 - 1)},
    "IVF_FLAT": {"nlist": (1, 65536)},
    "IVF_SQ8": {"nlist": (1, 65536)},
}
METRICS = ("IP", "COSINE", "L2")
SCALAR_INDEXES = ("INVERTED", "STL_SORT", "TRIE", "BITMAP", "AUTOINDEX")
DEFAULT_VECTOR_INDEX = {"index_type": "HNSW", "metric_type": "IP", "M": 32, "efConstruction": 128}

# The search-time parameters each vector index takes, with their ranges, as Milvus documents them
# ("Index Parameter Range": HNSW ef in [topK, 32768], IVF nprobe in [1, nlist], FLAT none).
# None as the upper bound of nprobe stands for the collection's nlist (see search_param_ranges).
SEARCH_PARAMS: dict[str, dict[str, tuple[int, int | None]]] = {
    "FLAT": {},
    "HNSW": {"ef": (1, 32768)},
    "IVF_FLAT": {"nprobe": (1, None)},
    "IVF_SQ8": {"nprobe": (1, None)},
}
DEFAULT_NLIST = 128  # both engines' nlist when an IVF index is built without one
# What Milvus Lite builds with when a parameter is not given. The server engine passes the same values,
# because a 2.3 server refuses an HNSW index without M and efConstruction: both engines build one graph.
BUILD_DEFAULTS: dict[str, dict[str, int]] = {
    "FLAT": {},
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": DEFAULT_NLIST},
    "IVF_SQ8": {"nlist": DEFAULT_NLIST},
}

# How a culprit's value shows in a message: short enough for one line, whatever its size.
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 80, 80, 8, 8, 6
SHOWN_LENGTH = 80


def shown(value: object) -> str:
    """``value``'s repr for an error message, cut to about SHOWN_LENGTH characters."""
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) >= 1:  # a numpy array: its numbers only
        value = value[:8].tolist() + ([...] if len(value) > 8 else [])  # type: ignore[index]
    text = _REPR.repr(value)
    return text if len(text) <= SHOWN_LENGTH else text[: SHOWN_LENGTH - 3] + "..."


def validate_name(name: object, what: str = "collection name") -> str:
    """Return ``name`` if it is a valid Milvus identifier, else raise naming it."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInputError(
            f"{what} {shown(name)} is invalid: use letters, digits and underscores, "
            "starting with a letter or underscore (at most 255)"
        )
    return name


def sparse_field(name: str) -> str:
    """The sparse vector field that holds the BM25 terms of the full-text field ``name``."""
    return name + FULL_TEXT_SUFFIX


@dataclass(frozen=True)
class FieldSpec:
    """One metadata field."""

    name: str
    type: str  # a key of FIELD_TYPES
    max_length: int | None = None  # VARCHAR only, in characters
    # full-text search (VARCHAR only): the engine analyses the text into BM25 terms
    enable_analyzer: bool = False
    analyzer_params: Mapping[str, Any] | None = field(default=None, hash=False)

    @property
    def dtype(self) -> DataType:
        return FIELD_TYPES[self.type]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.max_length is not None:
            out["max_length"] = self.max_length
        if self.enable_analyzer:
            out["enable_analyzer"] = True
        if self.analyzer_params is not None:
            out["analyzer_params"] = json.loads(json.dumps(self.analyzer_params))
        return out

    def to_milvus(self) -> FieldSchema:
        extra: dict[str, Any] = {"max_length": self.max_length} if self.max_length is not None else {}
        if self.enable_analyzer:
            extra["enable_analyzer"] = True
            if self.analyzer_params is not None:
                extra["analyzer_params"] = dict(self.analyzer_params)
        return FieldSchema(name=self.name, dtype=self.dtype, **extra)


@dataclass(frozen=True)
class VectorIndex:
    """The index on ``vec``: type, metric and build parameters."""

    index_type: str = "HNSW"
    metric_type: str = "IP"
    params: Mapping[str, int] = field(default_factory=lambda: {"M": 32, "efConstruction": 128})

    def to_json(self) -> dict[str, Any]:
        return {"index_type": self.index_type, "metric_type": self.metric_type, **self.params}


@dataclass(frozen=True)
class CollectionSpec:
    """Everything lookalike needs to know about a collection."""

    dim: int
    fields: tuple[FieldSpec, ...] = ()
    vector_index: VectorIndex = field(default_factory=VectorIndex)
    # field name -> explicit index type, or None for the engine's default scalar index
    scalar_indexes: Mapping[str, str | None] = field(default_factory=dict)
    embedder: Mapping[str, Any] | None = None  # {"name": ..., "dim": ...} of the bound model

    @property
    def metric(self) -> str:
        return self.vector_index.metric_type

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def field_names(self) -> list[str]:
        return [ID_FIELD, VECTOR_FIELD, *(f.name for f in self.fields)]

    @property
    def full_text_fields(self) -> list[str]:
        """The fields searched by keywords (declared with ``enable_analyzer``)."""
        return [f.name for f in self.fields if f.enable_analyzer]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict that :func:`spec_from_json` turns back into this spec."""
        indexes: dict[str, Any] = {VECTOR_FIELD: self.vector_index.to_json()}
        indexes.update({name: kind and {"index_type": kind} for name, kind in self.scalar_indexes.items()})
        out: dict[str, Any] = {
            "dim": self.dim,
            "fields": [f.to_json() for f in self.fields],
            "indexes": indexes,
        }
        if self.embedder:
            out["embedder"] = dict(self.embedder)
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    def differences(self, other: CollectionSpec) -> list[str]:
        """What ``other`` (a request) asks for that differs from this (stored) spec."""
        diffs = []
        if self.dim != other.dim:
            diffs.append(f"dim {self.dim} != {other.dim}")
        mine = {f.name: f for f in self.fields}
        theirs = {f.name: f for f in other.fields}
        for name in sorted(mine.keys() - theirs.keys()):
            diffs.append(f"field {name!r} is stored but not requested")
        for name in sorted(theirs.keys() - mine.keys()):
            diffs.append(f"field {name!r} is requested but not stored")
        for name in sorted(mine.keys() & theirs.keys()):
            if mine[name] != theirs[name]:
                diffs.append(f"field {name!r}: stored {mine[name].to_json()}, requested {theirs[name].to_json()}")
        if self.vector_index != other.vector_index:
            diffs.append(
                f"vec index: stored {self.vector_index.to_json()}, requested {other.vector_index.to_json()}"
            )
        for name, kind in other.scalar_indexes.items():
            if name in self.scalar_indexes and self.scalar_indexes[name] != kind:
                diffs.append(f"index on {name!r}: stored {self.scalar_indexes[name]}, requested {kind}")
        if self.embedder and other.embedder and dict(self.embedder) != dict(other.embedder):
            diffs.append(f"embedder: stored {dict(self.embedder)}, requested {dict(other.embedder)}")
        return diffs


def build_spec(
    fields: Iterable[FieldSchema | Mapping[str, Any] | FieldSpec] = (),
    indexes: Mapping[str, Any] | None = None,
    dim: int = DEFAULT_DIM,
    embedder: Mapping[str, Any] | None = None,
) -> CollectionSpec:
    """Validate a create_collection request and return its spec.

    ``fields`` are pymilvus ``FieldSchema`` objects or JSON dicts ``{"name", "type",
    "max_length", "enable_analyzer", "analyzer_params"}`` (``enable_analyzer=True`` on a varchar:
    a full-text field, searched by ``keywords``); ``indexes`` maps a field to its index
    parameters (``None``: the default scalar index); ``vec`` defaults to HNSW/IP when it is not named.
    """
    dim = _check_dim(dim)
    if isinstance(fields, (str, bytes, Mapping)) or not isinstance(fields, Iterable):
        raise InvalidInputError(f"fields must be a list of field definitions, not {shown(fields)}")
    if indexes is not None and not isinstance(indexes, Mapping):
        raise InvalidInputError(f"indexes must be a dict from field name to index parameters, not {shown(indexes)}")
    if embedder is not None and not (
        isinstance(embedder, Mapping) and isinstance(embedder.get("name"), str) and embedder["name"]
    ):
        raise InvalidInputError(f"embedder must be a dict with a non-empty 'name', not {shown(embedder)}")
    specs = tuple(_field_spec(f, position) for position, f in enumerate(fields or ()))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise InvalidInputError(f"field {spec.name!r} is declared twice")
        seen.add(spec.name)
    indexes = dict(indexes or {})
    vector_index = parse_vector_index(indexes.pop(VECTOR_FIELD, None))
    scalar = {}
    for name, params in indexes.items():
        target = next((s for s in specs if s.name == name), None)
        if target is None:
            raise InvalidInputError(
                f"indexes: {shown(name)} is not a field of the collection (fields: {', '.join(seen) or 'none'})"
            )
        if target.type == "json":
            raise InvalidInputError(f"indexes: field {name!r} is json and cannot take a scalar index")
        scalar[name] = _scalar_index_type(name, params)
    return CollectionSpec(dim, specs, vector_index, scalar, dict(embedder) if embedder else None)


def spec_from_json(data: Mapping[str, Any]) -> CollectionSpec:
    """The inverse of :meth:`CollectionSpec.to_json` (also the JSON schema of the CLI and HTTP)."""
    if not isinstance(data, Mapping):
        raise InvalidInputError(
            f"schema must be a JSON object with 'dim', 'fields' and 'indexes', not {shown(data)}"
        )
    unknown = set(data) - {"dim", "fields", "indexes", "embedder"}
    if unknown:
        raise InvalidInputError(
            f"schema: unknown key(s) {', '.join(shown(k) for k in sorted(unknown, key=str))}"
            " (it takes dim, fields, indexes, embedder)"
        )
    fields = data.get("fields") or []
    if not isinstance(fields, list):
        raise InvalidInputError(f"schema: 'fields' must be a list, not {shown(fields)}")
    return build_spec(fields, data.get("indexes"), data.get("dim", DEFAULT_DIM), data.get("embedder"))


def parse_vector_index(params: Mapping[str, Any] | None) -> VectorIndex:
    """Validate the index parameters of ``vec`` (flat, as in the seed, or with a ``params`` dict)."""
    if params is None:
        params = DEFAULT_VECTOR_INDEX
    if not isinstance(params, Mapping):
        raise InvalidInputError(f"indexes['vec'] must be a dict of index parameters, not {shown(params)}")
    flat = {k: v for k, v in params.items() if k != "params"}
    nested = params.get("params") or {}
    if not isinstance(nested, Mapping):
        raise InvalidInputError(f"indexes['vec']['params'] must be a dict, not {shown(nested)}")
    flat.update(nested)
    index_type = str(flat.pop("index_type", "HNSW")).upper()
    metric = str(flat.pop("metric_type", "IP")).upper()
    if index_type not in VECTOR_INDEXES:
        raise InvalidInputError(
            f"indexes['vec']: unknown index_type {shown(index_type)} (choose one of {', '.join(VECTOR_INDEXES)})"
        )
    if metric not in METRICS:
        raise InvalidInputError(
            f"indexes['vec']: unknown metric_type {shown(metric)} (choose one of {', '.join(METRICS)})"
        )
    allowed = VECTOR_INDEXES[index_type]
    build: dict[str, int] = {}
    for key, value in flat.items():
        if key not in allowed:
            raise InvalidInputError(
                f"indexes['vec']: {index_type} takes no parameter {shown(key)} (= {shown(value)})"
                + (f" (it takes {', '.join(allowed)})" if allowed else "")
            )
        low, high = allowed[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidInputError(
                f"indexes['vec']: {key} must be an integer in [{low}, {high}], not {shown(value)}"
            )
        build[key] = value
    return VectorIndex(index_type, metric, build)


def _scalar_index_type(name: str, params: Any) -> str | None:
    if params is None:
        return None
    kind = params.get("index_type") if isinstance(params, Mapping) else params
    if kind is None:
        return None
    if not isinstance(kind, str) or kind.upper() not in SCALAR_INDEXES:
        raise InvalidInputError(
            f"indexes[{name!r}]: unknown scalar index_type {shown(kind)} "
            f"(None for the engine's default, or one of {', '.join(SCALAR_INDEXES)})"
        )
    return "Trie" if kind.upper() == "TRIE" else kind.upper()


def _check_dim(dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise InvalidInputError(f"dim must be an integer in [1, {MAX_DIM}], not {shown(dim)}")
    return dim


def _field_spec(source: FieldSchema | Mapping[str, Any] | FieldSpec, position: int) -> FieldSpec:
    analyzer: Any = False
    analyzer_params: Any = None
    if isinstance(source, FieldSpec):
        name, type_name, max_length = source.name, source.type, source.max_length
        analyzer, analyzer_params = source.enable_analyzer, source.analyzer_params
    elif isinstance(source, FieldSchema):
        name = source.name
        if getattr(source, "is_primary", False):
            raise InvalidInputError(f"field {name!r}: the primary key is always the string 'id'")
        type_name = _TYPE_NAMES.get(source.dtype)
        if type_name is None:
            raise InvalidInputError(f"field {name!r}: type {source.dtype.name} is not supported "
                                    f"(supported: {', '.join(FIELD_TYPES)})")
        max_length = source.params.get("max_length")
        analyzer = source.params.get("enable_analyzer", False)
        analyzer_params = source.params.get("analyzer_params")
        if isinstance(analyzer_params, str):  # pymilvus keeps what it was given; a JSON text is fine
            try:
                analyzer_params = json.loads(analyzer_params)
            except ValueError:
                pass  # refused below, as not a dict
    elif isinstance(source, Mapping):
        name = source.get("name")
        raw = str(source.get("type", "")).lower()
        type_name = raw if raw in FIELD_TYPES else None
        if type_name is None:
            raise InvalidInputError(f"field {shown(name)}: unknown type {shown(source.get('type'))} "
                                    f"(supported: {', '.join(FIELD_TYPES)})")
        max_length = source.get("max_length")
        analyzer = source.get("enable_analyzer", False)
        analyzer_params = source.get("analyzer_params")
        extra = set(source) - {"name", "type", "max_length", "enable_analyzer", "analyzer_params"}
        if extra:
            raise InvalidInputError(
                f"field {shown(name)}: unknown key(s) {', '.join(shown(k) for k in sorted(extra, key=str))}"
            )
    else:
        raise InvalidInputError(
            f"fields[{position}] must be a pymilvus FieldSchema or a dict, not {shown(source)}"
        )
    validate_name(name, f"fields[{position}] name")
    if name in (ID_FIELD, VECTOR_FIELD):
        raise InvalidInputError(f"field {name!r} is reserved: every collection has 'id' and 'vec' already")
    if name.endswith(FULL_TEXT_SUFFIX):
        raise InvalidInputError(
            f"field {name!r}: names ending in {FULL_TEXT_SUFFIX!r} are reserved for full-text search's own fields"
        )
    if type_name == "varchar":
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= MAX_VARCHAR:
            raise InvalidInputError(
                f"field {name!r}: varchar needs max_length in [1, {MAX_VARCHAR}], not {shown(max_length)}"
            )
    elif max_length is not None:
        raise InvalidInputError(
            f"field {name!r}: max_length applies to varchar only (got max_length={shown(max_length)} on {type_name})"
        )
    analyzer, analyzer_params = _check_analyzer(name, type_name, analyzer, analyzer_params)
    return FieldSpec(name, type_name, max_length, analyzer, analyzer_params)


def _check_analyzer(name: str, type_name: str, enable: Any, params: Any) -> tuple[bool, dict[str, Any] | None]:
    """A full-text declaration's shape; what an analyser's parameters mean is the engine's to
    judge when the collection is created (each engine knows its own analysers)."""
    if not isinstance(enable, bool):
        raise InvalidInputError(f"field {name!r}: enable_analyzer must be true or false, not {shown(enable)}")
    if enable and type_name != "varchar":
        raise InvalidInputError(
            f"field {name!r}: enable_analyzer (full-text search) applies to varchar fields only, not {type_name}"
        )
    if params is None:
        return enable, None
    if not enable:
        raise InvalidInputError(
            f"field {name!r}: analyzer_params = {shown(params)} needs enable_analyzer=True beside it"
        )
    try:
        ok = isinstance(params, Mapping) and isinstance(json.loads(json.dumps(params)), dict)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidInputError(
            f"field {name!r}: analyzer_params must be a JSON object such as {{'tokenizer': 'standard'}}, "
            f"not {shown(params)}"
        )
    return enable, json.loads(json.dumps(params))


def spec_from_description(description: Mapping[str, Any], indexes: Mapping[str, Mapping[str, Any]]) -> CollectionSpec:
    """Rebuild a spec from what Milvus says of a collection lookalike did not create."""
    dim = DEFAULT_DIM
    fields = []
    for f in description.get("fields", []):
        name, dtype, params = f["name"], f["type"], f.get("params", {})
        if name == VECTOR_FIELD:
            dim = int(params.get("dim", dim))
        elif name != ID_FIELD and dtype in _TYPE_NAMES:
            max_length = params.get("max_length")
            fields.append(FieldSpec(name, _TYPE_NAMES[dtype], int(max_length) if max_length else None))
    vec = indexes.get(VECTOR_FIELD, {})
    params = dict(vec.get("params") or {})
    vector_index = VectorIndex(
        str(vec.get("index_type", "FLAT")).upper(),
        str(vec.get("metric_type", "IP")).upper(),
        {k: int(v) for k, v in params.items() if k in VECTOR_INDEXES.get(str(vec.get("index_type")).upper(), {})},
    )
    scalar = {name: None for name in indexes if name != VECTOR_FIELD}
    return CollectionSpec(dim, tuple(fields), vector_index, scalar)


def spec_loads(text: str) -> CollectionSpec:
    """Parse the spec stored as a collection property."""
    return spec_from_json(json.loads(text))


def creation_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``Client.create_collection`` that recreate a spec's JSON (an
    export header's, a ``--schema`` file's, an HTTP PUT body's); the spec is validated first."""
    embedder = spec.get("embedder") if isinstance(spec, Mapping) else None
    if isinstance(embedder, str):  # a model name, as create_collection takes it
        spec = {**spec, "embedder": {"name": embedder}}
    parsed = spec_from_json(spec)
    options: dict[str, Any] = {"fields": [f.to_json() for f in parsed.fields],
                               "indexes": parsed.to_json()["indexes"]}
    if parsed.embedder:
        options["embedder"] = parsed.embedder.get("name")
    if "dim" in spec or not parsed.embedder:  # a model sets dim itself
        options["dim"] = parsed.dim
    return options
