"""The everyday commands that talk to a running server (``tools/client.py``: ``--url`` /
``JADEVECTORDB_URL``, ``--api-key`` / ``JADEVECTORDB_API_KEY``), so that what the runbook does
with ``curl`` has a command with one-line errors and exit codes:

  jade status                       the server's mode, role, log position, replicas, storage
  jade db list|show|create|delete   databases (by id or name)
  jade readonly on|off              the whole server read-only, and back (admin)
  jade key list|create|revoke       the credential's own API keys (any, with an admin's)
  jade promote                      a replica becomes the primary (admin)
  jade shutdown                     a graceful stop (admin)

Each is one HTTP call of the documented API (../shared/API.md): nothing here the console or
``curl`` could not do with the same credential."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import quote

import orjson

from tools.client import Client, add_client_args
from tools.errors import USAGE, CliError
from tools.progress import emit

ENV_NOTE = ("The server: --url, else JADEVECTORDB_URL, else http://JADEVECTORDB_HOST:"
            "JADEVECTORDB_PORT. The credential: --api-key, else JADEVECTORDB_API_KEY.")


def register(sub: Any) -> None:
    def command(parent: Any, name: str, hlp: str, run: Any) -> Any:
        p = parent.add_parser(name, help=hlp, description=f"{hlp}. {ENV_NOTE}")
        add_client_args(p)
        p.add_argument("--json", action="store_true", help="the server's answer as JSON")
        p.set_defaults(run=run)
        return p

    command(sub, "status", "the server's mode, role, log, replicas and storage (through a "
            "server)", run_status)

    db = sub.add_parser("db", help="databases (through a server)")
    dsub = db.add_subparsers(dest="db_command", required=True)
    command(dsub, "list", "list the databases the credential can see", run_db_list)
    p = command(dsub, "show", "one database: its settings, index and counts", run_db_show)
    p.add_argument("db", metavar="ID_OR_NAME")
    p = command(dsub, "create", "create a database", run_db_create)
    p.add_argument("name")
    p.add_argument("--dimension", type=int, required=True, help="the vectors' dimension")
    p.add_argument("--index", default="HNSW", choices=("HNSW", "FLAT", "IVF", "LSH"),
                   help="index type (default HNSW)")
    p.add_argument("--metric", default="cosine", choices=("cosine", "euclidean", "dot_product"),
                   help="distance (default cosine)")
    p.add_argument("--description", default="")
    p = command(dsub, "delete", "delete a database and its vectors", run_db_delete)
    p.add_argument("db", metavar="ID_OR_NAME")
    p.add_argument("--yes", action="store_true", help="do not ask (required without a terminal)")

    ro = sub.add_parser("readonly", help="the server read-only, or read-write again (admin, "
                        "through a server)")
    rsub = ro.add_subparsers(dest="readonly_command", required=True)
    command(rsub, "on", "refuse every write (503 read_only) until 'off'", run_readonly)
    command(rsub, "off", "accept writes again", run_readonly)

    key = sub.add_parser("key", help="API keys (through a server)")
    ksub = key.add_subparsers(dest="key_command", required=True)
    command(ksub, "list", "the credential's API keys (an admin's: everyone's)", run_key_list)
    p = command(ksub, "create", "a new API key, printed once", run_key_create)
    p.add_argument("--user", default="", metavar="USER_ID",
                   help="whose key (default: the signed-in user of a login token; an admin "
                        "may name another)")
    p.add_argument("--description", default="", help="a note to recognise it by")
    p.add_argument("--scope", action="append", default=[], metavar="SCOPE",
                   help="read, write, create or admin (repeat; default: the user's rights)")
    p.add_argument("--days", type=int, default=0, help="expires after DAYS (default: never)")
    p = command(ksub, "revoke", "revoke an API key", run_key_revoke)
    p.add_argument("key_id")

    command(sub, "promote", "make this replica the primary (admin, through a server)",
            run_promote)
    command(sub, "shutdown", "stop the server gracefully (admin, through a server)",
            run_shutdown)


async def _call(args: argparse.Namespace, method: str, path: str, what: str,
                body: dict[str, Any] | None = None) -> Any:
    async with Client(args) as c:
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with c.s.request(method, c.url(path), data=data, headers=headers) as r:
            raw = await r.read()
            if r.status >= 300:
                raise c.refused(r.status, raw, what)
            return orjson.loads(raw) if raw.strip() else {}


async def _db_id(args: argparse.Namespace) -> dict[str, Any]:
    async with Client(args) as c:
        return await c.resolve_db(args.db)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def run_status(args: argparse.Namespace) -> int:
    st = _run(_call(args, "GET", "/status", "read the status"))
    log = st.get("log", {})
    perf = st.get("performance", {})
    repl = st.get("replication", {})
    lines = [
        f"version {st.get('version')}  up {st.get('uptime')}  mode {st.get('mode')}  "
        f"role {st.get('role')}",
        f"log: LSN {log.get('first_lsn')}..{log.get('last_lsn')}  epoch {log.get('epoch')}",
        f"databases {perf.get('database_count')}  vectors {perf.get('total_vectors')}",
    ]
    if "replicas" in repl:
        reps = repl["replicas"]
        lines.append("replicas: " + (", ".join(
            f"{r['replica_id']} (lag {r['lag_records']} records)" for r in reps) or "none"))
    else:
        lines.append(f"replica of {repl.get('primary')}: {repl.get('state')}, applied LSN "
                     f"{repl.get('applied_lsn')}, lag {repl.get('lag_records')} records")
    storage = st.get("storage") or {}
    if "free_bytes" in storage:
        lines.append(
            f"storage: {_size(storage['free_bytes'])} free (reserve "
            f"{_size(storage.get('reserve_bytes', 0))}), writes "
            + (f"REFUSED: {storage.get('reason')}" if storage.get("writes_refused")
               else "accepted"))
    emit(st, args.json, "\n".join(lines))
    return 0


def _size(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(x) < 1024:
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} TiB"


def run_db_list(args: argparse.Namespace) -> int:
    async def go() -> list[dict[str, Any]]:
        async with Client(args) as c:
            return await c.databases()

    dbs = _run(go())
    text = "\n".join(
        f"{d['databaseId']}  {d.get('name')}  dim {d.get('vectorDimension')}  "
        f"{d.get('indexType')}  {d.get('metric', '')}  "
        f"{(d.get('stats') or {}).get('vectorCount', '')} vectors".rstrip()
        for d in dbs) or "no databases"
    emit(dbs, args.json, text)
    return 0


def run_db_show(args: argparse.Namespace) -> int:
    db = _run(_db_id(args))
    emit(db, args.json, orjson.dumps(db, option=orjson.OPT_INDENT_2).decode())
    return 0


def run_db_create(args: argparse.Namespace) -> int:
    if args.dimension < 1:
        raise CliError("--dimension must be at least 1", USAGE)
    body = {"name": args.name, "vectorDimension": args.dimension, "indexType": args.index,
            "metric": args.metric, "description": args.description}
    db = _run(_call(args, "POST", "/v1/databases", f"create database {args.name!r}", body))
    emit(db, args.json, f"created {db.get('databaseId')} ({args.name})")
    return 0


def run_db_delete(args: argparse.Namespace) -> int:
    import sys

    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("deleting a database needs --yes when there is no terminal to ask",
                           USAGE)
        answer = input(f"delete database {args.db!r} and all its vectors? type its name: ")
        if answer.strip() != args.db:
            raise CliError("not deleted")

    async def go() -> tuple[dict[str, Any], Any]:
        db = await _db_id(args)
        out = await _call(args, "DELETE", f"/v1/databases/{quote(str(db['databaseId']))}",
                          f"delete database {args.db!r}")
        return db, out

    db, out = _run(go())
    emit(out or {"deleted": db["databaseId"]}, args.json,
         f"deleted {db['databaseId']} ({db.get('name')})")
    return 0


def run_readonly(args: argparse.Namespace) -> int:
    on = args.readonly_command == "on"
    path = "/v1/admin/readonly" if on else "/v1/admin/readwrite"
    out = _run(_call(args, "POST", path, "change the server's mode", {}))
    emit(out, args.json, "read-only: writes are refused until 'jade readonly off'" if on
         else "read-write: writes are accepted")
    return 0


def run_key_list(args: argparse.Namespace) -> int:
    out = _run(_call(args, "GET", "/v1/api-keys", "list the API keys"))
    text = "\n".join(
        f"{k['key_id']}  {k['key_prefix']}…  user {k['user_id']}  "
        f"scopes {','.join(k['permissions']) or 'all'}  "
        f"{'active' if k['is_active'] else 'revoked'}  {k['description']}".rstrip()
        for k in out["api_keys"]) or "no keys"
    emit(out, args.json, text)
    return 0


def _token_subject(args: argparse.Namespace) -> str:
    """The user of a login token (its ``sub`` claim, read without checking the signature: the
    server checks it); "" for an API key."""
    import base64

    from tools.client import api_key

    parts = api_key(args.api_key).split(".")
    if len(parts) != 3:
        return ""
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return ""
    return str(claims.get("sub", "")) if isinstance(claims, dict) else ""


def run_key_create(args: argparse.Namespace) -> int:
    uid = args.user or _token_subject(args)
    if not uid:
        raise CliError("whose key? give --user USER_ID (an API key does not say whose it is)",
                       USAGE)
    body: dict[str, Any] = {"user_id": uid, "description": args.description or "jade key create",
                            "permissions": args.scope}
    if args.days:
        body["validity_days"] = args.days
    out = _run(_call(args, "POST", "/v1/api-keys", "create an API key", body))
    emit(out, args.json, f"{out.get('api_key')}\n(key id {out.get('key_id')}: the key is shown "
         "only now; keep it)")
    return 0


def run_key_revoke(args: argparse.Namespace) -> int:
    out = _run(_call(args, "DELETE", f"/v1/api-keys/{quote(args.key_id, safe='')}",
                     f"revoke key {args.key_id}"))
    emit(out, args.json, f"revoked {args.key_id}")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    out = _run(_call(args, "POST", "/v1/admin/promote", "promote the server", {}))
    emit(out, args.json, f"primary now, epoch {out.get('epoch')} (LSN {out.get('lsn')})")
    return 0


def run_shutdown(args: argparse.Namespace) -> int:
    out = _run(_call(args, "POST", "/v1/admin/shutdown", "stop the server", {}))
    emit(out, args.json, "the server is stopping")
    return 0
