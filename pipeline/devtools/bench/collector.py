"""The bench's subscriber: every result and stats message with its arrival time, and the rates
computed from them."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config import MqttConfig
from pipeline.mqtt.client import make_client


class BenchError(RuntimeError):
    """A benchmark step that could not run; the message is one line naming what to fix."""


@dataclass(frozen=True)
class Received:
    topic: str
    recv_wall_s: float
    recv_mono_s: float
    payload: bytes


class Collector:
    """Subscribes to every result and keeps the raw bytes with arrival times; parsing waits until
    a measurement is over, so the subscriber costs the measured processes as little as possible."""

    def __init__(self, host: str, port: int) -> None:
        self._lock = threading.Lock()
        self._items: list[Received] = []
        self._results = 0
        self._subscribed = threading.Event()
        self._client = make_client(
            MqttConfig(host=host, port=port), f"thermoscreen-bench-{os.getpid()}"
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise BenchError(f"bench subscriber could not subscribe on {host}:{port}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe([("thermoscreen/+/+/result", 1), ("thermoscreen/+/stats", 0)])

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, rcs: Any, props: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        item = Received(msg.topic, time.time(), time.monotonic(), bytes(msg.payload))
        with self._lock:
            self._items.append(item)
            self._results += item.topic.endswith("/result")

    def take(self) -> list[Received]:
        """Everything received since the last take."""
        with self._lock:
            items, self._items, self._results = self._items, [], 0
        return items

    @property
    def results(self) -> int:
        """Results received since the last take (read while a measured run goes on)."""
        return self._results

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def results_of(items: Sequence[Received], device: str) -> list[Received]:
    prefix = f"thermoscreen/{device}/"
    return [r for r in items if r.topic.startswith(prefix) and r.topic.endswith("/result")]


def stats_of(items: Sequence[Received], device: str) -> list[dict[str, Any]]:
    topic = f"thermoscreen/{device}/stats"
    return [json.loads(r.payload) for r in items if r.topic == topic]


def steady_fps(results: Sequence[Received]) -> float:
    """Results per second between the first and the last arrival (start-up excluded)."""
    if len(results) < 2:
        return float("nan")
    span = results[-1].recv_mono_s - results[0].recv_mono_s
    return (len(results) - 1) / span if span > 0 else float("nan")


def parse_rfc3339(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def capture_to_delivery_fps(results: Sequence[Received], capture_ts: Sequence[float]) -> float:
    """Results per second from the first frame's capture to the last result's delivery.

    Start-up (imports, model load, broker connect) is excluded, and a burst of results held in
    the outbox until the connection is up cannot inflate the rate, as first-to-last arrival can.
    """
    if not results:
        return float("nan")
    span = results[-1].recv_wall_s - min(capture_ts)
    return len(results) / span if span > 0 else float("nan")
