"""The one place that builds a paho MQTT client, and what every MQTT user of thermoscreen shares.

The publisher (`run`), the logger (`log`), the benchmark's subscriber, the demo's watcher and the
naive loop all get their client from `make_client`: paho 2.x with `CallbackAPIVersion.VERSION2`
and MQTT v5, user name and password from the config and the environment (the password only from
`$THERMOSCREEN_MQTT_PASSWORD`), TLS with every file checked before paho sees it, an optional Last
Will, and reconnect backoff between `mqtt.reconnect_min_s` and `mqtt.reconnect_max_s` (1-30 s by
default). A bad setting raises `MqttSetupError` (a ValueError) at once with one line naming the
field and the fix; trouble at run time comes back as one line from `connack_refusal` or
`describe_connect_error`, with whether retrying alone can fix it.

Also here: the id rule of topic levels (`check_id`), `HOST:PORT` parsing and the broker flags
that `run` and `log` share.
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pipeline.config import ENV_MQTT_PASSWORD, ENV_MQTT_USERNAME, ConfigError, MqttConfig
from pipeline.types import ID_PATTERN

log = logging.getLogger(__name__)

_ID = re.compile(ID_PATTERN)
CREDENTIALS_FIX = f"check ${ENV_MQTT_USERNAME} and ${ENV_MQTT_PASSWORD}"

# CONNACK reason codes that retrying cannot fix without a change of settings, and that change.
CONNACK_FIXES: dict[int, str] = {
    0x84: "the broker does not speak MQTT v5: use mosquitto 2.x or another MQTT v5 broker",
    0x85: "the broker refused the client id: set mqtt.client_id (log: --client-id) to one this "
    "account may use (1-64 of A-Z a-z 0-9 _ . -)",
    0x86: CREDENTIALS_FIX,
    0x87: CREDENTIALS_FIX,
    0x8A: "the broker bans this client: ask the broker's administrator",
    0x8C: "check the broker's authentication settings",
}
# PUBACK reason codes that mean this message will never be accepted as it is: re-sending it
# cannot help (quota and server trouble, by contrast, are retried).
PUBACK_PERMANENT: dict[int, str] = {
    0x87: "the broker's ACL does not let this account publish there: the MQTT user name must be "
    "the device id (config/mosquitto/README.md)",
    0x90: "the topic name is invalid: check mqtt.topic_prefix, device_id and camera_id",
    0x95: "the message is larger than the broker accepts: raise the broker's message_size_limit",
    0x99: "the broker refused the payload format",
}
TLS_HINT = "if that port is a TLS listener, connect with TLS (mqtt.tls.enabled: true; log: --tls)"


class MqttSetupError(ValueError):
    """An MQTT setting that cannot work (missing TLS file, bad id, bad HOST:PORT); one line."""


def is_id(value: object) -> bool:
    """Device, camera, session and exam ids become topic levels and schema fields: 1-64 of
    A-Z a-z 0-9 _ . - (so never + # / or empty)."""
    return isinstance(value, str) and _ID.match(value) is not None


def check_id(field: str, value: str) -> str:
    if not is_id(value):
        raise MqttSetupError(f"{field} {value!r}: use 1-64 characters from A-Z a-z 0-9 _ . -")
    return value


def default_client_id(device_id: str) -> str:
    """`thermoscreen-<device>`, or the device id itself when that would be over 64 characters."""
    name = f"thermoscreen-{device_id}"
    return name if is_id(name) else device_id


# -- HOST:PORT and the broker flags of `run` and `log` -------------------------------------------


def parse_host_port(text: str, what: str = "--broker") -> tuple[str, int]:
    """`host:port`, `1.2.3.4:port` or `[::1]:port` -> (host, port); ConfigError otherwise."""
    host, sep, port = str(text).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection flags `thermoscreen run` and `thermoscreen log` share."""
    parser.add_argument("--broker", metavar="HOST:PORT", help="MQTT broker (overrides the config)")
    parser.add_argument("--username", help=f"MQTT user name (else ${ENV_MQTT_USERNAME})")
    parser.add_argument("--tls", action="store_true", default=None, help="connect with TLS")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate that signed the broker's")
    parser.add_argument("--topic-prefix", help="first topic level (default thermoscreen)")


def broker_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of `add_broker_arguments` as dotted config overrides (only those given)."""
    flat: dict[str, Any] = {}
    if args.broker:
        flat["mqtt.host"], flat["mqtt.port"] = parse_host_port(args.broker)
    if args.username:
        flat["mqtt.username"] = args.username
    if args.topic_prefix:
        flat["mqtt.topic_prefix"] = args.topic_prefix
    if args.tls or args.tls_ca:
        flat["mqtt.tls.enabled"] = True
    if args.tls_ca:
        flat["mqtt.tls.ca_file"] = args.tls_ca
    return flat


# -- building the client ------------------------------------------------------------------------


@dataclass(frozen=True)
class Will:
    """The Last Will the broker publishes when the connection dies without a DISCONNECT."""

    topic: str
    payload: str
    qos: int = 1
    retain: bool = True


class Client(mqtt.Client):
    """paho's client, remembering why the last connection attempt raised (paho's own loop
    swallows the OSError, and `on_connect_fail` gets no reason) and whether the open socket has
    had its CONNACK yet: a broker that closes the connection before answering is, most often, a
    TLS listener that a plain client dialled. `on_connect` callbacks call `connack_received()`."""

    last_connect_error: OSError | None = None
    awaiting_connack: bool = False

    def reconnect(self) -> MQTTErrorCode:
        self.awaiting_connack = False
        try:
            rc = super().reconnect()
        except OSError as exc:
            self.last_connect_error = exc
            raise
        self.last_connect_error = None
        self.awaiting_connack = True
        return rc

    def connack_received(self) -> None:
        self.awaiting_connack = False


def make_client(
    cfg: MqttConfig,
    client_id: str,
    *,
    will: Will | None = None,
    manual_ack: bool = False,
    max_inflight: int | None = None,
) -> Client:
    """A configured, unconnected MQTT v5 client; MqttSetupError names a setting that cannot work.

    `manual_ack` leaves acknowledging received messages to the caller (the logger acknowledges
    only what it has committed). paho's own log lines go to the `pipeline.mqtt.paho` logger at
    DEBUG only: callers log one line per distinct problem instead of one per retry.
    """
    check_id("MQTT client id (mqtt.client_id)", client_id)
    if cfg.reconnect_max_s < cfg.reconnect_min_s:
        raise MqttSetupError("mqtt.reconnect_max_s must be >= mqtt.reconnect_min_s")
    if not cfg.topic_prefix or any(c in cfg.topic_prefix for c in "+#\0"):
        raise MqttSetupError(
            f"mqtt.topic_prefix {cfg.topic_prefix!r}: must be non-empty, no + # or NUL"
        )
    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=manual_ack,
    )
    if log.isEnabledFor(logging.DEBUG):
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
    # paho annotates int; it only does arithmetic on the delays, so sub-second floats work.
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
    if max_inflight is not None:
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)  # the caller's own window bounds what paho holds
    username, password = cfg.resolved_username(), cfg.password()
    if username is not None or password is not None:
        client.username_pw_set(username, password)
    if cfg.tls.enabled:
        _set_tls(client, cfg)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    return client


def _set_tls(client: mqtt.Client, cfg: MqttConfig) -> None:
    tls = cfg.tls
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None and not Path(path).is_file():
            raise MqttSetupError(f"mqtt.tls.{name} {path}: file not found; give a PEM file")
    if (tls.cert_file is None) != (tls.key_file is None):
        raise MqttSetupError("mqtt.tls.cert_file and mqtt.tls.key_file go together: set both")
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (ssl.SSLError, OSError) as exc:
        raise MqttSetupError(
            f"mqtt.tls: cannot load the certificates ({exc}); check that they are PEM files and "
            "that mqtt.tls.key_file is the key of mqtt.tls.cert_file"
        ) from exc
    client.tls_insecure_set(tls.insecure)


def connect_properties(session_expiry_s: int) -> Properties:
    props = new_properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    return props


def new_properties(packet_type: int) -> Properties:
    """paho's Properties constructor has no annotations; keep the one untyped call here."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


# -- what went wrong, in one line ---------------------------------------------------------------


def connack_refusal(rc: ReasonCode, host: str, port: int) -> tuple[str, bool]:
    """The line for a refused CONNACK, and whether it is fatal (retrying cannot fix it)."""
    message = f"broker {host}:{port} refused the connection ({rc.value} {rc})"
    fix = CONNACK_FIXES.get(rc.value)
    return (f"{message}: {fix}", True) if fix else (message, False)


def puback_refusal(rc: ReasonCode) -> tuple[str, bool]:
    """The line for a PUBACK failure, and whether it is permanent for that message."""
    fix = PUBACK_PERMANENT.get(rc.value)
    message = f"the broker refused a message ({rc.value} {rc})"
    return (f"{message}: {fix}", True) if fix else (message, False)


def describe_connect_error(exc: OSError, host: str, port: int) -> tuple[str, bool]:
    """One line naming the cause and the fix, and whether retrying alone cannot fix it."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc)
        return (
            f"TLS certificate verify failed for broker {where} ({reason}): give the CA that "
            "signed its certificate (mqtt.tls.ca_file; log: --tls-ca)",
            True,
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake with {where} failed ({exc.reason or exc}): check that the port is the "
            "broker's TLS listener, and mqtt.tls.cert_file/key_file",
            True,
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}: is the broker running and listening there?", False
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve mqtt.host {host!r} ({exc.strerror}): check mqtt.host", False
    if isinstance(exc, TimeoutError):
        return f"timed out connecting to {where}: check mqtt.host/mqtt.port and the network", False
    return f"cannot connect to {where}: {exc}", False


def closed_before_connack(host: str, port: int, tls: bool) -> str:
    """The line for a broker that accepted the TCP connection and closed it without a CONNACK:
    a plain client at a TLS listener sees exactly this."""
    where = f"broker {host}:{port} closed the connection before answering CONNECT"
    if tls:
        return f"{where}: check the broker's log and its listener settings"
    return f"{where}: {TLS_HINT}"


class Backoff:
    """Reconnect delays for loops that connect themselves (the logger): min, doubling, max."""

    def __init__(self, min_s: float, max_s: float) -> None:
        if max_s < min_s or min_s <= 0:
            raise MqttSetupError("mqtt.reconnect_max_s must be >= mqtt.reconnect_min_s > 0")
        self.min_s, self.max_s = min_s, max_s
        self._next = min_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.min_s
