"""GStreamer sources for real: file replay, bad files, live newest-wins, rebuild after loss."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.capture.base import EndOfStream, Source, SourceError, SourceOptions
from pipeline.capture.factory import open_source
from pipeline.gstreamer import Gst
from pipeline.types import Frame, FrameKind
from tests.helpers.wait import wait_until

FAST = SourceOptions(jetson=False, reconnect_min_s=0.05, reconnect_max_s=0.2, open_timeout_s=10)


def record(
    path: Path, frames: int, pattern: str = "white", width: int = 66, height: int = 50
) -> Path:
    """Write an MPEG-4 recording with GStreamer itself (an independent check of replay)."""
    launch = (
        f"videotestsrc num-buffers={frames} pattern={pattern} ! video/x-raw,width={width},"
        f"height={height},framerate=30/1 ! videoconvert ! avenc_mpeg4 ! mp4mux ! "
        f'filesink location="{path}"'
    )
    pipeline = Gst.parse_launch(launch)
    pipeline.set_state(Gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(
        30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR
    )
    pipeline.set_state(Gst.State.NULL)
    assert msg is not None and msg.type == Gst.MessageType.EOS
    return path


def test_elementary_and_container_mpeg4_replay_every_frame(tmp_path: Path) -> None:
    """MPEG-4 Part 2 in an MP4 skips gst-plugins-bad's mpeg4videoparse (it drops the last frame
    behind a demuxer); a bare elementary stream still needs a parser and keeps it."""
    elementary = tmp_path / "rec.m4v"
    launch = (
        "videotestsrc num-buffers=12 ! video/x-raw,width=66,height=50,framerate=30/1 ! "
        f'videoconvert ! avenc_mpeg4 ! filesink location="{elementary}"'
    )
    pipeline = Gst.parse_launch(launch)
    pipeline.set_state(Gst.State.PLAYING)
    pipeline.get_bus().timed_pop_filtered(30 * Gst.SECOND, Gst.MessageType.EOS)
    pipeline.set_state(Gst.State.NULL)
    for rec in (elementary, record(tmp_path / "rec.mp4", 12)):
        source = open_source(f"file://{rec}", FAST)
        source.open()
        try:
            assert [f.index for f in read_all(source)] == list(range(12)), rec.name
        finally:
            source.close()


def read_all(source: Source, limit: int = 1000) -> list[Frame]:
    frames: list[Frame] = []
    with pytest.raises(EndOfStream):
        for _ in range(limit):
            frame = source.read(timeout_s=5.0)
            if frame is not None:
                frames.append(frame)
    return frames


def test_file_replay_delivers_every_frame_then_end(tmp_path: Path) -> None:
    rec = record(tmp_path / "rec.mp4", 12, width=66)  # 66 px: GRAY8 rows are padded to 68
    source = open_source(f"file://{rec}", FAST)
    assert not source.is_live
    source.open()
    try:
        frames = read_all(source)
        with pytest.raises(EndOfStream):  # stays ended
            source.read(0.1)
    finally:
        source.close()
    assert [f.index for f in frames] == list(range(12))
    first = frames[0]
    assert first.kind is FrameKind.GRAY8 and first.pixels.dtype == np.uint8
    assert first.pixels.shape == (50, 66) and first.pixels.flags.c_contiguous
    assert float(first.pixels.mean()) > 200  # white pattern survived decode and conversion
    assert first.source_id == "cam0" and first.capture_mono_ns > 0
    assert source.stats.frames == 12 and source.stats.dropped == 0


def test_plain_path_and_black_pattern(tmp_path: Path) -> None:
    rec = record(tmp_path / "black.mp4", 3, pattern="black", width=64, height=48)
    source = open_source(str(rec), FAST)
    source.open()
    try:
        frames = read_all(source)
    finally:
        source.close()
    assert len(frames) == 3
    assert all(float(f.pixels.mean()) < 40 for f in frames)


def test_slow_consumer_replay_drops_nothing(tmp_path: Path) -> None:
    rec = record(tmp_path / "rec.mp4", 30, pattern="ball", width=64, height=48)
    source = open_source(str(rec), FAST)
    source.open()
    frames: list[Frame] = []
    try:
        with pytest.raises(EndOfStream):
            while True:
                frame = source.read(5.0)
                if frame is not None:
                    frames.append(frame)
                    time.sleep(0.01)  # the consumer is slower than the decoder
    finally:
        source.close()
    assert [f.index for f in frames] == list(range(30))
    assert source.stats.dropped == 0


def test_replay_loop_restarts(tmp_path: Path) -> None:
    rec = record(tmp_path / "rec.mp4", 5, width=64, height=48)
    source = open_source(str(rec), SourceOptions(jetson=False, loop=True))
    source.open()
    try:
        indices = []
        while len(indices) < 12:
            frame = source.read(5.0)
            assert frame is not None
            indices.append(frame.index)
    finally:
        source.close()
    assert indices == list(range(12))  # indices count on across the loop


def test_missing_and_corrupt_files_fail_at_open(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"missing\.mp4 not found"):
        open_source(str(tmp_path / "missing.mp4"), FAST).open()
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 500)
    source = open_source(str(bad), FAST)
    with pytest.raises(SourceError, match=r"corrupt\.mp4"):
        source.open()
    source.close()


def test_truncated_file_ends_in_source_error_not_hang(tmp_path: Path) -> None:
    rec = record(tmp_path / "rec.mp4", 30, pattern="ball", width=64, height=48)
    data = rec.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    source = open_source(str(cut), FAST)
    with pytest.raises(SourceError, match=r"cut\.mp4"):
        source.open()
        for _ in range(100):
            source.read(5.0)
    source.close()


def test_missing_device_and_element_are_clear() -> None:
    dev = "/dev/video97"
    if os.path.exists(dev):
        pytest.skip(f"{dev} exists here")
    with pytest.raises(SourceError, match="no device /dev/video97"):
        open_source(f"v4l2://{dev}", FAST).open()
    if Gst.ElementFactory.find("aravissrc") is None:
        with pytest.raises(SourceError, match="aravissrc"):
            open_source("aravis://A65", FAST).open()


CAPS = "video/x-raw,format=GRAY8,width=64,height=48"
LIVE = f"gst://videotestsrc is-live=true pattern=ball ! {CAPS}"


def test_live_newest_frame_wins_and_drops_are_counted() -> None:
    source = open_source(f"{LIVE},framerate=100/1", FAST)
    assert source.is_live
    source.open()
    try:
        first = source.read(5.0)
        assert first is not None
        assert wait_until(lambda: source.stats.dropped >= 3)  # a slow consumer
        newest = source.read(5.0)
        assert newest is not None
        stats = source.stats
    finally:
        source.close()
    assert newest.index > first.index + 1  # skipped straight to the newest frame
    assert stats.dropped >= newest.index - first.index - 1
    assert stats.frames == 2 and stats.rebuilds == 0
    assert newest.pixels.shape == (48, 64)
    assert newest.pts_ns is not None and first.pts_ns is not None and newest.pts_ns > first.pts_ns
    assert source.read(0.5) is None  # closed: nothing more, no exception


def test_live_rebuilds_after_end_of_stream() -> None:
    source = open_source(f"gst://videotestsrc is-live=true num-buffers=4 ! {CAPS}", FAST)
    source.open()
    indices: list[int] = []
    try:

        def collect() -> bool:
            frame = source.read(0.2)
            if frame is not None:
                indices.append(frame.index)
            return source.stats.rebuilds >= 2 and len(indices) > 8

        assert wait_until(collect)
    finally:
        source.close()
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert max(indices) >= 8  # frames came from more than two pipeline lifetimes


def test_live_rebuild_with_backoff_survives_a_lost_file(tmp_path: Path) -> None:
    rec = record(tmp_path / "cam.mp4", 4, width=64, height=48)
    away = tmp_path / "away.mp4"
    source = open_source(f'gst://filesrc location="{rec}" ! decodebin', FAST)
    assert source.is_live
    source.open()
    try:
        assert source.read(5.0) is not None
        rec.rename(away)  # the "device" disappears: rebuilds now fail and back off
        assert wait_until(lambda: source.stats.errors >= 2)
        while source.read(0.05) is not None:  # drain frames from before the loss
            pass
        before = source.stats
        assert source.read(0.3) is None  # no frame and no exception while it is gone
        away.rename(rec)  # back again: the next rebuild succeeds
        got: list[Frame] = []

        def frame_again() -> bool:
            frame = source.read(0.2)
            if frame is not None:
                got.append(frame)
            return bool(got)

        assert wait_until(frame_again)
        after = source.stats
    finally:
        source.close()
    assert after.rebuilds > before.rebuilds >= 2
    assert got and got[0].index >= 4


def _raw_replay(tmp_path: Path, data: bytes, caps: str, profile: str) -> list[Frame]:
    """Crafted camera buffers pushed through a real pipeline (multifilesrc stands in for the
    camera element; the profile's caps and the appsink are what the camera path runs)."""
    raw = tmp_path / "frame.raw"
    raw.write_bytes(data)
    uri = f"gst://multifilesrc location={raw} loop=true num-buffers=3 caps={caps}"
    source = open_source(uri, SourceOptions(jetson=False, live=False, profile=profile))
    source.open()
    try:
        return read_all(source)
    finally:
        source.close()


def test_p2pro_buffers_through_gstreamer_read_30c(tmp_path: Path) -> None:
    from pipeline.capture.profiles import get_profile

    prof = get_profile("p2pro")
    image_half = np.full((192, 512), 0x80, np.uint8)
    counts = prof.from_celsius(np.full((192, 256), 30.0))
    counts[5, 7] = prof.from_celsius(36.6)
    data = np.concatenate([image_half, counts.astype("<u2").view(np.uint8).reshape(192, 512)])
    caps = "video/x-raw,format=YUY2,width=256,height=384,framerate=25/1"
    frames = _raw_replay(tmp_path, data.tobytes(), caps, "p2pro")
    assert len(frames) == 3
    frame = frames[0]
    assert frame.kind is FrameKind.RAW16 and frame.pixels.shape == (192, 256)
    assert frame.scale == 1 / 64
    celsius = frame.celsius()
    assert celsius is not None
    assert abs(float(celsius[0, 0]) - 30.0) <= 1 / 128
    assert abs(float(celsius[5, 7]) - 36.6) <= 1 / 128


def test_lepton_y16_through_gstreamer_with_row_padding(tmp_path: Path) -> None:
    width, height = 81, 4  # 162 data bytes per row; GStreamer pads GRAY16 rows to 164
    counts = np.full((height, width), 30315, dtype="<u2")  # 30.00 C in centi-kelvin
    counts[1, 2] = 31015  # 37.00 C
    rows = np.full((height, 164), 0xFF, np.uint8)
    rows[:, :162] = counts.view(np.uint8).reshape(height, 162)
    caps = f"video/x-raw,format=GRAY16_LE,width={width},height={height},framerate=9/1"
    frames = _raw_replay(tmp_path, rows.tobytes(), caps, "lepton")
    assert len(frames) == 3
    np.testing.assert_array_equal(frames[0].pixels, counts)
    celsius = frames[0].celsius()
    assert celsius is not None
    assert abs(float(celsius[0, 0]) - 30.0) < 1e-3 and abs(float(celsius[1, 2]) - 37.0) < 1e-3


def _decoder_threads(source: Source) -> dict[str, int]:
    """max-threads of every decoder in the running pipeline that has the property."""
    pipeline = source._pipeline  # type: ignore[attr-defined]
    found: dict[str, int] = {}
    it = pipeline.iterate_recurse()
    while True:
        res, element = it.next()
        if res != Gst.IteratorResult.OK:
            break
        if element.find_property("max-threads") is not None:
            found[element.get_factory().get_name()] = element.get_property("max-threads")
    return found


def test_replay_decoder_runs_on_one_thread_and_live_keeps_its_default(tmp_path: Path) -> None:
    rec = record(tmp_path / "rec.mp4", 6)
    replay = open_source(f"file://{rec}", FAST)
    replay.open()
    try:
        assert replay.read(timeout_s=5.0) is not None
        assert _decoder_threads(replay) == {"avdec_mpeg4": 1}
    finally:
        replay.close()
    live_uri = "gst://videotestsrc is-live=true ! videoconvert ! avenc_mpeg4 ! avdec_mpeg4"
    live = open_source(live_uri, FAST)
    live.open()
    try:
        assert wait_until(lambda: live.read(timeout_s=0.5) is not None)
        assert _decoder_threads(live) == {"avdec_mpeg4": 0}  # 0: libav picks per core
    finally:
        live.close()
