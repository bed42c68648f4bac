"""/healthz's judgement, from the live window's health numbers: each part's `ok` and its
reason when it is not."""

from __future__ import annotations

from typing import Any

from pipeline.console.health import HealthLimits, evaluate

LIMITS = HealthLimits(stale_s=5.0, outbox_capacity=100)


def numbers(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "capture": {"frames": 40, "dropped": 0, "rebuilds": 0, "errors": 0},
        "classify": {"frames": 40, "latency_ms": {"p50": 9.0, "p95": 12.0, "p99": 15.0}},
        "results": {"published": 40, "output_dropped": 0},
        "mqtt": {"connected": True, "pending": 3, "inflight": 1, "dropped_full": 0,
                 "reconnects": 0, "last_error": None, "fatal_error": None},
        "failed": False,
        "error": None,
        "exam": None,
        "last_result_age_s": 0.1,
        "ended": None,
    }  # fmt: skip
    base.update(changes)
    return base


def test_a_running_camera_is_healthy() -> None:
    healthy, body = evaluate(numbers(), LIMITS)
    assert healthy and body["status"] == "ok"
    assert {k: body[k]["ok"] for k in ("capture", "classification", "mqtt", "outbox")} == {
        "capture": True,
        "classification": True,
        "mqtt": True,
        "outbox": True,
    }
    assert body["outbox"]["pending"] == 3


def test_a_broker_down_makes_mqtt_unhealthy_with_its_reason() -> None:
    mqtt = {"connected": False, "pending": 10, "last_error": "connection refused by 127.0.0.1"}
    healthy, body = evaluate(numbers(mqtt=mqtt), LIMITS)
    assert not healthy and body["status"] == "unhealthy"
    assert body["mqtt"]["problem"] == "connection refused by 127.0.0.1"
    assert body["capture"]["ok"] and body["outbox"]["ok"]


def test_no_recent_frame_makes_capture_and_classification_unhealthy() -> None:
    healthy, body = evaluate(numbers(last_result_age_s=12.5), LIMITS)
    assert not healthy
    assert "no frame for 12.5 s" in body["capture"]["problem"]
    assert not body["classification"]["ok"]


def test_before_the_first_frame_and_after_the_end_the_camera_is_not_healthy() -> None:
    assert (
        "no frame yet" in evaluate(numbers(last_result_age_s=None), LIMITS)[1]["capture"]["problem"]
    )
    assert "ended (eos)" in evaluate(numbers(ended="eos"), LIMITS)[1]["capture"]["problem"]


def test_a_failed_stage_is_named() -> None:
    _, body = evaluate(numbers(failed=True, error="classify: boom"), LIMITS)
    assert body["capture"]["problem"] == "a stage failed: classify: boom"


def test_a_full_outbox_is_unhealthy() -> None:
    mqtt = {**numbers()["mqtt"], "pending": 100}
    healthy, body = evaluate(numbers(mqtt=mqtt), LIMITS)
    assert not healthy and body["outbox"]["problem"] == "full: 100 of 100 results wait"


def test_empty_numbers_are_unhealthy_not_an_error() -> None:
    healthy, body = evaluate({}, LIMITS)
    assert not healthy and not body["mqtt"]["ok"] and body["outbox"]["ok"]
