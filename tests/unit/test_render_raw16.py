"""16-bit frames render through a table of every count and get their statistics from the counts:
the same image bits and the same extremes as the float path, without a float frame."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.preprocess import PreprocessConfig, equalize, raw16_table, render, render_celsius
from pipeline.types import Frame, FrameKind, ThermalStats

SCALES = [(0.01, 0.0), (1 / 64, 0.0), (0.04, 0.0), (0.01, 100.0), (0.02, -50.0)]


def _frame(counts: np.ndarray, scale: float, offset: float) -> Frame:
    return Frame(counts, FrameKind.RAW16, 0, "t", 0.0, 0, scale=scale, offset=offset)


@pytest.mark.parametrize(("scale", "offset"), SCALES)
@pytest.mark.parametrize("window", [(20.0, 38.0), (25.5, 36.25), (-10.0, 500.0)])
def test_the_table_renders_every_count_as_the_float_path_does(
    scale: float, offset: float, window: tuple[float, float]
) -> None:
    every = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    frame = _frame(every, scale, offset)
    celsius = frame.celsius()
    assert celsius is not None
    assert np.array_equal(raw16_table(scale, offset, window).reshape(256, 256),
                          render_celsius(celsius, window))  # fmt: skip
    cfg = PreprocessConfig(window_c=window)
    assert np.array_equal(render(frame, cfg), equalize(render_celsius(celsius, window), cfg))


def test_min_max_rendering_still_takes_the_float_path() -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(29_000, 31_500, (48, 64), dtype=np.uint16)
    frame = _frame(counts, 0.01, 0.0)
    cfg = PreprocessConfig(window_c=None, equalization="none")
    celsius = frame.celsius()
    assert celsius is not None
    assert np.array_equal(render(frame, cfg), render_celsius(celsius, None))


@pytest.mark.parametrize(("scale", "offset"), SCALES)
def test_statistics_from_counts_match_the_float_frame(scale: float, offset: float) -> None:
    rng = np.random.default_rng(abs(int(scale * 1000 + offset)))
    for _ in range(20):
        lo = int(rng.integers(0, 60_000))
        counts = rng.integers(lo, lo + 5_000, (120, 160), dtype=np.uint16)
        frame = _frame(counts, scale, offset)
        got, want = ThermalStats.of_frame(frame), ThermalStats.of(frame.celsius())
        assert got is not None and want is not None
        assert (got.t_min_c, got.t_max_c) == (want.t_min_c, want.t_max_c)  # the same numbers
        # the mean is exact from the counts; the float32 mean is within a rounding step of it
        assert abs(got.t_mean_c - want.t_mean_c) <= 0.01 + 1e-9
        exact = float(np.mean(counts.astype(np.float64))) * scale + offset - 273.15
        assert got.t_mean_c == round(exact, 2)


def test_statistics_of_other_frames_are_unchanged() -> None:
    celsius = np.linspace(20.0, 36.0, 48 * 64, dtype=np.float32).reshape(48, 64)
    frame = Frame(celsius, FrameKind.CELSIUS, 0, "t", 0.0, 0)
    assert ThermalStats.of_frame(frame) == ThermalStats.of(celsius)
    gray = Frame(np.zeros((4, 4), np.uint8), FrameKind.GRAY8, 0, "t", 0.0, 0)
    assert ThermalStats.of_frame(gray) is None
