"""From an `AppConfig` to a running session: the one place that reads the config for `run`.

It maps the config onto each stage's small options (`pipeline.run.options`), checks the model
(sha256, labels, graph) and its preprocessing, refuses a synthetic demo model on a live camera
unless allowed, opens the source, the classifier, the publisher, the output and the screening
exam's tracker, and hands them to `Pipeline`. Nothing here runs per frame.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from pipeline.capture.base import Source, SourceError, SourceOptions
from pipeline.capture.factory import open_source
from pipeline.capture.limits import FrameLimit
from pipeline.classify.base import Classifier
from pipeline.classify.factory import (
    choose_backend,
    load_classifier,
    model_info,
    replay_workers,
    resolve_preprocessing,
    threads_per_worker,
)
from pipeline.config import AppConfig, OutboxConfig, model_dir
from pipeline.exam.commands import CommandError, check_exam_id
from pipeline.exam.machine import ExamContext, ExamController
from pipeline.exam.record import RecordError
from pipeline.exam.store import exam_id_taken
from pipeline.exam.verdict import ExamModel
from pipeline.manifest import ModelError
from pipeline.mqtt.outbox import OutboxError
from pipeline.mqtt.publisher import Publisher
from pipeline.output.base import Output, OutputError, OutputOptions, check_output
from pipeline.preprocess import PreprocessConfig, render_on_calling_threads
from pipeline.run.base import ExamSink, FrameConsumer, ResultSink
from pipeline.run.exam import MAX_PREFIX, PATIENT_SEP, ExamPlan, ExamTracker
from pipeline.run.inbox import CommandInbox
from pipeline.run.live import LiveView
from pipeline.run.options import (
    CaptureOptions,
    ClassifyOptions,
    PublishOptions,
    QueueOptions,
    StageOptions,
)
from pipeline.run.pipeline import Pipeline
from pipeline.run.session import Session, VerdictPolicy
from pipeline.run.stages import OutputFactory
from pipeline.run.stats import Delivery, RunSummary
from pipeline.uri import redact

log = logging.getLogger(__name__)


class RunError(Exception):
    """A run that cannot start (bad config, model, source or output); one line with the fix."""


# --- config -> options -----------------------------------------------------------------------


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
        frame_limit=FrameLimit(c.max_frame_width, c.max_frame_height),
        decode_workers=c.decode_workers,
    )


def outbox_for(cfg: AppConfig, live: bool) -> OutboxConfig | None:
    """Replay never drops: a full outbox blocks capture. Live takes the configured policy."""
    if not cfg.outbox.enabled:
        return None
    if live:
        return cfg.outbox
    return cfg.outbox.model_copy(update={"when_full": "block"})


def stage_options(
    cfg: AppConfig,
    live: bool,
    workers: int,
    preprocess: PreprocessConfig,
    max_frames: int | None = None,
) -> StageOptions:
    """Each stage's part of the config. The configured queue bounds are shared out between
    the replay workers; a live source may wait for frames as long as it likes."""
    q = cfg.queues
    return StageOptions(
        queues=QueueOptions(
            live=live,
            workers=workers,
            frames_per_worker=max(2, q.replay_frames // workers),
            results_per_worker=max(2, q.results // workers),
            output=q.output,
        ),
        capture=CaptureOptions(
            read_timeout_s=cfg.capture.read_timeout_s,
            stall_s=0.0 if live else cfg.capture.replay_stall_s,
            max_frames=max_frames,
        ),
        classify=ClassifyOptions(preprocess=preprocess),
        publish=PublishOptions(
            device_id=cfg.device_id,
            camera_id=cfg.camera_id,
            state_interval_s=cfg.session.state_interval_s,
            stats_interval_s=cfg.mqtt.stats_interval_s,
        ),
    )


def new_session(cfg: AppConfig, classifier: Classifier, source_uri: str, live: bool) -> Session:
    """A session with the verdict policy of the config and the model's manifest (ValueError
    when they disagree, e.g. an operating threshold without a positive label)."""
    manifest = classifier.model.manifest
    policy = VerdictPolicy.build(
        labels=classifier.labels,
        window_frames=cfg.session.window_frames,
        method=cfg.session.method,
        configured_threshold=cfg.session.threshold,
        manifest_threshold=manifest.threshold,
        positive_label=manifest.positive_label,
        use_manifest_threshold=cfg.session.use_manifest_threshold,
    )
    return Session(
        mode="live" if live else "replay",
        camera_id=cfg.camera_id,
        device_id=cfg.device_id,
        source=source_uri,
        policy=policy,
        model=model_info(classifier),
    )


def output_factory(cfg: AppConfig, preprocess: PreprocessConfig) -> OutputFactory | None:
    """Opens the output at the first frame's size; the URI is checked now (OutputError)."""
    if cfg.output is None:
        return None
    uri, fps = cfg.output, cfg.capture.fps
    check_output(uri, fps)  # unknown scheme, file type, missing host:port -> before any frame
    options = OutputOptions(window_c=preprocess.window_c, jetson=cfg.capture.jetson)

    def factory(width: int, height: int) -> Output:
        from pipeline.output.gst import open_output  # optional: gi

        return open_output(uri, width, height, fps, options)

    return factory


def make_publisher(cfg: AppConfig, live: bool) -> ResultSink:
    """The MQTT publisher with its durable outbox; RunError when either cannot be set up."""
    try:
        publisher: ResultSink = Publisher(cfg.mqtt, cfg.device_id, outbox_for(cfg, live))
    except (ValueError, OutboxError) as exc:
        raise RunError(str(exc)) from exc
    return publisher


SYNTHETIC_REFUSED = (
    "{root}: model '{name}' is SYNTHETIC (trained on generated thermograms: a pipeline demo, not "
    "a medical model) and {uri} is a live camera; use a model trained on real thermograms "
    "(`make model-dmr` builds models/dmr), or pass --allow-synthetic-model "
    "(model.allow_synthetic: true) to run the demo on a camera anyway"
)


def check_synthetic(cfg: AppConfig, classifier: Classifier, source: Source, live: bool) -> None:
    """A synthetic demo model never silently serves a live camera (DESIGN.md, "The screening
    exam"): RunError unless allowed. The synthetic `test://` stream is not a camera."""
    manifest = classifier.model.manifest
    if not manifest.synthetic:
        return
    camera = live and not source.uri.startswith("test://")
    if camera and not cfg.model.allow_synthetic:
        raise RunError(
            SYNTHETIC_REFUSED.format(
                root=classifier.model.root, name=manifest.name, uri=redact(source.uri)
            )
        )
    log.warning(
        "SYNTHETIC MODEL %s: trained on generated thermograms, a pipeline demo and not a "
        "medical model; every result, exam and overlay says so",
        manifest.name,
    )


def check_plan(cfg: AppConfig, plan: ExamPlan | None) -> None:
    """`--exam ID`: a valid accession code (or per-patient prefix) that no exam used before."""
    if plan is None or plan.exam_id is None:
        return
    try:
        exam_id = check_exam_id(plan.exam_id, "--exam")
    except CommandError as exc:
        raise RunError(str(exc)) from exc
    if len(exam_id) > MAX_PREFIX:
        raise RunError(
            f"--exam {exam_id}: at most {MAX_PREFIX} characters (a folder replay appends "
            f"{PATIENT_SEP}<patient> per patient)"
        )
    root = cfg.exam.exams_dir
    if (root / exam_id).exists() or any(root.glob(f"{exam_id}{PATIENT_SEP}*")):
        raise RunError(
            f"--exam {exam_id}: already used in {root}; every exam needs a new accession code"
        )


def make_exam_tracker(
    cfg: AppConfig,
    parts: _Parts,
    sink: ResultSink,
    inbox: CommandInbox,
    plan: ExamPlan | None,
) -> ExamTracker | None:
    """The exam tracker of this camera; None (exams off, logged) when the publisher cannot carry
    exams or the model has no positive class to hold against a threshold."""
    if not isinstance(sink, ExamSink):
        log.info("exams off: the result sink does not publish exam messages")
        return None
    try:
        model = ExamModel.from_manifest(parts.classifier.model.manifest, cfg.session.threshold)
    except ValueError as exc:
        if plan is not None:
            raise RunError(f"--exam: {exc}") from exc
        log.warning("exams off for this model: %s", exc)
        return None
    context = ExamContext(
        device_id=cfg.device_id,
        camera_id=cfg.camera_id,
        source=redact(parts.source.uri),
        profile=cfg.capture.profile,
    )
    exams_dir = cfg.exam.exams_dir
    controller = ExamController(cfg.exam, model, context, id_taken=exam_id_taken(exams_dir))
    tracker = ExamTracker(controller, sink, exams_dir, inbox, plan)
    tracker.attach(cfg.exam.ambient_topic)
    recovered = tracker.recover()
    if recovered:
        log.warning("%d exam(s) left open by an earlier run were marked aborted", recovered)
    return tracker


# --- opening the parts and running ------------------------------------------------------------


@dataclass(frozen=True)
class _Parts:
    source: Source  # built, not yet opened
    classifier: Classifier
    live: bool
    workers: int


def _build_parts(cfg: AppConfig) -> _Parts:
    """The source (not open yet: live or replay decides how frames are classified) and the
    checked model on the chosen backend."""
    assert cfg.source is not None
    try:
        source = open_source(cfg.source, source_options(cfg))
        live = source.is_live if cfg.mode == "auto" else cfg.mode == "live"
        backend = choose_backend(cfg.model.backend)
        workers = replay_workers(cfg.model.replay_workers, backend, live)
        chosen = model_dir(cfg.model)
        if chosen != cfg.model.dir:
            log.warning(
                "%s has no model.json (`make model-dmr` builds it): using %s",
                cfg.model.dir, chosen,
            )  # fmt: skip
        classifier = load_classifier(
            chosen,
            backend=backend,
            threshold=cfg.model.threshold,
            top_k=cfg.model.top_k,
            intra_op_threads=threads_per_worker(workers, cfg.model.intra_op_threads),
        )
    except (ModelError, SourceError, ValueError) as exc:
        raise RunError(str(exc)) from exc
    return _Parts(source, classifier, live, workers)


def run(
    cfg: AppConfig,
    stop: threading.Event | None = None,
    max_frames: int | None = None,
    publisher: ResultSink | None = None,
    consumers: Sequence[FrameConsumer] = (),
    commands: CommandInbox | None = None,
    exam_plan: ExamPlan | None = None,
    live: LiveView | None = None,
) -> RunSummary:
    """Check the model, open the source, run one session and flush the publisher.

    Raises RunError (one line) when the run cannot start. `stop` ends it early (signals).
    `consumers` see every published result in the publish thread; `commands` run there too, as
    do the screening exam's commands (MQTT `exam/set`); `exam_plan` starts an exam at once.
    `live` (the operator console's window onto the run) sees every frame and the exam state.
    """
    if cfg.source is None:
        raise RunError("no source: give SOURCE on the command line or `source:` in the config")
    check_plan(cfg, exam_plan)
    render_on_calling_threads()
    parts = _build_parts(cfg)
    inbox = commands if commands is not None else CommandInbox()
    with ExitStack() as cleanup:
        cleanup.callback(parts.classifier.close)
        preprocess, outputs = _preprocess_and_output(cfg, parts)
        check_synthetic(cfg, parts.classifier, parts.source, parts.live)
        sink = publisher or make_publisher(cfg, parts.live)
        session, tracker = _session_and_exams(cfg, parts, sink, inbox, exam_plan)
        try:
            parts.source.open()
        except SourceError as exc:
            sink.stop(0.0)
            raise RunError(str(exc)) from exc
        cleanup.callback(parts.source.close)
        _log_start(parts, preprocess)
        options = stage_options(cfg, parts.live, parts.workers, preprocess, max_frames)
        consumers = (*consumers, live) if live is not None else consumers
        pipeline = Pipeline(
            options,
            parts.source,
            parts.classifier,
            session,
            sink,
            outputs,
            consumers,
            inbox,
            stop,
            tracker,
        )
        if live is not None:
            _bind_live(live, pipeline, tracker)
            # the same colours as the annotated output: the palette over the rendering window
            live.options = OutputOptions(window_c=preprocess.window_c, jetson=cfg.capture.jetson)
        summary = _run_session(pipeline, sink, cfg.flush_timeout_s)
        summary.synthetic_model = parts.classifier.model.manifest.synthetic
        summary.exams = None if tracker is None else dataclasses.asdict(tracker.counters)
        return summary


def _preprocess_and_output(
    cfg: AppConfig, parts: _Parts
) -> tuple[PreprocessConfig, OutputFactory | None]:
    try:
        preprocess = resolve_preprocessing(
            parts.classifier.model, cfg.preprocess, cfg.model.follow_manifest
        )
        return preprocess, output_factory(cfg, preprocess)
    except (ModelError, OutputError) as exc:
        raise RunError(str(exc)) from exc


def _session_and_exams(
    cfg: AppConfig,
    parts: _Parts,
    sink: ResultSink,
    inbox: CommandInbox,
    plan: ExamPlan | None,
) -> tuple[Session, ExamTracker | None]:
    """The session and the exam tracker; the publisher is stopped when either cannot start."""
    try:
        session = new_session(cfg, parts.classifier, redact(parts.source.uri), parts.live)
        return session, make_exam_tracker(cfg, parts, sink, inbox, plan)
    except ValueError as exc:  # e.g. an operating threshold without a positive label
        sink.stop(0.0)
        raise RunError(f"{parts.classifier.model.root}: {exc}") from exc
    except (RunError, RecordError, OSError) as exc:
        sink.stop(0.0)
        if isinstance(exc, RunError):
            raise
        raise RunError(f"exam records in {cfg.exam.exams_dir}: {exc}") from exc


def _bind_live(live: LiveView, pipeline: Pipeline, tracker: ExamTracker | None) -> None:
    """The console's window: health numbers, exam commands and the exam state as it changes."""
    live.bind(tracker, lambda: health_numbers(pipeline, tracker))
    if tracker is not None:
        tracker.on_state = live.on_exam_state
        live.on_exam_state(dict(tracker.controller.state_payload()))


def health_numbers(pipeline: Pipeline, tracker: ExamTracker | None) -> dict[str, Any]:
    """What /healthz and /metrics read about a running pipeline (any thread; plain reads)."""
    counters, control = pipeline.counters, pipeline.control
    source = pipeline.source.stats
    outbox = pipeline.publisher.stats()
    return {
        "capture": {
            "frames": counters.captured,
            "dropped": int(source.dropped) + counters.handoff_dropped,
            "rebuilds": source.rebuilds,
            "errors": source.errors,
        },
        "classify": {
            "frames": counters.classified,
            "latency_ms": counters.latency().as_dict(),
        },
        "results": {"published": counters.published, "output_dropped": counters.output_dropped},
        "mqtt": dataclasses.asdict(outbox),
        "failed": control.failed.is_set(),
        "error": control.error,
        "exam": None if tracker is None else dataclasses.asdict(tracker.counters),
    }


def _log_start(parts: _Parts, preprocess: PreprocessConfig) -> None:
    log.info(
        "%s %s -> model %s (%s, %d at once), preprocessing %s",
        "live" if parts.live else "replay",
        parts.source.uri,
        parts.classifier.model.manifest.name,
        parts.classifier.backend,
        parts.workers,
        preprocess.model_dump(),
    )


def _run_session(pipeline: Pipeline, sink: ResultSink, flush_timeout_s: float) -> RunSummary:
    sink.start()
    summary = pipeline.run()
    summary.flushed = sink.stop(flush_timeout_s)
    stats = sink.stats()
    summary.outbox_pending = stats.pending
    summary.broker_error = stats.last_error
    summary.delivery = Delivery.of(stats, summary.session_id)
    return summary
