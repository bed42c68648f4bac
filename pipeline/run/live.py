"""A thread-safe window onto a running camera: what the operator console (or any other watcher)
reads and sends without ever slowing a stage.

    live = LiveView()
    summary = run(cfg, live=live)               # in one thread; `run` wires the view in

    # any other thread (an HTTP handler):
    shown = live.latest()                       # newest classified frame + overlay, or None
    jpeg_ready = live.annotated()               # (seq, BGR image) drawn in THIS thread, cached
    state = live.exam_state()                   # the retained `exam` message, or None
    numbers = live.health()                     # capture, classify, MQTT, outbox, exam counters
    answer = live.submit_exam_command({"action": "start", "exam_id": "ACC-17"})
    answer.ok, answer.error, answer.state       # the same validation and answer as `exam/set`

The publish thread hands the view references it already holds (the newest frame, its overlay
info, the exam payload it just published); storing them is one assignment under a lock. The
picture is drawn only when someone asks for it, in the asker's thread, and at most once per
frame. Exam commands go through the run's bounded command inbox into the publish thread, the one
owner of the exam's state, exactly like an MQTT `exam/set` command: a full inbox answers "busy"
at once instead of queueing without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from pipeline.output.base import DEFAULT_OPTIONS, U8, OutputOptions, OverlayInfo
from pipeline.output.overlay import annotate
from pipeline.run.base import Classified
from pipeline.run.exam import ExamTracker
from pipeline.run.inbox import InboxClosed
from pipeline.run.session import EndReason
from pipeline.types import ExamTag, Frame, FrameResult, Prediction

COMMAND_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LiveFrame:
    """The newest classified frame and what goes with it (all immutable, safe to share)."""

    seq: int  # the result's seq in this session
    frame: Frame  # pixels as captured; `frame.celsius()` for radiometric sources
    prediction: Prediction
    exam: ExamTag  # exam id, view and the gates' answer of this frame
    overlay: OverlayInfo  # exam state, rolling and exam verdicts, SYNTHETIC banner
    received_mono: float  # time.monotonic() when the publish thread handed it over


@dataclass(frozen=True)
class CommandAnswer:
    """The answer to an exam command: accepted or refused (one line), and the exam state after."""

    ok: bool
    error: str | None
    state: dict[str, Any] | None


class ExamUnavailable(RuntimeError):
    """This run has no exams (the model has no positive class, or no MQTT publisher)."""


HealthProbe = Callable[[], dict[str, Any]]


class LiveView:
    """See the module docstring. One per run; implements the FrameConsumer protocol."""

    def __init__(self, options: OutputOptions = DEFAULT_OPTIONS) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._latest: LiveFrame | None = None
        self._exam_state: dict[str, Any] | None = None
        self._drawn: tuple[int, U8] | None = None
        self._draw_lock = threading.Lock()
        self._tracker: ExamTracker | None = None
        self._probe: HealthProbe | None = None
        self._ended: EndReason | None = None

    # --- wiring and the publish thread ---------------------------------------------------------

    def bind(self, tracker: ExamTracker | None, probe: HealthProbe | None) -> None:
        """Called once by `run` before the stages start."""
        self._tracker = tracker
        self._probe = probe

    def on_result(self, item: Classified, result: FrameResult) -> None:
        shown = LiveFrame(
            seq=result.seq,
            frame=item.frame,
            prediction=item.prediction,
            exam=result.exam,
            overlay=item.overlay or OverlayInfo(),
            received_mono=time.monotonic(),
        )
        with self._lock:
            self._latest = shown

    def on_end(self, reason: EndReason) -> None:
        with self._lock:
            self._ended = reason

    def on_exam_state(self, payload: dict[str, Any]) -> None:
        """The exam tracker publishes a state: keep it (the payload is never changed after)."""
        with self._lock:
            self._exam_state = payload

    # --- any thread ----------------------------------------------------------------------------

    def latest(self) -> LiveFrame | None:
        with self._lock:
            return self._latest

    def annotated(self) -> tuple[int, U8] | None:
        """(seq, BGR image) of the newest frame with its overlay, drawn in the caller's thread;
        the same frame is drawn once however many viewers ask."""
        shown = self.latest()
        if shown is None:
            return None
        with self._draw_lock:
            if self._drawn is not None and self._drawn[0] == shown.seq:
                return self._drawn
            image = annotate(shown.frame, shown.prediction, shown.overlay, self.options)
            self._drawn = (shown.seq, image)
            return self._drawn

    def exam_state(self) -> dict[str, Any] | None:
        """The newest `exam` state message (as on MQTT), or None before the first."""
        with self._lock:
            return self._exam_state

    @property
    def exams_enabled(self) -> bool:
        return self._tracker is not None

    @property
    def ended(self) -> EndReason | None:
        """How the run ended (eos, stopped, error), or None while it runs."""
        with self._lock:
            return self._ended

    def health(self) -> dict[str, Any]:
        """Numbers for /healthz and /metrics (see `pipeline.run.wiring.health_probe`)."""
        shown = self.latest()
        numbers = self._probe() if self._probe is not None else {}
        numbers["last_result_age_s"] = (
            None if shown is None else round(time.monotonic() - shown.received_mono, 3)
        )
        numbers["ended"] = self.ended
        return numbers

    def submit_exam_command(
        self, data: Mapping[str, Any], timeout_s: float = COMMAND_TIMEOUT_S
    ) -> CommandAnswer:
        """Validate and apply an `exam/set` command in the publish thread; wait for its answer.

        Raises ExamUnavailable when this run has no exams. A full inbox, an ended run or no
        answer within `timeout_s` come back as a refused answer with the reason."""
        tracker = self._tracker
        if tracker is None:
            raise ExamUnavailable("exams are off for this run (see the run's log)")
        try:
            outcome = tracker.submit(data).result(timeout=timeout_s)
        except queue.Full:
            return CommandAnswer(False, "busy: the run is behind; try again", self.exam_state())
        except InboxClosed:
            return CommandAnswer(False, "the run has ended", self.exam_state())
        except FutureTimeout:
            return CommandAnswer(False, f"no answer within {timeout_s:g} s", self.exam_state())
        return CommandAnswer(outcome.ok, outcome.error, self.exam_state())
