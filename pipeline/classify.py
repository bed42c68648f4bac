"""The classify stage: a small `Classifier` protocol, imageNet's result semantics, backend choice.

Two backends sit behind the protocol, each in its own module: ONNX Runtime everywhere
(`pipeline.classify_onnx`) and jetson-inference `imageNet` on a Jetson (`pipeline.classify_jetson`).
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

import importlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from pipeline.manifest import MANIFEST_NAME, ModelDir, ModelError, load_model_dir
from pipeline.preprocess import PreprocessConfig
from pipeline.types import ModelInfo, Prediction, TopK

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


def _effective(cfg: PreprocessConfig) -> dict[str, Any]:
    """The fields that change the rendered image (CLAHE parameters only matter for CLAHE)."""
    fields: dict[str, Any] = {"window_c": cfg.window_c, "equalization": cfg.equalization}
    if cfg.equalization == "clahe":
        fields["clahe_clip_limit"] = cfg.clahe_clip_limit
        fields["clahe_tile_grid"] = cfg.clahe_tile_grid
    return fields


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def resolve_preprocessing(
    model: ModelDir, configured: PreprocessConfig, follow_manifest: bool
) -> PreprocessConfig:
    """The preprocessing to run: the model was trained on its manifest's, so a different one
    would feed it pictures it never saw. Refuse a mismatch unless told to follow the manifest."""
    trained = model.manifest.preprocessing
    mine, theirs = _effective(configured), _effective(trained)
    if mine == theirs:
        return configured
    field = next(k for k in (*theirs, *mine) if mine.get(k) != theirs.get(k))
    if follow_manifest:
        log.warning(
            "%s: following the model's preprocessing.%s = %s instead of the configured %s",
            model.root / MANIFEST_NAME,
            field,
            _yaml_value(theirs.get(field)),
            _yaml_value(mine.get(field)),
        )
        return trained
    raise ModelError(
        f"{model.root / MANIFEST_NAME}: preprocessing.{field} is {_yaml_value(theirs.get(field))} "
        f"but the config says {_yaml_value(mine.get(field))}; set preprocessing.{field}: "
        f"{_yaml_value(theirs.get(field))} in the config or pass --follow-manifest"
    )


def jetson_available() -> bool:
    """True where jetson-inference's Python module imports (a Jetson with it built)."""
    try:
        importlib.import_module("jetson_inference")
    except ImportError:
        return False
    return True


def choose_backend(backend: str) -> str:
    """'auto' -> 'jetson' when jetson_inference imports, else 'onnxruntime'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    chosen = "jetson" if jetson_available() else "onnxruntime"
    log.info("classifier backend auto-detected: %s", chosen)
    return chosen


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


MAX_AUTO_WORKERS = 4  # past this, each frame in flight costs memory and gains little


def replay_workers(setting: int | str, backend: str, live: bool) -> int:
    """How many frames the pipeline classifies at once.

    A replay wants throughput: on the CPU, N frames side by side with one ONNX Runtime thread
    each keep every core busy while decoding and publishing interleave, where one frame spread
    over N threads stalls all of them whenever one thread is preempted. Live wants latency: one
    frame on every core finishes soonest. jetson-inference and GPU providers run one at a time.
    `auto` stops at MAX_AUTO_WORKERS frames; bigger CPUs give each of them more threads.
    """
    if live:
        return 1
    chosen = choose_backend(backend)
    if chosen == "jetson":
        if setting not in ("auto", 1):
            log.warning(
                "model.replay_workers=%s ignored: the jetson backend runs one frame", setting
            )
        return 1
    if setting != "auto":
        return int(setting)
    from pipeline.classify_onnx import cpu_only

    return min(usable_cores(), MAX_AUTO_WORKERS) if cpu_only() else 1


def threads_per_worker(workers: int, configured: int | None) -> int | None:
    """ONNX Runtime intra-op threads for each of `workers` frames at once: the configured value,
    else the cores shared out (None: one worker, ORT's own choice of all cores)."""
    if configured is not None or workers == 1:
        return configured
    return max(1, usable_cores() // workers)


def load_classifier(
    model_dir: str | Path,
    backend: str = "auto",
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = DEFAULT_TOP_K,
    providers: list[str] | None = None,
    intra_op_threads: int | None = None,
) -> Classifier:
    """Check the model directory (manifest, sha256, labels) and open it with the chosen backend.

    `providers` and `intra_op_threads` apply to ONNX Runtime only.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps every class above threshold), got {top_k}")
    chosen = choose_backend(backend)
    model = load_model_dir(model_dir)
    if chosen == "jetson":
        from pipeline.classify_jetson import JetsonImageNetClassifier

        return JetsonImageNetClassifier(model, threshold=threshold, top_k=top_k)
    from pipeline.classify_onnx import OnnxRuntimeClassifier

    return OnnxRuntimeClassifier(
        model,
        threshold=threshold,
        top_k=top_k,
        providers=providers,
        intra_op_threads=intra_op_threads,
    )


def model_info(classifier: Classifier) -> ModelInfo:
    """What each result says about the model that produced it."""
    m = classifier.model.manifest
    return ModelInfo(name=m.name, version=m.version, sha256=m.sha256, backend=classifier.backend)


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
