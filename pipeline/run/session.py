"""A screening session: per-frame results, a rolling verdict and a final summary.

Pure bookkeeping (no threads, no I/O) so it is unit-tested directly. A session has an opaque id
and carries no patient data. The verdict is screening support for an adjunct to mammography,
never a diagnosis.

Verdict rules (configurable, `SessionConfig`):
- with an operating threshold (the config's, else the manifest's `threshold`): the positive
  class's probability is averaged over the last N frames (`mean`), or each frame votes
  positive when its probability reaches the threshold (`majority`); the verdict is the positive
  label when the mean / the majority reaches it, else the most likely other label;
- without one (argmax semantics): the label with the highest mean probability (`mean`) or the
  most frequent per-frame top-1 label (`majority`; ties go to the lowest class index).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.mqtt.payload import rfc3339_ms
from pipeline.types import NO_EXAM, ExamTag, Frame, FrameResult, ModelInfo, Prediction, ThermalStats

SCHEMA_VERSION = 2  # the state message (2: `verdict` became `rolling_verdict`, with its scope)
SUMMARY_SCHEMA_VERSION = 3  # the session summary (2: `dropped_seq`; 3: `rolling_verdict`, exams)
ROLLING_SCOPE = "rolling: the last {n} frames; live display only, never an exam's result"
SCORE_IS = "probability of the positive class ({label}), over every frame of the session"
EndReason = Literal["eos", "stopped", "error"]
Mode = Literal["live", "replay"]


@dataclass(frozen=True)
class VerdictPolicy:
    """How the rolling verdict is formed; built from config plus the model manifest."""

    labels: tuple[str, ...]
    window_frames: int = 10
    method: Literal["mean", "majority"] = "mean"
    threshold: float | None = None  # operating threshold on the positive class; None = argmax
    positive_label: str | None = None

    def __post_init__(self) -> None:
        if self.window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {self.window_frames}")
        if self.threshold is not None and (
            self.positive_label is None or self.positive_label not in self.labels
        ):
            raise ValueError(
                f"operating threshold needs a positive label among {list(self.labels)}, "
                f"got {self.positive_label!r}; set positive_label in model.json"
            )

    @property
    def positive_index(self) -> int | None:
        if self.positive_label is None or self.positive_label not in self.labels:
            return None
        return self.labels.index(self.positive_label)

    @staticmethod
    def build(
        labels: tuple[str, ...],
        window_frames: int,
        method: Literal["mean", "majority"],
        configured_threshold: float | None,
        manifest_threshold: float | None,
        positive_label: str | None,
        use_manifest_threshold: bool = True,
    ) -> VerdictPolicy:
        """Config threshold wins; else the manifest's when allowed; else argmax semantics."""
        threshold = configured_threshold
        if threshold is None and use_manifest_threshold:
            threshold = manifest_threshold
        positive = positive_label if positive_label in labels else None
        return VerdictPolicy(labels, window_frames, method, threshold, positive)


@dataclass(frozen=True)
class Verdict:
    """The rolling verdict over the last `frames` results."""

    label: str
    score: float  # mean positive probability (threshold) or mean probability of `label`
    frames: int
    positive: bool | None  # None without an operating threshold

    def to_dict(self, policy: VerdictPolicy) -> dict[str, Any]:
        return {
            "scope": ROLLING_SCOPE.format(n=policy.window_frames),
            "label": self.label,
            "score": round(self.score, 6),
            "positive": self.positive,
            "frames": self.frames,
            "window_frames": policy.window_frames,
            "method": policy.method,
            "threshold": policy.threshold,
            "positive_label": policy.positive_label,
        }


def rolling_verdict(scores: list[tuple[float, ...]], policy: VerdictPolicy) -> Verdict | None:
    """The verdict over `scores` (one probability vector per frame, newest last)."""
    window = scores[-policy.window_frames :]
    if not window:
        return None
    n_classes = len(policy.labels)
    means = [sum(s[i] for s in window) / len(window) for i in range(n_classes)]
    pos = policy.positive_index
    if policy.threshold is not None and pos is not None:
        if policy.method == "mean":
            positive = means[pos] >= policy.threshold
        else:
            votes = sum(1 for s in window if s[pos] >= policy.threshold)
            positive = 2 * votes > len(window)
        if positive:
            label_index = pos
        else:
            others = [i for i in range(n_classes) if i != pos]
            label_index = max(others, key=lambda i: (means[i], -i)) if others else pos
        return Verdict(policy.labels[label_index], means[pos], len(window), positive)
    if policy.method == "mean":
        best = max(range(n_classes), key=lambda i: (means[i], -i))
    else:
        counts = Counter(_argmax(s) for s in window)
        best = max(counts, key=lambda i: (counts[i], -i))
    return Verdict(policy.labels[best], means[best], len(window), None)


def _argmax(scores: tuple[float, ...]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


class Session:
    """One screening session of one camera: from the first frame to EOS, stop or error."""

    def __init__(
        self,
        mode: Mode,
        camera_id: str,
        device_id: str,
        source: str,
        policy: VerdictPolicy,
        model: ModelInfo | None = None,
        clock: Callable[[], float] = time.time,
        session_id: str | None = None,
    ) -> None:
        self.session_id = session_id or uuid.uuid4().hex
        self.mode: Mode = mode
        self.camera_id = camera_id
        self.device_id = device_id
        self.source = source
        self.policy = policy
        self.model = model
        self._clock = clock
        self.started_ts = clock()
        self.updated_ts = self.started_ts
        self.ended_ts: float | None = None
        self.end_reason: EndReason | None = None
        self.frames = 0
        self.counts: Counter[str] = Counter()
        self._window: deque[tuple[float, ...]] = deque(maxlen=policy.window_frames)
        self._score_sum = 0.0
        self._score_max = 0.0
        self._last: FrameResult | None = None
        self.exams: dict[str, None] = {}  # exam ids seen in this session, in order

    @property
    def next_seq(self) -> int:
        return self.frames

    def add(
        self,
        frame: Frame,
        prediction: Prediction,
        thermal: ThermalStats | None,
        capture_to_result_ms: float,
        exam: ExamTag = NO_EXAM,
    ) -> FrameResult:
        """Record one classified frame; the result gets the next seq (0, 1, 2, …) and carries
        the exam it belongs to (`exam`) and the file of a folder replay."""
        if self.ended_ts is not None:
            raise RuntimeError(f"session {self.session_id} has ended; start a new one")
        result = FrameResult(
            session_id=self.session_id,
            mode=self.mode,
            camera_id=self.camera_id,
            seq=self.frames,
            frame_index=frame.index,
            capture_ts=frame.capture_ts,
            source=self.source,
            prediction=prediction,
            thermal=thermal,
            capture_to_result_ms=capture_to_result_ms,
            exam=exam,
            file=frame.file,
        )
        if exam.exam_id is not None:
            self.exams[exam.exam_id] = None
        self.frames += 1
        self.counts[prediction.label] += 1
        self._window.append(tuple(prediction.scores))
        score = self._tracked_score(prediction)
        self._score_sum += score
        self._score_max = max(self._score_max, score)
        self._last = result
        self.updated_ts = self._clock()
        return result

    def _tracked_score(self, prediction: Prediction) -> float:
        """The positive class's probability when there is one, else the top-1 score."""
        pos = self.policy.positive_index
        if pos is not None and pos < len(prediction.scores):
            return float(prediction.scores[pos])
        return float(prediction.score)

    def verdict(self) -> Verdict | None:
        return rolling_verdict(list(self._window), self.policy)

    def end(self, reason: EndReason) -> None:
        if self.ended_ts is None:
            self.ended_ts = self._clock()
            self.end_reason = reason

    def state_payload(self) -> dict[str, Any]:
        """Retained `state` message: the session's current rolling verdict."""
        verdict = self.verdict()
        payload: dict[str, Any] = {
            **self._header(),
            "state": "ended" if self.ended_ts is not None else "running",
            "updated": rfc3339_ms(self.updated_ts if self.ended_ts is None else self.ended_ts),
            "frames": self.frames,
            "rolling_verdict": verdict.to_dict(self.policy) if verdict else None,
        }
        if self._last is not None:
            payload["last"] = {
                "seq": self._last.seq,
                "frame_index": self._last.frame_index,
                "label": self._last.prediction.label,
                "score": round(self._last.prediction.score, 6),
            }
        return payload

    def summary_payload(
        self,
        drops: Mapping[str, int] | None = None,
        dropped_seq: Sequence[tuple[int, int]] = (),
    ) -> dict[str, Any]:
        """The `session` message sent once when the session ends; `dropped_seq` names the seq
        ranges of results that never left this device (dropped at a full outbox)."""
        if self.ended_ts is None or self.end_reason is None:
            raise RuntimeError("call end(reason) before summary_payload()")
        verdict = self.verdict()
        return {
            **self._header(),
            "schema": SUMMARY_SCHEMA_VERSION,
            "ended": rfc3339_ms(self.ended_ts),
            "end_reason": self.end_reason,
            "source": self.source,
            "frames": self.frames,
            "counts": {label: self.counts[label] for label in sorted(self.counts)},
            "counts_are": "per-frame top-1 labels over every frame of the session",
            "rolling_verdict": verdict.to_dict(self.policy) if verdict else None,
            "score": {
                "is": self._score_is(),
                "label": self.policy.positive_label,
                "mean": round(self._score_sum / self.frames, 6) if self.frames else None,
                "max": round(self._score_max, 6) if self.frames else None,
            },
            "drops": {k: int(v) for k, v in sorted((drops or {}).items())},
            "dropped_seq": [[int(lo), int(hi)] for lo, hi in dropped_seq],
            "model": _model_dict(self.model),
            "synthetic_model": bool(self.model and self.model.synthetic),
            "exams": list(self.exams),
        }

    def _score_is(self) -> str:
        if self.policy.positive_index is None:
            return "top-1 probability, over every frame of the session (no positive class)"
        return SCORE_IS.format(label=self.policy.positive_label)

    def _header(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "device_id": self.device_id,
            "camera_id": self.camera_id,
            "session_id": self.session_id,
            "mode": self.mode,
            "started": rfc3339_ms(self.started_ts),
        }


def _model_dict(model: ModelInfo | None) -> dict[str, str] | None:
    if model is None:
        return None
    return {
        "name": model.name,
        "version": model.version,
        "sha256": model.sha256,
        "backend": model.backend,
    }
