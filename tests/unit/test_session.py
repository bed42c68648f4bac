"""Session bookkeeping: seq numbering, rolling verdicts, and schema-valid state/summary payloads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.mqtt.payload import schema_errors
from pipeline.run.session import Session, VerdictPolicy, rolling_verdict
from pipeline.types import Frame, FrameKind, ModelInfo, Prediction, ThermalStats

LABELS = ("healthy", "sick")
MODEL = ModelInfo(name="tiny", version="1", sha256="a" * 64, backend="onnxruntime")


def pred(p_sick: float) -> Prediction:
    scores = (1.0 - p_sick, p_sick)
    index = int(p_sick > 0.5)
    return Prediction(label=LABELS[index], index=index, score=scores[index], scores=scores)


def frame(index: int) -> Frame:
    return Frame(
        pixels=np.zeros((4, 4), np.uint8),
        kind=FrameKind.GRAY8,
        index=index,
        source_id="file://x.mp4",
        capture_ts=1_700_000_000.0 + index,
        capture_mono_ns=index,
    )


def fake_clock() -> object:
    counter = itertools.count()
    return lambda: 1_700_000_000.0 + next(counter)


def make_session(policy: VerdictPolicy, mode: str = "replay") -> Session:
    return Session(
        mode=mode,  # type: ignore[arg-type]
        camera_id="cam0",
        device_id="edge-01",
        source="file://x.mp4",
        policy=policy,
        model=MODEL,
        clock=fake_clock(),  # type: ignore[arg-type]
    )


def test_seq_counts_from_zero_and_keeps_frame_index() -> None:
    s = make_session(VerdictPolicy(LABELS))
    results = [s.add(frame(i * 3), pred(0.2), None, 1.0) for i in range(4)]
    assert [r.seq for r in results] == [0, 1, 2, 3]
    assert [r.frame_index for r in results] == [0, 3, 6, 9]
    assert {r.session_id for r in results} == {s.session_id}


def test_session_ids_are_opaque_and_unique() -> None:
    a, b = make_session(VerdictPolicy(LABELS)), make_session(VerdictPolicy(LABELS))
    assert a.session_id != b.session_id
    assert all(c in "0123456789abcdef" for c in a.session_id)


def test_mean_threshold_verdict_uses_only_the_window() -> None:
    policy = VerdictPolicy(LABELS, window_frames=3, threshold=0.4, positive_label="sick")
    # old high scores fall out of the window: mean of last 3 = 0.2 < 0.4
    v = rolling_verdict([(0.1, 0.9)] * 5 + [(0.8, 0.2)] * 3, policy)
    assert v is not None
    assert (v.label, v.positive, v.frames) == ("healthy", False, 3)
    assert v.score == pytest.approx(0.2)
    # a threshold below 0.5 flags frames argmax would call healthy: mean 0.45 >= 0.4
    v2 = rolling_verdict([(0.55, 0.45)] * 3, policy)
    assert v2 is not None and (v2.label, v2.positive) == ("sick", True)


def test_majority_with_threshold_needs_more_than_half() -> None:
    policy = VerdictPolicy(
        LABELS, window_frames=4, method="majority", threshold=0.5, positive_label="sick"
    )
    two_of_four = [(0.9, 0.1), (0.1, 0.9), (0.9, 0.1), (0.1, 0.9)]
    v = rolling_verdict(two_of_four, policy)
    assert v is not None and v.positive is False and v.label == "healthy"
    three_of_four = [(0.9, 0.1), (0.1, 0.9), (0.2, 0.8), (0.1, 0.9)]
    v = rolling_verdict(three_of_four, policy)
    assert v is not None and v.positive is True and v.label == "sick"


def test_argmax_semantics_without_threshold() -> None:
    mean_policy = VerdictPolicy(LABELS, window_frames=5)
    # majority of frames says healthy, but the mean probability says sick
    scores = [(0.6, 0.4), (0.6, 0.4), (0.6, 0.4), (0.0, 1.0), (0.0, 1.0)]
    v = rolling_verdict(scores, mean_policy)
    assert v is not None and v.label == "sick" and v.positive is None
    vote = rolling_verdict(scores, VerdictPolicy(LABELS, window_frames=5, method="majority"))
    assert vote is not None and vote.label == "healthy"
    tie = rolling_verdict([(0.5, 0.5)], mean_policy)
    assert tie is not None and tie.label == "healthy"  # ties go to the lowest index


def test_policy_build_prefers_config_then_manifest_then_argmax() -> None:
    args = dict(labels=LABELS, window_frames=3, method="mean", positive_label="sick")
    assert (
        VerdictPolicy.build(**args, configured_threshold=0.3, manifest_threshold=0.6).threshold
        == 0.3
    )  # type: ignore[arg-type]
    assert (
        VerdictPolicy.build(**args, configured_threshold=None, manifest_threshold=0.6).threshold
        == 0.6
    )  # type: ignore[arg-type]
    off = VerdictPolicy.build(  # type: ignore[arg-type]
        **args, configured_threshold=None, manifest_threshold=0.6, use_manifest_threshold=False
    )
    assert off.threshold is None


def test_threshold_without_positive_label_is_refused() -> None:
    with pytest.raises(ValueError, match="positive label"):
        VerdictPolicy(LABELS, threshold=0.5, positive_label="malignant")


def test_state_and_summary_payloads_match_their_schemas() -> None:
    policy = VerdictPolicy(LABELS, window_frames=2, threshold=0.5, positive_label="sick")
    s = make_session(policy)
    state0 = s.state_payload()
    assert schema_errors(state0, "state") == []
    assert state0["rolling_verdict"] is None and state0["frames"] == 0
    thermal = ThermalStats(t_min_c=25.0, t_max_c=35.5, t_mean_c=30.1)
    for i, p in enumerate([0.9, 0.2, 0.7, 0.8]):
        s.add(frame(i), pred(p), thermal, 2.0)
    state = s.state_payload()
    assert schema_errors(state, "state") == []
    assert state["state"] == "running"
    rolling = state["rolling_verdict"]
    assert rolling["label"] == "sick" and rolling["positive"] is True
    assert rolling["scope"].startswith("rolling: the last 2 frames")
    assert state["last"] == {"seq": 3, "frame_index": 3, "label": "sick", "score": 0.8}

    with pytest.raises(RuntimeError):
        s.summary_payload()
    s.end("eos")
    summary = s.summary_payload({"capture": 0, "handoff": 2})
    assert schema_errors(summary, "session") == []
    assert summary["end_reason"] == "eos"
    assert summary["frames"] == 4
    assert summary["counts"] == {"healthy": 1, "sick": 3}
    assert summary["counts_are"] == "per-frame top-1 labels over every frame of the session"
    assert "verdict" not in summary and summary["rolling_verdict"]["frames"] == 2
    assert summary["score"]["is"].startswith("probability of the positive class (sick)")
    assert (summary["synthetic_model"], summary["exams"]) == (False, [])
    assert summary["score"]["mean"] == pytest.approx((0.9 + 0.2 + 0.7 + 0.8) / 4)
    assert summary["score"]["max"] == pytest.approx(0.9)
    assert summary["drops"] == {"capture": 0, "handoff": 2}
    assert summary["ended"] > summary["started"]
    assert s.state_payload()["state"] == "ended"
    with pytest.raises(RuntimeError):
        s.add(frame(9), pred(0.1), None, 1.0)


def test_schema_rejects_patient_fields_and_bad_reason() -> None:
    s = make_session(VerdictPolicy(LABELS))
    s.add(frame(0), pred(0.1), None, 1.0)
    s.end("stopped")
    summary = s.summary_payload()
    assert schema_errors(summary, "session") == []
    assert schema_errors({**summary, "patient_name": "x"}, "session")
    assert schema_errors({**summary, "end_reason": "crashed"}, "session")
    assert schema_errors({**s.state_payload(), "patient_id": "T001"}, "state")


def test_version_1_state_and_session_payloads_stay_valid() -> None:
    """Loggers accept every version still in the field: a v1 payload (`verdict`) is valid, the
    current one (state 2, session 3) must use `rolling_verdict`, and the two names never mix."""
    s = make_session(VerdictPolicy(LABELS, window_frames=2, threshold=0.5, positive_label="sick"))
    s.add(frame(0), pred(0.9), None, 1.0)
    s.end("eos")
    current = ((s.state_payload(), "state"), (s.summary_payload(), "session"))
    assert [p["schema"] for p, _ in current] == [2, 3]
    for payload, kind in current:
        dropped = ("counts_are", "synthetic_model", "exams", "dropped_seq")
        old = {k: v for k, v in payload.items() if k not in dropped}
        old["schema"], old["verdict"] = 1, old.pop("rolling_verdict")
        old["verdict"].pop("scope")
        if kind == "session":
            old["score"].pop("is")
        assert schema_errors(old, kind) == []
        assert schema_errors({**old, "schema": payload["schema"]}, kind) != []
        assert schema_errors({**payload, "verdict": payload["rolling_verdict"]}, kind) != []
