"""Other ways to run a model on this CPU, beside ONNX Runtime's CPU provider as the pipeline runs
it: thread settings, spinning workers, INT8 copies (`--int8` from `thermoscreen quantize`, and
ONNX Runtime's dynamic quantization made here), and the OpenVINO execution provider.

`onnxruntime-openvino` replaces the `onnxruntime` package (both install the module
`onnxruntime`), so the OpenVINO variant runs in another Python where it is installed
(`--openvino-python`); it asks for FP32 inference, since OpenVINO's CPU plugin otherwise picks
bf16 on CPUs with AMX, and that changes results.

Every variant runs in a child process on the same ready tensors (real frames through the
pipeline's preprocessing), in turn, every round. Each is compared with the reference (the
pipeline's live way: one frame at a time on every core): frames per second, CPU per frame, the
largest difference of any class probability and top-1 agreement. A variant is worth keeping as
an option when it is faster in every round and stays within the model card's tolerance (1e-4 on
probabilities, the limit `thermoscreen export` holds ONNX Runtime to against PyTorch). Thread
counts are options already (`model.intra_op_threads`, `model.replay_workers`); which is faster
depends on how busy the cores are, so read those rows from a run on idle cores.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.classify.factory import usable_cores
from pipeline.devtools.bench.collector import BenchError
from pipeline.manifest import load_model_dir

log = logging.getLogger(__name__)

REFERENCE = "onnxruntime CPU, one frame on every core (the pipeline live; reference)"
REPLAY_WAY = "onnxruntime CPU, one frame per core side by side (the pipeline's replays)"
TOLERANCE = 1e-4  # largest probability difference the model card allows an exported runtime
CHECK_FRAMES = 16  # tensors whose outputs are compared
F32 = npt.NDArray[np.float32]

# Runs one variant; needs only numpy and onnxruntime, so it runs in any Python that has them.
CHILD = """
import json, sys, threading, time
import numpy as np, onnxruntime as ort
spec = json.loads(sys.argv[1])
opts = ort.SessionOptions()
opts.inter_op_num_threads = 1
opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spec["spin"] else "0")
if spec["intra"]:
    opts.intra_op_num_threads = spec["intra"]
providers = [tuple(p) if isinstance(p, list) else p for p in spec["providers"]]
start = time.perf_counter()
session = ort.InferenceSession(spec["model"], opts, providers=providers)
load_s = time.perf_counter() - start
name = session.get_inputs()[0].name
tensors = np.load(spec["tensors"])
probs = [session.run(None, {name: t[None]})[0].reshape(-1).tolist() for t in tensors]
frames, callers = spec["frames"], spec["callers"]
def work(k):
    for i in range(k, frames, callers):
        session.run(None, {name: tensors[i % len(tensors)][None]})
threads = [threading.Thread(target=work, args=(k,)) for k in range(callers)]
cpu0, t0 = time.process_time(), time.perf_counter()
for t in threads: t.start()
for t in threads: t.join()
wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
print(json.dumps({"fps": frames / wall, "cpu_ms_per_frame": 1000 * cpu / frames,
                  "load_s": load_s, "providers": session.get_providers(),
                  "onnxruntime": ort.__version__, "probs": probs}))
"""


@dataclass(frozen=True)
class Variant:
    name: str
    model: Path  # the .onnx file
    callers: int = 1  # frames at once
    intra: int | None = None  # intra-op threads (None: ONNX Runtime's choice, every core)
    spin: bool = False
    providers: list[Any] = field(default_factory=lambda: ["CPUExecutionProvider"])
    python: str = sys.executable


def dynamic_int8(model: Path, out: Path) -> Path | None:
    """ONNX Runtime's dynamic quantization (int8 weights, activations quantized per run)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic  # optional tooling
    except ImportError as exc:
        log.warning("dynamic INT8 left out: %s", exc)
        return None
    quantize_dynamic(str(model), str(out), weight_type=QuantType.QUInt8)
    return out


def variants_for(
    model_dir: Path, tmp: Path, int8_dir: Path | None, openvino_python: str | None
) -> list[Variant]:
    """The reference first, then every other way that can run here."""
    onnx = load_model_dir(model_dir).onnx_path
    cores = usable_cores()
    out = [
        Variant(REFERENCE, onnx),
        Variant(REPLAY_WAY, onnx, cores, 1),
        Variant("onnxruntime CPU, one frame on every core, spinning workers", onnx, spin=True),
        Variant("onnxruntime CPU, one thread", onnx, 1, 1),
    ]
    dynamic = dynamic_int8(onnx, tmp / "dynamic-int8.onnx")
    if dynamic is not None:
        out.append(Variant("onnxruntime CPU, dynamic INT8 (uint8 weights)", dynamic))
    if int8_dir is not None:
        int8 = load_model_dir(int8_dir).onnx_path
        out.append(Variant("onnxruntime CPU, static INT8 (`thermoscreen quantize`)", int8))
        out.append(Variant("static INT8, one frame per core side by side", int8, cores, 1))
    if openvino_python is not None:
        provider = ["OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32"}]
        out.append(
            Variant(
                "OpenVINO execution provider, FP32",
                onnx,
                providers=[provider],
                python=openvino_python,
            )
        )
    return out


def run_variant(v: Variant, tensors: Path, frames: int) -> dict[str, Any]:
    spec = {
        "model": str(v.model),
        "providers": v.providers,
        "intra": v.intra,
        "spin": v.spin,
        "callers": v.callers,
        "tensors": str(tensors),
        "frames": frames,
    }
    done = subprocess.run(
        [v.python, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"variant {v.name!r} failed: {tail[0][:300]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def agreement(ref: list[list[float]], got: list[list[float]]) -> dict[str, Any]:
    a, b = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    diff = float(np.max(np.abs(a - b)))
    top1 = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
    return {"max_abs_diff": diff, "top1_agreement": top1, "within_tolerance": diff <= TOLERANCE}


def measure_variants(
    model_dir: Path,
    tensors: list[F32],
    frames: int,
    rounds: int,
    tmp: Path,
    int8_dir: Path | None = None,
    openvino_python: str | None = None,
) -> dict[str, Any]:
    """Every variant once per round, in turn; medians, ratios to the reference, agreement."""
    path = tmp / "variant-tensors.npy"
    np.save(path, np.concatenate(tensors[:CHECK_FRAMES]))
    variants = variants_for(model_dir, tmp, int8_dir, openvino_python)
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            runs[v.name].append(run_variant(v, path, frames))
    return summarize_variants(variants, runs)


def summarize_variants(
    variants: list[Variant], runs: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    ref = runs[REFERENCE]
    rows = []
    for v in variants:
        got = runs[v.name]
        ratios = [g["fps"] / r["fps"] for g, r in zip(got, ref, strict=True)]
        row = {
            "variant": v.name,
            "fps_median": statistics.median(g["fps"] for g in got),
            "cpu_ms_per_frame_median": statistics.median(g["cpu_ms_per_frame"] for g in got),
            "load_s_median": statistics.median(g["load_s"] for g in got),
            "fps_vs_reference": statistics.median(ratios),
            "fps_vs_reference_rounds": ratios,
            "providers": got[0]["providers"],
            "onnxruntime": got[0]["onnxruntime"],
            **agreement(ref[0]["probs"], got[0]["probs"]),
        }
        row["worth_an_option"] = bool(
            v.name not in (REFERENCE, REPLAY_WAY) and row["within_tolerance"] and min(ratios) > 1.0
        )
        rows.append(row)
    return {"tolerance": TOLERANCE, "rounds": len(ref), "variants": rows}
