"""GStreamer sinks for annotated frames, like imagenet.py's output URI.

`open_output(uri, width, height, fps)` returns an `Output`; `write()` draws the overlay
(`pipeline.output.overlay`) on the equalized frame and pushes it into GStreamer:

    file://out.mp4  appsrc ! videoconvert ! video/x-raw,format=I420 ! x264enc ! video/x-h264,
                    profile=main ! mp4mux faststart=true ! filesink location=out.mp4
                    (H.264 Main, 4:2:0: plays in every browser; where x264enc is installed,
                    Debian's gstreamer1.0-plugins-ugly, else avenc_mpeg4 as for the others)
    file://out.mkv  appsrc ! videoconvert ! avenc_mpeg4 ! matroskamux ! filesink ...
                    (.avi: avimux; EOS on close so the file is finalised)
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

import numpy as np

from pipeline.gstreamer import GLib, Gst
from pipeline.launch import Launch, Prop
from pipeline.output.base import (
    DEFAULT_OPTIONS,
    U8,
    Output,
    OutputError,
    OutputOptions,
    OverlayInfo,
    frame_rate,
    parse_output_uri,
)
from pipeline.output.overlay import annotate
from pipeline.types import Frame, Prediction, ThermalStats
from pipeline.uri import redact

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 30.0


def _appsrc(width: int, height: int, fps: float) -> str:
    num, den = frame_rate(fps)
    caps = f"video/x-raw,format=BGR,width={width},height={height},framerate={num}/{den}"
    return f'appsrc name=src format=time is-live=false block=true caps="{caps}"'


H264_SUFFIXES = (".mp4", ".m4v")  # browsers play H.264 in MP4


def has_element(name: str) -> bool:
    """Whether a GStreamer element is installed (e.g. x264enc from plugins-ugly)."""
    return Gst.ElementFactory.find(name) is not None


def uses_h264(uri: str, options: OutputOptions = DEFAULT_OPTIONS) -> bool:
    """A file output that gets browser-playable H.264 from x264enc (Jetson: its own encoder)."""
    parsed = parse_output_uri(uri)
    if parsed.scheme != "file" or parsed.path is None or options.jetson:
        return False
    return parsed.path.suffix.lower() in H264_SUFFIXES and has_element("x264enc")


def _file_encoder(uri: str, fps: float, options: OutputOptions) -> str:
    if options.jetson:
        return (
            "video/x-raw,format=I420 ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 "
            f"! nvv4l2h264enc bitrate={int(options.bitrate)} ! h264parse"
        )
    if uses_h264(uri, options):
        key = max(1, round(2 * fps))  # a key frame every 2 s: a browser can seek
        return (
            f"video/x-raw,format=I420 ! x264enc bitrate={max(1, int(options.bitrate) // 1000)} "
            f"speed-preset=veryfast bframes=0 key-int-max={key} ! video/x-h264,profile=main"
        )
    return f"avenc_mpeg4 name={RESTAMP} max-bframes=0 bitrate={int(options.bitrate)}"


def output_launch(
    uri: str, width: int, height: int, fps: float, options: OutputOptions = DEFAULT_OPTIONS
) -> Launch:
    """The pipeline an output URI runs: the template holds our elements only; the path or the
    host and port are properties of the element named `out` (never pasted into the string)."""
    parsed = parse_output_uri(uri)
    head = f"{_appsrc(width, height, fps)} ! videoconvert"
    if parsed.scheme == "file":
        assert parsed.path is not None
        enc = _file_encoder(uri, fps, options)
        mux = f"{parsed.muxer} faststart=true" if parsed.muxer == "mp4mux" else parsed.muxer
        location = Prop("out", "location", str(parsed.path.expanduser().absolute()))
        return Launch(f"{head} ! {enc} ! {mux} ! filesink name=out", (location,))
    if parsed.scheme == "rtp":
        if options.jetson:
            enc = (
                "video/x-raw,format=I420 ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 "
                f"! nvv4l2h264enc bitrate={int(options.bitrate)} insert-sps-pps=true "
                "! h264parse ! rtph264pay pt=96"
            )
        else:
            enc = "video/x-raw,format=I420 ! jpegenc quality=85 ! rtpjpegpay pt=26"
        where = (Prop("out", "host", parsed.host, quote=False), Prop("out", "port", parsed.port))
        return Launch(f"{head} ! {enc} ! udpsink name=out sync=false async=false", where)
    sink = "nvvidconv ! nv3dsink sync=false" if options.jetson else "autovideosink sync=false"
    return Launch(f"{head} ! {sink}")


def describe_output(
    uri: str, width: int, height: int, fps: float, options: OutputOptions = DEFAULT_OPTIONS
) -> str:
    """The gst-launch string an output URI runs, with its values written in."""
    return output_launch(uri, width, height, fps, options).shown()


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
        self.uri = redact(uri)
        self.width, self.height, self.fps = width, height, fps
        self.options = options
        self.frames_written = 0
        plan = output_launch(uri, width, height, fps, options)
        self.launch = plan.shown()
        self._lock = threading.Lock()
        self._closed = False
        try:
            pipeline = Gst.parse_launch(plan.template)
        except GLib.Error as exc:
            raise OutputError(
                f"output '{self.uri}': cannot build pipeline: {exc.message}"
            ) from None
        assert isinstance(pipeline, Gst.Pipeline)
        plan.apply(pipeline)
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
            raise OutputError(f"output '{self.uri}' cannot start: {reason}; check the path/host")

    def _bus_error(self) -> str | None:
        bus = self._pipeline.get_bus()
        msg = bus.pop_filtered(Gst.MessageType.ERROR) if bus is not None else None
        if msg is None:
            return None
        err, _ = msg.parse_error()
        return f"{msg.src.get_name() if msg.src else '?'}: {err.message}"

    def write(
        self,
        frame: Frame,
        gray8: U8,
        prediction: Prediction | None,
        thermal: ThermalStats | None,
        info: OverlayInfo | None,
    ) -> None:
        """Annotate one frame and push it; blocks while the encoder catches up (no drops)."""
        image = annotate(frame, prediction, info, self.options, (self.width, self.height))
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
        raise OutputError(f"output '{redact(uri)}': size must be positive, got {width}x{height}")
    if uses_h264(uri, options or DEFAULT_OPTIONS):  # 4:2:0 needs even sides
        width, height = width + width % 2, height + height % 2
    out: Output = GstOutput(uri, width, height, fps, options or OutputOptions())
    return out
