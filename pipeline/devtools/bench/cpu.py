"""Where a measured process spends its CPU: per-thread CPU over a steady-state window, grouped by
what each thread does, with the model's own share taken out.

The bench runs `thermoscreen run` through `pipeline.devtools.bench.probe`, which names every
Python thread at the OS level and samples, from inside the process, every thread's CPU clock and
the model's share of the classify threads' (ONNX Runtime calls clocked in their thread). The
bench decides when its steady window starts and ends (by results delivered, or time); the
samples within it give, per frame classified, the CPU of each thread group and the non-model
CPU: everything the process spent minus what the model spent. GStreamer's own threads keep their
pad names and are grouped together; threads without a name of their own are native pools (ONNX
Runtime's intra-op threads when one frame runs on several cores), counted as the model's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

CLOCK_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")

# OS thread-name prefix -> group (names as the probe sets them: "thermoscreen-" cut, 15 chars)
GROUPS: tuple[tuple[str, str], ...] = (
    ("classify-", "classify"),
    ("capture", "capture"),
    ("decode", "folder decode"),
    ("publish", "publish"),
    ("mqtt-publisher", "mqtt client"),
    ("paho-mqtt", "paho network"),
    ("outbox-checkpo", "outbox checkpoint"),
    ("output", "output"),
    ("bench-probe", "bench probe"),
)
MODEL = "model (inference)"
NATIVE = "native pool"
GSTREAMER = "gstreamer"
MAIN = "main"
PROBE = "bench probe"  # the sampler itself: reported, never counted


def process_cpu_ns(pid: int) -> int:
    """CPU time of a whole process (all its threads, those that ended included)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int((int(fields[11]) + int(fields[12])) * CLOCK_TICK_NS)


def group_of(tid: int, pid: int, name: str, unnamed: str) -> str:
    """The group of one thread of process `pid` from its OS name. A native thread inherits the
    name of the thread that started it: `unnamed` (the main thread's, the executable's name)
    marks the pools started at load time, ONNX Runtime's among them."""
    if tid == pid:
        return MAIN
    for prefix, group in GROUPS:
        if name.startswith(prefix):
            return group
    if name == unnamed:
        return NATIVE
    return GSTREAMER


@dataclass(frozen=True)
class Mark:
    """One edge of the window, seen from the bench: when, results so far, other processes."""

    mono_ns: int
    results: int
    others: dict[str, int]


@dataclass
class SteadyWindow:
    """Marks the start and the end of the child's steady state. `start` and `end` get (seconds
    since the child started, results delivered so far); `others` are processes (the broker)
    whose CPU is read at both edges."""

    start: Callable[[float, int], bool]
    end: Callable[[float, int], bool]
    results: Callable[[], int]
    others: Mapping[str, int] = field(default_factory=dict)
    first: Mark | None = None
    last: Mark | None = None

    def _mark(self, results: int) -> Mark:
        cpu = {name: process_cpu_ns(pid) for name, pid in self.others.items()}
        return Mark(time.monotonic_ns(), results, cpu)

    def __call__(self, pid: int, elapsed_s: float) -> None:
        n = self.results()
        if self.first is None:
            if self.start(elapsed_s, n):
                self.first = self._mark(n)
        elif self.last is None and self.end(elapsed_s, n):
            self.last = self._mark(n)


def _within(samples: list[dict[str, Any]], first: Mark, last: Mark) -> tuple[Any, Any] | None:
    """The first and the last of the child's samples inside the window. A window too short to
    hold two starts at the sample before it instead; it never ends after it, where the stage
    threads may have ended (and their CPU with them)."""
    ending = [s for s in samples if s["mono_ns"] <= last.mono_ns]
    if not ending:
        return None
    b = ending[-1]
    inside = [s for s in ending if first.mono_ns <= s["mono_ns"] < b["mono_ns"]]
    before = [s for s in ending if s["mono_ns"] < first.mono_ns]
    a = inside[0] if inside else (before[-1] if before else None)
    if a is None or b["frames"] <= a["frames"]:
        return None
    return a, b


def _groups(a: dict[str, Any], b: dict[str, Any], pid: int) -> tuple[dict[str, int], int]:
    """CPU ns per group between two samples, the model's share apart (as the second item)."""
    threads = b["threads"]
    unnamed = threads.get(str(pid), ["python"])[0]
    groups: dict[str, int] = {}
    model = 0
    for tid, (name, cpu, model_ns) in threads.items():
        _, cpu0, model0 = a["threads"].get(tid, [name, 0, 0])
        group = group_of(int(tid), pid, name, unnamed)
        groups[group] = groups.get(group, 0) + (cpu - cpu0) - (model_ns - model0)
        model += model_ns - model0
    return groups, model


def process_rates(a: dict[str, int], b: dict[str, int], frames: int) -> dict[str, float | None]:
    """Minor page faults per frame, and the kernel's share of the process's CPU (a high share
    with many faults: memory taken from and given back to the system every frame)."""
    if not a or not b or frames <= 0:
        return {"page_faults_per_frame": None, "system_cpu_share": None}
    user, system = b["utime"] - a["utime"], b["stime"] - a["stime"]
    return {
        "page_faults_per_frame": round((b["minflt"] - a["minflt"]) / frames, 1),
        "system_cpu_share": round(system / (user + system), 3) if user + system else None,
    }


def breakdown(window: SteadyWindow, record: dict[str, Any]) -> dict[str, Any] | None:
    """CPU per frame classified (ms) per thread group over the window, the model's share apart.

    Native pools count as the model's (ONNX Runtime's intra-op threads when one frame runs on
    several cores). Other processes (the broker) are per result delivered.
    """
    if window.first is None or window.last is None:
        return None
    pair = _within(record["samples"], window.first, window.last)
    if pair is None:
        return None
    a, b = pair
    frames = b["frames"] - a["frames"]
    groups, model = _groups(a, b, int(record["pid"]))
    probe = groups.pop(PROBE, 0)
    total = sum(groups.values()) + model
    non_model = total - model - groups.get(NATIVE, 0)
    span_s = (b["mono_ns"] - a["mono_ns"]) / 1e9
    delivered = window.last.results - window.first.results

    def per_frame(ns: float, n: int = frames) -> float:
        return round(ns / 1e6 / max(n, 1), 4)

    return {
        "window_s": round(span_s, 2),
        "frames": frames,
        "cores_busy": round(total / 1e9 / span_s, 3) if span_s > 0 else None,
        "cpu_ms_per_frame": {
            MODEL: per_frame(model),
            **{g: per_frame(ns) for g, ns in sorted(groups.items(), key=lambda kv: -kv[1])},
        },
        "total_ms_per_frame": per_frame(total),
        "non_model_ms_per_frame": per_frame(non_model),
        "probe_ms_per_frame": per_frame(probe),
        **process_rates(a.get("process", {}), b.get("process", {}), frames),
        "others_ms_per_frame": {
            name: per_frame(window.last.others[name] - window.first.others.get(name, 0), delivered)
            for name in window.last.others
        },
    }
