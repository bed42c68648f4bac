"""Acclimatization: least-squares drift and readiness on synthetic skin settling curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.exam.acclimatization import DriftTracker, drift_c_per_min
from pipeline.exam.config import AcclimatizationConfig
from tests.helpers.exam import T0

DEFAULTS = AcclimatizationConfig()


def settling_c(t_s: float, amplitude_c: float, tau_s: float) -> float:
    """Skin warming towards 33 C after undressing: 33 - A * exp(-t / tau)."""
    return 33.0 - amplitude_c * math.exp(-t_s / tau_s)


def first_ready_s(
    amplitude_c: float, tau_s: float, cfg: AcclimatizationConfig = DEFAULTS, noise_c: float = 0.0
) -> float | None:
    """Sample the curve once a second until the tracker says ready; None within an hour."""
    rng = np.random.default_rng(0)
    tracker = DriftTracker(cfg, T0)
    for second in range(3600):
        now = T0 + second
        if tracker.due(now):
            tracker.add(now, settling_c(second, amplitude_c, tau_s) + rng.normal(0, noise_c))
        if tracker.status(now).ready:
            return float(second)
    return None


def test_slope_of_a_line_is_exact() -> None:
    t = np.arange(0, 181, dtype=np.float64)
    assert drift_c_per_min(t, 30.0 + 0.3 * t / 60.0) == pytest.approx(0.3, abs=1e-9)
    assert drift_c_per_min(t, np.full_like(t, 31.0)) == pytest.approx(0.0, abs=1e-12)
    assert drift_c_per_min(t[:1], t[:1]) is None
    assert drift_c_per_min(np.zeros(5), np.arange(5.0)) is None


def test_drift_measures_the_slope_of_a_settling_curve() -> None:
    tracker = DriftTracker(DEFAULTS, T0)
    for second in range(600):
        tracker.add(T0 + second, settling_c(second, 4.0, 600.0))
    # least squares over the last 180 s approximates the derivative in the window's middle
    expected = 4.0 / 600.0 * math.exp(-510.0 / 600.0) * 60.0
    assert tracker.drift(T0 + 599) == pytest.approx(expected, rel=0.02)


def test_fast_settling_patient_is_ready_at_the_minimum_time() -> None:
    # tau 5 min: the skin has settled long before 15 min, so time decides
    assert first_ready_s(2.0, 300.0) == pytest.approx(900.0, abs=1.0)


def test_slow_settling_patient_waits_for_the_drift() -> None:
    # tau 10 min, 4 C: the drift falls to 0.1 C/min only after ~14 + 1.5 min
    ready = first_ready_s(4.0, 600.0)
    settled = 600.0 * math.log(4.0 / 600.0 * 60.0 / 0.1) + 90.0  # where the window slope hits 0.1
    assert ready is not None and ready > 900.0
    assert ready == pytest.approx(settled, abs=15.0)


def test_noisy_samples_still_settle() -> None:
    ready = first_ready_s(2.0, 300.0, noise_c=0.05)
    assert ready is not None and 900.0 <= ready < 960.0


def test_never_settling_skin_is_never_ready() -> None:
    tracker = DriftTracker(DEFAULTS, T0)
    for second in range(3600):  # warming steadily at 0.15 C/min for an hour
        tracker.add(T0 + second, 30.0 + 0.15 * second / 60.0)
        assert not tracker.status(T0 + second).ready
    assert tracker.drift(T0 + 3599) == pytest.approx(0.15)


def test_samples_must_cover_the_window() -> None:
    cfg = AcclimatizationConfig(min_s=0, drift_window_s=100, min_coverage=0.8)
    tracker = DriftTracker(cfg, T0)
    for second in range(79):
        tracker.add(T0 + second, 32.0)
    assert tracker.drift(T0 + 79) is None and not tracker.status(T0 + 79).ready
    tracker.add(T0 + 80, 32.0)
    assert tracker.drift(T0 + 80) == pytest.approx(0.0) and tracker.status(T0 + 80).ready


def test_sampling_rate_and_bad_samples() -> None:
    tracker = DriftTracker(DEFAULTS, T0)
    assert tracker.due(T0)
    tracker.add(T0, 32.0)
    assert not tracker.due(T0 + 0.5) and tracker.due(T0 + 1.0)
    tracker.add(T0 + 1, float("nan"))
    assert tracker.status(T0 + 1).samples == 1
    assert tracker.samples_since_start() == ((0.0, 32.0),)


def test_basis_follows_the_frames_seen() -> None:
    tracker = DriftTracker(AcclimatizationConfig(min_s=0), T0)
    assert tracker.status(T0).basis == "pending" and not tracker.status(T0).ready
    tracker.saw_frame(radiometric=False)
    assert tracker.status(T0).basis == "time" and tracker.status(T0).ready
    tracker.saw_frame(radiometric=True)  # one radiometric frame: the drift must be measured
    status = tracker.status(T0)
    assert status.basis == "drift" and status.drift_c_per_min is None and not status.ready
