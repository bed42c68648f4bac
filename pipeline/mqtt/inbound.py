"""What a publishing client also receives (topic filters and their handlers) and the retained
state messages it holds until it can send them (`RetainedStates`).

The run's publisher listens to a few control topics (`<camera>/exam/set`, a room sensor). paho
calls `on_message` in the thread that runs its network loop (the publisher's client thread), so
a handler may only hand the message on (a bounded queue) and return: never block, publish or
raise. A clean-start connection forgets its
subscriptions, so `renew` runs on every connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pipeline.mqtt.client import new_properties

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bytes | None], None]  # (topic, payload, correlation)


class Subscriptions:
    """Topic filters (QoS 1) and the handler of each."""

    def __init__(self) -> None:
        self._handlers: dict[str, MessageHandler] = {}

    def add(self, topic_filter: str, handler: MessageHandler) -> None:
        if not topic_filter or "\0" in topic_filter:
            raise ValueError(f"topic filter {topic_filter!r}: must be non-empty, without NUL")
        self._handlers[topic_filter] = handler

    def renew(self, client: mqtt.Client) -> int:
        """Subscribe to every filter (call on each connection); the SUBSCRIBE's mid, or -1."""
        if not self._handlers:
            return -1
        _, mid = client.subscribe([(f, 1) for f in self._handlers])
        return int(mid if mid is not None else -1)

    def __str__(self) -> str:
        return ", ".join(self._handlers) or "(none)"

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """paho's callback: hand the message to the handler of each matching filter."""
        props = getattr(message, "properties", None)
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        for topic_filter, handler in self._handlers.items():
            if mqtt.topic_matches_sub(topic_filter, message.topic):
                try:
                    handler(message.topic, bytes(message.payload), correlation)
                except Exception:  # a handler's bug must not kill the network loop
                    log.exception("handler of %s failed", topic_filter)


@dataclass(frozen=True)
class Retained:
    """A retained state message for `<camera>/<kind>` (kind: state or exam). `correlation` marks
    the answer to a command: the MQTT v5 correlation data the command came with."""

    camera_id: str
    payload: bytes
    kind: str = "state"
    correlation: bytes | None = None


class RetainedStates:
    """Retained states waiting for the client thread to send them: only the newest per (camera,
    kind) matters, except answers to commands, which each go out (their sender waits for its
    own); an answer makes any older waiting state of its topic obsolete."""

    def __init__(self) -> None:
        self._newest: dict[tuple[str, str], Retained] = {}
        self._answers: list[Retained] = []

    def offer(self, item: Retained) -> None:
        key = (item.camera_id, item.kind)
        if item.correlation is None:
            self._newest[key] = item
        else:
            self._newest.pop(key, None)
            self._answers.append(item)

    def take(self) -> list[Retained]:
        """Everything waiting, answers first (they are older than what replaced them)."""
        items = [*self._answers, *self._newest.values()]
        self._answers, self._newest = [], {}
        return items

    def __bool__(self) -> bool:
        return bool(self._answers or self._newest)


def answer_properties(correlation: bytes) -> Properties:
    """PUBLISH properties of an answer: JSON, with the command's correlation data."""
    props = new_properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.PayloadFormatIndicator = 1
    props.CorrelationData = correlation
    return props
