"""/metrics: the run's counters in the Prometheus text format, through prometheus_client.

Everything but the latency histogram is read from the live window's health numbers when
Prometheus scrapes (nothing per frame). The histogram needs every result: `ResultMetrics` is a
FrameConsumer of the run (one `observe` per result in the publish thread, a lock and a few
additions). Each console has its own CollectorRegistry, never prometheus_client's global one, so
two runs in one process (tests, the benchmark) never share or clash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.console.stream import StreamCounters
from pipeline.exam.commands import ExamState
from pipeline.run.base import Classified
from pipeline.run.session import EndReason
from pipeline.types import FrameResult

NS = "thermoscreen"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
EXAM_STATES = tuple(s.value for s in ExamState)


class ResultMetrics:
    """The per-result part of /metrics: capture -> result latency, as a histogram."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            f"{NS}_capture_to_result_seconds",
            "Time from a frame's capture to its published result.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )

    def on_result(self, item: Classified, result: FrameResult) -> None:
        self.latency.observe(result.capture_to_result_ms / 1000.0)

    def on_end(self, reason: EndReason) -> None:
        """Nothing to close: the histogram stays readable after the run."""


class ConsoleCounters:
    """What the console itself counts (the event loop is the only writer)."""

    def __init__(self) -> None:
        self.auth_failures = 0
        self.refused_requests: dict[str, int] = {"csrf": 0, "origin": 0, "host": 0}
        self.commands: dict[str, int] = {"accepted": 0, "refused": 0}


# The outbox's figures in the health tree's "mqtt" section: (family, field and metric suffix, help)
OUTBOX_METRICS: tuple[tuple[type[CounterMetricFamily | GaugeMetricFamily], str, str], ...] = (
    (
        GaugeMetricFamily,
        "pending",
        "Messages in the durable outbox not yet acknowledged by the broker.",
    ),
    (GaugeMetricFamily, "inflight", "Messages handed to the MQTT client, not yet acknowledged."),
    (
        GaugeMetricFamily,
        "unconfirmed",
        "Messages the broker acknowledged that no logger has confirmed stored yet.",
    ),
    (
        CounterMetricFamily,
        "confirmed",
        "Results a logger confirmed stored (taken out of the outbox).",
    ),
    (
        CounterMetricFamily,
        "expired",
        "Acknowledged results no logger confirmed within outbox.retention_s.",
    ),
    (
        CounterMetricFamily,
        "dropped_full",
        "Results a full outbox dropped (live drop_oldest policy).",
    ),
)


def _num(tree: Mapping[str, Any], *path: str) -> float:
    node: Any = tree
    for key in path:
        if not isinstance(node, Mapping):
            return 0.0
        node = node.get(key)
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else 0.0


class HealthCollector(Collector):
    """Reads the health numbers, the exam state and the console's counters at scrape time."""

    def __init__(
        self,
        health: Callable[[], dict[str, Any]],
        exam_state: Callable[[], dict[str, Any] | None],
        stream: StreamCounters,
        console: ConsoleCounters,
    ) -> None:
        self.health = health
        self.exam_state = exam_state
        self.stream = stream
        self.console = console

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        h = self.health()
        yield from self._frames(h)
        yield from self._delivery(h)
        yield from self._exam(h)
        yield from self._console()

    def _frames(self, h: Mapping[str, Any]) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily(
            f"{NS}_frames_captured", "Frames the capture stage read.", _num(h, "capture", "frames")
        )
        yield CounterMetricFamily(
            f"{NS}_frames_classified", "Frames classified.", _num(h, "classify", "frames")
        )
        yield CounterMetricFamily(
            f"{NS}_results_published",
            "Results handed to the MQTT publisher (and its durable outbox).",
            _num(h, "results", "published"),
        )
        drops = CounterMetricFamily(
            f"{NS}_frames_dropped", "Frames not processed or not shown, by stage.", labels=["stage"]
        )
        drops.add_metric(["capture"], _num(h, "capture", "dropped"))
        drops.add_metric(["output"], _num(h, "results", "output_dropped"))
        drops.add_metric(["console_encoder"], self.stream.skipped_by_encoder)
        drops.add_metric(["console_client"], self.stream.skipped_by_clients)
        yield drops
        yield CounterMetricFamily(
            f"{NS}_capture_rebuilds", "Live source rebuilds.", _num(h, "capture", "rebuilds")
        )
        failed = GaugeMetricFamily(f"{NS}_run_failed", "1 when a stage failed (see /healthz).")
        failed.add_metric([], 1.0 if h.get("failed") else 0.0)
        yield failed
        age = h.get("last_result_age_s")
        if isinstance(age, int | float):
            yield GaugeMetricFamily(
                f"{NS}_last_result_age_seconds", "Seconds since the newest result.", float(age)
            )

    def _delivery(self, h: Mapping[str, Any]) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield GaugeMetricFamily(
            f"{NS}_mqtt_connected",
            "1 while the broker has acknowledged the connection.",
            1.0 if (h.get("mqtt") or {}).get("connected") is True else 0.0,
        )
        yield CounterMetricFamily(
            f"{NS}_mqtt_reconnects", "Broker reconnections.", _num(h, "mqtt", "reconnects")
        )
        for family, name, help_text in OUTBOX_METRICS:
            yield family(f"{NS}_outbox_{name}", help_text, _num(h, "mqtt", name))

    def _exam(self, h: Mapping[str, Any]) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        state = self.exam_state() or {}
        now = state.get("state")
        states = GaugeMetricFamily(
            f"{NS}_exam_state", "1 for the camera's current exam state.", labels=["state"]
        )
        for name in EXAM_STATES:
            states.add_metric([name], 1.0 if now == name else 0.0)
        yield states
        frames = CounterMetricFamily(
            f"{NS}_exam_frames",
            "Frames of the current exam, by the quality gates' answer.",
            labels=["quality"],
        )
        frames.add_metric(["accepted"], _num(state, "frames", "accepted"))
        frames.add_metric(["rejected"], _num(state, "frames", "rejected"))
        yield frames
        exams = CounterMetricFamily(
            f"{NS}_exams", "Exams ended in this run, by outcome.", labels=["outcome"]
        )
        exams.add_metric(["closed"], _num(h, "exam", "closed"))
        exams.add_metric(["aborted"], _num(h, "exam", "aborted"))
        yield exams

    def _console(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s, c = self.stream, self.console
        yield GaugeMetricFamily(f"{NS}_console_viewers", "Live views open now.", s.viewers)
        yield CounterMetricFamily(
            f"{NS}_console_frames_encoded", "Live-view frames JPEG-encoded.", s.encoded
        )
        yield GaugeMetricFamily(
            f"{NS}_console_encode_cpu_seconds",
            "Smoothed CPU time the console spends on one live-view frame (overlay and JPEG).",
            s.encode_cpu_ms / 1000.0,
        )
        yield CounterMetricFamily(
            f"{NS}_console_auth_failures",
            "Requests with a wrong or missing password.",
            c.auth_failures,
        )
        refused = CounterMetricFamily(
            f"{NS}_console_refused_requests",
            "Requests refused: no CSRF token, a foreign Origin or Host, too many viewers.",
            labels=["reason"],
        )
        for reason, count in c.refused_requests.items():
            refused.add_metric([reason], count)
        refused.add_metric(["viewers"], s.refused_viewers)
        yield refused
        commands = CounterMetricFamily(
            f"{NS}_console_exam_commands",
            "Exam commands sent from the console, by answer.",
            labels=["answer"],
        )
        for answer, count in c.commands.items():
            commands.add_metric([answer], count)
        yield commands


def build_registry(
    health: Callable[[], dict[str, Any]],
    exam_state: Callable[[], dict[str, Any] | None],
    stream: StreamCounters,
    console: ConsoleCounters,
) -> tuple[CollectorRegistry, ResultMetrics]:
    """A registry of its own with the health collector and the latency histogram."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(health, exam_state, stream, console))
    return registry, ResultMetrics(registry)
