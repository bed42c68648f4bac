"""The allocator set-up of `thermoscreen run` reuses frame-sized blocks instead of taking them
from the system and giving them back every frame (each time faulting in every page afresh).

Counted, not timed: minor page faults per frame of a DMR-IR decode -> render -> model input
loop in a fresh process, with `tune_malloc` as `run` calls it. Before the top pad and the 4 MB
mmap threshold this loop took about 3,400 faults a frame (13 MB of fresh pages).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LOOP = """
import json, resource, sys
from pathlib import Path
from pipeline.run.malloc import tune_malloc
assert tune_malloc()
from pipeline.data.dmr import decode_file
from pipeline.preprocess import PreprocessConfig, model_input, render
from pipeline.types import ThermalStats
files = sorted(Path(sys.argv[1]).glob("*.txt.gz"))[:8]
cfg = PreprocessConfig()
def one(i, path):
    frame = decode_file(path).frame(i, "t")
    model_input(render(frame, cfg))
    ThermalStats.of_frame(frame)
for i, path in enumerate(files):
    one(i, path)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for r in range(2):
    for i, path in enumerate(files):
        one(i, path)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"frames": 2 * len(files), "faults": faults}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_a_matrix_replay_reuses_its_memory_frame_after_frame(shared_dmr: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", LOOP, str(shared_dmr)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["frames"] == 16
    # a 480 x 640 float frame alone is 300 pages; reuse leaves a handful of faults a frame
    assert got["faults"] / got["frames"] < 50, got
