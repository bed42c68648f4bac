"""A real, small ONNX classifier built with onnx.helper (no torch), in the exported model layout.

It keeps the model contract (opset 13, input_0 [1,3,224,224], softmax output_0 [1,N], labels.txt,
model.json with sha256) so pipeline tests run real ONNX Runtime inference in milliseconds. A strided
convolution and ReLU make the output depend on where pixels are, so a wrong resize shows up.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.manifest import (
    INPUT_NAME,
    INPUT_SHAPE,
    ONNX_NAME,
    OPSET,
    OUTPUT_NAME,
    ModelManifest,
    TensorSpec,
    sha256_file,
    write_labels,
    write_manifest,
)
from pipeline.preprocess import PreprocessConfig


def build_tiny_onnx(n_classes: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.3, size=(4, 3, 7, 7)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, size=(4,)).astype(np.float32)
    fc_w = rng.normal(0, 2.0, size=(n_classes, 4)).astype(np.float32)
    fc_b = rng.normal(0, 0.5, size=(n_classes,)).astype(np.float32)
    inits = [
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(conv_b, "conv_b"),
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(fc_b, "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "conv_w", "conv_b"], ["c"], strides=[4, 4]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, n_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_tiny_model_dir(
    path: Path,
    labels: tuple[str, ...] = ("healthy", "sick"),
    preprocessing: PreprocessConfig | None = None,
    seed: int = 0,
    threshold: float | None = None,
) -> Path:
    """Write model.onnx, labels.txt and model.json into `path` and return it."""
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(build_tiny_onnx(len(labels), seed), str(path / ONNX_NAME))
    write_labels(path / "labels.txt", labels)
    manifest = ModelManifest(
        name="tiny-test",
        version="0.0.1",
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        sha256=sha256_file(path / ONNX_NAME),
        architecture="tiny-conv",
        weights="random",
        input=TensorSpec(name=INPUT_NAME, shape=INPUT_SHAPE),
        output=TensorSpec(name=OUTPUT_NAME, shape=(1, len(labels))),
        preprocessing=preprocessing or PreprocessConfig(),
        labels=labels,
        threshold=threshold,
        data={"source": "none (test model with random weights)"},
        synthetic=True,
    )
    write_manifest(path, manifest)
    return path
