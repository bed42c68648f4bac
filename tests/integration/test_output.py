"""Annotated outputs for real: a file that decodes with every frame, RTP over loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import cv2
import gi
import numpy as np
import pytest

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import Gst, GstApp  # noqa: E402, F401

from pipeline.capture.base import EndOfStream, SourceOptions  # noqa: E402
from pipeline.capture.factory import open_source  # noqa: E402
from pipeline.output.base import OutputError, OutputOptions  # noqa: E402
from pipeline.output.gst import describe_output, open_output  # noqa: E402
from pipeline.output.overlay import annotate  # noqa: E402
from pipeline.types import Frame, Prediction, ThermalStats  # noqa: E402

Gst.init(None)
W, H = 160, 120
SICK = Prediction("sick", 1, 0.87, (0.13, 0.87))
THERMAL = ThermalStats(25.0, 36.5, 30.0)


def ramp(i: int = 0) -> np.ndarray:
    row = (np.linspace(0, 255, W) + 3 * i) % 256
    return np.tile(row.astype(np.uint8), (H, 1))


def decode(path: Path) -> list[Frame]:
    source = open_source(str(path), SourceOptions(jetson=False))
    source.open()
    frames: list[Frame] = []
    try:
        with pytest.raises(EndOfStream):
            for _ in range(10_000):
                frame = source.read(5.0)
                if frame is not None:
                    frames.append(frame)
    finally:
        source.close()
    return frames


def luma(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.int16)


def test_file_output_keeps_every_frame_and_the_overlay(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    output = open_output(f"file://{out}", W, H, 10)
    count = 40
    for i in range(count):  # pushed as fast as possible: backpressure, no drops
        output.write(ramp(i), SICK, THERMAL, i)
    output.close()
    assert output.frames_written == count
    frames = decode(out)
    assert len(frames) == count
    last = frames[-1].pixels.astype(np.int16)
    assert last.shape == (H, W)
    annotated = luma(annotate(ramp(count - 1), SICK, THERMAL, count - 1))
    plain = luma(annotate(ramp(count - 1), None, None, count - 1, OutputOptions(window_c=None)))
    # the file shows the annotated picture (up to codec error) ...
    assert float(np.abs(last - annotated).mean()) < 12.0
    # ... and the label box changed pixels compared with the picture without it
    box = (slice(0, 22), slice(0, 70))
    assert float(np.abs(annotated[box] - plain[box]).mean()) > 20.0
    assert float(np.abs(last[box] - plain[box]).mean()) > 15.0


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".mkv"])
def test_file_output_is_stamped_at_the_frame_rate(tmp_path: Path, suffix: str) -> None:
    # .mp4/.mkv: avenc_mpeg4 leaves its buffers unstamped; the output stamps them again
    out = tmp_path / f"out{suffix}"
    output = open_output(str(out), W, H, 20)
    for i in range(5):
        output.write(ramp(i), SICK, None, i)
    output.close()
    frames = decode(out)
    assert [f.pts_ns for f in frames] == [i * 50_000_000 for i in range(5)]


def test_frames_of_another_size_are_scaled(tmp_path: Path) -> None:
    out = tmp_path / "scaled.mp4"
    output = open_output(str(out), W, H, 10)
    output.write(np.zeros((480, 640), np.uint8), SICK, THERMAL, 0)
    output.close()
    frames = decode(out)
    assert len(frames) == 1 and frames[0].pixels.shape == (H, W)


def test_rtp_loopback_is_received_and_decoded() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caps = "application/x-rtp,media=video,clock-rate=90000,encoding-name=JPEG,payload=26"
    receiver = Gst.parse_launch(
        f'udpsrc address=127.0.0.1 port={port} buffer-size=4000000 caps="{caps}" '
        "! rtpjpegdepay ! jpegdec ! videoconvert ! video/x-raw,format=GRAY8 "
        "! appsink name=sink sync=false max-buffers=1000"
    )
    sink = receiver.get_by_name("sink")
    receiver.set_state(Gst.State.PLAYING)
    sent = 30
    try:
        output = open_output(f"rtp://127.0.0.1:{port}", W, H, 30)
        for i in range(sent):
            output.write(ramp(i), SICK, THERMAL, i)
        output.close()
        received = []
        while (sample := sink.try_pull_sample(2 * Gst.SECOND)) is not None:
            buf = sample.get_buffer()
            received.append(np.frombuffer(buf.extract_dup(0, buf.get_size()), np.uint8))
    finally:
        receiver.set_state(Gst.State.NULL)
    assert 0 < len(received) <= sent
    last = received[-1].reshape(H, W).astype(np.int16)
    expected = luma(annotate(ramp(sent - 1), SICK, THERMAL, sent - 1))
    assert float(np.abs(last - expected).mean()) < 10.0  # the annotated frame, JPEG-coded


def test_bad_output_uris_fail_at_open(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="unknown scheme 'http://'"):
        open_output("http://x/y.mp4", W, H, 10)
    with pytest.raises(OutputError, match=r"unknown file type '\.gif'"):
        open_output(str(tmp_path / "a.gif"), W, H, 10)
    with pytest.raises(OutputError, match="give host and port"):
        open_output("rtp://127.0.0.1", W, H, 10)
    with pytest.raises(OutputError, match="cannot start"):
        open_output(str(tmp_path / "missing-dir" / "a.mp4"), W, H, 10)
    with pytest.raises(OutputError, match="size must be positive"):
        open_output(str(tmp_path / "a.mp4"), 0, H, 10)


def test_write_after_close_is_an_error(tmp_path: Path) -> None:
    output = open_output(str(tmp_path / "a.mp4"), W, H, 10)
    output.write(ramp(), SICK, None, 0)
    output.close()
    with pytest.raises(OutputError, match="closed"):
        output.write(ramp(), SICK, None, 1)


def test_annotation_shows_scale_limits_and_label() -> None:
    base = ramp()
    by_window = annotate(base, SICK, THERMAL, 0, OutputOptions(window_c=(20.0, 38.0)))
    by_frame = annotate(base, SICK, THERMAL, 0)
    no_numbers = annotate(base, SICK, None, 0)
    healthy = annotate(base, Prediction("healthy", 0, 0.87, (0.87, 0.13)), THERMAL, 0)
    assert by_window.shape == (H, W, 3) and by_window.dtype == np.uint8
    assert not np.array_equal(by_window, by_frame)  # 20.0/38.0 vs 25.0/36.5 labels
    assert not np.array_equal(by_frame, no_numbers)
    assert not np.array_equal(by_frame, healthy)
    gray = annotate(base, None, None, 0, OutputOptions(colormap=None))
    assert np.array_equal(gray[..., 0], gray[..., 2])  # gray stays gray


def test_output_pipeline_strings() -> None:
    f = describe_output("file:///tmp/o.mp4", W, H, 15)
    assert "avenc_mpeg4 name=restamp max-bframes=0 bitrate=2000000 ! mp4mux" in f
    assert f.endswith('! filesink location="/tmp/o.mp4"')
    assert "appsrc name=src format=time is-live=false block=true" in f
    assert "framerate=15/1" in describe_output("o.mkv", W, H, 15)
    assert "matroskamux" in describe_output("o.mkv", W, H, 15)
    assert "framerate=29970/1000" in describe_output("o.avi", W, H, 29.97)
    jet = describe_output("file:///tmp/o.mp4", W, H, 15, OutputOptions(jetson=True))
    assert "nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc" in jet
    assert "h264parse ! mp4mux" in jet
    rtp = describe_output("rtp://10.0.0.2:5000", W, H, 15)
    assert rtp.endswith("rtpjpegpay pt=26 ! udpsink host=10.0.0.2 port=5000 sync=false async=false")
    assert describe_output("display://0", W, H, 15).endswith("autovideosink sync=false")
