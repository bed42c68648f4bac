"""One camera's exams: the state machine, frames in, payloads and records out.

    idle -> acclimatizing -> ready -> capturing -> closed      (abort from any open state)

`ExamController` is pure bookkeeping: no threads, no I/O, time from an injected clock. The runner
feeds it commands (`handle`, the decoded `exam/set` JSON) and classified frames (`observe`), calls
`tick` now and then so acclimatization can end without frames, publishes `state_payload()` on
the retained `exam` topic, writes `record()` on every state change and stores the
`FinishedExam` a close or abort returns (`pipeline.exam.store.save_exam`). Public methods take
the controller's lock, so commands may arrive on another thread than frames.

A refused command (unknown action, wrong state, bad or reused id, unknown view, out-of-range
ambient) changes nothing; its one-line reason becomes `last_error` until the next accepted one.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np

from pipeline import __version__
from pipeline.exam.acclimatization import AcclimatizationStatus, DriftTracker
from pipeline.exam.commands import (
    CommandError,
    ExamCommand,
    ExamState,
    SensorReading,
    View,
    decode_command,
    generate_exam_id,
    parse_command,
)
from pipeline.exam.config import ExamConfig
from pipeline.exam.quality import (
    GateOutcome,
    Quality,
    QualityGates,
    gate_image,
    measure_body,
    work_frame,
)
from pipeline.exam.record import ExamRecord, FinishedExam, KeyFrame, OverrideRecord
from pipeline.exam.recordbuild import build_record, state_payload
from pipeline.exam.verdict import ExamModel, RollingScore, ViewTally, asymmetry
from pipeline.mqtt.payload import rfc3339_ms
from pipeline.types import Frame

DEFAULT_ABORT_REASON = "aborted by the operator"
NOT_OBSERVED_REASON = "started with a view: acclimatization not observed"
_ALLOWED: dict[str, tuple[ExamState, ...]] = {
    "start": (ExamState.IDLE, ExamState.CLOSED, ExamState.ABORTED),
    "ready": (ExamState.ACCLIMATIZING,),
    "view": (ExamState.READY, ExamState.CAPTURING),
    "close": (ExamState.READY, ExamState.CAPTURING),
    "abort": (ExamState.ACCLIMATIZING, ExamState.READY, ExamState.CAPTURING),
}


P = ParamSpec("P")
R = TypeVar("R")


def _locked(
    method: Callable[Concatenate[ExamController, P], R],
) -> Callable[Concatenate[ExamController, P], R]:
    """Run a public method under the controller's lock: commands arrive on the MQTT or console
    thread while frames arrive on the classify stage's thread."""

    def wrapper(self: ExamController, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return method(self, *args, **kwargs)

    functools.update_wrapper(wrapper, method)  # name, docstring and signature for help()
    return wrapper


@dataclass(frozen=True)
class ExamContext:
    """What stays fixed for one camera: ids, the (redacted) source and its camera profile."""

    device_id: str
    camera_id: str
    source: str
    profile: str | None = None
    software_version: str = __version__


@dataclass(frozen=True)
class CommandOutcome:
    """The answer to one command. `finished` is set when it closed or aborted an exam."""

    ok: bool
    error: str | None
    state: ExamState
    exam_id: str | None
    finished: FinishedExam | None = None


@dataclass(frozen=True)
class FrameAssessment:
    """What the runner adds to a frame's result: the exam, the view and the gates' answer.

    `quality` is None outside `capturing` (no view, nothing to gate); `counted` is True when the
    frame is accepted AND of a view the model was trained on, i.e. part of the exam verdict.
    """

    exam_id: str | None
    view: View | None
    quality: Quality | None
    counted: bool
    state_changed: bool

    def result_fields(self) -> dict[str, object]:
        """The result payload's additions: `exam_id`, `view` and `quality` (null outside)."""
        return {
            "exam_id": self.exam_id,
            "view": self.view,
            "quality": None if self.quality is None else self.quality.to_dict(),
        }


@dataclass
class OpenExam:
    """The mutable state of the current (or last) exam; read by `recordbuild`."""

    exam_id: str
    started_s: float
    tracker: DriftTracker
    state: ExamState = ExamState.ACCLIMATIZING
    view: View | None = None
    ready_s: float | None = None
    ready_status: AcclimatizationStatus | None = None
    override: OverrideRecord | None = None
    not_observed_reason: str | None = None
    capture_started_s: float | None = None
    ended_s: float | None = None
    abort_reason: str | None = None
    ambient_c: float | None = None
    humidity_pct: float | None = None
    ambient_source: str | None = None
    ambient_s: float | None = None
    tallies: dict[View, ViewTally] = field(default_factory=dict)
    keys: dict[View, tuple[float, KeyFrame]] = field(default_factory=dict)
    scores: list[tuple[float, View, float]] = field(default_factory=list)
    score_stride: int = 1
    score_seen: int = 0
    last_quality: Quality | None = None


class ExamController:
    """The exams of one camera, one at a time."""

    def __init__(
        self,
        cfg: ExamConfig,
        model: ExamModel,
        context: ExamContext,
        clock: Callable[[], float] = time.time,
        id_taken: Callable[[str], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.context = context
        self._clock = clock
        self._id_taken = id_taken
        self._used: set[str] = set()
        self._lock = threading.RLock()
        self._gates = QualityGates(cfg.gates)
        self._rolling = RollingScore(cfg.rolling_frames)
        self.exam: OpenExam | None = None
        self.last_error: str | None = None
        self.updated_s = clock()

    @property
    def state(self) -> ExamState:
        return ExamState.IDLE if self.exam is None else self.exam.state

    # --- commands ----------------------------------------------------------------------------

    @_locked
    def handle(self, data: object) -> CommandOutcome:
        """A decoded `exam/set` object (e.g. from the CLI or the console)."""
        try:
            command = parse_command(data, self.cfg.ambient_c_range)
        except CommandError as exc:
            return self._refuse(str(exc))
        return self.apply(command)

    @_locked
    def handle_json(self, raw: bytes | str) -> CommandOutcome:
        """A raw `exam/set` MQTT payload."""
        try:
            command = decode_command(raw, self.cfg.ambient_c_range)
        except CommandError as exc:
            return self._refuse(str(exc))
        return self.apply(command)

    @_locked
    def apply(self, command: ExamCommand) -> CommandOutcome:
        """Apply a validated command, or refuse it without changing anything."""
        if self.state not in _ALLOWED[command.action]:
            return self._refuse(self._wrong_state(command.action))
        now = self._clock()
        finished: FinishedExam | None = None
        if command.action == "start":
            error = self._start(command, now)
            if error is not None:
                return self._refuse(error)
        elif command.action == "ready":
            self._ready(command, now)
        elif command.action == "view":
            self._view(command, now)
        else:
            finished = self._end(command, now)
        self.last_error = None
        self.updated_s = now
        return CommandOutcome(True, None, self.state, self._exam_id(), finished)

    @_locked
    def set_ambient(self, reading: SensorReading, source: str = "sensor") -> bool:
        """A room reading for the open exam (sensor topic); False when no exam is open."""
        if self.exam is None or not self.exam.state.in_progress:
            return False
        self._ambient(reading.ambient_c, reading.humidity_pct, source, self._clock())
        return True

    def _refuse(self, message: str) -> CommandOutcome:
        self.last_error = message
        self.updated_s = self._clock()
        return CommandOutcome(False, message, self.state, self._exam_id())

    def _wrong_state(self, action: str) -> str:
        state = self.state.value
        allowed = " or ".join(s.value for s in _ALLOWED[action])
        if action == "start" and self.exam is not None:
            return (
                f"start: exam {self.exam.exam_id} is {state}; close or abort it before starting "
                "another"
            )
        hint = "; abort ends an exam early" if action == "close" else ""
        return f"{action}: refused while {state}; '{action}' needs {allowed}{hint}"

    def _exam_id(self) -> str | None:
        return None if self.exam is None else self.exam.exam_id

    def _start(self, command: ExamCommand, now: float) -> str | None:
        exam_id = command.exam_id
        if exam_id is not None and self._taken(exam_id):
            return f"exam_id: {exam_id} was already used; every exam needs a new accession code"
        while exam_id is None or self._taken(exam_id):
            exam_id = generate_exam_id(now)
        self._used.add(exam_id)
        exam = OpenExam(exam_id, now, DriftTracker(self.cfg.acclimatization, now))
        self.exam = exam
        self._gates.reset()
        self._rolling.clear()
        self._ambient(command.ambient_c, command.humidity_pct, "command", now)
        if command.view is not None:  # replays: capture at once, acclimatization not observed
            exam.not_observed_reason = command.reason or NOT_OBSERVED_REASON
            exam.ready_s = now
            exam.ready_status = exam.tracker.status(now)
            self._view(command, now)
        return None

    def _taken(self, exam_id: str) -> bool:
        return exam_id in self._used or bool(self._id_taken and self._id_taken(exam_id))

    def _ready(self, command: ExamCommand, now: float) -> None:
        exam = self.exam
        assert exam is not None
        status = exam.tracker.status(now)
        if not status.ready:
            exam.override = OverrideRecord(
                at=rfc3339_ms(now),
                elapsed_s=round(status.elapsed_s, 3),
                drift_c_per_min=_round(status.drift_c_per_min, 4),
                reason=command.reason,
            )
        self._ambient(command.ambient_c, command.humidity_pct, "command", now)
        self._become_ready(status, now)

    def _become_ready(self, status: AcclimatizationStatus, now: float) -> None:
        exam = self.exam
        assert exam is not None
        exam.state = ExamState.READY
        exam.ready_s = now
        exam.ready_status = status

    def _view(self, command: ExamCommand, now: float) -> None:
        exam = self.exam
        assert exam is not None and command.view is not None
        self._ambient(command.ambient_c, command.humidity_pct, "command", now)
        if exam.state is ExamState.CAPTURING and exam.view == command.view:
            return
        exam.state = ExamState.CAPTURING
        exam.view = command.view
        exam.capture_started_s = exam.capture_started_s or now
        exam.tallies.setdefault(command.view, ViewTally(command.view))
        self._gates.reset()

    def _end(self, command: ExamCommand, now: float) -> FinishedExam:
        exam = self.exam
        assert exam is not None
        self._ambient(command.ambient_c, command.humidity_pct, "command", now)
        if command.action == "abort":
            exam.state = ExamState.ABORTED
            exam.abort_reason = command.reason or DEFAULT_ABORT_REASON
        else:
            exam.state = ExamState.CLOSED
        exam.ended_s = now
        record = self.record()
        assert record is not None
        keys = tuple(key for _, key in exam.keys.values())
        return FinishedExam(record=record, key_frames=keys if command.action == "close" else ())

    def _ambient(
        self, ambient_c: float | None, humidity_pct: float | None, source: str, now: float
    ) -> None:
        exam = self.exam
        if exam is None or (ambient_c is None and humidity_pct is None):
            return
        if ambient_c is not None:
            exam.ambient_c = ambient_c
        if humidity_pct is not None:
            exam.humidity_pct = humidity_pct
        exam.ambient_source, exam.ambient_s = source, now

    # --- frames ------------------------------------------------------------------------------

    @_locked
    def observe(self, frame: Frame, scores: Sequence[float]) -> FrameAssessment:
        """One classified frame (`scores`: the classifier's probabilities, model label order)."""
        if len(scores) != len(self.model.labels):
            raise ValueError(f"{len(scores)} scores for {len(self.model.labels)} model labels")
        exam = self.exam
        if exam is None or not exam.state.in_progress:
            return FrameAssessment(self._exam_id(), None, None, False, False)
        now = self._clock()
        if exam.state is ExamState.ACCLIMATIZING:
            self._sample_skin(exam, frame, now)
            return FrameAssessment(exam.exam_id, None, None, False, self.tick())
        if exam.state is ExamState.READY:
            return FrameAssessment(exam.exam_id, None, None, False, False)
        assert exam.view is not None
        outcome = self._gates.check(frame, exam.ambient_c)
        counted = self._count(
            exam, exam.view, frame, outcome, float(scores[self.model.positive_index]), now
        )
        exam.last_quality = outcome.quality
        return FrameAssessment(exam.exam_id, exam.view, outcome.quality, counted, False)

    @_locked
    def tick(self) -> bool:
        """End acclimatization when its criteria are met; True when the state changed."""
        exam = self.exam
        if exam is None or exam.state is not ExamState.ACCLIMATIZING:
            return False
        now = self._clock()
        status = exam.tracker.status(now)
        if not status.ready:
            return False
        self._become_ready(status, now)
        self.updated_s = now
        return True

    def _sample_skin(self, exam: OpenExam, frame: Frame, now: float) -> None:
        celsius = frame.celsius()
        exam.tracker.saw_frame(celsius is not None)
        if celsius is None or not exam.tracker.due(now):
            return
        work = work_frame(frame)
        gates = self.cfg.gates
        gray = gate_image(work, gates.window_c)
        body = measure_body(work, gray, work.celsius(), gates.min_contrast_levels)
        if body.skin_mean_c is not None:
            exam.tracker.add(now, body.skin_mean_c)

    def _count(
        self,
        exam: OpenExam,
        view: View,
        frame: Frame,
        outcome: GateOutcome,
        positive: float,
        now: float,
    ) -> bool:
        tally = exam.tallies.setdefault(view, ViewTally(view))
        quality = outcome.quality
        if not quality.accepted:
            tally.reject(quality.reasons)
            return False
        positive = min(1.0, max(0.0, positive)) if np.isfinite(positive) else 0.0
        asym = None if outcome.celsius is None else asymmetry(outcome.celsius, outcome.body.mask)
        tally.accept(positive, quality.skin_mean_c, quality.skin_p95_c, asym)
        t_s = now - exam.started_s
        self._keep_key(exam, view, frame, outcome, positive, t_s)
        if view not in self.model.views:
            return False
        self._rolling.add(positive)
        self._add_score(exam, t_s, view, positive)
        return True

    def _keep_key(
        self,
        exam: OpenExam,
        view: View,
        frame: Frame,
        outcome: GateOutcome,
        score: float,
        t_s: float,
    ) -> None:
        """Each view keeps its steadiest accepted frame (least motion; the first on a tie)."""
        motion = outcome.quality.motion_levels
        rank = float("inf") if motion is None else motion
        if view in exam.keys and exam.keys[view][0] <= rank:
            return
        full = frame.celsius()  # the key frame keeps every pixel, not the gates' subsample
        celsius = None if full is None else np.array(full, dtype=np.float32)
        gray = None if celsius is not None else np.array(frame.pixels, dtype=np.uint8)
        exam.keys[view] = (rank, KeyFrame(view, frame.index, t_s, score, celsius, gray))

    def _add_score(self, exam: OpenExam, t_s: float, view: View, score: float) -> None:
        """Score over time for the report, thinned evenly to at most max_score_points."""
        exam.score_seen += 1
        if (exam.score_seen - 1) % exam.score_stride:
            return
        exam.scores.append((round(t_s, 3), view, round(score, 6)))
        if len(exam.scores) >= self.cfg.max_score_points:
            exam.scores = exam.scores[::2]
            exam.score_stride *= 2

    # --- views of the state ------------------------------------------------------------------

    @_locked
    def record(self) -> ExamRecord | None:
        """The current (or last) exam's record, for exam.json; None before the first exam."""
        if self.exam is None:
            return None
        return build_record(self, self.exam, self._clock())

    @_locked
    def state_payload(self) -> dict[str, object]:
        """The retained `exam` topic's message (schema: pipeline/mqtt/schemas/exam.schema.json)."""
        return state_payload(self, self._clock(), self._rolling.to_dict(self.model))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
