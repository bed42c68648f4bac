"""`thermoscreen` with the bench's instruments, for the runs the bench measures:

    python -m pipeline.devtools.bench.probe RECORD.json run SOURCE --config ...

- every Python thread gets its name at the OS level (`thermoscreen-` cut, 15 characters), so
  the threads say which stage they are;
- every ONNX Runtime call keeps, per thread, the CPU time the model has taken in that thread
  (finished calls, and the one running now from its start);
- a sampler thread reads, every SAMPLE_S, each thread's CPU clock and, for the classify threads,
  the model's share of it, at the same instant per thread. The samples (with CLOCK_MONOTONIC
  times, comparable across processes) go to RECORD.json as they are taken, one JSON line each.

Sampling inside the process is what makes the numbers hold on a loaded machine: a sampler in
another process may be descheduled between taking the time and reading the threads. The probe
costs a few microseconds per frame and a fraction of a millisecond per sample; its own thread is
reported apart. Nothing else changes: the command is `pipeline.cli.main` with the remaining
arguments.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import cli
from pipeline.classify.onnx import OnnxRuntimeClassifier

PR_SET_NAME = 15  # prctl option: the calling thread's name (15 bytes and a NUL)
SAMPLE_S = 0.1
SAMPLER_NAME = "bench-probe"
NAMES_EVERY = 20  # samples between two readings of every thread's name


def name_this_thread(name: str) -> None:
    """Give the calling thread `name` at the OS level; nothing where prctl is not there."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(PR_SET_NAME, name.removeprefix("thermoscreen-")[:15].encode(), 0, 0, 0)
    except (OSError, AttributeError):
        return


def thread_cpu_ns(tid: int) -> int:
    """CPU time of thread `tid` of this process, now (Linux per-thread CPU clock, exact)."""
    return time.clock_gettime_ns(((~tid) << 3) | 6)  # CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED


class ModelClock:
    """Per thread: calls finished, the model's CPU in them, where the running call started.
    Each thread writes only its own entry, in one assignment."""

    IDLE = (0, 0, -1)  # (calls, finished ns, running call's start ns or -1)

    def __init__(self) -> None:
        self.state: dict[int, tuple[int, int, int]] = {}

    def timed(self, run: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        state = self.state

        def run_timed(classifier: Any, tensor: Any) -> Any:
            tid = threading.get_native_id()
            calls, done, _ = state.get(tid, ModelClock.IDLE)
            start = time.thread_time_ns()
            state[tid] = (calls, done, start)
            try:
                return run(classifier, tensor)
            finally:
                state[tid] = (calls + 1, done + time.thread_time_ns() - start, -1)

        return run_timed

    @property
    def frames(self) -> int:
        return sum(calls for calls, _, _ in list(self.state.values()))

    def model_ns(self, tid: int, cpu_now: int) -> int:
        _, done, start = self.state.get(tid, ModelClock.IDLE)
        return done + (cpu_now - start if start >= 0 else 0)


def _name(tid: int) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def sample(clock: ModelClock, names: dict[int, str]) -> dict[str, Any]:
    """Every thread now: name, CPU ns, and the model's ns of it (read at once per thread).
    `names` caches thread names by id (the caller clears it now and then). A name still inherited
    from the main thread is read again next time: a thread seen before its run() named it would
    otherwise be counted as a native pool for the rest of a short window."""
    threads: dict[str, list[Any]] = {}
    pid = os.getpid()
    inherited = names.get(pid) or _name(pid)
    for entry in os.listdir("/proc/self/task"):
        tid = int(entry)
        try:
            before = clock.state.get(tid)
            cpu = thread_cpu_ns(tid)
            if clock.state.get(tid) != before:  # a call began or ended in between: read again
                cpu = thread_cpu_ns(tid)
        except OSError:
            continue  # the thread ended
        name = names.get(tid) or _name(tid)
        if tid == pid or name != inherited:
            names[tid] = name  # final: a Python thread names itself as its run() starts
        threads[entry] = [name, cpu, clock.model_ns(tid, cpu)]
    return {
        "mono_ns": time.monotonic_ns(),
        "frames": clock.frames,
        "threads": threads,
        "process": process_counters(),
    }


def process_counters() -> dict[str, int]:
    """This process's minor page faults and its user / system CPU (clock ticks, all threads)."""
    try:
        with open("/proc/self/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return {}
    return {"minflt": int(fields[7]), "utime": int(fields[11]), "stime": int(fields[12])}


class Sampler:
    """Writes a sample a line to the record as it goes (JSON lines; the first line names the
    process), so a ten-minute run keeps none of them in the memory being measured."""

    def __init__(self, clock: ModelClock, record: Path) -> None:
        self.clock = clock
        self._out = record.open("w", encoding="utf-8")
        self._out.write(json.dumps({"pid": os.getpid()}) + "\n")
        self._out.flush()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=SAMPLER_NAME, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        names: dict[int, str] = {}
        taken = 0
        while not self._stop.wait(SAMPLE_S):
            if taken % NAMES_EVERY == 0:
                names.clear()
            line = json.dumps(sample(self.clock, names)) + "\n"
            with self._lock:
                if self._out.closed:
                    return
                self._out.write(line)
                self._out.flush()
            taken += 1

    def close(self) -> None:
        """At exit; no last sample: the stage threads have ended by now, their CPU with them."""
        self._stop.set()
        with self._lock:
            self._out.close()


def install(record: Path) -> Sampler:
    """Name threads as they start, clock the model's CPU, sample into the record."""
    start = threading.Thread.run

    def named_run(thread: threading.Thread) -> None:
        name_this_thread(thread.name)
        start(thread)

    threading.Thread.run = named_run  # type: ignore[method-assign,assignment]
    clock = ModelClock()
    OnnxRuntimeClassifier.run_tensor = clock.timed(  # type: ignore[method-assign,assignment]
        OnnxRuntimeClassifier.run_tensor
    )
    sampler = Sampler(clock, record)
    atexit.register(sampler.close)
    return sampler


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(
            "usage: python -m pipeline.devtools.bench.probe RECORD.json COMMAND ...",
            file=sys.stderr,
        )
        return 2
    install(Path(argv[0]))
    return cli.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
