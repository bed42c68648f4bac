"""`thermoscreen report`: per-session summaries from a logger database.

For each (device, session): how many results arrived, the verdict (from the session summary the
device published when present, else the most frequent per-frame label), top-1 score statistics,
first and last capture time, missing `seq` numbers (lost results show up as gaps), how many
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
from pipeline.logger.store import ResultRow, SessionRow, Store, StoreError, open_store


@dataclass(frozen=True)
class SessionReport:
    device: str
    camera: str
    session: str
    frames: int  # results stored
    reported_frames: int | None  # frames the device's session summary says it classified
    verdict: str | None
    verdict_source: str  # "session" (device's summary) or "results" (most frequent label)
    labels: dict[str, int]
    score_mean: float | None
    score_min: float | None
    score_max: float | None
    first_capture: str | None
    last_capture: str | None
    missing_seq: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges
    duplicates: int = 0
    end_reason: str = "incomplete"  # eos/stopped/error from the summary, aborted, incomplete

    @property
    def missing_count(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.missing_seq)


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


def format_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


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
        score_mean=round(sum(scores) / len(scores), 6) if scores else None,
        score_min=min(scores) if scores else None,
        score_max=max(scores) if scores else None,
        first_capture=captures[0] if captures else None,
        last_capture=captures[-1] if captures else None,
        missing_seq=seq_gaps((r.seq for r in rows), reported),
        duplicates=duplicates,
        end_reason=end,
    )


def report_from_store(store: Store) -> list[SessionReport]:
    return build_reports(store.results(), store.sessions(), store.duplicates(), store.statuses())


# --- output ----------------------------------------------------------------------------------

COLUMNS = (
    "device", "camera", "session", "frames", "reported_frames", "verdict", "verdict_source",
    "labels", "score_mean", "score_min", "score_max", "first_capture", "last_capture",
    "missing_seq", "missing_count", "duplicates", "end_reason",
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
    return {c: row[c] for c in COLUMNS}


def to_json(reports: Sequence[SessionReport]) -> str:
    rows = []
    for r in reports:
        row = asdict(r)
        row["missing_seq"] = [list(x) for x in r.missing_seq]
        row["missing_count"] = r.missing_count
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
    heads = ("device", "session", "frames", "verdict", "labels", "score mean/min/max",
             "first capture", "last capture", "missing seq", "dups", "end")  # fmt: skip
    rows = []
    for r in reports:
        f = _flat(r)
        scores = "-" if r.score_mean is None else (
            f"{r.score_mean:.3f}/{r.score_min:.3f}/{r.score_max:.3f}"
        )  # fmt: skip
        verdict = f"{r.verdict or '-'} ({r.verdict_source})"
        row = (r.device, r.session, str(r.frames), verdict, f["labels"] or "-", scores,
               r.first_capture or "-", r.last_capture or "-", f["missing_seq"] or "-",
               str(r.duplicates), r.end_reason)  # fmt: skip
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


def main(args: argparse.Namespace) -> int:
    db = str(args.db)
    if "://" not in db and not Path(db).is_file():
        print(f"thermoscreen report: {db}: database not found; pass --db", file=sys.stderr)
        return 2
    try:
        store = open_store(db, writer=False)
    except StoreError as exc:
        print(f"thermoscreen report: {exc}", file=sys.stderr)
        return 2
    try:
        reports = report_from_store(store)
    finally:
        store.close()
    if args.device:
        reports = [r for r in reports if r.device == args.device]
    text = FORMATTERS[args.format](reports)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
