"""End-to-end delivery: `thermoscreen run` replays a recording through a real mosquitto into
`thermoscreen log`, and a broker outage, a SIGKILLed logger or a SIGKILLed pipeline (broker away,
or broker up while results flow and acknowledgements wait for the outbox's group commit) loses
no result and stores none twice. Run with `-s` to see the numbers each scenario produced."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from pipeline.logger.report import report_from_store
from pipeline.logger.store import open_store
from tests.conftest import Broker
from tests.helpers.mqtt_logger import (
    LoggerProcess,
    count_rows,
    make_png16_recording,
    run_pipeline,
    stored_ids,
)
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow
FRAMES = 40  # replayed with --realtime at the recording's 10 fps: about 4 s


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_png16_recording(tmp_path_factory.mktemp("delivery") / "rec", FRAMES)


def _logger(broker: Broker, tmp_path: Path) -> LoggerProcess:
    args = ["--broker", f"127.0.0.1:{broker.port}", "--db", str(tmp_path / "results.sqlite")]
    return LoggerProcess(tmp_path, args)


def _sessions(db: Path) -> dict[str, list[int]]:
    """session id -> stored seqs, sorted (duplicates would show as repeated numbers)."""
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT session, seq FROM results ORDER BY session, seq").fetchall()
    out: dict[str, list[int]] = {}
    for session, seq in rows:
        out.setdefault(session, []).append(seq)
    return out


def _duplicates(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(count), 0) FROM duplicates").fetchone()[0])


def _outbox_results(outbox: Path) -> dict[str, int]:
    """message_id -> seq of the results still waiting (unacknowledged) in a pipeline's outbox."""
    with sqlite3.connect(outbox) as conn:
        rows = conn.execute("SELECT topic, payload FROM outbox").fetchall()
    payloads = [json.loads(p) for t, p in rows if t.endswith("/result")]
    return {p["message_id"]: p["seq"] for p in payloads}


def _report(name: str, **numbers: object) -> None:
    print(f"\n[delivery] {name}: " + " ".join(f"{k}={v}" for k, v in numbers.items()))


def test_broker_outage_mid_replay_loses_nothing(
    broker: Broker, tmp_path: Path, recording: Path, tiny_model: Path
) -> None:
    db, outbox = tmp_path / "results.sqlite", tmp_path / "outbox.sqlite"
    logger = _logger(broker, tmp_path).start()
    logger.wait_subscribed()
    run = run_pipeline(
        recording, tiny_model, broker.port, outbox, "--realtime", "--flush-timeout", "60"
    )
    wait_until(lambda: count_rows(db, "results") >= 8 if db.exists() else False, 60, "8 results")
    broker.stop()
    down = time.monotonic()
    at_stop = count_rows(db, "results")
    time.sleep(3.0)  # the replay goes on: results wait in the pipeline's outbox
    broker.start()
    outage_s = time.monotonic() - down
    assert run.wait(timeout=120) == 0, outbox.with_suffix(".log").read_text()
    wait_until(lambda: count_rows(db, "results") >= FRAMES, 60, f"{FRAMES} results")
    wait_until(lambda: count_rows(db, "sessions") == 1, 30, "the session summary")
    assert logger.stop() == 0
    sessions = _sessions(db)
    assert len(sessions) == 1
    (seqs,) = sessions.values()
    assert seqs == list(range(FRAMES))  # each result exactly once
    assert _outbox_results(outbox) == {}
    assert at_stop < FRAMES, "the outage came after the replay: nothing was tested"
    store = open_store(db)
    (report,) = report_from_store(store)
    store.close()
    assert (report.frames, report.reported_frames, report.missing_seq) == (FRAMES, FRAMES, [])
    assert report.verdict_source == "session" and report.verdict in ("healthy", "sick")
    _report(
        "broker outage", sent=FRAMES, stored_before_outage=at_stop, stored=len(seqs),
        duplicates_dropped=_duplicates(db), outage_s=f"{outage_s:.1f}",
    )  # fmt: skip


def test_logger_sigkilled_mid_replay_loses_nothing(
    broker: Broker, tmp_path: Path, recording: Path, tiny_model: Path
) -> None:
    db, outbox = tmp_path / "results.sqlite", tmp_path / "outbox.sqlite"
    logger = _logger(broker, tmp_path).start()
    logger.wait_subscribed()
    run = run_pipeline(recording, tiny_model, broker.port, outbox, "--realtime")
    wait_until(lambda: count_rows(db, "results") >= 8 if db.exists() else False, 60, "8 results")
    logger.kill()
    down = time.monotonic()
    at_kill = count_rows(db, "results")
    time.sleep(1.5)  # results published now are queued by the broker for the logger's session
    logger = _logger(broker, tmp_path).start()
    logger.wait_subscribed()
    outage_s = time.monotonic() - down
    assert run.wait(timeout=120) == 0, outbox.with_suffix(".log").read_text()
    wait_until(lambda: count_rows(db, "results") >= FRAMES, 60, f"{FRAMES} results")
    assert logger.stop() == 0
    (seqs,) = _sessions(db).values()
    assert seqs == list(range(FRAMES))
    assert at_kill < FRAMES, "the kill came after the replay: nothing was tested"
    _report(
        "logger SIGKILL", sent=FRAMES, stored_before_kill=at_kill, stored=len(seqs),
        duplicates_dropped=_duplicates(db), logger_down_s=f"{outage_s:.1f}",
    )  # fmt: skip


def test_pipeline_sigkilled_mid_replay_delivers_its_outbox_on_restart(
    broker: Broker, tmp_path: Path, recording: Path, tiny_model: Path
) -> None:
    """The broker is taken down first so that the kill finds unacknowledged results in the
    outbox; a second run on the same outbox must deliver every one of them."""
    db, outbox = tmp_path / "results.sqlite", tmp_path / "outbox.sqlite"
    logger = _logger(broker, tmp_path).start()
    logger.wait_subscribed()
    first = run_pipeline(recording, tiny_model, broker.port, outbox, "--realtime")
    wait_until(lambda: count_rows(db, "results") >= 5 if db.exists() else False, 60, "5 results")
    broker.stop()
    wait_until(lambda: len(_outbox_results(outbox)) >= 5, 60, "5 unacknowledged results")
    first.kill()
    first.wait(timeout=30)
    pending = _outbox_results(outbox)  # written by the first run, never acknowledged
    delivered_before = stored_ids(db)
    (first_session,) = _sessions(db)
    broker.start()
    second = run_pipeline(recording, tiny_model, broker.port, outbox, "--max-frames", "1")
    assert second.wait(timeout=120) == 0, outbox.with_suffix(".log").read_text()
    wait_until(lambda: set(pending) <= stored_ids(db), 60, "the first run's pending results")
    assert logger.stop() == 0

    assert pending, "the kill found nothing unacknowledged: nothing was tested"
    seqs = _sessions(db)[first_session]
    # everything the first run classified (acknowledged before the kill, or waiting in its
    # outbox) is stored, once, with no gap: seq 0..last
    assert seqs == list(range(max(pending.values()) + 1))
    assert _outbox_results(outbox) == {}
    _report(
        "pipeline SIGKILL", classified_before_kill=len(seqs),
        acked_before_kill=len(delivered_before),
        pending_in_outbox=len(pending), pending_already_stored=len(set(pending) & delivered_before),
        stored=len(seqs), duplicates_dropped=_duplicates(db),
    )  # fmt: skip


class WireWatch:
    """Every result message_id the broker delivers, seen by a plain subscriber of its own."""

    def __init__(self, broker: Broker) -> None:
        self.ids: set[str] = set()
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("thermoscreen/+/+/result", 1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(30), "the wire watch could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.ids.add(json.loads(msg.payload)["message_id"])

    def seen(self) -> set[str]:
        with self._lock:
            return set(self.ids)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("confirm", ["broker", "logger"])
def test_pipeline_sigkilled_while_publishing_loses_and_doubles_no_published_result(
    broker: Broker, tmp_path: Path, recording: Path, tiny_model: Path, confirm: str
) -> None:
    """The broker stays up: the kill lands while results are classified, published and
    acknowledged, so some acknowledgements are only in the process's memory (group commit).
    Every result the broker delivered before the kill, and every one the first run stored in
    its outbox, is stored by the logger exactly once after a second run on the same outbox."""
    db, outbox = tmp_path / "results.sqlite", tmp_path / "outbox.sqlite"
    logger = _logger(broker, tmp_path).start()
    logger.wait_subscribed()
    wire = WireWatch(broker)
    mode = ("--confirm", confirm)
    first = run_pipeline(recording, tiny_model, broker.port, outbox, "--realtime", *mode)
    wait_until(lambda: count_rows(db, "results") >= 10 if db.exists() else False, 60, "10 results")
    first.kill()
    first.wait(timeout=30)
    published = wire.seen()  # on the wire before the kill: these must never be lost
    pending = _outbox_results(outbox)  # in the first run's outbox: these are sent again
    stored_at_kill = stored_ids(db)
    (first_session,) = _sessions(db)
    second = run_pipeline(recording, tiny_model, broker.port, outbox, "--max-frames", "1", *mode)
    assert second.wait(timeout=120) == 0, outbox.with_suffix(".log").read_text()
    wait_until(lambda: (published | set(pending)) <= stored_ids(db), 60, "every published result")
    assert logger.stop() == 0
    wire.close()

    assert published, "the kill came before any result was published: nothing was tested"
    seqs = _sessions(db)[first_session]
    last = max(seqs)
    assert last < FRAMES - 1, "the kill came after the replay: nothing was tested"
    assert seqs == list(range(last + 1))  # once each, no gap: nothing lost, nothing doubled
    assert published <= stored_ids(db)
    assert _outbox_results(outbox) == {}
    _report(
        f"pipeline SIGKILL, broker up, confirm {confirm}", published_before_kill=len(published),
        stored_before_kill=len(stored_at_kill), in_outbox_at_kill=len(pending),
        in_outbox_already_stored=len(set(pending) & stored_at_kill), stored=len(seqs),
        duplicates_dropped=_duplicates(db),
    )  # fmt: skip
