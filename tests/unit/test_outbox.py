"""The durable outbox: what is put stays until acked, in order, across reopen, within its bound."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from pipeline.mqtt.outbox import (
    MEMORY,
    Outbox,
    OutboxClosed,
    OutboxError,
    OutboxFull,
    RowKey,
)
from tests.helpers.wait import wait_until

TOPIC = "thermoscreen/dev/cam/result"


def test_put_then_rows_in_id_order_with_fields(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    ids = [ob.put(TOPIC, f"m{i}".encode(), expiry_s=60) for i in range(5)]
    session_id = ob.put("thermoscreen/dev/cam/session", b"{}", droppable=False)
    assert ids == sorted(ids) and len(set(ids)) == 5
    rows = ob.rows_after(0, 100)
    assert [r.id for r in rows] == [*ids, session_id]
    assert [r.payload for r in rows[:5]] == [f"m{i}".encode() for i in range(5)]
    assert rows[0].topic == TOPIC and rows[0].qos == 1 and rows[0].retain is False
    assert rows[0].expiry_s == 60 and rows[5].expiry_s is None
    assert rows[0].attempts == 0
    assert [r.id for r in ob.rows_after(ids[2], 2)] == ids[3:5]
    assert ob.pending == 6 and len(ob) == 6
    ob.close()


def test_ack_deletes_only_the_given_rows_and_counts_them(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    ids = [ob.put(TOPIC, b"x") for _ in range(4)]
    assert ob.ack([ids[0], ids[2]]) == 2
    assert ob.ack([ids[0]]) == 0  # a second ack of the same row changes nothing
    assert [r.id for r in ob.rows_after(0, 10)] == [ids[1], ids[3]]
    assert ob.pending == 2
    ob.close()


def test_unacked_rows_and_attempts_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "o.sqlite"  # the parent folder is created
    ob = Outbox(path)
    ids = [ob.put(TOPIC, bytes([i])) for i in range(3)]
    ob.mark_sent(ids[:2])
    ob.ack([ids[0]])
    ob.close()

    again = Outbox(path)
    rows = again.rows_after(0, 10)
    assert [r.id for r in rows] == ids[1:]
    assert [r.payload for r in rows] == [b"\x01", b"\x02"]
    assert [r.attempts for r in rows] == [1, 0]
    assert again.pending == 2
    new_id = again.put(TOPIC, b"new")
    assert new_id > ids[-1]  # AUTOINCREMENT: ids never go back, so order is kept across runs
    again.close()


def test_a_second_process_cannot_open_the_same_outbox(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    with pytest.raises(OutboxError, match="in use by another process"):
        Outbox(tmp_path / "o.sqlite")
    ob.close()
    Outbox(tmp_path / "o.sqlite").close()  # released on close


def test_a_file_that_is_not_an_outbox_is_named_in_the_error(tmp_path: Path) -> None:
    bad = tmp_path / "o.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match=r"o\.sqlite: not a usable SQLite outbox"):
        Outbox(bad)


def test_block_when_full_waits_until_an_ack_makes_room() -> None:
    ob = Outbox(MEMORY, max_messages=2, when_full="block")
    first = ob.put(TOPIC, b"0")
    ob.put(TOPIC, b"1")
    done = threading.Event()
    result: list[int] = []

    def producer() -> None:
        result.append(ob.put(TOPIC, b"2"))
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.3)  # full: the producer waits
    assert ob.pending == 2
    ob.ack([first])
    assert done.wait(5.0)
    t.join()
    assert [r.payload for r in ob.rows_after(0, 10)] == [b"1", b"2"]
    assert ob.dropped == 0


def test_block_when_full_gives_up_after_timeout_and_on_close() -> None:
    ob = Outbox(MEMORY, max_messages=1, when_full="block")
    ob.put(TOPIC, b"0")
    with pytest.raises(OutboxFull, match="stayed full"):
        ob.put(TOPIC, b"1", timeout_s=0.05)

    errors: list[BaseException] = []

    def producer() -> None:
        try:
            ob.put(TOPIC, b"2")
        except OutboxClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=producer)
    t.start()
    ob.refuse_puts()
    t.join(5.0)
    assert not t.is_alive() and len(errors) == 1
    assert ob.pending == 1  # the stored row is kept for the next start


def test_drop_oldest_drops_the_oldest_result_and_counts_it() -> None:
    ob = Outbox(MEMORY, max_messages=3, when_full="drop_oldest")
    ob.put("t/session", b"s", droppable=False)  # never dropped for room
    for i in range(5):
        ob.put(TOPIC, f"r{i}".encode())
    assert ob.pending == 3
    assert ob.dropped == 3
    assert [r.payload for r in ob.rows_after(0, 10)] == [b"s", b"r3", b"r4"]


def test_acking_a_dropped_row_does_not_corrupt_the_count() -> None:
    ob = Outbox(MEMORY, max_messages=1, when_full="drop_oldest")
    first = ob.put(TOPIC, b"0")
    second = ob.put(TOPIC, b"1")  # drops `first`
    assert ob.ack([first]) == 0
    assert ob.pending == 1
    assert ob.ack([second]) == 1
    assert ob.pending == 0


def test_bad_arguments_raise_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_messages"):
        Outbox(MEMORY, max_messages=0)
    with pytest.raises(ValueError, match="when_full"):
        Outbox(MEMORY, when_full="spill")  # type: ignore[arg-type]


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_many_puts_then_batched_acks_leave_it_empty(tmp_path: Path, synchronous: str) -> None:
    """Run with -s to see puts/s (one transaction per put) for each synchronous mode."""

    ob = Outbox(tmp_path / "o.sqlite", max_messages=10_000, synchronous=synchronous)  # type: ignore[arg-type]
    n = 2000 if synchronous == "normal" else 300  # full: one fsync per put
    payload = b"x" * 700  # about one result message
    t0 = time.perf_counter()
    ids = [ob.put(TOPIC, payload, expiry_s=86400) for _ in range(n)]
    t1 = time.perf_counter()
    assert ob.pending == n and ids == list(range(ids[0], ids[0] + n))
    for k in range(0, n, 100):
        assert ob.settle(ids[k : k + 100], ids[k + 100 : k + 200]) == 100
    t2 = time.perf_counter()
    assert ob.pending == 0 and ob.rows_after(0, 10) == []
    print(f"\nsynchronous={synchronous}: {n / (t1 - t0):.0f} puts/s, {n / (t2 - t1):.0f} acks/s")
    ob.close()


def test_an_outbox_path_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutboxError, match=r"outbox .*file/o\.sqlite: cannot create it"):
        Outbox(blocker / "o.sqlite")


def test_checkpoints_reach_the_database_file_while_the_outbox_stays_open(tmp_path: Path) -> None:
    # the writer never checkpoints (that stalled a put for 15-20 ms); the background thread does:
    # the database file alone, without its WAL, soon holds every committed row
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(50):
        box.put("t/a", b"x" * 100 + bytes([i]))
    snapshot = tmp_path / "snapshot.sqlite"

    def checkpointed_rows() -> int:
        shutil.copyfile(tmp_path / "o.sqlite", snapshot)  # the main file only, no -wal
        with closing(sqlite3.connect(snapshot)) as db:
            try:
                return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            except sqlite3.OperationalError:  # not even the table is checkpointed yet
                return 0

    wait_until(lambda: checkpointed_rows() == 50, 30, "50 rows in the database file")
    assert box.pending == 50
    box.close()
    assert not (tmp_path / "o.sqlite-wal").exists()  # the last close folds the WAL in


def _key(seq: int, session: str = "s1") -> RowKey:
    return RowKey("result", "cam", session, seq)


def test_logger_confirmation_keeps_acked_rows_until_a_stored_range_covers_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    ids = [ob.put(TOPIC, b"r", key=_key(i)) for i in range(5)]
    summary = ob.put("t/session", b"s", droppable=False, key=RowKey("session", "cam", "s1"))
    other = ob.put(TOPIC, b"r", key=_key(0, "s2"))
    assert ob.settle(ids, ids, keep_acked=True) == 5  # acknowledged by the broker: kept
    assert ob.pending == 7 and ob.acked_unconfirmed == 5
    assert [r.id for r in ob.rows_after(0, 10)] == [summary, other]  # not sent again as new
    ob.close()

    again = Outbox(path)  # the acknowledgement survives a restart
    assert again.unconfirmed() == [(i, "s1") for i in ids]
    assert sorted(again.confirm("cam", "s1", [(0, 1), (3, 3)], summary=False)) == [
        ids[0],
        ids[1],
        ids[3],
    ]
    assert again.confirm("other-cam", "s1", [(0, 9)], summary=True) == []
    assert sorted(again.confirm("cam", "s1", [(2, 2)], summary=True)) == [ids[2], summary]
    assert [r.id for r in again.rows([ids[4], other, 999])] == [ids[4], other]
    assert again.pending == 2 and again.acked_unconfirmed == 1
    again.close()


def test_retention_expires_only_acknowledged_unconfirmed_rows() -> None:
    ob = Outbox(MEMORY)
    old = [ob.put(TOPIC, b"r", key=_key(i)) for i in range(3)]
    ob.settle(old[:2], (), keep_acked=True)
    assert ob.expire(time.time() - 3600) == []
    assert ob.expire(time.time() + 1) == [(old[0], "s1", 0), (old[1], "s1", 1)]
    assert ob.pending == 1 and ob.acked_unconfirmed == 0  # the unsent one stays


def test_refused_rows_move_aside_with_their_reason(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    ids = [ob.put(TOPIC, f"r{i}".encode()) for i in range(3)]
    assert ob.refuse([ids[1]], "135 Not authorized: fix the ACL") == 1
    assert [r.id for r in ob.rows_after(0, 10)] == [ids[0], ids[2]] and ob.pending == 2
    ob.close()
    with closing(sqlite3.connect(tmp_path / "o.sqlite")) as db:
        rows = db.execute("SELECT id, payload, reason FROM refused").fetchall()
    assert rows == [(ids[1], b"r1", "135 Not authorized: fix the ACL")]


def test_drops_at_the_bound_are_named_by_seq_and_a_summary_never_makes_room() -> None:
    ob = Outbox(MEMORY, max_messages=3, when_full="drop_oldest")
    for i in range(8):
        ob.put(TOPIC, b"r", key=_key(i))
    ob.put("t/session", b"s", droppable=False, key=RowKey("session", "cam", "s1"))
    assert ob.dropped == 5 and ob.pending == 4  # the summary went in over the bound
    assert ob.dropped_seq("s1") == [(0, 4)] and ob.dropped_seq("s2") == []
    assert ob.dropped_sessions() == {"s1": [(0, 4)]}


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_link_to_an_outbox_in_use_is_refused(tmp_path: Path, link: str) -> None:
    """The lock used to be a `<path>.lock` beside the path given, so a second name for the same
    file let two pipelines share one outbox and ack each other's rows."""
    first = Outbox(tmp_path / "o.sqlite")
    other = tmp_path / "elsewhere" / "other.sqlite"
    other.parent.mkdir()
    if link == "symlink":
        other.symlink_to(tmp_path / "o.sqlite")
    else:
        os.link(tmp_path / "o.sqlite", other)
    with pytest.raises(OutboxError, match="in use by another process"):
        Outbox(other)
    first.close()
    Outbox(other).close()


def test_outbox_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        ob = Outbox(tmp_path / "o.sqlite")
        ob.put(TOPIC, b"r")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        ob.close()
    finally:
        os.umask(old)
    assert "o.sqlite-wal" in modes and not any(name.endswith(".lock") for name in modes)
    assert set(modes.values()) == {0o600}, modes


def test_a_version_1_outbox_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    payload = b'{"session_id": "s9", "camera_id": "cam", "seq": 4}'
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
            "payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, expiry_s "
            "INTEGER, droppable INTEGER NOT NULL, created REAL NOT NULL, attempts INTEGER NOT "
            "NULL DEFAULT 0)"
        )
        db.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, droppable, created) "
            "VALUES ('thermoscreen/d/cam/result', ?, 1, 0, 1, 0)",
            (payload,),
        )
        db.execute("PRAGMA user_version=1")
        db.commit()
    ob = Outbox(path)
    assert [r.payload for r in ob.rows_after(0, 10)] == [payload]
    assert ob.confirm("cam", "s9", [(4, 4)], summary=False) == [1]
    ob.close()


def test_a_full_disk_is_one_line_naming_the_outbox(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    ob._db.execute("PRAGMA max_page_count = 1")  # what SQLite reports on a full disk
    with pytest.raises(OutboxError, match=r"o\.sqlite: cannot write \(database or disk is full"):
        for _ in range(200):
            ob.put(TOPIC, b"x" * 4000)
    ob.close()


def test_only_what_loggers_confirm_waits_for_them() -> None:
    ob = Outbox(MEMORY)
    result = ob.put(TOPIC, b"r", key=_key(0))
    other = ob.put("t/exam/summary", b"e", droppable=False)  # no key: no logger confirms it
    assert ob.settle([result, other], (), keep_acked=True) == 2
    assert ob.pending == 1 and ob.unconfirmed() == [(result, "s1")]
    assert ob.release_acked() == 1  # outbox.confirm broker: acknowledged is delivered
    assert ob.pending == 0 and ob.acked_unconfirmed == 0
