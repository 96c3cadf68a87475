"""``jade openapi``: print the OpenAPI document (``jade openapi > openapi.json``)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("openapi", help="print the OpenAPI document")
    p.set_defaults(run=run)


def render() -> str:
    from jade.http.openapi import build
    from jade.http.routes import ROUTES

    return json.dumps(build(ROUTES), indent=1, sort_keys=True) + "\n"


def run(args: argparse.Namespace) -> int:
    print(render(), end="")
    return 0
