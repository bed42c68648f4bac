"""The console's HTML: the operator page (a static file with three values filled in), the list
of past exams, and the exam report, which is `pipeline.exam.report.render_report`, the very page
`thermoscreen report --exam ID` writes (no second report here).

Every asset ships inside the package (`pipeline/console/static/`): no build step, nothing
fetched from the internet.
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path

from pipeline import DISCLAIMER
from pipeline.exam.commands import CommandError, check_exam_id
from pipeline.exam.record import RECORD_NAME, ExamRecord
from pipeline.exam.report import render_report
from pipeline.exam.store import list_exams

STATIC_FILES = {
    "console.css": "text/css",
    "console.js": "text/javascript",
}
STATIC = resources.files("pipeline.console") / "static"


class NoSuchExam(LookupError):
    """The id is malformed or no exam of that id is stored; the message is one line."""


def static_file(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def index_page(csrf_token: str, device_id: str, camera_id: str) -> str:
    """The operator page with its CSRF token and the camera's ids filled in."""
    text = (STATIC / "index.html").read_text(encoding="utf-8")
    return (
        text.replace("{{CSRF}}", _e(csrf_token))
        .replace("{{DEVICE}}", _e(device_id))
        .replace("{{CAMERA}}", _e(camera_id))
        .replace("{{DISCLAIMER}}", _e(DISCLAIMER))
    )


def _verdict_cell(record: ExamRecord) -> str:
    v = record.verdict
    if v is None:
        why = record.abort_reason if record.state == "aborted" else "no accepted frame yet"
        return f"<td class='muted'>none ({_e(why)})</td>"
    sign = "&ge;" if v.positive else "&lt;"
    return (
        f"<td><b>{_e(v.label)}</b> (mean {_e(v.positive_label)} probability {v.score:.3f} "
        f"{sign} threshold {v.threshold:.3f}, {v.frames} frames)</td>"
    )


def _row(record: ExamRecord) -> str:
    views = ", ".join(f"{_e(name)} ({view.accepted_frames})" for name, view in record.views.items())
    model = _e(f"{record.model.name} {record.model.version}")
    if record.synthetic_model:
        model += " <span class='tag synthetic'>SYNTHETIC MODEL</span>"
    return (
        f"<tr><td><a href='/exams/{_e(record.exam_id)}'>{_e(record.exam_id)}</a></td>"
        f"<td>{_e(record.started)}</td><td>{_e(record.state)}</td><td>{views or '-'}</td>"
        f"{_verdict_cell(record)}<td>{model}</td></tr>"
    )


def exams_page(exams_dir: Path) -> str:
    """Every stored exam, newest first, each linked to its report."""
    listing = list_exams(exams_dir)
    rows = "".join(_row(r) for r in reversed(listing.records))
    unreadable = "".join(f"<li>{_e(line)}</li>" for line in listing.unreadable)
    body = (
        "<table><tr><th>Exam (accession code)</th><th>Started (UTC)</th><th>State</th>"
        "<th>Views (accepted frames)</th><th>Exam verdict</th><th>Model</th></tr>"
        f"{rows}</table>"
        if rows
        else "<p class='muted'>No exams yet. Start one on the <a href='/'>live page</a>.</p>"
    )
    if unreadable:
        body += f"<h2>Unreadable records</h2><ul>{unreadable}</ul>"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>thermoscreen: past exams</title>"
        "<link rel='stylesheet' href='/static/console.css'></head><body class='page'>"
        "<header><h1>Past exams</h1><nav><a href='/'>&larr; live page</a></nav></header>"
        "<main><p>Click an exam to open its report, the same page <code>thermoscreen report "
        f"--exam ID</code> writes.</p>{body}</main>"
        f"<footer class='disclaimer'><b>Adjunct only.</b> {_e(DISCLAIMER)}</footer>"
        "</body></html>\n"
    )


def report_page(exams_dir: Path, exam_id: str) -> str:
    """The exam's report (NoSuchExam for a malformed id or a missing record)."""
    try:
        check_exam_id(exam_id)
    except CommandError as exc:
        raise NoSuchExam(str(exc)) from exc
    folder = Path(exams_dir) / exam_id
    if not (folder / RECORD_NAME).is_file():
        raise NoSuchExam(f"no exam {exam_id} is stored here; see the list of past exams")
    return render_report(folder)
