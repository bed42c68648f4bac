"""The MQTT publisher against a real mosquitto: topics, QoS, retained status, Last Will, and no
result lost across a broker outage or a crash of the publishing process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pipeline.config import MqttConfig, OutboxConfig
from pipeline.mqtt.payload import schema_errors
from pipeline.mqtt.publisher import Publisher, PublisherStopped
from pipeline.types import FrameResult, ModelInfo, Prediction, ThermalStats, TopK
from tests.conftest import REPO, Broker, free_port
from tests.helpers.wait import wait_until

DEVICE = "dev1"
MODEL = ModelInfo(name="tiny", version="1", sha256="a" * 64, backend="onnxruntime")
WAIT_S = 20.0  # generous upper bound on waits; tests finish as soon as the condition holds


def make_result(seq: int, camera_id: str = "cam0", session_id: str = "s1") -> FrameResult:
    pred = Prediction(
        label="healthy",
        index=0,
        score=0.875,
        scores=(0.875, 0.125),
        top_k=(TopK(0, "healthy", 0.875), TopK(1, "sick", 0.125)),
        inference_ms=2.5,
    )
    return FrameResult(
        session_id=session_id,
        mode="replay",
        camera_id=camera_id,
        seq=seq,
        frame_index=seq,
        capture_ts=time.time(),
        source="dmr://test",
        prediction=pred,
        thermal=ThermalStats(22.5, 35.25, 30.0),
        capture_to_result_ms=4.0,
    )


def mqtt_config(broker: Broker, **overrides: object) -> MqttConfig:
    """Short keepalive and backoff so that reconnects in tests take well under a second."""
    base: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": 5,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "result_expiry_s": 3600,
    }
    base.update(overrides)
    return MqttConfig.model_validate(base)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Properties | None


class Collector:
    """A real subscriber, like the logger: fixed client id, persistent session, QoS 1, so the
    broker queues for it while it reconnects after a broker restart."""

    def __init__(self, broker: Broker, topic: str = "thermoscreen/#") -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"collector-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), "collector could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain), msg.properties))

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def result_ids(self, topic: str = "thermoscreen/dev1/cam0/result") -> list[str]:
        return [json.loads(m.payload)["message_id"] for m in self.on(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(broker: Broker, topic: str) -> bytes | None:
    """What a new subscriber gets as the retained message on `topic` (None if nothing)."""
    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(msg.payload)
            done.set()

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    done.wait(2.0)  # retained messages arrive right after SUBACK, or not at all
    client.disconnect()
    client.loop_stop()
    return got[-1] if got else None


@pytest.fixture
def collector(broker: Broker) -> Iterator[Collector]:
    c = Collector(broker)
    yield c
    c.close()


@pytest.fixture
def publishers() -> Iterator[list[Publisher]]:
    """Publishers a test started; stopped at the end even when the test fails."""
    started: list[Publisher] = []
    yield started
    for p in started:
        p.stop(flush_timeout_s=0.5)


def start_publisher(
    publishers: list[Publisher], mqtt_cfg: MqttConfig, outbox: OutboxConfig | None
) -> Publisher:
    pub = Publisher(mqtt_cfg, DEVICE, outbox)
    pub.start()
    publishers.append(pub)
    return pub


# -- contract ---------------------------------------------------------------------------------


def test_results_arrive_in_order_schema_valid_with_expiry_and_status(
    broker: Broker, collector: Collector, tmp_path: Path, publishers: list[Publisher]
) -> None:
    pub = start_publisher(publishers, mqtt_config(broker), OutboxConfig(path=tmp_path / "o.sqlite"))
    assert wait_until(lambda: pub.connected)
    assert wait_until(lambda: retained(broker, "thermoscreen/dev1/status") == b"online")

    sent = [pub.publish_result(make_result(i), MODEL) for i in range(40)]
    assert wait_until(lambda: len(collector.result_ids()) >= 40)
    results = collector.on("thermoscreen/dev1/cam0/result")
    payloads = [json.loads(m.payload) for m in results]
    assert [p["message_id"] for p in payloads] == sent
    assert [p["seq"] for p in payloads] == list(range(40))
    for m, p in zip(results, payloads, strict=True):
        assert schema_errors(p) == []
        assert p["device_id"] == DEVICE and p["model"]["sha256"] == "a" * 64
        assert m.retain is False
        assert m.properties is not None
        assert 0 < m.properties.MessageExpiryInterval <= 3600
        assert m.properties.ContentType == "application/json"

    assert pub.stop() is True
    stats = pub.stats()
    assert stats.acked == 40 and stats.pending == 0 and stats.dropped_full == 0
    assert retained(broker, "thermoscreen/dev1/status") == b"stopped"
    with pytest.raises(PublisherStopped):
        pub.publish_result(make_result(40), MODEL)


def test_one_thread_runs_the_client_and_keeps_an_idle_connection_alive(
    broker: Broker, collector: Collector, publishers: list[Publisher]
) -> None:
    # The client thread runs paho's network loop itself: no paho thread, and its keepalive (a
    # PINGREQ every 5 s) holds the connection through 12 s without a message (mosquitto drops
    # a silent client after 8-11 s).
    pub = start_publisher(publishers, mqtt_config(broker), None)
    assert wait_until(lambda: pub.connected)
    names = [t.name for t in threading.enumerate()]
    assert "mqtt-publisher" in names
    assert f"paho-mqtt-client-thermoscreen-{DEVICE}" not in names  # the collector has its own
    time.sleep(12.0)
    assert pub.connected and pub.stats().connects == 1
    sent = pub.publish_result(make_result(0), MODEL)
    assert wait_until(lambda: collector.result_ids() == [sent])
    assert pub.stop() is True and pub.stats().acked == 1


def test_state_is_retained_session_durable_stats_qos0(
    broker: Broker, collector: Collector, publishers: list[Publisher]
) -> None:
    pub = start_publisher(publishers, mqtt_config(broker), None)
    assert wait_until(lambda: pub.connected)
    pub.publish_state("cam0", {"verdict": "healthy", "frames": 3})
    pub.publish_session("cam0", {"session_id": "s1", "verdict": "healthy"})
    pub.publish_stats({"fps": 12.5})
    assert wait_until(lambda: len(collector.on("thermoscreen/dev1/stats")) == 1)
    assert wait_until(lambda: len(collector.on("thermoscreen/dev1/cam0/session")) == 1)
    assert (
        json.loads(collector.on("thermoscreen/dev1/cam0/session")[0].payload)["session_id"] == "s1"
    )
    assert wait_until(lambda: pub.stats().pending == 0)
    state = retained(broker, "thermoscreen/dev1/cam0/state")
    assert state is not None and json.loads(state) == {"verdict": "healthy", "frames": 3}
    assert retained(broker, "thermoscreen/dev1/stats") is None  # stats are not retained


def test_offline_state_keeps_only_the_newest_and_stats_are_dropped_and_counted(
    broker: Broker, publishers: list[Publisher]
) -> None:
    broker.stop()
    pub = start_publisher(publishers, mqtt_config(broker), None)
    for frames in (1, 2, 3):
        pub.publish_state("cam0", {"verdict": "healthy", "frames": frames})
    pub.publish_stats({"fps": 1.0})
    assert wait_until(lambda: pub.stats().stats_dropped == 1)
    broker.start()
    assert wait_until(lambda: pub.connected)
    assert wait_until(lambda: retained(broker, "thermoscreen/dev1/cam0/state") is not None)
    state = retained(broker, "thermoscreen/dev1/cam0/state")
    assert state is not None and json.loads(state)["frames"] == 3


def test_bad_ids_and_topic_levels_raise_at_once(broker: Broker) -> None:
    for device in ("", "a/b", "a+b", "a#", "x" * 65):
        with pytest.raises(ValueError, match="device_id"):
            Publisher(mqtt_config(broker), device)
    pub = Publisher(mqtt_config(broker), DEVICE)
    with pytest.raises(ValueError, match="topic level"):
        pub.topic("cam/0")
    with pytest.raises(ValueError, match="camera_id"):
        pub.publish_result(make_result(0, camera_id="cam+0"), MODEL)
    with pytest.raises(ValueError, match="camera_id"):
        pub.publish_state("", {})
    assert pub.topic("cam0", "result") == "thermoscreen/dev1/cam0/result"
    assert pub.stop(flush_timeout_s=0.1) is True  # never started, nothing stored


# -- outages ----------------------------------------------------------------------------------


def test_broker_down_at_start_queues_then_delivers_exactly_the_set(
    broker: Broker, tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker.stop()
    pub = start_publisher(publishers, mqtt_config(broker), OutboxConfig(path=tmp_path / "o.sqlite"))
    sent = {pub.publish_result(make_result(i), MODEL) for i in range(30)}  # returns, no hang
    assert pub.stats().pending == 30
    assert wait_until(lambda: pub.last_error is not None)
    assert "connection refused" in str(pub.last_error)
    assert pub.connected is False and pub.fatal_error is None  # refused: retry, not fatal

    broker.start()
    collector = Collector(broker)
    try:
        assert wait_until(lambda: set(collector.result_ids()) == sent)
        assert wait_until(lambda: pub.stats().pending == 0)
        assert pub.stop() is True
        assert set(collector.result_ids()) == sent
    finally:
        collector.close()


def test_broker_restart_mid_stream_loses_no_result(
    broker: Broker, collector: Collector, tmp_path: Path, publishers: list[Publisher]
) -> None:
    pub = start_publisher(publishers, mqtt_config(broker), OutboxConfig(path=tmp_path / "o.sqlite"))
    assert wait_until(lambda: pub.connected)
    sent: list[str] = []

    def produce() -> None:
        for i in range(300):
            sent.append(pub.publish_result(make_result(i), MODEL))
            time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    assert wait_until(lambda: len(sent) >= 60)
    broker.stop()
    assert wait_until(lambda: not pub.connected)
    time.sleep(0.3)  # results keep coming while the broker is down
    broker.start()
    producer.join(WAIT_S)
    assert not producer.is_alive()

    def missing() -> str:
        seqs = sorted(sent.index(m) for m in set(sent) - set(collector.result_ids()))
        return f"missing seqs {seqs}; {pub.stats()}; {broker.log_text()[-3000:]}"

    wait_until(lambda: set(sent) <= set(collector.result_ids()), what=missing)
    assert pub.stop() is True
    received = collector.result_ids()
    assert set(received) == set(sent)  # at least once, none missing
    stats = pub.stats()
    assert stats.reconnects >= 1 and stats.acked >= 300
    online = [m for m in collector.on("thermoscreen/dev1/status") if m.payload == b"online"]
    assert len(online) >= 2  # `online` again after the reconnect


def test_block_when_full_waits_and_stop_releases_the_producer(
    broker: Broker, tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker.stop()
    outbox = OutboxConfig(path=tmp_path / "o.sqlite", max_messages=3, when_full="block")
    pub = start_publisher(publishers, mqtt_config(broker), outbox)
    for i in range(3):
        pub.publish_result(make_result(i), MODEL)
    outcome: list[BaseException] = []

    def producer() -> None:
        try:
            pub.publish_result(make_result(3), MODEL)
        except PublisherStopped as exc:
            outcome.append(exc)

    t = threading.Thread(target=producer)
    t.start()
    t.join(0.5)
    assert t.is_alive()  # full and the broker is down: the replay producer waits
    assert pub.stop(flush_timeout_s=0.2) is False  # nothing could be acked
    t.join(WAIT_S)
    assert not t.is_alive() and len(outcome) == 1
    assert pub.stats().pending == 3 and pub.stats().dropped_full == 0


def test_drop_oldest_when_full_counts_and_keeps_the_newest(
    broker: Broker, tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker.stop()
    outbox = OutboxConfig(path=tmp_path / "o.sqlite", max_messages=5, when_full="drop_oldest")
    pub = start_publisher(publishers, mqtt_config(broker), outbox)
    sent = [pub.publish_result(make_result(i), MODEL) for i in range(12)]
    assert pub.stats().dropped_full == 7 and pub.stats().pending == 5

    broker.start()
    collector = Collector(broker)
    try:
        assert wait_until(lambda: pub.stats().pending == 0)
        assert wait_until(lambda: set(collector.result_ids()) == set(sent[-5:]))
    finally:
        collector.close()


def test_stop_with_broker_down_keeps_results_for_the_next_start(
    broker: Broker, tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker.stop()
    outbox = OutboxConfig(path=tmp_path / "o.sqlite")
    first = Publisher(mqtt_config(broker), DEVICE, outbox)
    first.start()
    sent = {first.publish_result(make_result(i), MODEL) for i in range(5)}
    assert first.stop(flush_timeout_s=0.2) is False

    broker.start()
    collector = Collector(broker)
    try:
        second = start_publisher(publishers, mqtt_config(broker), outbox)
        assert wait_until(lambda: set(collector.result_ids()) == sent)
        assert second.stop() is True
    finally:
        collector.close()


# -- the publishing process dies --------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pipeline.config import MqttConfig, OutboxConfig
    from pipeline.mqtt.publisher import Publisher
    from tests.integration.test_publish import MODEL, make_result

    port, outbox_path, n, online = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    cfg = MqttConfig(port=port, keepalive_s=5, reconnect_min_s=0.1, reconnect_max_s=0.5)
    pub = Publisher(cfg, "dev1", OutboxConfig(path=Path(outbox_path)))
    pub.start()
    if online == "1":
        while not pub.connected:
            time.sleep(0.02)
        print("connected", flush=True)
        sys.stdin.readline()  # the test's go-ahead
    for i in range(n):
        print(pub.publish_result(make_result(i), MODEL), flush=True)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def run_child(
    port: int, outbox_path: Path, n: int, when_connected: Callable[[], None] | None = None
) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a publisher process that publishes `n` results, after connecting and calling
    `when_connected` if given; return it with the message ids it printed before 'ready'."""
    online = when_connected is not None
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(port), str(outbox_path), str(n), str(int(online))],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stdin is not None
    ids: list[str] = []
    for line in proc.stdout:
        word = line.strip()
        if word == "ready":
            return proc, ids
        if word == "connected" and when_connected is not None:
            when_connected()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            continue
        ids.append(word)
    proc.wait()
    raise AssertionError(f"publisher process exited with {proc.returncode} before it was ready")


def sigkill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(WAIT_S)
    for stream in (proc.stdout, proc.stdin):
        if stream is not None:
            stream.close()


def test_last_will_offline_when_the_publisher_process_is_killed(
    broker: Broker, collector: Collector, tmp_path: Path
) -> None:
    proc, _ = run_child(broker.port, tmp_path / "o.sqlite", 0, when_connected=lambda: None)
    try:
        assert wait_until(lambda: retained(broker, "thermoscreen/dev1/status") == b"online")
    finally:
        sigkill(proc)
    status = "thermoscreen/dev1/status"
    assert wait_until(lambda: [m.payload for m in collector.on(status)][-1:] == [b"offline"])
    assert retained(broker, status) == b"offline"


def test_results_of_a_killed_process_are_delivered_by_the_next_publisher(
    broker: Broker, tmp_path: Path, publishers: list[Publisher]
) -> None:
    broker.stop()
    outbox_path = tmp_path / "o.sqlite"
    proc, sent = run_child(broker.port, outbox_path, 25)
    sigkill(proc)  # no clean stop: the results exist only in the outbox file
    assert len(sent) == 25

    broker.start()
    collector = Collector(broker)
    try:
        pub = start_publisher(publishers, mqtt_config(broker), OutboxConfig(path=outbox_path))
        assert wait_until(lambda: set(collector.result_ids()) == set(sent))
        assert collector.result_ids() == sent  # re-sent in id order
        assert pub.stop() is True
    finally:
        collector.close()


def test_sent_but_unacked_results_of_a_killed_process_are_resent_and_counted(
    broker: Broker, collector: Collector, tmp_path: Path, publishers: list[Publisher]
) -> None:
    """The broker is frozen (SIGSTOP) so the results go out but no PUBACK comes back; the
    process dies; the next publisher sends them again and counts them as re-sends."""
    assert broker.proc is not None
    outbox_path = tmp_path / "o.sqlite"
    n = 10
    proc, sent = run_child(
        broker.port, outbox_path, n, when_connected=lambda: broker.proc.send_signal(signal.SIGSTOP)
    )
    try:

        def attempted() -> int:
            with sqlite3.connect(outbox_path) as db:
                return int(
                    db.execute("SELECT COUNT(*) FROM outbox WHERE attempts > 0").fetchone()[0]
                )

        assert wait_until(lambda: attempted() == n)  # handed to the client, never acked
    finally:
        sigkill(proc)
        broker.proc.send_signal(signal.SIGCONT)

    pub = start_publisher(publishers, mqtt_config(broker), OutboxConfig(path=outbox_path))
    assert wait_until(lambda: set(sent) <= set(collector.result_ids()))
    assert wait_until(lambda: pub.stats().pending == 0)
    assert pub.stats().resent == n  # every one of them may be a duplicate downstream
    assert pub.stop() is True


# -- authentication and TLS: fatal errors the CLI can report in one line ---------------------


def _start_broker(tmp_path: Path, name: str, listener_lines: str) -> Broker:
    port = free_port()
    workdir = tmp_path / name
    workdir.mkdir()
    text = f"listener {port} 127.0.0.1\n{listener_lines}"  # the fixture adds `user root` as root
    b = Broker(port=port, workdir=workdir, config_text=text)
    b.start()
    return b


def test_bad_credentials_are_fatal_and_named_then_env_credentials_connect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, publishers: list[Publisher]
) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "edge", "s3cret"], check=True, timeout=30
    )
    passwd.chmod(0o600)
    broker = _start_broker(tmp_path, "auth", f"allow_anonymous false\npassword_file {passwd}\n")
    try:
        monkeypatch.setenv("THERMOSCREEN_MQTT_USERNAME", "edge")
        monkeypatch.setenv("THERMOSCREEN_MQTT_PASSWORD", "wrong")
        pub = start_publisher(publishers, mqtt_config(broker), None)
        assert wait_until(lambda: pub.fatal_error is not None)
        assert "check $THERMOSCREEN_MQTT_USERNAME and $THERMOSCREEN_MQTT_PASSWORD" in str(
            pub.fatal_error
        )
        assert pub.connected is False and pub.last_error == pub.fatal_error

        monkeypatch.setenv("THERMOSCREEN_MQTT_PASSWORD", "s3cret")
        good = Publisher(mqtt_config(broker), "dev2")
        good.start()
        publishers.append(good)
        assert wait_until(lambda: good.connected)
        assert good.fatal_error is None
    finally:
        for p in publishers:
            p.stop(flush_timeout_s=0.2)
        broker.stop()


def _make_ca_and_server_cert(folder: Path, ca_name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt = folder / "server.key", folder / "server.csr", folder / "server.crt"
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    cmds = [
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt, "-days", "1",
         "-subj", f"/CN={ca_name}"],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
         "-CAcreateserial", "-out", crt, "-days", "1", "-extfile", ext],
    ]  # fmt: skip
    for cmd in cmds:
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=30)
    return ca_crt, crt, key


def test_tls_verify_failure_is_fatal_and_names_ca_file_then_right_ca_connects(
    tmp_path: Path, publishers: list[Publisher]
) -> None:
    ca, crt, key = _make_ca_and_server_cert(tmp_path / "pki", "thermoscreen-test-ca")
    other_ca, _, _ = _make_ca_and_server_cert(tmp_path / "other", "some-other-ca")
    broker = _start_broker(
        tmp_path, "tls", f"allow_anonymous true\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n"
    )
    try:
        wrong = start_publisher(
            publishers, mqtt_config(broker, tls={"enabled": True, "ca_file": other_ca}), None
        )
        assert wait_until(lambda: wrong.fatal_error is not None)
        assert "TLS certificate verify failed" in str(wrong.fatal_error)
        assert "mqtt.tls.ca_file" in str(wrong.fatal_error)

        right = Publisher(mqtt_config(broker, tls={"enabled": True, "ca_file": ca}), "dev2")
        right.start()
        publishers.append(right)
        assert wait_until(lambda: right.connected)
        right.publish_result(make_result(0), MODEL)
        assert wait_until(lambda: right.stats().acked == 1)
    finally:
        for p in publishers:
            p.stop(flush_timeout_s=0.2)
        broker.stop()


def test_missing_tls_file_raises_at_once(broker: Broker, tmp_path: Path) -> None:
    cfg = mqtt_config(broker, tls={"enabled": True, "ca_file": tmp_path / "nope.crt"})
    with pytest.raises(ValueError, match=r"mqtt\.tls\.ca_file .*nope\.crt: file not found"):
        Publisher(cfg, DEVICE)


# -- throughput (reported, not asserted: no timing assertions) --------------------------------


def test_throughput_2000_results_all_acked_in_order(
    broker: Broker, collector: Collector, tmp_path: Path, publishers: list[Publisher]
) -> None:
    """Run with -s to see the rates: publish_result calls/s (payload, outbox commit) and
    results/s acknowledged by a local mosquitto, with this subscriber in the same process."""
    pub = start_publisher(publishers, mqtt_config(broker), OutboxConfig(path=tmp_path / "o.sqlite"))
    assert wait_until(lambda: pub.connected)
    n = 2000
    t0 = time.perf_counter()
    sent = [pub.publish_result(make_result(i), MODEL) for i in range(n)]
    t1 = time.perf_counter()
    assert wait_until(lambda: pub.stats().pending == 0, 60.0)
    t2 = time.perf_counter()
    assert wait_until(lambda: len(collector.result_ids()) >= n)
    assert collector.result_ids() == sent
    print(
        f"\npublish_result: {n / (t1 - t0):.0f}/s; acked end-to-end: {n / (t2 - t0):.0f}/s "
        f"({n} results, outbox synchronous=normal)"
    )
