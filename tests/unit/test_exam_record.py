"""The exam record: exam.json round trip, key frames, permissions, crash recovery, the report."""

from __future__ import annotations

import dataclasses
import json
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from pipeline import DISCLAIMER
from pipeline.data.synthetic import SyntheticStream
from pipeline.exam.config import ExamConfig
from pipeline.exam.machine import ExamContext, ExamController
from pipeline.exam.record import (
    FinishedExam,
    RecordError,
    exam_dir,
    read_key_frame,
    read_record,
    summary_json_schema,
    summary_payload,
    write_record,
)
from pipeline.exam.report import display_range_c, palette_image, render_report
from pipeline.exam.store import (
    CRASH_REASON,
    exam_id_taken,
    list_exams,
    recover_unfinished,
    save_exam,
)
from pipeline.mqtt.payload import schema_errors
from pipeline.preprocess import render_celsius
from tests.helpers.exam import MODEL, T0, Clock, celsius_frame, gray_frame, scores

SCHEMAS = Path(__file__).resolve().parents[2] / "pipeline" / "mqtt" / "schemas"
CONTEXT = ExamContext(device_id="edge-01", camera_id="cam0", source="test://", profile="lepton")


@pytest.fixture(scope="module")
def stream() -> SyntheticStream:
    return SyntheticStream(seed=2, size=(120, 160), label_pattern=("sick",), distinct_patients=1)


def run_exam(
    stream: SyntheticStream, exams: Path, gray: bool = False, synthetic: bool = False
) -> FinishedExam:
    clock = Clock()
    model = dataclasses.replace(MODEL, synthetic=synthetic)
    ctl = ExamController(ExamConfig(exams_dir=exams), model, CONTEXT, clock, exam_id_taken(exams))
    ctl.handle({"action": "start", "exam_id": "EX-1", "view": "frontal", "ambient_c": 22.0})
    for i in range(8):
        pixels = stream.frame(i)
        frame = gray_frame(render_celsius(pixels, (20.0, 38.0)), i) if gray else None
        ctl.observe(frame or celsius_frame(pixels, i), scores(0.3 + 0.05 * i))
        clock.advance(0.5)
    ctl.handle({"action": "view", "view": "right-oblique"})
    ctl.observe(celsius_frame(stream.frame(20), 20), scores(0.9))
    out = ctl.handle({"action": "close"})
    assert out.finished is not None
    return out.finished


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_and_read_back(stream: SyntheticStream, tmp_path: Path) -> None:
    exams = tmp_path / "var" / "exams"
    finished = run_exam(stream, exams)
    folder = save_exam(exams, finished)
    assert folder == exams / "EX-1"
    assert read_record(exams, "EX-1") == finished.record  # the round trip is exact
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["exam.json", "frontal.png", "report.html", "right-oblique.png"]
    for path in folder.iterdir():
        assert mode(path) == 0o600, path
    assert mode(folder) == 0o700 and mode(exams) == 0o700
    on_disk = json.loads((folder / "exam.json").read_text())
    assert on_disk["disclaimer"] == DISCLAIMER and on_disk["verdict"]["frames"] == 8
    assert "patient" not in json.dumps(on_disk).lower()  # no identity fields of any kind
    assert schema_errors(summary_payload(finished.record), "exam-summary") == []


def test_key_frames_are_lossless(stream: SyntheticStream, tmp_path: Path) -> None:
    finished = run_exam(stream, tmp_path)
    folder = save_exam(tmp_path, finished)
    for key, meta in zip(finished.key_frames, finished.record.key_frames, strict=True):
        back = read_key_frame(folder, meta)
        assert meta.encoding == "png16-centikelvin" and meta.scale_k_per_count == 0.01
        assert key.celsius is not None and back.celsius is not None
        assert np.max(np.abs(back.celsius - key.celsius)) <= 0.005 + 1e-4  # 0.01 K steps
    gray = run_exam(stream, tmp_path / "g", gray=True)
    folder = save_exam(tmp_path / "g", gray)
    meta = gray.record.key_frames[0]
    assert meta.encoding == "png8" and meta.scale_k_per_count is None
    back = read_key_frame(folder, meta)
    assert back.gray is not None and np.array_equal(back.gray, gray.key_frames[0].gray)


def test_the_steadiest_frame_is_the_key_frame(stream: SyntheticStream, tmp_path: Path) -> None:
    finished = run_exam(stream, tmp_path)
    frontal = finished.record.key_frames[0]
    assert frontal.view == "frontal" and frontal.frame_index > 0  # frame 0 has no motion measure


def test_recover_unfinished_marks_aborted(stream: SyntheticStream, tmp_path: Path) -> None:
    save_exam(tmp_path, run_exam(stream, tmp_path))  # a closed exam stays as it is
    clock = Clock(T0 + 100)  # the crashed exam started later
    ctl = ExamController(ExamConfig(), MODEL, CONTEXT, clock, exam_id_taken(tmp_path))
    ctl.handle({"action": "start", "exam_id": "CRASH-1", "view": "frontal"})
    ctl.observe(celsius_frame(stream.frame(0)), scores(0.8))
    record = ctl.record()
    assert record is not None and record.verdict is not None  # provisional
    write_record(tmp_path, record)  # what the runner wrote before it died
    (tmp_path / "BROKEN").mkdir()
    (tmp_path / "BROKEN" / "exam.json").write_text("{not json")
    result = recover_unfinished(tmp_path, T0 + 3600)
    assert [r.exam_id for r in result.records] == ["CRASH-1"]
    assert len(result.unreadable) == 1 and "BROKEN" in result.unreadable[0]
    fixed = read_record(tmp_path, "CRASH-1")
    assert fixed.state == "aborted" and fixed.abort_reason == CRASH_REASON
    assert fixed.verdict is None and fixed.ended == "2026-01-01T01:00:00.000Z"
    assert "Aborted" in (tmp_path / "CRASH-1" / "report.html").read_text()
    assert read_record(tmp_path, "EX-1").state == "closed"
    assert recover_unfinished(tmp_path, T0).records == ()  # idempotent
    assert [r.exam_id for r in list_exams(tmp_path).records] == ["EX-1", "CRASH-1"]


def test_used_ids_on_disk_are_refused(stream: SyntheticStream, tmp_path: Path) -> None:
    save_exam(tmp_path, run_exam(stream, tmp_path))
    ctl = ExamController(ExamConfig(), MODEL, CONTEXT, Clock(), exam_id_taken(tmp_path))
    out = ctl.handle({"action": "start", "exam_id": "EX-1"})
    assert not out.ok and out.error is not None and "already used" in out.error


def test_bad_ids_and_damaged_records(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="not an exam id"):
        exam_dir(tmp_path, "../etc")
    with pytest.raises(RecordError, match="no such exam"):
        read_record(tmp_path, "NOPE")
    (tmp_path / "BAD").mkdir()
    (tmp_path / "BAD" / "exam.json").write_text('{"exam_id": "BAD"}')
    with pytest.raises(RecordError, match=r"exam.json: field '\w+'"):
        read_record(tmp_path, "BAD")


def test_a_record_whose_verdict_contradicts_its_counts_is_refused(
    stream: SyntheticStream, tmp_path: Path
) -> None:
    finished = run_exam(stream, tmp_path)
    folder = save_exam(tmp_path, finished)
    data = json.loads((folder / "exam.json").read_text())
    data["verdict"]["positive"] = not data["verdict"]["positive"]
    (folder / "exam.json").write_text(json.dumps(data))
    with pytest.raises(RecordError, match="contradicts"):
        read_record(tmp_path, "EX-1")


def test_summary_schema_file_matches_the_record_model() -> None:
    on_disk = json.loads((SCHEMAS / "exam-summary.schema.json").read_text())
    assert on_disk == summary_json_schema(), (
        'exam-summary.schema.json is stale; regenerate it: python -c "import json; from '
        'pipeline.exam.record import summary_json_schema as s; print(json.dumps(s(), indent=1))"'
        " > pipeline/mqtt/schemas/exam-summary.schema.json"
    )


# --- the report ------------------------------------------------------------------------------


def test_report_of_a_radiometric_exam(stream: SyntheticStream, tmp_path: Path) -> None:
    finished = run_exam(stream, tmp_path)
    page = (save_exam(tmp_path, finished) / "report.html").read_text()
    assert page == render_report(tmp_path / "EX-1")  # the console serves the same page
    verdict = finished.record.verdict
    assert verdict is not None
    assert f"Exam verdict: {verdict.label}" in page and "threshold 0.400" in page
    assert f"over {verdict.frames} accepted frames" in page
    assert "tiny 1 (sha256 aaaaaaaaaaaa" in page
    assert page.count('class="scale"') == 2  # one true Celsius scale per radiometric key frame
    assert "°C</text>" in page and "spot max" in page
    assert page.count("data:image/png;base64,") == 2
    assert "<polyline" in page and 'class="threshold"' in page  # score over time
    assert "mean |ΔT| mirrored °C" in page and "left − right °C" in page
    assert "SYNTHETIC MODEL" not in page
    assert DISCLAIMER in page and "adjunct" in page.lower()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)  # nothing from outside
    assert "http://" not in page and "https://" not in page


def test_report_of_an_8bit_exam_has_no_scale(stream: SyntheticStream, tmp_path: Path) -> None:
    finished = run_exam(stream, tmp_path, gray=True, synthetic=True)
    page = render_report(save_exam(tmp_path, finished))
    frontal = page[page.index('<figure class="gray8"') :]
    frontal = frontal[: frontal.index("</figure>")]
    assert "no temperature scale" in frontal and 'class="scale"' not in frontal
    assert "°C" not in frontal
    assert page.count('class="scale"') == 1  # only the radiometric right-oblique frame has one
    assert page.count("SYNTHETIC MODEL") == 2  # top and bottom
    assert "SYNTHETIC)" in page


def test_report_of_an_aborted_exam_escapes_text(tmp_path: Path) -> None:
    ctl = ExamController(ExamConfig(), MODEL, CONTEXT, Clock())
    ctl.handle({"action": "start", "exam_id": "AB-1"})
    out = ctl.handle({"action": "abort", "reason": "<script>alert(1)</script> power cut"})
    assert out.finished is not None
    page = render_report(save_exam(tmp_path, out.finished))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Aborted" in page and "No verdict" in page


def test_palette_is_linear_in_celsius() -> None:
    ramp = np.tile(np.linspace(25.0, 35.0, 101, dtype=np.float32), (4, 1))
    low, high = display_range_c(ramp)
    assert (low, high) == (25.0, 35.0)
    image = palette_image(ramp, low, high)
    assert image.shape == (4, 101, 3)
    brightness = image.astype(int).sum(axis=2)[0]
    assert np.all(np.diff(brightness) >= -2)  # inferno brightens monotonically with temperature


def test_a_long_exam_summary_fits_a_loggers_limit(tmp_path: Path) -> None:
    from pipeline.exam.record import ScorePoint, thin
    from pipeline.mqtt.payload import encode

    finished = run_exam(SyntheticStream(1, (120, 160)), tmp_path)
    record = finished.record
    long = record.model_copy(
        update={
            "scores": [
                ScorePoint(t_s=i * 0.1, view="frontal", score=0.123456) for i in range(2000)
            ],
            "acclimatization": record.acclimatization.model_copy(
                update={"skin_samples": [(float(i), 31.234) for i in range(7200)]}
            ),
        }
    )
    payload = summary_payload(long)
    assert len(encode(payload)) < 32 * 1024
    assert len(payload["scores"]) == 200 and payload["scores"][-1]["t_s"] == pytest.approx(199.9)
    assert payload["acclimatization"]["skin_samples"][0] == [0.0, 31.234]
    assert schema_errors(payload, "exam-summary") == []
    assert thin([1, 2, 3], 5) == [1, 2, 3] and thin(list(range(10)), 4) == [0, 3, 6, 9]
