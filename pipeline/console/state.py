"""`/api/state`: what the operator page shows besides the picture, as one JSON object.

Built from the live window on request (the page asks about twice a second): the retained exam
state exactly as MQTT carries it, the newest frame's temperatures (radiometric sources only;
8-bit video has none, and the page then shows no scale), the rolling verdict with its
threshold, the quality gates this frame failed, and the health summary. No patient identity:
exams carry the operator's accession code only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline import DISCLAIMER
from pipeline.console.base import LiveWindow, ShownFrame, VerdictView
from pipeline.console.health import HealthLimits, evaluate
from pipeline.types import FrameKind, ThermalStats


@dataclass(frozen=True)
class CameraInfo:
    """Fixed facts about the camera the console shows."""

    device_id: str
    camera_id: str


def _verdict(line: VerdictView | None) -> dict[str, Any] | None:
    if line is None:
        return None
    threshold = line.threshold
    return {
        "label": line.label,
        "positive": None if threshold is None else bool(line.score >= threshold),
        "score": round(float(line.score), 4),
        "threshold": None if line.threshold is None else round(float(line.threshold), 4),
        "frames": int(line.frames),
    }


def frame_state(shown: ShownFrame) -> dict[str, Any]:
    """The newest frame: kind, temperatures (radiometric only), rolling verdict, gates."""
    frame = shown.frame
    celsius = frame.celsius()
    thermal = ThermalStats.of(celsius) if celsius is not None else None
    overlay = shown.overlay
    return {
        "seq": shown.seq,
        "kind": frame.kind.value,
        "radiometric": frame.kind is not FrameKind.GRAY8,
        "width": int(frame.pixels.shape[1]),
        "height": int(frame.pixels.shape[0]),
        "file": frame.file,
        "age_s": round(time.monotonic() - shown.received_mono, 3),
        "thermal": None
        if thermal is None
        else {
            "t_min_c": round(thermal.t_min_c, 2),
            "t_max_c": round(thermal.t_max_c, 2),
            "t_mean_c": round(thermal.t_mean_c, 2),
        },
        "rolling_verdict": _verdict(overlay.rolling),
        "rejected": list(overlay.rejected),
        "synthetic_model": bool(overlay.synthetic_model),
    }


def page_state(
    window: LiveWindow,
    health_numbers: Callable[[], dict[str, Any]],
    camera: CameraInfo,
    limits: HealthLimits,
) -> dict[str, Any]:
    """The whole `/api/state` answer (call it off the event loop: it converts a frame)."""
    shown = window.latest()
    exam = window.exam_state()
    numbers = health_numbers()
    healthy, health = evaluate(numbers, limits)
    frame = None if shown is None else frame_state(shown)
    synthetic = bool((exam or {}).get("synthetic_model")) or bool(
        frame and frame["synthetic_model"]
    )
    return {
        "device_id": camera.device_id,
        "camera_id": camera.camera_id,
        "started": "capture" in numbers,  # the run's stages are up (the model is loaded)
        "exams_enabled": window.exams_enabled,
        "exam": exam,
        "frame": frame,
        "synthetic_model": synthetic,
        "healthy": healthy,
        "health": {k: v for k, v in health.items() if k != "status"},
        "disclaimer": DISCLAIMER,
    }
