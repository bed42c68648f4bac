"""The publisher's client thread: the only code that calls paho's `publish`, `subscribe` and
`disconnect` (paho calls `on_publish` while holding its message lock, so callbacks only append
events here and never publish).

Each step it takes the events the callbacks appended (connect, disconnect, PUBACK, SUBACK,
`stored` messages), settles the outbox (group commit: see `Sender._settle`), sends what waits
(state, stats, outbox rows in id order, at most `INFLIGHT_WINDOW` unacknowledged), and re-sends
what the broker acknowledged but no logger confirmed (`ConfirmTracker`). paho keeps its
unacknowledged messages across reconnects of one process and sends them again itself, so on a
new connection every other unacknowledged row is offered again, never one row twice on one
connection.

`outbox.confirm`: `broker` deletes a row at its PUBACK; `logger` keeps it until a `stored`
message covers it; `auto` is `broker` until the first `stored` message reaches this outbox
(remembered in it), `logger` from then on. A PUBACK that refuses a message for good (the
broker's ACL) moves it to the outbox's `refused` table, counted, with the fix in one line.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Literal

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pipeline.config import MqttConfig
from pipeline.mqtt.client import Backoff, Client, new_properties
from pipeline.mqtt.delivery import ConfirmTracker, format_ranges, parse_stored, to_ranges
from pipeline.mqtt.inbound import Retained, RetainedStates, Subscriptions, answer_properties
from pipeline.mqtt.netloop import NetworkLoop, Wake
from pipeline.mqtt.outbox import MEMORY, Outbox, OutboxError, OutboxRow

log = logging.getLogger("pipeline.mqtt.publisher")

INFLIGHT_WINDOW = 100  # new outbox rows handed to paho and not yet acked
ACK_WAKE_INFLIGHT = INFLIGHT_WINDOW // 2  # from here on every PUBACK wakes the client thread
TICK_S = 0.2  # the client thread wakes at least this often (stop, flush deadlines)
RESEND_EVERY_S = 1.0  # how often the re-send check runs
EXPIRE_EVERY_S = 60.0  # how often the retention check runs (a scan of the outbox)
SETTLE_DELAY_S = TICK_S  # the longest acks wait for a `put` to commit them (group commit)
STOPPED_ACK_GRACE_S = 2.0  # wait for the `stopped` status ack even after a full flush timeout
LOGGER_SEEN = "logger_seen"  # outbox meta: a logger has confirmed deliveries (auto mode)
_JSON = "application/json"

ConfirmMode = Literal["auto", "broker", "logger"]


# -- events the paho callbacks append, and commands the producers queue -------------------------


@dataclass(frozen=True)
class Connected:
    session_present: bool


@dataclass(frozen=True)
class ConnectFailed:
    message: str
    fatal: bool


@dataclass(frozen=True)
class Disconnected:
    reason: str


@dataclass(frozen=True)
class Acked:
    mid: int
    failure: str | None  # a PUBACK reason line for a code >= 0x80, else None
    permanent: bool = False  # the broker will never accept this message as it is


@dataclass(frozen=True)
class Subscribed:
    failure: str | None
    mid: int = 0


@dataclass(frozen=True)
class StoredMessage:
    topic: str
    payload: bytes


State = Retained  # a retained state (`state`, or `exam` with a command's correlation)


@dataclass(frozen=True)
class Stats:
    payload: bytes


Event = Connected | ConnectFailed | Disconnected | Acked | Subscribed | StoredMessage


@dataclass(frozen=True)
class Topics:
    status: str
    stats: str
    stored_filter: str  # <prefix>/<device>/+/stored
    prefix: str  # <prefix>/<device>/


class Sender:
    """The client thread's state and steps. Producers and callbacks touch only `events`,
    `feed` and `wake`; the counters and error lines are read by any thread."""

    def __init__(
        self,
        client: Client,
        cfg: MqttConfig,
        outbox: Outbox,
        topics: Topics,
        confirm: ConfirmMode,
        confirm_timeout_s: float,
        retention_s: float,
        feed: queue.Queue[State | Stats],
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.outbox = outbox
        self.topics = topics
        self.feed = feed
        self.events: collections.deque[Event] = collections.deque()
        self.wake = Wake()
        self.net = NetworkLoop(client, self.wake, Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s))
        self.stopping = threading.Event()
        self.mode = confirm
        self.by_logger = confirm == "logger" or (
            confirm == "auto" and outbox.meta(LOGGER_SEEN) == "1"
        )
        self.retention_s = retention_s
        self.tracker = ConfirmTracker(confirm_timeout_s)
        if confirm == "broker" and outbox.release_acked():
            log.info("outbox.confirm broker: results the broker acknowledged count as delivered")
        self.tracker.earlier_run(outbox.unconfirmed())
        self.counts = collections.Counter[str]()
        self.connected = False  # set by the callbacks
        self.fatal_error: str | None = None
        self.last_error: str | None = None
        self.refusal: str | None = None  # the last permanent PUBACK refusal, with its fix
        self.flushed = False
        self.flush_timeout_s = 10.0
        self.expired: dict[str, list[int]] = {}

        self._online = False
        self._conn = 0  # connection generation
        self._cursor = 0  # highest unacked outbox row id handed to paho on this connection
        self._inflight: dict[int, tuple[int, str]] = {}  # paho mid -> (row id, session)
        self._inflight_rows: set[int] = set()
        self._sent_unmarked: list[int] = []
        self._status_mids: set[int] = set()
        self._retained = RetainedStates()  # state and exam messages waiting to be sent
        self.subscriptions: Subscriptions | None = None  # more topics, renewed on connect
        self._more_mid = -1  # the SUBSCRIBE of those topics on this connection
        self._props: dict[int | None, Properties] = {}
        self._logged_error: str | None = None
        self._next_resend = 0.0
        self._next_expiry = 0.0

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def wants_acks_now(self) -> bool:
        """Whether a PUBACK makes this thread take a step (`on_publish` asks). Acknowledgements
        wait for the group commit anyway, so they are taken at the next step (the next result, or
        TICK_S) unless the in-flight window fills, producers wait for room in the outbox, or
        the publisher is stopping: one wake-up per result instead of two."""
        return (
            len(self._inflight) >= ACK_WAKE_INFLIGHT
            or self.outbox.waiting_for_room
            or self.stopping.is_set()
            or bool(self._status_mids)
        )

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        try:
            next_step = 0.0
            while not self.stopping.is_set():
                self.net.pump(max(next_step - time.monotonic(), 0.0))
                now = time.monotonic()
                if self.wake.is_set() or now >= next_step:
                    self.wake.clear()
                    self.step()
                    next_step = now + TICK_S
            self.flush(self.flush_timeout_s)
        except OutboxError as exc:
            self.fatal_error = self.last_error = str(exc)
            log.error("%s", exc)
        except Exception:
            log.exception("MQTT client thread failed; undelivered results stay in the outbox")
            raise
        finally:
            self.shutdown()

    def step(self) -> None:
        now = time.monotonic()
        conn = self._conn
        acked = self._handle_events(now)
        self._settle([r for r, _ in acked], at_once=self._conn != conn)
        if self.by_logger:
            for row, session in acked:
                self.tracker.sent(row, session, self._conn, now)
        self._handle_commands()
        if self._online:
            self._send_states()
            self._send_rows()
        if now >= self._next_resend and self._online and self.by_logger:
            self._next_resend = now + RESEND_EVERY_S
            self._resend_due(now)
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY_S
            self._expire()

    def _settle(self, acked: list[int], at_once: bool) -> None:
        """Acks and the attempts of the previous step's sends, by group commit: they ride in
        the next `put`'s transaction. Committed now when rows are read again from the file (a
        new connection restarts the cursor), when stopping, when producers may wait for room,
        or when they have waited SETTLE_DELAY_S for a `put`. A crash before the commit sends
        those rows again, as a crash between a PUBACK and its commit always did."""
        age = self.outbox.deferred_age_s()
        if (
            at_once
            or self.stopping.is_set()
            or self.outbox.waiting_for_room
            or (age is not None and age >= SETTLE_DELAY_S)
        ):
            self.outbox.settle(acked, self._sent_unmarked, keep_acked=self.by_logger)
        else:
            self.outbox.defer_settle(acked, self._sent_unmarked, keep_acked=self.by_logger)
        self._sent_unmarked = []

    # -- events ----------------------------------------------------------------------------

    def _handle_events(self, now: float) -> list[tuple[int, str]]:
        acked: list[tuple[int, str]] = []
        while self.events:
            event = self.events.popleft()
            if isinstance(event, Acked):
                self._handle_ack(event, acked)
            elif isinstance(event, StoredMessage):
                self._handle_stored(event, acked, now)
            elif isinstance(event, Connected):
                self._handle_connected()
            elif isinstance(event, ConnectFailed):
                self.record_error(event.message, event.fatal)
            elif isinstance(event, Subscribed):
                if event.failure is not None and event.mid == self._more_mid:
                    self.record_error(
                        f"the broker refused a subscription to {self.subscriptions} "
                        f"({event.failure}): exam commands cannot arrive; the broker's ACL must "
                        "let a device read its <camera>/exam/set (config/mosquitto/acl)",
                        False,
                    )
                elif event.failure is not None:
                    self.record_error(
                        f"the broker refused the subscription to {self.topics.stored_filter} "
                        f"({event.failure}): no logger confirmation can arrive; the broker's ACL "
                        "must let a device read its own `stored` topic (config/mosquitto/acl)",
                        False,
                    )
            else:
                # After a refused CONNACK paho reports a disconnect too; keep the refusal as
                # the error, it names the fix.
                if self._online and not self.stopping.is_set():
                    self.record_error(f"connection to the broker lost ({event.reason})", False)
                self._online = False
        return acked

    def _handle_ack(self, event: Acked, acked: list[tuple[int, str]]) -> None:
        self._status_mids.discard(event.mid)
        entry = self._inflight.pop(event.mid, None)
        if entry is None:
            return  # state, status, or a row already confirmed or dropped
        row, session = entry
        self._inflight_rows.discard(row)
        if event.failure is None:
            self.counts["acked"] += 1
            acked.append((row, session))
        elif event.permanent:
            self.counts["refused"] += self.outbox.refuse([row], event.failure)
            self.refusal = event.failure
            self.record_error(event.failure, False)
        else:  # quota, server trouble: offered again on the next connection
            self.counts["rejected"] += 1
            self.record_error(f"{event.failure} (offered again)", False)

    def _handle_stored(
        self, event: StoredMessage, acked: list[tuple[int, str]], now: float
    ) -> None:
        camera = event.topic[len(self.topics.prefix) :].split("/", 1)[0]
        conf = parse_stored(event.payload, self.topics.prefix.split("/")[-2], camera)
        if isinstance(conf, str):
            log.warning("ignoring a `stored` message on %s: %s", event.topic, conf)
            return
        if not self.by_logger:
            if self.mode == "broker":
                return
            self.by_logger = True
            self.outbox.set_meta(LOGGER_SEEN, "1")
            log.info(
                "a logger confirms deliveries (outbox.confirm auto): results now stay in the "
                "outbox until a logger's confirmation"
            )
        gone = set(self.outbox.confirm(conf.camera_id, conf.session_id, conf.seq, conf.summary))
        if not gone:
            return
        self.counts["confirmed"] += len(gone)
        self.tracker.confirmed(gone, now)
        acked[:] = [(r, s) for r, s in acked if r not in gone]
        for mid in [m for m, (r, _) in self._inflight.items() if r in gone]:
            del self._inflight[mid]  # its PUBACK, when it comes, finds nothing to settle
        self._inflight_rows -= gone

    def _handle_connected(self) -> None:
        self._online = True
        self.net.connected()
        self._conn += 1
        self.fatal_error = None
        self._logged_error = None
        self.counts["connects"] += 1
        # paho sends its own unacknowledged messages again after CONNACK (same process).
        self.counts["resent"] += len(self._inflight)
        self._cursor = 0  # offer every other unacknowledged row again on this connection
        log.info("connected to MQTT broker %s:%d", self.cfg.host, self.cfg.port)
        if self.mode != "broker":  # subscribe before publishing: confirmations of this
            self.client.subscribe(self.topics.stored_filter, qos=1)  # connection's sends
        if self.subscriptions is not None:
            self._more_mid = self.subscriptions.renew(self.client)  # a clean start forgets them
        info = self.client.publish(self.topics.status, "online", qos=1, retain=True)
        self._status_mids.add(info.mid)

    def record_error(self, message: str, fatal: bool) -> None:
        self.last_error = message
        if fatal:
            self.fatal_error = message
        if message != self._logged_error:  # one line per distinct cause, not one per retry
            log.warning("MQTT: %s", message)
            self._logged_error = message
        else:
            log.debug("MQTT: %s", message)

    # -- sending ---------------------------------------------------------------------------

    def _handle_commands(self) -> None:
        while True:
            try:
                command = self.feed.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, State):
                self._retained.offer(command)
            elif self._online:
                self.client.publish(self.topics.stats, command.payload, qos=0, retain=False)
            else:
                self.counts["stats_dropped"] += 1

    def _send_states(self) -> None:
        for item in self._retained.take():
            c = item.correlation  # an answer to a command carries the command's correlation
            props = self._properties(None) if c is None else answer_properties(c)
            topic = f"{self.topics.prefix}{item.camera_id}/{item.kind}"
            self.client.publish(topic, item.payload, qos=1, retain=True, properties=props)

    def _send_rows(self) -> None:
        room = INFLIGHT_WINDOW - len(self._inflight)
        if room <= 0:
            return
        sent: list[int] = []
        for row in self.outbox.rows_after(self._cursor, room + len(self._inflight_rows)):
            if len(self._inflight) >= INFLIGHT_WINDOW:
                break
            self._cursor = row.id
            if row.id in self._inflight_rows:
                continue  # paho already holds it and re-sends it itself
            if not self._publish(row):
                break
            sent.append(row.id)
        self._sent_unmarked.extend(sent)

    def _resend_due(self, now: float) -> None:
        """Rows the broker acknowledged and no logger confirmed in time go out again."""
        due = self.tracker.due(now, self._conn, self._inflight_rows)
        rows = self.outbox.rows(due)
        self.tracker.forget(set(due) - {r.id for r in rows})  # dropped or expired meanwhile
        sent = [r.id for r in rows if self._publish(r)]
        self.tracker.resent(sent)
        self._sent_unmarked.extend(sent)

    def _publish(self, row: OutboxRow) -> bool:
        info = self.client.publish(
            row.topic,
            row.payload,
            qos=row.qos,
            retain=row.retain,
            properties=self._properties(row.expiry_s),
        )
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.record_error(f"publish of outbox row {row.id} failed ({info.rc.name})", False)
            return False
        # NO_CONN: paho keeps the message and sends it after the next CONNACK.
        self._inflight[info.mid] = (row.id, row.session or "")
        self._inflight_rows.add(row.id)
        self.counts["published"] += 1
        if row.attempts or row.acked:
            self.counts["resent"] += 1
        return True

    def _properties(self, expiry_s: int | None) -> Properties:
        """PUBLISH properties, built once per expiry and shared (paho only reads them)."""
        props = self._props.get(expiry_s)
        if props is None:
            props = new_properties(PacketTypes.PUBLISH)
            props.ContentType = _JSON
            props.PayloadFormatIndicator = 1  # UTF-8
            if expiry_s is not None:
                # The full interval on every send: it bounds how long the broker queues a result
                # for an offline logger; time spent in our outbox is not the broker's queue.
                props.MessageExpiryInterval = expiry_s
            self._props[expiry_s] = props
        return props

    def _expire(self) -> None:
        """Acknowledged results no logger confirmed within `retention_s` leave, counted."""
        gone = self.outbox.expire(time.time() - self.retention_s)
        if not gone:
            return
        self.tracker.forget(r for r, _, _ in gone)
        self.counts["expired"] += len(gone)
        for _, session, seq in gone:
            if seq is not None:
                self.expired.setdefault(session, []).append(seq)
        log.warning(
            "%d results acknowledged by the broker were never confirmed by a logger within "
            "outbox.retention_s (%.0f s) and leave the outbox unconfirmed: %s",
            len(gone),
            self.retention_s,
            "; ".join(
                f"session {s} seq {format_ranges(to_ranges(q))}" for s, q in self.expired.items()
            ),
        )

    # -- the end ---------------------------------------------------------------------------

    def done(self) -> bool:
        return self.outbox.pending == 0 and self.feed.empty() and not self._retained

    def flush(self, timeout_s: float) -> None:
        """Until the deadline: keep sending, acking and confirming, then say `stopped`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.step()
            if self.done():
                break
            self.net.pump(min(TICK_S, max(deadline - time.monotonic(), 0.0)))
            self.wake.clear()
        self.flushed = self.outbox.pending == 0
        if not self.flushed:
            unconfirmed = self.outbox.acked_unconfirmed
            log.warning(
                "stopping with %d undelivered messages in the outbox %s (%d not acknowledged by "
                "the broker, %d not confirmed by a logger); they are sent at the next start",
                self.outbox.pending,
                self.outbox.path if self.outbox.path != MEMORY else "(in memory: lost)",
                self.outbox.pending - unconfirmed,
                unconfirmed,
            )
        if self._online:
            self._say_stopped(max(deadline - time.monotonic(), 0.0) + STOPPED_ACK_GRACE_S)

    def _say_stopped(self, timeout_s: float) -> None:
        info = self.client.publish(self.topics.status, "stopped", qos=1, retain=True)
        self._status_mids.add(info.mid)
        deadline = time.monotonic() + timeout_s
        while info.mid in self._status_mids and self._online and time.monotonic() < deadline:
            self.net.pump(min(TICK_S, max(deadline - time.monotonic(), 0.0)))
            self.wake.clear()
            acked = self._handle_events(time.monotonic())
            self.outbox.settle([r for r, _ in acked], (), keep_acked=self.by_logger)
        if info.mid in self._status_mids:
            log.warning("the broker did not acknowledge the `stopped` status")

    def shutdown(self) -> None:
        try:
            self.outbox.settle((), self._sent_unmarked)
        except OutboxError as exc:
            log.error("%s", exc)
        self.client.disconnect()  # written at once: this thread runs the network loop
        self.connected = False
        self._online = False
        self.outbox.close()
        self.wake.close()
