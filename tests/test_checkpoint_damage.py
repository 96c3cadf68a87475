"""A damaged index checkpoint is never loaded (issue 14, item 2).

Every file of a checkpoint (the hnswlib or flat index file, hnswlib's ``.deleted.json`` beside
it, the metadata file) has its checksum in ``index.json``; a start-up checks them all before
hnswlib sees a byte (its ``load_index`` trusts its input: damaged neighbour links crash the
process within a few searches). A damaged or missing file is logged by name, counted
(``jadevectordb_index_checkpoint_damaged_total``) and that database rebuilt from the store; its
searches then answer what the undamaged checkpoint answers. ``jade verify`` checks every
checksum and names the damaged file.

One data directory with an hnsw and a flat database of a few thousand vectors is built once
and copied for each test. Restarts on a damaged hnsw index file run in a subprocess: without
the checksums that process may die of SIGSEGV, which must fail the test, not end the run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from jade.backup.verify import verify_dir
from jade.core.decide import Command
from jade.core.filters import parse_filter
from jade.engine import Engine
from jade.http.databases import new_index
from jade.http.keys import ENGINE, METRICS
from jade.http.system import refresh_gauges
from jade.indexes.checkpoints import FORMAT as CHECKPOINT_FORMAT
from jade.indexes.checkpoints import MD_SUFFIX
from jade.metrics import Metrics
from jade.settings import Settings
from tests.conftest import make_settings
from tests.test_apply import upsert as upsert_command

DIM = 16
N = 3000
DELETED = [f"v{i}" for i in range(0, N, 60)]  # 50: hnswlib's .deleted.json is not empty
DBS = {"h": "hnsw", "f": "flat"}
QUERIES = 20
ROOT = Path(__file__).resolve().parent.parent
DAMAGED_METRIC = "jadevectordb_index_checkpoint_damaged_total"


# -- the data directory ---------------------------------------------------------------------------


def _create(db_id: str, kind: str) -> Command:
    # efSearch well above k: the graph rebuilt from the store finds what the saved one found
    params = {"M": 16, "efConstruction": 100, "efSearch": 400} if kind == "hnsw" else {}
    return Command("db.create", {
        "db": db_id, "name": db_id, "description": "", "dimension": DIM, "metric": "cosine",
        "index_type": kind.upper(), "index": new_index(kind.upper(), kind, params), "extra": {},
    })


def answers(engine: Engine) -> dict[str, Any]:
    """``QUERIES`` searches per database (unfiltered; one in four filtered), labels and scores."""
    rng = np.random.default_rng(7)
    qs = rng.normal(size=(QUERIES, DIM)).astype(np.float32)
    out: dict[str, Any] = {}
    for db_id in DBS:
        live = engine.indexes.get(db_id)
        assert live is not None, db_id
        rows = []
        for i, q in enumerate(qs):
            f = parse_filter({"color": "red"}) if i % 4 == 3 else None
            lab, sc, _ = live.search(q, 10, f, exact_scan_max=0, cache_size=0)
            rows.append([lab.tolist(), np.round(sc, 4).tolist()])
        out[db_id] = rows
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A stopped data directory (``<root>/data``) whose two databases were checkpointed by a
    clean close, and the answers of its indexes before the close."""
    root = tmp_path_factory.mktemp("damage-template")
    engine = Engine(make_settings(root))
    engine.open()
    try:
        rng = np.random.default_rng(3)
        vecs = rng.normal(size=(N, DIM)).astype(np.float32)
        for db_id, kind in DBS.items():
            engine.submit_sync(_create(db_id, kind))
            for lo in range(0, N, 1000):
                items = [(f"v{i}", vecs[i].tolist(), {"color": ("red", "blue", "green")[i % 3]})
                         for i in range(lo, lo + 1000)]
                engine.submit_sync(upsert_command(db_id, items, actor="test"))
            # in the graph before the delete, so the checkpoint holds deleted elements (a
            # label deleted before the index follower inserted it never enters the graph)
            live = engine.indexes.get(db_id)
            assert live is not None
            live.index.settle()
            engine.submit_sync(Command("vec.delete", {"db": db_id, "ids": DELETED}))
        want = answers(engine)
    finally:
        engine.close(checkpoint=True)
    return root, want


@pytest.fixture
def s(tmp_path: Path, template: tuple[Path, dict[str, Any]]) -> Settings:
    shutil.copytree(template[0] / "data", tmp_path / "data")
    return make_settings(tmp_path)


@pytest.fixture
def want(template: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    return template[1]


def index_json(s: Settings, db_id: str) -> dict[str, Any]:
    with open(os.path.join(s.index_dir, db_id, "index.json")) as fh:
        doc: dict[str, Any] = json.load(fh)
    return doc


def member(s: Settings, db_id: str, which: str) -> str:
    """The path of one file of the database's checkpoint: ``index``, ``deleted``, ``metadata``."""
    doc = index_json(s, db_id)
    name = {"index": doc["file"], "deleted": doc["file"] + ".deleted.json",
            "metadata": doc["file"] + MD_SUFFIX}[which]
    return os.path.join(s.index_dir, db_id, name)


def damage(path: str, how: str) -> None:
    raw = bytearray(Path(path).read_bytes())
    mid = len(raw) // 2
    if how == "flip":  # a run of bytes in the middle inverted: links, values, labels, syntax
        lo, hi = max(0, mid - 2048), min(len(raw), mid + 2048)
        raw[lo:hi] = bytes(b ^ 0xFF for b in raw[lo:hi])
    elif how == "bit":  # one bit of one byte in the middle: a value, a label, a digit
        if path.endswith(".json"):
            while not chr(raw[mid]).isdigit():  # a digit stays a digit: valid JSON
                mid += 1
        raw[mid] ^= 0x01
    elif how == "truncate":
        del raw[mid:]
    if how == "missing":
        os.remove(path)
    else:
        Path(path).write_bytes(bytes(raw))


# -- a restart, in this process or another --------------------------------------------------------


def outcome(tmp: str) -> dict[str, Any]:
    """Open the engine on ``<tmp>/data``, search every database ``QUERIES`` times, close it
    with a checkpoint. Returns what happened: the start-up report, the projection's count of
    damaged checkpoints and the metric /metrics shows for it, the answers, the log lines."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.getMessage()}")

    jade_log = logging.getLogger("jade")
    handler, level = Keep(logging.INFO), jade_log.level
    jade_log.addHandler(handler)
    jade_log.setLevel(logging.INFO)
    engine = Engine(make_settings(Path(tmp)))
    try:
        report = engine.open()
        try:
            got = answers(engine)  # first: a damaged graph loaded crashes here
            app = web.Application()
            app[ENGINE], app[METRICS] = engine, Metrics()
            refresh_gauges(make_mocked_request("GET", "/metrics", app=app))
            text = app[METRICS].render().decode()
            metric = [float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith(DAMAGED_METRIC + " ")]
            return {
                "index": report.index,
                "damaged": engine.indexes.checkpoints_damaged,
                "metric": metric,
                "answers": got,
                "log": lines,
            }
        finally:
            engine.close(checkpoint=True)
    finally:
        jade_log.removeHandler(handler)
        jade_log.setLevel(level)


def restart(s: Settings, *, isolated: bool) -> dict[str, Any]:
    tmp = str(Path(s.data_dir).parent)
    if not isolated:
        return outcome(tmp)
    script = ("import json, sys; from tests.test_checkpoint_damage import outcome; "
              "print(json.dumps(outcome(sys.argv[1])))")
    proc = subprocess.run([sys.executable, "-c", script, tmp], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != -11, f"the restart died of SIGSEGV:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"the restart exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def verify_lines(s: Settings) -> tuple[bool, list[str]]:
    r = verify_dir(s)
    return r.ok, r.lines


# -- tests ----------------------------------------------------------------------------------------


def test_an_undamaged_checkpoint_loads_and_carries_its_checksums(
    s: Settings, want: dict[str, Any]
) -> None:
    for db_id in DBS:
        doc = index_json(s, db_id)
        assert doc["format"] == CHECKPOINT_FORMAT == 4
        names = {doc["file"], doc["file"] + MD_SUFFIX}
        if db_id == "h":
            names.add(doc["file"] + ".deleted.json")
        assert set(doc["checksums"]) == names
        for name, digest in doc["checksums"].items():
            assert isinstance(digest, str) and len(digest) == 64, (name, digest)
    ok, lines = verify_lines(s)
    assert ok, lines
    got = restart(s, isolated=False)
    assert got["index"] == {"loaded": 2, "rebuilt": 0, "replayed_records": 0}
    assert got["damaged"] == 0 and got["metric"] == [0.0]
    assert got["answers"] == want
    assert not [line for line in got["log"] if line.startswith("WARNING")], got["log"]


@pytest.mark.parametrize("how", ["flip", "bit", "truncate", "missing"])
@pytest.mark.parametrize(
    ("db_id", "which"),
    [("h", "index"), ("h", "deleted"), ("h", "metadata"), ("f", "index"), ("f", "metadata")],
)
def test_a_damaged_checkpoint_file_is_reported_and_rebuilt(
    s: Settings, want: dict[str, Any], db_id: str, which: str, how: str
) -> None:
    path = member(s, db_id, which)
    name = os.path.basename(path)
    damage(path, how)
    # jade verify, before any restart: FAIL, naming the file
    ok, lines = verify_lines(s)
    assert not ok, lines
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed and all(name in line for line in failed), lines
    # a restart (hnswlib's own file: in another process, which may crash without the checks)
    got = restart(s, isolated=(db_id, which) == ("h", "index"))
    assert got["index"] == {"loaded": 1, "rebuilt": 1, "replayed_records": 0}
    assert got["damaged"] == 1 and got["metric"] == [1.0]
    warned = [line for line in got["log"] if line.startswith("WARNING") and name in line]
    assert warned, got["log"]
    assert got["answers"] == want
    # the clean close wrote a whole new checkpoint of the rebuilt index: it loads, unhurt
    again = restart(s, isolated=False)
    assert again["index"] == {"loaded": 2, "rebuilt": 0, "replayed_records": 0}
    assert again["damaged"] == 0 and again["answers"] == want


def test_a_file_beside_the_index_that_no_checksum_covers_is_not_loaded(s: Settings) -> None:
    """hnswlib's loader reads ``<file>.deleted.json`` when it is there: a checkpoint whose
    ``index.json`` has no checksum for it is not trusted."""
    path = os.path.join(s.index_dir, "h", "index.json")
    doc = index_json(s, "h")
    del doc["checksums"][doc["file"] + ".deleted.json"]
    Path(path).write_text(json.dumps(doc))
    ok, lines = verify_lines(s)
    assert not ok and any(doc["file"] + ".deleted.json" in line for line in lines), lines
    got = restart(s, isolated=False)
    assert got["index"] == {"loaded": 1, "rebuilt": 1, "replayed_records": 0}
    assert got["damaged"] == 1


def test_a_format_3_checkpoint_is_rebuilt_once_not_counted_as_damage(
    s: Settings, want: dict[str, Any]
) -> None:
    """Format 3 (before the checksums): nothing proves its files whole, so it is not loaded;
    the database is rebuilt once, and that is an upgrade, not damage."""
    for db_id in DBS:
        doc = index_json(s, db_id)
        doc["format"] = 3
        del doc["checksums"]
        Path(s.index_dir, db_id, "index.json").write_text(json.dumps(doc))
    ok, lines = verify_lines(s)
    assert ok, lines
    assert any(line.startswith("skip") and "format 3" in line for line in lines), lines
    got = restart(s, isolated=False)
    assert got["index"] == {"loaded": 0, "rebuilt": 2, "replayed_records": 0}
    assert got["damaged"] == 0 and got["metric"] == [0.0]
    assert got["answers"] == want
    assert index_json(s, "h")["format"] == CHECKPOINT_FORMAT
    again = restart(s, isolated=False)
    assert again["index"] == {"loaded": 2, "rebuilt": 0, "replayed_records": 0}
