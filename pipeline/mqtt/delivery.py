"""End-to-end delivery: the `stored` confirmations loggers publish, and the publisher's record of
results the broker has acknowledged that no logger has confirmed yet.

A broker's PUBACK only says the broker has a message; a broker that crashes before its next
autosave forgets it. So a logger, after committing a batch, publishes on
`<prefix>/<device>/<camera>/stored` (QoS 1, not retained) the seq ranges of each session that it
has committed (stored now, or found already stored), and whether the session's summary is among
them. The publisher keeps each result in its outbox until such a message covers its seq.

Re-sending (`ConfirmTracker.due`): a result the broker acknowledged is sent again when
- the connection it went out on has ended (the broker may have restarted and lost it), or
- a result of the same session sent after it has been confirmed (it fell into a gap), or
- no confirmation at all has arrived for `timeout_s` since it went out (a tail lost with a
  crash), after `timeout_s`, doubling with each re-send up to `MAX_RESEND_INTERVAL_S`.
At most `RESEND_WINDOW` re-sent results wait for their confirmation at once, oldest first: while
no logger is running, re-sends stay a trickle instead of flooding the broker's queue for it.
Loggers drop the duplicates by message_id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.mqtt.payload import schema_errors

SeqRange = tuple[int, int]  # inclusive
STORED_SCHEMA_VERSION = 1
RESEND_WINDOW = 200  # re-sent results waiting for their confirmation at once
MAX_RESEND_INTERVAL_S = 300.0
GAP_GRACE_S = 2.0  # a later result's confirmation this much newer marks an earlier one lost
MAX_RANGES_PER_MESSAGE = 1000


def to_ranges(seqs: Iterable[int]) -> list[SeqRange]:
    """Sorted inclusive ranges: [0, 1, 2, 5, 7, 8] -> [(0, 2), (5, 5), (7, 8)]."""
    out: list[SeqRange] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def format_ranges(ranges: Sequence[SeqRange]) -> str:
    """[(0, 2), (5, 5)] -> "0-2,5"."""
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def range_count(ranges: Sequence[SeqRange]) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def subtract_ranges(ranges: Sequence[SeqRange], minus: Sequence[SeqRange]) -> list[SeqRange]:
    """The numbers of `ranges` that are not in `minus`, as sorted inclusive ranges."""
    out: list[SeqRange] = []
    cuts = sorted(minus)
    for lo, hi in sorted(ranges):
        start = lo
        for c_lo, c_hi in cuts:
            if c_hi < start or c_lo > hi:
                continue
            if c_lo > start:
                out.append((start, c_lo - 1))
            start = max(start, c_hi + 1)
            if start > hi:
                break
        if start <= hi:
            out.append((start, hi))
    return out


# -- the `stored` message ---------------------------------------------------------------------


@dataclass(frozen=True)
class Kept:
    """One message a logger has committed (or found already stored) that its sender awaits."""

    device_id: str
    camera_id: str
    session_id: str
    seq: int | None  # None: the session's summary


@dataclass(frozen=True)
class Confirmation:
    """A parsed `stored` message."""

    camera_id: str
    session_id: str
    seq: tuple[SeqRange, ...]
    summary: bool


def stored_topic(prefix: str, device_id: str, camera_id: str) -> str:
    return f"{prefix}/{device_id}/{camera_id}/stored"


def stored_messages(kept: Iterable[Kept], logger_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(device, camera, payload) per session among `kept`, ranges split to bound each payload."""
    grouped: dict[tuple[str, str, str], tuple[list[int], list[bool]]] = {}
    for k in kept:
        seqs, summary = grouped.setdefault((k.device_id, k.camera_id, k.session_id), ([], []))
        if k.seq is None:
            summary.append(True)
        else:
            seqs.append(k.seq)
    out: list[tuple[str, str, dict[str, Any]]] = []
    for (device, camera, session), (seqs, summary) in grouped.items():
        ranges = to_ranges(seqs)
        chunks = [
            ranges[i : i + MAX_RANGES_PER_MESSAGE]
            for i in range(0, len(ranges), MAX_RANGES_PER_MESSAGE)
        ] or [[]]
        for i, chunk in enumerate(chunks):
            payload = {
                "schema": STORED_SCHEMA_VERSION,
                "device_id": device,
                "camera_id": camera,
                "session_id": session,
                "seq": [list(r) for r in chunk],
                "summary": bool(summary) and i == len(chunks) - 1,
                "logger": logger_id,
            }
            out.append((device, camera, payload))
    return out


def parse_stored(raw: bytes, device_id: str, camera_id: str) -> Confirmation | str:
    """The confirmation in a `stored` message for this device, or why it cannot be used."""
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not JSON ({exc})"
    errors = schema_errors(payload, "stored")
    if errors:
        return f"stored schema: {errors[0]}"
    if (payload["device_id"], payload["camera_id"]) != (device_id, camera_id):
        return "ids in the payload differ from the topic"
    ranges = tuple((int(lo), int(hi)) for lo, hi in payload["seq"] if lo <= hi)
    return Confirmation(camera_id, payload["session_id"], ranges, bool(payload["summary"]))


# -- the publisher's side -----------------------------------------------------------------------


@dataclass
class _Awaiting:
    session: str
    sent_mono: float  # when it last went out
    conn: int  # the connection it last went out on (-1: an earlier run)
    resends: int = 0


class ConfirmTracker:
    """Results the broker acknowledged, by outbox row id, until a logger confirms them.

    Owned by the publisher's client thread; no locking. Iteration follows the order rows were
    first acknowledged, so re-sends go oldest first.
    """

    def __init__(self, timeout_s: float, window: int = RESEND_WINDOW) -> None:
        if timeout_s <= 0 or window < 1:
            raise ValueError("confirm timeout must be > 0 and the re-send window >= 1")
        self.timeout_s = timeout_s
        self.window = window
        self._rows: dict[int, _Awaiting] = {}
        self._resending: set[int] = set()  # re-sent and waiting: at most `window`
        self._last_confirmation = -float("inf")
        self._confirmed_sent: dict[str, float] = {}  # session -> newest send time confirmed

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, row: int) -> bool:
        return row in self._rows

    def earlier_run(self, rows: Iterable[tuple[int, str]]) -> None:
        """Rows a previous run left acknowledged and unconfirmed: due on the first connection."""
        for row, session in rows:
            self._rows.setdefault(row, _Awaiting(session, -float("inf"), -1))

    def sent(self, row: int, session: str, conn: int, now: float) -> None:
        """The broker acknowledged `row` (first send or a re-send) sent on connection `conn`."""
        known = self._rows.get(row)
        if known is None:
            self._rows[row] = _Awaiting(session, now, conn)
        else:
            known.sent_mono, known.conn = now, conn

    def confirmed(self, rows: Iterable[int], now: float) -> None:
        self._last_confirmation = now
        for row in rows:
            known = self._rows.pop(row, None)
            self._resending.discard(row)
            if known is not None and known.sent_mono > self._confirmed_sent.get(
                known.session, -float("inf")
            ):
                self._confirmed_sent[known.session] = known.sent_mono

    def forget(self, rows: Iterable[int]) -> None:
        """Rows that left the outbox another way (retention, eviction)."""
        for row in rows:
            self._rows.pop(row, None)
            self._resending.discard(row)

    def due(self, now: float, conn: int, busy: set[int]) -> list[int]:
        """Rows to send again now, oldest first; `busy` rows are in flight already."""
        silent = now - self._last_confirmation >= self.timeout_s
        out: list[int] = []
        room = self.window - len(self._resending)
        for row in list(self._resending):
            if row not in busy and self._is_due(self._rows[row], now, conn, silent):
                out.append(row)
        if room <= 0:
            return sorted(out)
        for row, item in self._rows.items():
            if room <= 0:
                break
            if row in self._resending or row in busy:
                continue
            if item.conn == conn and now - item.sent_mono < min(self.timeout_s, GAP_GRACE_S):
                break  # later rows went out later still on this connection: none is due yet
            if self._is_due(item, now, conn, silent):
                out.append(row)
                room -= 1
        return sorted(out)

    def resent(self, rows: Iterable[int]) -> None:
        for row in rows:
            known = self._rows.get(row)
            if known is not None:
                known.resends += 1
                self._resending.add(row)

    def _is_due(self, item: _Awaiting, now: float, conn: int, silent: bool) -> bool:
        if item.conn != conn:
            return True
        waited = now - item.sent_mono
        if waited >= GAP_GRACE_S and self._confirmed_sent.get(item.session, -1.0) > item.sent_mono:
            return True
        interval = min(self.timeout_s * 2.0**item.resends, MAX_RESEND_INTERVAL_S)
        return silent and waited >= interval
