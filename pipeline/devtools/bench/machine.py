"""What a bench run ran on: the machine, its software, the models."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.classify.factory import usable_cores
from pipeline.devtools.compute import ComputeError, model_gflop
from pipeline.manifest import ModelDir

log = logging.getLogger(__name__)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def gstreamer_version() -> str:
    try:
        import gi  # optional: the GStreamer bindings

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst

        Gst.init(None)
        return str(Gst.version_string()).removeprefix("GStreamer ")
    except (ImportError, ValueError) as exc:
        return f"unavailable ({exc})"


def cpu_isa() -> list[str]:
    """The vector extensions that matter to ONNX Runtime's kernels (VNNI: INT8 dot products)."""
    cpuinfo = _read("/proc/cpuinfo").splitlines()
    flags = next((ln for ln in cpuinfo if ln.startswith("flags")), "") + " "
    return [f for f in ISA_FLAGS if f" {f} " in flags]


def describe_machine() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo").splitlines()
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")),
        platform.processor() or "?",
    )
    meminfo = _read("/proc/meminfo").splitlines()
    mem_kb = next((int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal")), 0)
    return {
        "cpu": cpu,
        "cpu_isa": cpu_isa(),
        "cores": os.cpu_count(),
        "cores_usable": usable_cores(),
        "ram_gb": round(mem_kb / 1e6, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": version_of("onnxruntime"),
        "onnxruntime-openvino": version_of("onnxruntime-openvino"),
        "torch": version_of("torch"),
        "torchvision": version_of("torchvision"),
        "opencv": version_of("opencv-python-headless"),
        "paho-mqtt": version_of("paho-mqtt"),
        "gstreamer": gstreamer_version(),
        "load_avg_at_start": list(os.getloadavg()),
    }


def or_none(measure: Callable[[], float]) -> float | None:
    """A compute figure, or None with a warning: the rest of the benchmark does not need it."""
    try:
        return measure()
    except ComputeError as exc:
        log.warning("%s", exc)
        return None


def describe_model(model: ModelDir, role: str) -> dict[str, Any]:
    m = model.manifest
    return {
        "role": role,
        "gflop": or_none(lambda: model_gflop(model.onnx_path)),
        "dir": str(model.root),
        "name": m.name,
        "version": m.version,
        "sha256": m.sha256,
        "architecture": m.architecture,
        "input": list(m.input.shape),
        "synthetic": m.synthetic,
        "quantization": m.quantization,
    }
