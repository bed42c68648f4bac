"""Commands from other threads (an HTTP handler, a sensor subscriber) run inside the publish
thread, between two results, so the state they change (the open exam, the session) has one
owner and needs no lock.

    inbox = CommandInbox()
    summary = run(cfg, commands=inbox)             # the publish thread drains it
    # elsewhere, in another thread:
    done = inbox.submit(lambda: tracker.start_exam("ACC-17"))
    exam = done.result(timeout=2.0)                # the command's value, or its exception
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT_SIZE = 64


class InboxClosed(RuntimeError):
    """The run has ended: nobody will run the command."""


class CommandInbox:
    """A bounded queue of callables, run in order by the publish thread (`drain`)."""

    def __init__(self, maxsize: int = DEFAULT_SIZE) -> None:
        self._queue: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue(maxsize)
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, command: Callable[[], T]) -> Future[T]:
        """Queue `command`; the future gets its return value or the exception it raised.

        Raises InboxClosed once the run has ended and queue.Full when the publish thread has
        fallen this far behind (the caller answers "busy" instead of waiting)."""
        done: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise InboxClosed("the run has ended; the command was not run")
            self._queue.put_nowait((command, done))
        return done

    def drain(self) -> int:
        """Run every queued command (publish thread only); returns how many ran. A command's
        exception goes to its future, never into the publish loop."""
        ran = 0
        while True:
            try:
                command, done = self._queue.get_nowait()
            except queue.Empty:
                return ran
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(command())
                except Exception as exc:  # the caller reads it from the future
                    done.set_exception(exc)
            ran += 1

    def close(self) -> None:
        """No more commands: those still queued fail with InboxClosed."""
        with self._lock:
            self._closed = True
        while True:
            try:
                _, done = self._queue.get_nowait()
            except queue.Empty:
                return
            if done.set_running_or_notify_cancel():
                done.set_exception(InboxClosed("the run ended before the command ran"))
