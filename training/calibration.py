"""Calibration and the operating threshold: Brier score, reliability curve, threshold choice.

A screening adjunct is run at a fixed sensitivity, not at argmax: `choose_threshold` picks, on
validation scores only, the highest threshold whose sensitivity reaches the target, and the
pipeline calls a patient positive when p(sick) >= threshold (`pipeline.run.session`), so the rule
here
and there is the same. Numpy only, so every number can be checked by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def _check(y_true: npt.ArrayLike, prob: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], F64]:
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and prob {p.shape} must be 1-D of the same length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if p.size and (np.nanmin(p) < 0.0 or np.nanmax(p) > 1.0 or np.isnan(p).any()):
        raise ValueError("prob must be probabilities in [0, 1]")
    return y.astype(np.int64), p


def brier_score(y_true: npt.ArrayLike, prob: npt.ArrayLike) -> float:
    """Mean squared difference between p(positive) and the 0/1 outcome (0 is perfect; a constant
    0.5 scores 0.25). NaN for no samples."""
    y, p = _check(y_true, prob)
    return float(np.mean((p - y) ** 2)) if y.size else float("nan")


@dataclass(frozen=True)
class Reliability:
    """Equal-width bins over [0, 1]: mean predicted probability, observed positive rate, count."""

    edges: F64
    mean_prob: F64  # NaN for an empty bin
    frac_positive: F64  # NaN for an empty bin
    count: npt.NDArray[np.int64]

    def ece(self) -> float:
        """Expected calibration error: count-weighted mean |observed - predicted| over bins."""
        used = self.count > 0
        n = int(self.count.sum())
        if n == 0:
            return float("nan")
        gap = np.abs(self.frac_positive[used] - self.mean_prob[used])
        return float(np.sum(gap * self.count[used]) / n)

    def as_dict(self) -> dict[str, object]:
        def clean(a: F64) -> list[float | None]:
            return [None if math.isnan(v) else round(float(v), 6) for v in a]

        return {
            "edges": [round(float(e), 6) for e in self.edges],
            "mean_prob": clean(self.mean_prob),
            "frac_positive": clean(self.frac_positive),
            "count": [int(c) for c in self.count],
            "ece": None if math.isnan(self.ece()) else round(self.ece(), 6),
        }


def reliability(y_true: npt.ArrayLike, prob: npt.ArrayLike, n_bins: int = 5) -> Reliability:
    """Reliability curve; bin i holds edges[i] <= p < edges[i+1] (the last bin includes 1.0).

    Few bins by default: with ~100 patients, ten bins leave most of them nearly empty.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, p = _check(y_true, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.minimum(np.searchsorted(edges, p, side="right") - 1, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.int64)
    sums = np.bincount(which, weights=p, minlength=n_bins)
    pos = np.bincount(which, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.where(count > 0, sums / np.maximum(count, 1), np.nan)
        frac = np.where(count > 0, pos / np.maximum(count, 1), np.nan)
    return Reliability(edges=edges, mean_prob=mean_prob, frac_positive=frac, count=count)


@dataclass(frozen=True)
class Threshold:
    """An operating threshold and what it achieved on the scores it was chosen on."""

    value: float
    target_sensitivity: float
    sensitivity: float
    specificity: float
    n_positive: int
    n_negative: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "value": round(self.value, 6),
            "target_sensitivity": self.target_sensitivity,
            "sensitivity_on_validation": round(self.sensitivity, 6),
            "specificity_on_validation": round(self.specificity, 6),
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
        }


def rates_at(y_true: npt.ArrayLike, prob: npt.ArrayLike, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) when p >= threshold is called positive; NaN where undefined."""
    y, p = _check(y_true, prob)
    called = p >= threshold
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    sens = float(np.sum(called & (y == 1)) / n_pos) if n_pos else float("nan")
    spec = float(np.sum(~called & (y == 0)) / n_neg) if n_neg else float("nan")
    return sens, spec


def choose_threshold(
    y_true: npt.ArrayLike, prob: npt.ArrayLike, min_sensitivity: float = 0.90
) -> Threshold:
    """The highest threshold with sensitivity >= `min_sensitivity` on these (validation) scores.

    Let s be the score of the positive that must still be caught (the ceil(target * n_pos)-th
    highest positive score). The threshold is the midpoint between s and the next lower distinct
    score of any sample, so a new sample scoring like s is still called positive; with nothing
    below s it is s itself. Raises ValueError without positives.
    """
    if not 0.0 < min_sensitivity <= 1.0:
        raise ValueError(f"min_sensitivity must be in (0, 1], got {min_sensitivity}")
    y, p = _check(y_true, prob)
    pos = np.sort(p[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("cannot choose a threshold for sensitivity without positive samples")
    need = math.ceil(min_sensitivity * pos.size - 1e-9)
    s = float(pos[need - 1])
    lower = p[p < s]
    value = (s + float(lower.max())) / 2.0 if lower.size else s
    sens, spec = rates_at(y, p, value)
    return Threshold(
        value=value,
        target_sensitivity=min_sensitivity,
        sensitivity=sens,
        specificity=spec,
        n_positive=int(pos.size),
        n_negative=int(np.sum(y == 0)),
    )


def plot_reliability(curves: dict[str, Reliability], path: Path, title: str) -> Path:
    """One reliability plot (predicted vs observed, marker size ~ count) for several curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, rel in curves.items():
        used = rel.count > 0
        ax.plot(rel.mean_prob[used], rel.frac_positive[used], marker="o", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted p(sick)")
    ax.set_ylabel("observed fraction sick")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
