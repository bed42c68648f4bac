"""The result store on both engines: SQLite always, a real PostgreSQL server when installed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline.logger.report import report_from_store
from pipeline.logger.store import PostgresStore, SqliteStore, StoreError, _redact, open_store
from tests.helpers.mqtt_logger import make_payload
from tests.helpers.postgres import fresh_database
from tests.integration.conftest import Opener


def test_a_result_is_stored_once_and_its_duplicates_are_counted_per_session(
    opener: Opener,
) -> None:
    store = opener()
    a, b = make_payload(0), make_payload(1)
    other = make_payload(0, session="sess-2")
    assert store.add_result(a, 1.0) == "stored"
    assert store.add_result(b, 1.0) == "stored"
    assert store.add_result(a, 2.0) == "duplicate"
    assert store.add_result(a, 3.0) == "duplicate"
    assert store.add_result(other, 3.0) == "stored"
    assert store.add_result(other, 4.0) == "duplicate"
    store.commit()
    store.close()

    store = opener()
    counts = store.counts()
    assert (counts.results, counts.duplicates) == (3, 3)
    assert store.duplicates() == {("edge-01", "sess-1"): 2, ("edge-01", "sess-2"): 1}
    assert store.message_ids() == {a["message_id"], b["message_id"], other["message_id"]}
    rows = list(store.results())
    assert [(r.session, r.seq, r.label, r.score) for r in rows] == [
        ("sess-1", 0, "healthy", 0.75),
        ("sess-1", 1, "healthy", 0.75),
        ("sess-2", 0, "healthy", 0.75),
    ]
    assert rows[0].capture_ts == a["capture_ts"]
    store.close()


def test_uncommitted_writes_are_not_visible_after_rollback_or_reopen(opener: Opener) -> None:
    """The logger acknowledges only after commit: what was not committed must not be there."""
    store = opener()
    store.add_result(make_payload(0), 1.0)
    store.commit()
    store.add_result(make_payload(1), 1.0)
    store.rollback()
    store.add_result(make_payload(2), 1.0)
    store.close()  # a crash before commit
    store = opener()
    assert [r.seq for r in store.results()] == [0]
    store.close()


def test_rejects_keep_raw_bytes_and_original_size(opener: Opener) -> None:
    store = opener()
    raw = b"\xff\x00not json\x80"
    store.add_reject("thermoscreen/x/cam0/result", raw, 70_000, "oversized: 70000 bytes", 5.0)
    store.add_reject("thermoscreen/x/cam0/result", b"", 0, "not valid JSON", 6.0)
    store.commit()
    rejects = store.rejects()
    assert [(r.raw, r.size_bytes, r.reason) for r in rejects] == [
        (raw, 70_000, "oversized: 70000 bytes"),
        (b"", 0, "not valid JSON"),
    ]
    assert store.counts().rejects == 2
    store.close()


def test_latest_state_and_status_win_and_sessions_are_kept_per_id(opener: Opener) -> None:
    store = opener()
    store.set_state("edge-01", "cam0", {"frames": 1}, 1.0)
    store.set_state("edge-01", "cam0", {"frames": 2}, 2.0)
    store.set_state("edge-01", "cam1", {"frames": 7}, 2.0)
    store.set_status("edge-01", "online", 1.0)
    store.set_status("edge-01", "stopped", 2.0)
    store.add_session("edge-01", "cam0", "s1", {"session_id": "s1", "frames": 3}, 1.0)
    store.add_session("edge-01", "cam0", "s2", {"session_id": "s2", "frames": 4}, 1.0)
    store.add_session("edge-01", "cam0", "s1", {"session_id": "s1", "frames": 5}, 2.0)
    store.commit()
    counts = store.counts()
    assert (counts.states, counts.statuses, counts.sessions) == (2, 1, 2)
    sessions = {s.session: s.payload for s in store.sessions()}
    assert sessions == {
        "s1": {"session_id": "s1", "frames": 5},
        "s2": {"session_id": "s2", "frames": 4},
    }
    store.close()


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    store = open_store(path)
    assert isinstance(store, SqliteStore)
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_url_opens_postgresql(pg_server: str) -> None:
    store = open_store(fresh_database(pg_server))
    assert isinstance(store, PostgresStore)
    store.close()


def test_unreachable_postgresql_is_one_line_without_the_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    from tests.conftest import free_port

    url = f"postgresql://u:secret@127.0.0.1:{free_port()}/db"
    with pytest.raises(StoreError) as err:
        open_store(url)
    text = str(err.value)
    assert "\n" not in text
    assert "secret" not in text
    assert text.startswith(f"postgresql://u:***@127.0.0.1:{url.split(':')[3]}: cannot connect")


def test_unwritable_sqlite_path_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"cannot open SQLite database .*; check the path$"):
        open_store(blocker / "sub" / "r.sqlite")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql:///db", "postgresql:///db"),
    ],
)
def test_redact_hides_only_the_password(url: str, shown: str) -> None:
    assert _redact(url) == shown


def test_report_reads_both_engines_alike(opener: Opener) -> None:
    store = opener()
    for seq in (0, 1, 3):
        store.add_result(make_payload(seq, label="sick" if seq else "healthy", score=0.9), 1.0)
    store.add_result(make_payload(0), 2.0)  # a different message_id: a second result for seq 0
    store.add_session("edge-01", "cam0", "sess-1", {"session_id": "sess-1", "frames": 5}, 3.0)
    store.commit()
    (report,) = report_from_store(store)
    store.close()
    assert (report.frames, report.reported_frames, report.verdict_source) == (4, 5, "session")
    assert report.verdict is None  # the summary carries no verdict: shown as such, not guessed
    assert report.labels == {"healthy": 2, "sick": 2}
    assert report.missing_seq == [(2, 2), (4, 4)]
    assert (report.top1_score_min, report.top1_score_max) == (0.75, 0.9)


def test_sqlite_database_and_new_folders_are_private(tmp_path: Path) -> None:
    """Results are screening data: the logger's files are 0600 and the folders it makes 0700,
    whatever the umask."""
    import os

    old = os.umask(0o022)
    try:
        path = tmp_path / "var" / "logs" / "r.sqlite"
        store = open_store(path)
        store.add_result(make_payload(0), 1.0)
        store.commit()
        for name in ("r.sqlite", "r.sqlite-wal", "r.sqlite-shm"):
            assert (path.parent / name).stat().st_mode & 0o777 == 0o600, name
        store.close()
    finally:
        os.umask(old)
    assert (tmp_path / "var").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "var" / "logs").stat().st_mode & 0o777 == 0o700
