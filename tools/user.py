"""``jade user create``: create a user directly in the log (the server must be stopped). The
one way besides the bootstrap rule to create an admin: ``jade user create --admin``."""

from __future__ import annotations

import argparse
import getpass
import sys
import uuid
from typing import Any

from jade.auth.service import AuthService
from jade.core.decide import Command
from jade.metrics import Metrics
from tools.errors import USAGE, CliError
from tools.offline import add_data_dir, open_engine, require_dir, settings_for


def register(sub: Any) -> None:
    p = sub.add_parser("user", help="user administration (server stopped)")
    usub = p.add_subparsers(dest="user_command", required=True)
    c = usub.add_parser("create", help="create a user")
    c.add_argument("username")
    c.add_argument("--admin", action="store_true", help="give the admin role")
    c.add_argument("--role", action="append", default=[], help="extra role (repeatable)")
    c.add_argument("--email", default="")
    c.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (else prompt on the terminal)",
    )
    add_data_dir(c)
    c.add_argument("--create-data-dir", action="store_true",
                   help="make the data directory if it does not exist (a new system)")
    c.set_defaults(run=run_create)


def run_create(args: argparse.Namespace) -> int:
    s = settings_for(args.data_dir)
    if not args.create_data_dir:
        try:
            require_dir(s.data_dir)
        except CliError as exc:
            raise CliError(exc.message + "; or add --create-data-dir to start a new one"
                           ) from None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password on: give --password-stdin and the "
                       "password on standard input", USAGE)
    else:
        password = getpass.getpass("password: ")
    engine = open_engine(s, "jade user create")  # a server on it: one line (tools.cli)
    try:
        svc = AuthService(s, engine, Metrics(), "unused-for-hashing")
        svc.check_strength(password)
        roles = (["admin"] if args.admin else []) + list(args.role) or ["user"]
        uid = uuid.uuid4().hex[:16]
        engine.submit_sync(
            Command(
                "auth.user.create",
                {
                    "user_id": uid,
                    "username": args.username,
                    "email": args.email,
                    "password_hash": svc.hash_password(password),
                    "roles": roles,
                    "must_change_password": False,
                },
                "cli",
            )
        )
        print(f"created user {args.username} ({uid}) with roles {roles}")
        return 0
    finally:
        engine.close()
