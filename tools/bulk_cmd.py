"""``jade import`` / ``jade export``: bulk vectors through the server's streaming endpoints
(``/vectors/import`` takes JSON lines in chunks of ``--chunk``, each chunk one log record;
``/vectors/export`` streams JSON lines) — not one request per vector.

Input: ``.jsonl`` (one ``{id, values, metadata?}`` per line), ``.json`` (a list of those) or
``.npy`` (an (n, dim) float32 array; ids are ``--id-prefix`` + row number). Output: ``.jsonl``,
``.json`` or ``.npy`` (with ``<file>.ids.json`` beside it). The server URL and API key come from
``--url`` / ``--api-key`` or ``JADE_URL`` / ``JADE_API_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import numpy as np
import orjson

from tools.progress import emit, reporter


def register(sub: Any) -> None:
    for name, fn, hlp in (
        ("import", run_import, "bulk-load vectors from a file"),
        ("export", run_export, "write a database's vectors to a file"),
    ):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("--db", required=True, help="database id")
        p.add_argument("--file", required=True)
        p.add_argument("--url", default=os.environ.get("JADE_URL", "http://127.0.0.1:8080"))
        p.add_argument("--api-key", default=os.environ.get("JADE_API_KEY", ""))
        p.add_argument("--json", action="store_true", help="machine-readable result")
        if name == "import":
            p.add_argument("--chunk", type=int, default=1000, help="vectors per log record")
            p.add_argument("--id-prefix", default="", help="ids for .npy rows: prefix + row")
        p.set_defaults(run=fn)


def _rows(path: str, id_prefix: str) -> tuple[int, Iterator[bytes]]:
    """(count, JSON lines) of an input file, streamed where the format allows it."""
    if path.endswith(".npy"):
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 2:
            raise ValueError(f"{path}: expected a 2-d array, got shape {arr.shape}")

        def gen_npy() -> Iterator[bytes]:
            for i in range(arr.shape[0]):
                row = np.ascontiguousarray(arr[i], dtype="<f4")
                yield orjson.dumps(
                    {"id": f"{id_prefix}{i}", "valuesB64": base64.b64encode(row.tobytes()).decode()}
                )

        return int(arr.shape[0]), gen_npy()
    if path.endswith(".json"):
        with open(path, "rb") as fh:
            items = orjson.loads(fh.read())
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of {{id, values, metadata}}")
        return len(items), (orjson.dumps(x) for x in items)
    with open(path, "rb") as fh:
        n = sum(1 for line in fh if line.strip())

    def gen_lines() -> Iterator[bytes]:
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip(b"\n")

    return n, gen_lines()


async def _import(args: argparse.Namespace) -> dict[str, Any]:
    total, lines = _rows(args.file, args.id_prefix)
    update, close = reporter(total, "import", not args.json)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        buf: list[bytes] = []
        for line in lines:
            buf.append(line + b"\n")
            sent += 1
            if len(buf) >= 256:
                yield b"".join(buf)
                buf = []
                update(sent, total)
        if buf:
            yield b"".join(buf)
            update(sent, total)

    headers = {"Content-Type": "application/x-ndjson"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    url = f"{args.url.rstrip('/')}/v1/databases/{args.db}/vectors/import"
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                url,
                data=body(),
                params={"chunk": str(args.chunk)},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None),
            ) as r,
        ):
            result: dict[str, Any] = await r.json(content_type=None)
            result["http_status"] = r.status
    finally:
        close()
    result["sent"] = sent
    return result


async def _export(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = f"{args.url.rstrip('/')}/v1/databases/{args.db}/vectors/export"
    ids: list[str] = []
    rows: list[np.ndarray] = []
    items: list[Any] = []
    n = 0
    update, close = reporter(0, "export", not args.json)
    out = None if args.file.endswith((".npy", ".json")) else open(args.file, "wb")
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None)) as r,
        ):
            if r.status != 200:
                return {"ok": False, "http_status": r.status, "error": await r.text()}
            async for line in r.content:
                if not line.strip():
                    continue
                n += 1
                if out is not None:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                else:
                    item = orjson.loads(line)
                    if args.file.endswith(".npy"):
                        ids.append(item["id"])
                        rows.append(np.asarray(item["values"], dtype=np.float32))
                    else:
                        items.append(item)
                if n % 1000 == 0:
                    update(n, n)
    finally:
        close()
        if out is not None:
            out.close()
    if args.file.endswith(".npy"):
        np.save(args.file, np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32))
        with open(args.file + ".ids.json", "w") as fh:
            json.dump(ids, fh)
    elif args.file.endswith(".json"):
        with open(args.file, "wb") as fh:
            fh.write(orjson.dumps(items))
    return {"ok": True, "exported": n, "file": args.file}


def run_import(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_import(args))
    except (OSError, ValueError, aiohttp.ClientError) as exc:
        print(f"jade: import failed: {exc}", file=sys.stderr)
        return 1
    ok = result.get("http_status") in (200, 201)
    emit(
        result,
        args.json,
        f"imported {result.get('imported', 0)} of {result['sent']} "
        f"({result.get('failed', 0)} failed)"
        + "".join(f"\n  {e}" for e in result.get("errors", [])),
    )
    return 0 if ok else 1


def run_export(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_export(args))
    except (OSError, aiohttp.ClientError) as exc:
        print(f"jade: export failed: {exc}", file=sys.stderr)
        return 1
    emit(
        result,
        args.json,
        f"exported {result.get('exported', 0)} vectors to {args.file}"
        if result.get("ok")
        else f"export failed: {result}",
    )
    return 0 if result.get("ok") else 1
