"""The runtime never imports torch: not when every pipeline module is imported, not during a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, Broker

PROBE = """
import importlib, pkgutil, sys
import pipeline
from pipeline.cli import main
rc = main(sys.argv[1:])
assert rc == 0, f"run exited {rc}"
assert "pipeline.run.command" in sys.modules and "onnxruntime" in sys.modules
for info in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
    if info.name == "pipeline.classify.jetson":
        continue  # imports jetson_inference, absent here (tested with fakes elsewhere)
    importlib.import_module(info.name)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision")))
print("TORCH_MODULES", loaded)
"""


@pytest.mark.timeout(120)
def test_a_replay_and_every_pipeline_module_leave_torch_unimported(
    broker: Broker, tiny_model: Path, tmp_path: Path
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # 16-bit centi-kelvin frames around 30 C
        raw = (rng.normal(30.0, 2.0, (64, 80)) + 273.15) * 100
        cv2.imwrite(str(frames / f"frame_{i:05d}.png"), raw.astype(np.uint16))
    (tmp_path / "c.yaml").write_text("{}\n")
    args = [
        "run", str(frames), "--model", str(tiny_model), "--config", str(tmp_path / "c.yaml"),
        "--broker", f"127.0.0.1:{broker.port}", "--outbox", str(tmp_path / "o.sqlite"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSCREEN_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    assert "3 results from 3 frames" in done.stdout
    assert "TORCH_MODULES []" in done.stdout
