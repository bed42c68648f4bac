"""`thermoscreen report`: per-session summaries and the exams from a logger database, or one
exam's HTML report (`--exam ID`; the listing and the page are in `pipeline.logger.examreport`).

For each (device, session): how many results arrived, the rolling verdict (the last N frames of
the session summary the device published when present, else the most frequent per-frame label),
the top-1 score (the winning label's probability per frame) statistics, the mean positive-class
probability over the whole session (from its summary), first and last capture time, missing
`seq` numbers (lost results show up as gaps; those the device itself dropped at a full outbox
and named in its summary are listed apart), how many
re-deliveries the logger dropped as duplicates, and how the session ended: the summary's reason,
or `aborted` when no summary ever came and the device went offline or started a later session
(a killed run), or `incomplete` while neither is known. Screening support only, never a
diagnosis.

Labels, ids and verdicts come from devices, so the CSV neutralizes cells a spreadsheet would run
as formulas, and the table shows control characters escaped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline import DISCLAIMER
from pipeline.logger import examreport
from pipeline.logger.store import ResultRow, SessionRow, Store, StoreError, open_store
from pipeline.mqtt.delivery import format_ranges, range_count, subtract_ranges, to_ranges


@dataclass(frozen=True)
class SessionReport:
    device: str
    camera: str
    session: str
    frames: int  # results stored
    reported_frames: int | None  # frames the device's session summary says it classified
    verdict: str | None  # the ROLLING verdict (last N frames), or the most frequent label
    verdict_source: str  # "session" (device's summary) or "results" (most frequent label)
    labels: dict[str, int]
    top1_score_mean: float | None  # the winning label's probability, whatever the label
    top1_score_min: float | None
    top1_score_max: float | None
    first_capture: str | None
    last_capture: str | None
    missing_seq: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges
    duplicates: int = 0
    end_reason: str = "incomplete"  # eos/stopped/error from the summary, aborted, incomplete
    positive_label: str | None = None  # the class the next column is the probability of
    positive_score_mean: float | None = None  # its mean over every frame (session summary)
    # results the device dropped at its full outbox (named in its summary), never sent
    dropped_seq: list[tuple[int, int]] = field(default_factory=list)

    @property
    def missing_count(self) -> int:
        return range_count(self.missing_seq)

    @property
    def dropped_count(self) -> int:
        return range_count(self.dropped_seq)


def seq_gaps(seqs: Iterable[int], expected_count: int | None = None) -> list[tuple[int, int]]:
    """Missing numbers of 0..last as inclusive ranges; last is the highest seen, or
    expected_count - 1 when the session summary says more frames were classified."""
    seen = sorted(set(seqs))
    last = max(seen[-1] if seen else -1, (expected_count or 0) - 1)
    gaps: list[tuple[int, int]] = []
    expect = 0
    for s in [*seen, last + 1]:
        if s > expect:
            gaps.append((expect, s - 1))
        expect = max(expect, s + 1)
    return gaps


def _dropped_seq(summary: SessionRow | None, stored: list[int]) -> list[tuple[int, int]]:
    """The summary's `dropped_seq` (schema 2) less anything stored after all."""
    named = summary.payload.get("dropped_seq") if summary else None
    if not isinstance(named, list):
        return []
    ranges = [(int(r[0]), int(r[1])) for r in named if isinstance(r, list) and len(r) == 2]
    return subtract_ranges(ranges, to_ranges(stored))


def _summary_verdict(payload: dict[str, Any]) -> str | None:
    verdict = payload.get("rolling_verdict", payload.get("verdict"))  # v2, else v1
    if isinstance(verdict, dict) and isinstance(verdict.get("label"), str):
        return str(verdict["label"])
    return None


def _most_frequent(labels: Counter[str]) -> str | None:
    if not labels:
        return None
    return min(labels.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # ties: alphabetical


def build_reports(
    results: Iterable[ResultRow],
    sessions: Iterable[SessionRow],
    duplicates: dict[tuple[str, str], int],
    statuses: dict[str, str] | None = None,
) -> list[SessionReport]:
    """One report per (device, session), from stored rows; sorted by first capture time.
    `statuses` (device -> last status) tells an aborted session from one still running."""
    grouped: dict[tuple[str, str], list[ResultRow]] = {}
    for row in results:
        grouped.setdefault((row.device, row.session), []).append(row)
    summaries = {(s.device, s.session): s for s in sessions}
    keys = set(grouped) | set(summaries)
    reports = [
        _one(key, grouped.get(key, []), summaries.get(key), duplicates.get(key, 0)) for key in keys
    ]
    reports = _mark_aborted(reports, statuses or {})
    return sorted(reports, key=lambda r: (r.first_capture or "~", r.device, r.session))


def _mark_aborted(reports: list[SessionReport], statuses: dict[str, str]) -> list[SessionReport]:
    """A session without a summary is aborted when its device went offline or stopped, or when
    the same camera started a later session; otherwise it may still be running (incomplete)."""
    latest: dict[tuple[str, str], str] = {}
    for r in reports:
        key = (r.device, r.camera)
        latest[key] = max(latest.get(key, ""), r.first_capture or "")
    marked = []
    for r in reports:
        if r.verdict_source == "results":
            later = (r.first_capture or "") < latest[(r.device, r.camera)]
            gone = statuses.get(r.device) in ("offline", "stopped")
            r = replace(r, end_reason="aborted" if later or gone else "incomplete")
        marked.append(r)
    return marked


def _one(
    key: tuple[str, str], rows: list[ResultRow], summary: SessionRow | None, duplicates: int
) -> SessionReport:
    device, session = key
    labels = Counter(r.label for r in rows)
    scores = [r.score for r in rows]
    captures = sorted(r.capture_ts for r in rows)  # RFC 3339 UTC with ms sorts as text
    reported = summary.payload.get("frames") if summary else None
    reported = reported if isinstance(reported, int) else None
    seqs = [r.seq for r in rows]
    dropped = _dropped_seq(summary, seqs)
    end = "incomplete"
    if summary is not None:
        verdict, source = _summary_verdict(summary.payload), "session"
        camera = summary.camera
        end = str(summary.payload.get("end_reason") or "ended")
    else:
        verdict, source = _most_frequent(labels), "results"
        camera = ",".join(sorted({r.camera for r in rows}))
    return SessionReport(
        device=device,
        camera=camera,
        session=session,
        frames=len(rows),
        reported_frames=reported,
        verdict=verdict,
        verdict_source=source,
        labels=dict(sorted(labels.items())),
        top1_score_mean=round(sum(scores) / len(scores), 6) if scores else None,
        top1_score_min=min(scores) if scores else None,
        top1_score_max=max(scores) if scores else None,
        first_capture=captures[0] if captures else None,
        last_capture=captures[-1] if captures else None,
        missing_seq=subtract_ranges(seq_gaps(seqs, reported), dropped),
        duplicates=duplicates,
        end_reason=end,
        positive_label=_summary_score(summary, "label"),
        positive_score_mean=_summary_score(summary, "mean"),
        dropped_seq=dropped,
    )


def _summary_score(summary: SessionRow | None, key: str) -> Any:
    """The session summary's positive-class score field (label or mean), when it has one."""
    score = summary.payload.get("score") if summary is not None else None
    return score.get(key) if isinstance(score, dict) else None


def report_from_store(store: Store) -> list[SessionReport]:
    return build_reports(store.results(), store.sessions(), store.duplicates(), store.statuses())


# --- output ----------------------------------------------------------------------------------

COLUMNS = (
    "device", "camera", "session", "frames", "reported_frames", "verdict", "verdict_source",
    "labels", "top1_score_mean", "top1_score_min", "top1_score_max", "positive_label",
    "positive_score_mean", "first_capture", "last_capture", "missing_seq", "missing_count",
    "duplicates", "end_reason", "dropped_seq", "dropped_count",
)  # fmt: skip
# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...)).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
_CONTROL = dict.fromkeys([*range(0x20), 0x7F])


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: formula starts get a leading apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _printable(text: str) -> str:
    """Control characters (terminal escapes, newlines) from a device shown escaped."""
    if not any(ord(c) in _CONTROL for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode() if ord(c) in _CONTROL else c for c in text)


def _flat(r: SessionReport) -> dict[str, Any]:
    row = asdict(r)
    row["labels"] = ";".join(f"{k}={v}" for k, v in r.labels.items())
    row["missing_seq"] = format_ranges(r.missing_seq)
    row["missing_count"] = r.missing_count
    row["dropped_seq"] = format_ranges(r.dropped_seq)
    row["dropped_count"] = r.dropped_count
    return {c: row[c] for c in COLUMNS}


def to_json(reports: Sequence[SessionReport]) -> str:
    rows = []
    for r in reports:
        row = asdict(r)
        row["missing_seq"] = [list(x) for x in r.missing_seq]
        row["missing_count"] = r.missing_count
        row["dropped_seq"] = [list(x) for x in r.dropped_seq]
        row["dropped_count"] = r.dropped_count
        rows.append(row)
    return json.dumps({"disclaimer": DISCLAIMER, "sessions": rows}, indent=2) + "\n"


def to_csv(reports: Sequence[SessionReport]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in reports:
        writer.writerow({k: "" if v is None else csv_cell(v) for k, v in _flat(r).items()})
    return buf.getvalue()


def to_table(reports: Sequence[SessionReport]) -> str:
    heads = ("device", "session", "frames", "rolling verdict", "labels",
             "top-1 score mean/min/max", "P(positive) mean", "first capture", "last capture",
             "missing seq", "dropped seq", "dups", "end")  # fmt: skip
    rows = []
    for r in reports:
        f = _flat(r)
        scores = "-" if r.top1_score_mean is None else (
            f"{r.top1_score_mean:.3f}/{r.top1_score_min:.3f}/{r.top1_score_max:.3f}"
        )  # fmt: skip
        positive = "-" if r.positive_score_mean is None else (
            f"{r.positive_label}: {r.positive_score_mean:.3f}"
        )  # fmt: skip
        verdict = f"{r.verdict or '-'} ({r.verdict_source})"
        row = (r.device, r.session, str(r.frames), verdict, f["labels"] or "-", scores, positive,
               r.first_capture or "-", r.last_capture or "-", f["missing_seq"] or "-",
               f["dropped_seq"] or "-", str(r.duplicates), r.end_reason)  # fmt: skip
        rows.append(tuple(_printable(c) for c in row))
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"{len(reports)} session(s). {DISCLAIMER}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


FORMATTERS = {"table": to_table, "csv": to_csv, "json": to_json}


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default="var/results.sqlite",
        help="logger database: SQLite file or postgresql:// URL (default %(default)s)",
    )
    parser.add_argument("--format", choices=sorted(FORMATTERS), default="table")
    parser.add_argument("--out", type=Path, help="write here instead of standard output")
    parser.add_argument("--device", help="only this device id")
    parser.add_argument("--camera", help="only this camera id")
    parser.add_argument(
        "--since", help="only sessions and exams from this time on (2026-01-14, or ISO 8601 UTC)"
    )
    parser.add_argument(
        "--exams", action="store_true", help="list the exams only (not the sessions)"
    )
    parser.add_argument(
        "--exam",
        metavar="ID",
        help="write exam ID's HTML report (the same page as its record's report.html)",
    )
    parser.add_argument(
        "--exams-dir",
        type=Path,
        help="the device's exam records (with key frames) for --exam; else the stored summary",
    )


@dataclass(frozen=True)
class Query:
    """What `report` was asked for: filters and the exam to render."""

    since: str | None
    device: str | None
    camera: str | None


def _sessions(store: Store, q: Query) -> list[SessionReport]:
    reports = report_from_store(store)
    return [
        r
        for r in reports
        if (q.device is None or r.device == q.device)
        and (q.camera is None or r.camera == q.camera)
        and (q.since is None or (r.first_capture or "") >= q.since)
    ]


def render(store: Store, args: argparse.Namespace, q: Query) -> str:
    """The text `report` writes: one exam's HTML, the exams, or sessions and exams."""
    exams = store.exams(q.since, q.device, q.camera, args.exam)
    if args.exam:
        return examreport.exam_html(exams, args.exam, args.exams_dir)
    if args.format == "json":
        rows = [] if args.exams else json.loads(to_json(_sessions(store, q)))["sessions"]
        payload = {"disclaimer": DISCLAIMER, "exams": examreport.to_json(exams)}
        return examreport.dump_json(payload if args.exams else {**payload, "sessions": rows})
    if args.format == "csv":
        return examreport.to_csv(exams, csv_cell) if args.exams else to_csv(_sessions(store, q))
    text = examreport.to_table(exams, _printable)
    if args.exams:
        return text
    sessions = to_table(_sessions(store, q))
    return f"{sessions}\n{text}" if exams else sessions  # no exams: the sessions alone


def main(args: argparse.Namespace) -> int:
    db = str(args.db)
    if "://" not in db and not Path(db).is_file():
        print(f"thermoscreen report: {db}: database not found; pass --db", file=sys.stderr)
        return 2
    try:
        since = None if args.since is None else examreport.parse_since(args.since)
        store = open_store(db, writer=False)
    except (StoreError, examreport.ExamReportError) as exc:
        print(f"thermoscreen report: {exc}", file=sys.stderr)
        return 2
    try:
        text = render(store, args, Query(since, args.device, args.camera))
    except examreport.ExamReportError as exc:
        print(f"thermoscreen report: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
