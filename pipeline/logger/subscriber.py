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
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
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

log = logging.getLogger("thermoscreen.logger")

# CONNACK reasons that retrying cannot fix: exit with one line instead of looping forever.
_FATAL_CONNACK = {
    "Unsupported protocol version",
    "Client identifier not valid",
    "Bad user name or password",
    "Not authorized",
    "Banned",
    "Bad authentication method",
}
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_REFUSED = 3
EXIT_DATABASE = 4


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


def _make_client(cfg: MqttConfig, opts: LoggerOptions, link: _Link) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=opts.client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=True,
    )
    username = cfg.resolved_username()
    if username:
        client.username_pw_set(username, MqttConfig.password())
    if cfg.tls.enabled:
        _set_tls(client, cfg)

    def on_connect(
        _c: mqtt.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            if str(rc) in _FATAL_CONNACK:
                link.fatal = f"broker {cfg.host}:{cfg.port} refused the connection: {rc}"
            else:
                log.warning("broker %s:%d refused the connection: %s", cfg.host, cfg.port, rc)
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

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        link.inbox.append(
            Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, link.generation, time.time())
        )

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    return client


def _set_tls(client: mqtt.Client, cfg: MqttConfig) -> None:
    tls = cfg.tls
    for name, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file)):
        if path is not None and not Path(path).is_file():
            raise LoggerError(
                f"mqtt.tls.{name}: {path} not found; give an existing PEM file", EXIT_CONFIG
            )
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (ssl.SSLError, OSError) as exc:
        raise LoggerError(
            f"mqtt.tls: cannot load certificates ({exc}); check the PEM files", EXIT_CONFIG
        ) from exc
    client.tls_insecure_set(tls.insecure)


def _connect(client: mqtt.Client, cfg: MqttConfig) -> None:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = cfg.session_expiry_s
    client.connect(
        cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=False, properties=props
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
        delay = self.cfg.reconnect_min_s
        last_stats = last_message = time.monotonic()
        online = False
        while not self.stop.is_set():
            if not online:
                online = self._try_connect()
                if not online:
                    self.stop.wait(delay)
                    delay = min(delay * 2, self.cfg.reconnect_max_s)
                    continue
            rc = self._receive()
            if self._link.fatal:
                raise LoggerError(self._link.fatal + _auth_hint(self._link.fatal), EXIT_REFUSED)
            if self._link.need_subscribe:
                self._subscribe()
                delay = self.cfg.reconnect_min_s
            if self._link.inbox:
                self._write_batch()
                last_message = time.monotonic()
                if self.opts.max_messages and self.counters.handled >= self.opts.max_messages:
                    return
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning(
                    "lost broker %s:%d (%s); reconnecting in %.0f s", *self._where(), rc.name, delay
                )
                online = False
                self.stop.wait(delay)
                delay = min(delay * 2, self.cfg.reconnect_max_s)
                continue
            now = time.monotonic()
            if now - last_stats >= self.opts.stats_interval_s:
                log.info("logger: %s", self.counters.line())
                self._check_store()
                last_stats = now
            idle = self.opts.exit_after_idle_s
            if idle is not None and self._link.subscribed and now - last_message >= idle:
                log.info("logger: idle for %.1f s, exiting", idle)
                return

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
        except ssl.SSLCertVerificationError as exc:
            raise LoggerError(
                f"TLS: cannot verify broker {self.cfg.host}:{self.cfg.port} "
                f"({exc.verify_message}); give the CA that signed its certificate with --tls-ca",
                EXIT_REFUSED,
            ) from exc
        except ssl.SSLError as exc:
            raise LoggerError(
                f"TLS handshake with {self.cfg.host}:{self.cfg.port} failed ({exc.reason}); "
                "check that the port is a TLS listener and --tls-ca",
                EXIT_REFUSED,
            ) from exc
        except OSError as exc:
            log.warning("cannot reach broker %s:%d (%s); retrying", *self._where(), exc)
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
        try:
            self.store.check()  # before SQLite touches files someone made unwritable (SIGBUS)
            counters = store_batch(self.store, batch, self._limits, self.counters)
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


def _auth_hint(line: str) -> str:
    if "user name or password" in line or "Not authorized" in line:
        return f"; check ${ENV_MQTT_USERNAME} and ${ENV_MQTT_PASSWORD}"
    return ""


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
    parser.add_argument("--broker", help="HOST:PORT of the broker (overrides the config)")
    parser.add_argument("--username", help=f"MQTT user name (else ${ENV_MQTT_USERNAME})")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate that signed the broker's")
    parser.add_argument("--topic-prefix", help="first topic level (default thermoscreen)")
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
    overrides: dict[str, Any] = {}
    if args.broker:
        host, sep, port = str(args.broker).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"--broker {args.broker!r}: expected HOST:PORT, e.g. 127.0.0.1:1883")
        overrides["mqtt.host"], overrides["mqtt.port"] = host, int(port)
    if args.username:
        overrides["mqtt.username"] = args.username
    if args.topic_prefix:
        overrides["mqtt.topic_prefix"] = args.topic_prefix
    if args.tls or args.tls_ca:
        overrides["mqtt.tls.enabled"] = True
    if args.tls_ca:
        overrides["mqtt.tls.ca_file"] = args.tls_ca
    return load_config(args.config, overrides).mqtt


def _install_signals(stop: threading.Event) -> Callable[[], None]:
    def handler(signum: int, _frame: object) -> None:
        log.info("logger: %s received, finishing", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
    stop = threading.Event()
    restore = _install_signals(stop)
    try:
        counters = Logger(cfg, opts, store, stop).run()
    except LoggerError as exc:
        print(f"thermoscreen log: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    finally:
        restore()
    log.info("logger: finished: %s", counters.line())
    return EXIT_OK
