"""End-to-end delivery bookkeeping: seq ranges, the `stored` message both ways, and when the
publisher sends an acknowledged but unconfirmed result again."""

from __future__ import annotations

import json

import pytest

from pipeline.mqtt.delivery import (
    GAP_GRACE_S,
    MAX_RANGES_PER_MESSAGE,
    Confirmation,
    ConfirmTracker,
    Kept,
    format_ranges,
    parse_stored,
    stored_messages,
    subtract_ranges,
    to_ranges,
)
from pipeline.mqtt.payload import encode


def test_ranges() -> None:
    assert to_ranges([5, 0, 1, 2, 2, 7, 8]) == [(0, 2), (5, 5), (7, 8)]
    assert to_ranges([]) == []
    assert format_ranges([(0, 2), (5, 5)]) == "0-2,5"
    assert subtract_ranges([(0, 10)], [(2, 3), (5, 5), (9, 20)]) == [(0, 1), (4, 4), (6, 8)]
    assert subtract_ranges([(0, 3), (8, 9)], []) == [(0, 3), (8, 9)]
    assert subtract_ranges([(4, 6)], [(0, 10)]) == []


def test_stored_messages_group_by_session_and_round_trip() -> None:
    kept = [Kept("edge-01", "cam0", "s1", q) for q in (0, 1, 2, 4)]
    kept += [Kept("edge-01", "cam0", "s1", None), Kept("edge-01", "cam1", "s2", 7)]
    messages = stored_messages(kept, "thermoscreen-logger")
    assert [(d, c) for d, c, _ in messages] == [("edge-01", "cam0"), ("edge-01", "cam1")]
    first = messages[0][2]
    assert first["seq"] == [[0, 2], [4, 4]] and first["summary"] is True
    assert first["logger"] == "thermoscreen-logger"
    parsed = parse_stored(encode(first), "edge-01", "cam0")
    assert parsed == Confirmation("cam0", "s1", ((0, 2), (4, 4)), True)


def test_many_gaps_are_split_over_bounded_messages() -> None:
    kept = [Kept("d", "c", "s", 2 * i) for i in range(MAX_RANGES_PER_MESSAGE + 5)]
    kept.append(Kept("d", "c", "s", None))
    messages = [p for _, _, p in stored_messages(kept, "l")]
    assert [len(p["seq"]) for p in messages] == [MAX_RANGES_PER_MESSAGE, 5]
    assert [p["summary"] for p in messages] == [False, True]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (json.dumps({"schema": 1}).encode(), "stored schema"),
        (
            encode({"schema": 1, "device_id": "other", "camera_id": "cam0", "session_id": "s",
                    "seq": [[0, 1]], "summary": False}),
            "differ from the topic",
        ),
        (
            encode({"schema": 1, "device_id": "d", "camera_id": "cam0", "session_id": "s",
                    "seq": [[0, 1, 2]], "summary": False}),
            "stored schema",
        ),
    ],
)  # fmt: skip
def test_a_bad_stored_message_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    result = parse_stored(raw, "d", "cam0")
    assert isinstance(result, str) and reason in result


def test_rows_of_an_ended_connection_are_due_on_the_next_one() -> None:
    t = ConfirmTracker(timeout_s=5.0)
    t.sent(1, "s", conn=1, now=0.0)
    t.sent(2, "s", conn=1, now=0.1)
    assert t.due(now=0.5, conn=1, busy=set()) == []  # same connection, recent
    assert t.due(now=0.5, conn=2, busy=set()) == [1, 2]  # the broker may have restarted
    assert t.due(now=0.5, conn=2, busy={1}) == [2]  # in flight already


def test_a_gap_behind_a_confirmed_result_is_due_after_a_grace() -> None:
    t = ConfirmTracker(timeout_s=30.0)
    t.sent(1, "s", conn=1, now=0.0)  # lost by the broker
    t.sent(2, "s", conn=1, now=0.5)
    t.sent(3, "other", conn=1, now=0.0)
    t.confirmed([2], now=1.0)
    assert t.due(now=1.0, conn=1, busy=set()) == []  # within the grace: maybe reordered
    assert t.due(now=GAP_GRACE_S + 0.1, conn=1, busy=set()) == [1]  # not the other session


def test_silence_resends_with_backoff_and_a_bounded_window() -> None:
    t = ConfirmTracker(timeout_s=5.0, window=2)
    for row in range(1, 6):
        t.sent(row, "s", conn=1, now=0.0)
    assert t.due(now=4.0, conn=1, busy=set()) == []
    due = t.due(now=5.0, conn=1, busy=set())
    assert due == [1, 2]  # at most `window` re-sends wait for confirmation at once
    t.resent(due)
    t.sent(1, "s", conn=1, now=5.0)  # their PUBACKs
    t.sent(2, "s", conn=1, now=5.0)
    assert t.due(now=12.0, conn=1, busy=set()) == []  # the window is full; backoff: 10 s
    assert t.due(now=15.0, conn=1, busy=set()) == [1, 2]
    t.confirmed([1], now=15.5)  # its re-send arrived: those sent before it were lost
    assert t.due(now=15.6, conn=1, busy=set()) == [3]  # row 2 went out with 1: wait for it
    assert len(t) == 4 and 1 not in t


def test_a_logger_that_confirms_is_not_silent() -> None:
    t = ConfirmTracker(timeout_s=5.0)
    t.sent(1, "s", conn=1, now=10.0)  # queued behind a backlog the logger is working through
    t.sent(2, "other", conn=1, now=0.0)
    t.confirmed([2], now=14.0)
    assert t.due(now=16.0, conn=1, busy=set()) == []  # confirmations flow: wait
    assert t.due(now=19.0, conn=1, busy=set()) == [1]  # 5 s without any: send it again


def test_an_earlier_runs_rows_are_due_on_the_first_connection() -> None:
    t = ConfirmTracker(timeout_s=5.0)
    t.earlier_run([(10, "s"), (11, "s")])
    assert t.due(now=0.0, conn=1, busy=set()) == [10, 11]
    t.forget([10])
    assert t.due(now=0.0, conn=1, busy=set()) == [11]
