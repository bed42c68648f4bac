"""GStreamer sources: one pipeline ending in an appsink, its samples copied out once into Frames.

Pipelines (x86; `describe_pipeline()` prints the exact string a URI runs):

    file://rec.mp4   filesrc location="rec.mp4" ! decodebin ! videoconvert
                     ! video/x-raw,format=GRAY8
                     ! appsink name=sink sync=false max-buffers=2 drop=false
    v4l2:///dev/video0
                     v4l2src device=/dev/video0 ! videoconvert ! video/x-raw,format=GRAY8
                     ! appsink name=sink sync=false max-buffers=1 drop=true
    v4l2:///dev/video0?format=y16&profile=lepton
                     v4l2src device=/dev/video0 ! video/x-raw,format=GRAY16_LE ! appsink ... (live)
    v4l2:///dev/video0?profile=p2pro
                     v4l2src device=/dev/video0 ! video/x-raw,format=YUY2,width=256,height=384
                     ! appsink ... (live; the bottom half is cut out as uint16, K = raw/64)
    aravis://<name>  aravissrc camera-name="<name>" ! video/x-raw,format=GRAY16_LE ! appsink ...
    rtsp://host/path rtspsrc location="rtsp://host/path" latency=200 ! decodebin ! videoconvert
                     ! video/x-raw,format=GRAY8 ! appsink ... (live)
    gst://<fragment> <fragment> ! videoconvert ! video/x-raw,format=GRAY8 ! appsink ... (live)

Jetson (SourceOptions.jetson, auto-detected from /etc/nv_tegra_release) swaps the decoder and the
converter for the hardware ones; these strings are unit-tested but cannot run off a Jetson:

    file://rec.mp4   filesrc location="rec.mp4" ! parsebin ! nvv4l2decoder ! nvvidconv
                     ! video/x-raw,format=GRAY8
                     ! appsink name=sink sync=false max-buffers=2 drop=false
    rtsp://host/path rtspsrc location="..." latency=200 ! parsebin ! nvv4l2decoder ! nvvidconv
                     ! video/x-raw,format=GRAY8
                     ! appsink name=sink sync=false max-buffers=1 drop=true
    csi://0          nvarguscamerasrc sensor-id=0
                     ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv
                     ! video/x-raw,format=GRAY8
                     ! appsink name=sink sync=false max-buffers=1 drop=true

How samples leave GStreamer: the appsink emits `new-sample` and our handler, running in the
streaming thread, pulls the sample at once, copies the buffer out in one `extract_dup` (PyGObject
without the Gst overrides hands mapped memory back as a bytes copy anyway, so map+copy would copy
twice), wraps it with `np.frombuffer` honouring the row stride, and hands the Frame on:

- live: into a `LatestSlot` (never blocks; the newest frame wins; overwritten frames are counted
  as dropped). Because the handler empties the appsink synchronously the appsink itself never
  drops, so `stats.dropped` is exact. Frame indices count every frame that reached the appsink,
  so a consumer also sees drops as index gaps. A bus ERROR, an EOS (a camera or RTSP server that
  went away) or no frame for `stall_timeout_s` tears the pipeline down and rebuilds it with
  exponential backoff between `reconnect_min_s` and `reconnect_max_s`; `read()` returns None
  meanwhile.
- replay: into a bounded queue (2 frames) whose `put` blocks the streaming thread, so decoding
  waits for the consumer and nothing is dropped. EOS becomes `EndOfStream` after the last frame;
  a bus ERROR becomes `SourceError` naming the file. `realtime=True` sets `sync=true` on the
  appsink so frames arrive at the recorded rate. A decoder that would start worker threads
  (avdec_*) gets one: the cores belong to classification.

Frame pixels are read-only numpy views on that one copy (frames are immutable).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.capture.base import (
    EndOfStream,
    LatestSlot,
    ParsedUri,
    SourceError,
    SourceOptions,
    SourceStats,
)
from pipeline.capture.launch import REPLAY_QUEUE_FRAMES, build_launch
from pipeline.capture.limits import check_image_files
from pipeline.capture.profiles import ProfileError, extract_raw
from pipeline.gstreamer import GLib, Gst, GstApp, GstVideo
from pipeline.types import Frame, FrameKind

log = logging.getLogger(__name__)

ERROR_GRACE_S = 1.0  # how long a failed start waits for the element's ERROR message
START_POLL_S = 0.1
ELEMENT_HINTS = {
    "aravissrc": "install the aravis GStreamer plugin (Debian: gstreamer1.0-plugins-bad >= 1.24 "
    "or aravis' gst-aravis)",
    "nvarguscamerasrc": "csi:// needs a Jetson with JetPack (nvarguscamerasrc)",
    "nvvidconv": "this pipeline needs a Jetson with JetPack (nvvidconv); "
    "set jetson: false elsewhere",
    "nvv4l2decoder": "this pipeline needs a Jetson with JetPack (nvv4l2decoder); "
    "set jetson: false elsewhere",
    "rtspsrc": "install gstreamer1.0-plugins-good",
    "v4l2src": "install gstreamer1.0-plugins-good",
}


@dataclass(frozen=True)
class _Layout:
    fmt: str
    width: int
    height: int
    stride: int


@dataclass(frozen=True)
class _Failure:
    message: str


_END = object()


def _one_decoder_thread(_pipeline: Gst.Bin, _bin: Gst.Bin, element: Gst.Element) -> None:
    """Replays: a video decoder that can start its own worker threads (libav's avdec_*) gets one.
    The cores are busy classifying, so decoder threads only add wake-ups: replay throughput +1%
    in an interleaved A/B (3 repeats, 600 frames). Live decoders keep their default."""
    factory = element.get_factory()
    klass = (factory.get_metadata("klass") if factory is not None else None) or ""
    if "Decoder" in klass and element.find_property("max-threads") is not None:
        element.set_property("max-threads", 1)


# decodebin's autoplug-select answers (GstAutoplugSelectResult; the enum is not introspectable)
_AUTOPLUG_TRY, _AUTOPLUG_SKIP = 0, 2
# Parsers that lose frames of a stream a container already delimits: GStreamer 1.22's
# mpeg4videoparse (gst-plugins-bad) drops the last frame of an MP4 recording.
_SKIP_AFTER_DEMUXER = frozenset({"mpeg4videoparse"})


def _upstream_name(pad: Gst.Pad) -> str:
    """The factory name of the element feeding one of decodebin's pads (typefind for a bare
    elementary stream; the multiqueue decodebin puts after a demuxer for a container's)."""
    target = pad.get_target() if isinstance(pad, Gst.GhostPad) else None
    element = target.get_parent_element() if target is not None else None
    factory = element.get_factory() if element is not None else None
    return factory.get_name() if factory is not None else ""


def _no_lossy_parser(
    _decodebin: Gst.Element, pad: Gst.Pad, _caps: Gst.Caps, factory: Gst.ElementFactory
) -> int:
    """decodebin: a demuxed stream goes straight to its decoder when the parser would lose
    frames (every frame of a replay counts); a bare elementary stream keeps the parser that
    frames it."""
    if factory.get_name() in _SKIP_AFTER_DEMUXER and _upstream_name(pad) != "typefind":
        return _AUTOPLUG_SKIP
    return _AUTOPLUG_TRY


def _skip_lossy_parsers(pipeline: Gst.Pipeline) -> None:
    elements = pipeline.iterate_recurse()
    while True:
        status, element = elements.next()
        if status != Gst.IteratorResult.OK:
            return
        factory = element.get_factory()
        if factory is not None and factory.get_name() == "decodebin":
            element.connect("autoplug-select", _no_lossy_parser)


def _drop(_pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
    return Gst.PadProbeReturn.DROP


def _layout(caps: Gst.Caps) -> _Layout:
    info = GstVideo.VideoInfo.new_from_caps(caps)
    if info is None:
        raise SourceError(f"appsink caps are not raw video: {caps.to_string()}")
    return _Layout(
        fmt=info.finfo.name, width=info.width, height=info.height, stride=int(info.stride[0])
    )


def _error_text(msg: Gst.Message) -> str:
    err, debug = msg.parse_error()
    origin = msg.src.get_name() if msg.src is not None else "?"
    text = f"{origin}: {err.message}"
    if debug:
        text += f" ({debug.splitlines()[0]})"
    return text


class GstSource:
    """A GStreamer pipeline ending in an appsink; live or replay (see the module docstring)."""

    def __init__(self, parsed: ParsedUri, options: SourceOptions, live: bool) -> None:
        self.uri = parsed.shown
        self.is_live = live
        self._parsed = parsed
        self._opts = options
        self._plan = build_launch(parsed, options, live)
        self._stats = SourceStats()
        self._lock = threading.Lock()  # guards the pipeline swap
        self._pipeline: Gst.Pipeline | None = None
        self._closing = threading.Event()
        self._slot = LatestSlot()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=REPLAY_QUEUE_FRAMES)
        self._watch: threading.Thread | None = None
        self._arrived = 0  # frames that reached the appsink (the next frame's index)
        self._frames_since_start = 0
        self._last_frame_mono = time.monotonic()
        self._layout_caps: Gst.Caps | None = None
        self._layout_cache: _Layout | None = None
        self._ended = False
        self._failure: str | None = None
        self._refused: str | None = None  # frames over the size limit, seen in caps

    @property
    def launch(self) -> str:
        """The pipeline as gst-launch would read it (values written in, secrets masked)."""
        return self._plan.launch.shown()

    @property
    def stats(self) -> SourceStats:
        return SourceStats(
            frames=self._stats.frames,
            dropped=self._slot.dropped,
            rebuilds=self._stats.rebuilds,
            errors=self._stats.errors,
        )

    # --- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Start the pipeline and wait until it runs; SourceError when it cannot."""
        self._check_input()
        self._start()
        self._watch = threading.Thread(
            target=self._watch_live if self.is_live else self._watch_replay,
            name=f"gst-watch-{self._opts.camera_id}",
            daemon=True,
        )
        self._watch.start()

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """Next frame (replay) or newest frame (live); None when none came within timeout_s."""
        if self._refused is not None:
            raise SourceError(f"source '{self.uri}': {self._refused}")
        if self.is_live:
            frame = self._slot.get(timeout_s)
        else:
            if self._ended:
                raise EndOfStream(self.uri)
            if self._failure is not None:
                raise SourceError(self._failure)
            try:
                item = self._queue.get(timeout=max(timeout_s, 0.0))
            except queue.Empty:
                return None
            if item is _END:
                self._ended = True
                raise EndOfStream(self.uri)
            if isinstance(item, _Failure):
                self._failure = item.message
                raise SourceError(item.message)
            assert isinstance(item, Frame)
            frame = item
        if frame is not None:
            self._stats.frames += 1
        return frame

    def close(self) -> None:
        self._closing.set()
        self._slot.close()
        with self._lock:
            self._teardown_locked()
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(timeout=5.0)
        self._watch = None

    def __enter__(self) -> GstSource:
        self.open()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- pipeline --------------------------------------------------------------------------

    def _check_input(self) -> None:
        scheme, where = self._parsed.scheme, self._parsed.location
        if scheme == "file" and not Path(where).expanduser().is_file():
            raise SourceError(
                f"source '{self.uri}': file {where} not found; give an existing recording "
                f"(file://path/to/rec.mp4) or a folder of thermograms"
            )
        if scheme == "file":  # a still image: its header states the size, decoders may not
            oversized = check_image_files([Path(where).expanduser()], self._opts.frame_limit)
            if oversized is not None:
                raise SourceError(f"source '{self.uri}': {oversized[1]}")
        if scheme == "v4l2" and not Path(where or "/dev/video0").exists():
            raise SourceError(
                f"source '{self.uri}': no device {where or '/dev/video0'}; plug the camera in "
                f"or pick another (v4l2-ctl --list-devices)"
            )

    def _build(self) -> Gst.Pipeline:
        try:
            element = Gst.parse_launch(self._plan.launch.template)
        except GLib.Error as exc:
            hint = next((h for name, h in ELEMENT_HINTS.items() if name in exc.message), "")
            raise SourceError(
                f"source '{self.uri}': cannot build pipeline: {exc.message}"
                + (f"; {hint}" if hint else "")
            ) from None
        pipeline = element if isinstance(element, Gst.Pipeline) else None
        if pipeline is None:
            raise SourceError(f"source '{self.uri}': launch string did not make a pipeline")
        self._plan.launch.apply(pipeline)  # the URI's values, as properties only
        _skip_lossy_parsers(pipeline)
        sink = pipeline.get_by_name("sink")
        assert isinstance(sink, GstApp.AppSink)
        sink.set_property("emit-signals", True)
        sink.set_property("enable-last-sample", False)
        sink.connect("new-sample", self._on_new_sample)
        if not self.is_live:
            pipeline.connect("deep-element-added", _one_decoder_thread)
        pipeline.connect("deep-element-added", self._guard_decoder)
        return pipeline

    def _guard_decoder(self, _pipeline: Gst.Bin, _bin: Gst.Bin, element: Gst.Element) -> None:
        """Check the frame size a decoder is told (parsed caps) and announces (raw caps): an
        over-limit size is refused, and the decoder gets no more data to decode."""
        factory = element.get_factory()
        klass = (factory.get_metadata("klass") if factory is not None else None) or ""
        if "Decoder" not in klass:
            return
        # Events only: a probe on every buffer was a Python call, and a wait for the GIL, per
        # frame in the streaming thread. A refusal adds the probe that drops all that follows.
        for pad in (element.get_static_pad("sink"), element.get_static_pad("src")):
            if pad is not None:
                pad.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self._on_decoder_event)

    def _on_decoder_event(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        if self._refused is not None:
            return Gst.PadProbeReturn.DROP  # refused: nothing more is decoded
        event = info.get_event()
        if event is None or event.type != Gst.EventType.CAPS:
            return Gst.PadProbeReturn.OK
        problem = self._size_problem(event.parse_caps())
        if problem is None:
            return Gst.PadProbeReturn.OK
        self._refused = problem
        pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, _drop)
        element = pad.get_parent_element()
        if element is not None:  # end the pipeline now instead of leaving it waiting for data
            error = GLib.Error.new_literal(
                Gst.StreamError.quark(), problem, int(Gst.StreamError.FORMAT)
            )
            element.post_message(Gst.Message.new_error(element, error, problem))
        return Gst.PadProbeReturn.DROP

    def _size_problem(self, caps: Gst.Caps | None) -> str | None:
        if caps is None or caps.get_size() == 0:
            return None
        structure = caps.get_structure(0)
        has_w, width = structure.get_int("width")
        has_h, height = structure.get_int("height")
        if not (has_w and has_h):
            return None
        return self._opts.frame_limit.problem(int(width), int(height))

    def _start(self) -> None:
        """Build and start a pipeline; on failure tear it down and raise SourceError."""
        pipeline = self._build()
        with self._lock:
            if self._closing.is_set():
                pipeline.set_state(Gst.State.NULL)
                return
            self._pipeline = pipeline
            self._frames_since_start = 0
            self._last_frame_mono = time.monotonic()
        ret = pipeline.set_state(Gst.State.PLAYING)
        if ret != Gst.StateChangeReturn.FAILURE:
            ret = self._wait_started(pipeline)
        if ret in (Gst.StateChangeReturn.SUCCESS, Gst.StateChangeReturn.NO_PREROLL):
            with self._lock:  # close() may have run meanwhile: never leave a pipeline playing
                if self._closing.is_set() or self._pipeline is not pipeline:
                    pipeline.set_state(Gst.State.NULL)
            return
        reason = self._start_failure(pipeline, ret)
        self._stats.errors += 1
        with self._lock:
            if self._pipeline is pipeline:
                self._teardown_locked()
        if self._refused is not None:
            raise SourceError(f"source '{self.uri}': {self._refused}")
        what = "file" if self._parsed.scheme == "file" else "source"
        raise SourceError(
            f"{what} '{self._parsed.location if what == 'file' else self.uri}' cannot be read: "
            f"{reason}; check that it exists and is a playable recording or a connected camera"
        )

    def _wait_started(self, pipeline: Gst.Pipeline) -> Gst.StateChangeReturn:
        """Wait for the state change, up to open_timeout_s; a refused frame size ends the wait
        at once (the pipeline would otherwise sit in ASYNC until the timeout)."""
        deadline = time.monotonic() + self._opts.open_timeout_s
        while True:
            step = min(START_POLL_S, max(deadline - time.monotonic(), 0.0))
            ret, _, _ = pipeline.get_state(int(step * Gst.SECOND))
            if ret != Gst.StateChangeReturn.ASYNC or self._refused is not None:
                return ret
            if time.monotonic() >= deadline:
                return ret

    def _start_failure(self, pipeline: Gst.Pipeline, ret: Gst.StateChangeReturn) -> str:
        """What stopped the pipeline from starting: its bus ERROR (which can be posted just
        after the state change fails), else whether it timed out or failed without a word."""
        bus = pipeline.get_bus()
        wait_ns = 0 if ret == Gst.StateChangeReturn.ASYNC else int(ERROR_GRACE_S * Gst.SECOND)
        msg = bus.timed_pop_filtered(wait_ns, Gst.MessageType.ERROR) if bus is not None else None
        if msg is not None:
            return _error_text(msg)
        if ret == Gst.StateChangeReturn.ASYNC:
            return f"did not start within {self._opts.open_timeout_s:g} s"
        return "GStreamer refused to start it without saying why"

    def _teardown_locked(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.set_state(Gst.State.NULL)

    # --- streaming thread ------------------------------------------------------------------

    def _on_new_sample(self, sink: GstApp.AppSink) -> Gst.FlowReturn:
        sample = sink.pull_sample()
        mono_ns, wall = time.monotonic_ns(), time.time()
        if sample is None:
            return Gst.FlowReturn.FLUSHING
        try:
            frame = self._to_frame(sample, mono_ns, wall)
        except (SourceError, ProfileError) as exc:
            self._stats.errors += 1
            log.error("%s: %s", self.uri, exc)
            if not self.is_live:
                self._put_replay(_Failure(f"source '{self.uri}': {exc}"))
            return Gst.FlowReturn.ERROR
        self._frames_since_start += 1
        self._last_frame_mono = time.monotonic()
        if self.is_live:
            self._slot.put(frame)
            return Gst.FlowReturn.OK
        return Gst.FlowReturn.OK if self._put_replay(frame) else Gst.FlowReturn.FLUSHING

    def _put_replay(self, item: object) -> bool:
        """Blocking put (backpressure) that gives up only when the source closes."""
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _to_frame(self, sample: Gst.Sample, mono_ns: int, wall: float) -> Frame:
        caps = sample.get_caps()
        # PyGObject hands out a new wrapper per call, so compare the caps themselves: parsing
        # them into a VideoInfo took 0.25 ms a frame, with the GIL held.
        if self._layout_cache is None or not caps.is_equal(self._layout_caps):
            layout = _layout(caps)
            problem = self._opts.frame_limit.problem(layout.width, layout.height)
            if problem is not None:
                self._refused = problem
                raise SourceError(problem)
            self._layout_cache = layout
            self._layout_caps = caps
        lay = self._layout_cache
        buf = sample.get_buffer()
        data = np.frombuffer(buf.extract_dup(0, buf.get_size()), dtype=np.uint8)
        index = self._arrived
        self._arrived += 1
        pts = None if buf.pts == Gst.CLOCK_TIME_NONE else int(buf.pts)
        profile = self._plan.profile
        if profile is None:
            pixels = self._gray8(data, lay)
            return Frame(pixels, FrameKind.GRAY8, index, self._opts.camera_id, wall, mono_ns, pts)
        raw = extract_raw(profile, data, lay.width, lay.height, lay.stride)
        return Frame(
            raw,
            FrameKind.RAW16,
            index,
            self._opts.camera_id,
            wall,
            mono_ns,
            pts,
            scale=profile.scale_k,
            offset=profile.offset_k,
        )

    def _gray8(self, data: npt.NDArray[np.uint8], lay: _Layout) -> npt.NDArray[np.uint8]:
        if lay.fmt != "GRAY8":
            raise SourceError(f"expected GRAY8 samples, got {lay.fmt}")
        need = lay.stride * lay.height
        if data.size < need:
            raise SourceError(f"buffer of {data.size} bytes is short of {need} ({lay})")
        rows = data[:need].reshape(lay.height, lay.stride)
        if lay.stride == lay.width:
            return rows
        return np.ascontiguousarray(rows[:, : lay.width])

    # --- bus watching ----------------------------------------------------------------------

    def _next_problem(self) -> str | None:
        """Wait on the running pipeline's bus until an ERROR, an EOS or a stall (live);
        None when the source is closing."""
        types = Gst.MessageType.ERROR | Gst.MessageType.EOS
        while not self._closing.is_set():
            with self._lock:
                pipeline = self._pipeline
            bus = pipeline.get_bus() if pipeline is not None else None
            if bus is None:
                return None if self._closing.is_set() else "pipeline gone"
            msg = bus.timed_pop_filtered(100 * Gst.MSECOND, types)
            if msg is None:
                stall = self._opts.stall_timeout_s
                if self.is_live and stall > 0 and time.monotonic() - self._last_frame_mono > stall:
                    return f"no frame for {stall:g} s"
                continue
            if msg.type == Gst.MessageType.EOS:
                return "end of stream"
            self._stats.errors += 1
            return _error_text(msg)
        return None

    def _watch_replay(self) -> None:
        while True:
            problem = self._next_problem()
            if problem is None:
                return
            if problem == "end of stream":
                if self._opts.loop and self._restart_replay():
                    continue
                self._put_replay(_END)
                return
            where = self._parsed.location if self._parsed.scheme == "file" else self.uri
            if self._refused is not None:
                self._put_replay(_Failure(f"source '{self.uri}': {self._refused}"))
                return
            self._put_replay(
                _Failure(
                    f"source '{where}' failed during replay: {problem}; the file may be "
                    f"truncated or corrupt, re-record or re-encode it"
                )
            )
            return

    def _restart_replay(self) -> bool:
        with self._lock:
            pipeline = self._pipeline
        if pipeline is None:
            return False
        flags = Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT
        if pipeline.seek_simple(Gst.Format.TIME, flags, 0):
            return True
        log.warning("%s: seek to start failed; rebuilding the pipeline to loop", self.uri)
        with self._lock:
            self._teardown_locked()
        try:
            self._start()
        except SourceError as exc:
            self._put_replay(_Failure(str(exc)))
            return False
        return True

    def _watch_live(self) -> None:
        delay = self._opts.reconnect_min_s
        while True:
            problem = self._next_problem()
            if problem is None:
                return
            log.warning("%s: %s; rebuilding the pipeline", self.uri, problem)
            if self._frames_since_start > 0:
                delay = self._opts.reconnect_min_s
            with self._lock:
                self._teardown_locked()
            while not self._closing.wait(delay):
                delay = min(delay * 2.0, self._opts.reconnect_max_s)
                self._stats.rebuilds += 1
                try:
                    self._start()
                    break
                except SourceError as exc:
                    log.warning("%s: rebuild failed (%s); next try in %.1f s", self.uri, exc, delay)
            if self._closing.is_set():
                return
