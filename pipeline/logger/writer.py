"""The logger's write path: each message is stored, or kept as a reject, in one transaction.

Counting and storing live here, apart from the MQTT loop, so that the whole path from raw bytes
to a committed row can be exercised (and fuzzed) without a broker. The loop acknowledges a
batch only after `store_batch` has committed it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from pipeline.logger.store import Store, StoreRefused
from pipeline.logger.validate import Accepted, Reject, classify

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
) -> None:
    """Write one message (or its reject) into the open transaction and count it.

    `refused` is the reason the database gave for this message's values on an earlier try of
    its batch: the message then goes to `rejects` with it. Raises StoreRefused when the engine
    refuses the values now, StoreError when the database itself fails.
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
        elif added == "stored":
            counters.stored += 1
            return
        else:
            counters.duplicates += 1
            return
    if isinstance(outcome, Reject):
        raw = msg.payload[: limits.reject_keep_bytes]
        # the raw bytes are kept whole unless oversized; size_bytes records the original length
        store.add_reject(msg.topic, raw, len(msg.payload), outcome.reason, msg.received_ts)
        counters.rejects += 1
        log.warning("reject %s (%d bytes): %s", msg.topic, len(msg.payload), outcome.reason)
        return
    _store_other(store, outcome, msg.received_ts, counters)


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
        counters.ignored += 1  # stats, exam commands, an exam state that did not change


def store_batch(
    store: Store, batch: list[Incoming], limits: Limits, counters: Counters
) -> Counters:
    """Store a batch in one transaction and commit it; returns the counters after it.

    When the engine refuses one message's values (PostgreSQL aborts the whole transaction),
    the batch is rolled back and written again with that message as a reject, so one hostile
    message never blocks the others. Raises StoreError when the database itself fails.
    """
    refused: dict[int, str] = {}
    while True:
        after = replace(counters)
        index = 0
        try:
            for index, msg in enumerate(batch):
                store_message(store, msg, limits, after, refused.get(index))
            store.commit()
            return after
        except StoreRefused as exc:
            if index in refused:  # even its reject was refused: the database is at fault
                raise
            refused[index] = str(exc)
            store.rollback()
