"""How close the bare model runs to the machine's arithmetic limit.

The benchmark's ratios are only meaningful next to the limit the hardware sets: a pipeline can
never beat the bare model, and the bare model can never beat the cores' multiply-add rate. Two
numbers make that visible:

- `model_gflop`: the floating-point work of one inference, counted from the ONNX graph
  (2 x multiply-adds of Conv, Gemm and MatMul; additions, pooling and activations are left out,
  so this is a slight undercount);
- `sgemm_gflops_per_core`: one core's single-precision matrix-multiply rate, measured with
  numpy's BLAS on one thread in a child process (the BLAS reads its thread count at import).

`bare GFLOP/s per core / sgemm GFLOP/s per core` near 1 means the model is already as fast as
dense FP32 arithmetic gets on this CPU, and only less arithmetic (INT8, a smaller model) is faster.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnx import NodeProto

SGEMM_N = 1024

# Runs in a child so that one BLAS thread is in force before numpy loads.
_SGEMM_CHILD = """
import json, sys, time
import numpy as np
n, seconds = int(sys.argv[1]), float(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.random((n, n), dtype=np.float32)
b = rng.random((n, n), dtype=np.float32)
a @ b
best, end = 0.0, time.perf_counter() + seconds
while time.perf_counter() < end:
    t0 = time.perf_counter()
    a @ b
    best = max(best, 2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
print(json.dumps({"gflops": best}))
"""


class ComputeError(RuntimeError):
    """The work of a model or the machine's rate could not be measured; one line says why."""


def model_gflop(onnx_path: Path) -> float:
    """GFLOP of one inference: 2 x the multiply-adds of every Conv, Gemm and MatMul node."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import shape_inference

    try:
        model = shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    except (OSError, ValueError, DecodeError, shape_inference.InferenceError) as exc:
        raise ComputeError(f"{onnx_path}: cannot read the ONNX graph ({exc})") from exc
    graph = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        try:
            out = shapes[node.output[0]]
            weight = shapes[node.input[1]]
        except KeyError as exc:
            raise ComputeError(
                f"{onnx_path}: node {node.name or node.op_type} has no inferred shape for {exc}; "
                "export the model with static input shapes"
            ) from exc
        if node.op_type == "Conv":
            # output elements x (input channels per group x kernel area)
            macs += math.prod(out) * math.prod(weight[1:])
        else:
            # output elements x the shared (reduced) dimension
            macs += math.prod(out) * weight[-2 if node.op_type == "MatMul" else _gemm_k(node)]
    return 2.0 * macs / 1e9


def _gemm_k(node: NodeProto) -> int:
    """Index of the reduced dimension of Gemm's B: 1 when B is transposed (transB=1), else 0."""
    for attr in node.attribute:
        if attr.name == "transB":
            return 1 if attr.i else 0
    return 0


def sgemm_gflops_per_core(seconds: float = 1.0, n: int = SGEMM_N) -> float:
    """One core's FP32 matrix-multiply rate (the best of repeated n x n products)."""
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _SGEMM_CHILD, str(n), str(seconds)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60 + 10 * seconds,
            check=True,
        )
        return float(json.loads(proc.stdout)["gflops"])
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        raise ComputeError(f"could not measure the sgemm rate with numpy ({exc})") from exc
