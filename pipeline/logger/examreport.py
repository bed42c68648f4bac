"""`thermoscreen report`'s exams: the list of finished exams and one exam's HTML report.

The list comes from the logger's `exams` table (the `exam/summary` each device published): one
row per exam with its state, times, the exam verdict and the score it rests on (the mean
positive-class probability over the accepted frames of the model's views), the threshold it was
held against and the frames behind it. `--exam ID` writes that exam's report with the same
renderer as the record's report.html (`pipeline.exam.report`): from the exam's folder when the
device's exams directory is at hand (key frames included), else from the stored summary (the
summary carries no images, so the page says where the key frames are kept).

Screening support only: thermography is an adjunct to mammography, never a diagnosis.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipeline import DISCLAIMER
from pipeline.exam.record import RECORD_NAME, ExamRecord, RecordError, exam_dir
from pipeline.exam.report import render_report
from pipeline.logger.examstore import ExamRow
from pipeline.mqtt.payload import rfc3339_ms

SCORE_IS = "mean positive-class probability over the accepted frames of the model's views"
COLUMNS = (
    "device", "camera", "exam_id", "state", "started", "ended", "exam_verdict",
    "exam_score", "positive_label", "threshold", "frames", "synthetic_model", "abort_reason",
)  # fmt: skip


class ExamReportError(Exception):
    """No such exam, or one that cannot be shown; one line naming the fix."""


def parse_since(text: str) -> str:
    """`2026-01-14` or `2026-01-14T09:30:00Z` (any ISO 8601 time; naive means UTC) -> the
    RFC 3339 UTC form records use, so the database compares it as text."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ExamReportError(
            f"--since {text!r}: not a date or time; use e.g. 2026-01-14 or 2026-01-14T09:30:00Z"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return rfc3339_ms(moment.timestamp())


def flat(row: ExamRow) -> dict[str, Any]:
    verdict = row.payload.get("verdict") or {}
    return {
        "device": row.device,
        "camera": row.camera,
        "exam_id": row.exam_id,
        "state": row.state,
        "started": row.started,
        "ended": row.ended,
        "exam_verdict": row.verdict,
        "exam_score": row.score,
        "positive_label": verdict.get("positive_label"),
        "threshold": row.threshold,
        "frames": verdict.get("frames"),
        "synthetic_model": row.synthetic_model,
        "abort_reason": row.payload.get("abort_reason"),
    }


def to_json(rows: Sequence[ExamRow]) -> list[dict[str, Any]]:
    return [{**flat(r), "exam_score_is": SCORE_IS} for r in rows]


def to_csv(rows: Sequence[ExamRow], cell: Any) -> str:
    """CSV of the exams; `cell` neutralizes spreadsheet formulas (report.csv_cell)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else cell(v) for k, v in flat(r).items()})
    return buf.getvalue()


def to_table(rows: Sequence[ExamRow], printable: Any) -> str:
    heads = ("device", "camera", "exam", "state", "started", "exam verdict",
             "exam score: mean P(positive) / threshold", "frames")  # fmt: skip
    body = []
    for r in rows:
        f = flat(r)
        verdict = r.verdict or ("-" if r.state == "closed" else f"({f['abort_reason']})")
        if r.synthetic_model:
            verdict += " [SYNTHETIC MODEL]"
        score = "-" if r.score is None else f"{r.score:.3f} / {r.threshold:.3f}"
        cells = (r.device, r.camera, r.exam_id, r.state, r.started, verdict, score,
                 str(f["frames"] or 0))  # fmt: skip
        body.append(tuple(printable(c) for c in cells))
    widths = [max([len(h), *(len(row[i]) for row in body)]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    lines.append(f"{len(rows)} exam(s); exam score: {SCORE_IS}. {DISCLAIMER}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def exam_html(rows: Sequence[ExamRow], exam_id: str, exams_dir: Path | None) -> str:
    """The report page of one exam (see the module docstring)."""
    if not rows:
        raise ExamReportError(
            f"exam {exam_id}: not in this database; list exams with `thermoscreen report`"
        )
    if len({(r.device, r.camera) for r in rows}) > 1:
        where = ", ".join(f"{r.device}/{r.camera}" for r in rows)
        raise ExamReportError(f"exam {exam_id}: found at {where}; give --device and --camera")
    folder = _folder(exams_dir, exam_id)
    if folder is not None:
        try:
            return render_report(folder)
        except RecordError as exc:
            raise ExamReportError(str(exc)) from exc
    data = {k: v for k, v in rows[0].payload.items() if k != "schema"}
    try:
        record = ExamRecord.model_validate(data)
    except ValidationError as exc:
        raise ExamReportError(f"exam {exam_id}: the stored summary is not a record") from exc
    return render_report(None, record)


def _folder(exams_dir: Path | None, exam_id: str) -> Path | None:
    if exams_dir is None:
        return None
    try:
        folder = exam_dir(exams_dir, exam_id)
    except RecordError as exc:
        raise ExamReportError(str(exc)) from exc
    return folder if (folder / RECORD_NAME).is_file() else None


def dump_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=2) + "\n"
