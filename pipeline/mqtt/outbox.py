"""Durable outbox: every result is on disk before it is published, and leaves only when delivered.

paho keeps unacknowledged QoS 1 messages only in memory, so a crash or SIGKILL of the pipeline
would lose them. The publisher writes each message here first (`put`), publishes it, and then,
depending on `outbox.confirm`, either deletes it at the broker's PUBACK (`ack`) or marks it
acknowledged (`settle(keep_acked=True)`) and deletes it when a logger's `stored` message covers
it (`confirm`). Whatever is still here at the next start is sent again; subscribers drop
duplicates by `message_id` (at-least-once).

A message is committed when `put` returns (WAL, `synchronous=NORMAL` by default: it survives a
crash or SIGKILL of this process; see `pipeline.mqtt.outboxfile`).

Group commit. The client thread hands its acknowledgements and send counts to `defer_settle`
instead of committing them at once; the next `put` writes them in the same transaction as its
message (one commit per result instead of two). They are committed on their own by `settle`
when the client thread must see them applied (a new connection re-reads the rows; stop), when
they have waited `settle_delay_s` (no new results), or when producers wait for room. Until
then an acknowledged row is still in the file: a crash re-sends it (at-least-once, as before).
The rows put lately are also kept in memory (`RECENT_ROWS`), so the client thread reads new
rows without a query while it keeps up.

One connection, guarded by a lock: producers `put` from their threads, the publisher's client
thread reads, marks, acks and confirms. WAL checkpoints run every second in a thread of their
own on a second connection.
The table is bounded by `max_messages`; at the bound `put` either blocks until deliveries make
room (replay backpressure) or drops the oldest droppable row and records its seq (live).
Session summaries are never dropped and never make room by dropping a result: the summary,
written last, names every result its session lost.

One process per outbox: the database file itself is locked (flock on its inode), so neither a
symlink nor a hard link to it lets a second pipeline in. Files are created 0600. Messages the
broker refuses for good (its ACL) move to the `refused` table, out of the sending order.
"""

from __future__ import annotations

import collections
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from itertools import islice
from pathlib import Path
from typing import Literal

from pipeline.mqtt.delivery import SeqRange, to_ranges
from pipeline.mqtt.outboxfile import (
    MEMORY,
    OutboxRow,
    RowKey,
    checkpoint_loop,
    lock_exclusively,
    open_database,
    row_from_sql,
)

log = logging.getLogger(__name__)

__all__ = ["MEMORY", "Outbox", "OutboxClosed", "OutboxError", "OutboxFull", "OutboxRow", "RowKey"]

CHECKPOINT_INTERVAL_S = 1.0
RECENT_ROWS = 256  # rows put lately, kept in memory so the client thread reads them without SQL
_COLUMNS = "id, topic, payload, qos, retain, expiry_s, created, attempts, session, acked"
_INSERT = (
    "INSERT INTO outbox (topic, payload, qos, retain, expiry_s, droppable, created, kind, camera,"
    " session, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class OutboxError(RuntimeError):
    """The outbox file cannot be used (unreadable, in use by another process, disk full)."""


class OutboxClosed(RuntimeError):
    """`put` was called, or was waiting for room, when the outbox stopped taking messages."""


class OutboxFull(TimeoutError):
    """`put` waited `timeout_s` for room in a full outbox (when_full="block")."""


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
        _check_arguments(max_messages, when_full, synchronous)
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
            self._lock_fd = _lock(Path(self.path))
        # group commit: what the client thread settled and nobody has committed yet
        self._deferred_acked: list[tuple[int]] = []
        self._deferred_sent: list[tuple[int]] = []
        self._deferred_keep = False
        self._deferred_since: float | None = None
        try:
            self._db = open_database(self.path, synchronous)
            count, acked, last = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(acked), 0), COALESCE(MAX(id), 0) FROM outbox"
            ).fetchone()
            self._count, self._acked, self._last_id = int(count), int(acked), int(last)
            self._recent: collections.deque[OutboxRow] = collections.deque()
            self._recent_floor = self._last_id  # every row above this id is in _recent
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
        self._checkpointer = self._start_checkpoints()
        if self._count:
            log.info(
                "outbox %s holds %d undelivered messages from a previous run (%d acknowledged "
                "by the broker, not yet confirmed by a logger)",
                self.path,
                self._count,
                self._acked,
            )

    def _start_checkpoints(self) -> threading.Thread | None:
        if self.path == MEMORY:
            return None
        thread = threading.Thread(
            target=checkpoint_loop,
            args=(self.path, self._stop_checkpoints, CHECKPOINT_INTERVAL_S),
            name="outbox-checkpoint",
            daemon=True,
        )
        thread.start()
        return thread

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
            self._wait_for_room_locked(droppable, deadline, timeout_s)
            k = key or RowKey("result", "", "")
            created = time.time()
            deferred = bool(self._deferred_acked or self._deferred_sent)
            with self._writing(transaction=deferred):
                cur = self._db.execute(
                    _INSERT,
                    (topic, payload, qos, int(retain), expiry_s, int(droppable), created,
                     k.kind if key else None, k.camera or None, k.session or None, k.seq),
                )  # fmt: skip
                done = self._apply_deferred_locked() if deferred else (0, 0)
            row_id = int(cur.lastrowid or 0)
            self._count += 1
            self._last_id = row_id
            self._applied_locked(*done)
            self._remember_locked(
                OutboxRow(row_id, topic, payload, qos, retain, expiry_s, created, 0,
                          k.session or None)
            )  # fmt: skip
            return row_id

    def _wait_for_room_locked(
        self, droppable: bool, deadline: float | None, timeout_s: float | None
    ) -> None:
        while True:
            if self._refusing:
                raise OutboxClosed(f"outbox {self.path} is closed: the publisher is stopping")
            if self._count < self.max_messages:
                return
            if self._deferred_acked:  # acknowledged rows that still count: make room first
                self._commit_deferred_locked()
                continue
            if self.when_full == "drop_oldest" and (not droppable or self._drop_oldest_locked()):
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise OutboxFull(
                    f"outbox {self.path} stayed full ({self.max_messages} messages) for "
                    f"{timeout_s} s: the broker is not acknowledging"
                )
            self._room.wait(remaining)

    def _remember_locked(self, row: OutboxRow) -> None:
        self._recent.append(row)
        if len(self._recent) > RECENT_ROWS:
            self._recent_floor = self._recent.popleft().id

    def _forget_recent_locked(self) -> None:
        """Rows left the outbox other than by acknowledgement: read them from the file."""
        self._recent.clear()
        self._recent_floor = self._last_id

    def _drop_oldest_locked(self) -> bool:
        row = self._db.execute(
            "SELECT id, session, seq, acked FROM outbox WHERE droppable = 1 ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            return False
        with self._writing():
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
        self._forget_recent_locked()
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
            if after_id >= self._recent_floor:  # every row above after_id is in memory
                while self._recent and self._recent[0].id <= after_id:
                    self._recent_floor = self._recent.popleft().id
                return list(islice(self._recent, limit))
            cur = self._db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE id > ? AND acked = 0 ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            return [row_from_sql(r) for r in cur.fetchall()]

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
            return [row_from_sql(r) for r in cur.fetchall()]

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
        transaction with whatever `defer_settle` left waiting. Returns how many rows were
        deleted or newly marked (the deferred ones included)."""
        done = [(i,) for i in acked]
        updates = [(i,) for i in sent]
        with self._room:
            if self._closed or not (done or updates or self._deferred_acked or self._deferred_sent):
                return 0
            if self._deferred_keep != keep_acked:
                self._commit_deferred_locked()  # written with the mode they were acked in
            self._deferred_acked += done
            self._deferred_sent += updates
            self._deferred_keep = keep_acked
            return self._commit_deferred_locked()

    def defer_settle(self, acked: Iterable[int], sent: Iterable[int], keep_acked: bool) -> None:
        """`settle` at the next commit (group commit, see the module docstring)."""
        done = [(i,) for i in acked]
        updates = [(i,) for i in sent]
        if not done and not updates:
            return
        with self._room:
            if self._closed:
                return
            if self._deferred_keep != keep_acked:
                self._commit_deferred_locked()
            self._deferred_acked += done
            self._deferred_sent += updates
            self._deferred_keep = keep_acked
            if self._deferred_since is None:
                self._deferred_since = time.monotonic()

    def deferred_age_s(self) -> float | None:
        """How long settled acknowledgements have waited for a commit (None: none wait)."""
        since = self._deferred_since
        return None if since is None else time.monotonic() - since

    @property
    def waiting_for_room(self) -> bool:
        """The outbox is at its bound: producers may be waiting for acknowledged rows to go."""
        return self._count >= self.max_messages

    def _commit_deferred_locked(self) -> int:
        with self._writing(transaction=True):
            kept, deleted = self._apply_deferred_locked()
        self._applied_locked(kept, deleted)
        return kept + deleted

    def _apply_deferred_locked(self) -> tuple[int, int]:
        """The deferred settlements, inside the caller's transaction: (kept, deleted)."""
        done, updates = self._deferred_acked, self._deferred_sent
        kept = 0
        if done and self._deferred_keep:
            before = self._db.total_changes
            self._db.executemany(
                "UPDATE outbox SET acked = 1 WHERE id = ? AND acked = 0 "
                "AND kind IN ('result', 'session')",
                done,
            )
            kept = self._db.total_changes - before
        before = self._db.total_changes
        if done:
            self._db.executemany("DELETE FROM outbox WHERE id = ? AND acked = 0", done)
        deleted = self._db.total_changes - before
        if updates:
            self._db.executemany("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", updates)
        return kept, deleted

    def _applied_locked(self, kept: int, deleted: int) -> None:
        """After the deferred settlements are committed: counts, waiting producers, and the
        rows in memory (acknowledged rows and every row below them are read from the file)."""
        if self._deferred_acked:
            top = max(i for (i,) in self._deferred_acked)
            if top > self._recent_floor:
                self._recent_floor = top
            while self._recent and self._recent[0].id <= self._recent_floor:
                self._recent.popleft()
        self._deferred_acked, self._deferred_sent, self._deferred_since = [], [], None
        self._acked += kept
        self._count -= deleted
        if deleted:
            self._room.notify_all()

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
                self._forget_recent_locked()
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
                self._forget_recent_locked()
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
                self._forget_recent_locked()
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
                self._forget_recent_locked()
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
        """Messages the broker acknowledged that no logger has confirmed yet (acknowledgements
        waiting for the group commit included)."""
        return self._acked + (len(self._deferred_acked) if self._deferred_keep else 0)

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
            if self._deferred_acked or self._deferred_sent:
                try:
                    self._commit_deferred_locked()
                except OutboxError as exc:  # the next start sends those rows again
                    log.error("%s", exc)
            self._closed = True
            self._room.notify_all()
            self._db.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock; SQLite's connections are closed
            self._lock_fd = None


def _check_arguments(max_messages: int, when_full: str, synchronous: str) -> None:
    if max_messages < 1:
        raise ValueError(f"outbox max_messages must be >= 1, got {max_messages}")
    if when_full not in ("block", "drop_oldest"):
        raise ValueError(f"outbox when_full must be 'block' or 'drop_oldest', got {when_full!r}")
    if synchronous not in ("normal", "full"):
        raise ValueError(f"outbox synchronous must be 'normal' or 'full', got {synchronous!r}")


def _lock(path: Path) -> int:
    """`outboxfile.lock_exclusively`, its failures as one OutboxError line."""
    try:
        return lock_exclusively(path)
    except BlockingIOError as exc:
        raise OutboxError(
            f"outbox {path} is in use by another process; give each pipeline its own outbox.path"
        ) from exc
    except OSError as exc:
        raise OutboxError(
            f"outbox {path}: cannot create it ({exc.strerror}); check outbox.path"
        ) from exc
