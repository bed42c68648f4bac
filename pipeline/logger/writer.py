"""The logger's write path: each message is stored, or kept as a reject, in one transaction.

Counting and storing live here, apart from the MQTT loop, so that the whole path from raw bytes
to a committed row can be exercised (and fuzzed) without a broker. The loop acknowledges a
batch only after `store_batch` has committed it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from pipeline.logger.store import Store, StoreRefused
from pipeline.logger.validate import Accepted, Reject, classify
from pipeline.mqtt.delivery import Kept

log = logging.getLogger("thermoscreen.logger")


@dataclass(frozen=True)
class Limits:
    """What the write path needs to know besides the message: the topic prefix and sizes."""

    prefix: str = "thermoscreen"
    max_payload_bytes: int = 64 * 1024
    reject_keep_bytes: int = 4096  # raw bytes kept of a reject (its full size is recorded)


@dataclass
class Counters:
    stored: int = 0
    duplicates: int = 0
    rejects: int = 0
    states: int = 0
    sessions: int = 0
    statuses: int = 0
    exams: int = 0  # exam state changes and summaries kept
    ignored: int = 0

    def line(self) -> str:
        return (
            f"stored={self.stored} duplicates={self.duplicates} rejects={self.rejects} "
            f"states={self.states} sessions={self.sessions} statuses={self.statuses} "
            f"exams={self.exams} ignored={self.ignored}"
        )

    @property
    def handled(self) -> int:
        return (
            self.stored + self.duplicates + self.rejects + self.states + self.sessions
            + self.statuses + self.exams + self.ignored
        )  # fmt: skip


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # which connection delivered it: acks go only to that connection
    received_ts: float


def store_message(
    store: Store,
    msg: Incoming,
    limits: Limits,
    counters: Counters,
    refused: str | None = None,
    kept: list[Kept] | None = None,
) -> None:
    """Write one message (or its reject) into the open transaction and count it.

    `refused` is the reason the database gave for this message's values on an earlier try of
    its batch: the message then goes to `rejects` with it. Results and session summaries that
    are now stored (or were before) are appended to `kept`: their senders wait for that
    confirmation. Raises StoreRefused when the engine refuses the values now, StoreError when
    the database itself fails.
    """
    outcome = (
        Reject(refused)
        if refused
        else classify(msg.topic, msg.payload, limits.prefix, limits.max_payload_bytes)
    )
    if isinstance(outcome, Accepted) and outcome.kind == "result":
        added = store.add_result(outcome.payload, msg.received_ts)
        if added == "conflict":
            outcome = Reject(
                f"conflict: message_id {outcome.payload['message_id']} was stored before "
                "with different content"
            )
        else:
            if added == "stored":
                counters.stored += 1
            else:
                counters.duplicates += 1
            if kept is not None:
                kept.append(_kept(outcome.payload, outcome.payload["seq"]))
            return
    if isinstance(outcome, Reject):
        raw = msg.payload[: limits.reject_keep_bytes]
        # the raw bytes are kept whole unless oversized; size_bytes records the original length
        store.add_reject(msg.topic, raw, len(msg.payload), outcome.reason, msg.received_ts)
        counters.rejects += 1
        log.warning("reject %s (%d bytes): %s", msg.topic, len(msg.payload), outcome.reason)
        return
    _store_other(store, outcome, msg.received_ts, counters)
    if kept is not None and outcome.kind == "session":
        kept.append(_kept(outcome.payload, None))


def _kept(payload: dict[str, Any], seq: int | None) -> Kept:
    return Kept(payload["device_id"], payload["camera_id"], payload["session_id"], seq)


def _store_other(store: Store, message: Accepted, received_ts: float, counters: Counters) -> None:
    ids, payload = message.ids, message.payload
    if message.kind == "state":
        store.set_state(ids[0], ids[1], payload, received_ts)
        counters.states += 1
    elif message.kind == "session":
        store.add_session(ids[0], ids[1], payload["session_id"], payload, received_ts)
        counters.sessions += 1
    elif message.kind == "status":
        store.set_status(ids[0], payload, received_ts)
        counters.statuses += 1
    elif message.kind == "exam-summary":
        store.add_exam_summary(ids[0], ids[1], payload, received_ts)
        counters.exams += 1
    elif message.kind == "exam" and store.add_exam_state(ids[0], ids[1], payload, received_ts):
        counters.exams += 1
    else:
        counters.ignored += 1  # stats, confirmations, exam commands, a repeated exam state


def store_batch(
    store: Store,
    batch: list[Incoming],
    limits: Limits,
    counters: Counters,
    kept: list[Kept] | None = None,
) -> Counters:
    """Store a batch in one transaction and commit it; returns the counters after it (and
    fills `kept` with what the committed batch holds for its senders' confirmation).

    When the engine refuses one message's values (PostgreSQL aborts the whole transaction),
    the batch is rolled back and written again with that message as a reject, so one hostile
    message never blocks the others. Raises StoreError when the database itself fails.
    """
    refused: dict[int, str] = {}
    while True:
        after = replace(counters)
        index = 0
        if kept is not None:
            kept.clear()  # a retried batch collects again
        try:
            for index, msg in enumerate(batch):
                store_message(store, msg, limits, after, refused.get(index), kept)
            store.commit()
            return after
        except StoreRefused as exc:
            if index in refused:  # even its reject was refused: the database is at fault
                raise
            refused[index] = str(exc)
            store.rollback()
