"""Acclimatization: time since the start and, for radiometric sources, skin-temperature drift.

The seed's protocol rests the patient uncovered for 15 minutes at a controlled room temperature
so that the skin reaches a steady state before the views. Time alone does not show that the skin
has settled; the measured drift does. The body's mean skin temperature (mean Celsius inside the
body mask) is sampled every `sample_interval_s`; the drift is the least-squares slope of those
samples over the last `drift_window_s`, in C/min. The exam is ready when the minimum time has
passed AND |drift| <= the limit. Sources without temperature (8-bit video) can only use time; the
record says so (`basis: "time"`).

All times come from the caller's clock, so tests and a compressed-time synthetic patient run in
seconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.exam.config import AcclimatizationConfig

Basis = Literal["drift", "time", "pending"]
MAX_SAMPLES = 7200  # two hours at 1 Hz; older samples leave the record, never the drift window


def drift_c_per_min(times_s: np.ndarray, skin_c: np.ndarray) -> float | None:
    """Least-squares slope of skin temperature over time, in C/min; None under two samples or
    when all samples share one time."""
    if times_s.size < 2:
        return None
    t = times_s.astype(np.float64) - float(times_s.mean())
    denom = float(np.dot(t, t))
    if denom <= 0.0:
        return None
    y = skin_c.astype(np.float64) - float(skin_c.mean())
    return float(np.dot(t, y) / denom) * 60.0


@dataclass(frozen=True)
class AcclimatizationStatus:
    """Where acclimatization stands at `elapsed_s` (what the exam topic and record show)."""

    elapsed_s: float
    required_s: float
    drift_c_per_min: float | None  # None until the samples span enough of the window
    drift_limit_c_per_min: float
    basis: Basis  # drift (radiometric), time (no temperature), pending (no frame yet)
    samples: int

    @property
    def time_met(self) -> bool:
        return self.elapsed_s >= self.required_s

    @property
    def drift_met(self) -> bool:
        """The drift condition: settled skin for radiometric sources, vacuous for time-only."""
        if self.basis == "time":
            return True
        if self.basis == "pending" or self.drift_c_per_min is None:
            return False
        return abs(self.drift_c_per_min) <= self.drift_limit_c_per_min

    @property
    def ready(self) -> bool:
        return self.time_met and self.drift_met


class DriftTracker:
    """Skin-temperature samples of one exam and their drift. Pure bookkeeping."""

    def __init__(self, cfg: AcclimatizationConfig, started_s: float) -> None:
        self.cfg = cfg
        self.started_s = started_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)
        self.radiometric: bool | None = None  # unknown until the first frame

    def due(self, now_s: float) -> bool:
        """Whether a new sample should be taken now (one per sample_interval_s)."""
        if not self._samples:
            return True
        return now_s - self._samples[-1][0] >= self.cfg.sample_interval_s

    def saw_frame(self, radiometric: bool) -> None:
        """Note the kind of source; one radiometric frame makes the drift condition apply."""
        if radiometric:
            self.radiometric = True
        elif self.radiometric is None:
            self.radiometric = False

    def add(self, now_s: float, skin_c: float) -> None:
        """One sample of the body's mean skin temperature (non-finite values are ignored)."""
        if np.isfinite(skin_c):
            self.saw_frame(True)
            self._samples.append((now_s, float(skin_c)))

    def drift(self, now_s: float) -> float | None:
        """Slope over the last drift_window_s, when the samples cover min_coverage of it."""
        window = self.cfg.drift_window_s
        recent: list[tuple[float, float]] = []
        for t, c in reversed(self._samples):  # newest first; stop at the window's start
            if t < now_s - window:
                break
            if t <= now_s:
                recent.append((t, c))
        recent.reverse()
        if len(recent) < 3 or recent[-1][0] - recent[0][0] < self.cfg.min_coverage * window:
            return None
        arr = np.asarray(recent, dtype=np.float64)
        return drift_c_per_min(arr[:, 0], arr[:, 1])

    def status(self, now_s: float) -> AcclimatizationStatus:
        basis: Basis = "pending"
        if self.radiometric is not None:
            basis = "drift" if self.radiometric else "time"
        return AcclimatizationStatus(
            elapsed_s=max(0.0, now_s - self.started_s),
            required_s=self.cfg.min_s,
            drift_c_per_min=self.drift(now_s) if basis == "drift" else None,
            drift_limit_c_per_min=self.cfg.drift_limit_c_per_min,
            basis=basis,
            samples=len(self._samples),
        )

    def samples_since_start(self) -> tuple[tuple[float, float], ...]:
        """(seconds since the start, skin C) pairs, rounded for the record."""
        return tuple((round(t - self.started_s, 3), round(c, 3)) for t, c in self._samples)
