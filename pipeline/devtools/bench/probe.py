"""`thermoscreen` with the bench's two instruments, for the runs the bench measures:

    python -m pipeline.devtools.bench.probe RECORD.json run SOURCE --config ...

- every Python thread gets its name at the OS level (`thermoscreen-` cut, 15 characters), so
  per-thread CPU in /proc/PID/task says which stage spent it;
- every ONNX Runtime call records when it started and ended (CLOCK_MONOTONIC, comparable across
  processes) and the CPU time it took in its thread; the list is written to RECORD.json at exit.

Both cost a few microseconds per thread start or per frame, against milliseconds of inference.
Nothing else changes: the command is `pipeline.cli.main` with the remaining arguments.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import cli
from pipeline.classify.onnx import OnnxRuntimeClassifier

PR_SET_NAME = 15  # prctl option: the calling thread's name (15 bytes and a NUL)


def name_this_thread(name: str) -> None:
    """Give the calling thread `name` at the OS level; nothing where prctl is not there."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(PR_SET_NAME, name.removeprefix("thermoscreen-")[:15].encode(), 0, 0, 0)
    except (OSError, AttributeError):
        return


class InferenceLog:
    """[start, end monotonic ns, thread CPU ns] per inference call, appended from any thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def timed(self, run: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        calls = self.calls

        def run_timed(classifier: Any, tensor: Any) -> Any:
            start, cpu0 = time.monotonic_ns(), time.thread_time_ns()
            out = run(classifier, tensor)
            calls.append((start, time.monotonic_ns(), time.thread_time_ns() - cpu0))
            return out

        return run_timed

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps({"inference": self.calls}), encoding="utf-8")


def install(record: Path) -> InferenceLog:
    """Name threads as they start and time every inference; write the record at exit."""
    start = threading.Thread.run

    def named_run(thread: threading.Thread) -> None:
        name_this_thread(thread.name)
        start(thread)

    threading.Thread.run = named_run  # type: ignore[method-assign,assignment]
    log = InferenceLog()
    OnnxRuntimeClassifier.run_tensor = log.timed(  # type: ignore[method-assign,assignment]
        OnnxRuntimeClassifier.run_tensor
    )
    atexit.register(log.dump, record)
    return log


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
