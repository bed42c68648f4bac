"""The GStreamer pipeline each source URI runs, built without GStreamer (so it can be shown and
tested anywhere) and without pasting anything from the URI into the launch string.

Every value taken from a URI (file path, device, camera name, RTSP address, credentials) is
checked here and set as a property of a named element (`pipeline.launch`); the launch template
holds only our own elements and numbers. RTSP credentials go to rtspsrc's user-id/user-pw and
never appear in a location, a log line, an error or a result (`ParsedUri.shown` is redacted).
`gst://` is the one exception by design: it is a pipeline fragment the operator writes, run as is.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.capture.base import ParsedUri, SourceError, SourceOptions
from pipeline.capture.profiles import CameraProfile, ProfileError, get_profile
from pipeline.launch import Launch, Prop
from pipeline.uri import has_control, parse_network_uri

log = logging.getLogger(__name__)

GRAY8_CAPS = "video/x-raw,format=GRAY8"
REPLAY_QUEUE_FRAMES = 2
RTSP_SCHEMES = ("rtsp", "rtsps", "rtspt")
DEVICE_PATH = re.compile(r"^/[A-Za-z0-9_./-]+$")


@dataclass(frozen=True)
class LaunchPlan:
    """The pipeline for a URI and how its samples become frames."""

    launch: Launch
    live: bool
    profile: CameraProfile | None  # None: 8-bit gray frames


def _appsink(live: bool, realtime: bool) -> str:
    if live:
        return "appsink name=sink sync=false max-buffers=1 drop=true"
    sync = "true" if realtime else "false"
    return f"appsink name=sink sync={sync} max-buffers={REPLAY_QUEUE_FRAMES} drop=false"


def _size_caps(opts: SourceOptions) -> str:
    parts = ["video/x-raw"]
    if opts.width:
        parts.append(f"width={opts.width}")
    if opts.height:
        parts.append(f"height={opts.height}")
    return ",".join(parts) if len(parts) > 1 else ""


def _radiometric_profile(parsed: ParsedUri, opts: SourceOptions) -> CameraProfile | None:
    fmt = (opts.capture_format or "").lower()
    if fmt not in ("", "gray8", "y16", "yuyv", "yuy2"):
        raise SourceError(f"source '{parsed.shown}': format={fmt!r} is not one of gray8, y16, yuyv")
    try:
        if opts.profile:
            return get_profile(opts.profile)
    except ProfileError as exc:
        raise SourceError(f"source '{parsed.shown}': {exc}") from None
    if fmt == "y16":
        log.info(
            "%s: format=y16 without a profile; assuming lepton (0.01 K per count)", parsed.shown
        )
        return get_profile("lepton")
    return None


def _checked_text(parsed: ParsedUri, value: str, what: str) -> str:
    if not value or has_control(value):
        raise SourceError(
            f"source '{parsed.shown}': the {what} {value!r} is empty or holds control characters"
        )
    return value


def _rtsp_props(parsed: ParsedUri) -> tuple[Prop, ...]:
    try:
        uri = parse_network_uri(parsed.text, RTSP_SCHEMES)
    except ValueError as exc:
        raise SourceError(
            f"source '{parsed.shown}': not a usable RTSP address: {exc}; e.g. "
            "rtsp://user:password@192.168.1.30:554/stream"
        ) from None
    props = [Prop("src", "location", uri.address)]
    if uri.username is not None:
        props.append(Prop("src", "user-id", uri.username))
    if uri.password is not None:
        props.append(Prop("src", "user-pw", uri.password, secret=True))
    return tuple(props)


def _camera(parsed: ParsedUri, opts: SourceOptions, live: bool) -> LaunchPlan:
    """v4l2:// and aravis://: a named source element, 8-bit or through a camera profile."""
    sink = _appsink(live, opts.realtime)
    profile = _radiometric_profile(parsed, opts)
    props: tuple[Prop, ...] = ()
    if parsed.scheme == "v4l2":
        device = parsed.location or "/dev/video0"
        if not DEVICE_PATH.match(device):
            raise SourceError(f"source '{parsed.shown}': give the device as a path, /dev/videoN")
        src, props = "v4l2src name=src", (Prop("src", "device", device),)
    elif parsed.location:
        name = _checked_text(parsed, parsed.location, "camera name")
        src, props = "aravissrc name=src", (Prop("src", "camera-name", name),)
    else:
        src = "aravissrc"
    if profile is not None:
        caps = profile.caps(opts.width, opts.height)
        return LaunchPlan(Launch(f"{src} ! {caps} ! {sink}", props), live, profile)
    size = _size_caps(opts)
    head = f"{src} ! {size}" if size else src
    template = f"{head} ! videoconvert ! {GRAY8_CAPS} ! {sink}"
    return LaunchPlan(Launch(template, props), live, None)


def _csi(parsed: ParsedUri, opts: SourceOptions, live: bool) -> LaunchPlan:
    w, h = opts.width or 1280, opts.height or 720
    fps = max(1, round(opts.fps))
    sensor = parsed.location or "0"
    if not sensor.isdigit():
        raise SourceError(f"source '{parsed.shown}': csi:// takes a sensor number, e.g. csi://0")
    template = (
        f"nvarguscamerasrc sensor-id={int(sensor)} ! video/x-raw(memory:NVMM),width={w},"
        f"height={h},framerate={fps}/1 ! nvvidconv ! {GRAY8_CAPS} ! {_appsink(live, False)}"
    )
    return LaunchPlan(Launch(template), live, None)


def _fragment(parsed: ParsedUri, opts: SourceOptions, live: bool) -> LaunchPlan:
    """gst://: the operator's own fragment, run as written (trusted config, never a device's)."""
    if not parsed.location:
        raise SourceError("source 'gst://': give a pipeline fragment, e.g. gst://videotestsrc")
    sink = _appsink(live, opts.realtime)
    profile = _radiometric_profile(parsed, opts)
    if profile is not None:
        caps = profile.caps(opts.width, opts.height)
        return LaunchPlan(Launch(f"{parsed.location} ! {caps} ! {sink}"), live, profile)
    template = f"{parsed.location} ! videoconvert ! {GRAY8_CAPS} ! {sink}"
    return LaunchPlan(Launch(template), live, None)


def build_launch(parsed: ParsedUri, opts: SourceOptions, live: bool) -> LaunchPlan:
    """The pipeline for a parsed URI (see pipeline.capture.gst's docstring for each scheme)."""
    sink = _appsink(live, opts.realtime)
    decode = "parsebin ! nvv4l2decoder ! nvvidconv" if opts.jetson else "decodebin ! videoconvert"
    scheme = parsed.scheme
    if scheme == "file":
        path = _checked_text(parsed, parsed.location, "file path")
        location = Prop("src", "location", str(Path(path).expanduser().absolute()))
        template = f"filesrc name=src ! {decode} ! {GRAY8_CAPS} ! {sink}"
        return LaunchPlan(Launch(template, (location,)), live, None)
    if scheme == "rtsp":
        template = f"rtspsrc name=src latency={int(opts.rtsp_latency_ms)} ! {decode} ! "
        template += f"{GRAY8_CAPS} ! {sink}"
        return LaunchPlan(Launch(template, _rtsp_props(parsed)), live, None)
    if scheme == "csi":
        return _csi(parsed, opts, live)
    if scheme in ("v4l2", "aravis"):
        return _camera(parsed, opts, live)
    if scheme == "gst":
        return _fragment(parsed, opts, live)
    raise SourceError(f"source '{parsed.shown}': scheme {scheme}:// has no GStreamer pipeline")
