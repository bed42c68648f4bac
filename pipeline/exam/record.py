"""The exam record on disk: `<exams_dir>/<exam_id>/exam.json` and its key frames.

`exam.json` is the protocol record (times, acclimatization, ambient, camera, model, software,
per-view counts and statistics, verdict, disclaimer). It holds no patient identity: the exam id
is an opaque accession code. It is written when an exam starts and on every state change, so a
crash leaves a record whose state is not closed/aborted; `pipeline.exam.store.recover_unfinished`
marks such records aborted on the next start.

Key frames: one per view, lossless. Radiometric frames as 16-bit PNG in centi-kelvin
(kelvin = count * scale_k_per_count + offset_k, recorded beside each file), 8-bit sources as
8-bit PNG with no temperature at all.

Every file is created 0600 and every folder 0700 (DESIGN.md, "Security rules"); writes go to a
temporary file that replaces the old one, so a crash never leaves half a record.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline import DISCLAIMER
from pipeline.exam.commands import CommandError, ExamState, View, check_exam_id
from pipeline.types import KELVIN_OFFSET

RECORD_SCHEMA = 1
RECORD_NAME = "exam.json"
REPORT_NAME = "report.html"
CENTIKELVIN = 0.01  # kelvin per count of a PNG16 key frame
FILE_MODE = 0o600
DIR_MODE = 0o700
FINISHED_STATES = (ExamState.CLOSED.value, ExamState.ABORTED.value)


class RecordError(Exception):
    """An exam record that cannot be read or written; one line naming the file and the fix."""


class _Rec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRecord(_Rec):
    name: str
    version: str
    sha256: str
    synthetic: bool
    labels: list[str]
    positive_label: str
    threshold: float = Field(ge=0, le=1)
    threshold_source: Literal["manifest", "config", "default-0.5"]
    views: list[View]


class OverrideRecord(_Rec):
    """The operator forced `ready` before the criteria were met."""

    at: str
    elapsed_s: float
    drift_c_per_min: float | None
    reason: str | None


class AcclimatizationRecord(_Rec):
    basis: Literal["drift", "time", "pending", "not-observed"]
    required_s: float
    drift_limit_c_per_min: float
    drift_window_s: float
    elapsed_s: float  # at ready (or so far / at the end when never ready)
    drift_c_per_min: float | None
    ready_at: str | None
    criteria_met: bool
    override: OverrideRecord | None = None
    not_observed_reason: str | None = None
    skin_samples: list[tuple[float, float]] = Field(
        default_factory=list, description="(seconds since start, body mean skin C)"
    )


class AmbientRecord(_Rec):
    ambient_c: float | None = None
    humidity_pct: float | None = None
    source: Literal["command", "sensor"] | None = None
    updated: str | None = None


class AsymmetryRecord(_Rec):
    model_config = ConfigDict(extra="forbid", frozen=True, from_attributes=True)
    frames: int
    mean_abs_diff_c: float
    left_mean_c: float
    right_mean_c: float
    left_minus_right_c: float


class ViewRecord(_Rec):
    model_config = ConfigDict(extra="forbid", frozen=True, from_attributes=True)
    view: View
    accepted_frames: int = Field(ge=0)
    rejected_frames: int = Field(ge=0)
    rejected_by_reason: dict[str, int]
    score_mean: float | None
    skin_mean_c: float | None
    skin_p95_c: float | None
    asymmetry: AsymmetryRecord | None


class VerdictRecord(_Rec):
    label: str
    positive: bool
    score: float = Field(ge=0, le=1)
    score_is: str
    frames: int = Field(ge=1)
    frames_by_view: dict[str, int]
    threshold: float = Field(ge=0, le=1)
    threshold_source: Literal["manifest", "config", "default-0.5"]
    positive_label: str
    final: bool

    @model_validator(mode="after")
    def _consistent(self) -> VerdictRecord:
        if self.frames != sum(self.frames_by_view.values()):
            raise ValueError("verdict frames differ from the per-view counts")
        if self.positive != (self.score >= self.threshold):
            raise ValueError("verdict positive flag contradicts its score and threshold")
        if self.positive != (self.label == self.positive_label):
            raise ValueError("verdict label contradicts its positive flag")
        return self


class KeyFrameRecord(_Rec):
    view: View
    file: str = Field(pattern=r"^[a-z-]+\.png$")
    encoding: Literal["png16-centikelvin", "png8"]
    scale_k_per_count: float | None
    offset_k: float | None
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    frame_index: int
    t_s: float
    score: float = Field(ge=0, le=1)


class ScorePoint(_Rec):
    t_s: float
    view: View
    score: float = Field(ge=0, le=1)


class ExamRecord(_Rec):
    """exam.json. Screening support for an adjunct to mammography; never a diagnosis."""

    record_schema: Literal[1] = 1
    exam_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    state: Literal["acclimatizing", "ready", "capturing", "closed", "aborted"]
    device_id: str
    camera_id: str
    source: str
    profile: str | None
    software: dict[str, str]
    started: str
    capture_started: str | None
    ended: str | None
    abort_reason: str | None
    acclimatization: AcclimatizationRecord
    ambient: AmbientRecord
    model: ModelRecord
    synthetic_model: bool
    gates: dict[str, Any]
    views: dict[str, ViewRecord]
    verdict: VerdictRecord | None
    scores: list[ScorePoint]
    key_frames: list[KeyFrameRecord]
    disclaimer: str = DISCLAIMER

    @model_validator(mode="after")
    def _consistent(self) -> ExamRecord:
        if self.synthetic_model != self.model.synthetic:
            raise ValueError("synthetic_model differs from model.synthetic")
        if self.state == "aborted" and self.verdict is not None:
            raise ValueError("an aborted exam has no verdict")
        if self.verdict is not None:
            for view, count in self.verdict.frames_by_view.items():
                if view not in self.views or self.views[view].accepted_frames != count:
                    raise ValueError(f"verdict counts {count} frames of {view}, views disagree")
        return self

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


@dataclass(frozen=True, eq=False)
class KeyFrame:
    """A view's key frame in memory: Celsius (float32) for radiometric sources, else uint8."""

    view: View
    frame_index: int
    t_s: float
    score: float
    celsius: npt.NDArray[np.float32] | None
    gray: npt.NDArray[np.uint8] | None

    def __post_init__(self) -> None:
        if (self.celsius is None) == (self.gray is None):
            raise ValueError("a key frame holds either Celsius or 8-bit pixels")


@dataclass(frozen=True, eq=False)
class FinishedExam:
    """What a close or abort hands to the caller to store: the record and its key frames."""

    record: ExamRecord
    key_frames: tuple[KeyFrame, ...]


SUMMARY_MAX_POINTS = 200  # per time series: keeps a summary far below loggers' 64 KiB limit


def thin(items: list[Any], limit: int) -> list[Any]:
    """At most `limit` items, evenly spaced, always keeping the first and the last."""
    if len(items) <= limit:
        return list(items)
    last = len(items) - 1
    picks = sorted({round(i * last / (limit - 1)) for i in range(limit)})
    return [items[i] for i in picks]


def summary_payload(record: ExamRecord, max_points: int = SUMMARY_MAX_POINTS) -> dict[str, Any]:
    """The `exam/summary` message: the record without images (key frames are file names), its
    skin-temperature and score series thinned to `max_points` each (exam.json keeps them all)."""
    data = record.model_dump(mode="json")
    data["scores"] = thin(data["scores"], max_points)
    accl = data["acclimatization"]
    accl["skin_samples"] = thin(accl["skin_samples"], max_points)
    return {"schema": 1, **data}


# --- files -----------------------------------------------------------------------------------


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700; tighten an existing leaf to 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def write_private(path: Path, data: bytes) -> Path:
    """Write `data` to `path` as a 0600 file, atomically (temporary file, then replace)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def exam_dir(exams_dir: Path, exam_id: str) -> Path:
    """`<exams_dir>/<exam_id>`; the id is checked first, so it can never leave exams_dir."""
    try:
        check_exam_id(exam_id)
    except CommandError as exc:
        raise RecordError(f"exam id: {exc}") from exc
    return Path(exams_dir) / exam_id


def write_record(exams_dir: Path, record: ExamRecord) -> Path:
    """Write (or replace) `<exams_dir>/<exam_id>/exam.json`."""
    folder = private_dir(exam_dir(exams_dir, record.exam_id))
    private_dir(Path(exams_dir))
    text = record.model_dump_json(indent=2) + "\n"
    return write_private(folder / RECORD_NAME, text.encode("utf-8"))


def read_record_file(path: Path) -> ExamRecord:
    """Parse and check one exam.json; RecordError names the file and field."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecordError(f"{path}: cannot read ({exc.strerror}); check the exam id") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"{path}: not valid JSON; the record is damaged") from exc
    try:
        return ExamRecord.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(record)"
        raise RecordError(f"{path}: field '{where}': {err['msg']}; the record is damaged") from exc


def read_record(exams_dir: Path, exam_id: str) -> ExamRecord:
    path = exam_dir(exams_dir, exam_id) / RECORD_NAME
    if not path.is_file():
        raise RecordError(f"{path}: no such exam; list exams with `thermoscreen report`")
    return read_record_file(path)


def key_frame_meta(key: KeyFrame) -> KeyFrameRecord:
    """What exam.json says about a key frame: its file, encoding and scale."""
    radiometric = key.celsius is not None
    pixels = key.celsius if key.celsius is not None else key.gray
    assert pixels is not None
    return KeyFrameRecord(
        view=key.view,
        file=f"{key.view}.png",
        encoding="png16-centikelvin" if radiometric else "png8",
        scale_k_per_count=CENTIKELVIN if radiometric else None,
        offset_k=0.0 if radiometric else None,
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        frame_index=key.frame_index,
        t_s=round(key.t_s, 3),
        score=round(min(1.0, max(0.0, key.score)), 6),
    )


def encode_key_frame(key: KeyFrame) -> bytes:
    """Lossless PNG: 16-bit centi-kelvin for Celsius (0.01 K steps), 8-bit grey otherwise."""
    pixels: npt.NDArray[Any]
    if key.celsius is not None:
        kelvin = np.nan_to_num(key.celsius.astype(np.float64) + KELVIN_OFFSET, nan=0.0)
        pixels = np.clip(np.rint(kelvin / CENTIKELVIN), 0, 65535).astype(np.uint16)
    else:
        assert key.gray is not None
        pixels = key.gray
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels))
    if not ok:
        raise RecordError(f"key frame of {key.view}: PNG encoding failed")
    return bytes(buf.tobytes())


def read_key_frame(folder: Path, meta: KeyFrameRecord) -> KeyFrame:
    """Read a stored key frame back: Celsius for PNG16, uint8 for PNG8."""
    path = folder / meta.file
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise RecordError(f"{path}: missing or unreadable key frame; the record is incomplete")
    celsius: npt.NDArray[np.float32] | None = None
    gray: npt.NDArray[np.uint8] | None = None
    if meta.encoding == "png16-centikelvin":
        if image.dtype != np.uint16 or image.ndim != 2:
            raise RecordError(f"{path}: expected a 16-bit grey PNG; the record is damaged")
        scale = meta.scale_k_per_count or CENTIKELVIN
        kelvin = image.astype(np.float64) * scale + (meta.offset_k or 0.0)
        celsius = (kelvin - KELVIN_OFFSET).astype(np.float32)
    else:
        if image.dtype != np.uint8 or image.ndim != 2:
            raise RecordError(f"{path}: expected an 8-bit grey PNG; the record is damaged")
        gray = np.asarray(image, dtype=np.uint8)
    return KeyFrame(meta.view, meta.frame_index, meta.t_s, meta.score, celsius, gray)


def summary_json_schema() -> dict[str, Any]:
    """The JSON Schema of `exam/summary` (pipeline/mqtt/schemas/exam-summary.schema.json),
    derived from ExamRecord so the two cannot drift apart (a unit test compares them)."""
    schema = ExamRecord.model_json_schema(mode="serialization")
    schema["properties"] = {"schema": {"const": 1}, **schema["properties"]}
    schema["required"] = ["schema", *schema.get("required", [])]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "thermoscreen/exam-summary/1",
        **schema,
        "title": "thermoscreen exam summary",
        "description": "Message on thermoscreen/<device>/<camera>/exam/summary when an exam "
        "closes or aborts: the exam record (exam.json) without images. Screening support only: "
        "thermography is an adjunct to mammography, not a diagnosis. No patient identity; "
        "exam_id is an opaque accession code. Generated from pipeline.exam.record.ExamRecord.",
    }
