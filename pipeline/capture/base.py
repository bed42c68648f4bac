"""Capture: every frame source behind one small `Source` protocol, chosen by URI.

URIs follow jetson-inference's videoSource spelling (DESIGN.md, "Sources"):

| URI | source | semantics |
|---|---|---|
| `file://rec.mp4`, `rec.mp4` | `capture_gst.GstSource` (filesrc ! decodebin) | replay |
| `v4l2:///dev/video0`, `/dev/video0` | v4l2src; `?format=y16&profile=lepton` radiometric | live |
| `v4l2:///dev/video0?profile=p2pro` | InfiRay P2 Pro / TC001, YUY2 256x384 split | live |
| `aravis://<camera-name>` (or `aravis://`) | aravissrc, FLIR Ax5 Mono16 (`profile=ax5`) | live |
| `csi://0` | nvarguscamerasrc (Jetson only) | live |
| `rtsp://host/path` | rtspsrc ! decodebin | live |
| `dmr://folder`, a folder path | `capture_files.FolderSource` (DMR-IR, images, PNG16) | replay |
| `test://?fps=30&seed=1` | `capture_test.TestSource` (synthetic thermograms) | live |
| `test://?settle_s=20` | one synthetic patient whose skin settles (acclimatization tests) | live |
| `gst://<fragment>` | escape hatch: a gst-launch fragment; we append the appsink | live |

`gst://` exists for tests and odd cameras: it runs exactly the fragment given, so the live
machinery (newest-wins, drop counting, rebuild with backoff) is exercised with real GStreamer
elements such as `videotestsrc is-live=true` on a machine without a camera.

Query parameters (all optional): `format` (gray8|y16|yuyv), `profile` (see
pipeline.capture.profiles),
`width`, `height`, `fps`, `seed`, `scale`, `offset` (PNG16 kelvin per count / at zero), `loop`,
`settle_s` (test:// only: the synthetic patient's skin settles over this many seconds).
They override the matching `SourceOptions` field. Unknown parameters are an error.

Live sources keep only the newest frame (`LatestSlot`) and count what they drop; replays apply
backpressure and drop nothing; `read()` raises `EndOfStream` at the end of a replay.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qsl

from pipeline.capture.limits import FrameLimit
from pipeline.types import Frame
from pipeline.uri import redact

SCHEMES: dict[str, str] = {
    "file": "recorded video (mp4, mkv, avi...) through GStreamer",
    "v4l2": "USB/UVC camera, 8-bit or radiometric 16-bit",
    "csi": "Jetson CSI camera (nvarguscamerasrc)",
    "rtsp": "network camera (RTSP)",
    "aravis": "GigE Vision camera through aravissrc (FLIR Ax5)",
    "dmr": "folder of DMR-IR temperature matrices, images or 16-bit PNGs",
    "test": "synthetic thermogram stream",
    "gst": "a raw gst-launch fragment (tests, unusual cameras)",
}
LIVE_SCHEMES = frozenset({"v4l2", "csi", "rtsp", "aravis", "test", "gst"})
QUERY_KEYS = frozenset(
    {"format", "profile", "width", "height", "fps", "seed", "scale", "offset", "loop", "settle_s"}
)


class SourceError(Exception):
    """A source cannot be opened or failed fatally; the message names the URI/file and the fix."""


class EndOfStream(Exception):
    """A replay has delivered its last frame."""


@dataclass
class SourceStats:
    """Counters a source keeps; every drop is counted."""

    frames: int = 0  # frames handed to the consumer
    dropped: int = 0  # frames lost to newest-wins (live only)
    rebuilds: int = 0  # pipeline rebuilds after an error or a lost device
    errors: int = 0  # bus errors and failed (re)starts seen


@runtime_checkable
class Source(Protocol):
    """What the runner reads frames from."""

    uri: str
    is_live: bool

    def open(self) -> None: ...

    def read(self, timeout_s: float = 1.0) -> Frame | None: ...

    def close(self) -> None: ...

    @property
    def stats(self) -> SourceStats: ...


def detect_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T writes this file)."""
    return Path("/etc/nv_tegra_release").exists()


@dataclass(frozen=True)
class SourceOptions:
    """How to open a source; the config layer maps onto this plain dataclass."""

    camera_id: str = "cam0"
    live: bool | None = None  # None: from the scheme
    fps: float = 30.0  # test:// rate; pacing for realtime folder replay
    realtime: bool = False  # replay at the recorded rate instead of as fast as possible
    profile: str | None = None  # camera profile (pipeline.capture.profiles)
    width: int | None = None
    height: int | None = None
    jetson: bool = field(default_factory=detect_jetson)
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    loop: bool = False  # restart a replay at its end instead of raising EndOfStream
    seed: int = 0  # test:// synthetic stream seed
    png16_scale: float = 0.01  # kelvin per count of 16-bit PNG recordings (centi-kelvin)
    png16_offset: float = 0.0  # kelvin at count 0
    decode_workers: int | None = None  # folder replay: files decoded at once; None auto, 0 inline
    rtsp_latency_ms: int = 200
    open_timeout_s: float = 10.0  # how long open() waits for a pipeline to start
    stall_timeout_s: float = 10.0  # live: rebuild when no frame arrives for this long (0 = never)
    capture_format: str | None = None  # gray8 | y16 | yuyv; None: from the profile
    settle_s: float | None = None  # test://: one patient whose skin settles over this long
    frame_limit: FrameLimit = field(default_factory=FrameLimit)  # refused before decoding


@dataclass(frozen=True)
class ParsedUri:
    """A source URI taken apart: scheme, location (path, device, host) and query parameters."""

    text: str
    scheme: str
    location: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        """The URI as logs, errors, results and records may show it: credentials masked."""
        return redact(self.text)


def _split_query(rest: str, text: str) -> tuple[str, dict[str, str]]:
    if "?" not in rest:
        return rest, {}
    location, query = rest.split("?", 1)
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - QUERY_KEYS)
    if unknown:
        raise SourceError(
            f"source '{redact(text)}': unknown query parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(QUERY_KEYS))}"
        )
    return location, params


def parse_uri(text: str) -> ParsedUri:
    """Take a source URI apart. Plain paths become `file` (a file) or `dmr` (a folder);
    `/dev/video*` becomes `v4l2`. Raises SourceError for an unknown scheme."""
    text = text.strip()
    if not text:
        raise SourceError("source URI is empty; give a file, folder, or e.g. v4l2:///dev/video0")
    if "://" not in text:
        location, params = _split_query(text, text)
        if location.startswith("/dev/video"):
            return ParsedUri(text, "v4l2", location, params)
        scheme = "dmr" if os.path.isdir(location) else "file"
        return ParsedUri(text, scheme, location, params)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme == "gst":
        return ParsedUri(text, scheme, rest.strip())
    if scheme in ("rtsp", "rtsps"):
        # the query belongs to the camera's server: keep the URI whole
        return ParsedUri(text, "rtsp", text)
    if scheme not in SCHEMES:
        listed = ", ".join(f"{s}://" for s in SCHEMES)
        raise SourceError(
            f"source '{redact(text)}': unknown scheme '{scheme}://'; supported: {listed}"
        )
    location, params = _split_query(rest, text)
    if scheme == "csi" and not location:
        location = "0"
    return ParsedUri(text, scheme, location, params)


def _param(parsed: ParsedUri, key: str, kind: type[int] | type[float]) -> int | float | None:
    raw = parsed.params.get(key)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise SourceError(
            f"source '{parsed.shown}': query parameter {key}={raw!r} is not a {kind.__name__}"
        ) from None


def effective_options(parsed: ParsedUri, options: SourceOptions) -> SourceOptions:
    """Options with the URI's query parameters applied (the URI is more specific, so it wins)."""
    changes: dict[str, object] = {}
    for key, kind in (("width", int), ("height", int), ("seed", int)):
        value = _param(parsed, key, kind)
        if value is not None:
            changes[key] = value
    for key, name in (
        ("fps", "fps"),
        ("scale", "png16_scale"),
        ("offset", "png16_offset"),
        ("settle_s", "settle_s"),
    ):
        value = _param(parsed, key, float)
        if value is not None:
            changes[name] = value
    if "profile" in parsed.params:
        changes["profile"] = parsed.params["profile"]
    if "format" in parsed.params:
        changes["capture_format"] = parsed.params["format"].lower()
    if "loop" in parsed.params:
        changes["loop"] = parsed.params["loop"].lower() in ("1", "true", "yes", "on")
    if parsed.scheme == "aravis" and options.profile is None and "profile" not in changes:
        changes["profile"] = "ax5"
    opts = replace(options, **changes)  # type: ignore[arg-type]
    if opts.reconnect_min_s <= 0 or opts.reconnect_max_s < opts.reconnect_min_s:
        raise SourceError(
            f"source '{parsed.shown}': reconnect backoff must satisfy 0 < min <= max, got "
            f"{opts.reconnect_min_s}..{opts.reconnect_max_s}"
        )
    if opts.fps <= 0:
        raise SourceError(f"source '{parsed.shown}': fps must be > 0, got {opts.fps}")
    if opts.settle_s is not None and not 0 < opts.settle_s <= 86400:
        raise SourceError(
            f"source '{parsed.shown}': settle_s must be in (0, 86400] seconds, got {opts.settle_s}"
        )
    return opts


def is_live(parsed: ParsedUri, options: SourceOptions) -> bool:
    if options.live is not None:
        return options.live
    return parsed.scheme in LIVE_SCHEMES


class LatestSlot:
    """One-slot handoff for live sources: the producer never blocks, the newest frame wins and
    every overwritten frame is counted as dropped."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify()

    def get(self, timeout_s: float) -> Frame | None:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._cond:
            while self._frame is None and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
