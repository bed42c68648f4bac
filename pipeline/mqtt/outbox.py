"""Durable outbox: every result is on disk before it is published, and leaves only when delivered.

paho keeps unacknowledged QoS 1 messages only in memory, so a crash or SIGKILL of the pipeline
would lose them. The publisher writes each message here first (`put`), publishes it, and then,
depending on `outbox.confirm`, either deletes it at the broker's PUBACK (`ack`) or marks it
acknowledged (`settle(keep_acked=True)`) and deletes it when a logger's `stored` message covers
it (`confirm`). Whatever is still here at the next start is sent again; subscribers drop
duplicates by `message_id` (at-least-once).

SQLite in WAL mode with `synchronous=NORMAL` by default: a commit is in the WAL (the OS page
cache) when `put` returns, so it survives a crash or SIGKILL of this process; only a power cut
can lose the last commits. `synchronous="full"` also survives a power cut, at one fsync per put.

One connection, guarded by a lock: producers `put` from their threads, the publisher's client
thread reads, marks, acks and confirms. WAL checkpoints run every second in a thread of their
own on a second connection (SQLite's automatic checkpoint stalled every few hundredth `put`).
The table is bounded by `max_messages`; at the bound `put` either blocks until deliveries make
room (replay backpressure) or drops the oldest droppable row and records its seq (live).
Session summaries are never dropped and never make room by dropping a result: the summary,
written last, names every result its session lost.

One process per outbox: the database file itself is locked (flock on its inode), so neither a
symlink nor a hard link to it lets a second pipeline in. Files are created 0600. Messages the
broker refuses for good (its ACL) move to the `refused` table, out of the sending order.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.mqtt.delivery import SeqRange, to_ranges

log = logging.getLogger(__name__)

MEMORY = ":memory:"
CHECKPOINT_INTERVAL_S = 1.0
WAL_SIZE_LIMIT = 8 << 20  # bytes the WAL file is cut back to when SQLite rewinds it
FILE_MODE = 0o600
_SCHEMA_VERSION = 2
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
_COLUMNS = "id, topic, payload, qos, retain, expiry_s, created, attempts, session, acked"


class OutboxError(RuntimeError):
    """The outbox file cannot be used (unreadable, in use by another process, disk full)."""


class OutboxClosed(RuntimeError):
    """`put` was called, or was waiting for room, when the outbox stopped taking messages."""


class OutboxFull(TimeoutError):
    """`put` waited `timeout_s` for room in a full outbox (when_full="block")."""


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


def _row(r: tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(
        int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), bool(r[4]),
        None if r[5] is None else int(r[5]), float(r[6]), int(r[7]),
        None if r[8] is None else str(r[8]), bool(r[9]),
    )  # fmt: skip


class Outbox:
    """A bounded, durable FIFO of MQTT messages keyed by an increasing row id.

    `path` may be `":memory:"` for a non-durable outbox with the same semantics (tests, or
    `outbox.enabled: false`).
    """

    def __init__(
        self,
        path: Path | str,
        max_messages: int = 100_000,
        when_full: Literal["block", "drop_oldest"] = "block",
        synchronous: Literal["normal", "full"] = "normal",
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"outbox max_messages must be >= 1, got {max_messages}")
        if when_full not in ("block", "drop_oldest"):
            raise ValueError(
                f"outbox when_full must be 'block' or 'drop_oldest', got {when_full!r}"
            )
        if synchronous not in ("normal", "full"):
            raise ValueError(f"outbox synchronous must be 'normal' or 'full', got {synchronous!r}")
        self.path = str(path)
        self.max_messages = max_messages
        self.when_full = when_full
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._refusing = False
        self._closed = False
        self._dropped: dict[str, list[int]] = {}  # session -> seqs dropped at the bound
        self._dropped_count = 0
        self._dropped_acked = 0
        self._lock_fd: int | None = None
        if self.path != MEMORY:
            self._lock_fd = _lock_exclusively(Path(self.path))
        try:
            self._db = self._open(synchronous)
            count, acked, last = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(acked), 0), COALESCE(MAX(id), 0) FROM outbox"
            ).fetchone()
            self._count, self._acked, self._last_id = int(count), int(acked), int(last)
        except sqlite3.OperationalError as exc:
            self._release_lock()
            raise OutboxError(
                f"outbox {self.path}: cannot open it ({exc}); check outbox.path"
            ) from exc
        except sqlite3.DatabaseError as exc:
            self._release_lock()
            raise OutboxError(
                f"outbox {self.path}: not a usable SQLite outbox ({exc}); "
                "move the file aside to start with an empty outbox"
            ) from exc
        self._stop_checkpoints = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if self.path != MEMORY:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="outbox-checkpoint", daemon=True
            )
            self._checkpointer.start()
        if self._count:
            log.info(
                "outbox %s holds %d undelivered messages from a previous run (%d acknowledged "
                "by the broker, not yet confirmed by a logger)",
                self.path,
                self._count,
                self._acked,
            )

    def _open(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        if self.path != MEMORY:
            db.execute("PRAGMA wal_autocheckpoint=0")  # _checkpoint_loop does it, off this path
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # after a burst
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version not in (0, 1, _SCHEMA_VERSION):
            db.close()
            raise sqlite3.DatabaseError(
                f"schema version {version}, this build reads {_SCHEMA_VERSION}"
            )
        db.execute("BEGIN")
        if version == 1:
            for stmt in _MIGRATE_1:
                db.execute(stmt)
        for stmt in _SCHEMA:
            db.execute(stmt)
        db.execute(_INDEX)
        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        db.execute("COMMIT")
        return db

    def _checkpoint_loop(self) -> None:
        """PASSIVE checkpoints never wait for the writer; the WAL stays small."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_INTERVAL_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # busy or I/O: the next round tries again
                    log.debug("outbox %s: checkpoint skipped (%s)", self.path, exc)
        finally:
            db.close()

    @contextmanager
    def _writing(self, transaction: bool = False) -> Iterator[None]:
        """SQLite errors while writing (disk full, I/O) become one OutboxError line."""
        try:
            if transaction:
                self._db.execute("BEGIN")
            yield
            if transaction:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if transaction and self._db.in_transaction:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise OutboxError(
                f"outbox {self.path}: cannot write ({exc}); free space on its disk or point "
                "outbox.path elsewhere (what is stored stays)"
            ) from exc

    # -- producers ---------------------------------------------------------------------------

    def put(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
        droppable: bool = True,
        timeout_s: float | None = None,
        key: RowKey | None = None,
    ) -> int:
        """Store one message durably and return its row id.

        At the bound: "block" waits for deliveries to make room (raises OutboxFull after
        `timeout_s`, OutboxClosed if the outbox stops taking messages meanwhile); "drop_oldest"
        deletes the oldest droppable row and records it. A row that is not droppable (a
        session summary) is stored past a full bound rather than drop a result. Raises
        OutboxError when the disk refuses the write.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._room:
            while True:
                if self._refusing:
                    raise OutboxClosed(f"outbox {self.path} is closed: the publisher is stopping")
                if self._count < self.max_messages:
                    break
                if self.when_full == "drop_oldest" and (
                    not droppable or self._drop_oldest_locked()
                ):
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise OutboxFull(
                        f"outbox {self.path} stayed full ({self.max_messages} messages) for "
                        f"{timeout_s} s: the broker is not acknowledging"
                    )
                self._room.wait(remaining)
            k = key or RowKey("result", "", "")
            with self._writing():
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, expiry_s, droppable, created,"
                    " kind, camera, session, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (topic, payload, qos, int(retain), expiry_s, int(droppable), time.time(),
                     k.kind if key else None, k.camera or None, k.session or None, k.seq),
                )  # fmt: skip
            self._count += 1
            self._last_id = int(cur.lastrowid or 0)
            return self._last_id

    def _drop_oldest_locked(self) -> bool:
        row = self._db.execute(
            "SELECT id, session, seq, acked FROM outbox WHERE droppable = 1 ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            return False
        with self._writing():
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
        self._count -= 1
        self._acked -= int(row[3])
        self._dropped_count += 1
        self._dropped_acked += int(row[3])
        if row[1] is not None and row[2] is not None:
            self._dropped.setdefault(str(row[1]), []).append(int(row[2]))
        return True

    # -- the client thread ---------------------------------------------------------------------

    def rows_after(self, after_id: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows with id > `after_id` that the broker has not acknowledged yet,
        oldest first."""
        with self._lock:
            if self._closed or after_id >= self._last_id:
                return []
            cur = self._db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE id > ? AND acked = 0 ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            return [_row(r) for r in cur.fetchall()]

    def rows(self, ids: Iterable[int]) -> list[OutboxRow]:
        """The rows with these ids that are still here, in id order."""
        wanted = sorted(set(ids))
        if not wanted:
            return []
        with self._lock:
            if self._closed:
                return []
            marks = ",".join("?" * len(wanted))
            cur = self._db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE id IN ({marks}) ORDER BY id", wanted
            )
            return [_row(r) for r in cur.fetchall()]

    def mark_sent(self, ids: Iterable[int]) -> None:
        """Count one more attempt for each row, so re-sends (also after a crash) are visible."""
        self.settle(acked=(), sent=ids)

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged rows; returns how many were still there."""
        return self.settle(acked=ids, sent=())

    def settle(self, acked: Iterable[int], sent: Iterable[int], keep_acked: bool = False) -> int:
        """Delete `acked` rows (or, with `keep_acked`, mark results and session summaries
        acknowledged and keep them for a logger's confirmation; loggers confirm nothing else,
        so other rows still leave here) and count an attempt for `sent` rows, in one
        transaction. Returns how many rows were deleted or newly marked."""
        done = [(i,) for i in acked]
        updates = [(i,) for i in sent]
        if not done and not updates:
            return 0
        with self._room:
            if self._closed:
                return 0
            kept = 0
            with self._writing(transaction=True):
                if keep_acked:
                    before = self._db.total_changes
                    self._db.executemany(
                        "UPDATE outbox SET acked = 1 WHERE id = ? AND acked = 0 "
                        "AND kind IN ('result', 'session')",
                        done,
                    )
                    kept = self._db.total_changes - before
                before = self._db.total_changes
                self._db.executemany("DELETE FROM outbox WHERE id = ? AND acked = 0", done)
                deleted = self._db.total_changes - before
                self._db.executemany(
                    "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", updates
                )
            self._acked += kept
            self._count -= deleted
            if deleted:
                self._room.notify_all()
            return kept + deleted

    def confirm(
        self, camera: str, session: str, ranges: Iterable[SeqRange], summary: bool
    ) -> list[int]:
        """Delete what a logger confirmed stored: the session's results with a seq in `ranges`
        (and its summary when `summary`); returns the deleted row ids."""
        spans = list(ranges)
        with self._room:
            if self._closed:
                return []
            deleted: list[tuple[int, int]] = []
            with self._writing(transaction=True):
                for lo, hi in spans:
                    deleted += self._db.execute(
                        "DELETE FROM outbox WHERE session = ? AND camera = ? AND kind = 'result' "
                        "AND seq BETWEEN ? AND ? RETURNING id, acked",
                        (session, camera, lo, hi),
                    ).fetchall()
                if summary:
                    deleted += self._db.execute(
                        "DELETE FROM outbox WHERE session = ? AND camera = ? AND kind = 'session'"
                        " RETURNING id, acked",
                        (session, camera),
                    ).fetchall()
            self._count -= len(deleted)
            self._acked -= sum(int(a) for _, a in deleted)
            if deleted:
                self._room.notify_all()
            return [int(i) for i, _ in deleted]

    def release_acked(self) -> int:
        """Delete every acknowledged row: delivered as far as `outbox.confirm: broker` goes (an
        earlier run kept them for a logger's confirmation). Returns how many."""
        with self._room:
            with self._writing():
                gone = self._db.execute("DELETE FROM outbox WHERE acked = 1").rowcount
            self._count -= gone
            self._acked -= gone
            if gone:
                self._room.notify_all()
            return int(gone)

    def unconfirmed(self) -> list[tuple[int, str]]:
        """(row id, session) of every row the broker acknowledged and no logger confirmed."""
        with self._lock:
            cur = self._db.execute(
                "SELECT id, COALESCE(session, '') FROM outbox WHERE acked = 1 ORDER BY id"
            )
            return [(int(r[0]), str(r[1])) for r in cur.fetchall()]

    def expire(self, created_before: float) -> list[tuple[int, str, int | None]]:
        """Delete acknowledged, unconfirmed rows stored before `created_before` (the retention
        limit); returns (row id, session, seq) of each."""
        with self._room:
            if self._closed:
                return []
            with self._writing(transaction=True):
                gone = self._db.execute(
                    "DELETE FROM outbox WHERE acked = 1 AND created < ? "
                    "RETURNING id, COALESCE(session, ''), seq",
                    (created_before,),
                ).fetchall()
            self._count -= len(gone)
            self._acked -= len(gone)
            if gone:
                self._room.notify_all()
            return [(int(i), str(s), None if q is None else int(q)) for i, s, q in gone]

    def refuse(self, ids: Iterable[int], reason: str) -> int:
        """Move rows the broker refuses for good to the `refused` table; returns how many."""
        wanted = [(reason, time.time(), i) for i in ids]
        with self._room:
            if self._closed or not wanted:
                return 0
            with self._writing(transaction=True):
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT INTO refused (id, topic, payload, created, refused, reason) "
                    "SELECT id, topic, payload, created, ?2, ?1 FROM outbox WHERE id = ?3",
                    wanted,
                )
                moved = self._db.total_changes - before
                self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for *_, i in wanted])
            self._count -= moved
            if moved:
                self._room.notify_all()
            return moved

    def meta(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        with self._lock, self._writing():
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # -- state ---------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages stored and not yet delivered (unsent, unacknowledged or unconfirmed)."""
        return self._count

    @property
    def acked_unconfirmed(self) -> int:
        """Messages the broker acknowledged that no logger has confirmed yet."""
        return self._acked

    @property
    def dropped(self) -> int:
        """Rows deleted undelivered because the outbox was full (when_full="drop_oldest")."""
        return self._dropped_count

    @property
    def dropped_acked(self) -> int:
        """Of those, how many the broker had acknowledged (a logger may still have them)."""
        return self._dropped_acked

    def dropped_seq(self, session: str) -> list[SeqRange]:
        """The seq ranges of a session's results dropped at the bound, by this process."""
        with self._lock:
            return to_ranges(self._dropped.get(session, ()))

    def dropped_sessions(self) -> dict[str, list[SeqRange]]:
        with self._lock:
            return {s: to_ranges(seqs) for s, seqs in self._dropped.items()}

    @property
    def last_id(self) -> int:
        return self._last_id

    def __len__(self) -> int:
        return self._count

    def refuse_puts(self) -> None:
        """Stop taking messages: waiting and later `put` calls raise OutboxClosed. Reading and
        acking go on, so the publisher can still flush."""
        with self._room:
            self._refusing = True
            self._room.notify_all()

    def close(self) -> None:
        """Refuse puts and close the database; what is stored stays for the next start."""
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        with self._room:
            if self._closed:
                return
            self._refusing = True
            self._closed = True
            self._room.notify_all()
            self._db.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock; SQLite's connections are closed
            self._lock_fd = None


def _lock_exclusively(path: Path) -> int:
    """One process per outbox: two publishers acking each other's rows would lose results.

    The lock is on the database file itself (its inode), so a symlink or a hard link to the
    same file cannot open it twice. The flock dies with the process, so a SIGKILLed run does
    not block the next one. The file is created 0600 (SQLite gives its -wal and -shm the same
    mode).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise OutboxError(
            f"outbox {path}: cannot create it ({exc.strerror}); check outbox.path"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise OutboxError(
            f"outbox {path} is in use by another process; give each pipeline its own outbox.path"
        ) from exc
    return fd
