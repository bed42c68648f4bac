"""The model's own limit: ONNX Runtime alone on ready tensors, through the pipeline's classifier
(`run_tensor`), in this process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.classify.factory import load_classifier, usable_cores

F32 = npt.NDArray[np.float32]
WARMUP_CALLS = 5


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def measure_bare(
    model_dir: Path, tensors: Sequence[F32], frames: int, threads: int | None
) -> dict[str, Any]:
    """Run both ways the pipeline can run the model; the faster one counts (`fps`):

    - one_at_a_time: one inference after another, each spread over `threads` intra-op threads
      (None: all cores); its p50 is "a single inference" for the live latency target;
    - side_by_side: one frame per core at once, one intra-op thread each (a replay's way).
    """
    one = bare_run(model_dir, tensors, frames, threads, callers=1)
    both = {"one_at_a_time": one}
    if usable_cores() > 1:
        both["side_by_side"] = bare_run(model_dir, tensors, frames, 1, callers=usable_cores())
    best = max(both.values(), key=lambda m: float(m["fps"]))
    return {
        "frames": frames,
        "fps": best["fps"],
        "cpu_ms_per_frame": best["cpu_ms_per_frame"],
        "inference_ms_p50": one["inference_ms_p50"],
        "inference_ms_p95": one["inference_ms_p95"],
        **both,
    }


def bare_run(
    model_dir: Path,
    tensors: Sequence[F32],
    frames: int,
    threads: int | None,
    callers: int,
    providers: list[str] | None = None,
) -> dict[str, Any]:
    """`callers` threads share one session (ORT runs concurrent calls) and split `frames`.
    CPU per frame is this process's CPU time over the run (the bench's subscriber idles)."""
    clf = load_classifier(
        model_dir, backend="onnxruntime", intra_op_threads=threads, providers=providers
    )
    run_tensor: Callable[[F32], F32] = clf.run_tensor  # type: ignore[attr-defined]
    for t in tensors[:WARMUP_CALLS]:
        run_tensor(t)
    lat: list[list[float]] = [[] for _ in range(callers)]

    def work(k: int) -> None:
        for i in range(k, frames, callers):
            t0 = time.perf_counter()
            run_tensor(tensors[i % len(tensors)])
            lat[k].append((time.perf_counter() - t0) * 1000)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(callers)]
    cpu0, start = time.process_time(), time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    clf.close()
    every = [ms for per in lat for ms in per]
    return {
        "callers": callers,
        "intra_op_threads": threads,
        "fps": frames / elapsed,
        "cpu_ms_per_frame": 1000 * cpu / frames,
        "inference_ms_p50": percentile(every, 50),
        "inference_ms_p95": percentile(every, 95),
    }
