"""An in-memory `ResultSink` (pipeline.run.base.ResultSink): what the publisher would send."""

from __future__ import annotations

import threading
import time
from typing import Any

from pipeline.mqtt.publisher import PublisherStats
from pipeline.types import FrameResult, ModelInfo


class MemorySink:
    """Keeps every message; `publish_delay_s` makes each result slow (a busy broker link)."""

    def __init__(self, publish_delay_s: float = 0.0, fail_on_result: int | None = None) -> None:
        self.publish_delay_s = publish_delay_s
        self.fail_on_result = fail_on_result
        self.results: list[FrameResult] = []
        self.states: list[dict[str, Any]] = []
        self.sessions: list[dict[str, Any]] = []
        self.stats_messages: list[dict[str, Any]] = []
        self.threads: set[str] = set()
        self.started = False
        self.stopped_with: float | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.started = True

    def publish_result(self, result: FrameResult, model: ModelInfo) -> str:
        self.threads.add(threading.current_thread().name)
        if len(self.results) == self.fail_on_result:
            raise ConnectionError("fake broker link broke")
        time.sleep(self.publish_delay_s)
        with self._lock:
            self.results.append(result)
        return f"{result.session_id}-{result.seq}"

    def publish_state(self, camera_id: str, state: dict[str, Any]) -> None:
        self.states.append(state)

    def publish_session(self, camera_id: str, summary: dict[str, Any]) -> None:
        self.sessions.append(summary)

    def publish_stats(self, stats: dict[str, Any]) -> None:
        self.stats_messages.append(stats)

    def stop(self, flush_timeout_s: float) -> bool:
        self.stopped_with = flush_timeout_s
        return True

    def stats(self) -> PublisherStats:
        return PublisherStats(
            connected=True,
            published=len(self.results),
            acked=len(self.results),
            pending=0,
            inflight=0,
            dropped_full=0,
            resent=0,
            rejected=0,
            connects=1,
            reconnects=0,
            queue_depth=0,
            dropped_queue=0,
            stats_dropped=0,
            last_error=None,
            fatal_error=None,
        )
