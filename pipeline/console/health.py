"""/healthz: is this camera working? One JSON answer, 200 when every part is healthy, 503 not.

Four parts, each with `ok` and the numbers behind it:
- capture: the run has not failed or ended, and a frame arrived within `stale_s`;
- classification: results keep coming (the newest within `stale_s`);
- mqtt: the broker has acknowledged the connection (no permanent refusal either);
- outbox: results are not piling up beyond what the outbox may hold.
A monitor (a load balancer, Prometheus' blackbox exporter, a person in another room) needs
only the status code; the body says which part failed and why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HealthLimits:
    stale_s: float  # no result for this long: capture and classification are unhealthy
    outbox_capacity: int | None  # the outbox's bound; None: no outbox


def _part(ok: bool, why: str | None, **numbers: Any) -> dict[str, Any]:
    return {"ok": ok, "problem": None if ok else why, **numbers}


def _capture(h: Mapping[str, Any], limits: HealthLimits) -> dict[str, Any]:
    capture = h.get("capture") or {}
    age = h.get("last_result_age_s")
    ended, error = h.get("ended"), h.get("error")
    if h.get("failed"):
        why = f"a stage failed: {error}"
    elif ended is not None:
        why = f"the run has ended ({ended})"
    elif age is None:
        why = "no frame yet (starting, or the camera sends nothing)"
    elif age > limits.stale_s:
        why = f"no frame for {age:.1f} s (limit {limits.stale_s:g} s)"
    else:
        why = None
    return _part(
        why is None,
        why,
        frames=capture.get("frames", 0),
        dropped=capture.get("dropped", 0),
        rebuilds=capture.get("rebuilds", 0),
        last_frame_age_s=age,
    )


def _classification(h: Mapping[str, Any], limits: HealthLimits) -> dict[str, Any]:
    classify = h.get("classify") or {}
    age = h.get("last_result_age_s")
    fresh = age is not None and age <= limits.stale_s and not h.get("failed")
    why = "no recent result" if age is None or age > limits.stale_s else "a stage failed"
    return _part(
        fresh,
        why,
        frames=classify.get("frames", 0),
        latency_ms=classify.get("latency_ms"),
    )


def _mqtt(h: Mapping[str, Any]) -> dict[str, Any]:
    mqtt = h.get("mqtt") or {}
    connected = bool(mqtt.get("connected"))
    fatal = mqtt.get("fatal_error")
    why = fatal or mqtt.get("last_error") or "not connected to the broker"
    return _part(
        connected and not fatal,
        why,
        connected=connected,
        reconnects=mqtt.get("reconnects", 0),
        last_error=mqtt.get("last_error"),
    )


def _outbox(h: Mapping[str, Any], limits: HealthLimits) -> dict[str, Any]:
    mqtt = h.get("mqtt") or {}
    pending = int(mqtt.get("pending", 0) or 0)
    dropped = int(mqtt.get("dropped_full", 0) or 0)
    capacity = limits.outbox_capacity
    full = capacity is not None and pending >= capacity
    why = f"full: {pending} of {capacity} results wait" if full else None
    return _part(
        not full,
        why,
        pending=pending,
        unconfirmed=mqtt.get("unconfirmed"),
        confirm=mqtt.get("confirm"),
        expired=mqtt.get("expired", 0),
        inflight=mqtt.get("inflight", 0),
        dropped_full=dropped,
        capacity=capacity,
    )


def evaluate(h: Mapping[str, Any], limits: HealthLimits) -> tuple[bool, dict[str, Any]]:
    """(healthy, body) from the live window's health numbers."""
    parts = {
        "capture": _capture(h, limits),
        "classification": _classification(h, limits),
        "mqtt": _mqtt(h),
        "outbox": _outbox(h, limits),
    }
    healthy = all(p["ok"] for p in parts.values())
    return healthy, {"status": "ok" if healthy else "unhealthy", **parts}


class CachedHealth:
    """The live window's health numbers, read at most every `max_age_s` however many pages,
    monitors and scrapers ask (each read takes locks the stages also take, briefly)."""

    def __init__(self, read: Callable[[], dict[str, Any]], max_age_s: float = 0.5) -> None:
        self.read = read
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._numbers: dict[str, Any] = {}
        self._read_mono = float("-inf")

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if now - self._read_mono >= self.max_age_s:
                self._numbers, self._read_mono = self.read(), now
            return self._numbers
