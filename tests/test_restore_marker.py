"""A killed restore never looks complete (issue 14, item 4).

``jade restore`` fills a temporary sibling of the target (``<target>.restoring-<pid>-<ns>``)
holding an in-progress marker (``RESTORE_INCOMPLETE``); only when every record is applied and
the files are synced does the completion marker (``RESTORED``: the LSN asked and reached, the
snapshot) replace it and the directory move to the target. A restore SIGKILLed at any point
leaves no directory a server would serve: the target is absent (or the previous, complete
restore), and the leftover temporary directory is refused by every opener and failed by
``jade verify``. The next restore to the same target removes the leftover.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from jade import errors
from jade.backup import snapshot
from jade.backup.restore import RestoreError, restore, target_settings
from jade.backup.verify import verify_dir
from jade.datadir import hold
from jade.engine import Engine
from jade.settings import Settings
from tests.conftest import ROOT, cli_env, free_port, jade, make_settings
from tests.test_index_checkpoint import create_cmd, upsert_cmd

INCOMPLETE = "RESTORE_INCOMPLETE"
RESTORED = "RESTORED"
RECORDS = 8000  # upsert records after the snapshot: the replay takes a good fraction of a second
DIM = 8


@dataclass
class Source:
    settings: Settings
    env: dict[str, str]
    snap: snapshot.SnapshotInfo
    last_lsn: int


@pytest.fixture(scope="module")
def source(tmp_path_factory: Any) -> Source:
    """A stopped server's directory: a database, a snapshot at its creation, then RECORDS
    upsert records of two vectors each (submitted together: the writer groups them)."""
    root = tmp_path_factory.mktemp("restore-marker")
    s = make_settings(root, archive_interval_seconds=0, checkpoint_interval_seconds=0)
    engine = Engine(s)
    engine.open()
    try:
        engine.submit_sync(create_cmd("main", "hnsw", dim=DIM))
        assert engine.env is not None and engine.auth_env is not None
        snap = snapshot.create(engine.env, engine.auth_env, s.index_dir, s.backup_dir)
        rng = np.random.default_rng(14)
        assert engine.writer is not None
        futures = []
        for i in range(RECORDS):
            cmd = upsert_cmd(
                "main", [(f"v{i}-{j}", rng.random(DIM).tolist(), {"i": i}) for j in range(2)]
            )
            futures.append(engine.writer.submit(cmd, cmd.size))
        for f in futures:
            f.result()
        last = engine.log.last_lsn
    finally:
        engine.close()
    assert last == snap.lsn + RECORDS
    return Source(s, cli_env(s), snap, last)




def leftovers(target: str) -> list[str]:
    return sorted(glob.glob(glob.escape(target) + ".restoring-*"))


def staged(target: str) -> list[str]:
    """Hidden directories a restore makes its temporary directory in (with its marker)."""
    parent, base = os.path.split(target)
    return sorted(glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.restoring-*")))


def complete(d: str) -> bool:
    return os.path.exists(os.path.join(d, RESTORED)) and not os.path.exists(
        os.path.join(d, INCOMPLETE)
    )


def marker(d: str) -> dict[str, Any]:
    with open(os.path.join(d, RESTORED)) as fh:
        out: dict[str, Any] = json.load(fh)
    return out


def assert_refused(src: Source, d: str) -> int | None:
    """Nothing serves ``d``: an engine refuses it naming the marker, ``jade serve`` exits 1
    with one line, ``verify_dir`` fails saying the restore did not finish. Returns the LSN
    its log reached (None: no data file yet)."""
    ts = target_settings(src.settings, d)
    engine = Engine(ts)
    try:
        engine.open()
    except Exception as exc:  # the refusal, checked below
        refused: Exception = exc
    else:
        reached = engine.log.last_lsn
        engine.close()
        pytest.fail(f"an engine opened {d}, a killed restore at LSN {reached} of {src.last_lsn}")
    assert isinstance(refused, errors.RestoreIncomplete), repr(refused)
    assert os.path.join(d, INCOMPLETE) in str(refused) and "did not finish" in str(refused)

    rep = verify_dir(ts)
    assert not rep.ok, rep.lines
    fail = [x for x in rep.lines if x.startswith("FAIL") and "restore did not finish" in x]
    assert len(fail) == 1, rep.lines
    reached = rep.facts.get("last_lsn")
    if reached is not None:
        assert f"reached LSN ≤ {reached}" in fail[0], fail
        assert src.snap.lsn <= reached <= src.last_lsn
    return reached if isinstance(reached, int) else None


def assert_serve_refuses(src: Source, d: str) -> None:
    env = {**src.env, "JADEVECTORDB_HOST": "127.0.0.1", "JADEVECTORDB_PORT": str(free_port())}
    r = jade(env, "serve", "--data-dir", d, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "did not finish" in lines[0], lines
    assert os.path.join(d, INCOMPLETE) in lines[0], lines


def assert_restored(src: Source, target: str, out: dict[str, Any]) -> None:
    """A finished restore: at the target, its completion marker with the LSNs, no leftover,
    an engine opens it, verify reports the LSN reached."""
    assert out["ok"] is True and out["target_lsn"] == src.last_lsn, out
    assert complete(target), os.listdir(os.path.dirname(target))
    assert all(complete(d) for d in leftovers(target)), leftovers(target)  # no unfinished one
    m = marker(target)
    assert (m["target_lsn"], m["reached_lsn"]) == (src.last_lsn, src.last_lsn), m
    assert m["snapshot"] == src.snap.name and m["snapshot_lsn"] == src.snap.lsn, m
    assert m["asked"] == {"latest": True, "lsn": None, "time": None}, m
    assert m["finished_at"] and m["started_at"], m
    ts = target_settings(src.settings, target)
    rep = verify_dir(ts)
    assert rep.ok, rep.lines
    assert any(
        x.startswith("ok") and f"restored to LSN {src.last_lsn} (asked: latest)" in x
        and src.snap.name in x
        for x in rep.lines
    ), rep.lines
    engine = Engine(ts)
    engine.open()
    try:
        assert engine.log.last_lsn == src.last_lsn
        assert complete(target)  # the marker stays: it says where the data came from
    finally:
        engine.close()


def kill_restore(src: Source, target: str, when: str, force: bool) -> tuple[bool, float]:
    """Start ``jade restore --latest`` into ``target`` and SIGKILL it: ``dir``: as soon as a
    directory for it appears; ``engine``: once its engine is open (the replay starts);
    ``delay``: a random time after that; ``finish``: once it writes its completion marker.
    Returns (whether it was killed before it finished, seconds from start to the kill)."""
    existed = os.path.exists(target)
    args = ["restore", "--latest", "--target", target] + (["--force"] if force else [])
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools", *args],
        env=src.env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    delay = random.uniform(0.01, 0.3)
    try:
        opened_at = None
        while proc.poll() is None and time.monotonic() - t0 < 60:
            dirs = leftovers(target) + ([target] if not existed and os.path.exists(target) else [])
            if when == "dir" and dirs:
                break
            running = [d for d in dirs if glob.glob(os.path.join(glob.escape(d), "*.running"))]
            if running and opened_at is None:
                opened_at = time.monotonic()
                if when == "engine":
                    break
            if when == "delay" and opened_at is not None and time.monotonic() - opened_at > delay:
                break
            if when == "finish" and any(
                glob.glob(os.path.join(glob.escape(d), RESTORED + "*"))
                for d in dirs
                if d != target
            ):
                break
            time.sleep(0.001)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    return killed, time.monotonic() - t0


def test_a_killed_restore_is_never_served(source: Source, tmp_path: Any) -> None:
    random.seed()
    target = str(tmp_path / "restored")
    modes = ["dir", "engine", "delay", "delay", "delay", "delay", "finish"]
    partial = []  # LSNs reached by killed restores that stopped inside the replay
    for i, when in enumerate(modes):
        force = os.path.exists(target)  # after the first round: --force over a complete target
        before = marker(target)["finished_at"] if force else None
        killed, at = kill_restore(source, target, when, force)
        left = leftovers(target)
        # killed once complete, before it was renamed in: a finished restore, kept, not served
        # in place of the target
        finished = [d for d in left if complete(d)]
        left = [d for d in left if d not in finished]
        if os.path.exists(target):
            # only ever a finished restore: the previous one, or this one if it got that far
            assert complete(target), (i, when, os.listdir(target))
            if killed and (left or finished):
                assert marker(target)["finished_at"] == before, "the old target was replaced"
        elif force:  # killed between the two renames of --force: the old one is aside
            assert finished and glob.glob(glob.escape(target) + ".replaced-*"), "target lost"
        assert len(left + finished) <= 1, left + finished
        hidden = staged(target)  # killed while making its directory: never any data in it
        for d in hidden:
            assert set(os.listdir(d)) <= {INCOMPLETE, INCOMPLETE + ".tmp"}, os.listdir(d)
        for d in left:
            reached = assert_refused(source, d)
            if reached is not None and source.snap.lsn < reached < source.last_lsn:
                partial.append(reached)
            if i < 2 or reached is not None and source.snap.lsn < reached < source.last_lsn:
                assert_serve_refuses(source, d)
        # a second restore to the same target: succeeds, removes the leftover
        r = jade(source.env, "restore", "--latest", "--target", target, "--force", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert_restored(source, target, out)
        for d in left + hidden:
            assert not os.path.exists(d), d
        assert staged(target) == [] and leftovers(target) == finished
        for d in finished + glob.glob(glob.escape(target) + ".replaced-*"):
            shutil.rmtree(d)
        assert out["reached_lsn"] == source.last_lsn and out["marker"] == os.path.join(
            target, RESTORED
        ), out
    assert partial, "no kill landed inside the replay"


def test_a_restore_writes_its_completion_marker(source: Source, tmp_path: Any) -> None:
    s = source.settings
    mid = source.snap.lsn + RECORDS // 2
    target = str(tmp_path / "by-lsn")
    res = restore(s, target, lsn=mid)
    assert res["target_lsn"] == mid and res["reached_lsn"] == mid, res
    assert leftovers(target) == [] and complete(target)
    m = marker(target)
    assert m["asked"] == {"latest": False, "lsn": mid, "time": None}, m
    assert (m["target_lsn"], m["reached_lsn"], m["replayed"]) == (mid, mid, mid - source.snap.lsn)
    assert m["snapshot"] == source.snap.name and m["source"]["data_dir"] == s.data_dir, m
    assert m["reached_time"] == res["target_time"]
    rep = verify_dir(target_settings(s, target))
    assert rep.ok and rep.facts["restore"]["reached_lsn"] == mid, rep.lines
    assert f"ok    restored to LSN {mid} (asked: LSN {mid}) from snapshot {source.snap.name}" in (
        "\n".join(rep.lines)
    ), rep.lines

    # by time: the exact time asked is kept (nanoseconds), and the LSN it resolved to
    from tools.restore_cmd import parse_time

    t = parse_time(res["target_time"])
    by_time = str(tmp_path / "by-time")
    res2 = restore(s, by_time, ts=t)
    m2 = marker(by_time)
    assert m2["target_lsn"] == m2["reached_lsn"] == res2["target_lsn"] == mid, (m2, res2)
    assert m2["asked"]["time"] == res["target_time"].replace("Z", "000Z") and m2["asked"][
        "lsn"
    ] is None, m2
    # --force over it: replaced only once the new one is complete, no leftover, marker updated
    res3 = restore(s, by_time, lsn=mid + 1, force=True)
    assert res3["reached_lsn"] == mid + 1 and marker(by_time)["reached_lsn"] == mid + 1
    assert sorted(os.listdir(tmp_path)) == ["by-lsn", "by-time"]


def test_leftovers_are_removed_only_when_unfinished_and_free(
    source: Source, tmp_path: Any
) -> None:
    target = str(tmp_path / "t")

    def fake(name: str, *files: str) -> str:
        d = str(tmp_path / name)
        os.makedirs(d)
        for f in files:
            with open(os.path.join(d, f), "w") as fh:
                fh.write("{}")
        return d

    gone = 99999999  # no process has this pid
    dead = fake(f"t.restoring-{gone}-2", INCOMPLETE, "jadevectordb.db", "jade.lock")
    bare = fake(f".t.restoring-{gone}-3", INCOMPLETE + ".tmp")  # killed while being made
    held = fake(f"t.restoring-{gone}-4", INCOMPLETE)  # another process holds it
    live = fake(f".t.restoring-{os.getpid()}-5", INCOMPLETE)  # being made by a live restore
    reused = fake(f"t.restoring-{os.getpid()}-7", INCOMPLETE)  # same pid, earlier process
    mine = fake(f"t.restoring-{os.getpid()}-10", INCOMPLETE)  # a restore in this process holds
    done = fake(f"t.restoring-{gone}-6", RESTORED)  # finished, not renamed in: kept
    other = fake(f"tx.restoring-{gone}-8", INCOMPLETE)  # another target's
    odd = fake(f".t.restoring-{gone}-9", INCOMPLETE, "x")  # not what a restore makes: kept
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from jade.datadir import hold; "
         "h = hold(sys.argv[1], 'test helper'); print('held', flush=True); sys.stdin.read()",
         held],
        env={**os.environ, "PYTHONPATH": ROOT},
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with hold(mine, "jade restore"):
            res = restore(source.settings, target, lsn=source.snap.lsn + 1)
        assert res["reached_lsn"] == source.snap.lsn + 1
        assert sorted(res["removed_leftovers"]) == sorted([dead, bare, reused])
        assert not any(os.path.exists(d) for d in (dead, bare, reused))
        assert all(os.path.exists(d) for d in (held, live, mine, done, other, odd))
        # a target another process holds is never replaced, even with --force
        busy = str(tmp_path / "busy")
        os.makedirs(busy)
        shutil.copy(os.path.join(target, RESTORED), busy)
        p2 = subprocess.Popen(
            [sys.executable, "-c", "import sys; from jade.datadir import hold; "
             "h = hold(sys.argv[1], 'test helper'); print('held', flush=True); "
             "sys.stdin.read()", busy],
            env={**os.environ, "PYTHONPATH": ROOT},
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert p2.stdout is not None and p2.stdout.readline() == b"held\n"
            with pytest.raises(RestoreError, match="in use by test helper"):
                restore(source.settings, busy, lsn=source.snap.lsn + 1, force=True)
            assert sorted(os.listdir(busy)) == sorted(["jade.lock", RESTORED])
            assert leftovers(busy) == []
        finally:
            assert p2.stdin is not None and p2.stdout is not None
            p2.stdin.close()
            p2.wait(timeout=30)
            p2.stdout.close()
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()


def test_every_opener_refuses_an_unfinished_restore(source: Source, tmp_path: Any) -> None:
    d = str(tmp_path / "half")
    os.makedirs(d)
    with open(os.path.join(d, INCOMPLETE), "w") as fh:
        json.dump({"state": "in progress", "target_lsn": 99}, fh)
    ts = target_settings(source.settings, d)
    with pytest.raises(errors.RestoreIncomplete, match="did not finish") as info:
        Engine(ts).open()
    assert os.path.join(d, INCOMPLETE) in str(info.value)
    with hold(d, "after the refusal"):  # the refusal released the directory's lock
        pass
    assert not os.path.exists(ts.db_path)  # nothing was created beside the marker
    # an offline tool that writes: one line, exit 1
    env = {**source.env, "JADEVECTORDB_DATA_DIR": d}
    r = subprocess.run(
        [sys.executable, "-m", "tools", "user", "create", "bob", "--email", "b@example.com",
         "--password-stdin"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        input="A-strong-passw0rd!\n",
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "did not finish" in lines[0], r.stderr
    # jade verify on it: FAIL, the restore did not finish (no data file: nothing reached)
    v = jade(source.env, "verify", d, "--json")
    rep = json.loads(v.stdout)
    assert v.returncode == 1 and rep["ok"] is False, v.stdout
    assert any(x.startswith("FAIL") and "restore did not finish" in x for x in rep["lines"])
