"""SIGINT/SIGTERM as a stop event, for the long-running commands (`run`, `log`).

A second signal while stopping is logged and otherwise ignored: the command keeps draining
(results already captured are still published or stored) instead of dying half-way.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(stop: threading.Event, what: str = "stopping") -> Iterator[threading.Event]:
    """Within the block, SIGINT/SIGTERM set `stop`; the previous handlers come back after.
    Main thread only (Python delivers signals there)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: still shutting down", name)
        else:
            log.info("%s: %s", name, what)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
