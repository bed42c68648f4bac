"""`thermoscreen log`: subscribe to results and store each one once.

One thread owns the MQTT client and the database: paho's callbacks (run inside `client.loop()` on
that same thread) only append to a list, and the loop body stores what arrived, commits, and only
then acknowledges each message to the broker (paho `manual_ack`). A crash between receipt and
commit therefore loses nothing: the broker still holds the unacknowledged message and re-sends it
to this persistent session (fixed client id, `clean_start=False`, session expiry), and the
`message_id` primary key turns the re-send into a counted duplicate.

Anything that is not a valid message (not JSON, wrong schema, oversized, unknown topic) is kept
in the `rejects` table with its raw bytes and counted; it never stops the logger.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pipeline import DISCLAIMER
from pipeline.config import (
    ENV_MQTT_PASSWORD,
    ENV_MQTT_USERNAME,
    ConfigError,
    MqttConfig,
    load_config,
)
from pipeline.logger.store import Store, StoreError, StoreFileError, open_store
from pipeline.logger.writer import Counters, Incoming, Limits, store_batch
from pipeline.mqtt.client import (
    Backoff,
    Client,
    MqttSetupError,
    add_broker_arguments,
    broker_overrides,
    closed_before_connack,
    connack_refusal,
    connect_properties,
    describe_connect_error,
    make_client,
)
from pipeline.mqtt.delivery import Kept, stored_messages, stored_topic
from pipeline.mqtt.payload import encode
from pipeline.signals import stop_on_signals

log = logging.getLogger("thermoscreen.logger")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_REFUSED = 3
EXIT_DATABASE = 4
CLOSED_EARLY_FATAL = 3  # connections in a row closed before a CONNACK: give up with the fix


class LoggerError(Exception):
    """A fatal condition (refused credentials, TLS failure, database); one line for the user."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class LoggerOptions:
    """What `thermoscreen log` does besides connecting (the connection is an MqttConfig)."""

    db: str = "var/results.sqlite"
    client_id: str = "thermoscreen-logger"
    max_payload_bytes: int = 64 * 1024
    reject_keep_bytes: int = 4096
    batch: int = 500  # messages per database transaction (and per round of acknowledgements)
    extra_filters: tuple[str, ...] = ()
    stats_interval_s: float = 30.0
    exit_after_idle_s: float | None = None
    max_messages: int | None = None


def subscriptions(prefix: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The topic filters of the MQTT contract plus extra ones, without overlaps.

    A contract filter that an extra filter already covers (e.g. `thermoscreen/#`) is left out:
    the broker sends one copy per matching subscription, and each copy would be counted.
    """
    base = [
        f"{prefix}/+/+/result",
        f"{prefix}/+/+/state",
        f"{prefix}/+/+/session",
        f"{prefix}/+/+/exam",
        f"{prefix}/+/+/exam/summary",
        f"{prefix}/+/status",
    ]
    extra = tuple(dict.fromkeys(extra))
    kept = [b for b in base if not any(_covers(e, b) for e in extra if e != b)]
    return kept + [e for e in extra if e not in kept]


def _covers(wide: str, narrow: str) -> bool:
    """Whether every topic `narrow` matches is matched by `wide` (wildcard levels as samples)."""
    sample = narrow.replace("+", "x").replace("#", "x")
    return bool(mqtt.topic_matches_sub(wide, sample))


# --- the MQTT side ---------------------------------------------------------------------------


@dataclass
class _Link:
    """What the callbacks tell the loop; written and read on the loop's own thread only."""

    inbox: list[Incoming] = field(default_factory=list)
    generation: int = 0
    connected: bool = False
    need_subscribe: bool = False
    subscribed: bool = False
    session_present: bool = False
    fatal: str | None = None
    confirm_refused: bool = False  # warned once that the ACL refuses `stored` messages


def _make_client(cfg: MqttConfig, opts: LoggerOptions, link: _Link) -> Client:
    try:
        client = make_client(cfg, opts.client_id, manual_ack=True)
    except MqttSetupError as exc:
        raise LoggerError(str(exc), EXIT_CONFIG) from exc

    def on_connect(
        _c: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Properties | None
    ) -> None:
        client.connack_received()
        if rc.is_failure:
            message, fatal = connack_refusal(rc, cfg.host, cfg.port)
            if fatal:
                link.fatal = message
            else:
                log.warning("%s; retrying", message)
            return
        link.generation += 1
        link.connected = True
        link.need_subscribe = True
        link.session_present = bool(flags.session_present)

    def on_disconnect(
        _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None
    ) -> None:
        link.connected = False
        link.subscribed = False

    def on_subscribe(
        _c: mqtt.Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Properties | None
    ) -> None:
        failed = [str(c) for c in codes if c.is_failure]
        if failed:
            link.fatal = f"broker {cfg.host}:{cfg.port} refused the subscription: {failed[0]}"
            return
        link.subscribed = True
        log.info("logger: subscribed, %d filters granted", len(codes))

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, rc: ReasonCode, _p: Properties) -> None:
        if rc.is_failure and not link.confirm_refused:
            link.confirm_refused = True
            log.warning(
                "logger: the broker refused a `stored` confirmation (%s %s): devices that confirm "
                "through a logger keep and re-send their results; let this account publish "
                "%s/+/+/stored (config/mosquitto/acl)",
                rc.value, rc, cfg.topic_prefix,
            )  # fmt: skip

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        link.inbox.append(
            Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, link.generation, time.time())
        )

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_publish = on_publish
    return client


def _connect(client: mqtt.Client, cfg: MqttConfig) -> None:
    client.connect(
        cfg.host,
        cfg.port,
        keepalive=cfg.keepalive_s,
        clean_start=False,
        properties=connect_properties(cfg.session_expiry_s),
    )


class Logger:
    """The writer loop: receive, store, commit, acknowledge, on one thread."""

    def __init__(
        self, cfg: MqttConfig, opts: LoggerOptions, store: Store, stop: threading.Event
    ) -> None:
        self.cfg = cfg
        self.opts = opts
        self.store = store
        self.stop = stop
        self.counters = Counters()
        self._link = _Link()
        try:
            self._client = _make_client(cfg, opts, self._link)
        except LoggerError:
            store.close()
            raise
        self._filters = subscriptions(cfg.topic_prefix, opts.extra_filters)
        self._limits = Limits(cfg.topic_prefix, opts.max_payload_bytes, opts.reject_keep_bytes)
        self._closed_early = 0  # connections in a row closed before their CONNACK

    @property
    def subscribed(self) -> bool:
        """The broker has granted the subscriptions of the current connection."""
        return self._link.subscribed

    def run(self) -> Counters:
        """Until stopped, idle, or max messages; raises LoggerError on a fatal condition."""
        try:
            self._loop()
            self._check_store()  # an exit 0 says that what was acknowledged is in the file
        finally:
            self._client.disconnect()
            self.store.close()
        return self.counters

    def _loop(self) -> None:
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        last_stats = last_tick = time.monotonic()
        idle_s = 0.0  # connected and subscribed without a message (time offline is not idle)
        online = False
        while not self.stop.is_set():
            if not online:
                online = self._try_connect()
                if not online:
                    self.stop.wait(backoff.next())
                    continue
            rc = self._receive()
            if self._link.fatal:
                raise LoggerError(self._link.fatal, EXIT_REFUSED)
            if self._link.need_subscribe:
                self._subscribe()
                backoff.reset()
            now = time.monotonic()
            idle_s = idle_s + (now - last_tick) if self._link.subscribed else idle_s
            last_tick = now
            if self._link.inbox:
                self._write_batch()
                idle_s = 0.0
                if self.opts.max_messages and self.counters.handled >= self.opts.max_messages:
                    return
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                online = False
                self._lost(rc, backoff.next())
                continue
            if now - last_stats >= self.opts.stats_interval_s:
                log.info("logger: %s", self.counters.line())
                self._check_store()
                last_stats = now
            idle = self.opts.exit_after_idle_s
            if idle is not None and idle_s >= idle:
                log.info("logger: idle for %.1f s while connected, exiting", idle)
                return

    def _lost(self, rc: MQTTErrorCode, delay: float) -> None:
        """The connection ended: say why and wait before retrying. A broker that keeps closing
        the connection before its CONNACK is, in practice, a TLS port dialled without TLS:
        after a few tries that is a fatal error with the fix."""
        self._link.connected = self._link.subscribed = False
        if self._client.awaiting_connack:
            self._closed_early += 1
            line = closed_before_connack(*self._where(), self.cfg.tls.enabled)
            if self._closed_early >= CLOSED_EARLY_FATAL:
                raise LoggerError(line, EXIT_REFUSED)
        else:
            self._closed_early = 0
            line = f"lost broker {self.cfg.host}:{self.cfg.port} ({rc.name})"
        log.warning("%s; reconnecting in %.1f s", line, delay)
        self.stop.wait(delay)

    def _check_store(self) -> None:
        try:
            self.store.check()
        except StoreError as exc:
            raise LoggerError(
                f"database {exc}; nothing more was acknowledged", EXIT_DATABASE
            ) from exc

    def _receive(self) -> MQTTErrorCode:
        """Wait up to 0.2 s for traffic, then read what is already there, up to a batch.

        paho's `loop()` reads one packet per call; one commit per message would bound the
        logger by fsync latency, so a burst is read and committed as one transaction.
        """
        rc = self._client.loop(timeout=0.2)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and len(self._link.inbox) < self.opts.batch:
            before = len(self._link.inbox)
            rc = self._client.loop_read()
            if len(self._link.inbox) == before:
                break
        return rc

    def _where(self) -> tuple[str, int]:
        return self.cfg.host, self.cfg.port

    def _try_connect(self) -> bool:
        try:
            _connect(self._client, self.cfg)
            return True
        except OSError as exc:
            line, fatal = describe_connect_error(exc, *self._where())
            if fatal:
                raise LoggerError(line, EXIT_REFUSED) from exc
            log.warning("%s; retrying", line)
            return False

    def _subscribe(self) -> None:
        self._link.need_subscribe = False
        topics = [(f, 1) for f in self._filters]
        self._client.subscribe(topics)
        log.info(
            "logger: connected to %s:%d as %s (session present: %s), subscribing to %s",
            *self._where(), self.opts.client_id, self._link.session_present,
            ", ".join(self._filters),
        )  # fmt: skip

    def _write_batch(self) -> None:
        batch, self._link.inbox = self._link.inbox, []
        kept: list[Kept] = []
        try:
            self.store.check()  # before SQLite touches files someone made unwritable (SIGBUS)
            counters = store_batch(self.store, batch, self._limits, self.counters, kept)
            self.store.check()  # the commit went to the file at the path: acknowledge it
        except StoreError as exc:
            raise LoggerError(
                f"database {exc}; nothing of this batch was acknowledged: the broker re-sends it "
                "when the logger restarts",
                EXIT_DATABASE,
            ) from exc
        self.counters = counters
        for msg in batch:
            if msg.qos > 0 and msg.generation == self._link.generation and self._link.connected:
                self._client.ack(msg.mid, msg.qos)
        self._confirm(kept)

    def _confirm(self, kept: list[Kept]) -> None:
        """Tell each sender what is now stored (`stored` topic): its outbox lets go of it."""
        if not self._link.connected:
            return  # the senders re-send what stays unconfirmed; the next batch confirms it
        for device, camera, payload in stored_messages(kept, self.opts.client_id):
            topic = stored_topic(self.cfg.topic_prefix, device, camera)
            self._client.publish(topic, encode(payload), qos=1)


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Subscribe to thermoscreen results, states, session summaries and device statuses and "
        "store each result once (keyed by message_id) in SQLite or PostgreSQL. A message is "
        "acknowledged to the broker only after it is committed, and the logger keeps a persistent "
        "session (fixed client id), so results published while it is down are delivered when it "
        "returns. Invalid messages are kept in the rejects table.\n\n"
        f"Credentials: user name from --username or ${ENV_MQTT_USERNAME}, password only from "
        f"${ENV_MQTT_PASSWORD}. If the broker refuses the credentials, or TLS verification "
        f"fails, the logger prints one line and exits with status {EXIT_REFUSED} at once "
        "(an unreachable broker is retried with backoff).\n\n"
        f"{DISCLAIMER}"
    )
    parser.add_argument("--config", type=Path, help="YAML config; its `mqtt` section is used")
    add_broker_arguments(parser)
    parser.add_argument(
        "--db",
        default="var/results.sqlite",
        help="SQLite file (WAL mode) or postgresql://user@host/db URL (default %(default)s)",
    )
    parser.add_argument(
        "--client-id",
        default="thermoscreen-logger",
        help="fixed MQTT client id: the broker queues results for it while it is down "
        "(default %(default)s); run one id per logger",
    )
    parser.add_argument(
        "--subscribe",
        action="append",
        default=[],
        metavar="FILTER",
        help="extra topic filter (repeatable), e.g. 'thermoscreen/#' to audit every topic; "
        "messages on topics outside the contract are stored as rejects",
    )
    parser.add_argument(
        "--max-payload-bytes",
        type=int,
        default=64 * 1024,
        help="larger messages are rejected (first 4 KiB kept) (default %(default)s)",
    )
    parser.add_argument(
        "--stats-interval", type=float, default=30.0, help="seconds between counter log lines"
    )
    parser.add_argument(
        "--exit-after-idle", type=float, help="exit after S seconds without messages (scripts)"
    )
    parser.add_argument("--max-messages", type=int, help="exit after N messages (scripts)")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def _mqtt_config(args: argparse.Namespace) -> MqttConfig:
    return load_config(args.config, broker_overrides(args)).mqtt


def main(args: argparse.Namespace) -> int:
    opts = LoggerOptions(
        db=args.db,
        client_id=args.client_id,
        max_payload_bytes=args.max_payload_bytes,
        extra_filters=tuple(args.subscribe),
        stats_interval_s=args.stats_interval,
        exit_after_idle_s=args.exit_after_idle,
        max_messages=args.max_messages,
    )
    try:
        cfg = _mqtt_config(args)
        store = open_store(opts.db)
    except (ConfigError, StoreError) as exc:
        print(f"thermoscreen log: {exc}", file=sys.stderr, flush=True)
        return EXIT_DATABASE if isinstance(exc, StoreFileError) else EXIT_CONFIG
    try:
        with stop_on_signals(threading.Event(), "logger finishing") as stop:
            counters = Logger(cfg, opts, store, stop).run()
    except LoggerError as exc:
        print(f"thermoscreen log: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    log.info("logger: finished: %s", counters.line())
    return EXIT_OK
