"""Backups in a second location (issue 18, item 6): the ``offsite`` job copies every snapshot and
archive segment to a directory on another disk and to an S3-compatible bucket (moto's server as a
real subprocess on 127.0.0.1), and after the data volume is lost — data directory and local
backups together — a restore from that second location gives back every acknowledged write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from typing import Any

import pytest

from jade.backup import archive, offsite, snapshot
from jade.backup.jobs import Backups
from jade.http.keys import SCHEDULER
from jade.settings import ConfigError, Settings
from tests.conftest import Server, cli_env, free_port, jade, make_settings, running_server
from tests.test_backup_pitr import DIM, digest_dir
from tests.test_runbook import metrics_text, sample

P = "jadevectordb_"


def offsite_settings(tmp_path: Any, **extra: Any) -> Settings:
    return make_settings(
        tmp_path,
        archive_interval_seconds=3600,  # the jobs exist; the tests run them
        archive_segment_records=5,
        snapshot_interval_seconds=3600,
        checkpoint_interval_seconds=0,
        log_retention_seconds=0,
        loopback_admin=False,
        **extra,
    )


async def write(server: Server, db: str, ids: range) -> None:
    st, body = await server.user.post(f"/v1/databases/{db}/vectors/batch", {"vectors": [
        {"id": f"v{i}", "values": [float(i % 5 + 1)] * DIM, "metadata": {"i": str(i)}}
        for i in ids]})
    assert st == 201, body


async def history(server: Server) -> str:
    """A database, a snapshot, writes after it, archived; returns the database id."""
    sched = server.app[SCHEDULER]
    db = await server.user.create_db(DIM)
    await write(server, db, range(0, 10))
    assert await sched.run("snapshot") is not None, sched.jobs["snapshot"].last_outcome
    await write(server, db, range(10, 20))
    for i in range(3):  # one record each: several archive segments
        st, _ = await server.user.post(f"/v1/databases/{db}/vectors",
                                       {"id": f"x{i}", "values": [9.0] * DIM})
        assert st == 201
    assert await sched.run("archive") is not None, sched.jobs["archive"].last_outcome
    return db


def lose_the_data_volume(s: Settings) -> None:
    """The data directory and the backups under it are gone (the default backup_dir)."""
    assert s.backup_dir.startswith(s.data_dir + os.sep)
    shutil.rmtree(s.data_dir)


def restore_from(s: Settings, backup_dir: str, target: str) -> None:
    env = {**cli_env(s), "JADEVECTORDB_BACKUP_DIR": backup_dir}
    r = jade(env, "restore", "--latest", "--target", target)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Traceback" not in r.stderr


# -- a directory on another disk --------------------------------------------------------------


async def test_path_target_end_to_end(tmp_path: Any) -> None:
    far = str(tmp_path / "other-disk" / "jade")
    s = offsite_settings(tmp_path, offsite_path=far)
    async with running_server(s) as server:
        sched = server.app[SCHEDULER]
        assert "offsite" in sched.jobs
        assert sched.jobs["offsite"].interval_seconds == 60  # the default
        await history(server)
        # the other disk not mounted (its directory missing): an error, never a copy into
        # the mount point
        assert await sched.run("offsite") is None
        assert "does not exist (is the other disk mounted?)" in sched.jobs["offsite"].last_outcome
        assert not os.path.exists(far)
        os.makedirs(far)
        result = await sched.run("offsite")
        assert result is not None, sched.jobs["offsite"].last_outcome
        (copy,) = result["targets"]
        local_snaps = [x.name for x in snapshot.listing(s.backup_dir)]
        local_segs = [x.name for x in archive.segments(s.backup_dir)]
        assert len(local_snaps) == 1 and len(local_segs) >= 2
        assert copy["snapshots"] == local_snaps and copy["segments"] == len(local_segs)
        assert copy["problems"] == [] and copy["bytes"] > 0
        # the second location is a backup directory in its own right
        assert [x.name for x in snapshot.listing(far)] == local_snaps
        assert [x.name for x in archive.segments(far)] == local_segs
        assert snapshot.verify(os.path.join(snapshot.snapshots_dir(far), local_snaps[0])) == []
        assert archive.verify_all(far) == []
        text = await metrics_text(server.anon)
        assert sample(text, P + "backup_offsite_bytes_total", target="path") == copy["bytes"]
        assert sample(text, P + "scheduler_job_runs_total", task="offsite",
                      outcome="success") == 1
        assert sample(text, P + "scheduler_job_runs_total", task="offsite",
                      outcome="error") == 1  # the run before the disk was there
        # a second run finds everything there
        again = await sched.run("offsite")
        assert again["targets"][0]["snapshots"] == [] and again["targets"][0]["segments"] == 0
        assert again["targets"][0]["bytes"] == 0
    before = digest_dir(s)
    assert sum(len(d["vectors"]) for d in before["dbs"].values()) == 23
    lose_the_data_volume(s)

    target = str(tmp_path / "restored")
    restore_from(s, far, target)  # JADEVECTORDB_BACKUP_DIR=<the second location>
    assert digest_dir(replace(s, data_dir=target, db_path=os.path.join(target, snapshot.DATA_FILE),
                              auth_db_path=os.path.join(target, snapshot.AUTH_FILE))) == before


async def test_a_damaged_local_snapshot_is_not_copied(tmp_path: Any) -> None:
    far = str(tmp_path / "other-disk")
    os.makedirs(far)
    s = offsite_settings(tmp_path, offsite_path=far)
    async with running_server(s) as server:
        sched = server.app[SCHEDULER]
        await history(server)
        (snap,) = snapshot.listing(s.backup_dir)
        data = os.path.join(snap.path, snapshot.DATA_FILE)
        with open(data, "r+b") as fh:
            fh.seek(4096 + 100)
            b = fh.read(1)
            fh.seek(4096 + 100)
            fh.write(bytes([b[0] ^ 0xFF]))
        assert await sched.run("offsite") is None  # recorded as failed, not raised
        outcome = sched.jobs["offsite"].last_outcome
        assert outcome.startswith("error: OffsiteError") and "checksum mismatch" in outcome
        assert snap.name in outcome and snapshot.DATA_FILE in outcome
        assert snapshot.listing(far) == []  # no manifest: not a snapshot there
        assert not os.path.exists(os.path.join(snapshot.snapshots_dir(far), snap.name,
                                               snapshot.DATA_FILE))
        # the archive went anyway
        assert [x.name for x in archive.segments(far)] == \
            [x.name for x in archive.segments(s.backup_dir)]
        text = await metrics_text(server.anon)
        assert sample(text, P + "scheduler_job_runs_total", task="offsite", outcome="error") == 1


async def test_retention_at_the_target_keeps_the_newest(tmp_path: Any) -> None:
    far = str(tmp_path / "other-disk")
    os.makedirs(far)
    s = offsite_settings(tmp_path, offsite_path=far, snapshot_retention_days=1)
    async with running_server(s) as server:
        sched = server.app[SCHEDULER]
        await history(server)
        assert await sched.run("offsite") is not None, sched.jobs["offsite"].last_outcome
        (snap,) = snapshot.listing(far)
        root = snapshot.snapshots_dir(far)
        # two copies named as if taken long ago (a name's time is what the target goes by)
        old = ["snap-0000000000000001-20200101T000000Z", "snap-0000000000000002-20200102T000000Z"]
        for name in old:
            shutil.copytree(snap.path, os.path.join(root, name))
        # and a partial copy (no manifest): never listed, never fetched
        os.makedirs(os.path.join(root, "snap-0000000000000003-20200103T000000Z"))
        with open(os.path.join(root, "snap-0000000000000003-20200103T000000Z",
                               snapshot.DATA_FILE), "wb") as fh:
            fh.write(b"partial")
        result = await sched.run("offsite")
        assert result["targets"][0]["deleted"] == old
        assert [x.name for x in snapshot.listing(far)] == [snap.name]
        for name in old:
            assert not os.path.exists(os.path.join(root, name))
        # local retention never removes an offsite copy
        snapshot.delete(s.backup_dir, snap.name)
        assert await sched.run("offsite") is not None
        assert [x.name for x in snapshot.listing(far)] == [snap.name]
    # the newest is kept however old: a target holding only old snapshots keeps its newest
    lone = str(tmp_path / "lone")
    for name in old:
        shutil.copytree(os.path.join(root, snap.name),
                        os.path.join(snapshot.snapshots_dir(lone), name))
    assert offsite._apply_retention(offsite.PathTarget(lone), 1) == old[:1]
    assert [x.name for x in snapshot.listing(lone)] == old[1:]


async def test_a_snapshot_past_retention_is_not_copied(tmp_path: Any) -> None:
    from tests.test_backup_snapshot import rewrite_manifest

    far = str(tmp_path / "other-disk")
    os.makedirs(far)
    s = offsite_settings(tmp_path, offsite_path=far, snapshot_retention_days=1)
    async with running_server(s) as server:
        sched = server.app[SCHEDULER]
        db = await history(server)
        await write(server, db, range(100, 103))
        assert await sched.run("snapshot") is not None
        first, second = snapshot.listing(s.backup_dir)
        # the first is past retention: the target would delete it right after copying it
        rewrite_manifest(first.path, created_at=time.time() - 3 * 86400)
        result = await sched.run("offsite")
        assert result["targets"][0]["snapshots"] == [second.name]
        assert [x.name for x in snapshot.listing(far)] == [second.name]
        # alone, the newest is copied however old
        snapshot.delete(s.backup_dir, second.name)
        shutil.rmtree(os.path.join(snapshot.snapshots_dir(far), second.name))
        result = await sched.run("offsite")
        assert result["targets"][0]["snapshots"] == [first.name]


def test_offsite_settings_are_checked(tmp_path: Any) -> None:
    s = make_settings(tmp_path, offsite_path=str(tmp_path / "data" / "copies"))
    with pytest.raises(ConfigError, match="overlaps the data directory"):
        offsite.targets(s)
    s = make_settings(tmp_path, offsite_path=str(tmp_path))  # holds the data directory
    with pytest.raises(ConfigError, match="overlaps"):
        offsite.targets(s)
    with pytest.raises(ConfigError, match="s3://BUCKET"):
        make_settings(tmp_path, offsite_s3_url="https://bucket/x")
    with pytest.raises(ConfigError, match="s3://BUCKET"):
        offsite.parse_s3_url("s3://Bad_Bucket")
    assert offsite.parse_s3_url("s3://jade-backups/prod/node1/") == ("jade-backups",
                                                                      "prod/node1")
    assert offsite.targets(make_settings(tmp_path)) == []


def test_jade_serve_refuses_an_offsite_path_on_the_data_disk(tmp_path: Any) -> None:
    data = str(tmp_path / "data")
    env = {**os.environ, "JADEVECTORDB_DATA_DIR": data,
           "JADEVECTORDB_CONFIG_DIR": str(tmp_path / "no-config"),
           "JADEVECTORDB_PORT": str(free_port()), "JADEVECTORDB_HOST": "127.0.0.1",
           "JADEVECTORDB_BACKUP_OFFSITE_PATH": os.path.join(data, "backups", "copy")}
    r = jade(env, "serve", timeout=60)
    assert r.returncode != 0
    assert "overlaps the data directory" in r.stderr
    assert "Traceback" not in r.stderr


# -- an S3-compatible store (moto's server, a real subprocess) --------------------------------


@pytest.fixture
def s3_endpoint(tmp_path: Any) -> Any:
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "moto_server exited"
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


async def test_s3_target_end_to_end(tmp_path: Any, s3_endpoint: str) -> None:
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="jade-backups")
    s = offsite_settings(
        tmp_path, offsite_s3_url="s3://jade-backups/prod/node1",
        offsite_s3_endpoint_url=s3_endpoint, offsite_s3_region="us-east-1",
        offsite_s3_access_key_id="testing", offsite_s3_secret_access_key="testing")
    assert "testing" not in repr(s) and s.redacted()["backup.offsite_s3_secret_access_key"] == "***"
    async with running_server(s) as server:
        sched = server.app[SCHEDULER]
        await history(server)
        result = await sched.run("offsite")
        assert result is not None, sched.jobs["offsite"].last_outcome
        (copy,) = result["targets"]
        assert copy["target"] == "s3://jade-backups/prod/node1"
        local_snaps = [x.name for x in snapshot.listing(s.backup_dir)]
        local_segs = [x.name for x in archive.segments(s.backup_dir)]
        assert copy["snapshots"] == local_snaps and copy["segments"] == len(local_segs)
        keys = {o["Key"]: o["Size"] for o in
                client.list_objects_v2(Bucket="jade-backups")["Contents"]}
        assert f"prod/node1/snapshots/{local_snaps[0]}/{snapshot.MANIFEST}" in keys
        for seg in local_segs:
            assert keys[f"prod/node1/archive/{seg}"] == os.path.getsize(
                os.path.join(archive.archive_dir(s.backup_dir), seg))
        assert all(k.startswith("prod/node1/") for k in keys)
        text = await metrics_text(server.anon)
        assert sample(text, P + "backup_offsite_bytes_total", target="s3") == copy["bytes"]
        again = await sched.run("offsite")
        assert again["targets"][0]["bytes"] == 0
    before = digest_dir(s)
    lose_the_data_volume(s)

    # fetch the bucket's copy into a local directory, then restore from it
    fetched = str(tmp_path / "fetched-backups")
    got = offsite.fetch(offsite.targets(s)[0], fetched)
    assert got["snapshots"] == local_snaps and got["segments"] == len(local_segs)
    assert archive.verify_all(fetched) == []
    target = str(tmp_path / "restored")
    restore_from(s, fetched, target)
    assert digest_dir(replace(s, data_dir=target, db_path=os.path.join(target, snapshot.DATA_FILE),
                              auth_db_path=os.path.join(target, snapshot.AUTH_FILE))) == before


async def test_an_unreachable_s3_store_fails_the_job_not_the_others(
        tmp_path: Any, s3_endpoint: str) -> None:
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="jade-backups")
    far = str(tmp_path / "other-disk")
    os.makedirs(far)
    s = offsite_settings(
        tmp_path, offsite_path=far, offsite_s3_url="s3://no-such-bucket/x",
        offsite_s3_endpoint_url=s3_endpoint, offsite_s3_region="us-east-1",
        offsite_s3_access_key_id="testing", offsite_s3_secret_access_key="testing")
    async with running_server(s) as server:
        sched = server.app[SCHEDULER]
        await history(server)
        assert await sched.run("offsite") is None
        outcome = sched.jobs["offsite"].last_outcome
        assert "s3://no-such-bucket/x" in outcome and "NoSuchBucket" in outcome, outcome
        # the path target got its copy all the same
        assert len(snapshot.listing(far)) == 1


def test_backups_without_offsite_settings_have_no_target(tmp_path: Any) -> None:
    from tests.test_backup_pitr import open_engine

    s = make_settings(tmp_path)
    e = open_engine(s)
    try:
        b = Backups(e)
        assert b.offsite.targets == []
        assert b.push_offsite() == {"targets": []}
    finally:
        e.close()


# -- compose and Kubernetes keep a copy of the backups off the data volume ----------------------


def test_compose_primaries_copy_their_backups_to_another_volume() -> None:
    from tests.test_deploy_files import (
        COMPOSE_VARS,
        compose_env,
        effective_settings,
        image_cmd,
        interpolate,
        jade_services,
    )

    seen = []
    for f, name, svc in jade_services():
        env = {k: interpolate(v, COMPOSE_VARS) for k, v in compose_env(svc).items()}
        s = effective_settings(env, svc.get("command", image_cmd()))
        if s.primary_url:
            continue  # a replica: its primary keeps the backups
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert s.offsite_path in mounts, (f, name, s.offsite_path)
        assert mounts[s.offsite_path] != mounts[s.data_dir], (f, name)
        assert not s.backup_dir.startswith(s.offsite_path), (f, name)
        assert [t.kind for t in offsite.targets(s)] == ["path"]
        # S3 when asked, with nothing else to change
        s3 = effective_settings({**env, **{k: interpolate(v, {
            **COMPOSE_VARS, "JADEVECTORDB_BACKUP_OFFSITE_S3_URL": "s3://bk1/p"})
            for k, v in compose_env(svc).items()}}, svc.get("command", image_cmd()))
        assert s3.offsite_s3_url == "s3://bk1/p"
        seen.append((f, name))
    assert seen == [("docker-compose.yml", "jadevectordb"), ("docker-compose.replicas.yml",
                                                              "primary")]


def test_k8s_primaries_copy_their_backups_to_another_claim() -> None:
    from tests.test_deploy_files import (
        TEST_SECRET,
        _volume_for,
        effective_settings,
        image_cmd,
        jade_container,
        k8s_env,
        k8s_find,
        secret_doc,
        workloads,
    )

    secrets = {k: TEST_SECRET for k in secret_doc()["stringData"]}
    seen = []
    for f, obj in workloads():
        c = jade_container(obj)
        s = effective_settings(k8s_env(c, secrets), c.get("command", image_cmd()))
        if s.primary_url:
            continue
        if obj["kind"] == "Deployment":
            data = _volume_for(obj, s.data_dir)["persistentVolumeClaim"]["claimName"]
            copy = _volume_for(obj, s.offsite_path)["persistentVolumeClaim"]["claimName"]
            assert data != copy
            assert k8s_find("PersistentVolumeClaim", copy)[0] == "pvc.yaml"
        else:  # the StatefulSet: one claim template each
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            templates = {t["metadata"]["name"] for t in obj["spec"]["volumeClaimTemplates"]}
            assert mounts[s.offsite_path] in templates and mounts[s.data_dir] in templates
            assert mounts[s.offsite_path] != mounts[s.data_dir]
        assert [t.kind for t in offsite.targets(s)] == ["path"]
        seen.append(f)
    # every workload that may be a primary: the cluster StatefulSet's pods (roles from the
    # etcd lease) included
    assert sorted(seen) == ["cluster-statefulset.yaml", "deployment.yaml",
                            "primary-statefulset.yaml"]


# -- by hand: jade snapshot push / fetch ------------------------------------------------------


async def test_cli_push_to_a_directory_and_fetch_back(tmp_path: Any) -> None:
    """No offsite setting: ``jade snapshot push --to DIR`` makes the copy, and after the data
    volume is lost ``jade snapshot fetch --from DIR --to LOCAL`` gives a backup directory the
    restore reads, every acknowledged write in it."""
    far = str(tmp_path / "other-disk")
    os.makedirs(far)
    s = offsite_settings(tmp_path)
    async with running_server(s) as server:
        await history(server)
        env = cli_env(s)
        r = jade(env, "snapshot", "push", "--to", far, "--json")
        assert r.returncode == 0, r.stderr
        (copy,) = json.loads(r.stdout)["targets"]
        assert copy["snapshots"] == [x.name for x in snapshot.listing(s.backup_dir)]
        assert copy["segments"] == len(archive.segments(s.backup_dir)) > 0
        # a second push copies nothing; a path on the data disk is refused, one line
        again = jade(env, "snapshot", "push", "--to", far)
        assert again.returncode == 0 and "0 bytes copied" in again.stdout, again.stdout
        inside = jade(env, "snapshot", "push", "--to", os.path.join(s.data_dir, "copy"))
        assert inside.returncode == 2 and "overlaps the data directory" in inside.stderr
        assert "Traceback" not in inside.stderr
    before = digest_dir(s)
    lose_the_data_volume(s)

    local = str(tmp_path / "fetched")
    r = jade(cli_env(s), "snapshot", "fetch", "--from", far, "--to", local)
    assert r.returncode == 0, r.stderr
    assert "1 snapshot(s)" in r.stdout and f"JADEVECTORDB_BACKUP_DIR={local}" in r.stdout
    target = str(tmp_path / "restored")
    restore_from(s, local, target)
    assert digest_dir(replace(s, data_dir=target, db_path=os.path.join(target, snapshot.DATA_FILE),
                              auth_db_path=os.path.join(target, snapshot.AUTH_FILE))) == before
    # a name that is not there: one line, exit 1, nothing half-copied
    r = jade(cli_env(s), "snapshot", "fetch", "--from", far, "--to", str(tmp_path / "f2"),
             "snap-nope")
    assert r.returncode == 1 and "no complete snapshot named snap-nope" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_push_without_a_second_location_is_one_line(tmp_path: Any) -> None:
    s = offsite_settings(tmp_path)
    os.makedirs(s.data_dir, exist_ok=True)
    r = jade(cli_env(s), "snapshot", "push")
    assert r.returncode == 2 and "no second location" in r.stderr
    r = jade(cli_env(s), "snapshot", "fetch", "--from", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "no backup copy at" in r.stderr
    assert "Traceback" not in r.stderr


async def test_cli_push_and_fetch_with_an_s3_store(tmp_path: Any, s3_endpoint: str) -> None:
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="jade-backups")
    s = offsite_settings(tmp_path)
    creds = {"JADEVECTORDB_BACKUP_OFFSITE_S3_ACCESS_KEY_ID": "testing",
             "JADEVECTORDB_BACKUP_OFFSITE_S3_SECRET_ACCESS_KEY": "testing",
             "JADEVECTORDB_BACKUP_OFFSITE_S3_REGION": "us-east-1"}
    async with running_server(s) as server:
        await history(server)
        env = {**cli_env(s), **creds}
        r = jade(env, "snapshot", "push", "--to", "s3://jade-backups/cli",
                 "--endpoint-url", s3_endpoint)
        assert r.returncode == 0, r.stderr
        assert "s3://jade-backups/cli: 1 snapshot(s)" in r.stdout, r.stdout
        # a bucket that does not exist: the store's answer on one line, exit 1
        r = jade(env, "snapshot", "push", "--to", "s3://no-such-bucket/x",
                 "--endpoint-url", s3_endpoint)
        assert r.returncode == 1 and "NoSuchBucket" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    before = digest_dir(s)
    lose_the_data_volume(s)
    local = str(tmp_path / "fetched")
    r = jade({**cli_env(s), **creds}, "snapshot", "fetch", "--from", "s3://jade-backups/cli",
             "--endpoint-url", s3_endpoint, "--to", local)
    assert r.returncode == 0, r.stderr
    target = str(tmp_path / "restored")
    restore_from(s, local, target)
    assert digest_dir(replace(s, data_dir=target, db_path=os.path.join(target, snapshot.DATA_FILE),
                              auth_db_path=os.path.join(target, snapshot.AUTH_FILE))) == before
