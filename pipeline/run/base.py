"""The run stage's contracts: what the stages hand each other and what they need from outside.

`ResultSink` is what the publish stage needs from the MQTT publisher (`ExamSink` what the
screening exam needs beside it); `ExamHook` is the exam's part of the publish thread (it tags each
result before it is published); `FrameConsumer` is how more per-frame work (the console's live
view) joins the publish thread without another queue or lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from pipeline.mqtt.publisher import PublisherStats
from pipeline.output.base import OverlayInfo
from pipeline.run.session import EndReason
from pipeline.types import ExamTag, Frame, FrameResult, ModelInfo, Prediction, ThermalStats


@dataclass(frozen=True)
class Classified:
    """A frame after preprocess + classify, on its way to the session and publisher."""

    frame: Frame
    gray: npt.NDArray[np.uint8]  # the rendered model input (equalized 8-bit)
    prediction: Prediction
    thermal: ThermalStats | None  # None for frames without temperature (8-bit video)
    capture_to_result_ms: float
    overlay: OverlayInfo | None = None  # what the annotated output draws beside the frame


class ResultSink(Protocol):
    """What the runner needs from the MQTT publisher (pipeline.mqtt.publisher.Publisher)."""

    def start(self) -> None: ...

    def publish_result(self, result: FrameResult, model: ModelInfo) -> str: ...

    def publish_state(self, camera_id: str, state: dict[str, Any]) -> None: ...

    def publish_session(self, camera_id: str, summary: dict[str, Any]) -> None: ...

    def publish_stats(self, stats: dict[str, Any]) -> None: ...

    def stop(self, flush_timeout_s: float) -> bool: ...

    def stats(self) -> PublisherStats: ...


@runtime_checkable
class ExamSink(Protocol):
    """What the screening exam needs from the MQTT publisher beside results."""

    def publish_exam_state(
        self, camera_id: str, payload: dict[str, Any], correlation: bytes | None = None
    ) -> None: ...

    def publish_exam_summary(self, camera_id: str, payload: dict[str, Any]) -> None: ...

    def subscribe(
        self, topic_filter: str, handler: Callable[[str, bytes, bytes | None], None]
    ) -> None: ...

    def topic(self, *parts: str) -> str: ...


class ExamHook(Protocol):
    """The screening exam's part of the publish thread (pipeline.run.exam.ExamTracker)."""

    def assess(self, item: Classified) -> ExamTag:
        """The exam, view and quality of one classified frame, before its result is published."""
        ...

    def overlay(self, item: Classified, rolling: dict[str, Any] | None) -> OverlayInfo:
        """What the annotated output shows with this frame (exam state, verdicts, banner)."""
        ...

    def idle(self) -> None:
        """Between results (and while none come): acclimatization ticks, periodic state."""
        ...

    def on_end(self, reason: EndReason) -> None:
        """The session is ending: an open exam is closed (a replay's) or aborted."""
        ...


class FrameConsumer(Protocol):
    """Per-frame work that runs in the publish thread, after each result is published.

    Called in capture order, one frame at a time, so a consumer keeps state without locks. It
    must not block for long: a live camera waits behind it. An exception ends the run (exit 1).
    """

    def on_result(self, item: Classified, result: FrameResult) -> None:
        """One published result with the frame it came from."""
        ...

    def on_end(self, reason: EndReason) -> None:
        """The session is ending (eos, stopped or error); the last call this consumer gets."""
        ...
