"""Data that flows between stages: frozen dataclasses with units in the field names."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

KELVIN_OFFSET = 273.15
# Device, camera, session and exam ids: topic levels and schema fields (the schemas repeat it).
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class FrameKind(str, enum.Enum):
    """How a frame's pixels relate to temperature."""

    GRAY8 = "gray8"  # already rendered 8-bit image (JPEG/PNG, 8-bit camera): no temperature
    RAW16 = "raw16"  # radiometric counts: kelvin = raw * scale + offset
    CELSIUS = "celsius"  # float temperature matrix in degrees Celsius


@dataclass(frozen=True, eq=False)
class Frame:
    """One captured thermal frame.

    `pixels` is HxW: uint8 for gray8, uint16 for raw16, float32 for celsius.
    `capture_ts` is wall-clock seconds since the epoch (reported on the wire);
    `capture_mono_ns` is `time.monotonic_ns()` at capture (used for latency only).
    """

    pixels: npt.NDArray[np.generic]
    kind: FrameKind
    index: int
    source_id: str
    capture_ts: float
    capture_mono_ns: int
    pts_ns: int | None = None
    scale: float = 1.0
    offset: float = 0.0
    file: str | None = None  # replays of a folder: the file's name (no directory), else None

    def celsius(self) -> npt.NDArray[np.float32] | None:
        """Temperature in degrees Celsius, or None when the frame carries no temperature."""
        if self.kind is FrameKind.CELSIUS:
            return np.asarray(self.pixels, dtype=np.float32)
        if self.kind is FrameKind.RAW16:
            kelvin = self.pixels.astype(np.float32) * np.float32(self.scale) + np.float32(
                self.offset
            )
            return kelvin - np.float32(KELVIN_OFFSET)
        return None

    def celsius_of_count(self, count: int) -> float:
        """One raw16 count in Celsius, with the float32 steps of `celsius()`."""
        kelvin = np.float32(count) * np.float32(self.scale) + np.float32(self.offset)
        return float(kelvin - np.float32(KELVIN_OFFSET))


@dataclass(frozen=True)
class TopK:
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Prediction:
    """A classifier's answer, with imageNet semantics: index -1 and label "none" when no class
    reaches the threshold."""

    label: str
    index: int
    score: float
    scores: tuple[float, ...]
    top_k: tuple[TopK, ...] = field(default_factory=tuple)
    inference_ms: float = 0.0


@dataclass(frozen=True)
class ThermalStats:
    t_min_c: float
    t_max_c: float
    t_mean_c: float

    @staticmethod
    def of(celsius: npt.NDArray[np.float32] | None) -> ThermalStats | None:
        if celsius is None or celsius.size == 0:
            return None
        return ThermalStats(
            t_min_c=round(float(celsius.min()), 2),
            t_max_c=round(float(celsius.max()), 2),
            t_mean_c=round(float(celsius.mean()), 2),
        )

    @staticmethod
    def of_frame(frame: Frame) -> ThermalStats | None:
        """A frame's statistics. A 16-bit frame's come from its counts, with no float frame:
        the conversion is increasing, so the extremes are the counts' extremes converted with
        `Frame.celsius`'s own float32 steps (the same numbers), and the mean is the counts'
        exact mean converted in float64."""
        if frame.kind is not FrameKind.RAW16 or frame.scale <= 0 or frame.pixels.size == 0:
            return ThermalStats.of(frame.celsius())
        counts = frame.pixels
        lo = frame.celsius_of_count(int(counts.min()))
        hi = frame.celsius_of_count(int(counts.max()))
        mean = float(counts.sum(dtype=np.uint64)) / counts.size
        mean_c = mean * frame.scale + frame.offset - KELVIN_OFFSET
        return ThermalStats(round(lo, 2), round(hi, 2), round(mean_c, 2))


@dataclass(frozen=True)
class ModelInfo:
    """What a result says about the model that produced it."""

    name: str
    version: str
    sha256: str
    backend: str  # "onnxruntime" | "jetson"
    synthetic: bool = False  # the manifest says `synthetic: true` (a demo model, not medical)


@dataclass(frozen=True)
class ExamTag:
    """What a result says about the screening exam: which exam and view it belongs to (None
    outside one) and the quality gates' answer (`accepted` None when no gate ran: outside the
    capturing state)."""

    exam_id: str | None = None
    view: str | None = None
    accepted: bool | None = None
    reasons: tuple[str, ...] = ()


NO_EXAM = ExamTag()


@dataclass(frozen=True)
class FrameResult:
    """One classified frame of a session, before it becomes a wire payload."""

    session_id: str
    mode: str  # "live" | "replay"
    camera_id: str
    seq: int  # 0, 1, 2, ... per session, in publish order; gaps show lost results
    frame_index: int
    capture_ts: float  # wall-clock seconds since the epoch
    source: str
    prediction: Prediction
    thermal: ThermalStats | None
    capture_to_result_ms: float
    exam: ExamTag = NO_EXAM
    file: str | None = None  # folder replays: the file this frame came from
