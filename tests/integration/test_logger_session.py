"""The logger's side of the MQTT session: when it counts as idle, and (delivery) the `stored`
confirmations it publishes."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import Broker
from tests.helpers.mqtt_logger import (
    LoggerProcess,
    Publisher,
    count_rows,
    make_payload,
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
