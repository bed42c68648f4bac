"""Unit tests start no processes (no broker, no database server, no child Python): a test that
needs one belongs in tests/integration. This guard fails such a test with that advice."""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess

import pytest


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("a unit test started a process: move it to tests/integration")


@pytest.fixture(autouse=True)
def no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse)
    monkeypatch.setattr(os, "fork", _refuse)
