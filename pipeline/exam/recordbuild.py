"""Turn the controller's running state into its two published forms: the exam record (exam.json
and the `exam/summary` message) and the retained `exam` state message.

Kept apart from `machine` so the state machine stays short; both functions are pure reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.exam.acclimatization import AcclimatizationStatus
from pipeline.exam.commands import ExamState
from pipeline.exam.record import (
    AcclimatizationRecord,
    AmbientRecord,
    ExamRecord,
    ModelRecord,
    ScorePoint,
    VerdictRecord,
    ViewRecord,
    key_frame_meta,
)
from pipeline.exam.verdict import exam_verdict
from pipeline.mqtt.payload import rfc3339_ms

if TYPE_CHECKING:
    from pipeline.exam.machine import ExamController, OpenExam

STATE_SCHEMA = 1


def _ts(seconds: float | None) -> str | None:
    return None if seconds is None else rfc3339_ms(seconds)


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def acclimatization_status(exam: OpenExam, now_s: float) -> AcclimatizationStatus:
    """Live while acclimatizing; frozen at the moment the exam became ready."""
    if exam.ready_status is not None:
        return exam.ready_status
    end = exam.ended_s if exam.ended_s is not None else now_s
    return exam.tracker.status(end)


def _acclimatization(ctl: ExamController, exam: OpenExam, now_s: float) -> AcclimatizationRecord:
    status = acclimatization_status(exam, now_s)
    cfg = ctl.cfg.acclimatization
    return AcclimatizationRecord(
        basis="not-observed" if exam.not_observed_reason else status.basis,
        required_s=cfg.min_s,
        drift_limit_c_per_min=cfg.drift_limit_c_per_min,
        drift_window_s=cfg.drift_window_s,
        elapsed_s=round(status.elapsed_s, 3),
        drift_c_per_min=_r(status.drift_c_per_min),
        ready_at=_ts(exam.ready_s),
        criteria_met=status.ready and exam.not_observed_reason is None,
        override=exam.override,
        not_observed_reason=exam.not_observed_reason,
        skin_samples=list(exam.tracker.samples_since_start()),
    )


def _model(ctl: ExamController) -> ModelRecord:
    return ModelRecord.model_validate(ctl.model.to_dict())


def build_record(ctl: ExamController, exam: OpenExam, now_s: float) -> ExamRecord:
    """The exam record as it stands at `now_s` (final once the exam is closed or aborted)."""
    closed = exam.state is ExamState.CLOSED
    verdict = None
    if exam.state is not ExamState.ABORTED:
        found = exam_verdict(exam.tallies, ctl.model, final=closed)
        verdict = None if found is None else VerdictRecord.model_validate(found.to_dict())
    ctx = ctl.context
    return ExamRecord(
        exam_id=exam.exam_id,
        state=exam.state.value,  # type: ignore[arg-type]  # an open or finished state
        device_id=ctx.device_id,
        camera_id=ctx.camera_id,
        source=ctx.source,
        profile=ctx.profile,
        software={"name": "thermoscreen", "version": ctx.software_version},
        started=rfc3339_ms(exam.started_s),
        capture_started=_ts(exam.capture_started_s),
        ended=_ts(exam.ended_s),
        abort_reason=exam.abort_reason,
        acclimatization=_acclimatization(ctl, exam, now_s),
        ambient=AmbientRecord(
            ambient_c=exam.ambient_c,
            humidity_pct=exam.humidity_pct,
            source=exam.ambient_source,  # type: ignore[arg-type]  # command | sensor
            updated=_ts(exam.ambient_s),
        ),
        model=_model(ctl),
        synthetic_model=ctl.model.synthetic,
        gates=ctl.cfg.gates.model_dump(mode="json"),
        views={
            v: ViewRecord.model_validate(t.stats(), from_attributes=True)
            for v, t in exam.tallies.items()
        },
        verdict=verdict,
        scores=[ScorePoint(t_s=t, view=v, score=s) for t, v, s in exam.scores],
        key_frames=[key_frame_meta(k) for _, k in exam.keys.values()] if closed else [],
    )


def _frames(exam: OpenExam | None) -> dict[str, Any]:
    tallies = {} if exam is None else exam.tallies
    return {
        "accepted": sum(t.accepted for t in tallies.values()),
        "rejected": sum(t.rejected for t in tallies.values()),
        "by_view": {
            v: {"accepted": t.accepted, "rejected": t.rejected} for v, t in tallies.items()
        },
    }


def state_payload(
    ctl: ExamController, now_s: float, rolling: dict[str, Any] | None
) -> dict[str, Any]:
    """The retained `exam` message (pipeline/mqtt/schemas/exam.schema.json)."""
    exam = ctl.exam
    accl = None
    verdict = None
    if exam is not None:
        status = acclimatization_status(exam, now_s)
        accl = {
            "elapsed_s": round(status.elapsed_s, 1),
            "required_s": status.required_s,
            "drift_c_per_min": _r(status.drift_c_per_min),
            "drift_limit_c_per_min": status.drift_limit_c_per_min,
            "basis": "not-observed" if exam.not_observed_reason else status.basis,
            "override": exam.override is not None,
        }
        if exam.state is not ExamState.ABORTED:
            found = exam_verdict(exam.tallies, ctl.model, final=exam.state is ExamState.CLOSED)
            verdict = None if found is None else found.to_dict()
    model = ctl.model
    return {
        "schema": STATE_SCHEMA,
        "device_id": ctl.context.device_id,
        "camera_id": ctl.context.camera_id,
        "updated": rfc3339_ms(ctl.updated_s),
        "exam_id": None if exam is None else exam.exam_id,
        "state": ctl.state.value,
        "view": None if exam is None else exam.view,
        "started": None if exam is None else rfc3339_ms(exam.started_s),
        "acclimatization": accl,
        "frames": _frames(exam),
        "last_quality": None
        if exam is None or exam.last_quality is None
        else exam.last_quality.to_dict(),
        "ambient_c": None if exam is None else exam.ambient_c,
        "humidity_pct": None if exam is None else exam.humidity_pct,
        "rolling_verdict": rolling if exam is not None and exam.state.in_progress else None,
        "exam_verdict": verdict,
        "model": {
            "name": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "synthetic": model.synthetic,
            "threshold": model.threshold,
            "views": list(model.views),
        },
        "synthetic_model": model.synthetic,
        "abort_reason": None if exam is None else exam.abort_reason,
        "last_error": ctl.last_error,
    }
