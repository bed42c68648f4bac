"""Annotated outputs, like imagenet.py's output URI: the operator's view of each classified frame.

`open_output(uri, width, height, fps)` returns an `Output`; `write()` draws the label, the score
and a temperature scale on the equalized frame (OpenCV, BGR) and pushes it into GStreamer:

    file://out.mp4  appsrc ! videoconvert ! avenc_mpeg4 ! mp4mux ! filesink location=out.mp4
                    (.mkv: matroskamux, .avi: avimux; EOS on close so the file is finalised)
    rtp://host:port appsrc ! videoconvert ! video/x-raw,format=I420 ! jpegenc quality=85
                    ! rtpjpegpay pt=26
                    ! udpsink host=HOST port=PORT
                    receive with: udpsrc port=PORT caps="application/x-rtp,media=video,
                    clock-rate=90000,encoding-name=JPEG,payload=26" ! rtpjpegdepay ! jpegdec
                    ! videoconvert ! autovideosink
                    (Motion JPEG: every frame stands alone, so a viewer can join at any time
                    and a lost packet costs one frame, not a group of pictures)
    display://0     appsrc ! videoconvert ! autovideosink sync=false   (needs a display; untested)

Jetson (`jetson=True`) encodes in hardware:

    file://out.mp4  appsrc ! videoconvert ! video/x-raw,format=I420 ! nvvidconv
                    ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc ! h264parse ! mp4mux
                    ! filesink location=out.mp4
    rtp://host:port ... ! nvv4l2h264enc insert-sps-pps=true ! h264parse ! rtph264pay pt=96
                    ! udpsink host=HOST port=PORT
    display://0     appsrc ! videoconvert ! nvvidconv ! nv3dsink sync=false

The appsrc blocks when its queue is full (`block=true`), so writing a replay into a file never
drops a frame: the writer waits for the encoder instead. Frames are stamped n / fps.

Note: on Debian 12's gst-libav 1.22.0 avenc_mpeg4 emits buffers without valid timestamps (its
segment starts at 1000 h, its buffers carry none). A probe on the encoder's source pad stamps
them again, segment start + n / fps (no B-frames, so output order is input order), which is what
the muxer needs for a file that plays at the right rate. The same fault makes RTP timestamps
from avenc_mpeg4 useless (a depayloader merges frames that share one), which is why RTP uses
jpegenc (gst-plugins-good, correct timestamps).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.gstreamer import GLib, Gst
from pipeline.types import Prediction, ThermalStats

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
OUTPUT_SCHEMES = ("file", "rtp", "display")
MUXERS = {
    ".mp4": "mp4mux",
    ".m4v": "mp4mux",
    ".mov": "qtmux",
    ".mkv": "matroskamux",
    ".avi": "avimux",
}
CLOSE_TIMEOUT_S = 30.0


class OutputError(Exception):
    """An output cannot be opened or failed; the message names the URI and the fix."""


@runtime_checkable
class Output(Protocol):
    uri: str
    frames_written: int

    def write(
        self,
        gray8: U8,
        prediction: Prediction | None,
        thermal: ThermalStats | None,
        frame_index: int,
    ) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class OutputOptions:
    """How annotations look and which encoder runs."""

    window_c: tuple[float, float] | None = None  # scale labels; None: the frame's t_min/t_max
    colormap: int | None = cv2.COLORMAP_INFERNO  # None: gray
    jetson: bool = False
    bitrate: int = 2_000_000


# --- drawing --------------------------------------------------------------------------------


def _text(
    img: U8, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int]
) -> None:
    thick = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = org
    cv2.rectangle(img, (x - 2, y - h - 3), (x + w + 2, y + base + 1), (0, 0, 0), cv2.FILLED)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


def _colorize(gray: U8, colormap: int | None) -> U8:
    if colormap is None:
        return np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    return np.asarray(cv2.applyColorMap(gray, colormap), dtype=np.uint8)


def annotate(
    gray8: U8,
    prediction: Prediction | None,
    thermal: ThermalStats | None,
    frame_index: int,
    options: OutputOptions = OutputOptions(),
    size: tuple[int, int] | None = None,
) -> U8:
    """The equalized frame, colour-mapped, with label, score, frame index and a temperature
    scale (the window's limits, else the frame's t_min/t_max); BGR uint8 of `size` (w, h)."""
    gray = np.ascontiguousarray(gray8, dtype=np.uint8)
    if size is not None and (gray.shape[1], gray.shape[0]) != size:
        gray = np.asarray(cv2.resize(gray, size, interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
    img = _colorize(gray, options.colormap)
    h, w = img.shape[:2]
    scale = max(0.35, min(h, w) / 640.0)
    line = round(28 * scale / 0.75)
    if prediction is not None:
        label = prediction.label if prediction.index >= 0 else "none"
        _text(img, f"{label} {prediction.score:.2f}", (6, line), scale, (255, 255, 255))
    _text(img, f"#{frame_index}", (6, 2 * line + 2), scale * 0.8, (200, 200, 200))
    _text(img, "adjunct only - not a diagnosis", (6, h - 6), scale * 0.6, (200, 200, 200))
    _draw_scale(img, thermal, options, scale)
    return img


def _draw_scale(
    img: U8, thermal: ThermalStats | None, options: OutputOptions, scale: float
) -> None:
    h, w = img.shape[:2]
    bar_w = max(6, w // 40)
    top, bottom = h // 6, h - h // 6
    if bottom - top < 4:
        return
    x1 = w - bar_w - max(4, w // 20)
    ramp = np.linspace(255, 0, bottom - top).astype(np.uint8)[:, None]
    bar = _colorize(np.ascontiguousarray(np.repeat(ramp, bar_w, axis=1)), options.colormap)
    img[top:bottom, x1 : x1 + bar_w] = bar
    cv2.rectangle(img, (x1 - 1, top - 1), (x1 + bar_w, bottom), (255, 255, 255), 1)
    limits: tuple[float, float] | None = options.window_c
    if limits is None and thermal is not None:
        limits = (thermal.t_min_c, thermal.t_max_c)
    if limits is None:
        return
    size = scale * 0.6
    (tw, _), _ = cv2.getTextSize(f"{limits[1]:.1f}C", cv2.FONT_HERSHEY_SIMPLEX, size, 1)
    x_text = max(0, x1 + bar_w - tw)
    _text(img, f"{limits[1]:.1f}C", (x_text, max(top - 6, 10)), size, (255, 255, 255))
    _text(img, f"{limits[0]:.1f}C", (x_text, min(bottom + 16, h - 1)), size, (255, 255, 255))


# --- GStreamer outputs ----------------------------------------------------------------------


def _appsrc(width: int, height: int, fps: float) -> str:
    num, den = _fraction(fps)
    caps = f"video/x-raw,format=BGR,width={width},height={height},framerate={num}/{den}"
    return f'appsrc name=src format=time is-live=false block=true caps="{caps}"'


def _fraction(fps: float) -> tuple[int, int]:
    if fps <= 0:
        raise OutputError(f"output fps must be > 0, got {fps}")
    if float(fps).is_integer():
        return int(fps), 1
    return round(fps * 1000), 1000


def describe_output(
    uri: str, width: int, height: int, fps: float, options: OutputOptions = OutputOptions()
) -> str:
    """The gst-launch string an output URI runs."""
    scheme, where = _split(uri)
    head = f"{_appsrc(width, height, fps)} ! videoconvert"
    if scheme == "file":
        suffix = Path(where).suffix.lower()
        mux = MUXERS.get(suffix)
        if mux is None:
            raise OutputError(
                f"output '{uri}': unknown file type '{suffix}'; use one of {', '.join(MUXERS)}"
            )
        if options.jetson:
            enc = (
                "video/x-raw,format=I420 ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 "
                f"! nvv4l2h264enc bitrate={options.bitrate} ! h264parse"
            )
        else:
            enc = f"avenc_mpeg4 name={RESTAMP} max-bframes=0 bitrate={options.bitrate}"
        location = str(Path(where).expanduser().absolute()).replace('"', '\\"')
        return f'{head} ! {enc} ! {mux} ! filesink location="{location}"'
    if scheme == "rtp":
        host, port = _host_port(uri, where)
        if options.jetson:
            enc = (
                "video/x-raw,format=I420 ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 "
                f"! nvv4l2h264enc bitrate={options.bitrate} insert-sps-pps=true ! h264parse "
                "! rtph264pay pt=96"
            )
        else:
            enc = "video/x-raw,format=I420 ! jpegenc quality=85 ! rtpjpegpay pt=26"
        return f"{head} ! {enc} ! udpsink host={host} port={port} sync=false async=false"
    sink = "nvvidconv ! nv3dsink sync=false" if options.jetson else "autovideosink sync=false"
    return f"{head} ! {sink}"


def _split(uri: str) -> tuple[str, str]:
    text = uri.strip()
    if "://" not in text:
        return "file", text
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme not in OUTPUT_SCHEMES:
        listed = ", ".join(f"{s}://" for s in OUTPUT_SCHEMES)
        raise OutputError(f"output '{uri}': unknown scheme '{scheme}://'; supported: {listed}")
    return scheme, rest


def _host_port(uri: str, where: str) -> tuple[str, int]:
    parts = urlsplit(f"rtp://{where}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise OutputError(f"output '{uri}': give host and port, e.g. rtp://192.168.1.20:5000")
    return parts.hostname, port


RESTAMP = "restamp"  # the element whose output buffers get timestamps again


def restamp_output(element: Gst.Element, duration_ns: int) -> None:
    """Stamp each buffer leaving `element` with segment start + n x duration (pts = dts)."""
    pad = element.get_static_pad("src")
    assert pad is not None
    state = {"start": 0, "n": 0}

    def on_data(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        if info.type & Gst.PadProbeType.EVENT_DOWNSTREAM:
            event = info.get_event()
            if event is not None and event.type == Gst.EventType.SEGMENT:
                state["start"] = int(event.parse_segment().start)
            return Gst.PadProbeReturn.OK
        buf = info.get_buffer()
        if buf is not None:
            buf.pts = buf.dts = state["start"] + state["n"] * duration_ns
            buf.duration = duration_ns
            state["n"] += 1
        return Gst.PadProbeReturn.OK

    pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.EVENT_DOWNSTREAM, on_data)


class GstOutput:
    """An appsrc-fed pipeline; frames are annotated, stamped n/fps and pushed with backpressure."""

    def __init__(
        self, uri: str, width: int, height: int, fps: float, options: OutputOptions
    ) -> None:
        self.uri = uri
        self.width, self.height, self.fps = width, height, fps
        self.options = options
        self.frames_written = 0
        self.launch = describe_output(uri, width, height, fps, options)
        self._lock = threading.Lock()
        self._closed = False
        try:
            pipeline = Gst.parse_launch(self.launch)
        except GLib.Error as exc:
            raise OutputError(f"output '{uri}': cannot build pipeline: {exc.message}") from None
        assert isinstance(pipeline, Gst.Pipeline)
        self._pipeline = pipeline
        src = pipeline.get_by_name("src")
        assert src is not None
        self._src = src
        self._duration = int(Gst.SECOND / fps)
        encoder = pipeline.get_by_name(RESTAMP)
        if encoder is not None:
            restamp_output(encoder, self._duration)
        if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            reason = self._bus_error() or "state change failed"
            pipeline.set_state(Gst.State.NULL)
            raise OutputError(f"output '{uri}' cannot start: {reason}; check the path/host")

    def _bus_error(self) -> str | None:
        bus = self._pipeline.get_bus()
        msg = bus.pop_filtered(Gst.MessageType.ERROR) if bus is not None else None
        if msg is None:
            return None
        err, _ = msg.parse_error()
        return f"{msg.src.get_name() if msg.src else '?'}: {err.message}"

    def write(
        self,
        gray8: U8,
        prediction: Prediction | None,
        thermal: ThermalStats | None,
        frame_index: int,
    ) -> None:
        """Annotate one frame and push it; blocks while the encoder catches up (no drops)."""
        image = annotate(
            gray8, prediction, thermal, frame_index, self.options, (self.width, self.height)
        )
        self.push_bgr(image)

    def push_bgr(self, image: U8) -> None:
        with self._lock:
            if self._closed:
                raise OutputError(f"output '{self.uri}' is closed")
            reason = self._bus_error()
            if reason is not None:
                raise OutputError(f"output '{self.uri}' failed: {reason}")
            buf = Gst.Buffer.new_wrapped(np.ascontiguousarray(image).tobytes())
            buf.pts = self.frames_written * self._duration
            buf.duration = self._duration
            ret = self._src.emit("push-buffer", buf)
            if ret != Gst.FlowReturn.OK:
                reason = self._bus_error() or str(ret)
                raise OutputError(f"output '{self.uri}' refused a frame: {reason}")
            self.frames_written += 1

    def close(self) -> None:
        """Send EOS and wait for it so the file is finalised, then stop the pipeline."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._src.emit("end-of-stream")
            bus = self._pipeline.get_bus()
            msg = bus.timed_pop_filtered(
                int(CLOSE_TIMEOUT_S * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR
            )
            if msg is None:
                raise OutputError(f"output '{self.uri}': no EOS within {CLOSE_TIMEOUT_S:g} s")
            if msg.type == Gst.MessageType.ERROR:
                err, _ = msg.parse_error()
                raise OutputError(f"output '{self.uri}' failed while closing: {err.message}")
        finally:
            self._pipeline.set_state(Gst.State.NULL)

    def __enter__(self) -> GstOutput:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_output(
    uri: str, width: int, height: int, fps: float, options: OutputOptions | None = None
) -> Output:
    """Start an output pipeline for annotated frames of width x height at fps."""
    if width <= 0 or height <= 0:
        raise OutputError(f"output '{uri}': size must be positive, got {width}x{height}")
    out: Output = GstOutput(uri, width, height, fps, options or OutputOptions())
    return out
