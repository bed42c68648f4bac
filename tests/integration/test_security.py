"""The shipped broker configs (config/mosquitto/mosquitto.conf and acl) on a real mosquitto:
TLS with test-made certificates, passwords, and the per-device ACL; the pipeline and the logger
connect with credentials from the environment, and bad credentials or CAs fail with one line."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from pipeline.config import load_config
from pipeline.run.examctl import Exchange
from tests.conftest import REPO, Broker, free_port
from tests.helpers.mqtt_logger import (
    LoggerProcess,
    Publisher,
    count_rows,
    make_payload,
    make_png16_recording,
    result_topic,
    run_pipeline,
    stored_seqs,
)
from tests.helpers.wait import wait_until

SHIPPED = REPO / "config" / "mosquitto"
PASSWORDS = {
    "edge-01": "dev1-secret",
    "edge-02": "dev2-secret",
    "logger": "log-secret",
    "dashboard": "dash-secret",
    "operator": "op-secret",
    "sensor": "sensor-secret",
}


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    rogue_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd, timeout=60)


def _make_ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost (SAN) signed by it, and a rogue CA."""
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "rogue")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d,
    )  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d,
    )  # fmt: skip
    return Pki(d / "ca.crt", d / "server.crt", d / "server.key", d / "rogue.crt")


def shipped_config(port: int, etc: Path) -> str:
    """config/mosquitto/mosquitto.conf with its paths pointed at `etc` and the listener at
    127.0.0.1:port; persistence lines are left to the Broker fixture."""
    lines = []
    for line in (SHIPPED / "mosquitto.conf").read_text().splitlines():
        if line.startswith(("persistence", "autosave_interval")):
            continue
        line = line.replace("/etc/mosquitto/thermoscreen/", f"{etc}/")
        lines.append(re.sub(r"^listener 8883$", f"listener {port} 127.0.0.1", line))
    text = "\n".join(lines) + "\n"
    assert f"listener {port} 127.0.0.1" in text and "allow_anonymous false" in text
    # listener settings (client ids bound to accounts) follow their listener line
    assert text.index("use_username_as_clientid true") > text.index(f"listener {port}")
    return text


@pytest.fixture
def secure_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("ca.crt", "server.crt", "server.key"):
        (etc / name).write_bytes((pki.ca.parent / name).read_bytes())
    (etc / "acl").write_text((SHIPPED / "acl").read_text())  # the exact shipped ACL
    for i, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if i == 0 else []
        cmd = ["mosquitto_passwd", "-b", *create, str(etc / "passwd"), user, password]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    port = free_port()
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = Broker(port=port, workdir=workdir, config_text=shipped_config(port, etc))
    b.start()
    yield b
    b.stop()


def _client_env(user: str, password: str, ca: Path) -> dict[str, str]:
    return {
        "THERMOSCREEN_MQTT_USERNAME": user,
        "THERMOSCREEN_MQTT_PASSWORD": password,
        "THERMOSCREEN_MQTT__TLS__ENABLED": "true",
        "THERMOSCREEN_MQTT__TLS__CA_FILE": str(ca),
    }


def _logger(broker: Broker, tmp_path: Path, ca: Path, user: str, password: str) -> LoggerProcess:
    args = ["--broker", f"127.0.0.1:{broker.port}", "--db", str(tmp_path / "results.sqlite")]
    args += ["--tls-ca", str(ca)]
    env = {"THERMOSCREEN_MQTT_USERNAME": user, "THERMOSCREEN_MQTT_PASSWORD": password}
    return LoggerProcess(tmp_path, args, env=env)


def test_pipeline_and_logger_talk_over_tls_with_credentials_from_the_environment(
    secure_broker: Broker, tmp_path: Path, pki: Pki, tiny_model: Path
) -> None:
    frames = 6
    recording = make_png16_recording(tmp_path / "rec", frames)
    logger = _logger(secure_broker, tmp_path, pki.ca, "logger", PASSWORDS["logger"]).start()
    logger.wait_subscribed()
    env = _client_env("edge-01", PASSWORDS["edge-01"], pki.ca)
    run = run_pipeline(
        recording, tiny_model, secure_broker.port, tmp_path / "outbox.sqlite",
        "--confirm", "logger", env=env,
    )  # fmt: skip
    assert run.wait(timeout=120) == 0, (tmp_path / "outbox.log").read_text()
    # the logger's `stored` confirmations passed the shipped ACL and emptied the outbox
    assert "every result confirmed stored by a logger" in (tmp_path / "outbox.log").read_text()
    db = tmp_path / "results.sqlite"
    wait_until(lambda: db.exists() and count_rows(db, "sessions") == 1, 30, "the session summary")
    assert logger.stop() == 0
    assert count_rows(db, "results") == frames
    assert count_rows(db, "rejects") == 0
    assert count_rows(db, "statuses", "WHERE device = 'edge-01' AND status = 'stopped'") == 1
    with sqlite3.connect(db) as conn:
        (session,) = conn.execute("SELECT session FROM sessions").fetchone()
    assert stored_seqs(db, session) == list(range(frames))


def _only_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


def test_logger_with_a_wrong_password_exits_with_one_line(
    secure_broker: Broker, tmp_path: Path, pki: Pki
) -> None:
    logger = _logger(secure_broker, tmp_path, pki.ca, "logger", "Xq7-not-the-password").start()
    assert logger.wait(timeout_s=60) == 3
    line = _only_line(logger.text())
    # mosquitto 2.0 answers a wrong password with reason 135 (older brokers: 134)
    assert re.fullmatch(
        f"thermoscreen log: broker 127.0.0.1:{secure_broker.port} refused the connection "
        r"\((135 Not authorized|134 Bad user name or password)\): check "
        r"\$THERMOSCREEN_MQTT_USERNAME and \$THERMOSCREEN_MQTT_PASSWORD",
        line,
    ), line
    assert "Xq7" not in line


def test_logger_that_does_not_trust_the_broker_certificate_exits_with_one_line(
    secure_broker: Broker, tmp_path: Path, pki: Pki
) -> None:
    logger = _logger(secure_broker, tmp_path, pki.rogue_ca, "logger", PASSWORDS["logger"]).start()
    assert logger.wait(timeout_s=60) == 3
    line = _only_line(logger.text())
    assert line.startswith(
        f"thermoscreen log: TLS certificate verify failed for broker 127.0.0.1:{secure_broker.port}"
    )
    assert line.endswith(
        "give the CA that signed its certificate (mqtt.tls.ca_file; log: --tls-ca)"
    )


def test_pipeline_with_a_wrong_password_names_the_refusal_and_keeps_its_results(
    secure_broker: Broker, tmp_path: Path, pki: Pki, tiny_model: Path
) -> None:
    recording = make_png16_recording(tmp_path / "rec", 2)
    env = _client_env("edge-01", "Xq7-not-the-password", pki.ca)
    log = tmp_path / "run.log"
    run = run_pipeline(
        recording, tiny_model, secure_broker.port, tmp_path / "outbox.sqlite",
        "--flush-timeout", "5", env=env, log_path=log,
    )  # fmt: skip
    # the publisher keeps retrying (a device must survive a broker restart), then exits 3 with
    # the results kept in its outbox and the broker's reason named
    assert run.wait(timeout=120) == 3
    text = log.read_text()
    assert "refused the connection (135 Not authorized)" in text
    assert "THERMOSCREEN_MQTT_PASSWORD" in text
    assert "Xq7-not-the-password" not in text


CONNECT_V311 = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"  # clean session, empty client id


def _first_reply(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    sock.sendall(CONNECT_V311)
    try:
        return sock.recv(16)
    except (ConnectionResetError, ssl.SSLError):
        return b""


def test_plain_tcp_to_the_tls_port_gets_no_connack(secure_broker: Broker, pki: Pki) -> None:
    with socket.create_connection(("127.0.0.1", secure_broker.port), timeout=10) as plain:
        reply = _first_reply(plain)
    assert not reply.startswith(b"\x20"), "the TLS port answered a plain MQTT CONNECT"
    # control: the same CONNECT inside TLS gets a CONNACK (refusing the anonymous client: rc 5)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with (
        socket.create_connection(("127.0.0.1", secure_broker.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert _first_reply(tls) == b"\x20\x02\x00\x05"


class _Subscriber:
    def __init__(self, port: int, ca: Path, user: str = "dashboard") -> None:
        self.received: list[str] = []
        self.ready = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{user}-sub",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(user, PASSWORDS[user])
        self.client.tls_set(ca_certs=str(ca))
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.topic)
        self.client.on_subscribe = lambda *_a: setattr(self, "ready", True)
        self.client.on_connect = lambda c, *_a: c.subscribe("thermoscreen/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(lambda: self.ready, 20, "ACL subscriber")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_shipped_acl_confines_devices_to_their_prefix_and_readers_to_reading(
    secure_broker: Broker, pki: Pki
) -> None:
    """Devices write only under their own prefix and read only the confirmations for them;
    loggers read everything and write only confirmations; dashboards only read."""
    port, ca = secure_broker.port, pki.ca
    assert secure_broker.log_text().count("Opening ipv4 listen socket") == 1  # TLS port only
    sub = _Subscriber(port, ca, "dashboard")
    edge02 = _Subscriber(port, ca, "edge-02")  # a device subscribing to everything
    own = make_payload(0, device="edge-01")
    foreign = make_payload(0, device="edge-02")
    stored = ["thermoscreen/edge-01/cam0/stored", "thermoscreen/edge-02/cam0/stored"]
    try:
        device = Publisher("127.0.0.1", port, "edge-01", "edge-01", PASSWORDS["edge-01"], ca)
        reader = Publisher("127.0.0.1", port, "logger-pub", "logger", PASSWORDS["logger"], ca)
        with device, reader:
            denied = [
                device.publish(result_topic(foreign), str(foreign)),
                device.publish("thermoscreen/edge-02/status", "offline", retain=True),
                device.publish(stored[1], "{}"),  # no confirming another device's results
            ]
            denied_reader = [
                reader.publish(result_topic(own), str(own)),
                reader.publish("thermoscreen/logger/status", "online"),
            ]
            confirmations = [reader.publish(topic, "{}") for topic in stored]
            reader.wait_acked([*denied_reader, *confirmations])
            marker = device.publish(result_topic(own), str(own))  # allowed: its own prefix
            device.wait_acked([*denied, marker])
            # the broker forwards in order: once the marker is here, nothing earlier is coming
            wait_until(lambda: result_topic(own) in sub.received, 20, "the allowed message")
            wait_until(lambda: stored[1] in edge02.received, 20, "edge-02's confirmation")
        assert sorted(sub.received) == sorted([result_topic(own), *stored])
        assert edge02.received == [stored[1]]  # not edge-01's confirmation, no results
        assert [device.acked[m] for m in denied] == ["Not authorized"] * 3
        assert [reader.acked[m] for m in denied_reader] == ["Not authorized"] * 2
        assert [reader.acked[m] for m in confirmations] == ["Success"] * 2
        assert device.acked[marker] == "Success"
    finally:
        sub.close()
        edge02.close()


def test_a_device_account_cannot_take_over_the_loggers_session(
    secure_broker: Broker, tmp_path: Path, pki: Pki
) -> None:
    """A device connecting with the logger's client id (clean start) used to make the broker
    drop the logger's persistent session and every result queued in it."""
    port, ca, db = secure_broker.port, pki.ca, tmp_path / "results.sqlite"
    logger = _logger(secure_broker, tmp_path, ca, "logger", PASSWORDS["logger"]).start()
    logger.wait_subscribed()
    assert logger.stop() == 0  # offline: the broker queues results for its session
    payloads = [make_payload(i, device="edge-01") for i in range(5)]
    with Publisher("127.0.0.1", port, "edge-01", "edge-01", PASSWORDS["edge-01"], ca) as dev:
        dev.wait_acked(dev.publish_results(payloads))
    for client_id in ("thermoscreen-logger", "logger"):  # its --client-id, its account name
        with Publisher("127.0.0.1", port, client_id, "edge-02", PASSWORDS["edge-02"], ca) as thief:
            assert thief.connect_rc == ["Success"]
    logger = _logger(secure_broker, tmp_path, ca, "logger", PASSWORDS["logger"]).start()
    logger.wait_subscribed()
    wait_until(lambda: db.exists() and count_rows(db, "results") == 5, 30, "the queued results")
    # and while the logger is online, a device taking its id does not disconnect it
    with Publisher("127.0.0.1", port, "thermoscreen-logger", "edge-02", PASSWORDS["edge-02"], ca):
        pass
    with Publisher("127.0.0.1", port, "edge-01", "edge-01", PASSWORDS["edge-01"], ca) as dev:
        dev.wait_acked(dev.publish_results([make_payload(5, device="edge-01")]))
    wait_until(lambda: count_rows(db, "results") == 6, 30, "a result after the attempt")
    assert logger.stop() == 0
    assert "lost broker" not in logger.text()
    assert stored_seqs(db, "sess-1") == list(range(6))


def test_results_the_acl_refuses_are_reported_undeliverable(
    secure_broker: Broker, tmp_path: Path, pki: Pki, tiny_model: Path
) -> None:
    """They used to stay in the outbox for ever while the summary said "nothing is lost"."""
    frames = 3
    recording = make_png16_recording(tmp_path / "rec", frames)
    env = _client_env("edge-01", PASSWORDS["edge-01"], pki.ca)
    outbox, log = tmp_path / "outbox.sqlite", tmp_path / "run.log"
    run = run_pipeline(
        recording, tiny_model, secure_broker.port, outbox, "--device-id", "edge-02",
        "--flush-timeout", "20", env=env, log_path=log,
    )  # fmt: skip
    assert run.wait(timeout=120) == 4, log.read_text()  # results lost: their own status
    text = log.read_text()
    assert (
        f"outbox: {frames + 1} messages undeliverable: the broker refused a message (135 Not "
        "authorized): the broker's ACL does not let this account publish there: the MQTT user "
        "name must be the device id"
    ) in text
    assert count_rows(outbox, "outbox") == 0
    assert count_rows(outbox, "refused") == frames + 1  # the results and the session summary


def test_logger_without_tls_at_the_tls_port_exits_with_the_hint(
    secure_broker: Broker, tmp_path: Path
) -> None:
    """It used to retry forever, each attempt reset by the TLS listener, with no hint."""
    args = ["--broker", f"127.0.0.1:{secure_broker.port}", "--db", str(tmp_path / "r.sqlite")]
    env = {"THERMOSCREEN_MQTT_USERNAME": "logger", "THERMOSCREEN_MQTT_PASSWORD": "x"}
    logger = LoggerProcess(tmp_path, args, env=env).start()
    assert logger.wait(timeout_s=60) == 3
    line = [ln for ln in logger.text().splitlines() if ln.startswith("thermoscreen log:")]
    assert line == [
        f"thermoscreen log: broker 127.0.0.1:{secure_broker.port} closed the connection before "
        "answering CONNECT: if that port is a TLS listener, connect with TLS "
        "(mqtt.tls.enabled: true; log: --tls)"
    ]


def test_pipeline_without_tls_at_the_tls_port_says_why_its_results_wait(
    secure_broker: Broker, tmp_path: Path, tiny_model: Path
) -> None:
    """It used to exit 3 with no reason at all."""
    recording = make_png16_recording(tmp_path / "rec", 2)
    env = {"THERMOSCREEN_MQTT_USERNAME": "edge-01", "THERMOSCREEN_MQTT_PASSWORD": "x"}
    log = tmp_path / "run.log"
    run = run_pipeline(
        recording, tiny_model, secure_broker.port, tmp_path / "outbox.sqlite",
        "--flush-timeout", "5", env=env, log_path=log,
    )  # fmt: skip
    assert run.wait(timeout=120) == 3
    text = log.read_text()
    assert "closed the connection before answering CONNECT: if that port is a TLS listener" in text
    assert "messages are still waiting in the outbox" in text


def test_shipped_acl_lets_operators_drive_exams_and_sensors_report_the_room(
    secure_broker: Broker,
    pki: Pki,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device reads the exam commands for its cameras and its rooms' sensors; an operator
    sends commands and reads the answers; a sensor publishes the room; other devices and
    dashboards can do neither."""
    port, ca = secure_broker.port, pki.ca
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        **_client_env("edge-01", PASSWORDS["edge-01"], ca),
        "THERMOSCREEN_EXAM__AMBIENT_TOPIC": "thermoscreen/edge-01/cam0/ambient",
    }
    args = ["run", "test://?fps=5&width=96&height=72", "--model", str(tiny_model)]
    args += ["--broker", f"127.0.0.1:{port}", "--device-id", "edge-01", "--log-level", "ERROR"]
    args += ["--outbox", str(tmp_path / "outbox.sqlite"), "--exams-dir", str(tmp_path / "exams")]
    device = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, cwd=REPO)
    monkeypatch.setenv("THERMOSCREEN_MQTT_PASSWORD", PASSWORDS["operator"])
    settings = {"device_id": "edge-01", "mqtt.port": port, "mqtt.username": "operator"}
    settings |= {"mqtt.tls.enabled": True, "mqtt.tls.ca_file": str(ca)}
    operator = load_config(None, settings, env={})

    def command(**data: Any) -> dict[str, Any]:
        exchange = Exchange(operator, data)
        exchange.run(60)
        assert exchange.failure is None and exchange.answer is not None, "no answer"
        return exchange.answer

    try:
        watch = _Subscriber(port, ca, "operator")  # it may read the cameras' exam states
        try:
            up = "thermoscreen/edge-01/cam0/exam"
            wait_until(lambda: up in watch.received, 60, "the device's retained exam state")
        finally:
            watch.close()  # one client id per account: the commands below reuse it
        assert command(action="start", exam_id="SEC-1")["state"] == "acclimatizing"
        with Publisher("127.0.0.1", port, "sensor", "sensor", PASSWORDS["sensor"], ca) as room:
            room.wait_acked(
                [room.publish("thermoscreen/edge-01/cam0/ambient", '{"ambient_c": 23.5}')]
            )
            assert room.acked == {m: "Success" for m in room.acked}
        # a refused command changes nothing and answers with the state: the sensor's reading
        assert wait_until(lambda: command(action="close")["ambient_c"] == 23.5, 30, "ambient")
        strangers = [
            Publisher("127.0.0.1", port, "edge-02", "edge-02", PASSWORDS["edge-02"], ca),
            Publisher("127.0.0.1", port, "dash-pub", "dashboard", PASSWORDS["dashboard"], ca),
        ]
        for stranger in strangers:
            with stranger:
                mid = stranger.publish("thermoscreen/edge-01/cam0/exam/set", '{"action":"abort"}')
                stranger.wait_acked([mid])
                assert stranger.acked[mid] == "Not authorized"
        assert command(action="ready", reason="ACL test")["state"] == "ready"
        assert command(action="view", view="frontal")["state"] == "capturing"
        assert command(action="close")["state"] == "closed"
    finally:
        device.send_signal(signal.SIGTERM)
        device.wait(60)
