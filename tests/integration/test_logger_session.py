"""The logger's side of the MQTT session: when it counts as idle, and (delivery) the `stored`
confirmations it publishes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.devtools.demo import ResultWatcher
from pipeline.mqtt.payload import encode
from pipeline.run.session import Session, VerdictPolicy
from tests.conftest import Broker
from tests.helpers.mqtt_logger import (
    LoggerProcess,
    Publisher,
    count_rows,
    make_payload,
    result_topic,
    wait_until,
)


def test_exit_after_idle_counts_only_connected_time(broker: Broker, tmp_path: Path) -> None:
    """The broker is down for longer than the idle limit when the logger starts; the logger
    must still wait the whole limit once connected (it used to exit at its first SUBACK)."""
    db = tmp_path / "results.sqlite"
    broker.stop()
    args = ["--broker", f"127.0.0.1:{broker.port}", "--db", str(db), "--exit-after-idle", "3"]
    logger = LoggerProcess(tmp_path, args).start()
    time.sleep(4.0)  # offline: not idle
    assert logger.proc is not None and logger.proc.poll() is None
    broker.start()
    logger.wait_subscribed()
    payload = make_payload(0)
    with Publisher(broker.host, broker.port) as pub:
        pub.wait_acked(pub.publish_results([payload]))
    wait_until(lambda: db.exists() and count_rows(db, "results") == 1, 20, "the result stored")
    assert logger.wait(timeout_s=30) == 0
    assert "idle for 3.0 s while connected, exiting" in logger.text()


def _summary(session_id: str) -> dict[str, Any]:
    policy = VerdictPolicy(labels=("healthy", "sick"), window_frames=3)
    session = Session("replay", "cam0", "edge-01", "file://rec.mp4", policy, session_id=session_id)
    session.end("eos")
    return session.summary_payload()


def test_the_logger_confirms_what_it_committed_on_the_stored_topic(
    broker: Broker, tmp_path: Path
) -> None:
    """Results stored now or before (a re-send) and the session summary are confirmed to
    their device; a reject is not."""
    db = tmp_path / "results.sqlite"
    args = ["--broker", f"127.0.0.1:{broker.port}", "--db", str(db)]
    logger = LoggerProcess(tmp_path, args).start()
    logger.wait_subscribed()
    payloads = [make_payload(seq) for seq in range(5)]
    bad = make_payload(7) | {"schema": 99}
    with ResultWatcher(broker.host, broker.port, "edge-01") as watcher:

        def confirmed() -> tuple[set[int], bool]:
            seqs, summary = set(), False
            for body in watcher.bodies("stored"):
                assert body["logger"] == "thermoscreen-logger" and body["session_id"] == "sess-1"
                seqs |= {s for lo, hi in body["seq"] for s in range(lo, hi + 1)}
                summary |= body["summary"]
            return seqs, summary

        with Publisher(broker.host, broker.port) as pub:
            pub.wait_acked(pub.publish_results(payloads))
            pub.wait_acked([pub.publish(result_topic(bad), encode(bad))])
            pub.wait_acked(
                [pub.publish("thermoscreen/edge-01/cam0/session", encode(_summary("sess-1")))]
            )
            assert watcher.wait(lambda: confirmed() == (set(range(5)), True), 20), confirmed()
            before = watcher.count("stored")

            def again() -> set[int]:
                later = watcher.bodies("stored")[before:]
                return {s for body in later for lo, hi in body["seq"] for s in range(lo, hi + 1)}

            pub.wait_acked(pub.publish_results(payloads[3:]))  # a re-send: confirmed again
            assert watcher.wait(lambda: again() == {3, 4}, 20), again()
        assert not any(body["summary"] for body in watcher.bodies("stored")[before:])
    assert logger.stop() == 0
    assert count_rows(db, "rejects") == 1  # seq 7 was never confirmed
