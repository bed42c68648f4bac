"""The logger's exam tables: every state an exam went through, and its final summary.

`exam_states` keeps the first message of each (exam, state, view) a device published on its
retained `exam` topic: when the exam started, became ready (and how: drift, time, override),
which views were captured, when it closed or aborted. The retained topic repeats while an exam
is open (its timer and counts move); those repeats are not state changes and are not kept.
`exams` keeps the `exam/summary` record (the exam without images) with the columns reports
filter and sort on. Both tables are shared by SQLite and PostgreSQL (`pipeline.logger.store`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

EXAM_DDL = (
    """CREATE TABLE IF NOT EXISTS exam_states (
        device TEXT NOT NULL,
        camera TEXT NOT NULL,
        exam_id TEXT NOT NULL,
        state TEXT NOT NULL,
        view TEXT NOT NULL,
        updated TEXT NOT NULL,
        payload {json} NOT NULL,
        received_ts {real} NOT NULL,
        PRIMARY KEY (device, camera, exam_id, state, view))""",
    """CREATE TABLE IF NOT EXISTS exams (
        device TEXT NOT NULL,
        camera TEXT NOT NULL,
        exam_id TEXT NOT NULL,
        state TEXT NOT NULL,
        started TEXT NOT NULL,
        ended TEXT,
        verdict TEXT,
        score {real},
        threshold {real},
        synthetic_model INTEGER NOT NULL,
        payload {json} NOT NULL,
        received_ts {real} NOT NULL,
        PRIMARY KEY (device, camera, exam_id))""",
    "CREATE INDEX IF NOT EXISTS exams_by_start ON exams (started)",
)
_INSERT_STATE = (
    "INSERT INTO exam_states (device, camera, exam_id, state, view, updated, payload, "
    "received_ts) VALUES (?, ?, ?, ?, ?, ?, {jsonarg}, ?) "
    "ON CONFLICT (device, camera, exam_id, state, view) DO NOTHING"
)
_UPSERT_EXAM = (
    "INSERT INTO exams (device, camera, exam_id, state, started, ended, verdict, score, "
    "threshold, synthetic_model, payload, received_ts) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {jsonarg}, ?) "
    "ON CONFLICT (device, camera, exam_id) DO UPDATE SET state = excluded.state, "
    "started = excluded.started, ended = excluded.ended, verdict = excluded.verdict, "
    "score = excluded.score, threshold = excluded.threshold, "
    "synthetic_model = excluded.synthetic_model, payload = excluded.payload, "
    "received_ts = excluded.received_ts"
)
_EXAM_COLUMNS = (
    "device, camera, exam_id, state, started, ended, verdict, score, threshold, "
    "synthetic_model, payload"
)


@dataclass(frozen=True)
class ExamRow:
    """One finished exam as its device summarised it (`payload`: the record, no images)."""

    device: str
    camera: str
    exam_id: str
    state: str  # closed | aborted
    started: str
    ended: str | None
    verdict: str | None  # the exam verdict's label; None when aborted or no accepted frame
    score: float | None  # mean positive-class probability over accepted frames
    threshold: float | None
    synthetic_model: bool
    payload: dict[str, Any]


@dataclass(frozen=True)
class ExamStateRow:
    """The first message of one (exam, state, view)."""

    device: str
    camera: str
    exam_id: str
    state: str
    view: str  # "" when the state has no view
    updated: str
    payload: dict[str, Any]


class ExamTables:
    """The exam half of a SQL store; mixed into `pipeline.logger.store._SqlStore`."""

    _jsonarg: str

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def _load_json(self, value: Any) -> Any:
        raise NotImplementedError

    def add_exam_state(
        self, device: str, camera: str, payload: dict[str, Any], received_ts: float
    ) -> bool:
        """Keep a schema-valid `exam` message when it is a new state (or view) of its exam;
        False for a repeat or a camera without an exam."""
        if payload.get("exam_id") is None:
            return False
        sql = _INSERT_STATE.format(jsonarg=self._jsonarg)
        params = (
            device,
            camera,
            payload["exam_id"],
            payload["state"],
            payload.get("view") or "",
            payload["updated"],
            _dump(payload),
            received_ts,
        )
        return bool(self._execute(sql, params).rowcount == 1)

    def add_exam_summary(
        self, device: str, camera: str, payload: dict[str, Any], received_ts: float
    ) -> None:
        """Keep a schema-valid `exam/summary` (a later one for the same exam replaces it)."""
        verdict = payload.get("verdict") or {}
        params = (
            device,
            camera,
            payload["exam_id"],
            payload["state"],
            payload["started"],
            payload.get("ended"),
            verdict.get("label"),
            verdict.get("score"),
            verdict.get("threshold"),
            int(bool(payload.get("synthetic_model"))),
            _dump(payload),
            received_ts,
        )
        self._execute(_UPSERT_EXAM.format(jsonarg=self._jsonarg), params)

    def exams(
        self,
        since: str | None = None,
        device: str | None = None,
        camera: str | None = None,
        exam_id: str | None = None,
    ) -> list[ExamRow]:
        """Finished exams, oldest first; `since` compares RFC 3339 UTC start times as text."""
        where, params = [], []
        for column, value, op in (
            ("started", since, ">="),
            ("device", device, "="),
            ("camera", camera, "="),
            ("exam_id", exam_id, "="),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        cur = self._execute(
            f"SELECT {_EXAM_COLUMNS} FROM exams{clause} ORDER BY started, device, exam_id",
            params,
        )
        return [_exam_row(r, self._load_json(r[10])) for r in cur.fetchall()]

    def exam_states(self, device: str, exam_id: str) -> list[ExamStateRow]:
        """Every kept state change of one exam, in the order the device stamped them (ties:
        the order they arrived)."""
        cur = self._execute(
            "SELECT device, camera, exam_id, state, view, updated, payload FROM exam_states "
            "WHERE device = ? AND exam_id = ? ORDER BY updated, received_ts",
            (device, exam_id),
        )
        return [
            ExamStateRow(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                str(r[5]),
                self._load_json(r[6]),
            )
            for r in cur.fetchall()
        ]


def _exam_row(r: Sequence[Any], payload: dict[str, Any]) -> ExamRow:
    return ExamRow(
        device=str(r[0]),
        camera=str(r[1]),
        exam_id=str(r[2]),
        state=str(r[3]),
        started=str(r[4]),
        ended=None if r[5] is None else str(r[5]),
        verdict=None if r[6] is None else str(r[6]),
        score=None if r[7] is None else float(r[7]),
        threshold=None if r[8] is None else float(r[8]),
        synthetic_model=bool(r[9]),
        payload=payload,
    )


def _dump(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
