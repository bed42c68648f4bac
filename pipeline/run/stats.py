"""What a run counts and reports: counters, drops, latency percentiles, the `stats` message and
the summary printed at the end (with the exit code it implies)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.capture.base import Source
from pipeline.mqtt.delivery import SeqRange
from pipeline.mqtt.publisher import PublisherStats
from pipeline.run.base import ResultSink
from pipeline.run.options import PublishOptions
from pipeline.run.queues import Queues
from pipeline.run.session import Session

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PENDING = 3
EXIT_LOST = 4
STATS_SCHEMA = 1
LATENCY_WINDOW = 10_000  # the newest latencies kept for percentiles


@dataclass(frozen=True)
class Percentiles:
    """p50/p95/p99 of a latency, in ms."""

    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0

    @staticmethod
    def of(values: list[float] | deque[float]) -> Percentiles:
        """Rounded to the microsecond; no values gives zeros."""
        if not values:
            return Percentiles()
        p50, p95, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95, 99])
        return Percentiles(round(float(p50), 3), round(float(p95), 3), round(float(p99), 3))

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Drops:
    """Every frame lost, per stage (a replay keeps them all at zero by design)."""

    source: int = 0  # newest-wins inside a live source
    handoff: int = 0  # newest-wins between capture and classify (live)
    output: int = 0  # annotated frames dropped so a live publisher never waits
    outbox: int = 0  # results dropped at a full outbox (live `drop_oldest`): never sent

    @property
    def total(self) -> int:
        return self.source + self.handoff + self.output + self.outbox

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass
class Counters:
    """Counts kept by the stages; each field has one writer, latencies take the lock (several
    classify workers append to them)."""

    captured: int = 0
    classified: int = 0
    published: int = 0
    handoff_dropped: int = 0
    output_dropped: int = 0
    output_errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    inference_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_classified(self, latency_ms: float, inference_ms: float) -> None:
        with self.lock:
            self.classified += 1
            self.latencies_ms.append(latency_ms)
            self.inference_ms.append(inference_ms)

    def latency(self) -> Percentiles:
        """Capture -> result percentiles over the newest LATENCY_WINDOW frames. Only the copy
        holds the lock: a reader (stats, the console) never makes a classify worker wait for
        the percentiles."""
        with self.lock:
            values = list(self.latencies_ms)
        return Percentiles.of(values)

    def inference(self) -> Percentiles:
        with self.lock:
            values = list(self.inference_ms)
        return Percentiles.of(values)


@dataclass
class RunSummary:
    """What a run did; printed at the end and returned to callers such as the demo."""

    session_id: str
    mode: str
    end_reason: str
    frames_captured: int
    results: int
    wall_s: float
    fps: float
    latency_ms: Percentiles
    drops: Drops
    verdict: dict[str, Any] | None
    outbox_pending: int = 0
    flushed: bool = False
    error: str | None = None
    error_kind: str = ""  # "source" (bad input: exit 2) or "stage" (exit 1)
    broker_error: str | None = None  # the publisher's last connection error
    delivery: Delivery = field(default_factory=lambda: Delivery())
    exams: dict[str, int] | None = None  # the exam tracker's counters; None: exams off
    synthetic_model: bool = False  # the model is a synthetic demo

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return EXIT_BAD_INPUT if self.error_kind == "source" else EXIT_FAILED
        if self.delivery.lost:
            return EXIT_LOST
        return EXIT_PENDING if self.outbox_pending > 0 else EXIT_OK


@dataclass(frozen=True)
class Delivery:
    """How this run's results left the device: confirmed, still waiting, or lost (counted)."""

    confirm: str = "broker"  # what took results out of the outbox: "broker" or "logger"
    unconfirmed: int = 0  # acknowledged by the broker, not yet confirmed by a logger (waiting)
    dropped: int = 0  # dropped at a full outbox: never sent
    dropped_seq: tuple[SeqRange, ...] = ()  # this session's seq ranges of those
    refused: int = 0  # refused by the broker for good (its ACL): undeliverable as they are
    refusal: str | None = None  # the broker's reason and the fix
    expired: int = 0  # acknowledged, never confirmed within outbox.retention_s
    expired_seq: tuple[SeqRange, ...] = ()

    @property
    def lost(self) -> int:
        """Results that will not reach a logger unless someone acts."""
        return self.dropped + self.refused + self.expired

    @staticmethod
    def of(stats: PublisherStats, session_id: str) -> Delivery:
        return Delivery(
            confirm=stats.confirm,
            unconfirmed=stats.unconfirmed,
            dropped=stats.dropped_full,
            dropped_seq=tuple(stats.dropped_seq.get(session_id, ())),
            refused=stats.refused,
            refusal=stats.refusal,
            expired=stats.expired,
            expired_seq=tuple(stats.expired_seq.get(session_id, ())),
        )


class StatsReporter:
    """Builds the `stats` message from every stage's counters; its rate is since the last one."""

    def __init__(
        self,
        options: PublishOptions,
        session: Session,
        counters: Counters,
        source: Source,
        queues: Queues,
        publisher: ResultSink,
    ) -> None:
        self.options = options
        self.session = session
        self.counters = counters
        self.source = source
        self.queues = queues
        self.publisher = publisher
        self.started_mono = time.monotonic()
        self._last_mono = self.started_mono
        self._last_results = 0

    def restart_clock(self) -> None:
        """Uptime and the first rate count from now (the stages are starting)."""
        self.started_mono = self._last_mono = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last_mono >= self.options.stats_interval_s

    def drops(self) -> Drops:
        return Drops(
            source=int(self.source.stats.dropped),
            handoff=self.counters.handoff_dropped,
            output=self.counters.output_dropped,
            outbox=self.publisher.stats().dropped_full,
        )

    def payload(self) -> dict[str, Any]:
        """The `stats` message: rate since the last one, latency percentiles, drops, queues."""
        now = time.monotonic()
        done = self.counters.published
        fps = (done - self._last_results) / max(now - self._last_mono, 1e-9)
        self._last_mono, self._last_results = now, done
        src, depths = self.source.stats, self.queues.depths()
        return {
            "schema": STATS_SCHEMA,
            "device_id": self.options.device_id,
            "camera_id": self.options.camera_id,
            "session_id": self.session.session_id,
            "mode": self.session.mode,
            "uptime_s": round(now - self.started_mono, 3),
            "frames": {"captured": self.counters.captured, "results": done},
            "fps": round(fps, 3),
            "latency_ms": {
                "capture_to_result": self.counters.latency().as_dict(),
                "inference": self.counters.inference().as_dict(),
            },
            "drops": self.drops().as_dict(),
            "queues": dataclasses.asdict(depths),
            "source": {"rebuilds": src.rebuilds, "errors": src.errors},
            "output_errors": self.counters.output_errors,
            "outbox": dataclasses.asdict(self.publisher.stats()),
        }
