"""The BM25 engine: SQLite's FTS5 full-text index, one file for every database's text index.

Why FTS5 (the ``sqlite3`` module of the standard library, no new dependency) and not tantivy
or bm25s:
  - its BM25 statistics are exact for the documents present: a deleted or replaced document
    leaves the row count, the term's document frequency and the average length at once. In
    tantivy a deleted document still counts in a term's document frequency until a background
    merge drops it (measured: five replacements of one document moved the scores of the others
    from 1.14513 to 0.98083), so the same documents would score differently on a replica that
    applied them in other groups, after a replay, or after a merge. Here the score of a query
    is a function of the documents alone, which is what a projection of the log must be.
  - incremental: an upsert or a delete touches its document only (bm25s rebuilds its matrices
    from every document for any change);
  - transactional: a group's documents and the LSN they reach commit together, so the file is
    always at a known LSN (``meta.applied_lsn``) and a crash leaves it at an earlier one;
  - on disk, its own file, read by any number of threads (WAL mode) while the writer writes.

Scoring is FTS5's ``bm25()`` (k1 1.2, b 0.75, IDF ln((N - n + 0.5) / (n + 0.5)), at least
1e-6), negated so that higher is better. The tokeniser is fixed in code
(``TOKENIZER``: Unicode words, lower-cased, diacritics folded, Porter-stemmed) and recorded in
each ``text.index.set`` event, so every node indexes and scores alike.

Each database's text index is a pair of tables named by a number ``k`` (``indexes``): the
documents ``docs_k(rid, id, text, label, src)`` and the FTS5 index ``fts_k`` over their text
(external content: the text is stored once). ``label`` is the vector's label (for metadata
filters), -1 for a document given through ``/bm25-index/documents``; ``src`` says which
(``SRC_VECTOR``, ``SRC_DOC``). ``indexes.cursor`` is the build's position (the last id it has
indexed; "" before the first, NULL once built: ``jade.text.projection``), committed with the
documents it reached and the applied LSN.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

TOKENIZER = "porter unicode61 remove_diacritics 2"
TOKENIZERS = frozenset({TOKENIZER})  # the ones this release can index with
SRC_VECTOR = 0
SRC_DOC = 1
NO_LABEL = -1
MAX_QUERY_TERMS = 64
_WORD = re.compile(r"[^\W_]+")
FORMAT = 2  # 2: the build's cursor (a file of another format is started again)


@dataclass(frozen=True, slots=True)
class IndexDef:
    """A database's text index as the file holds it."""

    k: int
    field: str
    tokenizer: str
    set_lsn: int


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    score: float
    label: int


def query_terms(text: str) -> list[str]:
    """The words of a query, as FTS5's unicode61 tokeniser splits them (it stems each one)."""
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:MAX_QUERY_TERMS]


def match_expr(terms: list[str]) -> str:
    """An FTS5 query matching any of ``terms`` (each quoted: no query syntax gets through)."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


class Bm25File:
    """One SQLite file. Writes (``begin`` ... ``commit``) come from one thread at a time (the
    projection's lock); reads go through a connection per thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._w = self._connect()
        self._w.execute("PRAGMA journal_mode=WAL")
        # the log is the durable record: a commit needs to be consistent, not synced
        self._w.execute("PRAGMA synchronous=NORMAL")
        self._w.executescript("""
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS indexes (db TEXT PRIMARY KEY, k INTEGER NOT NULL UNIQUE,
                field TEXT NOT NULL, tokenizer TEXT NOT NULL, set_lsn INTEGER NOT NULL,
                cursor TEXT, processed INTEGER NOT NULL DEFAULT 0);
        """)
        self._w.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.version = 0  # bumped by every commit (caches of answers key on it)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30.0)

    def close(self) -> None:
        with self._readers_lock:
            for c in self._readers:
                c.close()
            self._readers.clear()
        self._w.close()

    # -- the writer's side ------------------------------------------------------------------
    def format(self) -> int:
        row = self._w.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        return int(row[0]) if row else 0

    def applied_lsn(self) -> int:
        row = self._w.execute("SELECT value FROM meta WHERE key='applied_lsn'").fetchone()
        return int(row[0]) if row else 0

    def applied_checksum(self) -> bytes:
        """The checksum of the log record at ``applied_lsn`` (b"": none recorded): the log's
        checksums chain, so it names the whole history the file has folded."""
        row = self._w.execute("SELECT value FROM meta WHERE key='applied_sum'").fetchone()
        return bytes(row[0]) if row and isinstance(row[0], bytes) else b""

    def indexes(self) -> dict[str, IndexDef]:
        rows = self._w.execute("SELECT db, k, field, tokenizer, set_lsn FROM indexes")
        return {db: IndexDef(k, field, tok, lsn) for db, k, field, tok, lsn in rows}

    def cursors(self) -> dict[str, tuple[str | None, int]]:
        """Each index's build position: (the last id indexed, or None once built; how many
        ids the build has passed)."""
        rows = self._w.execute("SELECT db, cursor, processed FROM indexes")
        return {db: (cur, int(n)) for db, cur, n in rows}

    def set_cursor(self, db: str, cursor: str | None, processed: int) -> None:
        self._w.execute("UPDATE indexes SET cursor = ?, processed = ? WHERE db = ?",
                        (cursor, processed, db))

    def begin(self) -> None:
        self._w.execute("BEGIN IMMEDIATE")

    def commit(self, applied_lsn: int, checksum: bytes) -> None:
        self._w.execute("INSERT OR REPLACE INTO meta VALUES ('applied_lsn', ?)", (applied_lsn,))
        self._w.execute("INSERT OR REPLACE INTO meta VALUES ('applied_sum', ?)", (checksum,))
        self._w.execute("COMMIT")
        self.version += 1

    def rollback(self) -> None:
        if self._w.in_transaction:
            self._w.execute("ROLLBACK")

    def set_applied(self, lsn: int, checksum: bytes) -> None:
        """Record ``lsn`` as applied (records up to it held nothing for this file)."""
        self.begin()
        self.commit(lsn, checksum)

    def wal_checkpoint(self) -> None:
        self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def create_index(self, db: str, field: str, tokenizer: str, lsn: int) -> IndexDef:
        """A new empty index for ``db`` (inside a transaction); the caller dropped any old."""
        row = self._w.execute("SELECT value FROM meta WHERE key='next_k'").fetchone()
        k = int(row[0]) if row else 1
        self._w.execute("INSERT OR REPLACE INTO meta VALUES ('next_k', ?)", (k + 1,))
        self._w.execute(f"CREATE TABLE docs_{k} (rid INTEGER PRIMARY KEY, id TEXT NOT NULL "
                        "UNIQUE, text TEXT NOT NULL, label INTEGER NOT NULL, src INTEGER NOT NULL)")
        tok = tokenizer.replace("'", "''")
        self._w.execute(f"CREATE VIRTUAL TABLE fts_{k} USING fts5(text, content='docs_{k}', "
                        f"content_rowid='rid', tokenize='{tok}')")
        self._w.execute("INSERT INTO indexes VALUES (?, ?, ?, ?, ?, '', 0)",
                        (db, k, field, tokenizer, lsn))
        return IndexDef(k, field, tokenizer, lsn)

    def drop_index(self, db: str, k: int) -> None:
        self._w.execute(f"DROP TABLE IF EXISTS fts_{k}")
        self._w.execute(f"DROP TABLE IF EXISTS docs_{k}")
        self._w.execute("DELETE FROM indexes WHERE db = ?", (db,))

    def insert_new(self, k: int, rows: list[tuple[str, str, int, int]]) -> None:
        """Documents ``(id, text, label, src)`` whose ids the index does not hold (a build's
        step past its cursor): two statements for the lot, the row ids given."""
        if not rows:
            return
        w = self._w
        top = int(w.execute(f"SELECT coalesce(max(rid), 0) FROM docs_{k}").fetchone()[0])
        w.executemany(f"INSERT INTO docs_{k}(rid, id, text, label, src) VALUES (?, ?, ?, ?, ?)",
                      [(top + n, *row) for n, row in enumerate(rows, 1)])
        w.executemany(f"INSERT INTO fts_{k}(rowid, text) VALUES (?, ?)",
                      [(top + n, row[1]) for n, row in enumerate(rows, 1)])

    def upsert(self, k: int, doc_id: str, text: str, label: int, src: int) -> None:
        w = self._w
        row = w.execute(f"SELECT rid, text FROM docs_{k} WHERE id = ?", (doc_id,)).fetchone()
        if row is not None:
            rid, old = row
            if old == text:
                w.execute(f"UPDATE docs_{k} SET label = ?, src = ? WHERE rid = ?",
                          (label, src, rid))
                return
            w.execute(f"INSERT INTO fts_{k}(fts_{k}, rowid, text) VALUES ('delete', ?, ?)",
                      (rid, old))
            w.execute(f"UPDATE docs_{k} SET text = ?, label = ?, src = ? WHERE rid = ?",
                      (text, label, src, rid))
        else:
            rid = w.execute(f"INSERT INTO docs_{k}(id, text, label, src) VALUES (?, ?, ?, ?)",
                            (doc_id, text, label, src)).lastrowid
        w.execute(f"INSERT INTO fts_{k}(rowid, text) VALUES (?, ?)", (rid, text))

    def delete(self, k: int, doc_id: str) -> None:
        w = self._w
        row = w.execute(f"SELECT rid, text FROM docs_{k} WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            return
        rid, old = row
        w.execute(f"INSERT INTO fts_{k}(fts_{k}, rowid, text) VALUES ('delete', ?, ?)",
                  (rid, old))
        w.execute(f"DELETE FROM docs_{k} WHERE rid = ?", (rid,))

    # -- reads (any thread) -----------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is None:
            c = self._connect()
            self._local.conn = c
            with self._readers_lock:
                self._readers.append(c)
        return c

    def count(self, k: int, src: int | None = None) -> int:
        c = self._reader()
        if src is None:
            row = c.execute(f"SELECT count(*) FROM docs_{k}").fetchone()
        else:
            row = c.execute(f"SELECT count(*) FROM docs_{k} WHERE src = ?", (src,)).fetchone()
        return int(row[0])

    def terms(self, k: int) -> int:
        """How many distinct (stemmed) terms the index holds."""
        c = self._reader()
        c.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab_{k} USING "
                  f"fts5vocab(main, fts_{k}, 'row')")
        return int(c.execute(f"SELECT count(*) FROM temp.vocab_{k}").fetchone()[0])

    def search(self, k: int, text: str, limit: int,
               admit: Callable[[int], bool] | None = None,
               deadline_check: Callable[[], None] | None = None) -> list[Hit]:
        """The ``limit`` best documents for ``text`` (any of its words), best first, ties by
        id; with ``admit``, only documents whose label it admits (a metadata filter, applied
        before the cut)."""
        terms = query_terms(text)
        if not terms or limit <= 0:
            return []
        c = self._reader()
        sql = (f"SELECT docs_{k}.id, -bm25(fts_{k}), docs_{k}.label FROM fts_{k} "
               f"JOIN docs_{k} ON docs_{k}.rid = fts_{k}.rowid WHERE fts_{k} MATCH ? "
               f"ORDER BY bm25(fts_{k}), docs_{k}.id")
        if admit is None:
            rows: Iterator[tuple[str, float, int]] = c.execute(sql + " LIMIT ?",
                                                               (match_expr(terms), limit))
            return [Hit(i, float(s), int(lb)) for i, s, lb in rows]
        out: list[Hit] = []
        for n, (i, s, lb) in enumerate(c.execute(sql, (match_expr(terms),))):
            if deadline_check is not None and n % 4096 == 4095:
                deadline_check()
            if lb != NO_LABEL and admit(lb):
                out.append(Hit(i, float(s), int(lb)))
                if len(out) >= limit:
                    break
        return out

    def texts(self, k: int, ids: list[str]) -> dict[str, str]:
        c = self._reader()
        out: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            q = ",".join("?" * len(part))
            for doc_id, text in c.execute(f"SELECT id, text FROM docs_{k} WHERE id IN ({q})",
                                          part):
                out[str(doc_id)] = str(text)
        return out
