"""The decode measurement script runs end to end on a small folder (no timing is asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.devtools import decode_bench

pytestmark = pytest.mark.timeout(300)


def test_decode_bench_reports_parse_and_source_ratios(tmp_path: Path) -> None:
    data = tmp_path / "dmr"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        m = 25.0 + 10.0 * rng.random((48, 64))
        text = "".join(" ".join(f"{v:.2f}" for v in row) + "\r\r\n" for row in m)
        (data / f"T{i + 1:04d}.txt").write_text(text)
    out = tmp_path / "report.json"
    args = [
        "--data",
        str(data),
        "--rounds",
        "1",
        "--out",
        str(out),
        "--baseline",
        str(decode_bench.REPO),
    ]
    assert decode_bench.main(args) == 0
    report = json.loads(out.read_text())
    assert report["parse"]["files"] == 3
    assert report["parse"]["speedup_paired_median"] > 0
    for kind in ("dmr", "png16"):
        for ratio in ("ahead_vs_inline", "ahead_vs_baseline"):
            assert (
                math.isfinite(report["source"][kind][ratio]) and report["source"][kind][ratio] > 0
            )
        assert len(report["source"][kind]["ahead"]["fps_rounds"]) == 1
    assert "replay" not in report  # no --model given
