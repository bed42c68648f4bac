"""Shared fixtures: a real mosquitto broker on a free loopback port, paths to shared data."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DMR = REPO.parent / "shared" / "data" / "dmr-ir-frontal"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"mosquitto did not listen on 127.0.0.1:{port} within {timeout_s}s")


@dataclass
class Broker:
    """A mosquitto process that tests can stop and start again on the same port."""

    port: int
    workdir: Path
    config_text: str | None = None  # full config; None means plain loopback listener
    wait_port: int | None = None  # port to probe for readiness (TLS listener etc.)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / "mosquitto.conf"
        text = self.config_text
        if text is None:
            text = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        text += f"persistence true\npersistence_location {self.workdir}/\n"
        if os.geteuid() == 0:
            # as root mosquitto drops to the `mosquitto` user, which cannot write the persistence
            # file (or read certificates) under pytest's private tmp dirs: stay root in tests
            text += "user root\n"
        conf.write_text(text)
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
        wait_for_port(self.wait_port or self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


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
        pytest.skip(f"{SHARED_DMR} not found: CI places ../shared beside the repo")
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
