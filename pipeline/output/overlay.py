"""What the operator sees on each annotated frame, drawn with OpenCV.

Radiometric frames (raw16, Celsius) are shown in a thermal palette mapped LINEARLY from Celsius
over a fixed window (the rendering window, else the frame's own range), with a scale bar whose
labels are the true temperatures of that mapping and a marker on the spot maximum. 8-bit frames
carry no temperature: they are shown in grey as recorded and get NO scale (a scale painted over
an equalized or 8-bit picture would claim temperatures the picture does not hold). The model's
equalized input is never what the operator sees.

Beside the picture: the exam (id, state, view, acclimatization), the rolling verdict (live
display, labelled as such) and the exam's verdict, each with its threshold, the quality gates
this frame failed, the frame's own label, SYNTHETIC MODEL when the model is a demo, and the
adjunct-only note. Pure functions: each takes the picture and what it draws and returns or fills
a BGR uint8 image, so what the overlay shows can change without touching the sinks.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.output.base import DEFAULT_OPTIONS, U8, OutputOptions, OverlayInfo, VerdictLine
from pipeline.types import Frame, Prediction

WHITE = (255, 255, 255)
LIGHT_GRAY = (200, 200, 200)
AMBER = (0, 190, 255)
RED = (32, 0, 176)
ADJUNCT_NOTE = "adjunct to mammography only - not a diagnosis"
SYNTHETIC_BANNER = "SYNTHETIC MODEL - demo, not a medical model"
F32 = npt.NDArray[np.float32]


def annotate(
    frame: Frame,
    prediction: Prediction | None,
    info: OverlayInfo | None = None,
    options: OutputOptions = DEFAULT_OPTIONS,
    size: tuple[int, int] | None = None,
) -> U8:
    """The annotated picture of one frame, BGR uint8 of `size` (w, h) (default: the frame's)."""
    celsius = frame.celsius()
    limits: tuple[float, float] | None = None
    if celsius is not None:
        limits = display_range_c(celsius, options.window_c)
        img = palette_image(celsius, limits, options.colormap)
    else:
        img = colorize(np.ascontiguousarray(frame.pixels, dtype=np.uint8), None)
    h0, w0 = img.shape[:2]
    if size is not None and (w0, h0) != size:
        img = np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
    scale = text_scale(img)
    if celsius is not None and limits is not None:
        draw_spot_max(img, celsius, scale)
        draw_scale(img, limits, options.colormap, scale)
    draw_lines(img, overlay_lines(prediction, frame.index, info), scale)
    if info is not None and info.synthetic_model:
        draw_banner(img, SYNTHETIC_BANNER, scale)
    draw_text(img, ADJUNCT_NOTE, (6, img.shape[0] - 6), scale * 0.6, LIGHT_GRAY)
    return img


def display_range_c(celsius: F32, window_c: tuple[float, float] | None) -> tuple[float, float]:
    """The Celsius span the palette covers: the fixed window (stable colours in a video), else
    the frame's 1st-99.5th percentile widened to at least 0.5 C."""
    if window_c is not None:
        return (float(window_c[0]), float(window_c[1]))
    finite = celsius[np.isfinite(celsius)]
    if finite.size == 0:
        return (20.0, 38.0)
    low, high = (float(v) for v in np.percentile(finite, [1.0, 99.5]))
    return (low, max(high, low + 0.5))


def palette_image(celsius: F32, limits_c: tuple[float, float], colormap: int | None) -> U8:
    """Celsius -> 0..255 linearly over `limits_c` (clipped; NaN as the low end) -> BGR."""
    low, high = limits_c
    span = max(high - low, 1e-6)
    level = np.clip((np.nan_to_num(celsius, nan=low) - low) * (255.0 / span), 0.0, 255.0)
    return colorize(np.ascontiguousarray(np.rint(level).astype(np.uint8)), colormap)


def overlay_lines(
    prediction: Prediction | None, frame_index: int, info: OverlayInfo | None
) -> list[tuple[str, tuple[int, int, int]]]:
    """The text lines at the top left, in order, each with its colour."""
    lines: list[tuple[str, tuple[int, int, int]]] = []
    if info is not None and info.exam_state is not None:
        where = f"exam {info.exam_id}: {info.exam_state}"
        lines.append((where + (f", view {info.view}" if info.view else ""), WHITE))
        if info.acclimatization:
            lines.append((info.acclimatization, LIGHT_GRAY))
    elif info is not None:
        lines.append(("no exam (live monitoring)", LIGHT_GRAY))
    if info is not None and info.rolling is not None:
        lines.append((verdict_text("rolling", info.rolling, "last"), WHITE))
    if info is not None and info.exam is not None:
        word = "exam verdict" if info.exam.final else "exam so far"
        lines.append((verdict_text(word, info.exam, "frames"), WHITE))
    if info is not None and info.rejected:
        lines.append((f"frame rejected: {', '.join(info.rejected)}", AMBER))
    if prediction is not None:
        label = prediction.label if prediction.index >= 0 else "none"
        lines.append((f"frame #{frame_index}: {label} {prediction.score:.2f}", LIGHT_GRAY))
    else:
        lines.append((f"frame #{frame_index}", LIGHT_GRAY))
    return lines


def verdict_text(name: str, verdict: VerdictLine, count_word: str) -> str:
    """e.g. `rolling: sick 0.62 (threshold 0.40, last 10)`."""
    held = "" if verdict.threshold is None else f"threshold {verdict.threshold:.2f}, "
    count = f"last {verdict.frames}" if count_word == "last" else f"{verdict.frames} frames"
    return f"{name}: {verdict.label} {verdict.score:.2f} ({held}{count})"


def text_scale(img: U8) -> float:
    """Font scale for an image: readable on small thermal frames, not huge on big ones."""
    h, w = img.shape[:2]
    return max(0.35, float(min(h, w)) / 900.0)


def colorize(gray: U8, colormap: int | None) -> U8:
    """Gray -> BGR, through an OpenCV colour map (None: stays gray)."""
    if colormap is None:
        return np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    return np.asarray(cv2.applyColorMap(gray, colormap), dtype=np.uint8)


def draw_text(
    img: U8, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int]
) -> None:
    """Text on a black box, so it reads on any part of the thermogram."""
    thick = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = org
    cv2.rectangle(img, (x - 2, y - h - 3), (x + w + 2, y + base + 1), (0, 0, 0), cv2.FILLED)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


def draw_lines(img: U8, lines: list[tuple[str, tuple[int, int, int]]], scale: float) -> None:
    step = round(26 * scale / 0.6)
    top = step * 2 if lines else 0  # room for the banner
    for i, (text, color) in enumerate(lines):
        draw_text(img, text, (6, top + i * step), scale, color)


def draw_banner(img: U8, text: str, scale: float) -> None:
    """A red band across the top: what no operator may miss."""
    thick = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    band = h + base + 8
    cv2.rectangle(img, (0, 0), (img.shape[1], band), RED, cv2.FILLED)
    x = max(4, (img.shape[1] - w) // 2)
    cv2.putText(img, text, (x, h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, WHITE, thick, cv2.LINE_AA)


def draw_spot_max(img: U8, celsius: F32, scale: float) -> None:
    """A cross on the hottest pixel and its temperature (the frame's spot maximum)."""
    if not np.isfinite(celsius).any():
        return
    y, x = np.unravel_index(int(np.nanargmax(celsius)), celsius.shape)
    sx = img.shape[1] / celsius.shape[1]
    sy = img.shape[0] / celsius.shape[0]
    cx, cy = round((x + 0.5) * sx), round((y + 0.5) * sy)
    arm = max(5, round(10 * scale / 0.6))
    cv2.drawMarker(img, (cx, cy), WHITE, cv2.MARKER_CROSS, arm * 2, max(1, round(scale * 2)))
    label = f"max {float(celsius[y, x]):.1f}C"
    tx = min(cx + arm, max(0, img.shape[1] - round(140 * scale / 0.6)))
    draw_text(img, label, (tx, max(cy - arm, 12)), scale * 0.7, WHITE)


def scale_ticks(limits_c: tuple[float, float]) -> list[float]:
    """Up to five round temperatures inside the palette's span, for the scale's labels."""
    low, high = limits_c
    for step in (0.5, 1.0, 2.0, 5.0, 10.0):
        first = np.ceil(low / step) * step
        ticks = [float(t) for t in np.arange(first, high + 1e-9, step)]
        if len(ticks) <= 5:
            return ticks
    return [low, high]


def draw_scale(img: U8, limits_c: tuple[float, float], colormap: int | None, scale: float) -> None:
    """A vertical colour bar at the right edge; each label sits at its true temperature."""
    h, w = img.shape[:2]
    bar_w = max(6, w // 40)
    top, bottom = h // 6, h - h // 6
    if bottom - top < 4:
        return
    x1 = w - bar_w - max(4, w // 20)
    ramp = np.linspace(255, 0, bottom - top).astype(np.uint8)[:, None]
    bar = colorize(np.ascontiguousarray(np.repeat(ramp, bar_w, axis=1)), colormap)
    img[top:bottom, x1 : x1 + bar_w] = bar
    cv2.rectangle(img, (x1 - 1, top - 1), (x1 + bar_w, bottom), WHITE, 1)
    low, high = limits_c
    size = scale * 0.6
    for t in scale_ticks(limits_c):
        y = round(bottom - 1 - (t - low) / max(high - low, 1e-6) * (bottom - top - 1))
        text = f"{t:.1f}C"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)
        cv2.line(img, (x1 - 4, y), (x1 - 1, y), WHITE, 1)
        draw_text(img, text, (max(0, x1 - 8 - tw), y + th // 2), size, WHITE)
