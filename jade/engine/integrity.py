"""Start-up checks: the data directory's files against the log, before anything is served.

LMDB trusts its files. A header rolled back to the previous meta page (its older twin: a lost
write, a restored disk image, a copied file) opens as a whole, consistent file that has silently
lost its last write group; a projection then serves as if those acknowledged writes had never
been. So, at every start (``Engine.open``) and in ``jade verify``, the log is checked against
every durable witness cheaply at hand, each of which a lost or replaced log would contradict:

- the log's tail: the checksum chain of its last ``TAIL_RECORDS`` records, at most
  ``TAIL_BYTES`` of them (1,000 batch records of 1,000 vectors are ~500 MB: the whole check
  took 1.2 s of a 1M start; 16 MiB is ~15 ms) (the index replay
  verifies nothing, the store's replay only the records it folds);
- the data store's applied LSN (same file as the log: ahead of it only if the file is damaged);
- the auth store's applied LSN (its own file): past the log's last LSN, the log lost records the
  auth store had folded; and its witness (``AuthStore.witness``: the LSN and chain checksum of
  the last auth record it applied): the log must hold that record with that checksum, or it was
  replaced by another history;
- every index checkpoint's LSN (``<index_dir>/<db>/index.json``): past the log's last LSN, the
  log lost records the checkpoint saw;
- the backup archive (when ``backup_dir`` is set, and this is not a restored directory, whose
  log may end before the archive on purpose): archived records past the log's last LSN while
  the archive holds the log's last record, same checksum, mean the log lost its newest records.

Any finding refuses the start (``StorageDamaged``, naming the file and the LSNs), unless the
operator accepts the loss (``accept_lost_records``): then the auth store is rebuilt from the log
(it must start at LSN 1) and index checkpoints past it are not used (rebuilt from the store).

What no check can see: a rollback with no witness past it looks exactly like a crash before
that commit (the last group of a run killed before the auth store, a checkpoint or the archive
recorded anything after it; or a rollback of the auth file alone, which replay repairs).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import lmdb

from jade.auth.store import AuthStore
from jade.backup import archive
from jade.errors import StorageDamaged
from jade.settings import Settings
from jade.stores.data import DataStore
from wal.codec import CodecError
from wal.lmdbenv import FileDamaged
from wal.log import Log, LogError

log = logging.getLogger(__name__)

TAIL_RECORDS = 1000  # the log's last records whose chain every start verifies (~10 ms)
TAIL_BYTES = 16 << 20  # ... at most this many bytes of them
# a restore's markers (``jade.backup.restore``): such a directory's log may end before the archive
_RESTORE_MARKERS = ("RESTORED", "RESTORE_INCOMPLETE")


def check_open(settings: Settings, wal: Log, store: DataStore, auth: AuthStore) -> None:
    """Refuse to open (``StorageDamaged``) when the log contradicts a witness, or its tail does
    not verify. With ``accept_lost_records`` a lost log tail is accepted (logged) and the
    projections ahead of the log are rebuilt from it."""
    found = lost_records(settings, wal, auth)
    tail = tail_damage(wal)
    if tail:
        raise StorageDamaged(tail + "; refusing to start: restore from a snapshot",
                             file=wal.env.path)
    if not found:
        return
    if not settings.accept_lost_records:
        raise StorageDamaged(
            "; ".join(found) + ". Refusing to start: serving would silently drop acknowledged "
            "writes. Restore from a snapshot plus the archive (`jade restore`), or accept the "
            "loss (accept_lost_records) to start from what the log holds",
            file=wal.env.path)
    log.error("accepting lost records (accept_lost_records): %s", "; ".join(found))
    _rebuild_auth(wal, auth)  # checkpoints past the log are not loaded (``checkpoints.load``)


def tail_damage(wal: Log, records: int = TAIL_RECORDS, max_bytes: int = TAIL_BYTES) -> str:
    """What is wrong with the checksum chain of the log's last ``records``, at most
    ``max_bytes`` of them ("": nothing)."""
    after = wal.tail_start(records, max_bytes)
    try:
        for _ in wal.iterate(after, upto=wal.last_lsn, verify=True):
            pass
    except (CodecError, LogError, FileDamaged) as exc:
        return f"{wal.env.path}: the log's last records do not verify ({exc})"
    return ""


def lost_records(settings: Settings, wal: Log, auth: AuthStore | None,
                 store: DataStore | None = None) -> list[str]:
    """Each witness the log contradicts, as a sentence naming the files and the LSNs."""
    out: list[str] = []
    data, last = wal.env.path, wal.last_lsn
    ends = f"the log in {data} ends at LSN {last}"
    if store is not None and store.applied_lsn() > last:
        out.append(f"{data}: the data store has applied LSN {store.applied_lsn()}, but {ends}")
    if auth is not None:
        applied = auth.applied_lsn()
        if applied > last:
            out.append(f"{auth.env.path}: the auth store has applied LSN {applied}, but {ends}: "
                       "the log lost records that were acknowledged")
        witness = auth.witness()
        if witness is not None and wal.first_lsn <= witness[0] <= last:
            rec = wal.get(witness[0])
            if rec is None or rec.checksum != witness[1]:
                out.append(f"{auth.env.path}: the auth store applied record LSN {witness[0]} "
                           f"with checksum {witness[1].hex()}, but the log in {data} holds "
                           f"{'no such record' if rec is None else rec.checksum.hex()}: the log "
                           "was replaced by another history")
    for path, lsn in _checkpoint_lsns(settings.index_dir):
        if lsn > last:
            out.append(f"{path}: the index checkpoint covers LSN {lsn}, but {ends}")
    out.extend(_archive(settings, wal))
    return out


def _checkpoint_lsns(index_dir: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    try:
        names = sorted(os.listdir(index_dir))
    except OSError:
        return out
    for name in names:
        path = os.path.join(index_dir, name, "index.json")
        try:
            with open(path) as fh:
                doc: Any = json.load(fh)
            out.append((path, int(doc["lsn"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged checkpoint is the checkpoint store's to report (and rebuild)
    return out


def _archive(settings: Settings, wal: Log) -> list[str]:
    if not settings.backup_dir or wal.last_lsn < 1:
        return []
    if any(os.path.exists(os.path.join(settings.data_dir, m)) for m in _RESTORE_MARKERS):
        return []
    segs = archive.segments(settings.backup_dir)
    if not segs or segs[-1].last <= wal.last_lsn:
        return []
    mine = wal.get(wal.last_lsn)
    try:
        theirs = next(archive.records(settings.backup_dir, wal.last_lsn - 1, wal.last_lsn), None)
    except (archive.ArchiveError, CodecError, OSError):
        return []  # a damaged segment is `jade snapshot verify`'s to report
    if mine is None or theirs is None or theirs.checksum != mine.checksum:
        return []  # another history (a new directory on an old backup location): no witness
    return [f"{archive.archive_dir(settings.backup_dir)}: the archive holds records up to LSN "
            f"{segs[-1].last} of this log's history, but the log in {wal.env.path} ends at LSN "
            f"{wal.last_lsn}"]


def _rebuild_auth(wal: Log, auth: AuthStore) -> None:
    """Empty the auth store, so the start-up's replay folds it again from the whole log."""
    if wal.first_lsn > 1:
        raise StorageDamaged(
            f"{auth.env.path}: the auth store is ahead of the log and cannot be rebuilt from it "
            f"(the log starts at LSN {wal.first_lsn}): restore from a snapshot",
            file=auth.env.path)

    def body(txn: lmdb.Transaction[bytes]) -> None:
        for db in auth.db.values():
            txn.drop(db, delete=False)
        auth.mark_schema(txn)

    auth.env.write(body)
    log.warning("auth store %s emptied; it is rebuilt from the log", auth.env.path)
