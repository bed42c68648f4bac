"""Child processes of the bench: run one, watch its peak memory, sample it while it runs, stop it
cleanly (SIGINT) when asked, and never leave it behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.devtools.bench.collector import BenchError

POLL_S = 0.02
Poll = Callable[[int, float], None]  # (child pid, seconds since start)


@dataclass(frozen=True)
class ChildRun:
    """A finished child process: exit code, peak RSS, wall time, the tail of its output."""

    returncode: int
    max_rss_mb: float
    wall_s: float
    start_mono_s: float
    stdout: str
    stderr_tail: str


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set of a running process (kB), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


@dataclass
class _Watch:
    """What the poll loop keeps while the child runs."""

    proc: subprocess.Popen[bytes]
    start: float
    timeout_s: float
    stop_after_s: float | None
    until: Callable[[float], bool] | None
    on_poll: Poll | None
    hwm_kb: int = 0
    stop_sent: bool = False

    def poll_once(self, cmd: Sequence[str]) -> int | None:
        """One round: memory, the caller's sampler, a stop when due; the exit status or None."""
        self.hwm_kb = max(self.hwm_kb, vm_hwm_kb(self.proc.pid))
        elapsed = time.monotonic() - self.start
        if self.on_poll is not None:
            self.on_poll(self.proc.pid, elapsed)
        pid, status = os.waitpid(self.proc.pid, os.WNOHANG)
        if pid == self.proc.pid:
            return status
        due = self.stop_after_s is not None and elapsed >= self.stop_after_s
        if (due or (self.until is not None and self.until(elapsed))) and not self.stop_sent:
            self.proc.send_signal(signal.SIGINT)
            self.stop_sent = True
        if elapsed > self.timeout_s:
            raise BenchError(f"{' '.join(cmd[:3])} ... ran past {self.timeout_s:.0f}s; killed")
        return None


def run_child(
    cmd: Sequence[str],
    timeout_s: float,
    stop_after_s: float | None = None,
    env: dict[str, str] | None = None,
    until: Callable[[float], bool] | None = None,
    on_poll: Poll | None = None,
    cwd: Path | None = None,
) -> ChildRun:
    """Run `cmd`; with `stop_after_s` (or when `until(seconds since start)` turns true) send
    SIGINT for a clean stop.
    `on_poll` is called every few milliseconds while the child runs (CPU sampling).

    Peak RSS is the child's VmHWM, read while it runs: wait4's ru_maxrss would also count the
    pages the child shared with this (large) process between fork and exec. `cwd` matters for
    `python -m`, which imports from the working directory before PYTHONPATH.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=cwd)
        watch = _Watch(proc, start, timeout_s, stop_after_s, until, on_poll)
        try:
            status = None
            while status is None:
                status = watch.poll_once(cmd)
                if status is None:
                    time.sleep(POLL_S)
        except BaseException:  # a timeout or Ctrl-C here: never leave the child running
            proc.kill()
            os.waitpid(proc.pid, 0)
            proc.returncode = -9
            raise
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout, stderr = _read(out), _read(err)
    return ChildRun(
        returncode=proc.returncode,
        max_rss_mb=watch.hwm_kb * 1024 / 1e6,
        wall_s=wall,
        start_mono_s=start,
        stdout=stdout,
        stderr_tail="\n".join(stderr.strip().splitlines()[-5:]),
    )


def _read(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def checked(run: ChildRun, what: str) -> ChildRun:
    if run.returncode != 0:
        raise BenchError(f"{what} exited with {run.returncode}: {run.stderr_tail[-400:]}")
    return run


def thermoscreen_cmd() -> list[str]:
    return [sys.executable, "-m", "pipeline.cli"]


def probed_cmd(record: Path) -> list[str]:
    """`thermoscreen` with named threads and timed inferences (`pipeline.devtools.bench.probe`)."""
    return [sys.executable, "-m", "pipeline.devtools.bench.probe", str(record)]
