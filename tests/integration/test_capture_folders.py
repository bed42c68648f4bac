"""Folder replay (DMR-IR matrices, 16-bit PNG sequences) and the synthetic test:// stream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.capture.base import EndOfStream, SourceError, SourceOptions
from pipeline.capture.factory import open_source
from pipeline.capture.folder import FolderSource
from pipeline.data.png16 import decode_gray16
from pipeline.data.recording import frame_file
from pipeline.data.synthetic import SyntheticStream
from pipeline.gstreamer import Gst
from pipeline.types import FrameKind
from tests.helpers.wait import wait_until

OPTS = SourceOptions(jetson=False)


def replay(uri: str, opts: SourceOptions = OPTS) -> list[np.ndarray]:
    source = open_source(uri, opts)
    source.open()
    out = []
    try:
        with pytest.raises(EndOfStream):
            for _ in range(1000):
                frame = source.read(1.0)
                assert frame is not None
                assert frame.kind is FrameKind.RAW16 and frame.index == len(out)
                assert (frame.scale, frame.offset) == (opts.png16_scale, opts.png16_offset)
                out.append(np.asarray(frame.pixels))
    finally:
        source.close()
    return out


def test_png16_folder_replays_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    written = [rng.integers(0, 65536, size=(48, 64), dtype=np.uint16) for _ in range(11)]
    written[0][0, :4] = [0, 1, 65534, 65535]  # extremes and odd values survive
    for i, image in enumerate(written):
        assert cv2.imwrite(str(tmp_path / f"frame_{i:05d}.png"), image)
    got = replay(f"dmr://{tmp_path}")
    assert len(got) == 11  # natural order: frame_00010 comes last
    for a, b in zip(written, got, strict=True):
        assert b.dtype == np.uint16
        np.testing.assert_array_equal(a, b)


def test_png16_written_by_gstreamer_pngenc_replays_bit_exact(tmp_path: Path) -> None:
    """DESIGN's recording path (GRAY16_BE ! pngenc ! multifilesink) round-trips exactly."""
    width, height, count = 40, 30, 3
    frames = [
        (np.arange(width * height, dtype=np.uint16).reshape(height, width) * (97 + i))
        for i in range(count)
    ]
    caps = f"video/x-raw,format=GRAY16_LE,width={width},height={height},framerate=10/1"
    pipeline = Gst.parse_launch(
        f'appsrc name=src caps="{caps}" format=time ! videoconvert ! video/x-raw,format=GRAY16_BE '
        f'! pngenc ! multifilesink location="{tmp_path}/frame_%05d.png"'
    )
    src = pipeline.get_by_name("src")
    pipeline.set_state(Gst.State.PLAYING)
    for i, image in enumerate(frames):
        buf = Gst.Buffer.new_wrapped(image.astype("<u2").tobytes())
        buf.pts = i * Gst.SECOND // 10
        buf.duration = Gst.SECOND // 10
        assert src.emit("push-buffer", buf) == Gst.FlowReturn.OK
    src.emit("end-of-stream")
    msg = pipeline.get_bus().timed_pop_filtered(
        20 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR
    )
    pipeline.set_state(Gst.State.NULL)
    assert msg is not None and msg.type == Gst.MessageType.EOS
    got = replay(str(tmp_path), SourceOptions(jetson=False, png16_scale=0.04, png16_offset=0.5))
    assert len(got) == count
    for a, b in zip(frames, got, strict=True):
        np.testing.assert_array_equal(a, b)
    for i, image in enumerate(frames):  # pngenc's rows are None-filtered: the fast decoder's
        np.testing.assert_array_equal(decode_gray16((tmp_path / frame_file(i)).read_bytes()), image)


def test_synth_png16_recording_replays_as_celsius(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    cmd = [sys.executable, "-m", "pipeline.cli", "synth", "--out", str(out), "--kind", "png16"]
    subprocess.run([*cmd, "--frames", "3", "--patients", "1", "--seed", "2"], check=True)
    source = open_source(f"dmr://{out}", OPTS)
    source.open()
    try:
        frame = source.read()
    finally:
        source.close()
    assert frame is not None and frame.kind is FrameKind.RAW16
    celsius = frame.celsius()
    assert celsius is not None
    assert 15.0 < float(np.median(celsius)) < 40.0  # centi-kelvin read back as body-ish temps


def test_dmr_matrix_folder(shared_dmr: Path) -> None:
    source = open_source(f"dmr://{shared_dmr}", SourceOptions(jetson=False, camera_id="bed1"))
    assert isinstance(source, FolderSource) and not source.is_live
    source.open()
    try:
        assert len(source.files) >= 100 and all(p.suffix == ".gz" for p in source.files)
        frames = [source.read(), source.read()]
    finally:
        source.close()
    for i, frame in enumerate(frames):
        assert frame is not None and frame.kind is FrameKind.CELSIUS and frame.index == i
        assert frame.source_id == "bed1" and frame.pixels.shape == (480, 640)
        assert 15.0 < float(np.max(frame.pixels)) < 42.0


def test_folder_loop_and_errors(tmp_path: Path) -> None:
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"img_{i}.png"), np.full((8, 8), 10 * i, np.uint8))
    source = open_source(str(tmp_path), SourceOptions(jetson=False, loop=True))
    source.open()
    frames = [source.read() for _ in range(5)]
    source.close()
    assert [f.index for f in frames if f is not None] == [0, 1, 2, 3, 4]
    assert [int(f.pixels[0, 0]) for f in frames if f is not None] == [0, 10, 0, 10, 0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="holds no thermograms"):
        open_source(f"dmr://{empty}", OPTS).open()
    with pytest.raises(SourceError, match="not a folder"):
        open_source(f"dmr://{tmp_path / 'nope'}", OPTS).open()
    (tmp_path / "img_2.png").write_bytes(b"not a png")
    broken = open_source(str(tmp_path), OPTS)
    broken.open()
    broken.read()
    broken.read()
    with pytest.raises(SourceError, match=r"img_2\.png"):
        broken.read()


def test_test_source_is_live_synthetic_and_drops() -> None:
    opts = SourceOptions(jetson=False, width=64, height=48)
    source = open_source("test://?fps=50&seed=3", opts)
    assert source.is_live
    source.open()
    try:
        first = source.read(5.0)
        # a slow consumer: frames pile up and all but the newest drop
        wait_until(lambda: source.stats.dropped >= 2, 20, "two dropped frames")
        newest = source.read(5.0)
    finally:
        source.close()
    assert first is not None and newest is not None
    assert first.kind is FrameKind.CELSIUS and first.pixels.dtype == np.float32
    assert first.pixels.shape == (48, 64)
    expected = SyntheticStream(3, (48, 64)).frame(newest.index)
    np.testing.assert_array_equal(newest.pixels, expected)  # deterministic per (seed, index)
    assert newest.index > first.index + 1
    assert source.stats.dropped >= newest.index - first.index - 1
    assert source.stats.frames == 2
