"""The logger's result store: SQLite (WAL) by default, PostgreSQL when given a URL.

Each result is stored once, keyed by its `message_id`; a re-delivered message is counted as a
duplicate for its session and not stored again. Rejected messages keep their raw bytes so that
nothing is dropped silently. Writes are grouped into transactions by the caller: the logger
acknowledges a message to the broker only after `commit()` returns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pipeline.logger import dbfiles
from pipeline.logger.examstore import EXAM_DDL, ExamRow, ExamStateRow, ExamTables
from pipeline.uri import redact

Added = Literal["stored", "duplicate", "conflict"]
REASON_KEEP_CHARS = 1000


class StoreError(Exception):
    """The database cannot be opened or written; the message is one line naming it and the fix."""


class StoreFileError(StoreError):
    """The database's files were removed, replaced or made unwritable under a running logger."""


class StoreRefused(StoreError):
    """The engine refused one message's values (not the database itself): reject that message."""


@dataclass(frozen=True)
class ResultRow:
    """The columns of a stored result that reports use."""

    device: str
    camera: str
    session: str
    seq: int
    frame_index: int
    capture_ts: str
    label: str
    score: float


@dataclass(frozen=True)
class SessionRow:
    """A final session summary as published on .../<camera>/session."""

    device: str
    camera: str
    session: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class RejectRow:
    topic: str
    raw: bytes
    size_bytes: int
    reason: str


@dataclass(frozen=True)
class StoreCounts:
    results: int
    states: int
    sessions: int
    statuses: int
    rejects: int
    duplicates: int


class Store(Protocol):
    """What the logger and the report need from a database; one implementation per engine."""

    def add_result(self, payload: dict[str, Any], received_ts: float) -> Added:
        """Insert a schema-valid result. A known message_id with the same content is a
        duplicate (counted per session); with different content it is a conflict (not stored:
        the caller keeps it as a reject)."""
        ...

    def set_state(self, device: str, camera: str, payload: Any, received_ts: float) -> None: ...

    def add_session(
        self, device: str, camera: str, session: str, payload: Any, received_ts: float
    ) -> None: ...

    def set_status(self, device: str, status: str, received_ts: float) -> None: ...

    def add_reject(
        self, topic: str, raw: bytes, size_bytes: int, reason: str, received_ts: float
    ) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def check(self) -> None:
        """Raise StoreFileError when the files under the open database were removed, replaced
        or made unwritable (a no-op for a server database)."""
        ...

    def close(self) -> None: ...

    def results(self) -> Iterator[ResultRow]: ...

    def sessions(self) -> list[SessionRow]: ...

    def duplicates(self) -> dict[tuple[str, str], int]: ...

    def statuses(self) -> dict[str, str]: ...

    def rejects(self) -> list[RejectRow]: ...

    def message_ids(self) -> set[str]: ...

    def counts(self) -> StoreCounts: ...

    # exams (pipeline.logger.examstore)
    def add_exam_state(
        self, device: str, camera: str, payload: dict[str, Any], received_ts: float
    ) -> bool: ...

    def add_exam_summary(
        self, device: str, camera: str, payload: dict[str, Any], received_ts: float
    ) -> None: ...

    def exams(
        self,
        since: str | None = None,
        device: str | None = None,
        camera: str | None = None,
        exam_id: str | None = None,
    ) -> list[ExamRow]: ...

    def exam_states(self, device: str, exam_id: str) -> list[ExamStateRow]: ...


# One schema for both engines; {json}, {blob}, {real}, {int64} and {serial} are filled per
# dialect.
_DDL = (
    """CREATE TABLE IF NOT EXISTS results (
        message_id TEXT PRIMARY KEY,
        device TEXT NOT NULL,
        camera TEXT NOT NULL,
        session TEXT NOT NULL,
        seq {int64} NOT NULL,
        frame_index {int64} NOT NULL,
        capture_ts TEXT NOT NULL,
        label TEXT NOT NULL,
        score {real} NOT NULL,
        payload {json} NOT NULL,
        received_ts {real} NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS results_by_session ON results (device, session, seq)",
    """CREATE TABLE IF NOT EXISTS states (
        device TEXT NOT NULL,
        camera TEXT NOT NULL,
        payload {json} NOT NULL,
        received_ts {real} NOT NULL,
        PRIMARY KEY (device, camera))""",
    """CREATE TABLE IF NOT EXISTS sessions (
        device TEXT NOT NULL,
        camera TEXT NOT NULL,
        session TEXT NOT NULL,
        payload {json} NOT NULL,
        received_ts {real} NOT NULL,
        PRIMARY KEY (device, camera, session))""",
    """CREATE TABLE IF NOT EXISTS statuses (
        device TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        received_ts {real} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rejects (
        id {serial},
        topic TEXT NOT NULL,
        raw {blob} NOT NULL,
        size_bytes INTEGER NOT NULL,
        reason TEXT NOT NULL,
        received_ts {real} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS duplicates (
        device TEXT NOT NULL,
        session TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (device, session))""",
)

_INSERT_RESULT = (
    "INSERT INTO results (message_id, device, camera, session, seq, frame_index, capture_ts, "
    "label, score, payload, received_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, {jsonarg}, ?) "
    "ON CONFLICT (message_id) DO NOTHING"
)
_COUNT_DUPLICATE = (
    "INSERT INTO duplicates (device, session, count) VALUES (?, ?, 1) "
    "ON CONFLICT (device, session) DO UPDATE SET count = duplicates.count + 1"
)
_UPSERT_STATE = (
    "INSERT INTO states (device, camera, payload, received_ts) VALUES (?, ?, {jsonarg}, ?) "
    "ON CONFLICT (device, camera) DO UPDATE SET payload = excluded.payload, "
    "received_ts = excluded.received_ts"
)
_UPSERT_SESSION = (
    "INSERT INTO sessions (device, camera, session, payload, received_ts) "
    "VALUES (?, ?, ?, {jsonarg}, ?) ON CONFLICT (device, camera, session) DO UPDATE SET "
    "payload = excluded.payload, received_ts = excluded.received_ts"
)
_UPSERT_STATUS = (
    "INSERT INTO statuses (device, status, received_ts) VALUES (?, ?, ?) "
    "ON CONFLICT (device) DO UPDATE SET status = excluded.status, "
    "received_ts = excluded.received_ts"
)
_INSERT_REJECT = (
    "INSERT INTO rejects (topic, raw, size_bytes, reason, received_ts) VALUES (?, ?, ?, ?, ?)"
)


def _dump(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def safe_text(text: str, keep: int = REASON_KEEP_CHARS) -> str:
    """Text any engine stores: no NUL, no unpaired surrogates, bounded length."""
    clean = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return clean if len(clean) <= keep else clean[: keep - 3] + "..."


def same_json(a: Any, b: Any) -> bool:
    """Equal JSON values, where a number may come back from the engine as int or float
    (PostgreSQL's jsonb keeps 1e2 as 100): numbers compare by value, bools stay bools."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if (
        isinstance(a, bool)
        or isinstance(b, bool)
        or not (isinstance(a, numbers) and isinstance(b, numbers))
    ):
        return type(a) is type(b) and bool(a == b)
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return float(a) == float(b)


class _SqlStore(ExamTables):
    """The SQL shared by both engines; subclasses supply the connection and dialect."""

    _types: ClassVar[dict[str, str]]
    _jsonarg = "?"

    def __init__(
        self,
        conn: Any,
        label: str,
        errors: tuple[type[Exception], ...],
        refusals: tuple[type[Exception], ...],
    ) -> None:
        self._errors = errors  # the engine's own exception types, turned into StoreError
        self._refusals = refusals  # errors caused by one message's values: StoreRefused
        self._conn = conn
        self._label = label
        self._create()

    # Dialect hooks -------------------------------------------------------------------------
    def _sql(self, text: str) -> str:
        return text

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            return self._conn.execute(self._sql(sql), tuple(params))
        except self._refusals as exc:
            raise StoreRefused(f"database refused the values: {_first_line(exc)}") from exc
        except self._errors as exc:
            raise self._failed("query", exc) from exc

    def _failed(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"{self._label}: {what} failed ({_first_line(exc)})")

    def _load_json(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str | bytes) else value

    # Writes ----------------------------------------------------------------------------------
    def _create(self) -> None:
        for stmt in (*_DDL, *EXAM_DDL):
            self._execute(stmt.format(**self._types))
        self._migrate()
        self.commit()

    def _migrate(self) -> None:
        """Bring a database made by an older version up to this schema (per engine)."""

    def add_result(self, payload: dict[str, Any], received_ts: float) -> Added:
        cur = self._execute(
            _INSERT_RESULT.format(jsonarg=self._jsonarg),
            (
                payload["message_id"],
                payload["device_id"],
                payload["camera_id"],
                payload["session_id"],
                payload["seq"],
                payload["frame_index"],
                payload["capture_ts"],
                payload["result"]["label"],
                float(payload["result"]["score"]),
                _dump(payload),
                received_ts,
            ),
        )
        if cur.rowcount == 1:
            return "stored"
        row = self._execute(
            "SELECT payload FROM results WHERE message_id = ?", (payload["message_id"],)
        ).fetchone()
        if row is not None and not same_json(self._load_json(row[0]), payload):
            return "conflict"
        self._execute(_COUNT_DUPLICATE, (payload["device_id"], payload["session_id"]))
        return "duplicate"

    def set_state(self, device: str, camera: str, payload: Any, received_ts: float) -> None:
        sql = _UPSERT_STATE.format(jsonarg=self._jsonarg)
        self._execute(sql, (device, camera, _dump(payload), received_ts))

    def add_session(
        self, device: str, camera: str, session: str, payload: Any, received_ts: float
    ) -> None:
        sql = _UPSERT_SESSION.format(jsonarg=self._jsonarg)
        self._execute(sql, (device, camera, session, _dump(payload), received_ts))

    def set_status(self, device: str, status: str, received_ts: float) -> None:
        self._execute(_UPSERT_STATUS, (device, status, received_ts))

    def add_reject(
        self, topic: str, raw: bytes, size_bytes: int, reason: str, received_ts: float
    ) -> None:
        params = (safe_text(topic), bytes(raw), size_bytes, safe_text(reason), received_ts)
        self._execute(_INSERT_REJECT, params)

    def commit(self) -> None:
        try:
            self._conn.commit()
        except self._errors as exc:
            raise self._failed("commit", exc) from exc

    def rollback(self) -> None:
        try:
            self._conn.rollback()
        except self._errors as exc:
            raise self._failed("rollback", exc) from exc

    def check(self) -> None:
        return None

    def close(self) -> None:
        self._conn.close()

    # Reads -----------------------------------------------------------------------------------
    def results(self) -> Iterator[ResultRow]:
        cur = self._execute(
            "SELECT device, camera, session, seq, frame_index, capture_ts, label, score "
            "FROM results ORDER BY device, session, seq"
        )
        for row in cur.fetchall():
            yield ResultRow(
                str(row[0]), str(row[1]), str(row[2]), int(row[3]), int(row[4]), str(row[5]),
                str(row[6]), float(row[7]),
            )  # fmt: skip

    def sessions(self) -> list[SessionRow]:
        cur = self._execute("SELECT device, camera, session, payload FROM sessions")
        return [
            SessionRow(str(r[0]), str(r[1]), str(r[2]), self._load_json(r[3]))
            for r in cur.fetchall()
        ]

    def statuses(self) -> dict[str, str]:
        cur = self._execute("SELECT device, status FROM statuses")
        return {str(r[0]): str(r[1]) for r in cur.fetchall()}

    def duplicates(self) -> dict[tuple[str, str], int]:
        cur = self._execute("SELECT device, session, count FROM duplicates")
        return {(str(r[0]), str(r[1])): int(r[2]) for r in cur.fetchall()}

    def rejects(self) -> list[RejectRow]:
        cur = self._execute("SELECT topic, raw, size_bytes, reason FROM rejects ORDER BY id")
        return [RejectRow(str(r[0]), bytes(r[1]), int(r[2]), str(r[3])) for r in cur.fetchall()]

    def message_ids(self) -> set[str]:
        return {str(r[0]) for r in self._execute("SELECT message_id FROM results").fetchall()}

    def counts(self) -> StoreCounts:
        def one(sql: str) -> int:
            value = self._execute(sql).fetchone()[0]
            return int(value or 0)

        return StoreCounts(
            results=one("SELECT COUNT(*) FROM results"),
            states=one("SELECT COUNT(*) FROM states"),
            sessions=one("SELECT COUNT(*) FROM sessions"),
            statuses=one("SELECT COUNT(*) FROM statuses"),
            rejects=one("SELECT COUNT(*) FROM rejects"),
            duplicates=one("SELECT SUM(count) FROM duplicates"),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._label})"


class SqliteStore(_SqlStore):
    """A local file in WAL mode: readers (reports) never block the logger's writes.

    The file and the folders it creates are private (0600/0700). `check` tells a running logger
    that its files were removed, replaced or made unwritable, before it acknowledges more.
    """

    _types: ClassVar[dict[str, str]] = {
        "json": "TEXT",
        "blob": "BLOB",
        "real": "REAL",
        "int64": "INTEGER",  # SQLite's INTEGER holds 64 bits
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
    }

    def __init__(self, path: Path, writer: bool = True) -> None:
        try:
            dbfiles.make_private_dirs(path.parent)
            dbfiles.create_private_file(path)
        except OSError as exc:
            raise StoreError(
                f"{path}: cannot open SQLite database ({exc}); check the path"
            ) from exc
        problem = dbfiles.unwritable(path) if writer else None
        if problem:
            raise StoreFileError(problem)
        try:
            conn = sqlite3.connect(str(path), timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an acknowledged message survives power loss
        except sqlite3.Error as exc:
            raise StoreError(
                f"{path}: cannot open SQLite database ({exc}); check the path"
            ) from exc
        # Python-side binding errors: an integer over 64 bits, text that is not UTF-8
        refusals = (OverflowError, UnicodeEncodeError, sqlite3.DataError)
        super().__init__(conn, str(path), (sqlite3.Error,), refusals)
        self._path = path
        self._watch = dbfiles.FileWatch(path)

    def check(self) -> None:
        problem = self._watch.check()
        if problem is None:
            return
        if not self._watch.lost():
            raise StoreFileError(problem)
        try:
            saved = f"what it had committed is saved in {dbfiles.rescue(self._conn, self._path)}"
        except (OSError, sqlite3.Error) as exc:
            saved = f"saving what it had committed failed ({_first_line(exc)})"
        raise StoreFileError(f"{problem}; {saved}")


class PostgresStore(_SqlStore):
    """PostgreSQL through psycopg 3, for several loggers or a central server."""

    _types: ClassVar[dict[str, str]] = {
        "json": "JSONB",
        "blob": "BYTEA",
        "real": "DOUBLE PRECISION",
        "int64": "BIGINT",
        "serial": "BIGSERIAL PRIMARY KEY",
    }
    _jsonarg = "?::jsonb"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ModuleNotFoundError as exc:
            raise StoreError(
                "PostgreSQL URL given but psycopg is missing; pip install 'psycopg[binary]'"
            ) from exc
        try:
            conn = psycopg.connect(url, connect_timeout=10)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"{_redact(url)}: cannot connect to PostgreSQL ({first})") from exc
        # values PostgreSQL cannot hold (text with NUL, numbers out of range) abort only the
        # statement: the caller rolls back and rejects that one message
        refusals = (psycopg.DataError, UnicodeEncodeError)
        super().__init__(conn, _redact(url), (psycopg.Error,), refusals)

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def _migrate(self) -> None:
        """seq and frame_index were 32-bit INTEGER before; a device may count past 2**31."""
        narrow = self._execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = 'results' AND data_type = 'integer' "
            "AND column_name IN ('seq', 'frame_index')"
        ).fetchall()
        if narrow:
            self._execute(
                "ALTER TABLE results ALTER COLUMN seq TYPE BIGINT, "
                "ALTER COLUMN frame_index TYPE BIGINT"
            )


def _redact(url: str) -> str:
    """Drop a password from a URL before it reaches a log line."""
    return redact(url)


def open_store(db: str | Path, writer: bool = True) -> Store:
    """`postgresql://...` (or `postgres://`) opens PostgreSQL; anything else is a SQLite path.
    A `writer` (the logger) is refused a SQLite database whose files it cannot write."""
    text = str(db)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    return SqliteStore(Path(text), writer)
