"""ONNX Runtime backend: the same tensor and the same result rules as jetson-inference imageNet.

The frame becomes imageNet's tensor through `pipeline.preprocess.model_input` (nearest stretch,
/255, mean/std, planar), the graph runs on ONNX Runtime, and `imagenet_prediction` applies
imageNet's threshold and top-K rules, so this backend answers as a Jetson would.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from pipeline.classify.base import (
    DEFAULT_THRESHOLD,
    DEFAULT_TOP_K,
    check_image,
    imagenet_prediction,
)
from pipeline.manifest import MANIFEST_NAME, ModelDir, ModelError, TensorSpec
from pipeline.preprocess import model_input
from pipeline.types import Prediction

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
ACCELERATED = (TENSORRT, CUDA)

F32 = npt.NDArray[np.float32]
_ORT_LOAD_ERRORS = (
    _ort_state.Fail,
    _ort_state.InvalidGraph,
    _ort_state.InvalidProtobuf,
    _ort_state.InvalidArgument,
    _ort_state.NoSuchFile,
)


def select_providers(requested: list[str] | None, available: list[str]) -> list[str]:
    """Execution providers to ask ONNX Runtime for, CPU always last.

    None asks for CUDA when this onnxruntime build has it (TensorRT only on request: its engine
    build takes minutes). A requested accelerator that this build lacks is logged and skipped.
    """
    known = set(ort.get_all_providers())
    wanted = [CUDA] if requested is None else list(requested)
    for name in wanted:
        if name not in known:
            raise ValueError(
                f"unknown onnxruntime provider {name!r}; use one of {', '.join(ACCELERATED)}, {CPU}"
            )
    chosen = [p for p in wanted if p != CPU and p in available]
    missing = [p for p in wanted if p != CPU and p not in available]
    if missing and requested is not None:
        log.warning(
            "onnxruntime providers %s are not in this build (available: %s); using %s",
            ", ".join(missing),
            ", ".join(available),
            ", ".join([*chosen, CPU]),
        )
    return [*chosen, CPU]


def cpu_only(providers: list[str] | None = None) -> bool:
    """True when a session would run on the CPU alone (no CUDA/TensorRT in this build)."""
    return select_providers(providers, ort.get_available_providers()) == [CPU]


def _shape(spec: Any) -> tuple[Any, ...]:
    return tuple(spec.shape)


def check_graph(session: ort.InferenceSession, model: ModelDir) -> None:
    """The graph must be the one model.json describes: one input, one output, fixed shapes."""
    where = model.root / MANIFEST_NAME
    for kind, nodes, spec in (
        ("input", session.get_inputs(), model.manifest.input),
        ("output", session.get_outputs(), model.manifest.output),
    ):
        _check_tensor(where, kind, nodes, spec)


def _check_tensor(where: Any, kind: str, nodes: list[Any], spec: TensorSpec) -> None:
    got = [(n.name, _shape(n)) for n in nodes]
    if len(nodes) != 1:
        raise ModelError(
            f"{where}: the ONNX graph has {len(nodes)} {kind}s {got}, expected one "
            f"{spec.name} {list(spec.shape)}; re-export the model"
        )
    name, shape = got[0]
    if name != spec.name or shape != spec.shape:
        raise ModelError(
            f"{where}: {kind} is {spec.name} {list(spec.shape)} but the ONNX graph has {name} "
            f"{list(shape)}; re-export the model (fixed shapes, no dynamic axes)"
        )
    if nodes[0].type != "tensor(float)":
        raise ModelError(
            f"{where}: {kind} {name} is {nodes[0].type}, expected float32; re-export the model"
        )


class OnnxRuntimeClassifier:
    """imageNet's behaviour on ONNX Runtime (CPU, or CUDA/TensorRT where the build has them)."""

    backend = "onnxruntime"

    def __init__(
        self,
        model: ModelDir,
        threshold: float = DEFAULT_THRESHOLD,
        top_k: int = DEFAULT_TOP_K,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        self.model = model
        self.labels = model.labels
        self.threshold = threshold
        self.top_k = top_k
        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        # Idle intra-op workers sleep instead of spinning: on a small CPU a spinning worker takes
        # the core that GStreamer decoding and MQTT publishing need between inferences
        # (`thermoscreen bench`, ResNet18, 2 cores: replay throughput up, see README "Benchmark").
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
            opts.intra_op_num_threads = intra_op_threads
        self.providers = select_providers(providers, ort.get_available_providers())
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(model.onnx_path), sess_options=opts, providers=self.providers
            )
        except _ORT_LOAD_ERRORS as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"{model.onnx_path}: onnxruntime cannot load it ({reason}); re-export the model"
            ) from exc
        check_graph(self._session, model)
        shape = model.manifest.input.shape
        self.input_size = (int(shape[2]), int(shape[3]))
        self._input_name = model.manifest.input.name
        self._output_names = [model.manifest.output.name]
        log.info(
            "onnxruntime %s: %s (%s) on %s",
            ort.__version__,
            model.manifest.name,
            model.manifest.version,
            ", ".join(self._session.get_providers()),
        )

    def _live_session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError("classifier is closed")
        return self._session

    def tensor(self, image: npt.NDArray[np.uint8]) -> F32:
        """imageNet's input tensor for a uint8 gray or RGB frame (mean/std from the manifest)."""
        check_image(image)
        m = self.model.manifest
        return model_input(image, self.input_size, m.mean, m.std)

    def run_tensor(self, tensor: F32) -> F32:
        """The bare model: tensor [1, 3, H, W] -> output [1, N] (the benchmark's baseline)."""
        out = self._live_session().run(self._output_names, {self._input_name: tensor})
        return np.asarray(out[0], dtype=np.float32)

    def probabilities(self, tensor: F32) -> F32:
        """Tensor -> class probabilities [N] (softmax is inside the graph)."""
        return self.run_tensor(tensor).reshape(-1)

    def classify(self, image: npt.NDArray[np.uint8]) -> Prediction:
        """Frame -> Prediction; inference_ms covers preprocessing, the run and the result rules,
        as imageNet.Classify's time does."""
        t0 = time.perf_counter_ns()
        probs = self.probabilities(self.tensor(image))
        pred = imagenet_prediction(probs, self.labels, self.threshold, self.top_k)
        ms = (time.perf_counter_ns() - t0) / 1e6
        return dataclasses.replace(pred, inference_ms=ms)

    def close(self) -> None:
        self._session = None
