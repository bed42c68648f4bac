"""A replay through `thermoscreen run` never loads torch, training or the tools, and a run
without --console never loads the console's web server (aiohttp, Prometheus): importing it was a
large part of every run's start-up.

tests/unit/test_architecture.py proves the first from the source (every import, function-level
ones included); this runs it: a real replay to a real broker, then a look at what Python loaded.
"""

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
import sys
from pipeline.cli import main
rc = main(sys.argv[1:])
assert rc == 0, f"run exited {rc}"
assert "pipeline.run.command" in sys.modules and "onnxruntime" in sys.modules
roots = {"torch", "torchvision", "training"}
loaded = sorted(
    m for m in sys.modules if m.split(".")[0] in roots or m.startswith("pipeline.devtools")
)
print("BANNED_MODULES", loaded)
unasked = {"aiohttp", "prometheus_client"}
print("UNASKED_MODULES", sorted({m.split(".")[0] for m in sys.modules} & unasked))
print("CONSOLE_MODULES", sorted(m for m in sys.modules if m.startswith("pipeline.console.server")))
"""


@pytest.mark.timeout(120)
def test_a_replay_loads_no_torch_training_or_tools(
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
    assert "BANNED_MODULES []" in done.stdout
    assert "UNASKED_MODULES []" in done.stdout
    assert "CONSOLE_MODULES []" in done.stdout
