"""Writing an MP4 (appsrc/appsink in training.synth) before the capture module is imported must not
break later appsinks in the same process: PyGObject caches an element's Python class the first
time it sees the type, so GstApp has to be loaded first (pipeline.gstreamer does it for
everyone)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_synth_then_replay_in_one_fresh_process(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from training.synth import main as synth_main, add_arguments
        import argparse
        p = argparse.ArgumentParser(); add_arguments(p)
        assert synth_main(p.parse_args(["--out", {str(tmp_path)!r}, "--kind", "mp4",
                                        "--frames", "5", "--size", "96x128"])) == 0
        from pipeline.capture.base import SourceOptions, EndOfStream
        from pipeline.capture.factory import open_source
        src = open_source({str(tmp_path / "recording.mp4")!r}, SourceOptions())
        src.open()
        n = empty = 0
        try:
            while empty < 10:
                if src.read(timeout_s=1.0) is None:
                    empty += 1
                else:
                    n += 1
        except EndOfStream:
            pass
        src.close()
        print("frames", n)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "frames 5" in out.stdout
