"""Durable outbox: every result is on disk before it is published, and leaves only when acked.

paho keeps unacknowledged QoS 1 messages only in memory, so a crash or SIGKILL of the pipeline
would lose them. The publisher writes each message here first (`put`), publishes it, and deletes
it when the broker's PUBACK arrives (`ack`). Whatever is still here at the next start is sent
again, in id order; subscribers drop duplicates by `message_id` (at-least-once).

SQLite in WAL mode with `synchronous=NORMAL` by default: a commit is in the WAL (the OS page
cache) when `put` returns, so it survives a crash or SIGKILL of this process; only a power cut
can lose the last commits. `synchronous="full"` also survives a power cut, at one fsync per put
(measured in the report: NORMAL ~tens of thousands of puts/s, FULL is bound by the disk).

One connection, guarded by a lock: producers `put` from their threads, the publisher's client
thread reads, marks and acks. WAL checkpoints (copying the WAL into the database file, with an
fsync) run every second in a thread of their own on a second connection: SQLite's automatic
checkpoint ran inside every ~320th commit and stalled that `put` for 15-20 ms, a tail that live
latency and the publish path felt. The table is bounded by `max_messages`; at the bound `put` either
blocks until acks make room (replay backpressure) or drops the oldest droppable row and counts it
(live).
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

log = logging.getLogger(__name__)

MEMORY = ":memory:"
CHECKPOINT_INTERVAL_S = 1.0
WAL_SIZE_LIMIT = 8 << 20  # bytes the WAL file is cut back to when SQLite rewinds it
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    expiry_s INTEGER,
    droppable INTEGER NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
)
"""


class OutboxError(RuntimeError):
    """The outbox file cannot be used (unreadable, in use by another process)."""


class OutboxClosed(RuntimeError):
    """`put` was called, or was waiting for room, when the outbox stopped taking messages."""


class OutboxFull(TimeoutError):
    """`put` waited `timeout_s` for room in a full outbox (when_full="block")."""


@dataclass(frozen=True)
class OutboxRow:
    """One stored message. `attempts` counts how often it was handed to the client before."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry_s: int | None
    created: float
    attempts: int


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
        self._dropped = 0
        self._lockfile: IO[bytes] | None = None
        if self.path != MEMORY:
            self._lockfile = _lock_exclusively(Path(self.path))
        try:
            self._db = self._open(synchronous)
            self._count = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            self._last_id = int(
                self._db.execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()[0]
            )
        except sqlite3.OperationalError as exc:
            self._release_lockfile()
            raise OutboxError(
                f"outbox {self.path}: cannot open it ({exc}); check outbox.path"
            ) from exc
        except sqlite3.DatabaseError as exc:
            self._release_lockfile()
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
                "outbox %s holds %d unacknowledged messages from a previous run",
                self.path,
                self._count,
            )

    def _open(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        if self.path != MEMORY:
            db.execute("PRAGMA wal_autocheckpoint=0")  # _checkpoint_loop does it, off this path
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # after a burst
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version not in (0, _SCHEMA_VERSION):
            db.close()
            raise sqlite3.DatabaseError(
                f"schema version {version}, this build reads {_SCHEMA_VERSION}"
            )
        db.execute(_SCHEMA)
        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
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
    ) -> int:
        """Store one message durably and return its row id.

        At the bound: "block" waits for `ack` to make room (raises OutboxFull after `timeout_s`,
        OutboxClosed if the outbox stops taking messages meanwhile); "drop_oldest" deletes the
        oldest droppable row and counts it.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._room:
            while True:
                if self._refusing:
                    raise OutboxClosed(f"outbox {self.path} is closed: the publisher is stopping")
                if self._count < self.max_messages:
                    break
                if self.when_full == "drop_oldest" and self._drop_oldest_locked():
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise OutboxFull(
                        f"outbox {self.path} stayed full ({self.max_messages} messages) for "
                        f"{timeout_s} s: the broker is not acknowledging"
                    )
                self._room.wait(remaining)
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, expiry_s, droppable, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (topic, payload, qos, int(retain), expiry_s, int(droppable), time.time()),
            )
            self._count += 1
            self._last_id = int(cur.lastrowid or 0)
            return self._last_id

    def _drop_oldest_locked(self) -> bool:
        row = self._db.execute(
            "SELECT id FROM outbox WHERE droppable = 1 ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            return False
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
        self._count -= 1
        self._dropped += 1
        return True

    # -- the client thread ---------------------------------------------------------------------

    def rows_after(self, after_id: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows with id > `after_id`, oldest first."""
        with self._lock:
            if self._closed or after_id >= self._last_id:
                return []
            cur = self._db.execute(
                "SELECT id, topic, payload, qos, retain, expiry_s, created, attempts FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            return [
                OutboxRow(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6], r[7])
                for r in cur.fetchall()
            ]

    def mark_sent(self, ids: Iterable[int]) -> None:
        """Count one more attempt for each row, so re-sends (also after a crash) are visible."""
        self.settle(acked=(), sent=ids)

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged rows; returns how many were still there."""
        return self.settle(acked=ids, sent=())

    def settle(self, acked: Iterable[int], sent: Iterable[int]) -> int:
        """Delete `acked` rows and count an attempt for `sent` rows, in one transaction (one
        commit and one lock hand-off per client-thread step). Returns how many rows were deleted."""
        deletes = [(i,) for i in acked]
        updates = [(i,) for i in sent]
        if not deletes and not updates:
            return 0
        with self._room:
            if self._closed:
                return 0
            before = self._db.total_changes
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM outbox WHERE id = ?", deletes)
            deleted = self._db.total_changes - before
            self._db.executemany("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", updates)
            self._db.execute("COMMIT")
            self._count -= deleted
            if deleted:
                self._room.notify_all()
            return deleted

    # -- state ---------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages stored and not yet acknowledged."""
        return self._count

    @property
    def dropped(self) -> int:
        """Rows deleted unacknowledged because the outbox was full (when_full="drop_oldest")."""
        return self._dropped

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
        self._release_lockfile()

    def _release_lockfile(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()  # closing the descriptor releases the flock
            self._lockfile = None


def _lock_exclusively(path: Path) -> IO[bytes]:
    """One process per outbox: two publishers acking each other's rows would lose results.
    The flock dies with the process, so a SIGKILLed run does not block the next one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lockfile = (path.parent / (path.name + ".lock")).open("ab")
    except OSError as exc:
        raise OutboxError(
            f"outbox {path}: cannot create it ({exc.strerror}); check outbox.path"
        ) from exc
    try:
        fcntl.flock(lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        lockfile.close()
        raise OutboxError(
            f"outbox {path} is in use by another process; give each pipeline its own outbox.path"
        ) from exc
    return lockfile
