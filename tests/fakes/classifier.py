"""A scripted `Classifier` (pipeline.classify.base.Classifier) for the runner's unit tests.

It records which thread classified each call, can make chosen calls slow (so workers finish out
of order), hold its first call until an event is set, or raise on a chosen call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.manifest import (
    INPUT_NAME,
    INPUT_SHAPE,
    OUTPUT_NAME,
    ModelDir,
    ModelManifest,
    TensorSpec,
)
from pipeline.preprocess import PreprocessConfig
from pipeline.types import Prediction

LABELS = ("healthy", "sick")


def fake_model_dir(labels: tuple[str, ...] = LABELS, threshold: float | None = None) -> ModelDir:
    manifest = ModelManifest(
        name="fake",
        version="0",
        created="2024-01-01T00:00:00+00:00",
        sha256="0" * 64,
        architecture="none",
        weights="none",
        input=TensorSpec(name=INPUT_NAME, shape=INPUT_SHAPE),
        output=TensorSpec(name=OUTPUT_NAME, shape=(1, len(labels))),
        preprocessing=PreprocessConfig(),
        labels=labels,
        threshold=threshold,
        synthetic=True,
    )
    return ModelDir(root=Path("/nonexistent/fake-model"), manifest=manifest, labels=labels)


class ClassifierExploded(RuntimeError):
    pass


class FakeClassifier:
    """Always `scores` (or `scores_at(k)` for call k); call k sleeps `delay_s(k)`; the first
    call waits for `gate`."""

    backend = "fake"

    def __init__(
        self,
        scores: tuple[float, ...] = (0.3, 0.7),
        delay_s: Callable[[int], float] = lambda _k: 0.0,
        gate: threading.Event | None = None,
        fail_on_call: int | None = None,
        scores_at: Callable[[int], tuple[float, ...]] | None = None,
    ) -> None:
        self.model = fake_model_dir()
        self.labels = self.model.labels
        self.scores = scores
        self.delay_s = delay_s
        self.gate = gate
        self.fail_on_call = fail_on_call
        self.scores_at = scores_at
        self.started = threading.Event()  # the first call has begun
        self.threads: list[str] = []
        self.closed = False
        self._calls = 0
        self._lock = threading.Lock()

    def classify(self, image: npt.NDArray[np.uint8]) -> Prediction:
        assert image.dtype == np.uint8 and image.ndim == 2
        with self._lock:
            call = self._calls
            self._calls += 1
            self.threads.append(threading.current_thread().name)
        self.started.set()
        if call == 0 and self.gate is not None:
            assert self.gate.wait(10.0), "the test never opened the gate"
        if call == self.fail_on_call:
            raise ClassifierExploded(f"fake classifier exploded on call {call}")
        time.sleep(self.delay_s(call))
        scores = self.scores if self.scores_at is None else self.scores_at(call)
        best = int(np.argmax(scores))
        return Prediction(self.labels[best], best, scores[best], scores)

    def close(self) -> None:
        self.closed = True
