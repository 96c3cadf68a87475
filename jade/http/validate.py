"""Request parsing and validation: every malformed input becomes an ``InvalidArgument`` (400)
or ``PayloadTooLarge`` (413) with a message naming the field — never a 500.

What is accepted must be servable: a value stored is one every read can answer with. Metadata
nested deeper than ``MAX_METADATA_DEPTH`` is refused at write time (orjson, which writes every
answer, stops at 255 levels: such a vector made every read of its database a 500), and a request
asking for more results than the ``max_results_per_request`` setting is refused before any work.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import re
from typing import Any, TypeVar

import msgspec
import numpy as np
import orjson
from aiohttp import web

from jade.errors import InvalidArgument, NotFound, PayloadTooLarge, UnsupportedMediaType
from jade.http.keys import ACCESS, SETTINGS
from jade.settings import Settings

# LMDB keys are at most 511 bytes and a vector key is ``db_id NUL vector_id``: 256 leaves room
# for any database id we mint (29 bytes) with margin.
MAX_ID_BYTES = 256
_BAD_ID_CHAR = re.compile(r"[\x00-\x1f\x7f/]")  # control characters and '/'
NUMBER = (int, float)
_NUMBER_TYPES = frozenset(NUMBER)
F32_MAX = float(np.finfo(np.float32).max)
# Levels of objects and arrays in one vector's metadata, the metadata object itself being level
# 1. The reference client sends flat metadata (every value str()-ed); Elasticsearch's mapping
# depth limit is 20, MongoDB's 100; filters index nested objects down to 64 levels
# (jade/core/filters.py), so every level accepted here is also filterable.
MAX_METADATA_DEPTH = 32


def _json_type(ctype: str) -> bool:
    return ctype == "application/json" or (ctype.startswith("application/")
                                           and ctype.endswith("+json"))


T = TypeVar("T")
# the request body as the route's declared struct (jade/http/schemas.py), once checked
BODY = web.RequestKey("body", object)


def route_of(request: web.Request) -> Any:
    """The ``Route`` (routes.py) that matched the request, or None (a test's bare app)."""
    resource = request.match_info.route.resource
    access = request.app.get(ACCESS)
    if access is None or resource is None:
        return None
    return access.get((request.method, resource.canonical))


async def read_json(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object. An empty body is ``{}`` when not ``required``.
    It is checked against the body struct the route declares (``Route.body``: ``check``);
    the struct is then ``request[BODY]``."""
    raw = await read_body(request, required=required)
    data = parse_json(raw) if raw else {}
    route = route_of(request)
    if route is not None and isinstance(route.body, type) and issubclass(
            route.body, msgspec.Struct):
        request[BODY] = check(data, route.body)
    return data


async def parsed(request: web.Request, cls: type[T], *, required: bool = True) -> T:
    """The request body decoded into ``cls``, the struct the route declares (read and checked
    as ``read_json`` does: size 413, Content-Type 415, empty 400 when ``required``, then every
    field against the struct, 400 naming the field)."""
    route = route_of(request)
    if route is not None and route.body is not cls:  # one declaration: the route's
        raise AssertionError(f"{route.method} {route.path} declares {route.body}, not {cls}")
    raw = await read_body(request, required=required)
    out = check(parse_json(raw) if raw else {}, cls)
    request[BODY] = out
    return out


def check(data: Any, cls: type[T]) -> T:
    """``data`` (parsed JSON) as ``cls``, or ``InvalidArgument`` naming the field. As lenient
    as the hand-written checks were: an integral float is an integer (10.0); a string is not
    a number."""
    try:
        return msgspec.convert(data, cls, strict=True)
    except msgspec.ValidationError:
        pass
    try:
        return msgspec.convert(_integral(data), cls, strict=True)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), "", cls) from None


def present(s: msgspec.Struct | None) -> dict[str, Any]:
    """A decoded struct's fields that were given (not None), as a dict."""
    if s is None:
        return {}
    return {k: v for k, v in msgspec.structs.asdict(s).items() if v is not None}


def query_of(request: web.Request, cls: type[T]) -> T:
    """The query parameters as ``cls``, the struct the route declares (``Route.query``):
    strings converted to the declared types, bounds and choices checked (400 naming the
    parameter); an empty value is an absent one."""
    route = route_of(request)
    if route is not None and route.query is not cls:
        raise AssertionError(f"{route.method} {route.path} declares {route.query}, not {cls}")
    data = {k: v for k in request.query if (v := request.query.get(k, ""))}
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), "query parameter ", cls) from None


# user data carried as it is: a metadata value 10.0 stays a float (it is stored and filtered as
# sent), whatever the retry below does to the request's own fields
_FREE_FORM = frozenset({"metadata", "filters", "filter", "metadataSchema"})


def _integral(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
        return int(v)
    if isinstance(v, dict):
        return {k: x if k in _FREE_FORM else _integral(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_integral(x) for x in v]
    return v


_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string",
               "bool": "true or false", "object": "a JSON object", "array": "a list",
               "null": "null"}
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")
_EXPECTED = re.compile(r"^Expected `(?P<types>[^`]*)`(?P<rest>.*)$")


def _invalid(message: str, prefix: str, cls: type) -> InvalidArgument:
    """A msgspec validation message as ours: the field path in quotes, then what it must be
    ("'topK' must be an integer >= 1"; "missing required field 'vectors[0].id'"). A struct
    may name its fields' error codes (``codes``, a ClassVar: the code clients know for that
    field; "name*" for anything within it) and say what a field must be in words (``words``)."""
    m = _AT.match(message)
    what, path = (m["what"], m["path"] or "") if m else (message, "")
    path = path.lstrip(".")
    missing = _MISSING.match(what)
    if missing or (path and what.endswith("got `null`")):  # null: as good as absent
        field = path if not missing else f"{path}.{missing['field']}" if path else missing[
            "field"]
        codes: dict[str, str] = getattr(cls, "codes", {})
        return InvalidArgument(f"missing required {prefix or 'field '}'{field}'",
                               code=codes.get(field, "missing_field"))
    if not path and not prefix:
        return InvalidArgument("request body must be a JSON object", code="invalid_json")
    top = re.split(r"[.\[]", path, maxsplit=1)[0]
    codes = getattr(cls, "codes", {})  # "name": that field; "name*": anything within it
    code = codes.get(path) or codes.get(top + "*")
    exp = _EXPECTED.match(what)
    said = getattr(cls, "words", {}).get(top)
    if said:
        text = f"{prefix}'{path}' must be {said}"
    elif exp:
        types = [t for t in exp["types"].split(" | ") if t != "null"]
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        rest = exp["rest"].split(", got ")[0].strip()
        text = f"{prefix}'{path}' must be {words}{' ' + rest if rest else ''}"
    else:
        text = f"{prefix}'{path}': {what[:1].lower()}{what[1:]}"
    return InvalidArgument(text, code=code)


async def read_body(request: web.Request, *, required: bool = True) -> bytes:
    """The bytes of a JSON request body, checked as ``read_json`` checks them before parsing
    (size 413, empty 400 when ``required``, Content-Type 415); ``b""`` for an empty body that
    is not required. For handlers that decode the body themselves (``parse_json`` names what
    is wrong with one they cannot)."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    raw = await _read_limited(request, limit, sized=request.content_length is not None)
    if not raw.strip():
        if required:
            raise InvalidArgument("request body must be a JSON object", code="invalid_json")
        return b""
    # a body is JSON by its Content-Type, not by its bytes: text/plain, a form or no type at all
    # are what a web page on another site can send without a CORS preflight
    ctype = request.content_type if "Content-Type" in request.headers else ""
    if not _json_type(ctype):
        raise UnsupportedMediaType(
            f"expected Content-Type: application/json, got {ctype or 'none'}")
    return raw


def parse_json(raw: bytes) -> dict[str, Any]:
    """A non-empty body (``read_body``) as a JSON object, or 400 ``invalid_json`` saying why."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object", code="invalid_json")
    return data


async def _read_limited(request: web.Request, limit: int, *, sized: bool) -> bytes:
    """The body, refused (413) once past ``limit`` bytes: a chunked body's size, or a
    compressed one's once inflated, is only known as it is read. The chunks are joined once as
    they came (aiohttp's ``request.read`` grows a bytearray and copies it: ~4 ms more for an
    8 MB body). ``sized``: the body had a Content-Length, and is refused as ``request.read``
    refused it (the same limit: aiohttp's ``client_max_size``)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            if sized:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def req_str(body: dict[str, Any], key: str, *, max_len: int = 1024) -> str:
    v = body.get(key)
    if v is None:
        raise InvalidArgument(f"missing required field '{key}'", code="missing_field")
    if not isinstance(v, str) or not v.strip():
        raise InvalidArgument(f"'{key}' must be a non-empty string")
    if len(v) > max_len:
        raise InvalidArgument(f"'{key}' is longer than {max_len} characters")
    return v


def opt_str(body: dict[str, Any], key: str, default: str = "", *, max_len: int = 65536) -> str:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise InvalidArgument(f"'{key}' must be a string")
    if len(v) > max_len:
        raise InvalidArgument(f"'{key}' is longer than {max_len} characters")
    return v


def opt_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise InvalidArgument(f"'{key}' must be true or false")
    return v


def opt_int(
    body: dict[str, Any], key: str, default: int, *, lo: int | None = None, hi: int | None = None
) -> int:
    v = body.get(key, default)
    if v is None:
        return default
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (isinstance(v, float) and not v.is_integer())
    ):
        raise InvalidArgument(f"'{key}' must be an integer")
    v = int(v)
    if lo is not None and v < lo:
        raise InvalidArgument(f"'{key}' must be >= {lo}")
    if hi is not None and v > hi:
        raise InvalidArgument(f"'{key}' must be <= {hi}")
    return v


def opt_number(
    body: dict[str, Any],
    key: str,
    default: float,
    *,
    lo: float | None = None,
    hi: float | None = None,
) -> float:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, NUMBER) or not math.isfinite(v):
        raise InvalidArgument(f"'{key}' must be a finite number")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidArgument(f"'{key}' must be between {lo} and {hi}")
    return float(v)


def query_int(request: web.Request, key: str, default: int, *, lo: int = 0, hi: int) -> int:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise InvalidArgument(f"query parameter '{key}' must be an integer") from None
    if v < lo or v > hi:
        raise InvalidArgument(f"query parameter '{key}' must be between {lo} and {hi}")
    return v


def check_id(v: object, what: str = "id") -> str:
    """Vector ids: non-empty strings of at most ``MAX_ID_BYTES`` UTF-8 bytes, no control
    characters or '/', and not ``.`` or ``..`` (they appear in URL paths, where clients
    normalise those away, so such a vector could never be fetched or deleted)."""
    if not isinstance(v, str) or not v:
        raise InvalidArgument(f"'{what}' must be a non-empty string")
    try:
        size = len(v.encode())
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800")
        raise InvalidArgument(f"'{what}' is not valid Unicode") from None
    if size > MAX_ID_BYTES:
        raise InvalidArgument(f"'{what}' is longer than {MAX_ID_BYTES} bytes")
    if _BAD_ID_CHAR.search(v) is not None:
        raise InvalidArgument(f"'{what}' must not contain '/' or control characters")
    if v in (".", ".."):
        raise InvalidArgument(f"'{what}' must not be '.' or '..'")
    return v


def path_id(request: web.Request, key: str = "vid") -> str:
    """A vector id from the URL path: one that could never have been stored is absent (404),
    and is never used as a storage key."""
    v = request.match_info[key]
    try:
        return check_id(v)
    except InvalidArgument:
        raise NotFound("Vector not found", vector_id=v[:MAX_ID_BYTES]) from None


def vector_values(v: object, dim: int, what: str = "values") -> np.ndarray:
    """A JSON list of numbers of length ``dim`` as float32 (finite after conversion)."""
    if not isinstance(v, list):
        raise InvalidArgument(f"'{what}' must be a list of numbers")
    if len(v) != dim:
        raise InvalidArgument(
            f"dimension mismatch: '{what}' has {len(v)} values, the database expects {dim}",
            code="dimension_mismatch",
        )
    if not set(map(type, v)) <= _NUMBER_TYPES:  # bool, str, None, list... are not numbers
        raise InvalidArgument(f"'{what}' must contain only numbers")
    try:
        arr = np.array(v, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        raise InvalidArgument(f"'{what}' has values outside the float32 range") from None
    peak = float(np.abs(arr).max()) if arr.size else 0.0
    if not peak <= F32_MAX:  # NaN compares false too
        if not np.isfinite(arr).all():
            raise InvalidArgument(f"'{what}' must contain only finite numbers (no NaN/Infinity)")
        raise InvalidArgument(f"'{what}' has values outside the float32 range")  # cast → inf
    return arr.astype(np.float32)


def b64_rows(value: object, dim: int, what: str) -> np.ndarray:
    """Base64 of little-endian float32 → (n, dim) array, finite values only."""
    if not isinstance(value, str):
        raise InvalidArgument(f"'{what}' must be a base64 string of float32 values")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"'{what}' is not valid base64") from None
    if len(raw) == 0 or len(raw) % (4 * dim):
        raise InvalidArgument(
            f"dimension mismatch: '{what}' holds {len(raw) // 4} floats, not a multiple of {dim}",
            code="dimension_mismatch",
        )
    arr = np.frombuffer(raw, dtype="<f4").reshape(-1, dim)
    if not np.isfinite(arr).all():
        raise InvalidArgument(f"'{what}' must contain only finite numbers")
    return arr


def vector_rows(rows: list[Any], dim: int, what: str) -> np.ndarray:
    """A list of JSON number lists, each of length ``dim``, as one (n, dim) float32 array,
    validated as a whole (the per-row messages of ``vector_values`` when something is wrong)."""
    if all(type(r) is list and len(r) == dim for r in rows):
        if set(map(type, itertools.chain.from_iterable(rows))) <= _NUMBER_TYPES:
            try:
                arr = np.array(rows, dtype=np.float64).reshape(len(rows), dim)
            except OverflowError:
                arr = None
            if arr is not None and float(np.abs(arr).max(initial=0.0)) <= F32_MAX:
                return arr.astype(np.float32)
    # something is wrong: find the first bad row and say what
    for i, r in enumerate(rows):
        vector_values(r, dim, f"{what}[{i}]")
    raise AssertionError("unreachable: a bad batch has a bad row")


def metadata_value(v: object, where: str = "metadata") -> Any:
    """A vector's metadata: None, or a JSON object at most ``MAX_METADATA_DEPTH`` levels deep.
    (Keys are strings and numbers finite: orjson parsed the body and allows nothing else.)"""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise InvalidArgument(f"'{where}' must be a JSON object")
    if _depth_over(v, MAX_METADATA_DEPTH):
        raise InvalidArgument(
            f"'{where}' is nested deeper than {MAX_METADATA_DEPTH} levels of objects and arrays",
            code="metadata_too_deep", limit=MAX_METADATA_DEPTH,
        )
    return v


def _depth_over(root: dict[str, Any] | list[Any], limit: int) -> bool:
    """Whether ``root`` holds containers nested more than ``limit`` levels (``root`` is level
    1). Iterative, and it stops at the first container past the limit."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        for x in node.values() if isinstance(node, dict) else node:
            if isinstance(x, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((x, depth + 1))
    return False


def check_results(asked: int, settings: Settings, what: str) -> None:
    """Refuse (400 ``too_many_results``) a request asking for more than the
    ``max_results_per_request`` setting's results; ``what`` says how it asked."""
    limit = settings.max_results_per_request
    if asked > limit:
        raise InvalidArgument(
            f"{what} asks for {asked} results; one request may ask for at most {limit} (the "
            "max_results_per_request setting): split it into several requests",
            code="too_many_results", limit=limit,
        )


MAX_LSN = 2**63 - 1  # LSNs are 64-bit; a wait for one past this could never end


def parse_lsn(raw: str, what: str) -> int:
    """An LSN a caller sent: decimal digits, 0 to ``MAX_LSN`` (400 otherwise, at once)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > MAX_LSN:
        raise InvalidArgument(f"{what} must be an integer from 0 to {MAX_LSN}")
    return int(raw)
