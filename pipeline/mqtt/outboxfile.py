"""The outbox's file: its SQLite schema (and the migration from version 1), its rows as
dataclasses, the connection settings, the checkpoint thread, and the lock that keeps a second
process out. `pipeline.mqtt.outbox` holds the queue's semantics on top of it.

SQLite in WAL mode with `synchronous=NORMAL` by default: a commit is in the WAL (the OS page
cache) when it returns, so it survives a crash or SIGKILL of this process; only a power cut can
lose the last commits. `synchronous="full"` also survives a power cut, at one fsync per commit.
Automatic WAL checkpoints are off on the writing connection: they stalled every few hundredth
write, so the outbox runs them in a thread of its own on a second connection.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("pipeline.mqtt.outbox")

MEMORY = ":memory:"
WAL_SIZE_LIMIT = 8 << 20  # bytes the WAL file is cut back to when SQLite rewinds it
FILE_MODE = 0o600
SCHEMA_VERSION = 2
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    expiry_s INTEGER,
    droppable INTEGER NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    kind TEXT,
    camera TEXT,
    session TEXT,
    seq INTEGER,
    acked INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS refused (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    refused REAL NOT NULL,
    reason TEXT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_INDEX = "CREATE INDEX IF NOT EXISTS outbox_by_seq ON outbox (session, seq)"
# Version 1 had no delivery columns: add them and fill them from each row's own payload.
_MIGRATE_1 = (
    "ALTER TABLE outbox ADD COLUMN kind TEXT",
    "ALTER TABLE outbox ADD COLUMN camera TEXT",
    "ALTER TABLE outbox ADD COLUMN session TEXT",
    "ALTER TABLE outbox ADD COLUMN seq INTEGER",
    "ALTER TABLE outbox ADD COLUMN acked INTEGER NOT NULL DEFAULT 0",
    """UPDATE outbox SET
    kind = CASE WHEN topic LIKE '%/result' THEN 'result' WHEN topic LIKE '%/session' THEN 'session'
           END,
    camera = json_extract(CAST(payload AS TEXT), '$.camera_id'),
    session = json_extract(CAST(payload AS TEXT), '$.session_id'),
    seq = CASE WHEN topic LIKE '%/result' THEN json_extract(CAST(payload AS TEXT), '$.seq') END
    WHERE json_valid(CAST(payload AS TEXT))""",
)


@dataclass(frozen=True)
class RowKey:
    """What delivery confirmations match a row by: its session and, for results, its seq."""

    kind: Literal["result", "session"]
    camera: str
    session: str
    seq: int | None = None


@dataclass(frozen=True)
class OutboxRow:
    """One stored message. `attempts` counts how often it was handed to the client before;
    `acked` says the broker acknowledged it (kept until a logger confirms it)."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry_s: int | None
    created: float
    attempts: int
    session: str | None = None
    acked: bool = False


def row_from_sql(r: tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(
        int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), bool(r[4]),
        None if r[5] is None else int(r[5]), float(r[6]), int(r[7]),
        None if r[8] is None else str(r[8]), bool(r[9]),
    )  # fmt: skip


def connect(path: str) -> sqlite3.Connection:
    """A connection the outbox's threads share (each use under the outbox's lock)."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)


def open_database(path: str, synchronous: str) -> sqlite3.Connection:
    """The writing connection, with the schema created or migrated to SCHEMA_VERSION;
    sqlite3.DatabaseError for a file this build cannot read."""
    db = connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous.upper()}")
    if path != MEMORY:
        db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it, off this path
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # after a burst
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version not in (0, 1, SCHEMA_VERSION):
        db.close()
        raise sqlite3.DatabaseError(f"schema version {version}, this build reads {SCHEMA_VERSION}")
    db.execute("BEGIN")
    if version == 1:
        for stmt in _MIGRATE_1:
            db.execute(stmt)
    for stmt in _SCHEMA:
        db.execute(stmt)
    db.execute(_INDEX)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    db.execute("COMMIT")
    return db


def lock_exclusively(path: Path) -> int:
    """One process per outbox: two publishers acking each other's rows would lose results.

    The lock is on the database file itself (its inode), so a symlink or a hard link to the
    same file cannot open it twice. The flock dies with the process, so a SIGKILLed run does
    not block the next one. The file is created 0600 (SQLite gives its -wal and -shm the same
    mode). Raises OSError (cannot create) or BlockingIOError (in use); the caller names them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    return fd


def checkpoint_loop(path: str, stop: threading.Event, interval_s: float) -> None:
    """PASSIVE checkpoints every `interval_s` until `stop`: they never wait for the writer,
    and the WAL stays small."""
    db = connect(path)
    try:
        while not stop.wait(interval_s):
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # busy or I/O: the next round tries again
                log.debug("outbox %s: checkpoint skipped (%s)", path, exc)
    finally:
        db.close()
