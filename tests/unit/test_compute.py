"""The model's arithmetic, counted from the ONNX graph, against hand-computed multiply-adds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.devtools.compute import ComputeError, model_gflop
from tests.helpers.tiny_model import build_tiny_onnx


def test_conv_and_transposed_gemm_count_every_multiply_add(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    onnx.save(build_tiny_onnx(n_classes=2), path)
    # Conv 3->4, 7x7, stride 4 on 224x224: 55x55 outputs per channel, 3 x 49 multiply-adds each;
    # Gemm with transB: 2 outputs x 4 inputs.
    conv = 4 * 55 * 55 * (3 * 7 * 7)
    gemm = 2 * 4
    assert model_gflop(path) == pytest.approx(2 * (conv + gemm) / 1e9, rel=1e-12)


def test_matmul_and_grouped_conv_use_their_reduced_dimension(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "w")  # depthwise, 8 groups
    m = numpy_helper.from_array(np.ones((8 * 6 * 6, 5), np.float32), "m")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=8),  # 8x8 -> 6x6, no padding
        helper.make_node("Flatten", ["c"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=[w, m],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    depthwise = 8 * 6 * 6 * 9
    matmul = 5 * 8 * 6 * 6
    assert model_gflop(path) == pytest.approx(2 * (depthwise + matmul) / 1e9, rel=1e-12)


def test_an_unreadable_graph_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(ComputeError, match=r"broken\.onnx: cannot read the ONNX graph"):
        model_gflop(path)
