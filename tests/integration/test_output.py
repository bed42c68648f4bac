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
from pipeline.output.base import (  # noqa: E402
    Output,
    OutputError,
    OutputOptions,
    OverlayInfo,
    VerdictLine,
)
from pipeline.output.gst import describe_output, has_element, open_output  # noqa: E402
from pipeline.output.overlay import annotate, overlay_lines, scale_ticks  # noqa: E402
from pipeline.types import Frame, FrameKind, Prediction, ThermalStats  # noqa: E402

Gst.init(None)
W, H = 160, 120
SICK = Prediction("sick", 1, 0.87, (0.13, 0.87))
THERMAL = ThermalStats(25.0, 36.5, 30.0)
ROLLING = VerdictLine("sick", 0.62, 0.4, 10)
INFO = OverlayInfo(exam_id="ACC-1", exam_state="capturing", view="frontal", rolling=ROLLING)


def ramp(i: int = 0) -> np.ndarray:
    row = (np.linspace(0, 255, W) + 3 * i) % 256
    return np.tile(row.astype(np.uint8), (H, 1))


def gray(i: int = 0, pixels: np.ndarray | None = None) -> Frame:
    """An 8-bit frame (no temperature)."""
    return Frame(ramp(i) if pixels is None else pixels, FrameKind.GRAY8, i, "t", 0.0, 0)


def celsius(i: int = 0) -> Frame:
    """A radiometric frame: a warm body (34 C) on a 24 C room, hottest spot 36.5 C."""
    pixels = np.full((H, W), 24.0, np.float32)
    pixels[20:110, 40:120] = 34.0
    pixels[60, 90] = 36.5
    return Frame(pixels, FrameKind.CELSIUS, i, "t", 0.0, 0)


def write(output: Output, frame: Frame, prediction: Prediction | None = SICK) -> None:
    output.write(frame, ramp(frame.index), prediction, THERMAL, INFO)


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
        write(output, gray(i))
    output.close()
    assert output.frames_written == count
    frames = decode(out)
    assert len(frames) == count
    last = frames[-1].pixels.astype(np.int16)
    assert last.shape == (H, W)
    annotated = luma(annotate(gray(count - 1), SICK, INFO))
    plain = luma(cv2.cvtColor(ramp(count - 1), cv2.COLOR_GRAY2BGR))
    # the file shows the annotated picture (up to codec error) ...
    assert float(np.abs(last - annotated).mean()) < 12.0
    # ... and the label box changed pixels compared with the picture without it
    box = (slice(0, 40), slice(0, 70))
    assert float(np.abs(annotated[box] - plain[box]).mean()) > 20.0
    assert float(np.abs(last[box] - plain[box]).mean()) > 15.0


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".mkv"])
def test_file_output_is_stamped_at_the_frame_rate(tmp_path: Path, suffix: str) -> None:
    # .mkv/.avi: avenc_mpeg4 leaves its buffers unstamped; the output stamps them again
    out = tmp_path / f"out{suffix}"
    output = open_output(str(out), W, H, 20)
    for i in range(5):
        write(output, gray(i))
    output.close()
    frames = decode(out)
    assert [f.pts_ns for f in frames] == [i * 50_000_000 for i in range(5)]


def test_frames_of_another_size_are_scaled(tmp_path: Path) -> None:
    out = tmp_path / "scaled.mp4"
    output = open_output(str(out), W, H, 10)
    big = np.zeros((480, 640), np.uint8)
    output.write(gray(0, big), big, SICK, THERMAL, INFO)
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
            write(output, gray(i))
        output.close()
        received = []
        while (sample := sink.try_pull_sample(2 * Gst.SECOND)) is not None:
            buf = sample.get_buffer()
            received.append(np.frombuffer(buf.extract_dup(0, buf.get_size()), np.uint8))
    finally:
        receiver.set_state(Gst.State.NULL)
    assert 0 < len(received) <= sent
    last = received[-1].reshape(H, W).astype(np.int16)

    # the annotated frame, JPEG-coded in limited range (UDP may lose the very last ones)
    def match(i: int) -> float:
        expected = luma(annotate(gray(i), SICK, INFO)).ravel()
        return float(np.corrcoef(last.ravel(), expected)[0, 1])

    matches = [match(i) for i in range(sent)]
    assert max(matches) > 0.98 and int(np.argmax(matches)) >= sent - 5


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
    write(output, gray(0))
    output.close()
    with pytest.raises(OutputError, match="closed"):
        write(output, gray(1))


def test_a_radiometric_frame_gets_a_true_celsius_scale_and_its_spot_maximum() -> None:
    frame = celsius()
    options = OutputOptions(window_c=(20.0, 38.0))
    img = annotate(frame, None, None, options)
    # the picture is the Celsius frame through a linear palette: room 24 C and body 34 C sit at
    # (t - 20) / 18 of the colour map, not where an equalization would put them
    colours = cv2.applyColorMap(np.array([[round(4 / 18 * 255), round(14 / 18 * 255)]], np.uint8),
                                options.colormap)  # fmt: skip
    assert np.array_equal(img[H - 30, 8], colours[0, 0])
    assert np.array_equal(img[100, 45], colours[0, 1])
    assert scale_ticks((20.0, 38.0)) == [20.0, 25.0, 30.0, 35.0]
    bare = annotate(gray(0, np.full((H, W), 128, np.uint8)), None, None, options)
    bar = (slice(H // 6, H - H // 6), slice(W - W // 40 - W // 20 - 10, W))
    assert float(np.abs(img[bar].astype(int) - bare[bar].astype(int)).mean()) > 20  # a scale
    # the spot maximum (36.5 C at x=90, y=60) is marked: pixels around it changed
    plain = cv2.applyColorMap(np.full((5, 5), round(14 / 18 * 255), np.uint8), options.colormap)
    assert not np.array_equal(img[58:63, 88:93], plain)


def test_an_8bit_frame_gets_no_scale_and_stays_as_recorded() -> None:
    frame = gray(0, np.full((H, W), 128, np.uint8))
    img = annotate(frame, None, None, OutputOptions(window_c=(20.0, 38.0)))
    right = img[H // 6 : H - H // 6, W - 40 :]
    assert (right == 128).all()  # no colour bar, no labels: grey as recorded
    assert np.array_equal(img[..., 0], img[..., 2])


def test_the_overlay_says_exam_view_verdicts_threshold_and_synthetic() -> None:
    info = OverlayInfo(
        exam_id="ACC-1",
        exam_state="capturing",
        view="frontal",
        rolling=ROLLING,
        exam=VerdictLine("healthy", 0.31, 0.4, 120),
        rejected=("motion",),
        synthetic_model=True,
    )
    lines = [text for text, _ in overlay_lines(SICK, 7, info)]
    assert lines == [
        "exam ACC-1: capturing, view frontal",
        "rolling: sick 0.62 (threshold 0.40, last 10)",
        "exam so far: healthy 0.31 (threshold 0.40, 120 frames)",
        "frame rejected: motion",
        "frame #7: sick 0.87",
    ]
    final = OverlayInfo(
        exam_id="A", exam_state="closed", exam=VerdictLine("sick", 0.5, 0.4, 3, True)
    )
    assert "exam verdict: sick 0.50 (threshold 0.40, 3 frames)" in [
        t for t, _ in overlay_lines(None, 0, final)
    ]
    assert overlay_lines(None, 0, OverlayInfo())[0][0] == "no exam (live monitoring)"
    with_banner = annotate(celsius(), SICK, info)
    without = annotate(celsius(), SICK, OverlayInfo(**{**info.__dict__, "synthetic_model": False}))
    top = (slice(0, 8), slice(None))
    assert not np.array_equal(with_banner[top], without[top])
    red = with_banner[2, W // 2]
    assert red[2] > 150 and red[0] < 80  # BGR: the SYNTHETIC MODEL band is red


@pytest.mark.skipif(not has_element("x264enc"), reason="x264enc (gstreamer1.0-plugins-ugly)")
def test_mp4_output_is_browser_playable_h264(tmp_path: Path) -> None:
    out = tmp_path / "exam.mp4"
    output = open_output(str(out), W + 1, H, 10)  # odd width: 4:2:0 needs even sides
    for i in range(12):
        output.write(celsius(i), ramp(i), SICK, THERMAL, INFO)
    output.close()
    data = out.read_bytes()
    assert b"avc1" in data  # H.264 in MP4, what every browser plays
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: playable while loading
    frames = decode(out)
    assert len(frames) == 12 and frames[0].pixels.shape == (H, W + 2)


def test_output_pipeline_strings() -> None:
    f = describe_output("file:///tmp/o.mp4", W, H, 15)
    if has_element("x264enc"):
        assert "x264enc bitrate=2000 speed-preset=veryfast bframes=0 key-int-max=30" in f
        assert "video/x-h264,profile=main ! mp4mux faststart=true" in f
    else:
        assert "avenc_mpeg4 name=restamp max-bframes=0 bitrate=2000000 ! mp4mux" in f
    assert f.endswith('! filesink location="/tmp/o.mp4"')
    assert "avenc_mpeg4 name=restamp" in describe_output("o.mkv", W, H, 15)
    assert "appsrc name=src format=time is-live=false block=true" in f
    assert "framerate=15/1" in describe_output("o.mkv", W, H, 15)
    assert "matroskamux" in describe_output("o.mkv", W, H, 15)
    assert "framerate=29970/1000" in describe_output("o.avi", W, H, 29.97)
    jet = describe_output("file:///tmp/o.mp4", W, H, 15, OutputOptions(jetson=True))
    assert "nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc" in jet
    assert "h264parse ! mp4mux faststart=true" in jet
    rtp = describe_output("rtp://10.0.0.2:5000", W, H, 15)
    assert rtp.endswith("rtpjpegpay pt=26 ! udpsink host=10.0.0.2 port=5000 sync=false async=false")
    assert describe_output("display://0", W, H, 15).endswith("autovideosink sync=false")
