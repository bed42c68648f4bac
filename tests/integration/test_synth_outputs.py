"""`thermoscreen synth` outputs, read back by our readers and by real GStreamer."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main as cli
from pipeline.data.dmr import read_matrix, read_png16
from pipeline.data.synthetic import SyntheticStream, patient_seed, synth_thermogram
from pipeline.preprocess import PreprocessConfig, render_celsius
from training.datasets import scan, summary
from training.synth import celsius_to_centikelvin, format_matrix, patient_labels

Gst = pytest.importorskip("gi.repository.Gst", reason="PyGObject with GStreamer is required")

SIZE = (120, 160)  # rows stay 4-byte aligned for GRAY8 and GRAY16, so buffers are unpadded


def _synth(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    rc = cli(["synth", "--size", f"{SIZE[0]}x{SIZE[1]}", *args])
    out = capsys.readouterr().out.strip()
    assert rc == 0
    assert out.count("\n") == 0 and out.startswith("synth: wrote ")
    return out


def _gst_frames(description: str) -> tuple[list[bytes], str]:
    """Run a pipeline ending in `appsink name=sink` and return every buffer and the caps."""
    Gst.init(None)
    pipeline = Gst.parse_launch(description)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames: list[bytes] = []
    caps = ""
    try:
        while True:
            sample = sink.emit("try-pull-sample", 20 * Gst.SECOND)
            if sample is None:
                break
            caps = sample.get_caps().get_structure(0).to_string()
            buffer = sample.get_buffer()
            frames.append(buffer.extract_dup(0, buffer.get_size()))
        error = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
        assert error is None, error.parse_error()[0].message
    finally:
        pipeline.set_state(Gst.State.NULL)
    return frames, caps


def _frames_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_matrices_match_shared_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    line = _synth(capsys, "--out", str(tmp_path / "a"), "--patients", "6", "--seed", "3")
    assert "6 patients (3 healthy, 3 sick) as matrices" in line
    with caplog.at_level(logging.WARNING):
        items = scan(tmp_path / "a")
    assert "belong to no patient" not in caplog.text  # SYNTHETIC.txt is no thermogram
    assert [i.patient_id for i in items] == [str(9001 + i) for i in range(6)]
    assert summary(items)["classes"] == {
        "healthy": {"patients": 3, "images": 3},
        "sick": {"patients": 3, "images": 3},
    }
    labels = patient_labels(6, 0.5, 3)
    assert [i.label for i in items] == labels
    first = read_matrix(tmp_path / "a" / "T9001.txt.gz")
    expected = synth_thermogram(patient_seed(3, 0), labels[0], SIZE)
    np.testing.assert_allclose(first, expected, atol=0.0051)  # 2 decimals, as DMR-IR
    lines = (tmp_path / "a" / "labels.csv").read_text().splitlines()
    assert lines[0] == "patient_id,diagnosis"
    assert {row.split(",")[1] for row in lines[1:]} == {"Healthy", "Sick"}
    notice = (tmp_path / "a" / "SYNTHETIC.txt").read_text()
    assert "SYNTHETIC" in notice and "adjunct to mammography" in notice
    # the same arguments write the same bytes
    _synth(capsys, "--out", str(tmp_path / "b"), "--patients", "6", "--seed", "3")
    for name in ("T9001.txt.gz", "T9006.txt.gz", "labels.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    _synth(capsys, "--out", str(tmp_path / "c"), "--patients", "6", "--seed", "4")
    assert (tmp_path / "a" / "T9001.txt.gz").read_bytes() != (
        tmp_path / "c" / "T9001.txt.gz"
    ).read_bytes()


def test_png16_reads_back_exactly_through_gstreamer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "png"
    _synth(capsys, "--out", str(out), "--kind", "png16", "--frames", "6", "--patients", "2")
    stream = SyntheticStream(
        0,
        size=SIZE,
        label_pattern=patient_labels(2, 0.5, 0),
        frames_per_patient=3,
        distinct_patients=2,
    )
    frames, caps = _gst_frames(
        f"multifilesrc location={out}/frame_%05d.png index=0 caps=image/png,framerate=10/1 "
        "! pngdec ! appsink name=sink sync=false"
    )
    assert "format=(string)GRAY16_BE" in caps
    assert len(frames) == 6
    for i, data in enumerate(frames):
        expected = celsius_to_centikelvin(stream.frame(i))
        decoded = np.frombuffer(data, dtype=">u2").reshape(SIZE)
        np.testing.assert_array_equal(decoded, expected)
        np.testing.assert_array_equal(read_png16(out / f"frame_{i:05d}.png"), expected)
    rows = _frames_csv(out / "frames.csv")
    assert [r["frame"] for r in rows] == [str(i) for i in range(6)]
    assert [r["label"] for r in rows] == [stream.label(i) for i in range(6)]
    assert {r["seed"] for r in rows} == {"0"}
    assert sorted({r["label"] for r in rows}) == ["healthy", "sick"]


def test_mp4_decodes_with_gstreamer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _synth(
        capsys,
        "--out",
        str(tmp_path),
        "--kind",
        "all",
        "--frames",
        "12",
        "--fps",
        "10",
        "--patients",
        "2",
        "--seed",
        "5",
    )
    assert "12 MP4 frames at 10 fps" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["matrices", "mp4", "png16"]
    frames, caps = _gst_frames(
        f"filesrc location={tmp_path}/mp4/recording.mp4 ! decodebin ! videoconvert "
        "! video/x-raw,format=GRAY8 ! appsink name=sink sync=false"
    )
    assert len(frames) == 12
    assert "framerate=(fraction)10/1" in caps
    stream = SyntheticStream(
        5,
        size=SIZE,
        label_pattern=patient_labels(2, 0.5, 5),
        frames_per_patient=6,
        distinct_patients=2,
    )
    window = PreprocessConfig().window_c
    for i, data in enumerate(frames):
        decoded = np.frombuffer(data, dtype=np.uint8).reshape(SIZE).astype(np.int16)
        source = render_celsius(stream.frame(i), window).astype(np.int16)
        assert float(np.abs(decoded - source).mean()) < 3.0, i
        other = render_celsius(stream.frame((i + 6) % 12), window).astype(np.int16)
        assert float(np.abs(decoded - other).mean()) > float(np.abs(decoded - source).mean())
    rows = _frames_csv(tmp_path / "mp4" / "frames.csv")
    assert [(r["frame"], r["label"]) for r in rows] == [
        (str(i), stream.label(i)) for i in range(12)
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--patients", "0"], "--patients must be >= 1, got 0"),
        (["--sick-fraction", "1.5"], "--sick-fraction must be between 0 and 1"),
        (["--fps", "0"], "--fps must be a positive number"),
        (["--frames", "-3"], "--frames must be >= 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--size", "8x8"], "--size must be between 32 and 4096"),
    ],
)
def test_bad_arguments_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc = cli(["synth", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == f"thermoscreen synth: {err.split(': ', 1)[1]}"
    assert message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert cli(["synth", "--out", str(target)]) == 2
    assert "is a file; pass a folder" in capsys.readouterr().err


def test_format_matrix_matches_savetxt() -> None:
    rng = np.random.default_rng(0)
    celsius = (rng.uniform(-5.0, 45.0, size=(7, 9))).astype(np.float32)
    buffer = io.BytesIO()
    np.savetxt(buffer, celsius, fmt="%.2f", delimiter=" ")
    assert format_matrix(celsius) == buffer.getvalue()
