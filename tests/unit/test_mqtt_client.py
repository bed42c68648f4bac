"""pipeline.mqtt.client: the one paho factory and the rules every MQTT user shares (ids,
HOST:PORT, broker flags, TLS file checks, CONNACK/PUBACK reason lines, reconnect backoff)."""

from __future__ import annotations

import argparse
import re
import socket
import ssl
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from pipeline.config import ConfigError, MqttConfig, load_config
from pipeline.mqtt.client import (
    Backoff,
    MqttSetupError,
    Will,
    add_broker_arguments,
    broker_overrides,
    check_id,
    connack_refusal,
    default_client_id,
    describe_connect_error,
    is_id,
    make_client,
    parse_host_port,
    puback_refusal,
)

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("broker.clinic.lan:8883", ("broker.clinic.lan", 8883)),
        ("[::1]:1884", ("::1", 1884)),
    ],
)
def test_host_port_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["localhost", ":1883", "host:", "host:port", "h:0", "h:65536"])
def test_bad_host_port_is_one_line_naming_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--broker .*: expected HOST:PORT, e\.g\. 127"):
        parse_host_port(text)


def test_ids() -> None:
    assert is_id("edge-01") and is_id("a" * 64) and is_id("cam_0.x")
    for bad in ("", "a" * 65, "a/b", "a+b", "#", "naïve", None, 3):
        assert not is_id(bad)
    with pytest.raises(ValueError, match=r"camera_id 'a/b': use 1-64 characters"):
        check_id("camera_id", "a/b")
    assert default_client_id("edge-01") == "thermoscreen-edge-01"
    assert default_client_id("d" * 60) == "d" * 60  # the prefix would pass 64 characters


def test_run_and_log_share_the_broker_flags() -> None:
    parser = argparse.ArgumentParser()
    add_broker_arguments(parser)
    args = parser.parse_args(
        ["--broker", "b.lan:8883", "--username", "edge-01", "--tls-ca", "ca.crt"]
    )
    flat = broker_overrides(args)
    assert flat == {
        "mqtt.host": "b.lan",
        "mqtt.port": 8883,
        "mqtt.username": "edge-01",
        "mqtt.tls.enabled": True,
        "mqtt.tls.ca_file": Path("ca.crt"),
    }
    cfg = load_config(None, flat, env={})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls.enabled) == ("b.lan", 8883, True)
    assert broker_overrides(parser.parse_args([])) == {}


def test_client_is_mqtt5_with_will_and_backoff() -> None:
    cfg = MqttConfig(reconnect_min_s=0.5, reconnect_max_s=4.0)
    client = make_client(
        cfg, "thermoscreen-edge-01", will=Will("thermoscreen/edge-01/status", "offline")
    )
    assert client.protocol == 5
    assert client._reconnect_min_delay == 0.5 and client._reconnect_max_delay == 4.0
    assert client._will_topic == b"thermoscreen/edge-01/status" and client._will_retain


def test_bad_settings_fail_at_once(tmp_path: Path) -> None:
    with pytest.raises(MqttSetupError, match="MQTT client id"):
        make_client(MqttConfig(), "bad/id")
    with pytest.raises(MqttSetupError, match="reconnect_max_s must be >="):
        make_client(MqttConfig(reconnect_min_s=5, reconnect_max_s=1), "x")
    with pytest.raises(MqttSetupError, match=r"mqtt\.tls\.ca_file .*nope\.crt: file not found"):
        make_client(MqttConfig(tls={"enabled": True, "ca_file": tmp_path / "nope.crt"}), "x")


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    """The logger's old TLS set-up skipped this check and failed later inside OpenSSL."""
    cert = tmp_path / "client.crt"
    cert.write_text("not checked before the pairing rule\n")
    for tls in ({"cert_file": cert}, {"key_file": cert}):
        cfg = MqttConfig(tls={"enabled": True, **tls})
        with pytest.raises(MqttSetupError, match=r"cert_file and mqtt\.tls\.key_file go together"):
            make_client(cfg, "x")


def _rc(value: int, packet: int = PacketTypes.CONNACK) -> ReasonCode:
    return ReasonCode(packet, identifier=value)  # type: ignore[no-untyped-call]


def test_connack_and_puback_reason_lines() -> None:
    line, fatal = connack_refusal(_rc(135), "b", 8883)
    assert fatal and line == (
        "broker b:8883 refused the connection (135 Not authorized): check "
        "$THERMOSCREEN_MQTT_USERNAME and $THERMOSCREEN_MQTT_PASSWORD"
    )
    line, fatal = connack_refusal(_rc(136), "b", 8883)  # server unavailable: retry
    assert not fatal and line.endswith("(136 Server unavailable)")
    line, permanent = puback_refusal(_rc(135, PacketTypes.PUBACK))
    assert permanent and "ACL" in line and "device id" in line
    assert not puback_refusal(_rc(151, PacketTypes.PUBACK))[1]  # quota: offered again


def test_connect_errors_name_the_fix() -> None:
    line, fatal = describe_connect_error(ConnectionRefusedError(111, "refused"), "h", 1)
    assert not fatal and "is the broker running" in line
    line, fatal = describe_connect_error(socket.gaierror(-2, "Name unknown"), "nohost", 1)
    assert not fatal and "check mqtt.host" in line
    verify = ssl.SSLCertVerificationError(1, "x")
    verify.verify_message = "unable to get local issuer certificate"
    line, fatal = describe_connect_error(verify, "h", 1)
    assert fatal and "(unable to get local issuer certificate)" in line and "ca_file" in line


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    b = Backoff(1.0, 30.0)
    assert [b.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    b.reset()
    assert b.next() == 1


def test_one_paho_factory_and_one_id_rule() -> None:
    """No module but client.py builds a paho client, sets up TLS or reads a CONNACK table, and
    the id regex is written once (pipeline/types.py)."""
    offenders: list[str] = []
    for path in PIPELINE.rglob("*.py"):
        text = path.read_text()
        rel = path.relative_to(PIPELINE).as_posix()
        if rel != "mqtt/client.py":
            for needle in ("mqtt.Client(", ".tls_set(", "CallbackAPIVersion", 'rpartition(":")'):
                if needle in text:
                    offenders.append(f"{rel}: {needle}")
        if rel != "types.py" and re.search(r"A-Za-z0-9_\.-\]\{1,64\}", text):
            offenders.append(f"{rel}: the id regex")
    assert offenders == []
