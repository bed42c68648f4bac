"""What the operator sees on each annotated frame, drawn with OpenCV on the rendered frame.

Pure functions: each takes the picture and everything it draws as arguments and returns or
fills a BGR uint8 image, so what the overlay shows can change without touching the sinks.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.output.base import DEFAULT_OPTIONS, U8, OutputOptions
from pipeline.types import Prediction, ThermalStats

WHITE = (255, 255, 255)
LIGHT_GRAY = (200, 200, 200)
ADJUNCT_NOTE = "adjunct only - not a diagnosis"


def annotate(
    gray8: U8,
    prediction: Prediction | None,
    thermal: ThermalStats | None,
    frame_index: int,
    options: OutputOptions = DEFAULT_OPTIONS,
    size: tuple[int, int] | None = None,
) -> U8:
    """The equalized frame, colour-mapped, with label, score, frame index and a temperature
    scale (the window's limits, else the frame's t_min/t_max); BGR uint8 of `size` (w, h)."""
    gray = np.ascontiguousarray(gray8, dtype=np.uint8)
    if size is not None and (gray.shape[1], gray.shape[0]) != size:
        gray = np.asarray(cv2.resize(gray, size, interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
    img = colorize(gray, options.colormap)
    h = img.shape[0]
    scale = text_scale(img)
    line = round(28 * scale / 0.75)
    if prediction is not None:
        label = prediction.label if prediction.index >= 0 else "none"
        draw_text(img, f"{label} {prediction.score:.2f}", (6, line), scale, WHITE)
    draw_text(img, f"#{frame_index}", (6, 2 * line + 2), scale * 0.8, LIGHT_GRAY)
    draw_text(img, ADJUNCT_NOTE, (6, h - 6), scale * 0.6, LIGHT_GRAY)
    draw_scale(img, scale_limits(thermal, options.window_c), options.colormap, scale)
    return img


def text_scale(img: U8) -> float:
    """Font scale for an image: readable on small thermal frames, not huge on big ones."""
    h, w = img.shape[:2]
    return max(0.35, float(min(h, w)) / 640.0)


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


def scale_limits(
    thermal: ThermalStats | None, window_c: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The temperatures at the ends of the colour bar: the rendering window when there is one,
    else the frame's own range; None for frames without temperature."""
    if window_c is not None:
        return window_c
    if thermal is not None:
        return (thermal.t_min_c, thermal.t_max_c)
    return None


def draw_scale(
    img: U8, limits_c: tuple[float, float] | None, colormap: int | None, scale: float
) -> None:
    """A vertical colour bar at the right edge, labelled with `limits_c` (low, high) in C."""
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
    if limits_c is None:
        return
    size = scale * 0.6
    (tw, _), _ = cv2.getTextSize(f"{limits_c[1]:.1f}C", cv2.FONT_HERSHEY_SIMPLEX, size, 1)
    x_text = max(0, x1 + bar_w - tw)
    draw_text(img, f"{limits_c[1]:.1f}C", (x_text, max(top - 6, 10)), size, WHITE)
    draw_text(img, f"{limits_c[0]:.1f}C", (x_text, min(bottom + 16, h - 1)), size, WHITE)
