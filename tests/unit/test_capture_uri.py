"""URI parsing and the pipeline strings each URI runs (x86 and Jetson)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.capture.base import (
    LatestSlot,
    SourceError,
    SourceOptions,
    effective_options,
    is_live,
    parse_uri,
)
from pipeline.capture.factory import describe_pipeline
from pipeline.types import Frame, FrameKind

X86 = SourceOptions(jetson=False)
JETSON = SourceOptions(jetson=True)
LIVE_SINK = "appsink name=sink sync=false max-buffers=1 drop=true"
REPLAY_SINK = "appsink name=sink sync=false max-buffers=2 drop=false"


def test_plain_paths_become_file_or_folder(tmp_path: Path) -> None:
    assert parse_uri("rec.mp4").scheme == "file"
    assert parse_uri("rec.mp4").location == "rec.mp4"
    assert parse_uri(str(tmp_path)).scheme == "dmr"
    assert parse_uri("/dev/video1").scheme == "v4l2"
    assert parse_uri("/dev/video1").location == "/dev/video1"


def test_schemes_and_locations() -> None:
    assert parse_uri("file://rec.mp4").location == "rec.mp4"
    assert parse_uri("file:///data/rec.mp4").location == "/data/rec.mp4"
    p = parse_uri("v4l2:///dev/video0?format=y16&profile=lepton")
    assert (p.scheme, p.location) == ("v4l2", "/dev/video0")
    assert p.params == {"format": "y16", "profile": "lepton"}
    assert parse_uri("csi://").location == "0"
    assert parse_uri("dmr://some/folder").location == "some/folder"
    t = parse_uri("test://?fps=12&seed=3")
    assert t.scheme == "test" and t.params == {"fps": "12", "seed": "3"}
    r = parse_uri("rtsp://cam.local:554/stream?channel=1")
    assert r.scheme == "rtsp" and r.location == "rtsp://cam.local:554/stream?channel=1"
    g = parse_uri("gst://videotestsrc ! video/x-raw,width=8")
    assert g.location == "videotestsrc ! video/x-raw,width=8"


def test_unknown_scheme_lists_supported() -> None:
    with pytest.raises(SourceError) as info:
        parse_uri("http://example/x.mp4")
    text = str(info.value)
    assert "http://example/x.mp4" in text
    for scheme in ("file://", "v4l2://", "csi://", "rtsp://", "dmr://", "test://"):
        assert scheme in text


def test_unknown_or_bad_query_parameter() -> None:
    with pytest.raises(SourceError, match="unknown query parameter"):
        parse_uri("test://?speed=3")
    with pytest.raises(SourceError, match="fps='fast' is not a float"):
        effective_options(parse_uri("test://?fps=fast"), X86)
    with pytest.raises(SourceError, match="empty"):
        parse_uri("  ")


def test_query_overrides_options() -> None:
    opts = effective_options(parse_uri("test://?fps=12&seed=3"), SourceOptions(fps=30, seed=0))
    assert (opts.fps, opts.seed) == (12.0, 3)
    opts = effective_options(parse_uri("dmr://f?scale=0.04&offset=1.5&loop=1"), X86)
    assert (opts.png16_scale, opts.png16_offset, opts.loop) == (0.04, 1.5, True)
    assert effective_options(parse_uri("aravis://"), X86).profile == "ax5"
    with pytest.raises(SourceError, match="backoff"):
        effective_options(parse_uri("test://"), SourceOptions(reconnect_min_s=5, reconnect_max_s=1))


def test_liveness_from_scheme_unless_overridden() -> None:
    assert is_live(parse_uri("v4l2:///dev/video0"), X86)
    assert is_live(parse_uri("test://"), X86)
    assert not is_live(parse_uri("file://a.mp4"), X86)
    assert is_live(parse_uri("file://a.mp4"), SourceOptions(live=True))


def test_file_pipeline_x86_and_jetson() -> None:
    x86 = describe_pipeline("file:///rec/a b.mp4", X86)
    assert x86 == (
        'filesrc location="/rec/a b.mp4" ! decodebin ! videoconvert ! video/x-raw,format=GRAY8 ! '
        + REPLAY_SINK
    )
    jet = describe_pipeline("file:///rec/a.mp4", JETSON)
    assert "parsebin ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=GRAY8" in jet
    assert "decodebin" not in jet and jet.endswith(REPLAY_SINK)
    realtime = describe_pipeline("file:///rec/a.mp4", SourceOptions(jetson=False, realtime=True))
    assert "sync=true max-buffers=2 drop=false" in realtime


def test_v4l2_pipelines() -> None:
    gray = describe_pipeline("v4l2:///dev/video0", X86)
    assert gray == (
        f'v4l2src device="/dev/video0" ! videoconvert ! video/x-raw,format=GRAY8 ! {LIVE_SINK}'
    )
    sized = describe_pipeline("v4l2:///dev/video2?width=640&height=480", X86)
    assert 'device="/dev/video2" ! video/x-raw,width=640,height=480 ! videoconvert' in sized
    y16 = describe_pipeline("v4l2:///dev/video0?format=y16&profile=lepton", X86)
    assert y16 == f'v4l2src device="/dev/video0" ! video/x-raw,format=GRAY16_LE ! {LIVE_SINK}'
    p2 = describe_pipeline("v4l2:///dev/video0?profile=p2pro", X86)
    assert "video/x-raw,format=YUY2,width=256,height=384 ! appsink" in p2
    with pytest.raises(SourceError, match="unknown camera profile"):
        describe_pipeline("v4l2:///dev/video0?profile=nope", X86)


def test_csi_rtsp_aravis_pipelines() -> None:
    csi = describe_pipeline("csi://1", JETSON)
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280")
    assert "framerate=30/1 ! nvvidconv ! video/x-raw,format=GRAY8 ! " + LIVE_SINK in csi
    rtsp = describe_pipeline("rtsp://10.0.0.5/live", X86)
    assert rtsp == (
        'rtspsrc location="rtsp://10.0.0.5/live" latency=200 ! decodebin ! videoconvert ! '
        f"video/x-raw,format=GRAY8 ! {LIVE_SINK}"
    )
    rtsp_jet = describe_pipeline("rtsp://10.0.0.5/live", JETSON)
    assert "latency=200 ! parsebin ! nvv4l2decoder ! nvvidconv" in rtsp_jet
    ax5 = describe_pipeline("aravis://FLIR-A65", X86)
    assert ax5 == f'aravissrc camera-name="FLIR-A65" ! video/x-raw,format=GRAY16_LE ! {LIVE_SINK}'


def test_non_gstreamer_sources_say_so() -> None:
    assert "no GStreamer" in describe_pipeline("dmr://folder", X86)
    assert "no GStreamer" in describe_pipeline("test://?fps=5", X86)


def _frame(i: int) -> Frame:
    return Frame(np.zeros((2, 2), np.uint8), FrameKind.GRAY8, i, "c", 0.0, 0)


def test_latest_slot_newest_wins_and_counts_drops() -> None:
    slot = LatestSlot()
    assert slot.get(0.01) is None
    for i in range(5):
        slot.put(_frame(i))
    got = slot.get(0.01)
    assert got is not None and got.index == 4
    assert slot.dropped == 4
    assert slot.get(0.01) is None
    slot.close()
    assert slot.get(5.0) is None  # closed: returns at once with nothing
