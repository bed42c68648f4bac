"""`thermoscreen run`: capture -> preprocess + classify -> session + publish -> optional output.

Each stage runs in its own thread; bounded queues join them and one stop event ends them:

    capture --(live: 1-slot newest wins, drops counted | replay: bounded queue, blocks)-->
    classify --(bounded queue, blocks)--> publish (session, results, state, stats)
    --(bounded queue; live drops the oldest and counts)--> annotated output

The model (sha256, labels, graph) and its preprocessing are checked before the first frame.
SIGINT/SIGTERM stop capture; a replay still classifies and publishes what was captured, then the
session summary and the `stopped` status go out and the outbox is flushed (bounded). Results
that the broker has not acknowledged stay in the durable outbox and go out on the next start.

Exit codes: 0 done; 2 bad input (config, model, source, output: one line on stderr); 1 failure
while running; 3 finished but results still wait in the outbox (broker unreachable).

Screening support only: thermography is an adjunct to mammography, never a diagnosis.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import logging
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from pipeline import DISCLAIMER
from pipeline.capture.base import EndOfStream, LatestSlot, Source, SourceError, SourceOptions
from pipeline.capture.factory import open_source
from pipeline.classify.base import Classifier
from pipeline.classify.factory import (
    choose_backend,
    load_classifier,
    model_info,
    replay_workers,
    resolve_preprocessing,
    threads_per_worker,
)
from pipeline.config import AppConfig, ConfigError, OutboxConfig, load_config
from pipeline.manifest import ModelError
from pipeline.mqtt.client import add_broker_arguments, broker_overrides
from pipeline.output.annotated import OutputError
from pipeline.preprocess import PreprocessConfig, render
from pipeline.run.session import EndReason, Session, VerdictPolicy
from pipeline.types import Frame, FrameResult, ModelInfo, Prediction, ThermalStats

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PENDING = 3
DEFAULT_CONFIG = Path("config/default.yaml")
STATS_SCHEMA = 1
_POLL_S = 0.2
_LATENCY_WINDOW = 10_000
SHUTDOWN_STALL_S = 10.0  # no progress for this long after a stop: unblock the publisher


class RunError(Exception):
    """A run that cannot start (bad config, model, source or output); one line with the fix."""


class ResultSink(Protocol):
    """What the runner needs from the MQTT publisher (pipeline.mqtt.publisher.Publisher)."""

    def start(self) -> None: ...

    def publish_result(self, result: FrameResult, model: ModelInfo) -> str: ...

    def publish_state(self, camera_id: str, state: dict[str, Any]) -> None: ...

    def publish_session(self, camera_id: str, summary: dict[str, Any]) -> None: ...

    def publish_stats(self, stats: dict[str, Any]) -> None: ...

    def stop(self, flush_timeout_s: float) -> bool: ...

    def stats(self) -> dict[str, Any]: ...


class Output(Protocol):
    """An annotated output (pipeline.output.annotated)."""

    def write(
        self,
        gray8: npt.NDArray[np.uint8],
        prediction: Prediction,
        thermal: ThermalStats | None,
        frame_index: int,
    ) -> None: ...

    def close(self) -> None: ...


class _End:
    """Queue sentinel: the stage upstream has finished."""


END = _End()


@dataclass(frozen=True)
class Classified:
    """A frame after preprocess + classify, on its way to the session and publisher."""

    frame: Frame
    gray: npt.NDArray[np.uint8]
    prediction: Prediction
    thermal: ThermalStats | None
    capture_to_result_ms: float


@dataclass
class RunSummary:
    """What a run did; printed at the end and returned to callers such as the demo."""

    session_id: str
    mode: str
    end_reason: str
    frames_captured: int
    results: int
    wall_s: float
    fps: float
    latency_ms: dict[str, float]
    drops: dict[str, int]
    verdict: dict[str, Any] | None
    outbox_pending: int
    flushed: bool
    error: str | None = None
    error_kind: str = ""  # "source" (bad input: exit 2) or "stage" (exit 1)
    broker_error: str | None = None  # the publisher's last connection error

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return EXIT_BAD_INPUT if self.error_kind == "source" else EXIT_FAILED
        return EXIT_PENDING if self.outbox_pending > 0 else EXIT_OK


@dataclass
class _Counters:
    captured: int = 0
    classified: int = 0
    published: int = 0
    handoff_dropped: int = 0
    output_dropped: int = 0
    output_errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    inference_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))


def percentiles(values: list[float] | deque[float]) -> dict[str, float]:
    """p50/p95/p99 in ms (empty -> zeros) for stats and the summary."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    p50, p95, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


class Pipeline:
    """The threaded stages of one session. Build with opened parts, then `run()`."""

    def __init__(
        self,
        cfg: AppConfig,
        source: Source,
        classifier: Classifier,
        preprocess: PreprocessConfig,
        publisher: ResultSink,
        live: bool,
        output_factory: Callable[[int, int], Output] | None = None,
        max_frames: int | None = None,
        stop: threading.Event | None = None,
        workers: int = 1,
    ) -> None:
        if workers < 1 or (live and workers != 1):
            raise ValueError(f"workers must be 1 live and >= 1 in a replay, got {workers}")
        self.cfg = cfg
        self.source = source
        self.classifier = classifier
        self.preprocess = preprocess
        self.publisher = publisher
        self.live = live
        self.output_factory = output_factory
        self.max_frames = max_frames
        self.stop = stop or threading.Event()
        self.model = model_info(classifier)
        manifest = classifier.model.manifest
        self.session = Session(
            mode="live" if live else "replay",
            camera_id=cfg.camera_id,
            device_id=cfg.device_id,
            source=source.uri,
            policy=VerdictPolicy.build(
                labels=classifier.labels,
                window_frames=cfg.session.window_frames,
                method=cfg.session.method,
                configured_threshold=cfg.session.threshold,
                manifest_threshold=manifest.threshold,
                positive_label=manifest.positive_label,
                use_manifest_threshold=cfg.session.use_manifest_threshold,
            ),
            model=self.model,
        )
        self.counters = _Counters()
        self._counters_lock = threading.Lock()
        self._slot = LatestSlot()
        # Replay with N workers: frame i goes to worker i % N and the publisher takes results
        # from worker 0, 1, ..., N-1 in turn, so results leave in capture order without a
        # reorder buffer. The configured queue bounds are shared out between the workers.
        self.workers = workers
        frames_each = max(2, cfg.queues.replay_frames // workers)
        results_each = max(2, cfg.queues.results // workers)
        self._frames: list[queue.Queue[Frame | _End]] = [
            queue.Queue(frames_each) for _ in range(workers)
        ]
        self._results: list[queue.Queue[Classified | _End]] = [
            queue.Queue(results_each) for _ in range(workers)
        ]
        self._workers_left = workers
        self._out: queue.Queue[Classified | _End] = queue.Queue(cfg.queues.output)
        self._capture_done = threading.Event()
        self._classify_done = threading.Event()
        self._publish_done = threading.Event()
        self._failed = threading.Event()
        self._error: str | None = None
        self._error_kind = ""
        self._end_reason: EndReason = "stopped"
        self._started_mono = time.monotonic()
        self._last_stats_mono = self._started_mono
        self._last_stats_results = 0

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Run every stage until EOS, stop or error; the session summary is published before
        this returns. The publisher is not stopped here (the caller owns it)."""
        self._started_mono = time.monotonic()
        self._last_stats_mono = self._started_mono
        threads = [
            self._thread("capture", self._capture_loop),
            *[
                self._thread(f"classify-{i}", functools.partial(self._classify_loop, i))
                for i in range(self.workers)
            ],
            self._thread("publish", self._publish_loop),
        ]
        if self.output_factory is not None:
            threads.append(self._thread("output", self._output_loop))
        for t in threads:
            t.start()
        watch = _ShutdownWatch(self)
        for t in threads:
            while t.is_alive():
                t.join(_POLL_S)
                watch.check()
        return self._summary()

    def _thread(self, name: str, body: Callable[[], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                body()
            except Exception as exc:  # a stage crashed: record, stop the others, end the session
                log.exception("%s stage failed", name)
                self._fail(f"{name}: {exc}", "stage")

        return threading.Thread(target=guarded, name=f"thermoscreen-{name}", daemon=True)

    def _fail(self, message: str, kind: str) -> None:
        if self._error is None:
            self._error, self._error_kind = message, kind
        self._end_reason = "error"
        self._failed.set()
        self.stop.set()

    # --- capture ---------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        try:
            last_frame_mono = time.monotonic()
            while not self.stop.is_set() and not self._reached_max():
                frame = self.source.read(self.cfg.capture.read_timeout_s)
                if frame is not None:
                    self._hand_off(frame)
                    last_frame_mono = time.monotonic()
                elif self._stalled(last_frame_mono):
                    raise SourceError(
                        f"source '{self.source.uri}': no frame for "
                        f"{self.cfg.capture.replay_stall_s:g} s in a replay; the recording or "
                        "its decoder is stuck (raise capture.replay_stall_s if it is just slow)"
                    )
            if not self.stop.is_set():
                log.info("stopping after --max-frames %d", self.max_frames)
        except EndOfStream:
            self._end_reason = "eos"
        except SourceError as exc:
            self._fail(str(exc), "source")
        finally:
            self._capture_done.set()
            self._slot.close()
            for q in self._frames:
                self._put_blocking(q, END)

    def _stalled(self, last_frame_mono: float) -> bool:
        """A replay whose source stays silent: fail instead of waiting forever. Live sources
        rebuild themselves (capture's stall timeout) and may legitimately wait."""
        limit = self.cfg.capture.replay_stall_s
        return not self.live and limit > 0 and time.monotonic() - last_frame_mono > limit

    def _reached_max(self) -> bool:
        return self.max_frames is not None and self.counters.captured >= self.max_frames

    def _hand_off(self, frame: Frame) -> None:
        turn = self.counters.captured % self.workers
        self.counters.captured += 1
        if self.live:
            before = self._slot.dropped
            self._slot.put(frame)
            self.counters.handoff_dropped += self._slot.dropped - before
        else:
            self._put_blocking(self._frames[turn], frame)

    def _put_blocking(self, q: queue.Queue[Any], item: Any) -> None:
        """Backpressure: wait for room, unless a stage failed (then nobody will make room)."""
        while True:
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                if self._failed.is_set():
                    return

    # --- classify --------------------------------------------------------------------------

    def _classify_loop(self, worker: int) -> None:
        try:
            while not self._failed.is_set():
                frame = self._next_frame(worker)
                if frame is END:
                    break
                if isinstance(frame, Frame):
                    self._put_blocking(self._results[worker], self._classify(frame))
        finally:
            self._put_blocking(self._results[worker], END)
            with self._counters_lock:
                self._workers_left -= 1
                if self._workers_left == 0:
                    self._classify_done.set()

    def _next_frame(self, worker: int) -> Frame | _End | None:
        """The next captured frame; None when nothing arrived yet; END when capture is over."""
        if self.live:
            frame = self._slot.get(_POLL_S)
            if frame is None and self._capture_done.is_set():
                return END
            return frame
        try:
            return self._frames[worker].get(timeout=_POLL_S)
        except queue.Empty:
            return None

    def _classify(self, frame: Frame) -> Classified:
        gray = render(frame, self.preprocess)
        prediction = self.classifier.classify(gray)
        thermal = ThermalStats.of(frame.celsius())
        latency_ms = (time.monotonic_ns() - frame.capture_mono_ns) / 1e6
        with self._counters_lock:
            self.counters.classified += 1
            self.counters.latencies_ms.append(latency_ms)
            self.counters.inference_ms.append(prediction.inference_ms)
        return Classified(frame, gray, prediction, thermal, latency_ms)

    # --- session + publish -----------------------------------------------------------------

    def _publish_loop(self) -> None:
        turn = 0
        try:
            while True:
                item = _get(self._results[turn], self._classify_done)
                if isinstance(item, _End):
                    break
                if item is not None:
                    self._publish(item)
                    turn = (turn + 1) % self.workers
                self._maybe_stats()
        finally:
            self._publish_done.set()
            self._put_blocking(self._out, END)
            self._end_session()

    def _publish(self, item: Classified) -> None:
        result = self.session.add(
            item.frame, item.prediction, item.thermal, item.capture_to_result_ms
        )
        self.publisher.publish_result(result, self.model)
        self.counters.published += 1
        if result.seq % self.cfg.session.state_every_frames == 0:
            self.publisher.publish_state(self.cfg.camera_id, self.session.state_payload())
        if self.output_factory is not None:
            self._to_output(item)

    def _to_output(self, item: Classified) -> None:
        if not self.live:
            self._put_blocking(self._out, item)
            return
        while True:  # live: never block the publisher; drop the oldest annotated frame
            try:
                self._out.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._out.get_nowait()
                    self.counters.output_dropped += 1
                except queue.Empty:
                    pass

    def _end_session(self) -> None:
        self.session.end(self._end_reason)
        self.publisher.publish_state(self.cfg.camera_id, self.session.state_payload())
        self.publisher.publish_session(
            self.cfg.camera_id, self.session.summary_payload(self.drops())
        )
        self.publisher.publish_stats(self.stats_payload())

    def _maybe_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_stats_mono < self.cfg.mqtt.stats_interval_s:
            return
        stats = self.stats_payload()
        self.publisher.publish_stats(stats)
        log.info(
            "%d results, %.1f fps, capture->result p50 %.1f ms p95 %.1f ms, drops %s",
            self.counters.published,
            stats["fps"],
            stats["latency_ms"]["capture_to_result"]["p50"],
            stats["latency_ms"]["capture_to_result"]["p95"],
            stats["drops"],
        )

    def drops(self) -> dict[str, int]:
        """Every drop, per stage (replay keeps these at zero by design)."""
        return {
            "source": int(self.source.stats.dropped),
            "handoff": self.counters.handoff_dropped,
            "output": self.counters.output_dropped,
        }

    def _snapshot(self, values: deque[float]) -> list[float]:
        """A copy the classify workers cannot append to while it is read."""
        with self._counters_lock:
            return list(values)

    def stats_payload(self) -> dict[str, Any]:
        """The `stats` message: rate since the last one, latency percentiles, drops, queues."""
        now = time.monotonic()
        done = self.counters.published
        interval = max(now - self._last_stats_mono, 1e-9)
        fps = (done - self._last_stats_results) / interval
        self._last_stats_mono, self._last_stats_results = now, done
        src = self.source.stats
        return {
            "schema": STATS_SCHEMA,
            "device_id": self.cfg.device_id,
            "camera_id": self.cfg.camera_id,
            "session_id": self.session.session_id,
            "mode": self.session.mode,
            "uptime_s": round(now - self._started_mono, 3),
            "frames": {"captured": self.counters.captured, "results": done},
            "fps": round(fps, 3),
            "latency_ms": {
                "capture_to_result": percentiles(self._snapshot(self.counters.latencies_ms)),
                "inference": percentiles(self._snapshot(self.counters.inference_ms)),
            },
            "drops": self.drops(),
            "queues": {
                "frames": None if self.live else sum(q.qsize() for q in self._frames),
                "results": sum(q.qsize() for q in self._results),
                "output": self._out.qsize(),
            },
            "source": {"rebuilds": src.rebuilds, "errors": src.errors},
            "output_errors": self.counters.output_errors,
            "outbox": self.publisher.stats(),
        }

    # --- output ----------------------------------------------------------------------------

    def _output_loop(self) -> None:
        """Annotated frames to the output. The output is optional: when it fails, the error is
        logged and counted and screening goes on without it (frames are drained, not drawn)."""
        assert self.output_factory is not None
        out: Output | None = None
        broken = False
        try:
            while True:
                item = _get(self._out, self._publish_done)
                if isinstance(item, _End):
                    break
                if item is None or broken:
                    continue
                try:
                    out = out or self.output_factory(item.gray.shape[1], item.gray.shape[0])
                    out.write(item.gray, item.prediction, item.thermal, item.frame.index)
                except OutputError as exc:
                    log.error("%s; going on without the annotated output", exc)
                    self.counters.output_errors += 1
                    broken = True
        finally:
            if out is not None:
                _close_output(out)

    # --- summary ---------------------------------------------------------------------------

    def _summary(self) -> RunSummary:
        wall = time.monotonic() - self._started_mono
        verdict = self.session.verdict()
        return RunSummary(
            session_id=self.session.session_id,
            mode=self.session.mode,
            end_reason=str(self.session.end_reason),
            frames_captured=self.counters.captured,
            results=self.counters.published,
            wall_s=wall,
            fps=self.counters.published / wall if wall > 0 else 0.0,
            latency_ms=percentiles(self._snapshot(self.counters.latencies_ms)),
            drops=self.drops(),
            verdict=verdict.to_dict(self.session.policy) if verdict else None,
            outbox_pending=0,
            flushed=False,
            error=self._error,
            error_kind=self._error_kind,
        )


def _close_output(out: Output) -> None:
    try:
        out.close()
    except OutputError as exc:
        log.error("%s", exc)


def _get(q: queue.Queue[Any], upstream_done: threading.Event) -> Any:
    """The next item; None while waiting; END once upstream is done and nothing is left
    (also when a failed upstream could not deliver its END)."""
    try:
        return q.get(timeout=_POLL_S)
    except queue.Empty:
        return END if upstream_done.is_set() else None


class _ShutdownWatch:
    """After a stop, the stages drain; if they make no progress for SHUTDOWN_STALL_S (a replay
    blocked on a full outbox while the broker is away), stop the publisher so the blocked put
    returns and the run can end instead of hanging."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.progress = -1
        self.since = 0.0
        self.fired = False

    def check(self) -> None:
        p = self.pipeline
        if self.fired or not p.stop.is_set():
            return
        now, done = time.monotonic(), p.counters.published + p.counters.classified
        if done != self.progress:
            self.progress, self.since = done, now
            return
        if now - self.since > SHUTDOWN_STALL_S:
            self.fired = True
            log.error(
                "shutdown made no progress for %.0f s (outbox full and broker unreachable?); "
                "stopping the publisher: results not yet in the outbox are not sent",
                SHUTDOWN_STALL_S,
            )
            p.publisher.stop(0.0)


# --- building a run from config ------------------------------------------------------------


def source_options(cfg: AppConfig) -> SourceOptions:
    """Config -> capture options; an explicit mode overrides what the URI scheme implies."""
    live = None if cfg.mode == "auto" else cfg.mode == "live"
    c = cfg.capture
    return SourceOptions(
        camera_id=cfg.camera_id,
        live=live,
        fps=c.fps,
        realtime=c.realtime,
        profile=c.profile,
        width=c.width,
        height=c.height,
        jetson=c.jetson,
        reconnect_min_s=c.reconnect_min_s,
        reconnect_max_s=c.reconnect_max_s,
        loop=c.loop,
    )


def outbox_for(cfg: AppConfig, live: bool) -> OutboxConfig | None:
    """Replay never drops: a full outbox blocks capture. Live takes the configured policy."""
    if not cfg.outbox.enabled:
        return None
    if live:
        return cfg.outbox
    return cfg.outbox.model_copy(update={"when_full": "block"})


def _output_factory(cfg: AppConfig, preprocess: PreprocessConfig) -> Callable[[int, int], Output]:
    """Opens the output at the first frame's size; the URI is checked now (OutputError)."""
    from pipeline.output.annotated import OutputOptions, describe_output, open_output

    assert cfg.output is not None
    uri, fps = cfg.output, cfg.capture.fps
    options = OutputOptions(window_c=preprocess.window_c, jetson=cfg.capture.jetson)
    describe_output(uri, 64, 64, fps, options)  # unknown scheme, missing host:port -> now

    def factory(width: int, height: int) -> Output:
        made: Output = open_output(uri, width, height, fps, options)
        return made

    return factory


def _pending(stats: dict[str, Any]) -> int:
    """Unacknowledged results left in the outbox, from the publisher's stats."""
    for key in ("outbox_pending", "pending"):
        value = stats.get(key)
        if isinstance(value, int):
            return value
    nested = stats.get("outbox")
    if isinstance(nested, dict) and isinstance(nested.get("pending"), int):
        return int(nested["pending"])
    return 0


@contextmanager
def _closing(thing: Any) -> Iterator[Any]:
    try:
        yield thing
    finally:
        thing.close()


def run(
    cfg: AppConfig,
    stop: threading.Event | None = None,
    max_frames: int | None = None,
    publisher: ResultSink | None = None,
) -> RunSummary:
    """Check the model, open the source, run one session and flush the publisher.

    Raises RunError (one line) when the run cannot start. `stop` ends it early (signals).
    """
    if cfg.source is None:
        raise RunError("no source: give SOURCE on the command line or `source:` in the config")
    stop = stop or threading.Event()
    try:  # build the source (not open yet): live or replay decides how frames are classified
        source = open_source(cfg.source, source_options(cfg))
        live = source.is_live if cfg.mode == "auto" else cfg.mode == "live"
        backend = choose_backend(cfg.model.backend)
        workers = replay_workers(cfg.model.replay_workers, backend, live)
        classifier = load_classifier(
            cfg.model.dir,
            backend=backend,
            threshold=cfg.model.threshold,
            top_k=cfg.model.top_k,
            intra_op_threads=threads_per_worker(workers, cfg.model.intra_op_threads),
        )
    except (ModelError, SourceError, ValueError) as exc:
        raise RunError(str(exc)) from exc
    with _closing(classifier):
        try:
            preprocess = resolve_preprocessing(
                classifier.model, cfg.preprocess, cfg.model.follow_manifest
            )
            outputs = _output_factory(cfg, preprocess) if cfg.output is not None else None
        except (ModelError, OutputError) as exc:
            raise RunError(str(exc)) from exc
        sink = publisher or _make_publisher(cfg, live)
        try:
            source.open()
        except SourceError as exc:
            sink.stop(0.0)
            raise RunError(str(exc)) from exc
        with _closing(source):
            log.info(
                "%s %s -> model %s (%s, %d at once), preprocessing %s",
                "live" if live else "replay",
                source.uri,
                classifier.model.manifest.name,
                classifier.backend,
                workers,
                preprocess.model_dump(),
            )
            try:
                parts = Pipeline(
                    cfg,
                    source,
                    classifier,
                    preprocess,
                    sink,
                    live,
                    outputs,
                    max_frames=max_frames,
                    stop=stop,
                    workers=workers,
                )
            except ValueError as exc:  # e.g. an operating threshold without a positive label
                sink.stop(0.0)
                raise RunError(f"{classifier.model.root}: {exc}") from exc
            return _run_session(cfg, parts, sink)


def _make_publisher(cfg: AppConfig, live: bool) -> ResultSink:
    """The MQTT publisher with its durable outbox; RunError when either cannot be set up."""
    from pipeline.mqtt.outbox import OutboxError
    from pipeline.mqtt.publisher import Publisher

    try:
        publisher: ResultSink = Publisher(cfg.mqtt, cfg.device_id, outbox_for(cfg, live))
    except (ValueError, OutboxError) as exc:
        raise RunError(str(exc)) from exc
    return publisher


def _run_session(cfg: AppConfig, pipeline: Pipeline, sink: ResultSink) -> RunSummary:
    sink.start()
    summary = pipeline.run()
    summary.flushed = sink.stop(cfg.flush_timeout_s)
    stats = sink.stats()
    summary.outbox_pending = _pending(stats)
    summary.broker_error = stats.get("last_error")
    return summary


# --- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        nargs="?",
        help="source URI (file://rec.mp4, v4l2:///dev/video0, "
        "dmr://folder, test://, ...); overrides `source:` in the config",
    )
    parser.add_argument(
        "output",
        nargs="?",
        help="annotated output URI (file://out.mp4, display://0, rtp://host:port)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"YAML config (default {DEFAULT_CONFIG} when it exists); "
        "THERMOSCREEN_* variables override it, flags override both",
    )
    parser.add_argument(
        "--model", type=Path, help="model directory (model.onnx, labels.txt, model.json)"
    )
    parser.add_argument(
        "--backend",
        choices=["auto", "onnxruntime", "jetson"],
        help="inference backend (auto: jetson where jetson-inference imports)",
    )
    parser.add_argument("--device-id", help="device id (MQTT topic level)")
    parser.add_argument("--camera-id", help="camera id (MQTT topic level)")
    add_broker_arguments(parser)
    parser.add_argument(
        "--mode",
        choices=["auto", "live", "replay"],
        help="live keeps the newest frame (drops counted); replay drops nothing (auto: by URI)",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        default=None,
        help="replay recordings at their own frame rate",
    )
    parser.add_argument("--fps", type=float, help="frame rate of test:// sources")
    parser.add_argument(
        "--follow-manifest",
        action="store_true",
        default=None,
        help="use the model's preprocessing when the config's differs",
    )
    parser.add_argument("--max-frames", type=int, help="stop after N captured frames")
    parser.add_argument("--outbox", type=Path, help="durable outbox file (SQLite)")
    parser.add_argument(
        "--flush-timeout", type=float, help="seconds to wait for the outbox to empty at exit"
    )
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level"
    )
    parser.epilog = (
        "exit codes: 0 done; 1 failed while running; 2 bad input (config, model, source); "
        "3 finished but results still wait in the outbox (they go out on the next start)"
    )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags -> dotted config overrides (only the flags given)."""
    flat: dict[str, Any] = {
        "source": args.source,
        "output": args.output,
        "model.dir": args.model,
        "model.backend": args.backend,
        "device_id": args.device_id,
        "camera_id": args.camera_id,
        "mode": args.mode,
        "capture.realtime": args.realtime,
        "capture.fps": args.fps,
        "model.follow_manifest": args.follow_manifest,
        "outbox.path": args.outbox,
        "flush_timeout_s": args.flush_timeout,
        "log_level": args.log_level,
    }
    flat.update(broker_overrides(args))
    return {k: v for k, v in flat.items() if v is not None}


def _config_path(args: argparse.Namespace) -> Path | None:
    if args.config is not None:
        return Path(args.config)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set the stop event: the run drains, publishes the summary and exits."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("%s again: still shutting down", signal.Signals(signum).name)
        else:
            log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def print_summary(summary: RunSummary, cfg: AppConfig) -> None:
    lat = summary.latency_ms
    print(
        f"thermoscreen run: {summary.results} results from {summary.frames_captured} frames in "
        f"{summary.wall_s:.1f} s ({summary.fps:.1f} fps); capture->result p50 {lat['p50']:.1f} ms, "
        f"p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms"
    )
    verdict = summary.verdict
    said = f"{verdict['label']} (score {verdict['score']:.3f})" if verdict else "none (no frames)"
    dropped = sum(summary.drops.values())
    print(
        f"session {summary.session_id} ({summary.mode}): ended by {summary.end_reason}; "
        f"rolling verdict {said}; drops {dropped} {summary.drops}"
    )
    if summary.outbox_pending:
        why = f": {summary.broker_error}" if summary.broker_error else ""
        print(
            f"{summary.outbox_pending} messages are still waiting in the outbox {cfg.outbox.path} "
            f"(results and session summaries not acknowledged by {cfg.mqtt.host}:{cfg.mqtt.port}"
            f"{why}); nothing is lost: they are sent on the next start with this outbox",
            file=sys.stderr,
        )
    else:
        print("outbox: empty (every result acknowledged by the broker)")
    print(f"Note: {DISCLAIMER}")


M_ARENA_MAX = -8  # glibc mallopt parameters
M_MMAP_THRESHOLD = -3


def tune_malloc(arenas: int = 1, mmap_threshold_bytes: int = 1 << 20) -> bool:
    """glibc's allocator for a pipeline of a few threads passing frames along.

    One arena: a frame freed by the publisher is reused by the capture thread instead of sitting
    in that thread's own heap (per-thread arenas took peak RSS to 337 MB). Blocks of 1 MB and
    more (ONNX Runtime's load-time copies) come from mmap and go back to the OS when freed;
    frames and tensors (0.3-0.6 MB) stay in the heap and are reused, where a lower threshold made
    every frame fault in fresh pages. `thermoscreen bench` with ResNet18 on 2 cores: replay/bare
    0.87 -> 0.90, peak RSS 231 -> 233 MB. False where the C library is not glibc (musl, macOS):
    nothing to tune there."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas)) and bool(
            libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold_bytes)
        )
    except (OSError, AttributeError):
        return False


def main(args: argparse.Namespace) -> int:
    tune_malloc()
    try:
        cfg = load_config(_config_path(args), overrides_from_args(args))
    except ConfigError as exc:
        print(f"thermoscreen run: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(
        level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    try:
        with _stop_on_signals(stop):
            summary = run(cfg, stop=stop, max_frames=args.max_frames)
    except RunError as exc:
        print(f"thermoscreen run: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if summary.error is not None:
        print(f"thermoscreen run: {summary.error}", file=sys.stderr)
    print_summary(summary, cfg)
    return summary.exit_code
