"""Exam records on disk as a whole: save a finished exam, list exams, recover after a crash.

`save_exam` writes the key frames, exam.json and report.html of a closed or aborted exam.
`recover_unfinished` runs once when a camera starts: a record still in an open state means the
process ended during that exam, so it is marked `aborted` with the reason (and its report
written); no verdict is invented for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.exam.commands import EXAM_ID_RE
from pipeline.exam.record import (
    RECORD_NAME,
    ExamRecord,
    FinishedExam,
    RecordError,
    encode_key_frame,
    exam_dir,
    key_frame_meta,
    private_dir,
    read_record_file,
    write_private,
    write_record,
)
from pipeline.exam.report import write_report
from pipeline.mqtt.payload import rfc3339_ms

log = logging.getLogger(__name__)

CRASH_REASON = "the process ended during the exam (found unfinished at the next start)"


def save_exam(exams_dir: Path, finished: FinishedExam) -> Path:
    """Write a finished exam's key frames, exam.json and report.html; return its folder."""
    record = finished.record
    folder = private_dir(exam_dir(exams_dir, record.exam_id))
    listed = {k.file for k in record.key_frames}
    for key in finished.key_frames:
        meta = key_frame_meta(key)
        if meta.file not in listed:
            raise RecordError(
                f"key frame {meta.file} is not listed in the record of {record.exam_id}"
            )
        write_private(folder / meta.file, encode_key_frame(key))
    write_record(exams_dir, record)
    write_report(folder, record)
    return folder


def exam_id_taken(exams_dir: Path) -> Callable[[str], bool]:
    """For ExamController(id_taken=...): an id whose folder exists was used before."""
    root = Path(exams_dir)
    return lambda exam_id: (root / exam_id).exists()


@dataclass(frozen=True)
class Listing:
    """Readable records (oldest first) and the one-line errors of unreadable ones."""

    records: tuple[ExamRecord, ...]
    unreadable: tuple[str, ...]


def list_exams(exams_dir: Path) -> Listing:
    """Every exam under `exams_dir`, for `thermoscreen report` and the console's /exams."""
    root = Path(exams_dir)
    records: list[ExamRecord] = []
    errors: list[str] = []
    if not root.is_dir():
        return Listing((), ())
    for folder in sorted(root.iterdir()):
        path = folder / RECORD_NAME
        if not EXAM_ID_RE.fullmatch(folder.name) or not path.is_file():
            continue
        try:
            records.append(read_record_file(path))
        except RecordError as exc:
            errors.append(str(exc))
    records.sort(key=lambda r: (r.started, r.exam_id))
    return Listing(tuple(records), tuple(errors))


def recover_unfinished(exams_dir: Path, now_s: float, reason: str = CRASH_REASON) -> Listing:
    """Mark every record left in an open state as aborted with `reason`; return those records
    and the unreadable ones (logged, left untouched for a person to look at)."""
    listing = list_exams(exams_dir)
    for error in listing.unreadable:
        log.warning("exam record skipped: %s", error)
    aborted: list[ExamRecord] = []
    for record in listing.records:
        if record.finished:
            continue
        data = record.model_dump()
        data.update(state="aborted", abort_reason=reason, ended=rfc3339_ms(now_s), verdict=None)
        fixed = ExamRecord.model_validate(data)
        write_record(exams_dir, fixed)
        write_report(exam_dir(exams_dir, fixed.exam_id), fixed)
        log.warning("exam %s was left %s; marked aborted: %s", record.exam_id, record.state, reason)
        aborted.append(fixed)
    return Listing(tuple(aborted), listing.unreadable)
