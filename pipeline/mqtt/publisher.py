"""MQTT publisher: one thread owns the paho client; results go through a durable outbox.

Topics (DESIGN.md "MQTT contract"), under `<prefix>/<device>`:
  status                 QoS 1 retained: `online` on every connect, `stopped` on clean exit,
                         `offline` as Last Will
  <camera>/result        QoS 1, message expiry `result_expiry_s`, one per classified frame
  <camera>/state         QoS 1 retained, the rolling session verdict (newest wins)
  <camera>/session       QoS 1, the final session summary (durable, like results)
  stats                  QoS 0, dropped while offline
  <camera>/exam          QoS 1 retained, the exam's state; exam/summary: a finished exam (durable)
  <camera>/stored        subscribed (unless outbox.confirm is broker): loggers' confirmations
  `subscribe`            more topics (e.g. `<camera>/exam/set`): see pipeline.mqtt.inbound

Threads. One client thread (`mqtt-publisher`, `pipeline.mqtt.sender`) owns the paho client: it
runs paho's network loop itself (socket work, keepalive and reconnect backoff:
`pipeline.mqtt.netloop`; paho's own `loop_start` thread would cost a wake-up more per result)
and is the only caller of `publish`/`subscribe`/`disconnect`. `start()` returns at once, also
with the broker down. The thread is fed by the outbox (results, sessions), a bounded queue
(state, stats) and the events that paho callbacks (run inside its network loop) append here
(connect, disconnect, PUBACK, SUBACK, `stored`).

Delivery. A result is committed to the outbox before `publish_result` returns and leaves it when
delivered: at the broker's PUBACK, or when a logger confirms it stored (`outbox.confirm`, see
`pipeline.mqtt.delivery`). Everything still in the outbox at the next start is sent first.
Subscribers drop duplicates by `message_id`.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
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
    puback_refusal,
)
from pipeline.mqtt.delivery import RESEND_WINDOW, SeqRange, to_ranges
from pipeline.mqtt.outbox import MEMORY, Outbox, OutboxClosed, RowKey
from pipeline.mqtt.payload import encode, result_payload, schema_errors
from pipeline.mqtt.sender import (
    INFLIGHT_WINDOW,
    STOPPED_ACK_GRACE_S,
    Acked,
    Connected,
    ConnectFailed,
    Disconnected,
    Sender,
    State,
    Stats,
    StoredMessage,
    Subscribed,
    Topics,
)
from pipeline.types import FrameResult, ModelInfo

log = logging.getLogger(__name__)

FEED_QUEUE_SIZE = 1000  # state and stats commands waiting for the client thread
_PAHO_INFLIGHT = INFLIGHT_WINDOW + RESEND_WINDOW + 50  # room for status and state messages too
CLOSED_EARLY_FATAL = 3  # connections in a row closed before a CONNACK: a fatal error with the fix


@dataclass(frozen=True)
class PublisherStats:
    """A snapshot of the publisher's counters (the `outbox` part of the `stats` message)."""

    connected: bool  # the broker has acknowledged the current connection
    published: int  # outbox rows handed to the client, re-sends included
    acked: int  # PUBACKs for outbox rows (with logger confirmation the row stays until then)
    pending: int  # rows in the outbox not yet delivered (sent at the next start if left)
    inflight: int  # rows handed to paho and not yet acknowledged
    dropped_full: int  # results the full outbox dropped (live `drop_oldest` policy)
    resent: int  # rows sent again (reconnect, earlier run, missing confirmation)
    rejected: int  # PUBACKs with a passing failure (quota...): kept and offered again
    connects: int  # successful connections
    reconnects: int  # connections after the first
    queue_depth: int  # state and stats commands waiting for the client thread
    dropped_queue: int  # state and stats commands dropped because that queue was full
    stats_dropped: int  # stats messages dropped while offline (QoS 0)
    last_error: str | None  # the last connection or delivery problem, one line with the fix
    fatal_error: str | None  # set while the last connect failed in a way retrying cannot fix
    confirm: str = "broker"  # what takes a result out of the outbox now: "broker" or "logger"
    confirmed: int = 0  # rows a logger confirmed stored, deleted from the outbox
    unconfirmed: int = 0  # pending rows the broker acknowledged, waiting for a logger
    dropped_seq: dict[str, list[SeqRange]] = field(default_factory=dict)  # session -> ranges
    refused: int = 0  # messages the broker refused for good (moved to the outbox's `refused`)
    refusal: str | None = None  # the last such refusal, one line with the fix
    expired: int = 0  # acknowledged results no logger confirmed within outbox.retention_s
    expired_seq: dict[str, list[SeqRange]] = field(default_factory=dict)  # session -> ranges


class PublisherStopped(RuntimeError):
    """A message was offered after `stop()` (or while waiting for room in a full outbox)."""


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
        topics = Topics(
            status=self.topic("status"),
            stats=self.topic("stats"),
            stored_filter=f"{mqtt.topic_prefix}/{device_id}/+/stored",
            prefix=f"{mqtt.topic_prefix}/{device_id}/",
        )
        self._client = make_client(
            mqtt,
            mqtt.client_id or default_client_id(self.device_id),
            will=Will(topics.status, "offline"),
            max_inflight=_PAHO_INFLIGHT,
        )
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._subscriptions = inbound.Subscriptions()
        self._closed_early = 0  # connections in a row closed before a CONNACK

        ocfg = outbox if outbox is not None else OutboxConfig(enabled=False)
        self._outbox = Outbox(
            ocfg.path if ocfg.enabled else MEMORY,
            ocfg.max_messages,
            ocfg.when_full,
            ocfg.synchronous,
        )
        self._feed: queue.Queue[State | Stats] = queue.Queue(maxsize=FEED_QUEUE_SIZE)
        self._sender = Sender(
            self._client,
            mqtt,
            self._outbox,
            topics,
            ocfg.confirm,
            ocfg.confirm_timeout_s,
            ocfg.retention_s,
            self._feed,
        )
        self._sender.subscriptions = self._subscriptions
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._flushed = False
        self._dropped_queue = 0
        self._validated_sessions: collections.OrderedDict[tuple[str, str], None] = (
            collections.OrderedDict()
        )

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
        self._thread = threading.Thread(target=self._sender.run, name="mqtt-publisher", daemon=True)
        self._thread.start()
        if self._outbox.pending:
            log.info("re-sending %d undelivered messages from the outbox", self._outbox.pending)

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
        PublisherStopped once `stop()` has begun, OutboxError when the disk refuses it.
        """
        topic = self.topic(check_id("camera_id", result.camera_id), "result")
        payload = result_payload(result, self.device_id, model)
        self._check_schema(result, payload)
        key = RowKey("result", result.camera_id, result.session_id, result.seq)
        self._put(topic, encode(payload), self._cfg.result_expiry_s, True, key)
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
        key = RowKey("session", camera_id, str(payload.get("session_id", "")))
        self._put(topic, encode(payload), None, False, key)

    def _put(
        self, topic: str, data: bytes, expiry_s: int | None, droppable: bool, key: RowKey | None
    ) -> None:
        if self._stopped:
            raise PublisherStopped("the publisher is stopped: no more messages are accepted")
        try:
            self._outbox.put(topic, data, qos=1, expiry_s=expiry_s, droppable=droppable, key=key)
        except OutboxClosed as exc:
            raise PublisherStopped(
                "the publisher stopped while this result waited for room in the full outbox "
                "(nothing was acknowledged): it and the frames after it are not stored"
            ) from exc
        self._sender.wake.set()

    def publish_state(self, camera_id: str, payload: dict[str, Any]) -> None:
        """The rolling verdict, retained: only the newest per camera matters, so while offline
        it is kept in memory (one per camera) and sent on connect."""
        check_id("camera_id", camera_id)
        self._offer(State(camera_id, encode(payload)))

    def publish_exam_state(
        self, camera_id: str, payload: dict[str, Any], correlation: bytes | None = None
    ) -> None:
        """The exam's state, retained: newest wins, but each command's answer goes out."""
        check_id("camera_id", camera_id)
        self._offer(State(camera_id, encode(payload), "exam", correlation))

    def publish_exam_summary(self, camera_id: str, payload: dict[str, Any]) -> None:
        """An exam's record when it closes or aborts: QoS 1, durable (delivered at the PUBACK:
        loggers confirm results and session summaries only)."""
        topic = self.topic(check_id("camera_id", camera_id), "exam", "summary")
        self._put(topic, encode(payload), None, False, None)

    def subscribe(self, topic_filter: str, handler: inbound.MessageHandler) -> None:
        """Receive `topic_filter` (QoS 1) on every connection; before `start()` only."""
        if self._thread is not None:
            raise RuntimeError("Publisher.subscribe() must come before start()")
        self._subscriptions.add(topic_filter, handler)

    def publish_stats(self, payload: dict[str, Any]) -> None:
        """QoS 0 and not retained: dropped (and counted) while offline."""
        self._offer(Stats(encode(payload)))

    def _offer(self, command: State | Stats) -> None:
        if self._stopped:
            raise PublisherStopped("the publisher is stopped: no more messages are accepted")
        try:
            self._feed.put_nowait(command)
        except queue.Full:
            self._dropped_queue += 1  # the client thread is stuck; never block a camera
            return
        self._sender.wake.set()

    def dropped_seq(self, session_id: str) -> list[SeqRange]:
        """Seq ranges of the session's results dropped at the full outbox (for its summary)."""
        return self._outbox.dropped_seq(session_id)

    # -- state ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sender.connected

    @property
    def fatal_error(self) -> str | None:
        """Set while the last connection attempt failed in a way retrying cannot fix (bad
        credentials, TLS verification): the CLI may exit with this line. Cleared on connect."""
        return self._sender.fatal_error

    @property
    def last_error(self) -> str | None:
        return self._sender.last_error

    def stats(self) -> PublisherStats:
        s, c, ob = self._sender, self._sender.counts, self._outbox
        return PublisherStats(
            connected=s.connected,
            confirm="logger" if s.by_logger else "broker",
            published=c["published"],
            acked=c["acked"],
            confirmed=c["confirmed"],
            pending=ob.pending,
            unconfirmed=ob.acked_unconfirmed,
            inflight=s.inflight,
            dropped_full=ob.dropped,
            dropped_seq=ob.dropped_sessions(),
            refused=c["refused"],
            refusal=s.refusal,
            expired=c["expired"],
            expired_seq={k: to_ranges(v) for k, v in s.expired.items()},
            resent=c["resent"],
            rejected=c["rejected"],
            connects=c["connects"],
            reconnects=max(c["connects"] - 1, 0),
            queue_depth=self._feed.qsize(),
            dropped_queue=self._dropped_queue,
            stats_dropped=c["stats_dropped"],
            last_error=s.last_error,
            fatal_error=s.fatal_error,
        )

    # -- paho callbacks (the client thread's network loop): record and wake, nothing else ------

    def _event(self, event: Any) -> None:
        self._sender.events.append(event)
        self._sender.wake.set()

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
            self._event(ConnectFailed(*connack_refusal(reason_code, *self._where())))
        else:
            self._sender.connected = True
            self._event(Connected(flags.session_present))

    def _where(self) -> tuple[str, int]:
        return self._cfg.host, self._cfg.port

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        exc = self._client.last_connect_error
        if exc is None:
            self._event(
                ConnectFailed(f"cannot connect to {self._cfg.host}:{self._cfg.port}", False)
            )
        else:
            self._event(ConnectFailed(*describe_connect_error(exc, *self._where())))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._sender.connected = False
        if self._client.awaiting_connack:  # closed before answering: a TLS port, most often
            self._closed_early += 1
            line = closed_before_connack(*self._where(), self._cfg.tls.enabled)
            self._event(ConnectFailed(line, self._closed_early >= CLOSED_EARLY_FATAL))
        self._event(Disconnected(f"{reason_code.value} {reason_code}"))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure:
            self._event(Acked(mid, *puback_refusal(reason_code)))
            return
        self._sender.events.append(Acked(mid, None))
        if self._sender.wants_acks_now():  # else the next step takes it (group commit)
            self._sender.wake.set()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [f"{rc.value} {rc}" for rc in reason_codes if rc.is_failure]
        self._event(Subscribed(failed[0] if failed else None, mid))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/stored") and msg.topic.startswith(self._sender.topics.prefix):
            self._event(StoredMessage(msg.topic, bytes(msg.payload)))
        else:  # exam/set and the like: their handlers hand them on
            self._subscriptions.on_message(client, userdata, msg)

    # -- stopping ------------------------------------------------------------------------------

    def stop(self, flush_timeout_s: float = 10.0) -> bool:
        """Wait (bounded) for outstanding messages to be delivered, publish retained `stopped`,
        disconnect. True when the outbox is empty; what is left stays for the next start."""
        if self._stopped:
            return self._flushed
        self._stopped = True
        self._outbox.refuse_puts()  # wakes producers blocked on a full outbox
        if self._thread is None:  # never started
            self._flushed = self._outbox.pending == 0
            self._outbox.close()
            self._sender.wake.close()
            return self._flushed
        self._sender.flush_timeout_s = flush_timeout_s
        self._sender.stopping.set()
        self._sender.wake.set()
        self._thread.join(flush_timeout_s + STOPPED_ACK_GRACE_S + 10.0)
        if self._thread.is_alive():
            log.error("the MQTT client thread did not finish; the outbox is left as it is")
        self._flushed = self._sender.flushed
        return self._flushed
