"""`thermoscreen log` against a real mosquitto: store once, reject bad input, survive restarts."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.cli import main as cli_main
from pipeline.logger.store import open_store
from pipeline.logger.subscriber import subscriptions
from pipeline.mqtt.payload import encode
from pipeline.run.session import Session, VerdictPolicy
from pipeline.types import Frame, FrameKind, Prediction
from tests.conftest import Broker
from tests.helpers.mqtt_logger import (
    LoggerProcess,
    Publisher,
    make_payload,
    result_topic,
    stored_ids,
    stored_seqs,
)
from tests.helpers.postgres import fresh_database, postgres_server, unavailable_reason
from tests.helpers.wait import wait_until


def _logger(broker: Broker, tmp_path: Path, db: Path | str, *extra: str) -> LoggerProcess:
    args = ["--broker", f"127.0.0.1:{broker.port}", "--db", str(db), *extra]
    return LoggerProcess(tmp_path, args)


def test_each_result_is_stored_once_and_duplicates_are_counted(
    broker: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "results.sqlite"
    logger = _logger(broker, tmp_path, db).start()
    logger.wait_subscribed()
    payloads = [make_payload(seq) for seq in range(20)]
    with Publisher(broker.host, broker.port) as pub:
        pub.wait_acked(pub.publish_results(payloads))
        pub.wait_acked(pub.publish_results(payloads[:5]))  # re-sends keep their message_id
        wait_until(lambda: "duplicates=5" in logger.text() or _dups(db) == 5, 20, "5 duplicates")
    assert logger.stop() == 0
    assert stored_seqs(db, "sess-1") == list(range(20))
    assert stored_ids(db) == {p["message_id"] for p in payloads}
    assert "stored=20 duplicates=5 rejects=0" in logger.text()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = conn.execute("SELECT payload, label, score FROM results WHERE seq = 7").fetchone()
    assert json.loads(row[0]) == payloads[7]
    assert (row[1], row[2]) == ("healthy", 0.75)


def _dups(db: Path) -> int:
    if not db.exists():
        return 0
    store = open_store(db)
    try:
        return store.counts().duplicates
    finally:
        store.close()


def test_bad_input_is_kept_in_rejects_and_the_logger_keeps_running(
    broker: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "results.sqlite"
    # thermoscreen/# also delivers topics outside the contract, which must be rejected, not lost
    logger = _logger(broker, tmp_path, db, "--subscribe", "thermoscreen/#").start()
    logger.wait_subscribed()
    wrong_version = make_payload(0) | {"schema": 3}
    missing_field = make_payload(1)
    del missing_field["result"]
    oversized = b'{"pad":"' + b"x" * (70 * 1024) + b'"}'
    other_device = make_payload(2, device="edge-02")
    bad = [
        ("thermoscreen/edge-01/cam0/result", b"{not json", "not valid JSON"),
        (
            "thermoscreen/edge-01/cam0/result",
            encode(wrong_version),
            "result schema: schema: 3 is not one of [1, 2]",
        ),
        ("thermoscreen/edge-01/cam0/result", encode(missing_field), "'result' is a required"),
        ("thermoscreen/edge-01/cam0/result", oversized, "oversized: 71690 bytes"),
        ("thermoscreen/edge-01/cam0/telemetry", b"{}", "unknown topic kind 'telemetry'"),
        ("thermoscreen/edge 01/cam0/result", encode(make_payload(3)), "unknown topic: id"),
        ("thermoscreen/edge-01/cam0/result", encode(other_device), "differ from payload"),
        ("thermoscreen/edge-01/status", b"rebooting", "status: 'rebooting'"),
    ]
    good = make_payload(4)
    with Publisher(broker.host, broker.port) as pub:
        mids = [pub.publish(topic, raw) for topic, raw, _ in bad]
        mids += pub.publish_results([good])
        pub.wait_acked(mids)
        wait_until(lambda: good["message_id"] in stored_ids(db), 20, "the valid result")
    assert logger.proc is not None and logger.proc.poll() is None, "a reject stopped the logger"
    assert logger.stop() == 0

    store = open_store(db)
    rejects = store.rejects()
    assert store.message_ids() == {good["message_id"]}
    store.close()
    assert len(rejects) == len(bad)
    for (topic, raw, reason), row in zip(bad, rejects, strict=True):
        assert row.topic == topic
        assert reason in row.reason
        assert row.size_bytes == len(raw)
        if raw is oversized:
            assert row.raw == raw[:4096]  # bounded, original size noted
        else:
            assert row.raw == raw
    text = logger.text()
    assert text.count("reject thermoscreen/") == len(bad)
    assert f"stored=1 duplicates=0 rejects={len(bad)}" in text


def _session_messages() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Two rolling states and the final summary of a real Session (the pipeline's own code)."""
    policy = VerdictPolicy(labels=("healthy", "sick"), window_frames=3)
    session = Session("replay", "cam0", "edge-01", "file://rec.mp4", policy, session_id="sess-1")
    for i, p_sick in enumerate((0.2, 0.9, 0.8)):
        frame = Frame(np.zeros((2, 2), np.uint8), FrameKind.GRAY8, i, "rec", 1.0 * i, 0)
        label, score = ("sick", p_sick) if p_sick > 0.5 else ("healthy", 1 - p_sick)
        session.add(
            frame, Prediction(label, int(p_sick > 0.5), score, (1 - p_sick, p_sick)), None, 1.0
        )
        if i == 0:
            first = session.state_payload()
    last = session.state_payload()
    session.end("eos")
    return first, last, session.summary_payload()


def test_states_sessions_and_statuses_are_kept(broker: Broker, tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    logger = _logger(broker, tmp_path, db).start()
    logger.wait_subscribed()
    state1, state2, summary = _session_messages()
    assert summary["rolling_verdict"]["label"] == "sick"
    with Publisher(broker.host, broker.port) as pub:
        mids = [
            pub.publish("thermoscreen/edge-01/status", "online", retain=True),
            pub.publish("thermoscreen/edge-01/cam0/state", encode(state1), retain=True),
            pub.publish("thermoscreen/edge-01/cam0/state", encode(state2), retain=True),
            pub.publish("thermoscreen/edge-01/cam0/session", encode(summary)),
            pub.publish("thermoscreen/edge-01/cam0/session", encode(summary | {"frames": -1})),
            pub.publish("thermoscreen/edge-01/status", "stopped", retain=True),
        ]
        pub.wait_acked(mids)
    wait_until(lambda: "statuses=2" in logger.text(), 20, "two statuses counted")
    assert logger.stop() == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM statuses").fetchall() == [("stopped",)]
        states = conn.execute("SELECT device, camera, payload FROM states").fetchall()
        assert [(d, c, json.loads(p)) for d, c, p in states] == [("edge-01", "cam0", state2)]
        sessions = conn.execute("SELECT session, payload FROM sessions").fetchall()
        assert [(s, json.loads(p)) for s, p in sessions] == [("sess-1", summary)]
        reasons = [r[0] for r in conn.execute("SELECT reason FROM rejects")]
    assert reasons == ["session schema: frames: -1 is less than the minimum of 0"]


def test_results_published_while_the_logger_is_down_arrive_when_it_returns(
    broker: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "results.sqlite"
    logger = _logger(broker, tmp_path, db).start()
    logger.wait_subscribed()
    assert logger.stop() == 0  # clean exit; the broker keeps its persistent session
    payloads = [make_payload(seq) for seq in range(30)]
    with Publisher(broker.host, broker.port) as pub:
        pub.wait_acked(pub.publish_results(payloads))
    logger = _logger(broker, tmp_path, db, "--exit-after-idle", "2").start()
    assert logger.wait(timeout_s=60) == 0
    assert stored_seqs(db, "sess-1") == list(range(30))
    assert "session present: True" in logger.text()


def test_logger_sigkilled_mid_stream_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    """Killed between receipt and commit, messages stay unacknowledged at the broker and are
    re-sent to the restarted logger; the message_id key keeps each result once."""
    db = tmp_path / "results.sqlite"
    n = 400
    payloads = [make_payload(seq) for seq in range(n)]
    logger = _logger(broker, tmp_path, db).start()
    logger.wait_subscribed()
    with Publisher(broker.host, broker.port) as pub:
        sent = threading.Event()

        def publish() -> None:  # a paced stream (20 every 50 ms) so the kill lands inside it
            mids: list[int] = []
            for start in range(0, n, 20):
                mids += pub.publish_results(payloads[start : start + 20])
                time.sleep(0.05)
            pub.wait_acked(mids, timeout_s=60)
            sent.set()

        thread = threading.Thread(target=publish)
        thread.start()
        wait_until(lambda: len(stored_ids(db)) >= 50, 30, "50 results before the kill")
        logger.kill()
        stored_at_kill = len(stored_ids(db))
        thread.join(timeout=60)
        assert sent.is_set()
    logger = _logger(broker, tmp_path, db, "--exit-after-idle", "2").start()
    assert logger.wait(timeout_s=60) == 0
    final = len(stored_ids(db))
    print(f"\nlogger SIGKILL: sent={n} stored_before_kill={stored_at_kill} final={final}")
    assert stored_at_kill < n, "the kill came too late to test anything"
    assert stored_seqs(db, "sess-1") == list(range(n))


@pytest.mark.parametrize("value", ["nohost", "host:port", ":1883"])
def test_bad_broker_argument_is_one_line(tmp_path: Path, value: str) -> None:
    logger = LoggerProcess(tmp_path, ["--broker", value, "--db", str(tmp_path / "r.sqlite")])
    assert logger.start().wait() == 2
    lines = logger.text().strip().splitlines()
    assert lines == [
        f"thermoscreen log: --broker {value!r}: expected HOST:PORT, e.g. 127.0.0.1:1883"
    ]


def test_logger_writes_to_postgresql(broker: Broker, tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    payloads = [make_payload(seq) for seq in range(10)]
    with postgres_server() as server:
        url = fresh_database(server)
        logger = _logger(broker, tmp_path, url).start()
        logger.wait_subscribed()
        with Publisher(broker.host, broker.port) as pub:
            mids = pub.publish_results(payloads) + pub.publish_results(payloads[:2])
            mids.append(pub.publish("thermoscreen/edge-01/cam0/result", b"\x00binary"))
            pub.wait_acked(mids)
            wait_until(lambda: "stored=10 duplicates=2 rejects=1" in logger.text(), 30, "counters")
        assert logger.stop() == 0
        store = open_store(url)
        try:
            assert [r.seq for r in store.results()] == list(range(10))
            assert store.duplicates() == {("edge-01", "sess-1"): 2}
            assert [(r.raw, r.size_bytes) for r in store.rejects()] == [(b"\x00binary", 7)]
        finally:
            store.close()


CONTRACT = ["t/+/+/result", "t/+/+/state", "t/+/+/session", "t/+/+/exam", "t/+/+/exam/summary"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ((), [*CONTRACT, "t/+/status"]),
        (("t/#",), ["t/#"]),  # overlapping filters would deliver each message twice
        (("t/+/+/+",), ["t/+/+/exam/summary", "t/+/status", "t/+/+/+"]),
        (("other/#", "other/#"), [*CONTRACT, "t/+/status", "other/#"]),
    ],
)
def test_subscriptions_never_overlap(extra: tuple[str, ...], expected: list[str]) -> None:
    assert subscriptions("t", extra) == expected


def test_help_names_the_credentials_and_the_refusal_exit_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli_main(["log", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "password only from $THERMOSCREEN_MQTT_PASSWORD" in text
    assert "exits with status 3" in text
    assert "adjunct to mammography" in text


def test_a_failed_commit_is_not_acknowledged_so_the_broker_sends_it_again(
    broker: Broker, tmp_path: Path
) -> None:
    """The logger acknowledges only after commit: when the database refuses the write, the
    logger exits with one line and the broker still holds every message for its session."""
    db = tmp_path / "results.sqlite"
    logger = _logger(broker, tmp_path, db).start()
    logger.wait_subscribed()
    with sqlite3.connect(db) as conn:  # a database that fails every insert, like a full disk
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON results "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    payloads = [make_payload(seq) for seq in range(5)]
    with Publisher(broker.host, broker.port) as pub:
        pub.wait_acked(pub.publish_results(payloads))
    assert logger.wait(timeout_s=60) == 4
    line = logger.text().strip().splitlines()[-1]
    assert line == (
        f"thermoscreen log: database {db}: query failed (disk full); nothing of this batch was "
        "acknowledged: the broker re-sends it when the logger restarts"
    )
    assert stored_ids(db) == set()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER refuse")
    logger = _logger(broker, tmp_path, db, "--exit-after-idle", "2").start()
    assert logger.wait(timeout_s=60) == 0
    assert stored_seqs(db, "sess-1") == list(range(5))


def test_config_file_sets_broker_and_prefix_and_max_messages_ends_the_run(
    broker: Broker, tmp_path: Path
) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n  topic_prefix: clinic\n")
    db = tmp_path / "results.sqlite"
    args = ["--config", str(config), "--db", str(db), "--max-messages", "3"]
    logger = LoggerProcess(tmp_path, args).start()
    logger.wait_subscribed()
    payloads = [make_payload(seq) for seq in range(3)]
    with Publisher(broker.host, broker.port) as pub:
        pub.wait_acked([pub.publish(result_topic(p, "clinic"), encode(p)) for p in payloads])
    assert logger.wait(timeout_s=60) == 0  # exits by itself after 3 messages
    assert stored_seqs(db, "sess-1") == [0, 1, 2]
    assert "subscribing to clinic/+/+/result" in logger.text()
