"""The outbox's group commit: acknowledgements handed to `defer_settle` are committed with the
next `put` (or by `settle`, `close`, or a producer waiting for room), and until then the rows
stay in the file (a crash sends them again; tests/integration/test_outbox_crash.py kills one)."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from pipeline.mqtt.outbox import MEMORY, RECENT_ROWS, Outbox, RowKey

TOPIC = "thermoscreen/dev/cam/result"


def _ids_in_file(path: Path) -> list[int]:
    """The row ids another connection sees committed in the file."""
    with closing(sqlite3.connect(path)) as conn:
        return [int(r[0]) for r in conn.execute("SELECT id FROM outbox ORDER BY id")]


def _acked_in_file(path: Path) -> list[int]:
    with closing(sqlite3.connect(path)) as conn:
        return [int(r[0]) for r in conn.execute("SELECT id FROM outbox WHERE acked = 1")]


def test_a_deferred_ack_is_committed_with_the_next_put(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    a = ob.put(TOPIC, b"a")
    ob.defer_settle([a], [], keep_acked=False)
    assert _ids_in_file(path) == [a]  # not yet committed: a crash now sends `a` again
    assert ob.deferred_age_s() is not None
    b = ob.put(TOPIC, b"b")
    assert _ids_in_file(path) == [b]  # one transaction: b stored, a's ack applied
    assert ob.pending == 1 and ob.deferred_age_s() is None
    ob.close()


def test_settle_commits_what_waits_and_close_commits_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    ids = [ob.put(TOPIC, bytes([i])) for i in range(4)]
    ob.defer_settle([ids[0]], [ids[1]], keep_acked=False)
    assert ob.settle([ids[2]], []) == 2  # the deferred ack counts too
    assert _ids_in_file(path) == [ids[1], ids[3]]
    ob.defer_settle([ids[3]], [], keep_acked=False)
    ob.close()
    assert _ids_in_file(path) == [ids[1]]
    again = Outbox(path)
    assert [(r.id, r.attempts) for r in again.rows_after(0, 10)] == [(ids[1], 1)]
    again.close()


def test_kept_acks_are_marked_in_the_file_at_the_next_put(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    key = RowKey("result", "cam", "s1", 0)
    a = ob.put(TOPIC, b"a", key=key)
    ob.defer_settle([a], [], keep_acked=True)
    assert _acked_in_file(path) == []
    ob.put(TOPIC, b"b", key=RowKey("result", "cam", "s1", 1))
    assert _acked_in_file(path) == [a] and ob.acked_unconfirmed == 1
    assert [r.id for r in ob.rows_after(0, 10)] == [a + 1]  # acked rows are not sent again
    ob.close()


def test_a_full_outbox_commits_deferred_acks_to_make_room() -> None:
    ob = Outbox(MEMORY, max_messages=2)
    a = ob.put(TOPIC, b"a")
    ob.put(TOPIC, b"b")
    assert ob.waiting_for_room
    ob.defer_settle([a], [], keep_acked=False)
    ob.put(TOPIC, b"c", timeout_s=1.0)  # does not wait: the deferred ack makes room
    assert ob.pending == 2
    ob.close()


def test_a_waiting_producer_is_released_by_settle() -> None:
    ob = Outbox(MEMORY, max_messages=1)
    a = ob.put(TOPIC, b"a")
    done = threading.Event()
    producer = threading.Thread(target=lambda: (ob.put(TOPIC, b"b", timeout_s=30), done.set()))
    producer.start()
    assert not done.wait(0.2)
    ob.settle([a], [])
    producer.join(30)
    assert done.is_set() and ob.pending == 1
    ob.close()


def test_rows_read_from_memory_match_rows_read_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path)
    ids = [ob.put(TOPIC, bytes([i % 256]), expiry_s=60) for i in range(RECENT_ROWS + 10)]
    ob.defer_settle(ids[:5], [], keep_acked=False)
    ob.put(TOPIC, b"last")
    fresh = ob.rows_after(ids[-3], 100)  # in memory
    old = ob.rows_after(ids[5], 3)  # below what memory holds: from the file
    ob.close()
    again = Outbox(path)
    assert again.rows_after(ids[-3], 100) == fresh
    assert again.rows_after(ids[5], 3) == old
    assert [r.id for r in again.rows_after(0, 1)] == [ids[5]]
    again.close()
