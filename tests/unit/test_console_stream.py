"""The live view's encoder keeps its CPU within budget: the pause between frames grows with
what a frame costs, and never drops below the rate cap."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from pipeline.console.stream import JpegStream, encode_jpeg
from pipeline.run.live import LiveView


def stream(cpu_share: float) -> JpegStream:
    return JpegStream(LiveView(), max_fps=10, quality=80, max_viewers=2, cpu_share=cpu_share)


def burn(seconds: float) -> float:
    """Spend about `seconds` of this thread's CPU; return when it started (thread time)."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass
    return start


def test_a_cheap_frame_waits_only_for_the_rate_cap() -> None:
    s = stream(cpu_share=1.0)
    s.counters.encoded = 1
    assert s._pause_s(time.thread_time()) == pytest.approx(0.1)


def test_a_costly_frame_stretches_the_pause_to_the_cpu_budget() -> None:
    s = stream(cpu_share=0.01)
    s.counters.encoded = 1
    pause = s._pause_s(burn(0.02))
    cores = len(os.sched_getaffinity(0))
    cost_s = s.counters.encode_cpu_ms / 1000.0
    assert cost_s >= 0.02
    assert pause == pytest.approx(cost_s / (0.01 * cores))  # 1% of the machine, no more
    assert pause > 0.1


def test_the_cost_is_smoothed_over_frames() -> None:
    s = stream(cpu_share=0.01)
    s.counters.encoded, s.counters.encode_cpu_ms = 5, 100.0
    s._pause_s(time.thread_time())  # a frame that cost nothing moves the average 20%
    assert s.counters.encode_cpu_ms == pytest.approx(80.0, abs=1.0)


def test_a_viewer_over_the_limit_is_refused_and_counted() -> None:
    s = stream(cpu_share=0.03)
    assert s.add_viewer() and s.add_viewer()
    assert not s.add_viewer()
    assert (s.counters.viewers, s.counters.refused_viewers) == (2, 1)
    s.remove_viewer()
    assert s.add_viewer()


def test_jpeg_frames_are_jpeg() -> None:
    jpeg = encode_jpeg(np.zeros((48, 64, 3), dtype=np.uint8), 80)
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
    assert stream(0.03).snapshot() is None  # no frame yet: nothing to encode
