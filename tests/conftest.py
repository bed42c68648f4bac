"""Shared fixtures: a real mosquitto broker on a free loopback port, paths to shared data."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.devtools.broker import LocalBroker, free_port

__all__ = ["REPO", "SHARED_DMR", "Broker", "free_port"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DMR = REPO.parent / "shared" / "data" / "dmr-ir-frontal"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--generate",
        action="store_true",
        help="rewrite the golden files (tests/golden/*.json) from the current code, then review "
        "their diff and commit them",
    )


@dataclass
class Broker(LocalBroker):
    """mosquitto for tests: persistence on (queued messages survive stop()/start() on the same
    port) and, as root, no switch to the mosquitto user (it cannot read pytest's tmp dirs)."""

    persistence: bool = True
    stay_root: bool = True


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto on a free loopback port, anonymous, with persistence (so queued
    messages for persistent sessions survive a broker restart)."""
    b = Broker(port=free_port(), workdir=tmp_path / "broker")
    b.workdir.mkdir()
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def shared_dmr() -> Path:
    if not (SHARED_DMR / "labels.csv").is_file():
        pytest.skip(
            f"real DMR-IR data not found at {SHARED_DMR}: these tests read ../shared beside the "
            "repository (CI places it there)"
        )
    return SHARED_DMR


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A real small ONNX model directory (random weights) that keeps the model contract."""
    from tests.helpers.tiny_model import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path / "tiny-model")


@pytest.fixture
def fake_jetson(monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    """Stand-in jetson_inference and jetson_utils modules (real ONNX Runtime inside), importable
    for this test only; returns (jetson_inference, jetson_utils)."""
    from tests.fakes import install_fake_jetson

    return install_fake_jetson(monkeypatch)
