"""jetson-inference backend: imageNet runs the ONNX model as a TensorRT FP16 engine on a Jetson.

imageNet does the preprocessing on the GPU (nearest stretch, /255, mean/std, planar: what
`pipeline.preprocess.model_input` reproduces) and builds its engine next to model.onnx on the first
load, so the model folder must be writable and the first start takes minutes.

imageNet is asked for every class (threshold 0, topK 0) so the whole probability vector comes back;
the configured threshold and top-K are then applied by `imagenet_prediction`, the same code as the
ONNX Runtime backend. jetson_inference and jetson_utils are untyped C extensions: they stay behind
`Any` here.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import tempfile
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.classify.base import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    check_image,
    imagenet_prediction,
)
from pipeline.manifest import MANIFEST_NAME, ModelDir, ModelError
from pipeline.preprocess import IMAGENET_MEAN, IMAGENET_STD
from pipeline.types import Prediction

log = logging.getLogger(__name__)


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModelError(
            f"backend jetson: cannot import {name} ({exc}); build jetson-inference on the Jetson "
            "(see README, 'On a Jetson') or set backend: onnxruntime"
        ) from exc


def check_writable(model: ModelDir) -> None:
    """imageNet writes its TensorRT engine beside model.onnx; fail now, not minutes into a build."""
    try:
        with tempfile.NamedTemporaryFile(dir=model.root, prefix=".thermoscreen-write-check-"):
            pass
    except OSError as exc:
        raise ModelError(
            f"{model.root}: model folder is not writable ({exc.strerror}); imageNet caches its "
            "TensorRT engine beside model.onnx: copy the model folder somewhere writable or fix "
            "its permissions"
        ) from exc


def check_jetson_contract(model: ModelDir) -> None:
    """imageNet hard-codes ImageNet mean/std and a [1, 3, H, W] input for ONNX models."""
    m = model.manifest
    where = model.root / MANIFEST_NAME
    if tuple(m.mean) != IMAGENET_MEAN or tuple(m.std) != IMAGENET_STD:
        raise ModelError(
            f"{where}: mean {list(m.mean)} / std {list(m.std)} differ from the ImageNet values "
            "imageNet applies; re-export with the defaults or use backend: onnxruntime"
        )
    if len(m.input.shape) != 4 or m.input.shape[:2] != (1, 3):
        raise ModelError(
            f"{where}: input shape {list(m.input.shape)} is not [1, 3, H, W]; re-export the model"
        )


class JetsonImageNetClassifier:
    """jetson-inference imageNet behind the Classifier protocol."""

    backend = "jetson"

    def __init__(
        self,
        model: ModelDir,
        threshold: float = DEFAULT_THRESHOLD,
        top_k: int = DEFAULT_TOP_K,
    ) -> None:
        self.model = model
        self.labels = model.labels
        self.threshold = threshold
        self.top_k = top_k
        check_jetson_contract(model)
        self._ji: Any = _import("jetson_inference")
        self._ju: Any = _import("jetson_utils")
        check_writable(model)
        if not any(model.root.glob(f"{model.onnx_path.name}.*.engine")):
            log.warning(
                "%s: no TensorRT engine cached yet; imageNet builds one now (FP16), which takes "
                "minutes on the first start",
                model.onnx_path,
            )
        try:
            self._net: Any = self._ji.imageNet(
                model=str(model.onnx_path),
                labels=str(model.labels_path),
                input_blob=model.manifest.input.name,
                output_blob=model.manifest.output.name,
            )
        except Exception as exc:  # the extension raises plain Exception; TensorRT logs the cause
            raise ModelError(
                f"{model.onnx_path}: imageNet could not load it ({exc}); see the TensorRT log "
                "above, check the TensorRT version parses opset 13, or use backend: onnxruntime"
            ) from exc
        self._check_labels()
        # Every class comes back (softmax outputs are >= 0); our own threshold is applied after.
        self._net.SetThreshold(0.0)
        self._image: Any = None  # cudaImage (mapped memory), reused while the frame size holds
        self._view: npt.NDArray[np.uint8] | None = None  # numpy view of that memory
        log.info("jetson-inference imageNet: %s (%s)", model.manifest.name, model.manifest.version)

    def _check_labels(self) -> None:
        n = int(self._net.GetNumClasses())
        got = tuple(str(self._net.GetClassDesc(i)) for i in range(n))
        if got != self.labels:
            raise ModelError(
                f"{self.model.labels_path}: imageNet read labels {list(got)}, model.json says "
                f"{list(self.labels)}; re-export the model"
            )

    def _upload(self, image: npt.NDArray[np.uint8]) -> Any:
        """Copy the frame into mapped CUDA memory allocated once per frame size (RGB uint8)."""
        h, w = image.shape[:2]
        if self._view is None or self._view.shape[:2] != (h, w):
            self._image = self._ju.cudaAllocMapped(width=w, height=h, format="rgb8")
            self._view = self._ju.cudaToNumpy(self._image)
        assert self._view is not None
        if image.ndim == 2:
            self._view[...] = image[:, :, None]  # R = G = B
        else:
            np.copyto(self._view, image)
        return self._image

    def frame_probabilities(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Frame -> class probabilities [N], from imageNet's full result list."""
        if self._net is None:
            raise RuntimeError("classifier is closed")
        check_image(image)
        results = self._net.Classify(self._upload(image), topK=0)
        probs = np.full(len(self.labels), np.nan, dtype=np.float32)
        for index, conf in results:
            probs[int(index)] = conf
        if np.isnan(probs).any():
            raise ModelError(
                f"{self.model.onnx_path}: imageNet returned {len(results)} of {len(self.labels)} "
                "classes at threshold 0, so output_0 is not a probability vector; export the model "
                "with softmax inside the graph"
            )
        return probs

    def classify(self, image: npt.NDArray[np.uint8]) -> Prediction:
        """Frame -> Prediction with the same rules as the ONNX Runtime backend."""
        t0 = time.perf_counter_ns()
        probs = self.frame_probabilities(image)
        pred = imagenet_prediction(probs, self.labels, self.threshold, self.top_k)
        return dataclasses.replace(pred, inference_ms=(time.perf_counter_ns() - t0) / 1e6)

    def close(self) -> None:
        self._net = None
        self._view = None
        self._image = None
