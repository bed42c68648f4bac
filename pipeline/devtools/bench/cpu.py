"""Where a measured process spends its CPU: per-thread CPU time from /proc, over a steady-state
window, grouped by what each thread does, with the model's own share taken out.

The bench runs `thermoscreen run` through `pipeline.devtools.bench.probe`, which gives every
Python thread its name at the OS level (so /proc shows `classify-0`, `publish`, ...) and records
the CPU time each inference call spends in its thread. The non-model CPU of a frame is then
everything the process spent in the window minus what the inferences spent, divided by the
results delivered in it. GStreamer's own threads keep their pad names and are grouped together;
threads without a name are native pools (ONNX Runtime's intra-op threads when a frame runs on
several cores, OpenCV's).
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
)
MODEL = "model (inference)"
NATIVE = "native pool"
GSTREAMER = "gstreamer"
MAIN = "main"


@dataclass(frozen=True)
class ThreadCpu:
    name: str
    cpu_ns: int


def _cpu_ns(task: str) -> int:
    """On-CPU time of one thread: schedstat (ns) where the kernel keeps it, else stat's ticks."""
    try:
        with open(f"{task}/schedstat", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    with open(f"{task}/stat", encoding="ascii", errors="replace") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int((int(fields[11]) + int(fields[12])) * CLOCK_TICK_NS)  # utime, stime


def sample_threads(pid: int) -> dict[int, ThreadCpu]:
    """Every thread of `pid` now: its name and CPU time (threads that end meanwhile are skipped)."""
    out: dict[int, ThreadCpu] = {}
    root = f"/proc/{pid}/task"
    try:
        tids = os.listdir(root)
    except OSError:
        return out
    for tid in tids:
        task = f"{root}/{tid}"
        try:
            with open(f"{task}/comm", encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
            out[int(tid)] = ThreadCpu(name, _cpu_ns(task))
        except (OSError, ValueError, IndexError):
            continue
    return out


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
class Snapshot:
    """The measured process (per thread) and, beside it, other processes (the broker) at once."""

    mono_ns: int
    results: int
    threads: dict[int, ThreadCpu]
    others: dict[str, int]


def snapshot(pid: int, results: int, others: Mapping[str, int]) -> Snapshot:
    return Snapshot(
        time.monotonic_ns(),
        results,
        sample_threads(pid),
        {name: process_cpu_ns(other) for name, other in others.items()},
    )


@dataclass
class SteadyWindow:
    """Samples the child at the start and the end of its steady state. `start` and `end` get
    (seconds since the child started, results delivered so far)."""

    start: Callable[[float, int], bool]
    end: Callable[[float, int], bool]
    results: Callable[[], int]
    others: Mapping[str, int] = field(default_factory=dict)
    first: Snapshot | None = None
    last: Snapshot | None = None
    pid: int = 0

    def __call__(self, pid: int, elapsed_s: float) -> None:
        self.pid = pid
        n = self.results()
        if self.first is None:
            if self.start(elapsed_s, n):
                self.first = snapshot(pid, n, self.others)
        elif self.last is None and self.end(elapsed_s, n):
            self.last = snapshot(pid, n, self.others)


def inferences_within(
    calls: list[list[int]], first: Snapshot, last: Snapshot
) -> tuple[float, float]:
    """(frames, CPU ns) of the inference calls within the window. Each call is [start ns, end ns,
    CPU ns]; one that straddles an edge counts with the share of its time inside."""
    frames, cpu_ns = 0.0, 0.0
    for start, end, cpu in calls:
        inside = min(end, last.mono_ns) - max(start, first.mono_ns)
        if inside > 0:
            share = inside / max(end - start, 1)
            frames += share
            cpu_ns += share * cpu
    return frames, cpu_ns


def breakdown(window: SteadyWindow, calls: list[list[int]]) -> dict[str, Any] | None:
    """CPU per frame (ms) per thread group over the window, the model's share apart.

    Frames are the inferences that ended within the window: the CPU and the count come from the
    same process over the same time (results reach the subscriber in bursts). The model's share
    is the inferences' own thread CPU plus native pools (ONNX Runtime's intra-op threads when
    one frame runs on several cores); what remains is the pipeline's.
    """
    first, last = window.first, window.last
    if first is None or last is None:
        return None
    frames, model = inferences_within(calls, first, last)
    pid = window.pid
    if frames < 1:
        return None
    main = last.threads.get(pid)
    unnamed = main.name if main else "python"
    groups: dict[str, float] = {}
    for tid, now in last.threads.items():
        before = first.threads.get(tid)
        spent = now.cpu_ns - (before.cpu_ns if before else 0)
        group = group_of(tid, pid, now.name, unnamed)
        groups[group] = groups.get(group, 0) + spent
    groups["classify"] = groups.get("classify", 0) - model
    total = sum(groups.values()) + model
    non_model = total - model - groups.get(NATIVE, 0)
    window_s = (last.mono_ns - first.mono_ns) / 1e9

    def per_frame(ns: float) -> float:
        return round(ns / 1e6 / frames, 4)

    return {
        "window_s": round(window_s, 2),
        "frames": round(frames, 1),
        "results_delivered": last.results - first.results,
        "cores_busy": round(total / 1e9 / window_s, 3) if window_s > 0 else None,
        "cpu_ms_per_frame": {
            MODEL: per_frame(model),
            **{g: per_frame(ns) for g, ns in sorted(groups.items(), key=lambda kv: -kv[1])},
        },
        "total_ms_per_frame": per_frame(total),
        "non_model_ms_per_frame": per_frame(non_model),
        "others_ms_per_frame": {
            name: per_frame(last.others[name] - first.others.get(name, 0)) for name in last.others
        },
    }
