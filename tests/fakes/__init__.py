"""Stand-ins for modules that only exist on a Jetson (jetson_inference, jetson_utils).

They implement the documented Python interface and run the ONNX model with real ONNX Runtime, so
tests of the jetson backend exercise real inference. Tests install them into `sys.modules` with
`install_fake_jetson(monkeypatch)` (or the `fake_jetson` fixture); nothing else sees them.
"""

from __future__ import annotations

import sys
from types import ModuleType

import pytest


def install_fake_jetson(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    """Make `import jetson_inference` / `import jetson_utils` return the fakes, freshly reset."""
    from tests.fakes import jetson_inference, jetson_utils

    jetson_inference.reset()
    jetson_utils.reset()
    monkeypatch.setitem(sys.modules, "jetson_inference", jetson_inference)
    monkeypatch.setitem(sys.modules, "jetson_utils", jetson_utils)
    return jetson_inference, jetson_utils
