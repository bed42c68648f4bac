"""`thermoscreen train --help` answers without importing torch and shows every default."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import sys
from pipeline.cli import main
try:
    main(["train", "--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print("TORCH_LOADED", "torch" in sys.modules)
"""


def test_help_answers_without_torch_and_shows_the_defaults() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())  # argparse wraps lines
    assert "TORCH_LOADED False" in out
    assert "--epochs EPOCHS total epochs (default: 10)" in out
    assert "(default: auto)" in out and "from scratch" in out
    assert "adjunct to mammography" in out
