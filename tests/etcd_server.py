"""A real etcd (Debian's ``etcd-server``, ``/usr/bin/etcd``) for tests: one member on free
loopback ports with its data in a temporary directory. Tests that need it skip, with the reason,
only when the binary is absent (``make test`` installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port

ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
needs_etcd = pytest.mark.skipif(
    ETCD is None, reason="etcd is not installed (Debian package etcd-server; `make test` "
    "installs it)")


class EtcdServer:
    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "etcd")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> EtcdServer:
        assert ETCD is not None
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.log = open(os.path.join(self.dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            [ETCD, "--name", "t", "--data-dir", os.path.join(self.dir, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"t={peer}", "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    if b'"true"' in resp.read():
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("etcd did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def etcd(tmp_path: Any) -> Iterator[EtcdServer]:
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    server = EtcdServer(str(tmp_path)).start()
    try:
        yield server
    finally:
        server.stop()
