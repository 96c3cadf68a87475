"""POST /v1/embeddings/generate (API.md §9) and POST /v1/rerank (§7.3): text in, the text
models' answers out (``jade.text.models``). Inference runs in the thread pool, never on the
event loop; a model that cannot be loaded answers 503 ``model_unavailable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from aiohttp import web

from jade.errors import InvalidArgument
from jade.http.middleware import json_response
from jade.http.validate import opt_int, opt_str, read_json
from jade.text import models

MAX_INPUTS = 128  # texts per request (each runs alone: ~5 ms short, ~65 ms at 256 tokens)
MAX_DOCUMENTS = 256  # documents per rerank request
MAX_TEXT_CHARS = 8192  # the model reads 256 tokens (~1,000 characters of English) of a text
INPUT_TYPES = {"text", "query", "document", "passage", "search_query", "search_document"}
PROVIDERS = {"default", "local", "onnx", "onnxruntime", "jade", "jadevectordb"}
PROVIDER = "onnxruntime"  # what runs the model: this process, no remote provider
MODEL_ALIASES = {"", "default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

T = TypeVar("T")


async def off_loop(fn: Callable[[], T]) -> T:
    """``fn()`` in the thread pool (model loading and inference are CPU work)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def _text(v: object, where: str) -> str:
    if not isinstance(v, str):
        raise InvalidArgument(f"'{where}' must be a string", code="invalid_input")
    if not v.strip():
        raise InvalidArgument(f"'{where}' must not be empty", code="invalid_input")
    if len(v) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"'{where}' is longer than {MAX_TEXT_CHARS} characters",
                              code="input_too_long")
    return v


def _inputs(body: dict[str, Any]) -> tuple[list[str], bool]:
    """(the texts, whether one string was given)."""
    if body.get("input") is None:
        raise InvalidArgument("missing required field 'input' (a string or a list of strings)",
                              code="missing_field")
    raw = body["input"]
    if isinstance(raw, str):
        return [_text(raw, "input")], True
    if not isinstance(raw, list):
        raise InvalidArgument("'input' must be a string or a list of strings",
                              code="invalid_input")
    if not raw:
        raise InvalidArgument("'input' must not be an empty list", code="invalid_input")
    if len(raw) > MAX_INPUTS:
        raise InvalidArgument(f"'input' holds {len(raw)} texts; at most {MAX_INPUTS} per request",
                              code="too_many_inputs")
    return [_text(v, f"input[{i}]") for i, v in enumerate(raw)], False


def _model_name(body: dict[str, Any], key: str) -> None:
    """Only the model this server runs can be asked for (by its name or "default")."""
    asked = opt_str(body, key, "default", max_len=256)
    served = (models.MODEL_NAME, models.embedder_name())
    if asked.lower() not in MODEL_ALIASES and asked not in served:
        raise InvalidArgument(
            f"unknown model {asked!r}: this server runs {models.embedder_name()} "
            "(ask for it by that name or 'default')", code="unknown_model")


async def generate(request: web.Request) -> web.Response:
    body = await read_json(request)
    texts, single = _inputs(body)
    input_type = opt_str(body, "input_type", "text", max_len=64)
    if input_type not in INPUT_TYPES:
        raise InvalidArgument(f"'input_type' must be one of {sorted(INPUT_TYPES)}",
                              code="invalid_input_type")
    _model_name(body, "model")
    provider = opt_str(body, "provider", "default", max_len=64)
    if provider.lower() not in PROVIDERS:
        raise InvalidArgument(
            f"unknown provider {provider!r}: embeddings are computed by this server "
            "('default' or 'local')", code="unknown_provider")

    def work() -> tuple[models.Embedder, np.ndarray[Any, Any]]:
        model = models.embedder()
        return model, model.embed(texts)

    model, vectors = await off_loop(work)
    out: dict[str, Any] = {
        "input": texts[0] if single else texts,
        "input_type": input_type,
        "model": model.name,
        "provider": PROVIDER,
        "embedding": vectors[0],
        "dimension": model.dim,
        "status": "success",
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if not single:
        out["embeddings"] = vectors
        out["count"] = len(texts)
    return json_response(out)


def _documents(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(ids, texts) of ``documents``: ``[{id, text}]`` (a bare string is its own text, with its
    position as id)."""
    docs = body.get("documents")
    if docs is None:
        raise InvalidArgument("missing required field 'documents' ([{id, text}])",
                              code="missing_field")
    if not isinstance(docs, list) or not docs:
        raise InvalidArgument("'documents' must be a non-empty list of {id, text}")
    if len(docs) > MAX_DOCUMENTS:
        raise InvalidArgument(f"'documents' holds {len(docs)} documents; at most "
                              f"{MAX_DOCUMENTS} per request", code="too_many_inputs")
    ids, texts = [], []
    for i, d in enumerate(docs):
        if isinstance(d, str):
            d = {"id": str(i), "text": d}
        if not isinstance(d, dict):
            raise InvalidArgument(f"'documents[{i}]' must be an object {{id, text}}")
        doc_id = d.get("id", str(i))
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            raise InvalidArgument(f"'documents[{i}].id' must be a string")
        text = d.get("text")
        if not isinstance(text, str):
            raise InvalidArgument(f"'documents[{i}].text' must be a string",
                                  code="invalid_input")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidArgument(f"'documents[{i}].text' is longer than {MAX_TEXT_CHARS} "
                                  "characters", code="input_too_long")
        ids.append(str(doc_id))
        texts.append(text)
    return ids, texts


async def rerank(request: web.Request) -> web.Response:
    """The documents ordered by the reranker's score against the query (ties: given order)."""
    body = await read_json(request)
    if body.get("query") is None:
        raise InvalidArgument("missing required field 'query'", code="missing_field")
    query = _text(body["query"], "query")
    ids, texts = _documents(body)
    top_k = opt_int(body, "topK", len(ids), lo=1)
    start = models.monotonic_ms()

    def work() -> tuple[str, np.ndarray[Any, Any]]:
        ranker = models.reranker()
        return ranker.name, ranker.score(query, texts)

    name, scores = await off_loop(work)
    order = sorted(range(len(ids)), key=lambda i: (-float(scores[i]), i))[:top_k]
    results = [{"id": ids[i], "score": float(scores[i]), "rank": r + 1}
               for r, i in enumerate(order)]
    return json_response({
        "latencyMs": round(models.monotonic_ms() - start, 3),
        "model": name,
        "count": len(results),
        "results": results,
    })
