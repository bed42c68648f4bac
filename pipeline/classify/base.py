"""The classify stage: a small `Classifier` protocol, imageNet's result semantics, backend choice.

Two backends sit behind the protocol, each in its own module: ONNX Runtime everywhere
(`pipeline.classify.onnx`) and jetson-inference `imageNet` on a Jetson (`pipeline.classify.jetson`).
Both return the same `Prediction`, built here by `imagenet_prediction`, so a result means the same
thing whichever backend produced it.

imageNet semantics (jetson-inference `imageNet::Classify`, read from its source):

- top-1: classes whose confidence is below the threshold are skipped (`conf < threshold`); among
  the rest the first strictly greater confidence wins, starting from 0.0, so ties go to the lowest
  index. No such class gives index -1, label "none" and score 0.0.
- top-K: every class with `conf >= threshold`, sorted by descending confidence (ties: lowest index
  first, which imageNet's unstable sort leaves open), cut to K; K = 0 keeps them all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from pipeline.manifest import ModelDir
from pipeline.types import Prediction, TopK

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "jetson")
NONE_LABEL = "none"
DEFAULT_THRESHOLD = 0.01  # IMAGENET_DEFAULT_THRESHOLD
DEFAULT_TOP_K = 2


@runtime_checkable
class Classifier(Protocol):
    """What the runner needs from a classifier backend."""

    backend: str  # "onnxruntime" | "jetson"
    labels: tuple[str, ...]
    model: ModelDir

    def classify(self, image: npt.NDArray[np.uint8]) -> Prediction:
        """uint8 gray HxW or RGB HxWx3 (R = G = B) -> imageNet-style prediction."""
        ...

    def close(self) -> None:
        """Release the session/engine; classify must not be called afterwards."""
        ...


def imagenet_prediction(
    probs: npt.ArrayLike,
    labels: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = DEFAULT_TOP_K,
    inference_ms: float = 0.0,
) -> Prediction:
    """Probabilities [N] (or [1, N]) -> Prediction with imageNet's top-1 and top-K rules."""
    p = np.asarray(probs, dtype=np.float32).reshape(-1)
    if p.size != len(labels):
        raise ValueError(f"model output has {p.size} classes but there are {len(labels)} labels")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps every class above threshold), got {top_k}")
    thr = np.float32(threshold)
    # NaN compares false everywhere, so it is neither skipped-then-chosen nor listed, as in C++.
    passing = p >= thr
    top1_ok = passing & (p > np.float32(0.0))
    if top1_ok.any():
        index = int(np.argmax(np.where(top1_ok, p, -np.inf)))  # first maximum: lowest index
        label, score = labels[index], float(p[index])
    else:
        index, label, score = -1, NONE_LABEL, 0.0
    candidates = np.flatnonzero(passing)
    order = candidates[np.lexsort((candidates, -p[candidates]))]
    if top_k > 0:
        order = order[:top_k]
    ranked = tuple(TopK(index=int(i), label=labels[int(i)], score=float(p[i])) for i in order)
    return Prediction(
        label=label,
        index=index,
        score=score,
        scores=tuple(float(v) for v in p),
        top_k=ranked,
        inference_ms=inference_ms,
    )


def check_image(image: npt.NDArray[Any]) -> None:
    """Both backends take the same frames: uint8 gray HxW or RGB HxWx3, not empty."""
    if image.dtype != np.uint8:
        raise ValueError(
            f"classify() needs a uint8 image, got {image.dtype}; render the frame first"
        )
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"classify() needs HxW gray or HxWx3 RGB, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"classify() got an empty image of shape {image.shape}")
