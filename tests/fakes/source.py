"""A scripted `Source` (pipeline.capture.base.Source) for the runner's unit tests.

Frames are tiny gray8 pictures numbered 0, 1, 2, ...; `wait_before` holds frame i back until
an event is set (read() returns None meanwhile, as a camera without a new frame does), so a test
can line frames up against other threads without sleeping. At the end it raises EndOfStream
(a replay) or keeps returning None (a live camera that waits for a stop).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np

from pipeline.capture.base import EndOfStream, SourceError, SourceStats
from pipeline.types import Frame, FrameKind


def gray_frame(index: int, source_id: str = "fake", shape: tuple[int, int] = (12, 16)) -> Frame:
    """A gray8 frame whose pixels ramp with its index (never constant, so it equalizes)."""
    ramp = (np.arange(shape[0] * shape[1]).reshape(shape) + index) % 256
    return Frame(
        pixels=ramp.astype(np.uint8),
        kind=FrameKind.GRAY8,
        index=index,
        source_id=source_id,
        capture_ts=time.time(),
        capture_mono_ns=time.monotonic_ns(),
    )


class FakeSource:
    """`frames` numbered frames (None: endless), then `then` ("eos" or "idle"); frame
    `fail_at` raises SourceError instead."""

    def __init__(
        self,
        frames: int | None,
        live: bool = False,
        then: Literal["eos", "idle"] = "eos",
        wait_before: Mapping[int, threading.Event] | None = None,
        fail_at: int | None = None,
        lead: Callable[[], int] | None = None,
        every_s: float = 0.0,
    ) -> None:
        self.uri = "fake://scripted"
        self.is_live = live
        self.frames = frames
        self.then = then
        self.wait_before = dict(wait_before or {})
        self.fail_at = fail_at
        self.lead = lead  # frames consumed downstream, to measure how far capture runs ahead
        self.every_s = every_s  # a camera's frame interval (0: as fast as asked)
        self.max_lead = 0
        self.delivered = 0
        self.exhausted = threading.Event()
        self.opened = self.closed = False
        self._stats = SourceStats()

    @property
    def stats(self) -> SourceStats:
        return self._stats

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        i = self.delivered
        if self.frames is not None and i >= self.frames:
            return self._after_last(timeout_s)
        if i == self.fail_at:
            raise SourceError(f"source '{self.uri}': unplugged at frame {i}")
        held = self.wait_before.get(i)
        if held is not None and not held.wait(timeout_s):
            return None
        if self.every_s:
            time.sleep(self.every_s)
        if self.lead is not None:
            self.max_lead = max(self.max_lead, i - self.lead())
        self.delivered += 1
        self._stats.frames += 1
        return gray_frame(i)

    def _after_last(self, timeout_s: float) -> Frame | None:
        self.exhausted.set()
        if self.then == "eos":
            raise EndOfStream
        time.sleep(min(timeout_s, 0.01))
        return None
