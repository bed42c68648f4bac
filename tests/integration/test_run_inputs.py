"""`thermoscreen run` as a real process against hostile or broken inputs: each is one line on
stderr and exit 2, never a crash, a memory blow-up or a misleading reason.

- a truncated model whose sha256 was made to match (the graph is checked before the runtime);
- frames over the size limit: a 16000x16000 PNG that is small on disk (folder and file://), and
  a video whose caps exceed a configured limit (GStreamer);
- a half-truncated MP4 says what GStreamer found, not a time-out that never happened;
- `--max-frames` below 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.gstreamer import Gst
from pipeline.manifest import sha256_file
from tests.conftest import REPO, free_port
from tests.helpers.images import flat_png

pytestmark = pytest.mark.timeout(180)
# A normal run of the tiny model stays near 200 MB; decoding a 16000x16000 frame needs 256 MB
# more for the gray pixels alone (the issue measured 4.7 GB).
MAX_RSS_KB = 700_000


# The peak RSS of `run` itself, measured by a small parent: a child forked from pytest starts
# with pytest's pages resident (a whole suite's worth) before it execs, which its own ru_maxrss
# would count.
MEASURE = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(rc)"
)


def run(tmp_path: Path, model: Path, *args: str) -> tuple[int, list[str], int]:
    """(exit status, stderr lines that come from thermoscreen, peak RSS in KB)."""
    (tmp_path / "none.yaml").write_text("{}\n")
    cmd = [sys.executable, "-m", "pipeline.cli", "run", *args, "--model", str(model)]
    cmd += ["--broker", f"127.0.0.1:{free_port()}", "--outbox", str(tmp_path / "o.sqlite")]
    cmd += ["--log-level", "ERROR", "--flush-timeout", "1"]
    if "--config" not in args:
        cmd += ["--config", str(tmp_path / "none.yaml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSCREEN_")}
    err_path = tmp_path / "stderr.txt"
    rss_path = tmp_path / "maxrss.txt"
    with err_path.open("wb") as err:
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, str(rss_path), *cmd],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            check=False,
        )
    lines = [
        line
        for line in err_path.read_text(errors="replace").splitlines()
        if line.startswith("thermoscreen run:")
    ]
    return done.returncode, lines, int(rss_path.read_text())


def record(path: Path, frames: int, width: int, height: int) -> Path:
    launch = (
        f"videotestsrc num-buffers={frames} ! video/x-raw,width={width},height={height},"
        f'framerate=30/1 ! videoconvert ! avenc_mpeg4 ! mp4mux ! filesink location="{path}"'
    )
    pipeline = Gst.parse_launch(launch)
    pipeline.set_state(Gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(
        30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR
    )
    pipeline.set_state(Gst.State.NULL)
    assert msg is not None and msg.type == Gst.MessageType.EOS
    return path


def test_a_truncated_model_with_a_matching_sha256_is_one_line_and_exit_2(
    tmp_path: Path, tiny_model: Path
) -> None:
    onnx_path = tiny_model / "model.onnx"
    data = onnx_path.read_bytes()
    onnx_path.write_bytes(data[: len(data) // 2])
    manifest = json.loads((tiny_model / "model.json").read_text())
    manifest["sha256"] = sha256_file(onnx_path)
    (tiny_model / "model.json").write_text(json.dumps(manifest))
    code, lines, _ = run(tmp_path, tiny_model, "test://")
    assert code == 2  # -11 / 139 would be the runtime's SIGSEGV
    assert len(lines) == 1
    assert lines[0].startswith(f"thermoscreen run: {onnx_path}: not a complete ONNX model (")
    assert lines[0].endswith("; re-export the model or restore the file")


@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "file-uri"])
def test_an_oversized_png_is_refused_before_it_is_decoded(
    tmp_path: Path, tiny_model: Path, as_file: bool
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    huge = flat_png(folder / "huge.png", 16000, 16000)
    source = f"file://{huge}" if as_file else str(folder)
    code, lines, rss_kb = run(tmp_path, tiny_model, source)
    assert code == 2
    where = f"source '{source}': " + ("" if as_file else f"{huge}: ")
    assert lines == [
        f"thermoscreen run: {where}frames are 16000x16000 pixels, over the limit of 4096x4096 "
        "(capture.max_frame_width/max_frame_height); scale the source down or raise the limit"
    ]
    assert rss_kb < MAX_RSS_KB, f"peak RSS {rss_kb} KB: the frame was decoded"


def test_video_caps_over_a_configured_limit_are_refused(tmp_path: Path, tiny_model: Path) -> None:
    rec = record(tmp_path / "rec.mp4", 10, 160, 120)
    config = tmp_path / "limit.yaml"
    config.write_text("capture:\n  max_frame_width: 100\n  max_frame_height: 100\n")
    code, lines, _ = run(tmp_path, tiny_model, f"file://{rec}", "--config", str(config))
    assert code == 2
    assert lines == [
        f"thermoscreen run: source 'file://{rec}': frames are 160x120 pixels, over the limit of "
        "100x100 (capture.max_frame_width/max_frame_height); scale the source down or raise the "
        "limit"
    ]


def test_a_half_truncated_mp4_says_what_gstreamer_found(tmp_path: Path, tiny_model: Path) -> None:
    rec = record(tmp_path / "rec.mp4", 60, 160, 120)
    data = rec.read_bytes()
    cut = tmp_path / "half.mp4"
    cut.write_bytes(data[: len(data) // 2])
    code, lines, _ = run(tmp_path, tiny_model, f"file://{cut}")
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"thermoscreen run: file '{cut}' cannot be read: qtdemux")
    assert "did not start within" not in lines[0]


@pytest.mark.parametrize("value", ["-1", "0"])
def test_max_frames_below_one_is_refused(tmp_path: Path, tiny_model: Path, value: str) -> None:
    code, lines, _ = run(tmp_path, tiny_model, "test://", "--max-frames", value)
    assert code == 2
    assert lines == [
        f"thermoscreen run: --max-frames {value}: give a number of frames of at least 1, or "
        "leave the flag out to run until the source ends"
    ]
