"""Shared pieces of the exam unit tests: a settable clock, frames and a model."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline.exam.verdict import ExamModel
from pipeline.types import Frame, FrameKind

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

MODEL = ExamModel(
    name="tiny",
    version="1",
    sha256="a" * 64,
    synthetic=False,
    labels=("healthy", "sick"),
    positive_label="sick",
    threshold=0.4,
    threshold_source="manifest",
)


class Clock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def celsius_frame(pixels: npt.NDArray[np.float32], index: int = 0) -> Frame:
    return Frame(
        pixels=np.asarray(pixels, dtype=np.float32),
        kind=FrameKind.CELSIUS,
        index=index,
        source_id="test",
        capture_ts=T0 + index,
        capture_mono_ns=index,
    )


def gray_frame(pixels: npt.NDArray[np.uint8], index: int = 0) -> Frame:
    return Frame(
        pixels=np.asarray(pixels, dtype=np.uint8),
        kind=FrameKind.GRAY8,
        index=index,
        source_id="test",
        capture_ts=T0 + index,
        capture_mono_ns=index,
    )


def scores(p_sick: float) -> tuple[float, float]:
    return (1.0 - p_sick, p_sick)
