"""The publisher's side of confirmed delivery against a real mosquitto, with a hand-made logger
confirmation: results stay after the PUBACK until a `stored` range covers them, `auto` turns to
`logger` at the first confirmation and remembers it, and unconfirmed results leave at the
retention limit, counted and named."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.config import MqttConfig, OutboxConfig
from pipeline.mqtt import sender
from pipeline.mqtt.delivery import Kept, stored_messages
from pipeline.mqtt.payload import encode
from pipeline.mqtt.publisher import Publisher
from pipeline.types import FrameResult, ModelInfo, Prediction, TopK
from tests.conftest import Broker
from tests.helpers.mqtt_logger import Publisher as RawClient

MODEL = ModelInfo(name="tiny", version="1", sha256="a" * 64, backend="onnxruntime")
DEVICE = "dev1"


def _result(seq: int) -> FrameResult:
    pred = Prediction("healthy", 0, 0.9, (0.9, 0.1), (TopK(0, "healthy", 0.9),), 1.0)
    return FrameResult("s1", "replay", "cam0", seq, seq, time.time(), "dmr://t", pred, None, 2.0)


def _wait(pred: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.fixture
def started() -> Iterator[list[Publisher]]:
    pubs: list[Publisher] = []
    yield pubs
    for p in pubs:
        p.stop(flush_timeout_s=0.2)


def _publisher(broker: Broker, outbox: Path, pubs: list[Publisher], **cfg: object) -> Publisher:
    mqtt = MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5)
    pub = Publisher(mqtt, DEVICE, OutboxConfig(path=outbox, **cfg))  # type: ignore[arg-type]
    pub.start()
    pubs.append(pub)
    assert _wait(lambda: pub.connected)
    return pub


def _confirm(broker: Broker, seqs: list[int], summary: bool = False) -> None:
    kept = [Kept(DEVICE, "cam0", "s1", s) for s in seqs]
    kept += [Kept(DEVICE, "cam0", "s1", None)] if summary else []
    with RawClient(broker.host, broker.port, client_id="fake-logger") as raw:
        mids = [
            raw.publish(f"thermoscreen/{d}/{c}/stored", encode(p))
            for d, c, p in stored_messages(kept, "fake-logger")
        ]
        raw.wait_acked(mids)


def test_results_stay_after_the_puback_until_a_logger_confirms_them(
    broker: Broker, tmp_path: Path, started: list[Publisher]
) -> None:
    pub = _publisher(broker, tmp_path / "o.sqlite", started, confirm="logger")
    for seq in range(6):
        pub.publish_result(_result(seq), MODEL)
    pub.publish_session("cam0", {"session_id": "s1"})  # the outbox only keys it by session
    assert _wait(lambda: pub.stats().acked == 7)
    stats = pub.stats()
    assert (stats.confirm, stats.pending, stats.unconfirmed) == ("logger", 7, 7)
    _confirm(broker, [0, 1, 2, 4])
    assert _wait(lambda: pub.stats().pending == 3)
    _confirm(broker, [3, 5], summary=True)
    assert _wait(lambda: pub.stats().pending == 0)
    assert pub.stats().confirmed == 7
    assert pub.stop(2.0) is True


def test_auto_turns_to_logger_confirmation_at_the_first_one_and_remembers(
    broker: Broker, tmp_path: Path, started: list[Publisher]
) -> None:
    outbox = tmp_path / "o.sqlite"
    pub = _publisher(broker, outbox, started)  # confirm: auto
    pub.publish_result(_result(0), MODEL)
    assert _wait(lambda: pub.stats().pending == 0)  # no logger seen: the PUBACK is enough
    assert pub.stats().confirm == "broker"
    _confirm(broker, [0])
    assert _wait(lambda: pub.stats().confirm == "logger")
    pub.publish_result(_result(1), MODEL)
    assert _wait(lambda: pub.stats().acked == 2)
    assert pub.stats().pending == 1  # kept for a logger now
    pub.stop(0.5)
    again = _publisher(broker, outbox, started)
    assert again.stats().confirm == "logger"  # remembered in the outbox
    # the unconfirmed result goes out again at once; its PUBACK also says that the broker has
    # the subscription to `stored` (sent before it on the same connection)
    assert _wait(lambda: again.stats().acked == 1 and again.stats().resent == 1)
    _confirm(broker, [1])
    assert _wait(lambda: again.stats().pending == 0)


def test_unconfirmed_results_leave_at_the_retention_limit_counted(
    broker: Broker, tmp_path: Path, started: list[Publisher], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender, "EXPIRE_EVERY_S", 0.2)
    pub = _publisher(broker, tmp_path / "o.sqlite", started, confirm="logger", retention_s=0.5)
    for seq in range(3):
        pub.publish_result(_result(seq), MODEL)
    assert _wait(lambda: pub.stats().expired == 3)
    stats = pub.stats()
    assert stats.pending == 0 and stats.expired_seq == {"s1": [(0, 2)]}
