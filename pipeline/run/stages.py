"""The four stage loops of a run, each the body of one thread (`pipeline.run.pipeline` starts
them): capture, classify (one or more workers), session + publish, annotated output.

Each stage gets its own small options object and the shared `Queues`/`Control`; loop bodies
call short named steps. Drops are counted where they happen. A stage's `run` is its loop and
`finish` what must happen after it whatever happened (end markers downstream, the session
summary); the thread wrapper records a failure between the two, so downstream stages and the
session summary see it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from pipeline.capture.base import EndOfStream, Source, SourceError
from pipeline.classify.base import Classifier
from pipeline.mqtt.publisher import PublisherStopped
from pipeline.output.base import Output, OutputError, OverlayInfo, VerdictLine
from pipeline.preprocess import render
from pipeline.run.base import Classified, ExamHook, FrameConsumer, ResultSink
from pipeline.run.inbox import CommandInbox
from pipeline.run.options import CaptureOptions, ClassifyOptions, PublishOptions
from pipeline.run.queues import Control, End, Queues
from pipeline.run.session import Session
from pipeline.run.stats import Counters, StatsReporter
from pipeline.types import NO_EXAM, Frame, ModelInfo, ThermalStats

log = logging.getLogger(__name__)

OutputFactory = Callable[[int, int], Output]  # (width, height) of the first frame -> output


class CaptureStage:
    """Reads the source and hands frames on: live newest-wins (drops counted), replay waits."""

    def __init__(
        self,
        options: CaptureOptions,
        source: Source,
        queues: Queues,
        counters: Counters,
        control: Control,
    ) -> None:
        self.options = options
        self.source = source
        self.queues = queues
        self.counters = counters
        self.control = control

    def run(self) -> None:
        try:
            self._read_until_done()
        except EndOfStream:
            self.control.reached_end_of_stream()
        except SourceError as exc:
            self.control.fail(str(exc), "source")

    def finish(self) -> None:
        """Always, after `run` (also when it raised): the workers learn that capture is over."""
        self.queues.end_capture()

    def _read_until_done(self) -> None:
        last_frame_mono = time.monotonic()
        while not self.control.stop.is_set() and not self._reached_max():
            frame = self.source.read(self.options.read_timeout_s)
            if frame is not None:
                self._hand_off(frame)
                last_frame_mono = time.monotonic()
            elif self._stalled(last_frame_mono):
                raise SourceError(
                    f"source '{self.source.uri}': no frame for {self.options.stall_s:g} s in a "
                    "replay; the recording or its decoder is stuck (raise "
                    "capture.replay_stall_s if it is just slow)"
                )
        if not self.control.stop.is_set():
            log.info("stopping after --max-frames %d", self.options.max_frames)

    def _stalled(self, last_frame_mono: float) -> bool:
        """A replay whose source stays silent fails instead of waiting for ever. Live sources
        rebuild themselves (capture's stall timeout) and may legitimately wait (stall_s 0)."""
        limit = self.options.stall_s
        return limit > 0 and time.monotonic() - last_frame_mono > limit

    def _reached_max(self) -> bool:
        limit = self.options.max_frames
        return limit is not None and self.counters.captured >= limit

    def _hand_off(self, frame: Frame) -> None:
        turn = self.counters.captured
        self.counters.captured += 1
        self.counters.handoff_dropped += self.queues.hand_off(frame, turn)


class ClassifyWorker:
    """Preprocess + classify, one frame at a time, on lane `worker`."""

    def __init__(
        self,
        worker: int,
        options: ClassifyOptions,
        classifier: Classifier,
        queues: Queues,
        counters: Counters,
        control: Control,
    ) -> None:
        self.worker = worker
        self.options = options
        self.classifier = classifier
        self.queues = queues
        self.counters = counters
        self.control = control

    def run(self) -> None:
        while not self.control.failed.is_set():
            frame = self.queues.next_frame(self.worker)
            if isinstance(frame, End):
                break
            if frame is not None:
                self.queues.put_result(self.worker, self.classify(frame))

    def finish(self) -> None:
        """Always, after `run`: the publisher learns that this lane is over."""
        self.queues.end_worker(self.worker)

    def classify(self, frame: Frame) -> Classified:
        gray = render(frame, self.options.preprocess)
        prediction = self.classifier.classify(gray)
        thermal = ThermalStats.of_frame(frame)
        latency_ms = (time.monotonic_ns() - frame.capture_mono_ns) / 1e6
        self.counters.record_classified(latency_ms, prediction.inference_ms)
        return Classified(frame, gray, prediction, thermal, latency_ms)


class PublishStage:
    """Takes results in capture order, lets the exam tag them, adds them to the session,
    publishes result, state and stats, feeds the consumers and the output; runs queued commands
    (and the exam's timers) between results."""

    def __init__(
        self,
        options: PublishOptions,
        session: Session,
        model: ModelInfo,
        publisher: ResultSink,
        reporter: StatsReporter,
        queues: Queues,
        control: Control,
        consumers: Sequence[FrameConsumer] = (),
        commands: CommandInbox | None = None,
        with_output: bool = False,
        exam: ExamHook | None = None,
    ) -> None:
        self.options = options
        self.session = session
        self.model = model
        self.publisher = publisher
        self.reporter = reporter
        self.queues = queues
        self.counters = reporter.counters
        self.control = control
        self.consumers = tuple(consumers)
        self.commands = commands
        self.with_output = with_output
        self.exam = exam
        self._verdict_key: tuple[str, bool | None] | None = None
        self._state_mono = float("-inf")  # when the last state went out
        self._state_behind = False  # results added since the last state

    def run(self) -> None:
        turn = 0
        while True:
            self._run_commands()
            item = self.queues.next_result(turn)
            if isinstance(item, End):
                break
            if item is not None:
                self.publish(item)
                turn = (turn + 1) % self.queues.workers
            self._maybe_state()
            self._maybe_stats()

    def finish(self) -> None:
        """Always, after `run` (a failure is recorded by then): the output learns that the
        results are over, and the session ends with its summary."""
        self.queues.end_publish()
        self._end_session()

    def publish(self, item: Classified) -> None:
        tag = self.exam.assess(item) if self.exam is not None else NO_EXAM
        result = self.session.add(
            item.frame, item.prediction, item.thermal, item.capture_to_result_ms, tag
        )
        self.publisher.publish_result(result, self.model)
        self.counters.published += 1
        self._state_after_result()
        if self.with_output or self.consumers:
            item = replace(item, overlay=self._overlay(item))
        for consumer in self.consumers:
            consumer.on_result(item, result)
        if self.with_output:
            self.counters.output_dropped += self.queues.to_output(item)

    def _state_after_result(self) -> None:
        """The retained state goes out at once when the rolling verdict's label changes (and
        with the first result), else when `_maybe_state` finds it due: a second QoS 1 message
        after every result cost about a tenth of the pipeline's own CPU."""
        verdict = self.session.verdict()
        key = None if verdict is None else (verdict.label, verdict.positive)
        self._state_behind = True
        if key != self._verdict_key or self._state_mono == float("-inf"):
            self._verdict_key = key
            self._publish_state()
        else:
            self._maybe_state()

    def _maybe_state(self) -> None:
        """Between results too: a state that is behind goes out once `state_interval_s` has
        passed, so the retained state is never older than that while the session runs."""
        interval = self.options.state_interval_s
        if self._state_behind and time.monotonic() - self._state_mono >= interval:
            self._publish_state()

    def _publish_state(self) -> None:
        self.publisher.publish_state(self.options.camera_id, self.session.state_payload())
        self._state_mono = time.monotonic()
        self._state_behind = False

    def _overlay(self, item: Classified) -> OverlayInfo:
        verdict = self.session.verdict()
        rolling = verdict.to_dict(self.session.policy) if verdict is not None else None
        if self.exam is not None:
            return self.exam.overlay(item, rolling)
        line = None
        if rolling is not None:
            line = VerdictLine(
                rolling["label"], rolling["score"], rolling["threshold"], rolling["frames"]
            )
        return OverlayInfo(rolling=line, synthetic_model=self.model.synthetic)

    def _run_commands(self) -> None:
        if self.commands is not None:
            self.commands.drain()
        if self.exam is not None:
            self.exam.idle()

    def _end_session(self) -> None:
        """Last commands, then the consumers, the final state, the summary and the stats."""
        if self.commands is not None:
            self.commands.drain()
            self.commands.close()
        if self.exam is not None:
            self.exam.on_end(self.control.end_reason)
        self.session.end(self.control.end_reason)
        for consumer in self.consumers:
            consumer.on_end(self.control.end_reason)
        dropped = self.publisher.stats().dropped_seq.get(self.session.session_id, [])
        summary = self.session.summary_payload(self.reporter.drops().as_dict(), dropped)
        try:
            self.publisher.publish_state(self.options.camera_id, self.session.state_payload())
            self.publisher.publish_session(self.options.camera_id, summary)
            self.publisher.publish_stats(self.reporter.payload())
        except PublisherStopped:
            log.warning(
                "session %s: the publisher stopped before its summary could be stored",
                self.session.session_id,
            )

    def _maybe_stats(self) -> None:
        if not self.reporter.due():
            return
        stats = self.reporter.payload()
        self.publisher.publish_stats(stats)
        latency = stats["latency_ms"]["capture_to_result"]
        log.info(
            "%d results, %.1f fps, capture->result p50 %.1f ms p95 %.1f ms, drops %s",
            self.counters.published,
            stats["fps"],
            latency["p50"],
            latency["p95"],
            stats["drops"],
        )


class OutputStage:
    """Annotated frames to the output. The output is optional: when it fails, the error is
    logged and counted and screening goes on without it (frames are drained, not drawn)."""

    def __init__(self, factory: OutputFactory, queues: Queues, counters: Counters) -> None:
        self.factory = factory
        self.queues = queues
        self.counters = counters
        self._out: Output | None = None

    def run(self) -> None:
        broken = False
        while True:
            item = self.queues.next_output()
            if isinstance(item, End):
                break
            if item is None or broken:
                continue
            try:
                self._out = self._out or self.factory(item.gray.shape[1], item.gray.shape[0])
                self._out.write(item.frame, item.gray, item.prediction, item.thermal, item.overlay)
            except OutputError as exc:
                log.error("%s; going on without the annotated output", exc)
                self.counters.output_errors += 1
                broken = True

    def finish(self) -> None:
        """Always, after `run`: close the output (a file gets its EOS and is finalised)."""
        if self._out is None:
            return
        try:
            self._out.close()
        except OutputError as exc:
            log.error("%s", exc)
