"""/v1/databases/{db}/vectors: store, batch, batch-get, list, get, update, delete (API.md §6).

A batch write is decoded in one typed pass when its body is plainly well-formed
(``_lean_batch``: msgspec straight to ids, float lists and base64 strings, the values converted
per batch), and by the reference path otherwise, which names what is wrong with it.

Answers holding many vectors (a list page, a batch-get, and search results with values or
metadata) are encoded vector by vector as they are read, in chunks sized to what the answer may
still hold (``Budget``, the ``max_response_bytes`` setting): one too big is refused (413
``response_too_large``) having decoded about that much, never the whole of what was asked.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import orjson
from aiohttp import web
from msgspec import UNSET, UnsetType

from jade.core.decide import MISSING, Command
from jade.errors import Internal, InvalidArgument, NotFound, PayloadTooLarge
from jade.http import schemas as S
from jade.http.databases import actor_of, engine_of, get_db
from jade.http.keys import SETTINGS
from jade.http.middleware import json_response
from jade.http.validate import (
    F32_MAX,
    b64_rows,
    check_id,
    check_results,
    metadata_value,
    parse_json,
    parsed,
    path_id,
    query_of,
    read_body,
    vector_values,
)
from jade.stores.data import StoredVector

MAX_BATCH = 100_000
MAX_PAGE = 10_000


def vector_json(v: StoredVector, *, values: bool = True, metadata: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"id": v.id}
    if values:
        out["values"] = v.array()
    if metadata:
        out["metadata"] = v.metadata if v.metadata is not None else {}
    return out


class Budget:
    """The bytes an answer may still hold (the ``max_response_bytes`` setting), charged as its
    parts are encoded."""

    __slots__ = ("limit", "left")

    def __init__(self, limit: int) -> None:
        self.limit = self.left = limit

    def charge(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise PayloadTooLarge(
                f"the answer would hold more than {self.limit} bytes (the max_response_bytes "
                "setting): ask for fewer vectors (topK, limit, ids) or leave out values or "
                "metadata; GET /vectors/export streams a whole database",
                code="response_too_large", limit=self.limit,
            )


def encode_vector(v: StoredVector, *, values: bool = True, metadata: bool = True) -> bytes:
    """``vector_json(v)`` as JSON bytes; a vector stored before its metadata's depth was bounded
    and too deep to encode is named (500), not an anonymous internal error."""
    try:
        return orjson.dumps(vector_json(v, values=values, metadata=metadata),
                            option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise Internal(
            f"vector {v.id!r} cannot be encoded ({exc}): its metadata was stored before it was "
            "bounded; overwrite or delete it", code="unservable_vector", vector_id=v.id,
        ) from None


Fetch = Callable[[int, int], tuple[list[StoredVector], int]]


def encoded_vectors(fetch: Fetch, count: int, budget: Budget,
                    encode: Callable[[StoredVector], bytes]) -> list[tuple[str, bytes]]:
    """``(id, encode(v))`` of the vectors at positions ``0 .. count`` of some sequence, read
    with ``fetch(position, n) -> (vectors, positions consumed)`` (fewer consumed than asked: the
    end) in chunks: 8 first, then as many as the budget left holds at the mean size so far, so
    about the budget is decoded before an answer too big is refused."""
    out: list[tuple[str, bytes]] = []
    pos, step, size = 0, 8, 0
    while pos < count:
        want = min(step, count - pos)
        vectors, used = fetch(pos, want)
        for v in vectors:
            b = encode(v)
            budget.charge(len(b) + 1)
            size += len(b) + 1
            out.append((v.id, b))
        pos += used
        if used < want:
            break
        step = max(1, int(budget.left / max(1.0, size / max(1, len(out)))))
    return out


def _upsert_command(
    db: dict[str, Any],
    items: list[Any],
    actor: str,
    *,
    must_exist: bool = False,
    keep_metadata: bool = False,
) -> Command:
    dim = db["dimension"]
    wheres = [f"vectors[{i}]" for i in range(len(items))] if len(items) > 1 else ["vector"]
    parts = [_vector_item(item, where, dim, keep_metadata)
             for item, where in zip(items, wheres, strict=True)]
    return _command(db, parts, actor, must_exist=must_exist)


def _vector_item(item: Any, where: str, dim: int, keep_metadata: bool = False
                 ) -> tuple[str, np.ndarray, Any]:
    """One vector of a write, validated: (id, its values as float32, its metadata: None when
    absent, or ``MISSING`` with ``keep_metadata``). ``values`` may be an array already: an
    import line's ``valuesB64``, decoded (JSON never makes one)."""
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where} must be an object with id and values")
    vid = check_id(item.get("id"), "id")
    if "values" in item:
        given = item["values"]
        row = given if isinstance(given, np.ndarray) else vector_values(given, dim)
    elif "valuesB64" in item:  # base64 of dim little-endian float32: no JSON floats to parse
        rows = b64_rows(item["valuesB64"], dim, "valuesB64")
        if len(rows) != 1:
            raise InvalidArgument(
                f"dimension mismatch: {where}: 'valuesB64' holds {rows.size} floats, the "
                f"database expects {dim}", code="dimension_mismatch")
        row = rows[0]
    else:
        raise InvalidArgument(f"{where}: missing required field 'values' (or 'valuesB64')",
                              code="missing_field")
    if "metadata" in item:
        return vid, row, metadata_value(item["metadata"])
    return vid, row, MISSING if keep_metadata else None


def _command(db: dict[str, Any], parts: list[tuple[str, np.ndarray, Any]], actor: str, *,
             must_exist: bool = False) -> Command:
    """The upsert of validated vectors (``_vector_item``), in one record."""
    values = np.empty((len(parts), db["dimension"]), dtype="<f4")
    for i, (_, row, _) in enumerate(parts):
        values[i] = row
    raw = values.tobytes()
    return Command(
        "vec.upsert",
        {"db": db["id"], "ids": [vid for vid, _, _ in parts], "values": raw,
         "metadata": [md for _, _, md in parts], "must_exist": must_exist},
        actor,
        size=len(raw),
    )


async def store(request: web.Request) -> web.Response:
    # the cached catalog entry: decide checks the dimension again in the write's transaction
    db = get_db(request, fresh=False)
    raw = await read_body(request)
    actor = actor_of(request)
    cmd = _lean_one(raw, db, actor) or _upsert_command(db, [parse_json(raw)], actor)
    await engine_of(request).submit(cmd)
    return json_response({"status": "success", "vectorId": cmd.body["ids"][0]}, status=201)


async def batch(request: web.Request) -> web.Response:
    db = get_db(request, fresh=False)  # as ``store``
    raw = await read_body(request)
    cmd = _lean_batch(raw, db, actor_of(request))
    if cmd is None:  # not plainly well-formed: the reference path says what is wrong, if any
        cmd = _batch_command(parse_json(raw), db, actor_of(request))
    await engine_of(request).submit(cmd)  # one record: all of it or none of it
    return json_response({"status": "success", "count": len(cmd.body["ids"])}, status=201)


def _batch_command(body: dict[str, Any], db: dict[str, Any], actor: str) -> Command:
    """The command of a batch body (the reference path: every refusal named here)."""
    vectors = body.get("vectors")
    if not isinstance(vectors, list):
        raise InvalidArgument(
            "'vectors' must be a list of {id, values, metadata?}", code="missing_field"
        )
    if not vectors:
        raise InvalidArgument("'vectors' must not be empty")
    if len(vectors) > MAX_BATCH:
        raise InvalidArgument(f"at most {MAX_BATCH} vectors per batch")
    return _upsert_command(db, vectors, actor)  # all validated before anything is sent


class _LeanItem(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    values: list[float] | UnsetType = UNSET
    valuesB64: str | UnsetType = UNSET  # the API's name
    metadata: msgspec.Raw | UnsetType = UNSET  # parsed by orjson, as every other body is


class _LeanBatch(msgspec.Struct, forbid_unknown_fields=True):
    vectors: list[_LeanItem]
    upsert: msgspec.Raw | UnsetType = UNSET  # the spec's flag, ignored (every write upserts)


_LEAN_BATCH = msgspec.json.Decoder(_LeanBatch)


class _Declined(Exception):
    """The lean path leaves the body to the reference path."""


def _lean_batch(raw: bytes, db: dict[str, Any], actor: str) -> Command | None:
    """The command of a plainly well-formed batch body, decoded in one typed pass (no dict per
    vector, no per-number type check: msgspec refuses any value that is not a number) with the
    values converted per batch; or None, and the reference path (``parse_json`` and
    ``_batch_command``) parses the body again and names what is wrong.

    Whatever this accepts the reference path accepts too, into the same command: msgspec's
    numbers parse to the same float64 as orjson's; each key is typed, so no part of the body is
    skipped unchecked (an unknown key, which msgspec would skip without checking its bytes,
    declines); metadata is parsed by orjson itself; every refusal, even one this could name,
    declines, so each error keeps the one wording it has."""
    try:
        batch = _LEAN_BATCH.decode(raw)
        if batch.upsert is not UNSET:
            orjson.loads(memoryview(batch.upsert))  # checked as the reference path checks it
        items = batch.vectors
        return _lean_command(items, db, actor) if 0 < len(items) <= MAX_BATCH else None
    # binascii's and orjson's errors are ValueErrors; msgspec raises RecursionError on nesting
    # deeper than it follows (orjson names that too deep: "malformed JSON")
    except (_Declined, msgspec.MsgspecError, InvalidArgument, ValueError, RecursionError):
        return None


_LEAN_ITEM = msgspec.json.Decoder(_LeanItem)


def _lean_one(raw: bytes, db: dict[str, Any], actor: str) -> Command | None:
    """``_lean_batch`` for a single vector's body (``POST .../vectors``): None declines to the
    reference path (``_upsert_command``), which names what is wrong."""
    try:
        return _lean_command([_LEAN_ITEM.decode(raw)], db, actor)
    except (_Declined, msgspec.MsgspecError, InvalidArgument, ValueError, RecursionError):
        return None


def _lean_command(items: list[_LeanItem], db: dict[str, Any], actor: str) -> Command:
    dim = db["dimension"]
    ids: list[str] = []
    metas: list[Any] = []
    rows: list[list[float]] = []  # JSON values, at positions ``at_rows``
    parts: list[bytes] = []  # base64 values decoded, at positions ``at_parts``
    at_rows: list[int] = []
    at_parts: list[int] = []
    size = 4 * dim
    for i, item in enumerate(items):
        ids.append(check_id(item.id))
        if item.values is not UNSET:
            if len(item.values) != dim:
                raise _Declined
            rows.append(item.values)
            at_rows.append(i)
        elif item.valuesB64 is not UNSET:
            # strict mode accepts a subset of what b64decode(validate=True) does, the same bytes
            part = binascii.a2b_base64(item.valuesB64, strict_mode=True)
            if len(part) != size:
                raise _Declined
            parts.append(part)
            at_parts.append(i)
        else:
            raise _Declined
        metas.append(None if item.metadata is UNSET
                     else metadata_value(orjson.loads(memoryview(item.metadata))))
    if parts:
        decoded = b"".join(parts)
        b64 = np.frombuffer(decoded, dtype="<f4").reshape(len(parts), dim)
        if not np.isfinite(b64).all():
            raise _Declined
    if rows:
        arr = np.array(rows, dtype=np.float64)
        if not max(float(arr.max()), -float(arr.min())) <= F32_MAX:  # NaN compares false too
            raise _Declined
    if not rows:
        values = decoded  # as sent: no copy
    elif not parts:
        values = arr.astype("<f4").tobytes()
    else:
        out = np.empty((len(items), dim), dtype="<f4")
        out[at_rows] = arr
        out[at_parts] = b64
        values = out.tobytes()
    return Command(
        "vec.upsert",
        {"db": db["id"], "ids": ids, "values": values, "metadata": metas, "must_exist": False},
        actor,
        size=len(values),
    )


async def batch_get(request: web.Request) -> web.Response:
    db = get_db(request)
    req = await parsed(request, S.BatchGet)  # lists of strings
    ids = next((x for x in (req.ids, req.vector_ids, req.vectorIds) if x is not None), None)
    if ids is None:
        raise InvalidArgument("give the ids to fetch as 'ids'", code="missing_field")
    if not ids:
        raise InvalidArgument("'ids' must be a non-empty list of strings")
    if len(ids) > MAX_BATCH:
        raise InvalidArgument(f"at most {MAX_BATCH} ids per request")
    settings = request.app[SETTINGS]
    check_results(len(ids), settings, f"a batch-get of {len(ids)} ids")
    ids = [check_id(x, "ids[]") for x in ids]
    store = engine_of(request).store

    def fetch(pos: int, n: int) -> tuple[list[StoredVector], int]:
        return store.vectors(db["id"], ids[pos : pos + n]), n

    found = encoded_vectors(fetch, len(ids), Budget(settings.max_response_bytes), encode_vector)
    return json_response({"database_id": db["id"], "count": len(found),
                          "vectors": [orjson.Fragment(b) for _, b in found]})


async def list_(request: web.Request) -> web.Response:
    db = get_db(request)
    settings = request.app[SETTINGS]
    q = query_of(request, S.VectorPage)  # limit: at most MAX_PAGE
    limit, offset = q.limit, q.offset
    check_results(limit, settings, f"a page of limit={limit}")
    store = engine_of(request).store

    def fetch(pos: int, n: int) -> tuple[list[StoredVector], int]:
        page = store.page(db["id"], offset + pos, n)
        return page, len(page)

    page = encoded_vectors(fetch, limit, Budget(settings.max_response_bytes), encode_vector)
    return json_response(
        {
            "vectors": [orjson.Fragment(b) for _, b in page],
            "total": db["count"],
            "limit": limit,
            "offset": offset,
        }
    )


async def get(request: web.Request) -> web.Response:
    db = get_db(request)
    vid = path_id(request)
    v = engine_of(request).store.vector(db["id"], vid)
    if v is None:
        raise NotFound("Vector not found", vector_id=vid)
    return json_response(orjson.Fragment(encode_vector(v)))


async def update(request: web.Request) -> web.Response:
    db = get_db(request)
    vid = path_id(request)
    req = await parsed(request, S.UpdateVector)
    item: dict[str, Any] = {"id": vid, "values": req.values}
    if req.metadata is not UNSET:  # absent: kept; null: cleared
        item["metadata"] = req.metadata
    cmd = _upsert_command(db, [item], actor_of(request), must_exist=True, keep_metadata=True)
    await engine_of(request).submit(cmd)
    return json_response({"status": "success", "vectorId": vid})


async def delete(request: web.Request) -> web.Response:
    db = get_db(request)
    vid = path_id(request)
    await engine_of(request).submit(
        Command("vec.delete", {"db": db["id"], "ids": [vid], "must_exist": True}, actor_of(request))
    )
    return json_response({"status": "success", "vectorId": vid})
