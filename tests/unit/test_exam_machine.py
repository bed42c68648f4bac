"""The exam state machine: transitions, refusals that change nothing, and schema-valid payloads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.data.synthetic import SyntheticStream
from pipeline.exam.commands import ExamState
from pipeline.exam.config import AcclimatizationConfig, ExamConfig
from pipeline.exam.machine import ExamContext, ExamController
from pipeline.exam.record import summary_payload
from pipeline.mqtt.payload import schema_errors
from pipeline.preprocess import render_celsius
from tests.helpers.exam import MODEL, Clock, celsius_frame, gray_frame, scores

SIZE = (120, 160)
CONTEXT = ExamContext(device_id="edge-01", camera_id="cam0", source="test://", profile=None)
FAST = ExamConfig(
    acclimatization=AcclimatizationConfig(min_s=60, drift_window_s=30, drift_limit_c_per_min=0.1)
)


@pytest.fixture(scope="module")
def stream() -> SyntheticStream:
    return SyntheticStream(seed=3, size=SIZE, label_pattern=("healthy",), distinct_patients=1)


def controller(
    clock: Clock, cfg: ExamConfig = FAST, taken: set[str] | None = None
) -> ExamController:
    ids = taken or set()
    return ExamController(cfg, MODEL, CONTEXT, clock=clock, id_taken=ids.__contains__)


def check_state(ctl: ExamController) -> dict[str, Any]:
    payload = ctl.state_payload()
    assert schema_errors(payload, "exam") == []
    return payload


def settle(ctl: ExamController, clock: Clock, stream: SyntheticStream, seconds: int) -> int:
    """Feed one frame a second whose skin warms by 2 C and settles with tau = 10 s."""
    changed_at = -1
    for i in range(seconds):
        offset = np.float32(-2.0 * math.exp(-i / 10.0))
        assessment = ctl.observe(celsius_frame(stream.frame(i) + offset, i), scores(0.2))
        assert assessment.quality is None and not assessment.counted
        if assessment.state_changed:
            changed_at = i
        clock.advance(1.0)
    return changed_at


def capture(
    ctl: ExamController, stream: SyntheticStream, n: int, p_sick: float, start: int = 0
) -> list[bool]:
    return [
        ctl.observe(celsius_frame(stream.frame(start + i), start + i), scores(p_sick)).counted
        for i in range(n)
    ]


def test_whole_exam(stream: SyntheticStream) -> None:
    clock = Clock()
    ctl = controller(clock)
    assert check_state(ctl)["state"] == "idle"
    out = ctl.handle({"action": "start", "exam_id": "ACC-1", "ambient_c": 22.5, "humidity_pct": 40})
    assert out.ok and out.state is ExamState.ACCLIMATIZING and out.exam_id == "ACC-1"
    assert ctl.record() is not None and ctl.record().state == "acclimatizing"  # type: ignore[union-attr]
    changed_at = settle(ctl, clock, stream, 90)
    assert 60 <= changed_at < 90  # ready when the time has passed AND the skin has settled
    state = check_state(ctl)
    assert state["state"] == "ready"
    assert state["acclimatization"]["basis"] == "drift"
    assert abs(state["acclimatization"]["drift_c_per_min"]) <= 0.1
    assert state["acclimatization"]["override"] is False

    assert ctl.handle({"action": "view", "view": "frontal"}).ok
    assert all(capture(ctl, stream, 12, 0.7))
    assert ctl.handle({"action": "view", "view": "left-oblique"}).ok
    assert not any(capture(ctl, stream, 5, 0.1, start=12))  # accepted, but not the model's view
    state = check_state(ctl)
    assert state["state"] == "capturing" and state["view"] == "left-oblique"
    assert state["frames"]["by_view"] == {
        "frontal": {"accepted": 12, "rejected": 0},
        "left-oblique": {"accepted": 5, "rejected": 0},
    }
    assert state["exam_verdict"]["final"] is False
    assert state["rolling_verdict"]["frames"] == 10

    out = ctl.handle({"action": "close"})
    assert out.ok and out.finished is not None
    record = out.finished.record
    assert record.state == "closed" and record.verdict is not None
    assert record.verdict.frames == 12 and record.verdict.frames_by_view == {"frontal": 12}
    assert record.verdict.score == pytest.approx(0.7) and record.verdict.positive
    assert record.verdict.label == "sick" and record.verdict.final
    assert record.ambient.ambient_c == 22.5 and record.ambient.humidity_pct == 40
    assert record.acclimatization.criteria_met and record.acclimatization.override is None
    assert {k.view for k in out.finished.key_frames} == {"frontal", "left-oblique"}
    assert schema_errors(summary_payload(record), "exam-summary") == []
    state = check_state(ctl)
    assert state["state"] == "closed" and state["exam_verdict"]["final"] is True
    assert state["rolling_verdict"] is None  # the rolling score is never shown as a result


def test_time_only_for_8bit_sources(stream: SyntheticStream) -> None:
    clock = Clock()
    ctl = controller(clock)
    ctl.handle({"action": "start"})
    gray = render_celsius(stream.frame(0), (20.0, 38.0))
    for i in range(61):
        changed = ctl.observe(gray_frame(gray, i), scores(0.5)).state_changed
        clock.advance(1.0)
        assert changed == (i == 60)
    record = ctl.record()
    assert record is not None and record.acclimatization.basis == "time"
    assert record.acclimatization.drift_c_per_min is None


def test_no_frames_no_automatic_ready() -> None:
    clock = Clock()
    ctl = controller(clock)
    ctl.handle({"action": "start"})
    clock.advance(3600)
    assert not ctl.tick() and ctl.state is ExamState.ACCLIMATIZING
    assert check_state(ctl)["acclimatization"]["basis"] == "pending"


def test_unsettled_skin_keeps_acclimatizing(stream: SyntheticStream) -> None:
    clock = Clock()
    ctl = controller(clock)
    ctl.handle({"action": "start"})
    for i in range(120):  # warming steadily at 0.5 C/min: never settled
        ctl.observe(celsius_frame(stream.frame(i) + np.float32(i / 120.0), i), scores(0.1))
        clock.advance(1.0)
    state = check_state(ctl)
    assert state["state"] == "acclimatizing"
    assert state["acclimatization"]["drift_c_per_min"] == pytest.approx(0.5, abs=0.1)


def test_operator_override_is_recorded(stream: SyntheticStream) -> None:
    clock = Clock()
    ctl = controller(clock)
    ctl.handle({"action": "start", "exam_id": "OV-1"})
    settle(ctl, clock, stream, 20)
    out = ctl.handle({"action": "ready", "reason": "patient cannot wait"})
    assert out.ok and out.state is ExamState.READY
    record = ctl.record()
    assert record is not None and record.acclimatization.override is not None
    assert record.acclimatization.override.reason == "patient cannot wait"
    assert record.acclimatization.override.elapsed_s == pytest.approx(20.0)
    assert not record.acclimatization.criteria_met
    assert check_state(ctl)["acclimatization"]["override"] is True


def test_ready_when_criteria_met_is_not_an_override(stream: SyntheticStream) -> None:
    clock = Clock()
    ctl = controller(
        clock, ExamConfig(acclimatization=AcclimatizationConfig(min_s=0, drift_window_s=10))
    )
    ctl.handle({"action": "start"})
    for i in range(12):
        ctl._sample_skin(ctl.exam, celsius_frame(stream.frame(0), i), clock())  # type: ignore[arg-type]
        clock.advance(1.0)
    assert ctl.handle({"action": "ready"}).ok
    record = ctl.record()
    assert record is not None and record.acclimatization.override is None
    assert record.acclimatization.criteria_met


def test_start_with_a_view_captures_at_once(stream: SyntheticStream) -> None:
    ctl = controller(Clock())
    out = ctl.handle({"action": "start", "exam_id": "R-1", "view": "frontal"})
    assert out.ok and out.state is ExamState.CAPTURING
    assert all(capture(ctl, stream, 3, 0.2))
    finished = ctl.handle({"action": "close"}).finished
    assert finished is not None
    accl = finished.record.acclimatization
    assert accl.basis == "not-observed" and not accl.criteria_met
    assert accl.not_observed_reason is not None and "not observed" in accl.not_observed_reason
    assert finished.record.verdict is not None and not finished.record.verdict.positive


def test_abort_records_reason_and_no_verdict(stream: SyntheticStream) -> None:
    ctl = controller(Clock())
    ctl.handle({"action": "start", "view": "frontal"})
    capture(ctl, stream, 4, 0.9)
    out = ctl.handle({"action": "abort", "reason": "camera fell"})
    assert out.ok and out.finished is not None and out.finished.key_frames == ()
    assert out.finished.record.state == "aborted" and out.finished.record.verdict is None
    assert out.finished.record.abort_reason == "camera fell"
    state = check_state(ctl)
    assert state["exam_verdict"] is None and state["abort_reason"] == "camera fell"
    assert ctl.observe(celsius_frame(stream.frame(0)), scores(0.5)).exam_id == out.exam_id
    assert ctl.observe(celsius_frame(stream.frame(0)), scores(0.5)).quality is None


REFUSALS = [
    # (setup commands, refused command, words in last_error)
    ([], {"action": "ready"}, "ready: refused while idle"),
    ([], {"action": "view", "view": "frontal"}, "view: refused while idle"),
    ([], {"action": "close"}, "close: refused while idle"),
    ([], {"action": "abort"}, "abort: refused while idle"),
    ([], {"action": "launch"}, "action: 'launch' is not an action"),
    ([{"action": "start", "exam_id": "A"}], {"action": "start"}, "exam A is acclimatizing"),
    ([{"action": "start"}], {"action": "view", "view": "frontal"}, "needs ready or capturing"),
    ([{"action": "start"}], {"action": "close"}, "abort ends an exam early"),
    ([{"action": "start", "view": "frontal"}], {"action": "ready"}, "refused while capturing"),
    ([{"action": "start", "view": "frontal"}], {"action": "view", "view": "top"}, "not a view"),
    (
        [{"action": "start", "view": "frontal"}],
        {"action": "view", "view": "frontal", "ambient_c": 99},
        "out of range",
    ),
    (
        [{"action": "start", "exam_id": "A"}, {"action": "abort"}],
        {"action": "start", "exam_id": "A"},
        "already used",
    ),
    (
        [{"action": "start", "exam_id": "A"}, {"action": "abort"}],
        {"action": "close"},
        "refused while aborted",
    ),
    ([], {"action": "start", "exam_id": "ON-DISK"}, "already used"),
    ([], {"action": "start", "exam_id": "Jane Doe"}, "not an exam id"),
    ([], {"action": "start", "ambient_c": float("nan")}, "not a finite number"),
]


@pytest.mark.parametrize(("setup", "command", "words"), REFUSALS)
def test_refused_commands_change_nothing(
    setup: list[dict[str, Any]], command: dict[str, Any], words: str
) -> None:
    clock = Clock()
    ctl = controller(clock, taken={"ON-DISK"})
    for cmd in setup:
        assert ctl.handle(cmd).ok
    before_state, before_record = ctl.state, ctl.record()
    clock.advance(5.0)
    out = ctl.handle(command)
    assert not out.ok and out.finished is None and out.error is not None and words in out.error
    assert ctl.state is before_state
    after = ctl.record()
    assert (after is None) == (before_record is None)
    if after is not None and before_record is not None:
        fields = {"acclimatization"}  # the only thing time itself moves
        assert after.model_dump(exclude=fields) == before_record.model_dump(exclude=fields)
    payload = check_state(ctl)
    assert payload["last_error"] == out.error
    assert ctl.handle({"action": "abort"} if ctl.state.in_progress else {"action": "start"}).ok
    assert check_state(ctl)["last_error"] is None  # the next accepted command clears it


@pytest.mark.parametrize(
    "raw",
    [b"{", b"[]", b'{"action":"start","ambient_c":NaN}', b"[" * 2000 + b"]" * 2000, b"x" * 5000],
)
def test_hostile_json_is_refused_not_raised(raw: bytes) -> None:
    ctl = controller(Clock())
    out = ctl.handle_json(raw)
    assert not out.ok and ctl.state is ExamState.IDLE and check_state(ctl)["last_error"]


def test_generated_ids_are_unique_and_valid() -> None:
    ctl = controller(Clock())
    ids = set()
    for _ in range(5):
        out = ctl.handle({"action": "start"})
        assert out.ok and out.exam_id is not None
        ids.add(out.exam_id)
        ctl.handle({"action": "abort"})
    assert len(ids) == 5


def test_sensor_ambient_applies_to_open_exams_only() -> None:
    from pipeline.exam.commands import SensorReading

    ctl = controller(Clock())
    assert not ctl.set_ambient(SensorReading(21.0, 50.0))
    ctl.handle({"action": "start"})
    assert ctl.set_ambient(SensorReading(21.0, None))
    record = ctl.record()
    assert record is not None and record.ambient.ambient_c == 21.0
    assert record.ambient.source == "sensor"


def test_scores_must_match_the_labels(stream: SyntheticStream) -> None:
    ctl = controller(Clock())
    with pytest.raises(ValueError, match="3 scores for 2 model labels"):
        ctl.observe(celsius_frame(stream.frame(0)), (0.2, 0.3, 0.5))


def test_frames_outside_an_exam_belong_to_none(stream: SyntheticStream) -> None:
    ctl = controller(Clock())
    assessment = ctl.observe(celsius_frame(stream.frame(0)), scores(0.9))
    assert (assessment.exam_id, assessment.view, assessment.quality) == (None, None, None)


def test_exam_section_of_the_app_config(tmp_path: Path) -> None:
    from pipeline.config import ConfigError, load_config

    path = tmp_path / "x.yaml"
    path.write_text(
        "exam:\n  acclimatization:\n    min_s: 600\n  gates:\n    body_fraction: [0.3, 0.9]\n"
    )
    cfg = load_config(path, {"exam.rolling_frames": 5}, {"THERMOSCREEN_EXAM__EXAMS_DIR": "/x"})
    assert cfg.exam.acclimatization.min_s == 600 and cfg.exam.gates.body_fraction == (0.3, 0.9)
    assert cfg.exam.rolling_frames == 5 and str(cfg.exam.exams_dir) == "/x"
    path.write_text("exam:\n  gates:\n    body_fraction: [0.9, 0.3]\n")
    with pytest.raises(ConfigError, match="body_fraction must be"):
        load_config(path, env={})
    path.write_text("exam:\n  acclimatisation: {}\n")
    with pytest.raises(ConfigError, match="did you mean 'acclimatization'"):
        load_config(path, env={})


def test_result_fields(stream: SyntheticStream) -> None:
    ctl = controller(Clock())
    outside = ctl.observe(celsius_frame(stream.frame(0)), scores(0.5)).result_fields()
    assert outside == {"exam_id": None, "view": None, "quality": None}
    ctl.handle({"action": "start", "exam_id": "RF-1", "view": "frontal"})
    ctl.observe(celsius_frame(stream.frame(0)), scores(0.5))
    again = ctl.observe(celsius_frame(stream.frame(0)), scores(0.5)).result_fields()
    assert again == {
        "exam_id": "RF-1",
        "view": "frontal",
        "quality": {"accepted": False, "reasons": ["frozen"]},
    }
