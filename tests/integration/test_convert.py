"""`thermoscreen convert`: DMR-IR matrices and 16-bit recordings -> a 16-bit PNG recording that
replays (through the folder source and through `thermoscreen run`) as the original did."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.capture.base import EndOfStream, SourceError, SourceOptions
from pipeline.capture.factory import open_source
from pipeline.capture.folder import FolderSource
from pipeline.config import load_config
from pipeline.convert import ConvertError, convert
from pipeline.data.dmr import read_matrix
from pipeline.data.recording import CENTIKELVIN, CountScale, read_origins, read_scale
from pipeline.devtools.demo import ResultWatcher
from pipeline.run.wiring import run
from pipeline.types import Frame, FrameKind
from tests.conftest import REPO, Broker

pytestmark = pytest.mark.timeout(180)
QUANTUM_C = CENTIKELVIN / 2 + 1e-4  # half a count, plus float32 arithmetic in Frame.celsius()


def frames_of(uri: str, opts: SourceOptions | None = None) -> list[Frame]:
    source = open_source(uri, opts or SourceOptions(jetson=False))
    source.open()
    out: list[Frame] = []
    try:
        with pytest.raises(EndOfStream):
            for _ in range(1000):
                frame = source.read(5.0)
                assert frame is not None
                out.append(frame)
    finally:
        source.close()
    return out


def _dmr_folder(folder: Path) -> dict[str, np.ndarray]:
    """Three DMR-style matrices: 2-decimal space layout, 5-decimal semicolon layout (gzipped)."""
    folder.mkdir()
    rng = np.random.default_rng(5)
    written = {}
    for name, decimals, sep in [
        ("T0007.1.1.S.2013-01-02.00.txt", 2, " "),
        ("T0310.txt.gz", 5, ";"),
        ("T0311.txt.gz", 5, ";"),
    ]:
        m = (24.0 + 12.0 * rng.random((30, 40))).round(decimals)
        text = "".join(sep.join(f"{v:.{decimals}f}" for v in row) + "\r\r\n" for row in m)
        data = text.encode()
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        written[name] = m
    return written


def test_dmr_folder_converts_and_replays_within_the_quantization(tmp_path: Path) -> None:
    written = _dmr_folder(tmp_path / "dmr")
    out = tmp_path / "rec"
    done = convert(str(tmp_path / "dmr"), out)
    assert done.frames == 3 and done.scale == CountScale(0.01, 0.0)
    assert sorted(p.name for p in out.iterdir()) == [
        "frame_00000.png", "frame_00001.png", "frame_00002.png", "frames.csv", "recording.json",
    ]  # fmt: skip
    origins = read_origins(out)
    assert [(o.file, o.source_file, o.patient_id) for o in origins] == [
        ("frame_00000.png", "T0007.1.1.S.2013-01-02.00.txt", "0007"),
        ("frame_00001.png", "T0310.txt.gz", "0310"),
        ("frame_00002.png", "T0311.txt.gz", "0311"),
    ]
    assert read_scale(out) == CountScale(0.01, 0.0)
    for folder, file in ((tmp_path / "dmr", "T0310.txt.gz"), (out, "frame_00001.png")):
        source = open_source(str(folder), SourceOptions(jetson=False))
        source.open()
        assert isinstance(source, FolderSource)
        got = source.origin_of(1)  # the patient and file behind frame 1, either way
        assert (got.file, got.source_file, got.patient_id) == (file, "T0310.txt.gz", "0310")
        assert source.origin_of(4).source_file == "T0310.txt.gz"  # looping: file 4 % 3
        source.close()
    replayed = frames_of(str(out))
    for frame, origin in zip(replayed, origins, strict=True):
        assert frame.kind is FrameKind.RAW16 and (frame.scale, frame.offset) == (0.01, 0.0)
        original = read_matrix(tmp_path / "dmr" / origin.source_file)
        celsius = frame.celsius()
        assert celsius is not None
        assert float(np.abs(celsius - original).max()) <= QUANTUM_C
        assert float(np.abs(celsius - written[origin.source_file]).max()) <= QUANTUM_C
    # 2-decimal Celsius is a whole number of centi-kelvin: stored exactly
    first = written["T0007.1.1.S.2013-01-02.00.txt"]
    expected = np.round((first + 273.15) * 100).astype(np.uint16)
    np.testing.assert_array_equal(replayed[0].pixels, expected)
    # thermograms are medical images: private folder and files
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o600}


def test_real_dmr_files_convert_within_the_quantization(shared_dmr: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    done = convert(f"dmr://{shared_dmr}", out, max_frames=4)
    assert done.frames == 4
    origins = read_origins(out)
    for frame, origin in zip(frames_of(str(out)), origins, strict=True):
        original = read_matrix(shared_dmr / origin.source_file)
        assert origin.patient_id == origin.source_file[1:5]
        celsius = frame.celsius()
        assert celsius is not None and celsius.shape == (480, 640)
        assert float(np.abs(celsius - original).max()) <= QUANTUM_C
    # smaller than the gzipped text it came from
    source_bytes = sum((shared_dmr / o.source_file).stat().st_size for o in origins)
    assert done.png_bytes < source_bytes


def test_png16_recording_converts_bit_for_bit_with_its_scale(tmp_path: Path) -> None:
    folder = tmp_path / "png16"
    folder.mkdir()
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 65536, size=(24, 32), dtype=np.uint16) for _ in range(5)]
    images[0][0, :4] = [0, 1, 65534, 65535]
    for i, image in enumerate(images):
        assert cv2.imwrite(str(folder / f"frame_{i:05d}.png"), image)
    out = tmp_path / "rec"
    done = convert(f"dmr://{folder}?scale=0.04&offset=0.5", out)
    assert done.scale == CountScale(0.04, 0.5)
    assert [o.source_file for o in read_origins(out)] == [f"frame_{i:05d}.png" for i in range(5)]
    original = frames_of(f"dmr://{folder}?scale=0.04&offset=0.5")
    replayed = frames_of(str(out))  # no parameters: recording.json brings the scale
    for a, b, image in zip(original, replayed, images, strict=True):
        np.testing.assert_array_equal(b.pixels, image)
        assert b.pixels.dtype == np.uint16
        assert (b.scale, b.offset) == (a.scale, a.offset) == (0.04, 0.5)
        np.testing.assert_array_equal(a.celsius(), b.celsius())
    # asking for another calibration than the recorded one is refused, in one line
    with pytest.raises(SourceError, match=r"recording\.json records kelvin = count x 0\.04"):
        open_source(f"{out}?scale=0.02", SourceOptions(jetson=False)).open()


def test_live_source_stops_at_max_frames(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    done = convert("test://?fps=200&seed=4&width=64&height=48", out, max_frames=3)
    assert done.frames == 3 and done.scale == CountScale(0.01, 0.0)
    assert [o.source_file for o in read_origins(out)] == ["", "", ""]
    for frame in frames_of(str(out)):
        celsius = frame.celsius()
        assert celsius is not None and celsius.shape == (48, 64)
        assert 15.0 < float(np.median(celsius)) < 40.0


def test_failures_are_one_line_and_leave_nothing_behind(tmp_path: Path) -> None:
    gray = tmp_path / "gray"
    gray.mkdir()
    cv2.imwrite(str(gray / "T0001.png"), np.full((8, 8), 100, np.uint8))
    with pytest.raises(ConvertError, match=r"T0001\.png\): 8-bit frames carry no temperature"):
        convert(str(gray), tmp_path / "a")
    broken = tmp_path / "broken"
    _dmr_folder(broken)
    (broken / "T0310.txt.gz").write_bytes(b"\x1f\x8b\x08\x00 not deflate")
    with pytest.raises(ConvertError, match=r"T0310\.txt\.gz: corrupt or truncated gzip"):
        convert(str(broken), tmp_path / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="holds no thermograms"):
        convert(str(tmp_path / "empty"), tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "empty", "gray"]
    with pytest.raises(ConvertError, match=r"already exists; choose a new folder"):
        convert(str(broken), tmp_path / "gray")


def test_cli_converts_without_torch_and_fails_with_one_line(tmp_path: Path) -> None:
    _dmr_folder(tmp_path / "dmr")
    probe = (
        "import sys\nfrom pipeline.cli import main\nrc = main(sys.argv[1:])\n"
        "print('TORCH', any(m == 'torch' or m.startswith('torch.') for m in sys.modules))\n"
        "raise SystemExit(rc)\n"
    )
    args = [sys.executable, "-c", probe, "convert", str(tmp_path / "dmr"), "--out"]
    done = subprocess.run([*args, str(tmp_path / "rec")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "3 frames ->" in done.stdout and "TORCH False" in done.stdout
    again = subprocess.run([*args, str(tmp_path / "rec")], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr


# --- through `thermoscreen run`: the converted recording gives the original's results ---------


def _results(broker: Broker, model: Path, source: str, tmp_path: Path) -> list[dict[str, Any]]:
    device = f"conv-{abs(hash(source)) % 10**6}"
    cfg = load_config(
        None,
        {
            "device_id": device,
            "source": source,
            "model.dir": str(model),
            "mqtt.port": broker.port,
            "outbox.path": str(tmp_path / f"{device}.sqlite"),
            "flush_timeout_s": 10,
        },
        env={},
    )
    with ResultWatcher(broker.host, broker.port, device) as watcher:
        summary = run(cfg)
        watcher.wait(lambda: watcher.count("session") >= 1, 15)
        results = watcher.bodies("result")
    assert summary.results == len(results) > 0
    return sorted(results, key=lambda r: r["frame_index"])


def test_run_replays_the_conversion_as_the_original(
    broker: Broker, tiny_model: Path, tmp_path: Path
) -> None:
    _dmr_folder(tmp_path / "dmr")
    convert(str(tmp_path / "dmr"), tmp_path / "rec")
    convert(str(tmp_path / "rec"), tmp_path / "rec2")  # a PNG16 recording converted again
    first = [o.source_file for o in read_origins(tmp_path / "rec")]
    assert [o.source_file for o in read_origins(tmp_path / "rec2")] == first  # origins carried
    matrices = _results(broker, tiny_model, str(tmp_path / "dmr"), tmp_path)
    pngs = _results(broker, tiny_model, str(tmp_path / "rec"), tmp_path)
    pngs2 = _results(broker, tiny_model, str(tmp_path / "rec2"), tmp_path)
    assert len(matrices) == len(pngs) == len(pngs2) == 3
    for m, p in zip(matrices, pngs, strict=True):
        for key in ("t_min_c", "t_max_c", "t_mean_c"):
            assert abs(m["thermal"][key] - p["thermal"][key]) <= 0.01 + 1e-9
    for p, p2 in zip(pngs, pngs2, strict=True):  # bit-exact counts: the very same results
        assert p["thermal"] == p2["thermal"] and p["result"] == p2["result"]


def test_convert_output_files_are_not_group_readable(tmp_path: Path) -> None:
    _dmr_folder(tmp_path / "dmr")
    old = os.umask(0)
    try:
        convert(str(tmp_path / "dmr"), tmp_path / "rec")
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "rec").iterdir()}
    assert modes == {0o600}
