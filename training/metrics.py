"""Screening metrics in plain numpy: accuracy, sensitivity, specificity, ROC AUC, bootstrap CIs.

Numpy only, so the numbers can be checked by hand in unit tests and reused outside torch.
Conventions:

- `y_true` holds 1 for the positive class (`sick`) and 0 for every other class.
- A metric whose denominator is empty (sensitivity without positives, AUC with one class) is NaN,
  never 0 or 1: a reader must see that it is undefined.
- Bootstrap intervals resample *patients* (clusters), taking all images of each drawn patient, so
  images of one patient never count as independent evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

METRIC_NAMES = ("accuracy", "sensitivity", "specificity", "auc")


def _as_binary(y: npt.ArrayLike, name: str) -> I64:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr.astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int) -> I64:
    """Counts with rows = true class, columns = predicted class (sklearn's orientation)."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class indices must lie in [0, {n_classes})")
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (t, p), 1)
    return out


def accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return _ratio(float(np.sum(t == p)), float(t.size))


def sensitivity(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """True-positive rate; NaN when there are no positives."""
    t, p = _as_binary(y_true, "y_true"), _as_binary(y_pred, "y_pred")
    return _ratio(float(np.sum((t == 1) & (p == 1))), float(np.sum(t == 1)))


def specificity(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """True-negative rate; NaN when there are no negatives."""
    t, p = _as_binary(y_true, "y_true"), _as_binary(y_pred, "y_pred")
    return _ratio(float(np.sum((t == 0) & (p == 0))), float(np.sum(t == 0)))


def _average_ranks(values: F64) -> F64:
    """1-based ranks, ties sharing their mean rank (what Mann-Whitney needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], values.size]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def roc_auc(y_true: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties count 1/2.

    NaN when only one class is present.
    """
    t = _as_binary(y_true, "y_true")
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(np.sum(t == 1))
    n_neg = int(t.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = float(np.sum(ranks[t == 1])) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def roc_curve(y_true: npt.ArrayLike, score: npt.ArrayLike) -> tuple[F64, F64, F64]:
    """(fpr, tpr, thresholds), one point per distinct score from high to low, starting at (0, 0).

    A sample is called positive when its score >= threshold. NaN rates when a class is absent.
    """
    t = _as_binary(y_true, "y_true")
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True] if s.size else np.zeros(0, bool)
    tps = np.cumsum(t_sorted)[last_of_run].astype(np.float64)
    fps = np.cumsum(1 - t_sorted)[last_of_run].astype(np.float64)
    n_pos, n_neg = float(np.sum(t == 1)), float(np.sum(t == 0))
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(tps.size + 1, np.nan)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(fps.size + 1, np.nan)
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    return fpr, tpr, thresholds


def binary_metrics(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, score: npt.ArrayLike
) -> dict[str, float]:
    """All four screening metrics for one set of predictions."""
    return {
        "accuracy": accuracy(y_true, y_pred),
        "sensitivity": sensitivity(y_true, y_pred),
        "specificity": specificity(y_true, y_pred),
        "auc": roc_auc(y_true, score),
    }


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval; `n_valid` resamples defined it."""

    value: float
    low: float
    high: float
    n_valid: int

    def as_dict(self) -> dict[str, object]:
        def clean(x: float) -> float | None:
            return None if np.isnan(x) else round(float(x), 6)

        return {
            "value": clean(self.value),
            "ci95": [clean(self.low), clean(self.high)],
            "n_valid": self.n_valid,
        }


def bootstrap(
    groups: Sequence[npt.NDArray[np.intp]],
    stat: Callable[[npt.NDArray[np.intp]], dict[str, float]],
    n_resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, Interval]:
    """Cluster bootstrap: draw len(groups) groups with replacement, evaluate `stat` on the union of
    their sample indices, and take percentile intervals per metric (undefined resamples skipped).

    `groups[g]` lists the sample indices of group g (a patient's images). `stat(indices)` returns a
    dict of metric values; the point estimate is `stat` on all samples. Same seed, same intervals.
    """
    if not groups:
        raise ValueError("bootstrap needs at least one group")
    everything = np.concatenate(groups)
    point = stat(everything)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_resamples):
        chosen = rng.integers(0, len(groups), size=len(groups))
        idx = np.concatenate([groups[g] for g in chosen])
        for k, v in stat(idx).items():
            if not np.isnan(v):
                draws[k].append(v)
    alpha = (1.0 - level) / 2.0
    out: dict[str, Interval] = {}
    for k, v in point.items():
        d = np.asarray(draws[k])
        if d.size:
            lo, hi = np.quantile(d, [alpha, 1.0 - alpha])
        else:
            lo = hi = float("nan")
        out[k] = Interval(value=v, low=float(lo), high=float(hi), n_valid=int(d.size))
    return out


def group_indices(keys: Sequence[str]) -> tuple[list[str], list[npt.NDArray[np.intp]]]:
    """Unique keys in first-seen order and the sample indices of each."""
    order: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        order.setdefault(k, []).append(i)
    return list(order), [np.asarray(v, dtype=np.intp) for v in order.values()]


def mean_by_group(probs: npt.ArrayLike, groups: Sequence[npt.NDArray[np.intp]]) -> F64:
    """Per-group mean of probability rows: a patient's score is the mean over its images."""
    p = np.asarray(probs, dtype=np.float64)
    return np.stack([p[g].mean(axis=0) for g in groups])
