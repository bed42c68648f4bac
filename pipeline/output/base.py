"""The annotated output's contract: the `Output` protocol, its options, its errors, and output
URIs taken apart and checked before the first frame (no GStreamer needed to check one).

| URI | output |
|---|---|
| `file://out.mp4`, `out.mp4` | a video file (.mp4 .m4v .mov .mkv .avi) |
| `rtp://host:port` | Motion JPEG over RTP/UDP (H.264 on a Jetson) |
| `display://0` | a window on the local display |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.types import Frame, Prediction, ThermalStats
from pipeline.uri import has_control, parse_network_uri, redact

U8 = npt.NDArray[np.uint8]
OutputScheme = Literal["file", "rtp", "display"]
OUTPUT_SCHEMES: tuple[OutputScheme, ...] = ("file", "rtp", "display")
MUXERS = {
    ".mp4": "mp4mux",
    ".m4v": "mp4mux",
    ".mov": "qtmux",
    ".mkv": "matroskamux",
    ".avi": "avimux",
}


class OutputError(Exception):
    """An output cannot be opened or failed; the message names the URI and the fix."""


@runtime_checkable
class Output(Protocol):
    """Where annotated frames go; `write` blocks rather than drop (the runner drops live)."""

    uri: str
    frames_written: int

    def write(
        self,
        frame: Frame,
        gray8: U8,
        prediction: Prediction | None,
        thermal: ThermalStats | None,
        info: OverlayInfo | None,
    ) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class VerdictLine:
    """One verdict as the overlay shows it: label, score, the threshold it was held against."""

    label: str
    score: float
    threshold: float | None
    frames: int
    final: bool = False


@dataclass(frozen=True)
class OverlayInfo:
    """What the operator sees beside the frame, computed in the publish thread: the exam (state,
    view, acclimatization), the rolling verdict (live display) and the exam's verdict, the gates
    this frame failed, and whether the model is a synthetic demo."""

    exam_id: str | None = None
    exam_state: str | None = None  # None: no exam at this camera yet
    view: str | None = None
    acclimatization: str | None = None  # e.g. "rest 4:10 of 15:00, drift 0.12 C/min"
    rolling: VerdictLine | None = None
    exam: VerdictLine | None = None
    rejected: tuple[str, ...] = ()  # the quality gates this frame failed
    synthetic_model: bool = False


@dataclass(frozen=True)
class OutputOptions:
    """How annotations look and which encoder runs."""

    window_c: tuple[float, float] | None = None  # palette span (C); None: each frame's own range
    colormap: int | None = cv2.COLORMAP_INFERNO  # None: gray
    jetson: bool = False
    bitrate: int = 2_000_000


DEFAULT_OPTIONS = OutputOptions()


@dataclass(frozen=True)
class OutputUri:
    """An output URI taken apart: `file` (path, muxer), `rtp` (host, port) or `display`."""

    text: str
    scheme: OutputScheme
    path: Path | None = None  # file
    muxer: str = ""  # file
    host: str = ""  # rtp
    port: int = 0  # rtp


def parse_output_uri(uri: str) -> OutputUri:
    """Check an output URI; OutputError names the URI and the fix. A plain path is a file.
    Every part is checked here (the values later reach GStreamer as element properties)."""
    text = uri.strip()
    scheme, where = _split(uri, text)
    if scheme == "file":
        if not where or has_control(where):
            raise OutputError(
                f"output '{redact(uri)}': the file path is empty or holds control characters"
            )
        suffix = Path(where).suffix.lower()
        muxer = MUXERS.get(suffix)
        if muxer is None:
            raise OutputError(
                f"output '{uri}': unknown file type '{suffix}'; use one of {', '.join(MUXERS)}"
            )
        return OutputUri(uri, "file", path=Path(where), muxer=muxer)
    if scheme == "rtp":
        host, port = _host_port(uri, text)
        return OutputUri(uri, "rtp", host=host, port=port)
    if where not in ("", "0", ":0") and not where.isdigit():
        raise OutputError(f"output '{redact(uri)}': give the display as display://0")
    return OutputUri(uri, "display")


def frame_rate(fps: float) -> tuple[int, int]:
    """fps as a GStreamer fraction (num, den): 15 -> 15/1, 29.97 -> 29970/1000."""
    if fps <= 0:
        raise OutputError(f"output fps must be > 0, got {fps}")
    if float(fps).is_integer():
        return int(fps), 1
    return round(fps * 1000), 1000


def check_output(uri: str, fps: float) -> OutputUri:
    """Everything about an output that can be checked before the first frame arrives."""
    parsed = parse_output_uri(uri)
    frame_rate(fps)
    return parsed


def _split(uri: str, text: str) -> tuple[OutputScheme, str]:
    if "://" not in text:
        return "file", text
    scheme, rest = text.split("://", 1)
    for known in OUTPUT_SCHEMES:
        if scheme.lower() == known:
            return known, rest
    listed = ", ".join(f"{s}://" for s in OUTPUT_SCHEMES)
    raise OutputError(
        f"output '{redact(uri)}': unknown scheme '{scheme.lower()}://'; supported: {listed}"
    )


def _host_port(uri: str, text: str) -> tuple[str, int]:
    """rtp://HOST:PORT and nothing else: no credentials, path, query or spaces."""
    example = "give host and port as rtp://HOST:PORT, e.g. rtp://192.168.1.20:5000"
    try:
        parsed = parse_network_uri(text, ("rtp",))
    except ValueError as exc:
        raise OutputError(f"output '{redact(uri)}': {exc}; {example}") from None
    extra = parsed.username is not None or parsed.path not in ("", "/")
    if extra or parsed.port is None:
        raise OutputError(f"output '{redact(uri)}': {example}")
    return parsed.host, parsed.port
