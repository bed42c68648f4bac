"""How frames travel between the stages of one run, and how the stages learn that it ends.

    capture --(live: 1-slot newest wins, drops counted | replay: N bounded lanes, blocks)-->
    classify worker i --(lane i, bounded, blocks)--> publish
    --(bounded; live drops the oldest and counts)--> annotated output

Replay with N workers: frame k goes to lane k % N and the publisher takes results from lanes
0, 1, ..., N-1 in turn, so results leave in capture order without a reorder buffer.

Every wait polls (`POLL_S`) so that a failed stage, which will never make room or deliver its
end marker, cannot leave another stage blocked for ever.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import TypeVar

from pipeline.capture.base import LatestSlot
from pipeline.run.base import Classified
from pipeline.run.options import QueueOptions
from pipeline.run.session import EndReason
from pipeline.types import Frame

POLL_S = 0.2

T = TypeVar("T")


class End:
    """Queue marker: the stage upstream has finished."""


END = End()


class Control:
    """The shared fate of one run: the stop event, the first error and why the session ended."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()
        self.failed = threading.Event()
        self.error: str | None = None
        self.error_kind = ""  # "source" (bad input: exit 2) or "stage" (exit 1)
        self.end_reason: EndReason = "stopped"
        self._lock = threading.Lock()

    def fail(self, message: str, kind: str) -> None:
        """Record the first error, end the session as `error` and stop every stage."""
        with self._lock:
            if self.error is None:
                self.error, self.error_kind = message, kind
            self.end_reason = "error"
        self.failed.set()
        self.stop.set()

    def reached_end_of_stream(self) -> None:
        with self._lock:
            if self.end_reason != "error":
                self.end_reason = "eos"


@dataclass(frozen=True)
class QueueDepths:
    """Items waiting between stages (frames: None live, where the one slot holds them)."""

    frames: int | None
    results: int
    output: int


def put_blocking(q: queue.Queue[T], item: T, failed: threading.Event) -> bool:
    """Backpressure: wait for room, unless a stage failed (then nobody will make room)."""
    while True:
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            if failed.is_set():
                return False


def put_dropping_oldest(q: queue.Queue[T], item: T) -> int:
    """Never block: make room by dropping the oldest items; returns how many were dropped."""
    dropped = 0
    while True:
        try:
            q.put_nowait(item)
            return dropped
        except queue.Full:
            try:
                q.get_nowait()
                dropped += 1
            except queue.Empty:
                pass


def get_or_end(q: queue.Queue[T | End], upstream_done: threading.Event) -> T | End | None:
    """The next item; None while waiting; END once upstream is done and nothing is left
    (also when a failed upstream could not deliver its END)."""
    try:
        return q.get(timeout=POLL_S)
    except queue.Empty:
        return END if upstream_done.is_set() else None


class Queues:
    """The bounded queues and end-of-stage events between capture, classify, publish, output."""

    def __init__(self, options: QueueOptions, control: Control) -> None:
        self.live = options.live
        self.workers = options.workers
        self._failed = control.failed
        self.slot = LatestSlot()
        self.frames: list[queue.Queue[Frame | End]] = [
            queue.Queue(options.frames_per_worker) for _ in range(options.workers)
        ]
        self.results: list[queue.Queue[Classified | End]] = [
            queue.Queue(options.results_per_worker) for _ in range(options.workers)
        ]
        self.output: queue.Queue[Classified | End] = queue.Queue(options.output)
        self.capture_done = threading.Event()
        self.classify_done = threading.Event()
        self.publish_done = threading.Event()
        self._workers_left = options.workers
        self._lock = threading.Lock()

    # --- capture -> classify ---------------------------------------------------------------

    def hand_off(self, frame: Frame, turn: int) -> int:
        """One captured frame to the classify workers; returns the frames a live hand-off
        dropped (the newest wins), always 0 in a replay (waits for room)."""
        if self.live:
            before = self.slot.dropped
            self.slot.put(frame)
            return self.slot.dropped - before
        put_blocking(self.frames[turn % self.workers], frame, self._failed)
        return 0

    def end_capture(self) -> None:
        self.capture_done.set()
        self.slot.close()
        for lane in self.frames:
            put_blocking(lane, END, self._failed)

    def next_frame(self, worker: int) -> Frame | End | None:
        """The next captured frame; None when nothing arrived yet; END when capture is over."""
        if self.live:
            frame = self.slot.get(POLL_S)
            if frame is None and self.capture_done.is_set():
                return END
            return frame
        try:
            return self.frames[worker].get(timeout=POLL_S)
        except queue.Empty:
            return None

    # --- classify -> publish ---------------------------------------------------------------

    def put_result(self, worker: int, item: Classified) -> None:
        put_blocking(self.results[worker], item, self._failed)

    def end_worker(self, worker: int) -> None:
        put_blocking(self.results[worker], END, self._failed)
        with self._lock:
            self._workers_left -= 1
            if self._workers_left == 0:
                self.classify_done.set()

    def next_result(self, turn: int) -> Classified | End | None:
        return get_or_end(self.results[turn], self.classify_done)

    # --- publish -> output -----------------------------------------------------------------

    def to_output(self, item: Classified) -> int:
        """Returns the annotated frames dropped: live never blocks the publisher."""
        if self.live:
            return put_dropping_oldest(self.output, item)
        put_blocking(self.output, item, self._failed)
        return 0

    def end_publish(self) -> None:
        self.publish_done.set()
        put_blocking(self.output, END, self._failed)

    def next_output(self) -> Classified | End | None:
        return get_or_end(self.output, self.publish_done)

    def depths(self) -> QueueDepths:
        return QueueDepths(
            frames=None if self.live else sum(q.qsize() for q in self.frames),
            results=sum(q.qsize() for q in self.results),
            output=self.output.qsize(),
        )
