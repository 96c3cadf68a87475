"""``jade import`` / ``jade export``: bulk vectors through the server's streaming endpoints
(``/vectors/import`` takes JSON lines in chunks of ``--chunk``, each chunk one log record;
``/vectors/export`` streams JSON lines) — not one request per vector.

Input: ``.jsonl`` (one ``{id, values, metadata?}`` per line), ``.json`` (a list of those) or
``.npy`` (an (n, dim) float32 array; ids are ``--id-prefix`` + row number). Output: ``.jsonl``
(``-``: standard output), ``.json`` or ``.npy`` (with ``<file>.ids.json`` beside it). The server
and the credential: ``tools/client.py`` (``JADEVECTORDB_URL``, ``JADEVECTORDB_API_KEY``).

Both check the server, the credential and the database (by id or name) before anything is
streamed. An import checks each row as the server will and names a bad one by its place in the
file (``line N`` of JSON lines, ``item [i]`` of a JSON list, ``row i`` of an array); the good
rows are imported, and any failed row makes the exit code 1. An export writes a temporary file
beside the target and renames it once the stream is complete: a failure leaves no file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import tempfile
from array import array
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import aiohttp
import numpy as np
import orjson

from jade.errors import InvalidArgument
from jade.http.validate import b64_rows, check_id, metadata_value, vector_values
from tools.client import Client, add_client_args
from tools.errors import FAILED, USAGE, CliError
from tools.progress import emit, reporter

SHOWN_ERRORS = 20  # row errors printed (all are counted)


def register(sub: Any) -> None:
    for name, fn, hlp in (
        ("import", run_import, "bulk-load vectors from a file (through a server)"),
        ("export", run_export, "write a database's vectors to a file (through a server)"),
    ):
        p = sub.add_parser(name, help=hlp, description=hlp + ". " + ENV_NOTE,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--db", required=True, metavar="ID_OR_NAME",
                       help="the database: its id, or its name when one database visible to "
                            "the credential has that name")
        p.add_argument("--file", required=True,
                       help=".jsonl, .json or .npy" + (" ('-': standard output, JSON lines)"
                                                       if name == "export" else ""))
        add_client_args(p)
        p.add_argument("--json", action="store_true", help="machine-readable result")
        if name == "import":
            p.add_argument("--chunk", type=int, default=1000, help="vectors per log record")
            p.add_argument("--id-prefix", default="", help="ids for .npy rows: prefix + row")
        p.set_defaults(run=fn)


ENV_NOTE = """The server: --url, else JADEVECTORDB_URL, else
http://JADEVECTORDB_HOST:JADEVECTORDB_PORT (http://127.0.0.1:8080 when unset). The credential:
--api-key, else JADEVECTORDB_API_KEY (an API key or a token). Exit 1 when any row fails."""


# --- import -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of the rows of an import: counts and the first errors, each naming its row."""

    rows: int = 0
    bad: int = 0  # refused here, before sending
    errors: list[str] = field(default_factory=list)

    def refuse(self, where: str, why: str) -> None:
        self.bad += 1
        if len(self.errors) < SHOWN_ERRORS:
            self.errors.append(f"{where}: {why}")


def check_row(item: Any, dim: int) -> str | None:
    """Why the server would refuse this row (its own checks, ``jade.http.validate``), or None."""
    if not isinstance(item, dict):
        return "expected an object with id and values"
    try:
        check_id(item.get("id"), "id")
        if "values" in item:
            vector_values(item["values"], dim)
        elif "valuesB64" in item:
            if len(b64_rows(item["valuesB64"], dim, "valuesB64")) != 1:
                return f"'valuesB64' holds more than one vector of dimension {dim}"
        else:
            return "missing 'values' (or 'valuesB64')"
        if "metadata" in item:
            metadata_value(item["metadata"])
    except InvalidArgument as exc:
        return exc.message
    return None


# (place in the file, JSON line to send | None, why not | None)
Rows = Iterator[tuple[int, bytes | None, str | None]]
PLACES = {"npy": "row {}", "json": "item [{}]", "jsonl": "line {}"}  # how each format names one


def _kind(path: str) -> str:
    return "npy" if path.endswith(".npy") else "json" if path.endswith(".json") else "jsonl"


def _open_input(path: str, id_prefix: str, dim: int) -> tuple[int, Rows]:
    """(row count, rows) of an input file: each row with its place in the file (``PLACES``)
    and the line to send, or why it cannot be sent."""
    try:
        if path.endswith(".npy"):
            return _npy_rows(path, id_prefix, dim)
        if path.endswith(".json"):
            with open(path, "rb") as fh:
                raw = fh.read()
            try:
                items = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise CliError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(items, list):
                raise CliError(f"{path}: expected a JSON list of {{id, values, metadata}}")
            return len(items), _json_rows(items, dim)
        with open(path, "rb") as fh:
            n = sum(1 for line in fh if line.strip())
        return n, _jsonl_rows(path, dim)
    except (ValueError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename is None:
            raise
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise CliError(f"cannot read {path}: {why}") from None


def _npy_rows(path: str, id_prefix: str, dim: int) -> tuple[int, Rows]:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim != 2:
        raise CliError(f"{path}: expected a 2-d array (rows x {dim}), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise CliError(f"{path}: rows of {arr.shape[1]} values, the database expects {dim}")

    def gen() -> Rows:
        for i in range(arr.shape[0]):
            row = np.ascontiguousarray(arr[i], dtype="<f4")
            if not np.isfinite(row).all():
                yield i, None, "not finite (NaN or Infinity)"
                continue
            yield i, orjson.dumps(
                {"id": f"{id_prefix}{i}", "valuesB64": base64.b64encode(row.tobytes()).decode()}
            ), None

    return int(arr.shape[0]), gen()


def _json_rows(items: list[Any], dim: int) -> Rows:
    for i, item in enumerate(items):
        problem = check_row(item, dim)
        yield i, None if problem else orjson.dumps(item), problem


def _jsonl_rows(path: str, dim: int) -> Rows:
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield n, None, f"malformed JSON ({exc})"
                continue
            problem = check_row(item, dim)
            yield n, None if problem else line, problem


async def _import(args: argparse.Namespace) -> dict[str, Any]:
    if args.chunk < 1:
        raise CliError("--chunk must be at least 1", USAGE)
    if not os.path.isfile(args.file):
        raise CliError(f"cannot read {args.file}: "
                       f"{'not a file' if os.path.exists(args.file) else 'no such file'}")
    async with Client(args) as c:
        db = await c.resolve_db(args.db)  # server, credential, database: before streaming
        db_id, dim = str(db["databaseId"]), int(db["vectorDimension"])
        total, rows = _open_input(args.file, args.id_prefix, dim)
        out = Outcome()
        place = PLACES[_kind(args.file)].format
        sent_at = array("q")  # the place of each line sent (the server names lines sent)
        update, close = reporter(total, "import", not args.json)

        async def body() -> AsyncIterator[bytes]:
            buf: list[bytes] = []
            for pos, line, problem in rows:
                out.rows += 1
                if line is None:
                    out.refuse(place(pos), problem or "refused")
                    continue
                sent_at.append(pos)
                buf.append(line + b"\n")
                if len(buf) >= 256:
                    yield b"".join(buf)
                    buf = []
                    update(out.rows, total)
            if buf:
                yield b"".join(buf)
            update(out.rows, total)

        path = f"/v1/databases/{db_id}/vectors/import"
        try:
            async with c.s.post(c.url(path), data=body(), params={"chunk": str(args.chunk)},
                                headers={"Content-Type": "application/x-ndjson"}) as r:
                answer = await r.read()
                status = r.status
        finally:
            close()
    try:
        result = orjson.loads(answer)
    except orjson.JSONDecodeError:
        result = None
    if not isinstance(result, dict) or "imported" not in result:
        raise c.refused(status, answer, f"import into {db.get('name')!r} ({db_id})")
    server_errors = [_name_line(e, sent_at, place) for e in result.get("errors", [])]
    failed = out.bad + int(result.get("failed", 0))
    return {
        "ok": failed == 0,
        "database": db_id,
        "name": db.get("name"),
        "file": args.file,
        "rows": out.rows,
        "sent": len(sent_at),
        "imported": int(result.get("imported", 0)),
        "failed": failed,
        "errors": (out.errors + server_errors)[:SHOWN_ERRORS],
        "http_status": status,
    }


def _name_line(error: str, sent_at: array[int], place: Callable[[int], str]) -> str:
    """The server's "line K: ..." (K: of the lines sent) as the row of the file it came from."""
    m = re.match(r"line (\d+): ", error)
    if m and 1 <= int(m[1]) <= len(sent_at):
        return f"{place(sent_at[int(m[1]) - 1])}: {error[m.end():]}"
    return f"server: {error}"


def run_import(args: argparse.Namespace) -> int:
    result = asyncio.run(_import(args))
    text = (f"imported {result['imported']} of {result['rows']} rows of {args.file} into "
            f"{result['name']!r} ({result['database']})")
    emit(result, args.json, text)
    if result["failed"]:
        shown = result["errors"]
        more = result["failed"] - len(shown)
        if not args.json:
            for e in shown:
                print(f"  {e}", file=sys.stderr)
        print(f"jade: {result['failed']} of {result['rows']} rows failed"
              + (f" ({len(shown)} shown, {more} more)" if more > 0 else ""), file=sys.stderr)
        return FAILED
    return 0


# --- export -------------------------------------------------------------------------------


async def _export(args: argparse.Namespace) -> dict[str, Any]:
    to_stdout = args.file == "-"
    kind = _kind(args.file)
    target = os.path.abspath(args.file) if not to_stdout else ""
    if target and not os.path.isdir(os.path.dirname(target)):
        raise CliError(f"cannot write {args.file}: no directory {os.path.dirname(target)}")
    async with Client(args) as c:
        db = await c.resolve_db(args.db)  # server, credential, database: before any file
        db_id, dim = str(db["databaseId"]), int(db["vectorDimension"])
        files: list[str] = []  # temporaries, renamed once complete, else removed
        try:
            out: BinaryIO = sys.stdout.buffer if to_stdout else _temp(target, files)
            n = await _stream(c, db_id, out, kind, dim, args, files, target)
            if not to_stdout:
                out.close()
                if kind == "npy":
                    os.replace(files[1], target + ".ids.json")
                os.replace(files[0], target)
                files.clear()
        finally:
            for f in files:
                try:
                    os.unlink(f)
                except OSError:
                    pass
    return {"ok": True, "exported": n, "file": args.file, "database": db_id,
            "name": db.get("name")}


def _temp(target: str, files: list[str]) -> BinaryIO:
    """A new file beside ``target`` (same file system: the rename is atomic)."""
    fd, path = tempfile.mkstemp(dir=os.path.dirname(target),
                                prefix=f".{os.path.basename(target)}.", suffix=".part")
    files.append(path)
    return os.fdopen(fd, "wb")


async def _stream(c: Client, db_id: str, out: BinaryIO, kind: str, dim: int,
                  args: argparse.Namespace, files: list[str], target: str) -> int:
    ids: list[str] = []
    rows: list[np.ndarray] = []
    items: list[Any] = []
    n = 0
    pending = b""  # a line not yet ended: a stream cut there is incomplete
    update, close = reporter(0, "export", not args.json)
    try:
        async with c.s.get(c.url(f"/v1/databases/{db_id}/vectors/export")) as r:
            if r.status != 200:
                raise c.refused(r.status, await r.read(), f"export {db_id}")
            try:
                async for data in r.content.iter_any():
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if not line.strip():
                            continue
                        n += 1
                        if kind == "jsonl":
                            out.write(line + b"\n")
                        else:
                            item = orjson.loads(line)
                            if kind == "npy":
                                ids.append(item["id"])
                                rows.append(np.asarray(item["values"], dtype=np.float32))
                            else:
                                items.append(item)
                    update(n, n)
            except aiohttp.ClientPayloadError:
                raise CliError(f"the export was cut short after {n} vectors (the server's log "
                               "says why); nothing was written") from None
            if pending.strip():
                raise CliError(f"the export ended inside a line after {n} vectors; nothing "
                               "was written")
    finally:
        close()
    if kind == "npy":
        np.save(out, np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32))
        with _temp(target, files) as fh:
            fh.write(json.dumps(ids).encode())
    elif kind == "json":
        out.write(orjson.dumps(items))
    out.flush()
    return n


def run_export(args: argparse.Namespace) -> int:
    result = asyncio.run(_export(args))
    if args.file == "-":  # the data went to stdout: the summary to stderr, if asked
        if args.json:
            print(json.dumps(result, sort_keys=True), file=sys.stderr)
        return 0
    emit(result, args.json,
         f"exported {result['exported']} vectors of {result['name']!r} ({result['database']}) "
         f"to {args.file}")
    return 0
