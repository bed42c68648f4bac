"""Per-frame quality gates of an exam, each failure named, and the body mask they rest on.

Body mask: the frame is rendered to 8 bits WITHOUT equalization (radiometric frames through the
fixed `gates.window_c`, 8-bit frames as they are), thresholded with Otsu's method (the body is
warmer than the room, so the grey-level histogram is bimodal), and only the largest connected
region is kept (the torso; stray warm objects drop out). A region less than
`min_contrast_levels` warmer than the rest is no body at all (a frame filled with skin, or an
empty room). It is deliberately simple: a framing check and a region for skin statistics, not a
segmentation of the breasts.

Cost: the gates measure a subsampled frame (every s-th pixel so that at most WORK_WIDTH columns
remain; exact values, no averaging), which keeps them cheap beside the classifier at camera rate.

Gates (a frame failing any is published with its reasons and does not count for the exam):
- `skin-temperature` (radiometric): the body's 95th percentile lies in `skin_p95_c`;
- `ambient` (radiometric, ambient known): the room is not warmer than the body's mean skin
  temperature plus `ambient_margin_c`;
- `framing`: the body mask's share of the frame lies in `body_fraction`;
- `motion`: the mean absolute change from the previous frame (the 8-bit gate rendering of the
  subsampled frame, halved again by area averaging so sensor noise does not count) is at most
  `motion_max_levels`;
- `saturation`: at most `saturation_max_fraction` of body pixels sit at the sensor's ceiling or
  floor (0/255 for 8-bit, 0/65535 for 16-bit counts, the frame's extreme value for Celsius
  matrices, where clipping shows as a plateau);
- `frozen`: the frame is bit-identical to the previous one (a flat-field correction or a stalled
  driver repeats frames).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.exam.config import GateConfig
from pipeline.preprocess import render_celsius
from pipeline.types import Frame, FrameKind

GateName = Literal["skin-temperature", "ambient", "framing", "motion", "saturation", "frozen"]
GATE_NAMES: tuple[GateName, ...] = (
    "skin-temperature",
    "ambient",
    "framing",
    "motion",
    "saturation",
    "frozen",
)
U8 = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
F32 = npt.NDArray[np.float32]
_MOTION_REDUCE = 2
WORK_WIDTH = 320  # gates and statistics run on at most this many columns


def work_frame(frame: Frame) -> Frame:
    """The frame the gates measure: every s-th pixel in both directions so that the width is at
    most WORK_WIDTH (exact values, no averaging, so saturation and temperatures stay true)."""
    step = max(1, -(-int(frame.pixels.shape[1]) // WORK_WIDTH))
    if step == 1:
        return frame
    return dataclasses.replace(frame, pixels=np.ascontiguousarray(frame.pixels[::step, ::step]))


def gate_image(frame: Frame, window_c: tuple[float, float]) -> U8:
    """The 8-bit picture the gates look at: fixed-window rendering, never equalized."""
    if frame.kind is FrameKind.GRAY8:
        return np.ascontiguousarray(frame.pixels, dtype=np.uint8)
    celsius = frame.celsius()
    assert celsius is not None  # raw16 and celsius frames carry temperature
    return render_celsius(np.nan_to_num(celsius, nan=window_c[0]), window_c)


def body_mask(gray: U8, min_contrast_levels: float = 0.0) -> Mask:
    """Otsu threshold, then the largest connected region (8-connectivity).

    Empty when the frame is flat or when the region is less than `min_contrast_levels` warmer
    (in grey levels) than the rest: Otsu always splits a histogram in two, so a frame filled
    with skin (or with nothing but the room) would otherwise yield a "body".
    """
    empty = np.zeros(gray.shape, dtype=bool)
    if gray.size == 0 or int(gray.min()) == int(gray.max()):
        return empty
    _, binary = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count < 2:
        return empty
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask: Mask = labels == largest
    if mask.all():
        return empty
    if float(gray[mask].mean()) - float(gray[~mask].mean()) < min_contrast_levels:
        return empty
    return mask


def percentile(values: F32, q: float) -> float:
    """np.percentile's default (linear) interpolation via one partition: several times faster
    on a frame's worth of pixels."""
    flat = values.ravel()
    pos = (flat.size - 1) * q / 100.0
    lo = int(np.floor(pos))
    hi = min(lo + 1, flat.size - 1)
    part = np.partition(flat, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (pos - lo))


@dataclass(frozen=True, eq=False)
class BodyMeasure:
    """The body mask of one frame and the skin statistics inside it (Celsius when known)."""

    mask: Mask
    fraction: float
    skin_mean_c: float | None
    skin_p95_c: float | None


def measure_body(
    frame: Frame, gray: U8, celsius: F32 | None, min_contrast_levels: float = 0.0
) -> BodyMeasure:
    """Mask and skin statistics; temperature statistics only for radiometric frames."""
    mask = body_mask(gray, min_contrast_levels)
    fraction = float(mask.mean()) if mask.size else 0.0
    mean_c: float | None = None
    p95_c: float | None = None
    if celsius is not None:
        skin = celsius[mask]
        skin = skin[np.isfinite(skin)]
        if skin.size:
            mean_c = float(skin.mean())
            p95_c = percentile(skin, 95.0)
    return BodyMeasure(mask=mask, fraction=fraction, skin_mean_c=mean_c, skin_p95_c=p95_c)


def saturation_fraction(frame: Frame, mask: Mask) -> float:
    """Share of body pixels at the sensor's ceiling or floor (see the module docstring)."""
    if not mask.any():
        return 0.0
    body = np.asarray(frame.pixels)[mask]
    if frame.kind is FrameKind.CELSIUS:
        finite = np.asarray(frame.pixels)[np.isfinite(frame.pixels)]
        if finite.size == 0:
            return 1.0
        low, high = float(finite.min()), float(finite.max())
        if low == high:
            return 1.0
    else:
        info = np.iinfo(body.dtype) if np.issubdtype(body.dtype, np.integer) else None
        low, high = (float(info.min), float(info.max)) if info else (0.0, 1.0)
    clipped = np.count_nonzero((body <= low) | (body >= high))
    return float(clipped) / float(body.size)


def _reduced(gray: U8) -> F32:
    h, w = gray.shape[:2]
    size = (max(1, w // _MOTION_REDUCE), max(1, h // _MOTION_REDUCE))
    return np.asarray(cv2.resize(gray, size, interpolation=cv2.INTER_AREA), dtype=np.float32)


def motion_levels(previous: F32, current: F32) -> float:
    """Mean absolute change between two reduced gate renderings, in grey levels."""
    if previous.shape != current.shape:
        return float("inf")  # the frame size changed: never treat that as a steady view
    return float(np.mean(np.abs(current - previous)))


@dataclass(frozen=True)
class Quality:
    """The gates' answer for one frame; `reasons` names every failed gate, in GATE_NAMES order."""

    accepted: bool
    reasons: tuple[GateName, ...]
    body_fraction: float
    skin_mean_c: float | None
    skin_p95_c: float | None
    motion_levels: float | None  # None for the first frame of a view
    saturation_fraction: float

    def to_dict(self) -> dict[str, object]:
        """The result payload's `quality` object."""
        return {"accepted": self.accepted, "reasons": list(self.reasons)}


@dataclass(frozen=True, eq=False)
class GateOutcome:
    """Quality plus the body measure, so callers reuse the mask (asymmetry, skin samples)."""

    quality: Quality
    body: BodyMeasure
    celsius: F32 | None


class QualityGates:
    """The gates with the one piece of memory they need: the previous frame of the same view."""

    def __init__(self, cfg: GateConfig) -> None:
        self.cfg = cfg
        self._previous: F32 | None = None
        self._pixels: npt.NDArray[np.generic] | None = None

    def reset(self) -> None:
        """Forget the previous frame (a new exam or view: motion starts afresh)."""
        self._previous = None
        self._pixels = None

    def check(self, frame: Frame, ambient_c: float | None = None) -> GateOutcome:
        """Gate one frame; the outcome's mask and Celsius are those of `work_frame(frame)`."""
        work = work_frame(frame)
        celsius = work.celsius()
        gray = gate_image(work, self.cfg.window_c)
        body = measure_body(work, gray, celsius, self.cfg.min_contrast_levels)
        reduced = _reduced(gray)
        motion = None if self._previous is None else motion_levels(self._previous, reduced)
        frozen = self._pixels is not None and np.array_equal(self._pixels, frame.pixels)
        self._previous, self._pixels = reduced, np.array(frame.pixels, copy=True)
        saturation = saturation_fraction(work, body.mask)
        failed = self._failed(body, celsius is not None, ambient_c, motion, saturation, frozen)
        quality = Quality(
            accepted=not failed,
            reasons=tuple(name for name in GATE_NAMES if name in failed),
            body_fraction=round(body.fraction, 4),
            skin_mean_c=None if body.skin_mean_c is None else round(body.skin_mean_c, 3),
            skin_p95_c=None if body.skin_p95_c is None else round(body.skin_p95_c, 3),
            motion_levels=None if motion is None else round(motion, 3),
            saturation_fraction=round(saturation, 4),
        )
        return GateOutcome(quality=quality, body=body, celsius=celsius)

    def _failed(
        self,
        body: BodyMeasure,
        radiometric: bool,
        ambient_c: float | None,
        motion: float | None,
        saturation: float,
        frozen: bool,
    ) -> set[GateName]:
        cfg = self.cfg
        failed: set[GateName] = set()
        if radiometric:
            p95 = body.skin_p95_c
            if p95 is None or not cfg.skin_p95_c[0] <= p95 <= cfg.skin_p95_c[1]:
                failed.add("skin-temperature")
            mean = body.skin_mean_c
            if ambient_c is not None and (mean is None or ambient_c > mean + cfg.ambient_margin_c):
                failed.add("ambient")
        if not cfg.body_fraction[0] <= body.fraction <= cfg.body_fraction[1]:
            failed.add("framing")
        if motion is not None and motion > cfg.motion_max_levels:
            failed.add("motion")
        if saturation > cfg.saturation_max_fraction:
            failed.add("saturation")
        if frozen:
            failed.add("frozen")
        return failed
