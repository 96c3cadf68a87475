"""Hot snapshots: consistent under concurrent writes, the admin HTTP API, signed manifests,
scheduled snapshots with retention, leftovers of interrupted snapshots, and the runbook's
manual copy (readonly, cp, readwrite)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from typing import Any

import nacl.encoding
import nacl.signing
import numpy as np
import pytest

from jade.backup import archive, snapshot
from jade.backup.restore import RestoreError, _iso, restore, target_settings
from jade.backup.verify import verify_dir
from jade.engine import Engine
from jade.http.keys import ENGINE, SCHEDULER
from jade.settings import ConfigError, Settings
from tests.conftest import make_settings, running_server
from tests.test_backup_pitr import DIM, digest_dir, digest_envs, replay_digest, vectors

SIGNING_KEY = "3f" * 32


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    # loopback_admin off: token-less calls from 127.0.0.1 are anonymous, not admin
    return make_settings(
        tmp_path,
        archive_interval_seconds=0,
        checkpoint_interval_seconds=0,
        snapshot_interval_seconds=3600,
        snapshot_retention_days=1,
        loopback_admin=False,
    )


def rewrite_manifest(path: str, **changes: Any) -> None:
    """Change manifest fields the way an operator's script could, keeping it self-consistent
    (unsigned snapshots only: the signature would catch it)."""
    m = snapshot.read_manifest(path)
    assert "signature" not in m
    m.update(changes)
    m["manifest_sha256"] = snapshot.manifest_checksum(m)
    with open(os.path.join(path, snapshot.MANIFEST), "w") as fh:
        json.dump(m, fh)


async def test_snapshot_under_concurrent_writes_is_exactly_its_lsn(
    server: Any, settings: Settings, tmp_path: Any
) -> None:
    api, engine = server.user, server.app[ENGINE]
    rng = np.random.default_rng(11)
    db = await api.create_db(DIM)
    stop = asyncio.Event()
    written = [0]

    async def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            v = rng.standard_normal(DIM).astype(np.float32).tolist()
            st, body = await api.post(
                f"/v1/databases/{db}/vectors",
                {"id": f"w{w}-{i}", "values": v, "metadata": {"w": w}},
            )
            assert st == 201, body
            if i % 7 == 3:
                st, body = await api.delete(f"/v1/databases/{db}/vectors/w{w}-{i - 2}")
                assert st == 200, body
            i += 1
            written[0] += 1

    async def churn() -> None:
        # databases that come and go: their index checkpoint directories vanish mid-copy
        while not stop.is_set():
            other = await api.create_db(DIM, name="churn")
            st, body = await api.post(
                f"/v1/databases/{other}/vectors/batch", {"vectors": vectors(rng, 20, "c")}
            )
            assert st == 201, body
            await asyncio.to_thread(engine.indexes.checkpoint)
            st, body = await api.delete(f"/v1/databases/{other}")
            assert st == 200, body

    tasks = [asyncio.create_task(writer(w)) for w in range(4)] + [asyncio.create_task(churn())]
    snaps = []
    try:
        await asyncio.sleep(0.2)
        for _ in range(4):
            st, body = await server.admin.post("/v1/admin/snapshots")
            assert st == 201, body
            snaps.append(body)
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert written[0] > 50
    lsns = [s["lsn"] for s in snaps]
    assert lsns == sorted(lsns) and lsns[-1] < engine.log.last_lsn  # writes went on
    history = engine.log.read(0, verify=True)
    for s in snaps:
        target = str(tmp_path / f"r-{s['lsn']}")
        res = await asyncio.to_thread(
            restore, settings, target, lsn=s["lsn"], source_log=engine.log
        )
        assert res["replayed"] == 0 and res["snapshot"] == s["name"]
        assert digest_dir(target_settings(settings, target)) == replay_digest(history, s["lsn"])
    rep = await asyncio.to_thread(verify_dir, target_settings(settings, target))
    assert rep.ok, rep.lines


async def test_snapshot_http_api(server: Any, settings: Settings) -> None:
    api, admin = server.user, server.admin
    db = await api.create_db(DIM)
    st, body = await api.post(
        f"/v1/databases/{db}/vectors/batch", {"vectors": vectors(np.random.default_rng(1), 50, "v")}
    )
    assert st == 201, body
    await asyncio.to_thread(server.app[ENGINE].indexes.checkpoint)

    for client, code in ((api, 403), (server.anon, 401)):
        assert (await client.post("/v1/admin/snapshots"))[0] == code
        assert (await client.get("/v1/admin/snapshots"))[0] == code
        assert (await client.get("/v1/admin/backup/window"))[0] == code

    st, created = await admin.post("/v1/admin/snapshots")
    assert st == 201, created
    name = created["name"]
    assert created["lsn"] == server.app[ENGINE].log.last_lsn and created["signed"] is False
    for client, code in ((api, 403), (server.anon, 401)):
        assert (await client.get(f"/v1/admin/snapshots/{name}"))[0] == code
        assert (await client.get(f"/v1/admin/snapshots/{name}/download"))[0] == code
        assert (await client.delete(f"/v1/admin/snapshots/{name}"))[0] == code

    st, listing = await admin.get("/v1/admin/snapshots")
    assert st == 200 and listing["count"] == 1
    assert listing["snapshots"][0]["name"] == name
    st, one = await admin.get(f"/v1/admin/snapshots/{name}")
    assert st == 200 and one["intact"] is True and one["problems"] == [], one
    assert one["lsn"] == created["lsn"]

    # the download is a tar of the snapshot directory whose files match the manifest
    async with admin.session.get(
        f"{admin.base}/v1/admin/snapshots/{name}/download", headers=admin.headers
    ) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/x-tar"
        raw = await r.read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        manifest = json.loads(tar.extractfile(members[f"{name}/manifest.json"]).read())  # type: ignore[union-attr]
        assert manifest["lsn"] == created["lsn"]
        for rel, f in manifest["files"].items():
            data = tar.extractfile(members[f"{name}/{rel}"]).read()  # type: ignore[union-attr]
            assert len(data) == f["size"]
            import hashlib

            assert hashlib.sha256(data).hexdigest() == f["sha256"], rel
        assert {f"{name}/{snapshot.DATA_FILE}", f"{name}/{snapshot.AUTH_FILE}"} <= set(members)
        assert any("/indexes/" in m for m in members)
        assert not any(m.endswith("-lock") for m in members)
        assert set(members) == {f"{name}/{rel}" for rel in manifest["files"]} | {
            f"{name}/manifest.json"
        }

    # window: the oldest snapshot .. the last record
    st, body = await api.post(f"/v1/databases/{db}/vectors", {"id": "late", "values": [1.0] * DIM})
    assert st == 201
    st, second = await admin.post("/v1/admin/snapshots")
    assert st == 201
    engine: Engine = server.app[ENGINE]
    st, w = await admin.get("/v1/admin/backup/window")
    assert st == 200, w
    first_rec = engine.log.get(created["lsn"])
    assert first_rec is not None
    assert w["earliest_lsn"] == created["lsn"] and w["snapshots"] == 2
    assert w["earliest_time"] == _iso(first_rec.ts) == _iso(created["record_ts"])
    assert w["latest_lsn"] == engine.log.last_lsn == second["lsn"]
    assert w["latest_time"] == _iso(engine.log.last_ts)
    assert w["archived_upto_lsn"] == 0
    await asyncio.to_thread(archive.archive_new, engine.log, settings.backup_dir, 1000)
    st, w = await admin.get("/v1/admin/backup/window")
    assert w["archived_upto_lsn"] == engine.log.last_lsn
    segs = archive.segments(settings.backup_dir)
    with open(segs[-1].path, "r+b") as fh:
        fh.truncate(10)
    st, body = await admin.get("/v1/admin/backup/window")
    assert st == 500 and body["error"] == "archive_damaged" and segs[-1].name in body["message"]
    os.remove(segs[-1].path)

    # delete, then it is gone; unknown names and path tricks are 404
    st, body = await admin.delete(f"/v1/admin/snapshots/{name}")
    assert st == 200, body
    assert (await admin.get(f"/v1/admin/snapshots/{name}"))[0] == 404
    assert (await admin.delete(f"/v1/admin/snapshots/{name}"))[0] == 404
    assert (await admin.get("/v1/admin/snapshots/..%2Farchive"))[0] == 404
    st, listing = await admin.get("/v1/admin/snapshots")
    assert [s["name"] for s in listing["snapshots"]] == [second["name"]]
    st, w = await admin.get("/v1/admin/backup/window")
    assert w["earliest_lsn"] == second["lsn"] and w["snapshots"] == 1


async def test_signed_manifest(tmp_path: Any) -> None:
    s = make_settings(tmp_path, snapshot_signing_key=SIGNING_KEY, archive_interval_seconds=0)
    verify_key = (
        nacl.signing.SigningKey(SIGNING_KEY, encoder=nacl.encoding.HexEncoder)
        .verify_key.encode(nacl.encoding.HexEncoder)
        .decode()
    )
    async with running_server(s) as srv:
        db = await srv.user.create_db(DIM)
        st, body = await srv.user.post(
            f"/v1/databases/{db}/vectors", {"id": "a", "values": [1.0] * DIM}
        )
        assert st == 201
        st, created = await srv.admin.post("/v1/admin/snapshots")
        assert st == 201 and created["signed"] is True, created
        path = os.path.join(snapshot.snapshots_dir(s.backup_dir), created["name"])
        m = snapshot.read_manifest(path)
        assert m["verify_key"] == verify_key and len(bytes.fromhex(m["signature"])) == 64
        assert snapshot.verify(path) == []
        assert snapshot.verify(path, verify_key=verify_key) == []
        other = nacl.signing.SigningKey.generate().verify_key.encode(nacl.encoding.HexEncoder)
        assert snapshot.verify(path, verify_key=other.decode()) == ["manifest.json: bad signature"]

        # tampered: a later LSN claimed (with a matching self-checksum), or a re-signed
        # manifest with another key while the operator pins ours
        bad = str(tmp_path / "tampered")
        shutil.copytree(path, bad)
        m2 = dict(m, lsn=m["lsn"] + 1)
        m2["manifest_sha256"] = snapshot.manifest_checksum(m2)
        with open(os.path.join(bad, snapshot.MANIFEST), "w") as fh:
            json.dump(m2, fh)
        assert "manifest.json: bad signature" in snapshot.verify(bad)
        forged = str(tmp_path / "forged")
        shutil.copytree(path, forged)
        k2 = nacl.signing.SigningKey.generate()
        m3 = dict(m, lsn=m["lsn"])
        m3["signature"] = k2.sign(snapshot._canonical(m3)).signature.hex()
        m3["verify_key"] = k2.verify_key.encode(nacl.encoding.HexEncoder).decode()
        with open(os.path.join(forged, snapshot.MANIFEST), "w") as fh:
            json.dump(m3, fh)
        assert snapshot.verify(forged) == []  # self-consistent...
        assert snapshot.verify(forged, verify_key=verify_key) == ["manifest.json: bad signature"]

        # restore refuses a tampered snapshot in place
        shutil.copy(os.path.join(bad, snapshot.MANIFEST), os.path.join(path, snapshot.MANIFEST))
        with pytest.raises(RestoreError, match="bad signature"):
            await asyncio.to_thread(
                restore, s, str(tmp_path / "r"), latest=True, source_log=srv.app[ENGINE].log
            )
        assert not os.path.exists(tmp_path / "r")
        st, one = await srv.admin.get(f"/v1/admin/snapshots/{created['name']}")
        assert one["intact"] is False and "manifest.json: bad signature" in one["problems"]


async def test_bad_signing_key_is_named(tmp_path: Any) -> None:
    # refused when the configuration loads, before any snapshot can fail on it
    with pytest.raises(ConfigError, match="snapshot_signing_key"):
        make_settings(tmp_path, snapshot_signing_key="not-hex", archive_interval_seconds=0)
    # and the snapshot code still names a bad key it is handed directly
    with pytest.raises(snapshot.SnapshotError, match="bad snapshot signing key"):
        snapshot._signing_key("not-hex")


async def test_scheduled_snapshots_and_retention(server: Any, settings: Settings) -> None:
    api, sched = server.user, server.app[SCHEDULER]
    db = await api.create_db(DIM)
    names = []
    for i in range(3):
        st, body = await api.post(
            f"/v1/databases/{db}/vectors", {"id": f"v{i}", "values": [float(i + 1)] * DIM}
        )
        assert st == 201
        result = await sched.run("snapshot")
        assert result is not None, sched.jobs["snapshot"].last_outcome
        assert result["deleted"] == []
        names.append(result["snapshot"])
    assert [x.name for x in snapshot.listing(settings.backup_dir)] == names

    # every snapshot is old now: retention keeps the newest anyway
    root = snapshot.snapshots_dir(settings.backup_dir)
    for i, n in enumerate(names):
        rewrite_manifest(os.path.join(root, n), created_at=time.time() - (5 - i) * 86400)
    assert snapshot.verify(os.path.join(root, names[0])) == []
    assert snapshot.apply_retention(settings.backup_dir, 1) == names[:2]
    assert [x.name for x in snapshot.listing(settings.backup_dir)] == [names[2]]
    assert snapshot.apply_retention(settings.backup_dir, 0) == []  # 0 = keep everything

    # the next scheduled snapshot drops the old one and stays
    st, body = await api.post(f"/v1/databases/{db}/vectors", {"id": "x", "values": [9.0] * DIM})
    result = await sched.run("snapshot")
    assert result["deleted"] == [names[2]]
    assert [x.name for x in snapshot.listing(settings.backup_dir)] == [result["snapshot"]]
    assert sched.jobs["snapshot"].failures == 0


async def test_leftover_temp_dirs(server: Any, settings: Settings) -> None:
    root = snapshot.snapshots_dir(settings.backup_dir)
    os.makedirs(root, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(root, f"{snapshot.TMP_PREFIX}{dead.pid}-{time.time_ns()}")
    os.makedirs(stale)
    with open(os.path.join(stale, snapshot.DATA_FILE), "wb") as fh:
        fh.write(b"half a copy")
    with open(os.path.join(stale, snapshot.MANIFEST), "w") as fh:
        json.dump({"format": 1}, fh)
    # a snapshot in progress in another live process (jade snapshot create beside the server)
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = os.path.join(root, f"{snapshot.TMP_PREFIX}{busy.pid}-{time.time_ns()}")
        os.makedirs(live)
        st, listing = await server.admin.get("/v1/admin/snapshots")
        assert st == 200 and listing["count"] == 0
        assert snapshot.listing(settings.backup_dir) == []
        st, created = await server.admin.post("/v1/admin/snapshots")
        assert st == 201, created
        assert not os.path.exists(stale)
        assert os.path.isdir(live)  # not ours to remove
        st, listing = await server.admin.get("/v1/admin/snapshots")
        assert [x["name"] for x in listing["snapshots"]] == [created["name"]]
    finally:
        busy.kill()
        busy.wait()
    assert snapshot.cleanup(settings.backup_dir) == 1
    assert sorted(os.listdir(root)) == [created["name"]]


async def test_runbook_manual_copy_in_readonly(
    server: Any, settings: Settings, tmp_path: Any
) -> None:
    api, admin, engine = server.user, server.admin, server.app[ENGINE]
    db = await api.create_db(DIM)
    st, body = await api.post(
        f"/v1/databases/{db}/vectors/batch",
        {"vectors": vectors(np.random.default_rng(3), 300, "m")},
    )
    assert st == 201, body
    st, body = await api.delete(f"/v1/databases/{db}/vectors/m3")
    assert st == 200
    st, body = await admin.post("/admin/readonly")
    assert st == 200 and body["mode"] == "readonly", body
    st, body = await api.post(f"/v1/databases/{db}/vectors", {"id": "no", "values": [0.0] * DIM})
    assert st == 503, body
    copy = tmp_path / "copy"
    copy.mkdir()
    want = digest_envs(engine.env, engine.auth_env)
    lsn = engine.log.last_lsn
    shutil.copy(settings.db_path, copy / snapshot.DATA_FILE)
    shutil.copy(settings.auth_db_path, copy / snapshot.AUTH_FILE)
    st, body = await admin.post("/admin/readwrite")
    assert st == 200 and body["mode"] == "readwrite", body
    st, body = await api.post(f"/v1/databases/{db}/vectors", {"id": "yes", "values": [0.0] * DIM})
    assert st == 201

    cs = target_settings(settings, str(copy))

    def open_and_digest() -> tuple[dict[str, Any], int, int]:
        e = Engine(cs)
        e.open()
        try:
            live = e.indexes.get(db)
            assert live is not None
            return digest_envs(e.env, e.auth_env), e.log.last_lsn, len(live)  # type: ignore[arg-type]
        finally:
            e.close()

    got, got_lsn, indexed = await asyncio.to_thread(open_and_digest)
    assert got_lsn == lsn and got == want and indexed == 299
    rep = await asyncio.to_thread(verify_dir, cs)
    assert rep.ok, rep.lines


def _download_threads() -> list[Any]:
    import threading

    return [t for t in threading.enumerate() if t.name == "snapshot-download" and t.is_alive()]


async def _no_download_threads(timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while _download_threads():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_download_abandoned_or_broken(server: Any, settings: Settings) -> None:
    """A client that goes away mid-download does not leave the tar builder blocked forever; a
    snapshot deleted mid-download ends in a broken transfer, never a short valid-looking tar."""
    import aiohttp

    admin = server.admin
    url = f"{admin.base}/v1/admin/snapshots/{{}}/download"
    for case in ("abandoned", "deleted"):
        st, created = await admin.post("/v1/admin/snapshots")
        assert st == 201, created
        path = os.path.join(snapshot.snapshots_dir(settings.backup_dir), created["name"])
        with open(os.path.join(path, "big.bin"), "wb") as fh:  # sorted first by tar
            fh.truncate(24 << 20)
        async with aiohttp.ClientSession() as session:
            r = await session.get(url.format(created["name"]), headers=admin.headers)
            assert r.status == 200
            got = await r.content.readexactly(256 << 10)
            assert got[257:262] == b"ustar"  # a tar header
            if case == "abandoned":
                r.close()
            else:
                st, body = await admin.delete(f"/v1/admin/snapshots/{created['name']}")
                assert st == 200, body
                with pytest.raises(aiohttp.ClientError):
                    while await r.content.read(1 << 20):
                        pass
                r.close()
        assert await _no_download_threads(), case
        shutil.rmtree(path, ignore_errors=True)
