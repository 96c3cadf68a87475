"""The cached permission check (runbook baseline 0.97 µs; alert line p95 < 1 ms).

Measures ``AuthService.authorize`` on a real engine (LMDB in a temp dir): a cache hit, a miss
(cache disabled: the decision reads the catalog and the grants from LMDB), and the end-to-end
authentication of a JWT and of an API key. Prints a table; asserts nothing.

    .venv/bin/python bench/permission_check.py [--n 200000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jade import settings as settings_mod  # noqa: E402
from jade.auth.apikeys import digest  # noqa: E402
from jade.auth.principal import Principal  # noqa: E402
from jade.auth.service import AuthService  # noqa: E402
from jade.core.decide import Command  # noqa: E402
from jade.engine import Engine  # noqa: E402
from jade.metrics import Metrics  # noqa: E402


def timed(fn, n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out[i] = time.perf_counter_ns() - t0
    return out / 1000.0  # µs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        s = settings_mod.load({"JADEVECTORDB_DATA_DIR": tmp, "JADEVECTORDB_CONFIG_DIR": tmp})
        e = Engine(s)
        e.open()
        e.submit_sync(Command("auth.user.create", {
            "user_id": "u1", "username": "bench", "email": "", "password_hash": "x",
            "roles": ["user"]}))
        e.submit_sync(Command("auth.user.create", {
            "user_id": "u2", "username": "other", "email": "", "password_hash": "x",
            "roles": ["user"]}))
        e.submit_sync(Command("db.create", {
            "db": "db1", "name": "b", "description": "", "dimension": 4, "metric": "cosine",
            "index_type": "FLAT", "index": {"id": "i", "name": "", "requested": "FLAT",
                                            "kind": "flat", "parameters": {}}}, "u2"))
        e.submit_sync(Command("auth.grant.set", {"db": "db1", "user_id": "u1",
                                                 "permission": "read"}, "u2"))
        e.submit_sync(Command("auth.key.create", {
            "key_id": "k1", "user_id": "u1", "hash": digest("jadevdb_benchkey"),
            "key_prefix": "jadevdb_benc", "permissions": []}))
        p = Principal("u1", "bench", ("user",), "token")
        cached = AuthService(s, e, Metrics(), "x" * 32)
        uncached = AuthService(replace(s, permission_cache_size=0), e, Metrics(), "x" * 32)
        cached.authorize(p, "read", "db1")
        token, jti, exp = cached.issue_token(e.auth.user("u1"))
        e.submit_sync(Command("auth.session.create", {"jti": jti, "user_id": "u1",
                                                      "expires_at": exp}))
        rows = [
            ("authorize, cache hit", timed(lambda: cached.authorize(p, "read", "db1"), args.n)),
            ("authorize, no cache (LMDB)",
             timed(lambda: uncached.authorize(p, "read", "db1"), args.n // 10)),
            ("authenticate JWT", timed(lambda: cached.authenticate(
                {"Authorization": f"Bearer {token}"}), args.n // 10)),
            ("authenticate API key", timed(lambda: cached.authenticate(
                {"X-API-Key": "jadevdb_benchkey"}), args.n // 10)),
        ]
        e.close()
    print(f"{'operation':<30} {'mean µs':>9} {'p50 µs':>9} {'p95 µs':>9} {'p99 µs':>9}")
    for name, xs in rows:
        print(f"{name:<30} {xs.mean():9.2f} {np.percentile(xs, 50):9.2f} "
              f"{np.percentile(xs, 95):9.2f} {np.percentile(xs, 99):9.2f}")
    print("runbook baseline: 0.97 µs (cached); alert line: p95 < 1000 µs")


if __name__ == "__main__":
    main()
