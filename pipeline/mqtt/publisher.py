"""MQTT publisher: one thread owns the paho client; results go through a durable outbox.

Topics (DESIGN.md "MQTT contract"), under `<prefix>/<device>`:
  status                 QoS 1 retained: `online` on every connect, `stopped` on clean exit,
                         `offline` as Last Will
  <camera>/result        QoS 1, message expiry `result_expiry_s`, one per classified frame
  <camera>/state         QoS 1 retained, the rolling session verdict (newest wins)
  <camera>/session       QoS 1, the final session summary (durable, like results)
  <camera>/exam          QoS 1 retained, the exam's state; exam/summary: a finished exam (durable)
  stats                  QoS 0, dropped while offline

Threads. paho's own network thread (`loop_start`) does the socket work, keepalive and reconnect
backoff; `connect_async` makes `start()` return at once even with the broker down. Our client
thread (`mqtt-publisher`) is the only caller of `publish`/`disconnect`: it is fed by the outbox
(results, sessions), a bounded queue (state, stats) and the events that paho callbacks append
(connect, disconnect, PUBACK). Callbacks never publish and never block: paho calls `on_publish`
while holding its message lock, which a blocked callback would deadlock against our thread.

Delivery. A result is committed to the outbox before `publish_result` returns. The client thread
hands outbox rows to paho in id order while connected, at most `INFLIGHT_WINDOW` at a time, maps
each paho mid to its row, and deletes rows (in batches) when their PUBACK arrives. paho keeps its
unacknowledged messages across reconnects of the same process and sends them again itself, so on
a new connection we re-send every other outbox row (from an earlier run, or refused by the
broker) but not those, and never one row twice on one connection. Everything still in the
outbox at the next start is sent first. Subscribers drop duplicates by `message_id`.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pipeline.config import MqttConfig, OutboxConfig
from pipeline.mqtt import inbound
from pipeline.mqtt.client import (
    Will,
    check_id,
    closed_before_connack,
    connack_refusal,
    connect_properties,
    default_client_id,
    describe_connect_error,
    make_client,
    new_properties,
)
from pipeline.mqtt.outbox import MEMORY, Outbox, OutboxClosed
from pipeline.mqtt.payload import encode, result_payload, schema_errors
from pipeline.types import FrameResult, ModelInfo

log = logging.getLogger(__name__)

INFLIGHT_WINDOW = 100  # outbox rows handed to paho and not yet acked
FEED_QUEUE_SIZE = 1000  # state and stats commands waiting for the client thread
_PAHO_INFLIGHT = INFLIGHT_WINDOW + 50  # room for status and state messages beside the rows
_TICK_S = 0.2  # the client thread wakes at least this often (stop, flush deadlines)
_STOPPED_ACK_GRACE_S = 2.0  # wait for the `stopped` status ack even after a full flush timeout

_JSON = "application/json"
CLOSED_EARLY_FATAL = 3  # connections in a row closed before a CONNACK: a fatal error with the fix


@dataclass(frozen=True)
class PublisherStats:
    """A snapshot of the publisher's counters (the `outbox` part of the `stats` message)."""

    connected: bool  # the broker has acknowledged the current connection
    published: int  # outbox rows handed to the client, re-sends included
    acked: int  # rows the broker acknowledged (PUBACK) and the outbox deleted
    pending: int  # rows in the outbox not yet acknowledged (sent on the next start if left)
    inflight: int  # rows handed to paho and not yet acknowledged
    dropped_full: int  # rows the full outbox dropped (live `drop_oldest` policy)
    resent: int  # rows sent again after a reconnect or from an earlier run
    rejected: int  # PUBACKs with a failure reason code (kept and offered again)
    connects: int  # successful connections
    reconnects: int  # connections after the first
    queue_depth: int  # state and stats commands waiting for the client thread
    dropped_queue: int  # state and stats commands dropped because that queue was full
    stats_dropped: int  # stats messages dropped while offline (QoS 0)
    last_error: str | None  # the last connection or delivery problem, one line with the fix
    fatal_error: str | None  # set while the last connect failed in a way retrying cannot fix


class PublisherStopped(RuntimeError):
    """A message was offered after `stop()` (or while waiting for room in a full outbox)."""


# -- events the paho callbacks append for the client thread -------------------------------------


@dataclass(frozen=True)
class _Connected:
    session_present: bool


@dataclass(frozen=True)
class _ConnectFailed:
    message: str
    fatal: bool


@dataclass(frozen=True)
class _Disconnected:
    reason: str


@dataclass(frozen=True)
class _Acked:
    mid: int
    failure: str | None  # a PUBACK reason code >= 0x80, else None


@dataclass(frozen=True)
class _Stats:
    payload: bytes


_Event = _Connected | _ConnectFailed | _Disconnected | _Acked


class Publisher:
    """Publishes results, session state, summaries and stats for one device.

    Results and session summaries are durable (outbox); state is coalesced per camera (newest
    wins) and sent when connected; stats are QoS 0 and dropped while offline. `outbox=None` keeps
    the outbox in memory (same bound and policy, lost on a crash).
    """

    def __init__(
        self, mqtt: MqttConfig, device_id: str, outbox: OutboxConfig | None = None
    ) -> None:
        self.device_id = check_id("device_id", device_id)
        self._cfg = mqtt
        self._status_topic = self.topic("status")
        self._stats_topic = self.topic("stats")
        self._client = make_client(
            mqtt,
            mqtt.client_id or default_client_id(self.device_id),
            will=Will(self._status_topic, "offline"),
            max_inflight=_PAHO_INFLIGHT,
        )
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._subscriptions = inbound.Subscriptions()
        self._client.on_message = self._subscriptions.on_message

        ocfg = outbox if outbox is not None else OutboxConfig(enabled=False)
        path = ocfg.path if ocfg.enabled else MEMORY
        self._outbox = Outbox(path, ocfg.max_messages, ocfg.when_full, ocfg.synchronous)

        self._feed: queue.Queue[inbound.Retained | _Stats] = queue.Queue(maxsize=FEED_QUEUE_SIZE)
        self._events: collections.deque[_Event] = collections.deque()  # bounded by the window
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._flush_timeout_s = 10.0
        self._flushed = False
        self._validated_sessions: collections.OrderedDict[tuple[str, str], None] = (
            collections.OrderedDict()
        )

        # Owned by the client thread.
        self._online = False  # the client thread has seen the connect event
        self._cursor = 0  # highest outbox row id handed to paho on this connection
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._inflight_rows: set[int] = set()
        self._sent_unmarked: list[int] = []  # attempts recorded with the next step's acks
        self._status_mids: set[int] = set()
        self._retained = inbound.RetainedStates()
        self._props: dict[int | None, Properties] = {}
        self._logged_error: str | None = None
        self._closed_early = 0  # paho's thread: connections in a row closed before a CONNACK

        # Read by any thread (single assignments under the GIL).
        self._connected = False
        self._fatal_error: str | None = None
        self._last_error: str | None = None
        self._counts = collections.Counter[str]()

    # -- set-up --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting and publishing; returns at once, also when the broker is down."""
        if self._thread is not None or self._stopped:
            raise RuntimeError("Publisher.start() called twice; create a new Publisher")
        c = self._cfg
        self._client.connect_async(
            c.host,
            c.port,
            keepalive=c.keepalive_s,
            clean_start=True,
            properties=connect_properties(0),
        )
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()
        if self._outbox.pending:
            log.info("re-sending %d unacknowledged messages from the outbox", self._outbox.pending)

    # -- producers (any thread) ---------------------------------------------------------------

    def topic(self, *parts: str) -> str:
        """`<prefix>/<device>/<parts...>`; a part with + # / or empty raises ValueError."""
        for part in parts:
            if not part or any(c in part for c in "+#/\0"):
                raise ValueError(f"topic level {part!r}: must be non-empty, without + # / or NUL")
        return "/".join((self._cfg.topic_prefix, self.device_id, *parts))

    def publish_result(self, result: FrameResult, model: ModelInfo) -> str:
        """Commit one result to the outbox and queue it for sending; returns its message_id.

        Blocks while the outbox is full when outbox.when_full is "block"; raises
        PublisherStopped once `stop()` has begun.
        """
        topic = self.topic(check_id("camera_id", result.camera_id), "result")
        payload = result_payload(result, self.device_id, model)
        self._check_schema(result, payload)
        self._put(topic, encode(payload), expiry_s=self._cfg.result_expiry_s, droppable=True)
        return str(payload["message_id"])

    def _check_schema(self, result: FrameResult, payload: dict[str, Any]) -> None:
        """Full JSON Schema validation costs ~0.4 ms a message, so it runs on the first result of
        each session (and on every result with DEBUG logging); ids are checked on every one."""
        key = (result.camera_id, result.session_id)
        if key in self._validated_sessions and not log.isEnabledFor(logging.DEBUG):
            return
        errors = schema_errors(payload)
        if errors:
            raise ValueError(
                f"result of camera {result.camera_id} breaks result.schema.json: {errors[0]}"
            )
        self._validated_sessions[key] = None
        while len(self._validated_sessions) > 64:
            self._validated_sessions.popitem(last=False)

    def publish_session(self, camera_id: str, payload: dict[str, Any]) -> None:
        """The final summary of a session: QoS 1, durable like results, never dropped for room."""
        topic = self.topic(check_id("camera_id", camera_id), "session")
        self._put(topic, encode(payload), expiry_s=None, droppable=False)

    def _put(self, topic: str, data: bytes, expiry_s: int | None, droppable: bool) -> None:
        if self._stopped:
            raise PublisherStopped("the publisher is stopped: no more messages are accepted")
        try:
            self._outbox.put(topic, data, qos=1, expiry_s=expiry_s, droppable=droppable)
        except OutboxClosed as exc:
            raise PublisherStopped(str(exc)) from exc
        self._wake.set()

    def publish_state(self, camera_id: str, payload: dict[str, Any]) -> None:
        """The rolling verdict, retained: only the newest per camera matters, so while offline
        it is kept in memory (one per camera) and sent on connect."""
        check_id("camera_id", camera_id)
        self._offer(inbound.Retained(camera_id, encode(payload)))

    def publish_exam_state(
        self, camera_id: str, payload: dict[str, Any], correlation: bytes | None = None
    ) -> None:
        """The exam's state, retained: newest wins, but each command's answer goes out."""
        check_id("camera_id", camera_id)
        self._offer(inbound.Retained(camera_id, encode(payload), "exam", correlation))

    def publish_exam_summary(self, camera_id: str, payload: dict[str, Any]) -> None:
        """An exam's record when it closes or aborts: QoS 1, durable like results."""
        topic = self.topic(check_id("camera_id", camera_id), "exam", "summary")
        self._put(topic, encode(payload), expiry_s=None, droppable=False)

    def subscribe(self, topic_filter: str, handler: inbound.MessageHandler) -> None:
        """Receive `topic_filter` (QoS 1) on every connection; before `start()` only."""
        if self._thread is not None:
            raise RuntimeError("Publisher.subscribe() must come before start()")
        self._subscriptions.add(topic_filter, handler)

    def publish_stats(self, payload: dict[str, Any]) -> None:
        """QoS 0 and not retained: dropped (and counted) while offline."""
        self._offer(_Stats(encode(payload)))

    def _offer(self, command: inbound.Retained | _Stats) -> None:
        if self._stopped:
            raise PublisherStopped("the publisher is stopped: no more messages are accepted")
        try:
            self._feed.put_nowait(command)
        except queue.Full:
            self._counts["dropped_queue"] += 1  # the client thread is stuck; never block a camera
            return
        self._wake.set()

    # -- state ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def fatal_error(self) -> str | None:
        """Set while the last connection attempt failed in a way retrying cannot fix (bad
        credentials, TLS verification): the CLI may exit with this line. Cleared on connect."""
        return self._fatal_error

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def stats(self) -> PublisherStats:
        c = self._counts
        return PublisherStats(
            connected=self._connected,
            published=c["published"],
            acked=c["acked"],
            pending=self._outbox.pending,
            inflight=len(self._inflight),
            dropped_full=self._outbox.dropped,
            resent=c["resent"],
            rejected=c["rejected"],
            connects=c["connects"],
            reconnects=max(c["connects"] - 1, 0),
            queue_depth=self._feed.qsize(),
            dropped_queue=c["dropped_queue"],
            stats_dropped=c["stats_dropped"],
            last_error=self._last_error,
            fatal_error=self._fatal_error,
        )

    # -- paho callbacks (paho's thread): record and wake, nothing else -------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._client.connack_received()
        self._closed_early = 0
        if reason_code.is_failure:
            message, fatal = connack_refusal(reason_code, self._cfg.host, self._cfg.port)
            self._events.append(_ConnectFailed(message, fatal))
        else:
            self._connected = True
            self._events.append(_Connected(flags.session_present))
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        exc = self._client.last_connect_error
        if exc is None:
            message, fatal = f"cannot connect to {self._cfg.host}:{self._cfg.port}", False
        else:
            message, fatal = describe_connect_error(exc, self._cfg.host, self._cfg.port)
        self._events.append(_ConnectFailed(message, fatal))
        self._wake.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected = False
        if self._client.awaiting_connack:  # closed before answering: a TLS port, most often
            self._closed_early += 1
            line = closed_before_connack(self._cfg.host, self._cfg.port, self._cfg.tls.enabled)
            self._events.append(_ConnectFailed(line, self._closed_early >= CLOSED_EARLY_FATAL))
        self._events.append(_Disconnected(f"{reason_code.value} {reason_code}"))
        self._wake.set()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        failure = f"{reason_code.value} {reason_code}" if reason_code.is_failure else None
        self._events.append(_Acked(mid, failure))
        self._wake.set()

    # -- the client thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.wait(_TICK_S)
                self._wake.clear()
                self._step()
            self._flush()
        except Exception:
            log.exception("MQTT client thread failed; unacknowledged results stay in the outbox")
            raise
        finally:
            self._shutdown()

    def _step(self) -> None:
        acked_rows = self._handle_events()
        # Acks are deleted before rows are read again (after a reconnect the cursor restarts);
        # the attempts of the previous step's sends ride in the same transaction.
        self._outbox.settle(acked_rows, self._sent_unmarked)
        self._sent_unmarked = []
        self._handle_commands()
        if self._online:
            self._send_states()
            self._send_rows()

    def _handle_events(self) -> list[int]:
        acked_rows: list[int] = []
        while self._events:
            event = self._events.popleft()
            if isinstance(event, _Acked):
                self._handle_ack(event, acked_rows)
            elif isinstance(event, _Connected):
                self._handle_connected()
            elif isinstance(event, _ConnectFailed):
                self._record_error(event.message, event.fatal)
            else:
                # After a refused CONNACK paho reports a disconnect too; keep the refusal as
                # the error, it names the fix.
                if self._online and not self._stopping.is_set():
                    self._record_error(f"connection to the broker lost ({event.reason})", False)
                self._online = False
        return acked_rows

    def _handle_ack(self, event: _Acked, acked_rows: list[int]) -> None:
        self._status_mids.discard(event.mid)
        row = self._inflight.pop(event.mid, None)
        if row is None:
            return  # state, status, or a row dropped from a full outbox
        self._inflight_rows.discard(row)
        if event.failure is not None:
            # The broker refused it (quota, not authorized for the topic...). It stays in the
            # outbox and is offered again on the next connection.
            self._counts["rejected"] += 1
            self._record_error(f"broker refused a message ({event.failure})", False)
            return
        self._counts["acked"] += 1
        acked_rows.append(row)

    def _handle_connected(self) -> None:
        self._online = True
        self._fatal_error = None
        self._logged_error = None
        self._counts["connects"] += 1
        # paho sends its own unacknowledged messages again after CONNACK (same process).
        self._counts["resent"] += len(self._inflight)
        self._cursor = 0  # offer every other outbox row again on this connection
        log.info("connected to MQTT broker %s:%d", self._cfg.host, self._cfg.port)
        info = self._client.publish(self._status_topic, "online", qos=1, retain=True)
        self._status_mids.add(info.mid)
        self._subscriptions.renew(self._client)  # a clean start forgets them

    def _record_error(self, message: str, fatal: bool) -> None:
        self._last_error = message
        if fatal:
            self._fatal_error = message
        if message != self._logged_error:  # one line per distinct cause, not one per retry
            log.warning("MQTT: %s (retrying with backoff)", message)
            self._logged_error = message
        else:
            log.debug("MQTT: %s", message)

    def _handle_commands(self) -> None:
        while True:
            try:
                command = self._feed.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, inbound.Retained):
                self._retained.offer(command)
            elif self._online:
                self._client.publish(self._stats_topic, command.payload, qos=0, retain=False)
            else:
                self._counts["stats_dropped"] += 1

    def _send_states(self) -> None:
        for item in self._retained.take():
            c = item.correlation
            props = self._properties(None) if c is None else inbound.answer_properties(c)
            topic = self.topic(item.camera_id, item.kind)
            self._client.publish(topic, item.payload, qos=1, retain=True, properties=props)

    def _send_rows(self) -> None:
        room = INFLIGHT_WINDOW - len(self._inflight)
        if room <= 0:
            return
        rows = self._outbox.rows_after(self._cursor, room + len(self._inflight_rows))
        sent: list[int] = []
        for row in rows:
            if len(self._inflight) >= INFLIGHT_WINDOW:
                break
            if row.id in self._inflight_rows:
                self._cursor = row.id  # paho already holds it and re-sends it itself
                continue
            info = self._client.publish(
                row.topic,
                row.payload,
                qos=row.qos,
                retain=row.retain,
                properties=self._properties(row.expiry_s),
            )
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self._record_error(f"publish of outbox row {row.id} failed ({info.rc.name})", False)
                break
            # NO_CONN: paho keeps the message and sends it after the next CONNACK.
            self._inflight[info.mid] = row.id
            self._inflight_rows.add(row.id)
            self._cursor = row.id
            self._counts["published"] += 1
            if row.attempts:
                self._counts["resent"] += 1
            sent.append(row.id)
        self._sent_unmarked.extend(sent)

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

    def _flush(self) -> None:
        """Until the deadline: keep sending and acking, then say `stopped` and disconnect."""
        deadline = time.monotonic() + self._flush_timeout_s
        while time.monotonic() < deadline:
            self._step()
            if self._outbox.pending == 0 and self._feed.empty() and not self._retained:
                break
            self._wake.wait(min(_TICK_S, max(deadline - time.monotonic(), 0.0)))
            self._wake.clear()
        self._flushed = self._outbox.pending == 0
        if not self._flushed:
            log.warning(
                "stopping with %d unacknowledged messages in the outbox %s; they are sent at the "
                "next start",
                self._outbox.pending,
                self._outbox.path if self._outbox.path != MEMORY else "(in memory: lost)",
            )
        if self._online:
            self._say_stopped(max(deadline - time.monotonic(), 0.0) + _STOPPED_ACK_GRACE_S)

    def _say_stopped(self, timeout_s: float) -> None:
        info = self._client.publish(self._status_topic, "stopped", qos=1, retain=True)
        self._status_mids.add(info.mid)
        deadline = time.monotonic() + timeout_s
        while info.mid in self._status_mids and self._online and time.monotonic() < deadline:
            self._wake.wait(min(_TICK_S, max(deadline - time.monotonic(), 0.0)))
            self._wake.clear()
            acked_rows = self._handle_events()
            if acked_rows:
                self._outbox.ack(acked_rows)
        if info.mid in self._status_mids:
            log.warning("the broker did not acknowledge the `stopped` status")

    def _shutdown(self) -> None:
        self._outbox.settle((), self._sent_unmarked)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected = False
        self._online = False
        self._outbox.close()

    def stop(self, flush_timeout_s: float = 10.0) -> bool:
        """Wait (bounded) for outstanding messages to be acked, publish retained `stopped`,
        disconnect. True when the outbox is empty; what is not acked stays for the next start."""
        if self._stopped:
            return self._flushed
        self._stopped = True
        self._outbox.refuse_puts()  # wakes producers blocked on a full outbox
        if self._thread is None:  # never started
            self._flushed = self._outbox.pending == 0
            self._outbox.close()
            return self._flushed
        self._flush_timeout_s = flush_timeout_s
        self._stopping.set()
        self._wake.set()
        self._thread.join(flush_timeout_s + _STOPPED_ACK_GRACE_S + 10.0)
        if self._thread.is_alive():
            log.error("the MQTT client thread did not finish; the outbox is left as it is")
        return self._flushed
