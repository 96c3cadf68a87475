"""GET/PUT /v1/databases/{db}/reranking/config (API.md §7.3): a database's reranking
configuration. A change is a ``RerankConfigSet`` record in the log (so a restart, a replica and a
restore see it) folded into the database's catalog entry; the statistics are in-memory counters
of this process (``jade.text.models.rerank_statistics``).
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from jade.core.decide import Command
from jade.errors import InvalidArgument
from jade.http import schemas as S
from jade.http.databases import actor_of, engine_of, get_db
from jade.http.middleware import json_response
from jade.http.validate import parsed, present
from jade.text import models

MAX_BATCH_SIZE = 4096


def _answer(db: dict[str, Any]) -> dict[str, Any]:
    return {
        "databaseId": db["id"],
        **models.rerank_config(db),
        "status": models.status(),
        "statistics": models.rerank_statistics(db["id"]),
    }


async def get_config(request: web.Request) -> web.Response:
    return json_response(_answer(get_db(request, fresh=False)))


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float:
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidArgument(f"'{key}' must be a number", code="invalid_config")
    if not lo <= v <= hi:
        raise InvalidArgument(f"'{key}' must be in {lo:g}..{hi:g}", code="invalid_config")
    return float(v)


def changes_of(body: dict[str, Any]) -> dict[str, Any]:
    """The configuration fields the request sets, checked, by their catalog names."""
    out: dict[str, Any] = {}
    if body.get("modelName") is not None:
        name = body["modelName"]
        if not isinstance(name, str):
            raise InvalidArgument("'modelName' must be a string", code="invalid_config")
        if name.lower() in ("", "default"):
            out["model_name"] = ""
        elif name == models.reranker_name():
            out["model_name"] = name
        else:
            raise InvalidArgument(
                f"unknown reranking model {name!r}: this server has {models.reranker_name()} "
                "(the embedding model's cosine between query and document; no cross-encoder "
                "ships with it), or 'default'", code="unknown_model")
    if body.get("batchSize") is not None:
        v = body["batchSize"]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_BATCH_SIZE:
            raise InvalidArgument(f"'batchSize' must be an integer in 1..{MAX_BATCH_SIZE}",
                                  code="invalid_config")
        out["batch_size"] = v
    if body.get("scoreThreshold") is not None:
        # the reranker's scores are cosines
        out["score_threshold"] = _number(body, "scoreThreshold", -1.0, 1.0)
    if body.get("combineScores") is not None:
        if not isinstance(body["combineScores"], bool):
            raise InvalidArgument("'combineScores' must be true or false", code="invalid_config")
        out["combine_scores"] = body["combineScores"]
    if body.get("rerankWeight") is not None:
        out["rerank_weight"] = _number(body, "rerankWeight", 0.0, 1.0)
    if not out:
        raise InvalidArgument("nothing to set: give any of modelName, batchSize, "
                              "scoreThreshold, combineScores, rerankWeight",
                              code="invalid_config")
    return out


async def set_config(request: web.Request) -> web.Response:
    db = get_db(request, fresh=False)
    changes = changes_of(present(await parsed(request, S.SetRerankConfig)))
    engine = engine_of(request)
    await engine.submit(
        Command("db.rerank_config", {"db": db["id"], "changes": changes}, actor_of(request))
    )
    fresh = engine.store.database(db["id"])
    return json_response(_answer(fresh if fresh is not None else db))
