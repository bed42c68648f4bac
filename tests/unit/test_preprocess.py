"""pipeline.preprocess against reference implementations written out element by element.

Rendering: v = floor(clip((C - lo) / (hi - lo), 0, 1) * 255 + 0.5) in float32 (round half up).
Global equalization: OpenCV's equalizeHist, i.e. the textbook cdf formula
lut[v] = round((cdf(v) - cdf(first)) * 255 / (N - hist[first])) with float32 scale and
round-half-to-even (cvRound); a one-valued image is returned unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.preprocess import (
    PreprocessConfig,
    equalize,
    gray_to_rgb,
    model_input,
    nearest_indices,
    render,
    render_celsius,
    scale_to_u8,
)
from pipeline.types import Frame, FrameKind

F = np.float32


def ref_scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """One value at a time, float32 arithmetic, round half up."""
    out = []
    span = F(hi - lo)
    for c in values.ravel().tolist():
        if span <= 0:
            out.append(0)
            continue
        unit = (F(c) - F(lo)) / span
        unit = min(max(unit, F(0.0)), F(1.0))
        out.append(math.floor(F(unit) * F(255.0) + F(0.5)))
    return np.array(out, dtype=np.uint8).reshape(values.shape)


def ref_equalize(gray: np.ndarray) -> np.ndarray:
    hist = [0] * 256
    for v in gray.ravel().tolist():
        hist[v] += 1
    first = next(i for i in range(256) if hist[i])
    total = gray.size
    if hist[first] == total:
        return gray.copy()
    scale = F(255.0) / F(total - hist[first])
    lut = [0] * 256
    running = 0
    for v in range(first + 1, 256):
        running += hist[v]
        lut[v] = min(255, round(float(F(running) * scale)))  # round(): half to even, as cvRound
    return np.array([[lut[v] for v in row] for row in gray.tolist()], dtype=np.uint8)


def celsius_frame(c: np.ndarray) -> Frame:
    return Frame(c.astype(np.float32), FrameKind.CELSIUS, 0, "test", 0.0, 0)


# --- window and min-max rendering ---------------------------------------------------------------


def test_window_scaling_rounds_half_up() -> None:
    values = np.array([-5, 0, 0.49, 0.5, 1.5, 2.5, 126.5, 127.5, 254.5, 255, 300], dtype=F)
    got = scale_to_u8(values, 0.0, 255.0)
    assert got.tolist() == [0, 0, 0, 1, 2, 3, 127, 128, 255, 255, 255]
    assert np.rint(values[3:6]).tolist() == [0.0, 2.0, 2.0]  # banker's rounding would differ


def test_window_scaling_equals_reference_on_thermal_values() -> None:
    c = np.random.default_rng(0).uniform(15.0, 41.0, size=(40, 50)).astype(F)
    assert np.array_equal(render_celsius(c, (20.0, 38.0)), ref_scale(c, 20.0, 38.0))
    assert np.array_equal(render_celsius(c, (25.5, 35.0)), ref_scale(c, 25.5, 35.0))


def test_window_ends_and_clipping() -> None:
    c = np.array([[10.0, 20.0, 29.0, 38.0, 45.0]], dtype=F)
    assert render_celsius(c, (20.0, 38.0)).tolist() == [[0, 0, 128, 255, 255]]


def test_min_max_rendering_spans_full_range() -> None:
    c = np.random.default_rng(1).uniform(28.0, 35.0, size=(30, 30)).astype(F)
    got = render_celsius(c, None)
    assert got.min() == 0 and got.max() == 255
    assert got[np.unravel_index(np.argmin(c), c.shape)] == 0
    assert got[np.unravel_index(np.argmax(c), c.shape)] == 255
    assert np.array_equal(got, ref_scale(c, float(c.min()), float(c.max())))


def test_constant_frames() -> None:
    flat = np.full((8, 9), 31.0, dtype=F)
    assert render_celsius(flat, None).tolist() == np.zeros((8, 9), np.uint8).tolist()
    assert set(render_celsius(flat, (20.0, 38.0)).ravel().tolist()) == {156}  # 11/18*255 = 155.8
    gray = np.full((5, 5), 77, dtype=np.uint8)
    assert np.array_equal(equalize(gray, PreprocessConfig()), gray)


def test_raw16_lepton_frame_renders_through_celsius() -> None:
    raw = np.array([[29315, 29815, 30715, 31115, 32000]], dtype=np.uint16)  # centi-kelvin
    frame = Frame(raw, FrameKind.RAW16, 0, "lepton", 0.0, 0, scale=0.01, offset=0.0)
    got = render(frame, PreprocessConfig(equalization="none"))
    celsius = [F(r) * F(0.01) + F(0.0) - F(273.15) for r in raw.ravel().tolist()]
    assert got.ravel().tolist() == ref_scale(np.array(celsius, dtype=F), 20.0, 38.0).tolist()
    assert got[0, 0] == 0 and got[0, 3] == 255 and got[0, 4] == 255
    assert got.ravel().tolist() == sorted(got.ravel().tolist())


def test_gray8_frame_is_used_as_is() -> None:
    gray = np.random.default_rng(2).integers(0, 256, size=(6, 7), dtype=np.uint8)
    frame = Frame(gray, FrameKind.GRAY8, 0, "png", 0.0, 0)
    assert np.array_equal(render(frame, PreprocessConfig(equalization="none")), gray)
    assert np.array_equal(render(frame, PreprocessConfig()), ref_equalize(gray))


# --- global equalization -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_global_equalization_equals_cdf_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 80, size=2))
    lo, hi = sorted(int(v) for v in rng.integers(0, 256, size=2))
    gray = rng.integers(lo, hi + 1, size=(h, w)).astype(np.uint8)
    assert np.array_equal(equalize(gray, PreprocessConfig()), ref_equalize(gray))


def test_equalization_ties_round_half_to_even() -> None:
    # seven levels: 255 / 6 = 42.5 per step; OpenCV's cvRound gives 42 and 212, not 43 and 213
    gray = np.array([[0, 10, 20, 30, 40, 50, 60]], dtype=np.uint8)
    assert equalize(gray, PreprocessConfig()).tolist() == [[0, 42, 85, 128, 170, 212, 255]]
    assert np.array_equal(ref_equalize(gray), equalize(gray, PreprocessConfig()))


def test_equalization_of_rendered_celsius_frame() -> None:
    c = np.random.default_rng(3).normal(32.0, 1.5, size=(48, 64)).astype(F)
    frame = celsius_frame(c)
    assert np.array_equal(render(frame, PreprocessConfig()), ref_equalize(ref_scale(c, 20, 38)))


def test_no_equalization_returns_input() -> None:
    gray = np.random.default_rng(4).integers(0, 256, size=(9, 9), dtype=np.uint8)
    assert np.array_equal(equalize(gray, PreprocessConfig(equalization="none")), gray)


# --- RGB and resize indices ---------------------------------------------------------------------


def test_gray_to_rgb_replicates_channels() -> None:
    gray = np.random.default_rng(5).integers(0, 256, size=(4, 6), dtype=np.uint8)
    rgb = gray_to_rgb(gray)
    assert rgb.shape == (4, 6, 3)
    assert all(np.array_equal(rgb[:, :, c], gray) for c in range(3))
    assert np.array_equal(model_input(gray), model_input(rgb))


@pytest.mark.parametrize(("n_in", "n_out"), [(1, 224), (53, 224), (224, 224), (248, 224), (640, 7)])
def test_nearest_indices_use_float32_scale(n_in: int, n_out: int) -> None:
    scale = F(n_in) / F(n_out)
    expected = [int(F(i) * scale) for i in range(n_out)]
    got = nearest_indices(n_in, n_out).tolist()
    assert got == expected
    assert max(got) < n_in
