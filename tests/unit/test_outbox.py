"""The durable outbox: what is put stays until acked, in order, across reopen, within its bound."""

from __future__ import annotations

import shutil
import sqlite3
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
