"""Backend choice, worker sharing and model loading: the one place that picks a classifier."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.classify.base import BACKENDS, DEFAULT_THRESHOLD, DEFAULT_TOP_K, Classifier
from pipeline.classify.jetson import JetsonImageNetClassifier
from pipeline.classify.onnx import OnnxRuntimeClassifier, cpu_only
from pipeline.manifest import MANIFEST_NAME, ModelDir, ModelError, load_model_dir
from pipeline.preprocess import PreprocessConfig
from pipeline.types import ModelInfo

log = logging.getLogger(__name__)


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
        return JetsonImageNetClassifier(model, threshold=threshold, top_k=top_k)
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
    return ModelInfo(
        name=m.name,
        version=m.version,
        sha256=m.sha256,
        backend=classifier.backend,
        synthetic=m.synthetic,
    )
