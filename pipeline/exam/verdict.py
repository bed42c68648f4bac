"""The exam's verdict, its per-view statistics and the left-right asymmetry thermographers read.

Exam verdict: over the ACCEPTED frames of the views the model was trained on, the mean
positive-class probability against the operating threshold; it carries the frame count, the
threshold and the model. The score is rounded before it is compared, so the published score,
the threshold and `positive` can never disagree. Screening support for an adjunct to
mammography, never a diagnosis.

Rolling score: the mean of the last N accepted frames, for live display only; it is never the
exam's result and is kept apart from it.

Asymmetry (mirrored halves of the body): the body's midline is the median over image rows of the
mask's leftmost/rightmost midpoint; each body pixel left of it is paired with its mirror image on
the right, and only pairs with both pixels inside the body count. `mean_abs_diff_c` is the mean
|T - mirror(T)| over those pairs, `left_mean_c`/`right_mean_c` the mean temperature of each side
of them and `left_minus_right_c` their difference. Sides are IMAGE sides: in a frontal view the
image's left is the patient's right.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from pipeline.exam.commands import VIEWS, View
from pipeline.manifest import ModelManifest

ThresholdSource = Literal["manifest", "config", "default-0.5"]
SCORE_DECIMALS = 6


@dataclass(frozen=True)
class ExamModel:
    """What the exam needs to know about the model: identity, classes, threshold and views."""

    name: str
    version: str
    sha256: str
    synthetic: bool
    labels: tuple[str, ...]
    positive_label: str
    threshold: float
    threshold_source: ThresholdSource
    views: tuple[View, ...] = ("frontal",)

    def __post_init__(self) -> None:
        if self.positive_label not in self.labels:
            raise ValueError(
                f"positive label {self.positive_label!r} is not among {list(self.labels)}; "
                "set positive_label in model.json"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if not self.views or any(v not in VIEWS for v in self.views):
            raise ValueError(f"model views must be among {', '.join(VIEWS)}, got {self.views}")

    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive_label)

    @property
    def negative_label(self) -> str:
        """The label a below-threshold verdict carries: the other class, or `not-<positive>`."""
        others = [label for label in self.labels if label != self.positive_label]
        return others[0] if len(others) == 1 else f"not-{self.positive_label}"

    @staticmethod
    def from_manifest(manifest: ModelManifest, threshold: float | None = None) -> ExamModel:
        """From model.json: its threshold (or `threshold` from config; else 0.5) and its views
        (`data.views` when the manifest lists them, else frontal, as DMR-IR models are)."""
        if threshold is not None:
            value, source = threshold, "config"
        elif manifest.threshold is not None:
            value, source = manifest.threshold, "manifest"
        else:
            value, source = 0.5, "default-0.5"
        listed = manifest.data.get("views") if isinstance(manifest.data, dict) else None
        views: tuple[View, ...] = ("frontal",)
        if isinstance(listed, list) and listed and all(v in VIEWS for v in listed):
            views = tuple(dict.fromkeys(listed))
        return ExamModel(
            name=manifest.name,
            version=manifest.version,
            sha256=manifest.sha256,
            synthetic=manifest.synthetic,
            labels=tuple(manifest.labels),
            positive_label=manifest.positive_label,
            threshold=float(value),
            threshold_source=source,  # type: ignore[arg-type]  # one of the three literals
            views=views,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "synthetic": self.synthetic,
            "labels": list(self.labels),
            "positive_label": self.positive_label,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "views": list(self.views),
        }


@dataclass(frozen=True)
class Asymmetry:
    """Left-right temperature asymmetry of one frame (see the module docstring)."""

    mean_abs_diff_c: float
    left_mean_c: float
    right_mean_c: float
    left_minus_right_c: float
    midline_x: float
    pairs: int


def body_midline_x(mask: npt.NDArray[np.bool_]) -> float | None:
    """Median over rows of the midpoint between the mask's leftmost and rightmost pixel."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    sub = mask[rows]
    width = mask.shape[1]
    left = np.argmax(sub, axis=1)
    right = width - 1 - np.argmax(sub[:, ::-1], axis=1)
    return float(np.median((left + right) / 2.0))


def asymmetry(celsius: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]) -> Asymmetry | None:
    """Mirrored-halves asymmetry inside `mask`; None when no mirrored pair lies in the body."""
    mid = body_midline_x(mask)
    if mid is None:
        return None
    c = round(mid)
    k = min(c, mask.shape[1] - 1 - c)
    if k < 1:
        return None
    left_t = celsius[:, c - k : c]
    right_t = celsius[:, c + 1 : c + 1 + k][:, ::-1]
    both = mask[:, c - k : c] & mask[:, c + 1 : c + 1 + k][:, ::-1]
    both &= np.isfinite(left_t) & np.isfinite(right_t)
    pairs = int(np.count_nonzero(both))
    if pairs == 0:
        return None
    lv = left_t[both].astype(np.float64)
    rv = right_t[both].astype(np.float64)
    left_mean, right_mean = float(lv.mean()), float(rv.mean())
    return Asymmetry(
        mean_abs_diff_c=float(np.mean(np.abs(lv - rv))),
        left_mean_c=left_mean,
        right_mean_c=right_mean,
        left_minus_right_c=left_mean - right_mean,
        midline_x=mid,
        pairs=pairs,
    )


@dataclass(frozen=True)
class AsymmetryStats:
    """A view's asymmetry: the per-frame values averaged over its accepted frames."""

    frames: int
    mean_abs_diff_c: float
    left_mean_c: float
    right_mean_c: float
    left_minus_right_c: float


@dataclass(frozen=True)
class ViewStats:
    """One view's counts and statistics over its frames (temperatures: accepted frames only)."""

    view: View
    accepted_frames: int
    rejected_frames: int
    rejected_by_reason: Mapping[str, int]
    score_mean: float | None  # mean positive-class probability of the accepted frames
    skin_mean_c: float | None
    skin_p95_c: float | None
    asymmetry: AsymmetryStats | None


def _mean(total: float, count: int) -> float | None:
    return round(total / count, 4) if count else None


@dataclass
class ViewTally:
    """Running sums behind one view's ViewStats (mutable, owned by the exam)."""

    view: View
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    score_sum: float = 0.0
    skin_n: int = 0
    skin_mean_sum: float = 0.0
    skin_p95_sum: float = 0.0
    asym_n: int = 0
    asym_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])

    def reject(self, reasons: Iterable[str]) -> None:
        self.rejected += 1
        self.reasons.update(reasons)

    def accept(
        self,
        positive_prob: float,
        skin_mean_c: float | None,
        skin_p95_c: float | None,
        asym: Asymmetry | None,
    ) -> None:
        self.accepted += 1
        self.score_sum += positive_prob
        if skin_mean_c is not None and skin_p95_c is not None:
            self.skin_n += 1
            self.skin_mean_sum += skin_mean_c
            self.skin_p95_sum += skin_p95_c
        if asym is not None:
            self.asym_n += 1
            values = (asym.mean_abs_diff_c, asym.left_mean_c, asym.right_mean_c)
            for i, value in enumerate((*values, asym.left_minus_right_c)):
                self.asym_sums[i] += value

    def stats(self) -> ViewStats:
        asym = None
        if self.asym_n:
            m = [round(s / self.asym_n, 4) for s in self.asym_sums]
            asym = AsymmetryStats(self.asym_n, m[0], m[1], m[2], m[3])
        return ViewStats(
            view=self.view,
            accepted_frames=self.accepted,
            rejected_frames=self.rejected,
            rejected_by_reason=dict(sorted(self.reasons.items())),
            score_mean=_mean(self.score_sum, self.accepted),
            skin_mean_c=_mean(self.skin_mean_sum, self.skin_n),
            skin_p95_c=_mean(self.skin_p95_sum, self.skin_n),
            asymmetry=asym,
        )


@dataclass(frozen=True)
class ExamVerdict:
    """The exam's verdict. Its invariants are checked on construction, so a verdict whose label,
    `positive`, score, threshold and counts disagree cannot exist."""

    label: str
    positive: bool
    score: float  # mean positive-class probability, rounded to SCORE_DECIMALS
    frames: int
    frames_by_view: Mapping[str, int]
    threshold: float
    threshold_source: ThresholdSource
    positive_label: str
    final: bool  # False while capturing (provisional), True once the exam is closed

    def __post_init__(self) -> None:
        if self.frames < 1 or self.frames != sum(self.frames_by_view.values()):
            raise ValueError(f"verdict frames {self.frames} != per-view {self.frames_by_view}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"verdict score {self.score} outside [0, 1]")
        if self.positive != (self.score >= self.threshold):
            raise ValueError(f"positive={self.positive} contradicts {self.score} vs threshold")
        if self.positive != (self.label == self.positive_label):
            raise ValueError(f"label {self.label!r} contradicts positive={self.positive}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "positive": self.positive,
            "score": self.score,
            "score_is": "mean positive-class probability over accepted frames of the model's views",
            "frames": self.frames,
            "frames_by_view": dict(self.frames_by_view),
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "positive_label": self.positive_label,
            "final": self.final,
        }


def _decide(
    model: ExamModel, score: float, frames: int, by_view: Mapping[str, int], final: bool
) -> ExamVerdict:
    score = min(1.0, max(0.0, round(score, SCORE_DECIMALS)))
    positive = score >= model.threshold
    return ExamVerdict(
        label=model.positive_label if positive else model.negative_label,
        positive=positive,
        score=score,
        frames=frames,
        frames_by_view=dict(by_view),
        threshold=model.threshold,
        threshold_source=model.threshold_source,
        positive_label=model.positive_label,
        final=final,
    )


def exam_verdict(
    tallies: Mapping[View, ViewTally], model: ExamModel, final: bool
) -> ExamVerdict | None:
    """The verdict over accepted frames of the model's views; None when there are none."""
    counted = {v: tallies[v] for v in model.views if v in tallies and tallies[v].accepted}
    frames = sum(t.accepted for t in counted.values())
    if frames == 0:
        return None
    total = sum(t.score_sum for t in counted.values())
    return _decide(
        model, total / frames, frames, {v: t.accepted for v, t in counted.items()}, final
    )


class RollingScore:
    """The mean of the last N accepted frames of the model's views: live display only."""

    def __init__(self, window_frames: int) -> None:
        self.window_frames = window_frames
        self._scores: deque[float] = deque(maxlen=window_frames)

    def add(self, positive_prob: float) -> None:
        self._scores.append(positive_prob)

    def clear(self) -> None:
        self._scores.clear()

    def to_dict(self, model: ExamModel) -> dict[str, Any] | None:
        if not self._scores:
            return None
        n = len(self._scores)
        decided = _decide(model, sum(self._scores) / n, n, {"window": n}, final=False)
        return {
            "label": decided.label,
            "positive": decided.positive,
            "score": decided.score,
            "score_is": "rolling mean positive-class probability (live display, not the exam "
            "result)",
            "frames": n,
            "window_frames": self.window_frames,
            "threshold": model.threshold,
        }
