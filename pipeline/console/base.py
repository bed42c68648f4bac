"""What the console needs from a running camera, as a Protocol: the run's thread-safe live
window (`pipeline.run.live.LiveView` implements it). The console only reads from it and submits
exam commands through it; it never touches a stage's queue or state directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from pipeline.types import Frame

U8 = npt.NDArray[np.uint8]


class VerdictView(Protocol):
    """A verdict as the overlay shows it (pipeline.output.base.VerdictLine)."""

    @property
    def label(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def threshold(self) -> float | None: ...

    @property
    def frames(self) -> int: ...


class OverlayView(Protocol):
    """What is drawn beside a frame (pipeline.output.base.OverlayInfo), as far as the page
    needs it."""

    @property
    def rolling(self) -> VerdictView | None: ...

    @property
    def rejected(self) -> tuple[str, ...]: ...

    @property
    def synthetic_model(self) -> bool: ...


class ShownFrame(Protocol):
    """The newest classified frame as the live window holds it."""

    @property
    def overlay(self) -> OverlayView: ...

    @property
    def seq(self) -> int: ...

    @property
    def frame(self) -> Frame: ...

    @property
    def received_mono(self) -> float: ...


class CommandReply(Protocol):
    """The run's answer to an exam command (the same judgement as MQTT `exam/set`)."""

    @property
    def ok(self) -> bool: ...

    @property
    def error(self) -> str | None: ...

    @property
    def state(self) -> dict[str, Any] | None: ...


class LiveWindow(Protocol):
    """Everything the console reads; every method is safe from any thread and returns at once
    (except `submit_exam_command`, which waits for the run's answer, bounded)."""

    @property
    def exams_enabled(self) -> bool: ...

    def latest(self) -> ShownFrame | None: ...

    def annotated(self) -> tuple[int, U8] | None:
        """(seq, BGR image) of the newest frame with its overlay, drawn in the caller's thread."""
        ...

    def exam_state(self) -> dict[str, Any] | None:
        """The retained MQTT `exam` payload, or None before the first (or with exams off)."""
        ...

    def health(self) -> dict[str, Any]:
        """Counters of capture, classification, MQTT and outbox, and the exam's (see
        pipeline.run.wiring.health_numbers)."""
        ...

    def submit_exam_command(self, data: Mapping[str, Any], timeout_s: float = ...) -> CommandReply:
        """Validate and apply an `exam/set` command in the run's exam owner; wait for it."""
        ...
