"""The runner's threads with fakes of Source and Classifier and an in-memory result sink:
results leave in capture order with several replay workers, a live hand-off drops and counts
exactly, a replay holds capture back instead of dropping, and every way a run ends (stop, EOS,
a stage that raises) still publishes the session summary and gives the right exit code."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from pipeline.config import AppConfig
from pipeline.preprocess import PreprocessConfig
from pipeline.run.base import Classified, FrameConsumer
from pipeline.run.command import finish
from pipeline.run.inbox import CommandInbox, InboxClosed
from pipeline.run.options import (
    CaptureOptions,
    ClassifyOptions,
    PublishOptions,
    QueueOptions,
    StageOptions,
)
from pipeline.run.pipeline import Pipeline
from pipeline.run.session import EndReason, Session, VerdictPolicy
from pipeline.run.stats import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, RunSummary
from pipeline.types import FrameResult
from tests.fakes.classifier import LABELS, FakeClassifier
from tests.fakes.sink import MemorySink
from tests.fakes.source import FakeSource

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A FrameConsumer that keeps what it saw and can stop the run after `stop_after` results."""

    def __init__(self, stop: threading.Event | None = None, stop_after: int = 0) -> None:
        self.stop, self.stop_after = stop, stop_after
        self.seen: list[tuple[int, int, str]] = []  # (frame index, result seq, thread)
        self.ends: list[EndReason] = []

    def on_result(self, item: Classified, result: FrameResult) -> None:
        self.seen.append((item.frame.index, result.seq, threading.current_thread().name))
        if self.stop is not None and len(self.seen) >= self.stop_after:
            self.stop.set()

    def on_end(self, reason: EndReason) -> None:
        self.ends.append(reason)


def make_pipeline(
    source: FakeSource,
    classifier: FakeClassifier,
    sink: MemorySink,
    workers: int = 1,
    per_worker: int = 8,
    consumers: Sequence[FrameConsumer] = (),
    commands: CommandInbox | None = None,
    stop: threading.Event | None = None,
    state_interval_s: float = 0.0,
) -> Pipeline:
    live = source.is_live
    options = StageOptions(
        queues=QueueOptions(live, workers, per_worker, per_worker, output=2),
        capture=CaptureOptions(read_timeout_s=0.05, stall_s=0.0 if live else 20.0),
        classify=ClassifyOptions(PreprocessConfig()),
        publish=PublishOptions(
            "dev", "cam", state_interval_s=state_interval_s, stats_interval_s=3600.0
        ),
    )
    session = Session(
        mode="live" if live else "replay",
        camera_id="cam",
        device_id="dev",
        source=source.uri,
        policy=VerdictPolicy(LABELS, window_frames=4),
    )
    return Pipeline(options, source, classifier, session, sink, None, consumers, commands, stop)


def frame_indices(sink: MemorySink) -> list[int]:
    return [r.frame_index for r in sink.results]


def test_results_leave_in_capture_order_with_several_replay_workers() -> None:
    # Every third call is slow, so the workers finish out of order all the time.
    classifier = FakeClassifier(delay_s=lambda k: 0.02 if k % 3 == 0 else 0.0)
    sink, recorder = MemorySink(), Recorder()
    pipeline = make_pipeline(FakeSource(30), classifier, sink, workers=3, consumers=[recorder])
    summary = pipeline.run()

    assert len(set(classifier.threads)) == 3  # three workers really classified
    assert frame_indices(sink) == list(range(30))
    assert [r.seq for r in sink.results] == list(range(30))
    assert [(i, s) for i, s, _ in recorder.seen] == [(i, i) for i in range(30)]
    assert {t for _, _, t in recorder.seen} == {"thermoscreen-publish"}
    assert (summary.results, summary.frames_captured, summary.drops.total) == (30, 30, 0)


def test_live_handoff_keeps_the_newest_frame_and_counts_each_drop() -> None:
    # Frame 0 is being classified (held until the source has nothing left) while frames 1-5
    # arrive: each overwrites the one before in the one-frame slot, so 1-4 are dropped.
    classifier = FakeClassifier()
    source = FakeSource(6, live=True, wait_before={1: classifier.started})
    classifier.gate = source.exhausted
    sink = MemorySink()
    summary = make_pipeline(source, classifier, sink).run()

    assert frame_indices(sink) == [0, 5]
    assert summary.frames_captured == 6
    assert summary.drops.handoff == 4 and summary.drops.total == 4
    assert sink.sessions[-1]["drops"] == {"handoff": 4, "outbox": 0, "output": 0, "source": 0}
    assert sink.stats_messages[-1]["drops"]["handoff"] == 4


def test_replay_backpressure_holds_capture_back_and_drops_nothing() -> None:
    sink = MemorySink(publish_delay_s=0.01)  # the slowest stage: publishing
    source = FakeSource(40, lead=lambda: len(sink.results))
    summary = make_pipeline(source, FakeClassifier(), sink, workers=2, per_worker=2).run()

    assert frame_indices(sink) == list(range(40))
    assert summary.drops.total == 0 and summary.end_reason == "eos"
    # Captured but not yet published: 2 lanes x 2 frames queued, 2 in the workers, 2 lanes x
    # 2 results queued, 1 being published. An unbounded queue would let capture run ~40 ahead.
    assert source.max_lead <= 11
    assert source.max_lead >= 6  # the queues did fill: this test exercised backpressure


def test_a_stop_ends_a_live_run_and_the_summary_still_goes_out() -> None:
    stop = threading.Event()
    recorder = Recorder(stop, stop_after=5)
    source = FakeSource(None, live=True, then="idle", every_s=0.002)
    sink = MemorySink()
    summary = make_pipeline(source, FakeClassifier(), sink, consumers=[recorder], stop=stop).run()

    assert summary.end_reason == "stopped" and summary.exit_code == EXIT_OK
    assert summary.results >= 5
    assert summary.frames_captured == summary.results + summary.drops.handoff  # each one counted
    assert [s["end_reason"] for s in sink.sessions] == ["stopped"]
    assert sink.states[-1]["state"] == "ended"
    assert recorder.ends == ["stopped"]


def test_end_of_stream_ends_a_replay_with_everything_published() -> None:
    recorder = Recorder()
    sink = MemorySink()
    summary = make_pipeline(FakeSource(7), FakeClassifier(), sink, consumers=[recorder]).run()

    assert summary.end_reason == "eos" and summary.exit_code == EXIT_OK
    assert frame_indices(sink) == list(range(7))
    [session] = sink.sessions
    assert session["end_reason"] == "eos" and session["frames"] == 7
    assert session["rolling_verdict"]["label"] == "sick"
    assert sink.stats_messages[-1]["frames"] == {"captured": 7, "results": 7}
    assert recorder.ends == ["eos"]


def test_a_stage_that_raises_exits_1_with_its_message_and_a_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = MemorySink()
    summary = make_pipeline(FakeSource(10), FakeClassifier(fail_on_call=3), sink).run()

    assert summary.error == "classify-0: fake classifier exploded on call 3"
    assert summary.end_reason == "error" and summary.exit_code == EXIT_FAILED
    assert frame_indices(sink) == [0, 1, 2]  # what was classified before still went out
    assert [s["end_reason"] for s in sink.sessions] == ["error"]

    code = finish(summary, AppConfig())
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    assert "thermoscreen run: classify-0: fake classifier exploded on call 3" in err
    assert "3 results from" in out and "ended by error" in out


def test_a_source_that_fails_mid_run_is_bad_input() -> None:
    sink = MemorySink()
    summary = make_pipeline(FakeSource(10, fail_at=4), FakeClassifier(), sink).run()

    assert summary.exit_code == EXIT_BAD_INPUT and summary.error is not None
    assert "unplugged at frame 4" in summary.error
    published = frame_indices(sink)  # classifying stops at the failure: a prefix went out
    assert published == list(range(len(published))) and len(published) <= 4
    assert [s["end_reason"] for s in sink.sessions] == ["error"]


def test_a_failing_publisher_stops_a_blocked_replay_instead_of_hanging() -> None:
    sink = MemorySink(fail_on_result=2)
    source = FakeSource(500)  # far more than the queues hold: capture blocks on them
    summary = make_pipeline(source, FakeClassifier(), sink, workers=2, per_worker=2).run()

    assert summary.exit_code == EXIT_FAILED
    assert summary.error == "publish: fake broker link broke"
    assert frame_indices(sink) == [0, 1]
    assert source.delivered < 500
    assert [s["end_reason"] for s in sink.sessions] == ["error"]


def test_commands_run_in_the_publish_thread_and_fail_after_the_run() -> None:
    stop = threading.Event()
    inbox = CommandInbox()
    source = FakeSource(None, live=True, then="idle", every_s=0.002)
    pipeline = make_pipeline(source, FakeClassifier(), MemorySink(), commands=inbox, stop=stop)
    summaries: list[RunSummary] = []
    runner = threading.Thread(target=lambda: summaries.append(pipeline.run()))
    runner.start()
    try:
        where = inbox.submit(lambda: threading.current_thread().name)
        assert where.result(timeout=10.0) == "thermoscreen-publish"
        broken = inbox.submit(lambda: 1 // 0)
        assert isinstance(broken.exception(timeout=10.0), ZeroDivisionError)
    finally:
        stop.set()
        runner.join(20.0)
    assert not runner.is_alive()
    assert summaries[0].error is None  # a failing command is the caller's, not the run's
    with pytest.raises(InboxClosed):
        inbox.submit(lambda: None)


def test_the_retained_state_follows_each_verdict_change_and_ends_right() -> None:
    """With a long state interval the state goes out with the first result, at every change
    of the rolling verdict's label (window of 4) and at the end; nothing in between."""
    runs = [(0.3, 0.7)] * 8 + [(0.8, 0.2)] * 8 + [(0.3, 0.7)] * 8  # sick, healthy, sick
    classifier = FakeClassifier(scores_at=lambda k: runs[k])
    sink = MemorySink()
    make_pipeline(FakeSource(len(runs)), classifier, sink, state_interval_s=3600.0).run()

    labels = [s["rolling_verdict"]["label"] for s in sink.states]
    assert labels == ["sick", "healthy", "sick", "sick"]
    assert [s["frames"] for s in sink.states] == [1, 10, 19, len(runs)]
    assert [s["state"] for s in sink.states] == ["running"] * 3 + ["ended"]


def test_a_zero_state_interval_sends_the_state_after_every_result() -> None:
    sink = MemorySink()
    make_pipeline(FakeSource(6), FakeClassifier(), sink, state_interval_s=0.0).run()
    assert [s["frames"] for s in sink.states] == [1, 2, 3, 4, 5, 6, 6]
    assert sink.states[-1]["state"] == "ended"
