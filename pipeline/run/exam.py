"""The screening exam inside a run: the publish thread is the one owner of the exam's state.

    exam/set (MQTT) --+                          +--> result tags (exam_id, view, quality)
    console ----------+--> CommandInbox --> ExamTracker (publish thread) --> retained `exam`
    ambient sensor ---+     (bounded)        ExamController (pipeline.exam)   `exam/summary`
                                                                            exam records on disk

`ExamTracker` wraps the pure `pipeline.exam.machine.ExamController`. MQTT callbacks and the
console never touch it: they queue a closure on the run's `CommandInbox` (bounded; a full inbox
refuses at once instead of blocking the MQTT client thread) and the publish thread runs it between
two results. Every command is answered on the retained `exam` topic (with `last_error` when refused;
with the command's MQTT v5 correlation data so `thermoscreen exam` sees its own answer); every
state change rewrites `exam.json`, so a crash leaves a record that the next start marks aborted
(`recover`); a close or abort writes the whole record (key frames, report) and publishes it on
`exam/summary`.

`ExamPlan` is `run --exam ID --view V`: the run starts its exam itself, capturing at once (the
record says acclimatization was not observed). In a folder replay whose file names carry a
DMR-IR patient (`T<patient>...`), it makes one exam per patient, `<ID>-T<patient>`, so the
pipeline's own exam verdicts can be scored against the dataset's labels.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.dmr import parse_dmr_name
from pipeline.exam.commands import (
    CommandError,
    ExamCommand,
    ExamState,
    View,
    decode_sensor_reading,
    generate_exam_id,
)
from pipeline.exam.machine import CommandOutcome, ExamController
from pipeline.exam.record import FinishedExam, summary_payload, write_record
from pipeline.exam.store import recover_unfinished, save_exam
from pipeline.output.base import OverlayInfo, VerdictLine
from pipeline.run.base import Classified, ExamSink
from pipeline.run.inbox import CommandInbox, InboxClosed
from pipeline.run.session import EndReason
from pipeline.types import ExamTag, Frame

log = logging.getLogger(__name__)

STATE_INTERVAL_S = 1.0  # an open exam's state goes out at least this often (timer, counts)
PATIENT_SEP = "-T"  # per-patient exam ids: <prefix>-T<patient>
MAX_PREFIX = 64 - len(PATIENT_SEP) - 6  # room for a six-digit DMR-IR patient number
ENDED_REASON = "the run ended ({reason}) during the exam"


@dataclass(frozen=True)
class ExamPlan:
    """An exam the run starts by itself (`run --exam ID --view V`).

    `exam_id` is the exam's id, or the prefix of per-patient ids in a DMR-IR folder replay;
    None generates one."""

    exam_id: str | None
    view: View


@dataclass
class ExamCounters:
    """What the exam side of a run counts (the console's health and the logs)."""

    commands: int = 0
    refused: int = 0
    dropped: int = 0  # commands refused because the inbox was full (the run is far behind)
    sensor_readings: int = 0
    sensor_refused: int = 0
    closed: int = 0
    aborted: int = 0


class ExamTracker:
    """One camera's exams, owned by the publish thread (see the module docstring)."""

    def __init__(
        self,
        controller: ExamController,
        sink: ExamSink,
        exams_dir: Path,
        inbox: CommandInbox,
        plan: ExamPlan | None = None,
        on_state: Callable[[dict[str, Any]], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.controller = controller
        self.sink = sink
        self.exams_dir = Path(exams_dir)
        self.inbox = inbox
        self.plan = plan
        self.camera_id = controller.context.camera_id
        self.counters = ExamCounters()
        self.on_state = on_state  # also told each state published (the console's view)
        self._monotonic = monotonic
        self._published_mono = float("-inf")
        self._per_patient: bool | None = None  # decided at the plan's first frame
        self._patient: str | None = None
        self._planned: str | None = None  # the exam the plan started, while it is open

    # --- set-up, before the stages start -----------------------------------------------------

    def attach(self, ambient_topic: str | None) -> None:
        """Subscribe to `<camera>/exam/set` and the room sensor's topic, if any."""
        self.sink.subscribe(self.sink.topic(self.camera_id, "exam", "set"), self._on_command)
        if ambient_topic:
            self.sink.subscribe(ambient_topic, self._on_sensor)

    def recover(self) -> int:
        """Mark records a crash left open as aborted and publish their summaries; the retained
        state says where this camera stands now. Returns how many were recovered."""
        listing = recover_unfinished(self.exams_dir, time.time())
        for record in listing.records:
            self.sink.publish_exam_summary(self.camera_id, summary_payload(record))
        self._publish()
        return len(listing.records)

    # --- any thread: commands in -------------------------------------------------------------

    def submit(self, data: Mapping[str, Any]) -> Future[CommandOutcome]:
        """A decoded `exam/set` command from another thread (the console): the same validation
        and answer as an MQTT command. Raises queue.Full when the run is far behind and
        InboxClosed once it has ended."""
        return self.inbox.submit(lambda: self._command(lambda c: c.handle(dict(data)), None))

    def _on_command(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        """The MQTT client thread: hand the raw command to the publish thread, never block."""
        try:
            self.inbox.submit(lambda: self._command(lambda c: c.handle_json(payload), correlation))
        except queue.Full:
            self.counters.dropped += 1
            log.warning("exam command dropped: the run is too far behind to take commands")
        except InboxClosed:
            log.info("exam command after the run ended: not applied")

    def _on_sensor(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        try:
            self.inbox.submit(lambda: self._sensor(payload))
        except (queue.Full, InboxClosed):
            self.counters.dropped += 1

    # --- the publish thread --------------------------------------------------------------------

    def _command(
        self,
        run: Callable[[ExamController], CommandOutcome],
        correlation: bytes | None,
    ) -> CommandOutcome:
        outcome = run(self.controller)
        self.counters.commands += 1
        if not outcome.ok:
            self.counters.refused += 1
            log.warning("exam command refused: %s", outcome.error)
        elif outcome.finished is not None:
            self._finish(outcome.finished)
        else:
            self._write_record()
        self._publish(correlation)
        return outcome

    def _sensor(self, payload: bytes) -> None:
        try:
            reading = decode_sensor_reading(payload, self.controller.cfg.ambient_c_range)
        except CommandError as exc:
            self.counters.sensor_refused += 1
            log.warning("ambient sensor reading refused: %s", exc)
            return
        self.counters.sensor_readings += 1
        if self.controller.set_ambient(reading):
            self._write_record()
            self._publish()

    def assess(self, item: Classified) -> ExamTag:
        """The exam's view of one classified frame, before its result is published."""
        if self.plan is not None:
            self._follow_plan(item.frame)
        seen = self.controller.observe(item.frame, item.prediction.scores)
        if seen.state_changed:
            self._write_record()
            self._publish()
        else:
            self._maybe_publish()
        if not self.controller.state.in_progress:
            return ExamTag()
        quality = seen.quality
        return ExamTag(
            exam_id=seen.exam_id,
            view=seen.view,
            accepted=None if quality is None else quality.accepted,
            reasons=() if quality is None else tuple(quality.reasons),
        )

    def idle(self) -> None:
        """Acclimatization can end without frames; an open exam's state goes out each second."""
        if self.controller.tick():
            self._write_record()
            self._publish()
        else:
            self._maybe_publish()

    def on_end(self, reason: EndReason) -> None:
        """A planned exam closes at the end of its replay (or a clean stop); any other open exam
        is aborted, with the reason in its record."""
        exam = self.controller.exam
        if exam is not None and exam.state.in_progress:
            close = exam.exam_id == self._planned and reason != "error"
            if close and self.controller.state in (ExamState.READY, ExamState.CAPTURING):
                self._apply(ExamCommand(action="close"))
            else:
                self._apply(ExamCommand(action="abort", reason=ENDED_REASON.format(reason=reason)))
        self._publish()

    def overlay(self, item: Classified, rolling: dict[str, Any] | None) -> OverlayInfo:
        """What the annotated output shows with this frame (see OverlayInfo)."""
        ctl = self.controller
        payload: dict[str, Any] = dict(ctl.state_payload())
        exam_rolling = payload.get("rolling_verdict")
        verdict = payload.get("exam_verdict")
        rejected: tuple[str, ...] = ()
        if ctl.state is ExamState.CAPTURING and ctl.exam is not None:
            last = ctl.exam.last_quality
            rejected = () if last is None or last.accepted else tuple(last.reasons)
        return OverlayInfo(
            exam_id=payload.get("exam_id"),
            exam_state=None if payload.get("exam_id") is None else str(payload["state"]),
            view=payload.get("view"),
            acclimatization=_rest_text(payload) if ctl.state is ExamState.ACCLIMATIZING else None,
            rolling=_line(exam_rolling if ctl.state.in_progress else rolling),
            exam=_line(verdict),
            rejected=rejected,
            synthetic_model=ctl.model.synthetic,
        )

    # --- helpers -------------------------------------------------------------------------------

    def _apply(self, command: ExamCommand) -> CommandOutcome:
        outcome = self.controller.apply(command)
        if not outcome.ok:
            log.error("exam %s refused: %s", command.action, outcome.error)
        elif outcome.finished is not None:
            self._finish(outcome.finished)
        else:
            self._write_record()
        self._publish()
        return outcome

    def _follow_plan(self, frame: Frame) -> None:
        """Start the planned exam at the first frame; in a DMR-IR replay, one per patient."""
        plan = self.plan
        assert plan is not None
        name = parse_dmr_name(frame.file) if frame.file else None
        if self._per_patient is None:
            self._per_patient = name is not None
            if not self._per_patient:
                self._start_planned(plan.exam_id or generate_exam_id(time.time()), plan.view)
        if not self._per_patient or name is None or name.patient_id == self._patient:
            return
        if self.controller.state.in_progress:
            self._apply(ExamCommand(action="close"))
        self._patient = name.patient_id
        prefix = plan.exam_id or generate_exam_id(time.time())
        self._start_planned(f"{prefix}{PATIENT_SEP}{name.patient_id}", plan.view)

    def _start_planned(self, exam_id: str, view: View) -> None:
        outcome = self._apply(ExamCommand(action="start", exam_id=exam_id, view=view))
        self._planned = exam_id if outcome.ok else None

    def _finish(self, finished: FinishedExam) -> None:
        record = finished.record
        folder = save_exam(self.exams_dir, finished)
        self.sink.publish_exam_summary(self.camera_id, summary_payload(record))
        if record.state == ExamState.CLOSED.value:
            self.counters.closed += 1
        else:
            self.counters.aborted += 1
        if record.exam_id == self._planned:
            self._planned = None
        verdict = record.verdict
        said = "no verdict" if verdict is None else f"{verdict.label} ({verdict.score:.3f})"
        log.info("exam %s %s: %s; record %s", record.exam_id, record.state, said, folder)

    def _write_record(self) -> None:
        record = self.controller.record()
        if record is not None:
            write_record(self.exams_dir, record)

    def _maybe_publish(self) -> None:
        if self.controller.state.in_progress and (
            self._monotonic() - self._published_mono >= STATE_INTERVAL_S
        ):
            self._publish()

    def _publish(self, correlation: bytes | None = None) -> None:
        payload: dict[str, Any] = dict(self.controller.state_payload())
        self.sink.publish_exam_state(self.camera_id, payload, correlation)
        self._published_mono = self._monotonic()
        if self.on_state is not None:
            self.on_state(payload)


def _line(verdict: Mapping[str, Any] | None) -> VerdictLine | None:
    if not verdict:
        return None
    threshold = verdict.get("threshold")
    return VerdictLine(
        label=str(verdict["label"]),
        score=float(verdict["score"]),
        threshold=None if threshold is None else float(threshold),
        frames=int(verdict.get("frames", 0)),
        final=bool(verdict.get("final", False)),
    )


def _clock_text(seconds: float) -> str:
    whole = max(0, int(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def _rest_text(payload: Mapping[str, Any]) -> str | None:
    accl = payload.get("acclimatization")
    if not accl:
        return None
    text = f"rest {_clock_text(accl['elapsed_s'])} of {_clock_text(accl['required_s'])}"
    drift = accl.get("drift_c_per_min")
    if drift is not None:
        text += f", drift {drift:+.2f} C/min (limit {accl['drift_limit_c_per_min']:g})"
    return text
