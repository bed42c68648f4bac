"""A PUBACK wakes the MQTT client thread only when something waits for it: acknowledgements
are committed with the next result anyway (group commit), so one wake-up per result is enough
while the in-flight window has room."""

from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from pipeline.config import MqttConfig, OutboxConfig
from pipeline.mqtt.publisher import Publisher
from pipeline.mqtt.sender import ACK_WAKE_INFLIGHT, Acked


def _publisher() -> Publisher:
    return Publisher(MqttConfig(host="127.0.0.1", port=1), "dev1", OutboxConfig(enabled=False))


def _puback(pub: Publisher, mid: int, code: int = 0) -> None:
    rc = ReasonCode(PacketTypes.PUBACK, identifier=code)
    pub._on_publish(pub._client, None, mid, rc, None)  # type: ignore[arg-type]


def test_a_puback_with_room_in_the_window_waits_for_the_next_step() -> None:
    pub = _publisher()
    sender = pub._sender
    _puback(pub, 7)
    assert list(sender.events) == [Acked(7, None)]  # recorded for the next step
    assert not sender.wake.is_set()
    pub.stop(0.1)


def test_a_puback_wakes_the_client_thread_when_something_waits() -> None:
    pub = _publisher()
    sender = pub._sender
    sender._inflight.update({m: (m, "") for m in range(ACK_WAKE_INFLIGHT)})  # window half full
    _puback(pub, 1)
    assert sender.wake.is_set()
    sender.wake.clear()
    sender._inflight.clear()
    sender.stopping.set()  # flushing: every ack counts toward done
    _puback(pub, 2)
    assert sender.wake.is_set()
    sender.wake.clear()
    sender.stopping.clear()
    _puback(pub, 3, code=0x87)  # a refusal is an error to report at once
    assert sender.wake.is_set()
    pub.stop(0.1)
