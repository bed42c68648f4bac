"""The one polling wait of the test suite: no fixed sleeps, no timing assertions."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

POLL_S = 0.02


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float = 20.0,
    what: str | Callable[[], str] = "the condition",
) -> Literal[True]:
    """Poll `condition` until it holds. The timeout is a generous upper bound, never a speed
    check: the test goes on as soon as the condition holds. After `timeout_s` it raises
    AssertionError naming `what` (a callable gives a description of the state at that moment).
    Returns True, so `assert wait_until(...)` also reads as the check it is."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {text}")
        time.sleep(POLL_S)
    return True
