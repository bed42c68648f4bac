"""SIGINT/SIGTERM become a stop event inside the block, and the old handlers come back after."""

from __future__ import annotations

import os
import signal
import threading

from pipeline.signals import stop_on_signals


def test_a_signal_sets_stop_and_the_previous_handler_returns() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(threading.Event()) as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)  # handled by Python before the next bytecode
        assert stop.wait(5.0)
        os.kill(os.getpid(), signal.SIGINT)  # a second one is logged, not fatal
    assert stop.is_set()
    assert signal.getsignal(signal.SIGTERM) is before
