"""The pure pieces that carry the exam through MQTT, the CLI and the logger."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pipeline.exam.config import ExamConfig
from pipeline.exam.machine import ExamContext, ExamController
from pipeline.logger.examreport import ExamReportError, parse_since
from pipeline.logger.validate import Accepted, Reject, classify
from pipeline.mqtt.inbound import Retained, RetainedStates, Subscriptions
from pipeline.mqtt.payload import encode
from pipeline.run.examctl import command_from_args, describe
from tests.helpers.exam import MODEL, Clock


def test_retained_states_keep_the_newest_and_every_answer() -> None:
    waiting = RetainedStates()
    assert not waiting
    waiting.offer(Retained("cam0", b"s1", "exam"))
    waiting.offer(Retained("cam0", b"state", "state"))
    waiting.offer(Retained("cam0", b"s2", "exam"))
    assert [(r.kind, r.payload) for r in waiting.take()] == [("exam", b"s2"), ("state", b"state")]
    assert not waiting
    waiting.offer(Retained("cam0", b"old", "exam"))
    waiting.offer(Retained("cam0", b"answer-1", "exam", b"c1"))  # makes "old" obsolete
    waiting.offer(Retained("cam0", b"answer-2", "exam", b"c2"))
    waiting.offer(Retained("cam0", b"new", "exam"))
    taken = waiting.take()
    assert [(r.payload, r.correlation) for r in taken] == [
        (b"answer-1", b"c1"),
        (b"answer-2", b"c2"),
        (b"new", None),
    ]


def broken(topic: str, payload: bytes, correlation: bytes | None) -> None:
    raise ZeroDivisionError("a handler's bug")


def test_subscriptions_hand_matching_messages_on_and_survive_a_bad_handler() -> None:
    got: list[tuple[str, bytes, bytes | None]] = []
    subs = Subscriptions()
    subs.add("t/+/cam0/exam/set", lambda *m: got.append(m))
    subs.add("t/room", broken)  # a bug in a handler must not reach paho's thread
    for topic in ("t/dev/cam0/exam/set", "t/dev/cam1/exam/set", "t/room"):
        message = mqtt.MQTTMessage(topic=topic.encode())
        message.payload = b'{"action":"close"}'
        subs.on_message(None, None, message)  # type: ignore[arg-type]
    assert got == [("t/dev/cam0/exam/set", b'{"action":"close"}', None)]
    with pytest.raises(ValueError, match="must be non-empty"):
        subs.add("", lambda *m: None)


def states() -> list[dict[str, Any]]:
    clock = Clock()
    ctl = ExamController(ExamConfig(), MODEL, ExamContext("d", "c", "test://"), clock)
    out = [dict(ctl.state_payload())]
    ctl.handle({"action": "start", "exam_id": "ACC-1"})
    out.append(dict(ctl.state_payload()))
    ctl.handle({"action": "abort", "reason": "patient left"})
    out.append(dict(ctl.state_payload()))
    return out


def test_the_cli_line_says_where_the_exam_stands() -> None:
    _, resting, aborted = states()
    assert describe(resting) == "exam ACC-1: acclimatizing (rest 0 s of 900 s)"
    assert describe(aborted) == "exam ACC-1: aborted (patient left)"
    closed = {
        **resting,
        "state": "closed",
        "exam_verdict": {
            "label": "sick",
            "positive_label": "sick",
            "score": 0.61234,
            "threshold": 0.4,
            "frames": 12,
        },
        "synthetic_model": True,
    }
    assert describe(closed) == (
        "exam ACC-1: closed; exam verdict sick (mean sick probability 0.612 vs threshold "
        "0.400, 12 frames); SYNTHETIC MODEL (demo, not a medical model)"
    )


def test_the_cli_sends_only_the_fields_given() -> None:
    class Args:
        action, view, exam_id, ambient_c, humidity_pct, reason = (
            "start",
            None,
            "A1",
            21.5,
            None,
            None,
        )

    assert command_from_args(Args()) == {"action": "start", "exam_id": "A1", "ambient_c": 21.5}  # type: ignore[arg-type]


def test_since_takes_dates_and_times_in_utc() -> None:
    assert parse_since("2026-01-14") == "2026-01-14T00:00:00.000Z"
    assert parse_since("2026-01-14T09:30:00+01:00") == "2026-01-14T08:30:00.000Z"
    with pytest.raises(ExamReportError, match="--since 'yesterday': not a date"):
        parse_since("yesterday")


def test_the_logger_routes_exam_topics() -> None:
    _, resting, _ = states()
    ok = classify("t/d/c/exam", encode(resting), "t", 65536)
    assert isinstance(ok, Accepted) and ok.kind == "exam" and ok.ids == ["d", "c"]
    command = classify("t/d/c/exam/set", b'{"action":"close"}', "t", 65536)
    assert isinstance(command, Accepted) and command.kind == "exam-command"
    assert command.payload is None  # requests to a run are not stored
    wrong_ids = classify("t/d/other/exam", encode(resting), "t", 65536)
    assert isinstance(wrong_ids, Reject) and "differ from payload" in wrong_ids.reason
    unknown = classify("t/d/c/exam/other", b"{}", "t", 65536)
    assert isinstance(unknown, Reject)
    assert "unknown topic kind 'exam/other'" in unknown.reason
    bad = classify("t/d/c/exam/summary", b'{"schema": 1}', "t", 65536)
    assert isinstance(bad, Reject) and bad.reason.startswith("exam-summary schema:")
