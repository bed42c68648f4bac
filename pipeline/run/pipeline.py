"""One session's stages as threads: start them, watch the shutdown, sum up.

    capture --> classify x N --> publish (session, results, state, stats, consumers)
    --> annotated output (optional)

A stage that raises stops the others and ends the session as `error`; the session summary is
still published. After a stop, the stages drain; a shutdown that makes no progress (a replay
blocked on a full outbox while the broker is away) stops the publisher so the run can end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from pipeline.capture.base import Source
from pipeline.classify.base import Classifier
from pipeline.classify.factory import model_info
from pipeline.mqtt.outbox import OutboxError
from pipeline.mqtt.publisher import PublisherStopped
from pipeline.run.base import ExamHook, FrameConsumer, ResultSink
from pipeline.run.inbox import CommandInbox
from pipeline.run.options import StageOptions
from pipeline.run.queues import POLL_S, Control, Queues
from pipeline.run.session import Session
from pipeline.run.stages import (
    CaptureStage,
    ClassifyWorker,
    OutputFactory,
    OutputStage,
    PublishStage,
)
from pipeline.run.stats import Counters, RunSummary, StatsReporter

log = logging.getLogger(__name__)

SHUTDOWN_STALL_S = 10.0  # no progress for this long after a stop: unblock the publisher


class Stage(Protocol):
    """A stage's thread body: its loop, then what must happen whatever the loop did."""

    def run(self) -> None: ...

    def finish(self) -> None: ...


class Pipeline:
    """The threaded stages of one session. Build with opened parts, then `run()`."""

    def __init__(
        self,
        options: StageOptions,
        source: Source,
        classifier: Classifier,
        session: Session,
        publisher: ResultSink,
        output_factory: OutputFactory | None = None,
        consumers: Sequence[FrameConsumer] = (),
        commands: CommandInbox | None = None,
        stop: threading.Event | None = None,
        exam: ExamHook | None = None,
    ) -> None:
        self.options = options
        self.source = source
        self.session = session
        self.publisher = publisher
        self.control = Control(stop)
        self.counters = Counters()
        self.queues = Queues(options.queues, self.control)
        self.reporter = StatsReporter(
            options.publish, session, self.counters, source, self.queues, publisher
        )
        self.capture = CaptureStage(
            options.capture, source, self.queues, self.counters, self.control
        )
        self.workers = [
            ClassifyWorker(
                i, options.classify, classifier, self.queues, self.counters, self.control
            )
            for i in range(options.workers)
        ]
        self.publish = PublishStage(
            options.publish,
            session,
            model_info(classifier),
            publisher,
            self.reporter,
            self.queues,
            self.control,
            consumers,
            commands,
            with_output=output_factory is not None,
            exam=exam,
        )
        self.output = (
            OutputStage(output_factory, self.queues, self.counters) if output_factory else None
        )

    @property
    def stop(self) -> threading.Event:
        return self.control.stop

    def run(self) -> RunSummary:
        """Run every stage until EOS, stop or error; the session summary is published before
        this returns. The publisher is not stopped here (the caller owns it)."""
        self.reporter.restart_clock()
        stages: list[tuple[str, Stage]] = [
            ("capture", self.capture),
            *[(f"classify-{w.worker}", w) for w in self.workers],
            ("publish", self.publish),
        ]
        if self.output is not None:
            stages.append(("output", self.output))
        threads = [self._thread(name, stage) for name, stage in stages]
        for t in threads:
            t.start()
        watch = ShutdownWatch(self.control.stop, self._progress, self.publisher)
        for t in threads:
            while t.is_alive():
                t.join(POLL_S)
                watch.check()
        return self.summary()

    def _thread(self, name: str, stage: Stage) -> threading.Thread:
        def guarded() -> None:
            try:
                stage.run()
            except Exception as exc:  # a stage crashed: record, stop the others, end the session
                self._crashed(name, exc)
            finally:
                try:
                    stage.finish()
                except Exception as exc:
                    self._crashed(name, exc)

        return threading.Thread(target=guarded, name=f"thermoscreen-{name}", daemon=True)

    def _crashed(self, name: str, exc: Exception) -> None:
        if isinstance(exc, OutboxError | PublisherStopped):
            log.error("%s stage: %s", name, exc)  # one line: the cause and the fix
        else:
            log.exception("%s stage failed", name)
        self.control.fail(f"{name}: {exc}", "stage")

    def _progress(self) -> int:
        return self.counters.published + self.counters.classified

    def summary(self) -> RunSummary:
        wall = time.monotonic() - self.reporter.started_mono
        verdict = self.session.verdict()
        published = self.counters.published
        return RunSummary(
            session_id=self.session.session_id,
            mode=self.session.mode,
            end_reason=str(self.session.end_reason),
            frames_captured=self.counters.captured,
            results=published,
            wall_s=wall,
            fps=published / wall if wall > 0 else 0.0,
            latency_ms=self.counters.latency(),
            drops=self.reporter.drops(),
            verdict=verdict.to_dict(self.session.policy) if verdict else None,
            error=self.control.error,
            error_kind=self.control.error_kind,
        )


class ShutdownWatch:
    """After a stop, the stages drain; if they make no progress for SHUTDOWN_STALL_S (a replay
    blocked on a full outbox while the broker is away), stop the publisher so the blocked put
    returns and the run can end instead of hanging."""

    def __init__(
        self, stop: threading.Event, progress: Callable[[], int], publisher: ResultSink
    ) -> None:
        self.stop = stop
        self.progress = progress
        self.publisher = publisher
        self.last = -1
        self.since = 0.0
        self.fired = False

    def check(self) -> None:
        if self.fired or not self.stop.is_set():
            return
        now, done = time.monotonic(), self.progress()
        if done != self.last:
            self.last, self.since = done, now
            return
        if now - self.since > SHUTDOWN_STALL_S:
            self.fired = True
            log.error(
                "shutdown made no progress for %.0f s (outbox full and broker unreachable?); "
                "stopping the publisher: results not yet in the outbox are not sent",
                SHUTDOWN_STALL_S,
            )
            self.publisher.stop(0.0)
