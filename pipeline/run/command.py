"""`thermoscreen run`: capture -> preprocess + classify -> session + publish -> optional output.

The model (sha256, labels, graph) and its preprocessing are checked before the first frame.
SIGINT/SIGTERM stop capture; a replay still classifies and publishes what was captured, then the
session summary and the `stopped` status go out and the outbox is flushed (bounded). Results
not yet delivered (acknowledged by the broker, or confirmed by a logger: `outbox.confirm`) stay
in the durable outbox and go out on the next start.

Exit codes: 0 done; 2 bad input (config, model, source, output: one line on stderr); 1 failure
while running; 3 finished but results still wait in the outbox (broker unreachable, or no
logger confirmation yet); 4 results lost: dropped at a full outbox, refused by the broker, or
never confirmed within outbox.retention_s (each counted and named in the summary).

Screening support only: thermography is an adjunct to mammography, never a diagnosis.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import DISCLAIMER
from pipeline.config import AppConfig, ConfigError, load_config
from pipeline.console.config import ConsoleError
from pipeline.exam.commands import VIEWS
from pipeline.mqtt.client import add_broker_arguments, broker_overrides
from pipeline.mqtt.delivery import format_ranges
from pipeline.run.exam import ExamPlan
from pipeline.run.live import LiveView
from pipeline.run.malloc import tune_malloc
from pipeline.run.stats import EXIT_BAD_INPUT, RunSummary
from pipeline.run.wiring import RunError, run
from pipeline.signals import stop_on_signals

if TYPE_CHECKING:
    from pipeline.console.server import Console

DEFAULT_CONFIG = Path("config/default.yaml")
EPILOG = (
    "exit codes: 0 done; 1 failed while running; 2 bad input (config, model, source); "
    "3 finished but results still wait in the outbox (they go out on the next start); "
    "4 results lost: dropped at a full outbox, refused by the broker or never confirmed "
    "(counted and named by seq range)"
)


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
    _add_exam_arguments(parser)
    parser.add_argument("--max-frames", type=int, help="stop after N captured frames")
    _add_outbox_arguments(parser)
    parser.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level"
    )
    parser.epilog = EPILOG


def _add_exam_arguments(parser: argparse.ArgumentParser) -> None:
    """The screening exam's flags and the operator console's."""
    parser.add_argument(
        "--console",
        metavar="HOST:PORT",
        help="serve the operator console (live view, exam controls, /healthz, /metrics) on "
        "HOST:PORT, e.g. 127.0.0.1:8080; any address but loopback needs "
        "$THERMOSCREEN_CONSOLE_PASSWORD (config console.listen)",
    )
    parser.add_argument(
        "--exam",
        metavar="ID",
        help="start exam ID (an accession code, never a name) at once, capturing --view; the "
        "record says acclimatization was not observed. A DMR-IR folder replay makes one exam "
        "per patient, ID-T<patient>",
    )
    parser.add_argument(
        "--view", choices=VIEWS, help="the view of --exam (default frontal; alone: a new id)"
    )
    parser.add_argument(
        "--exams-dir", type=Path, help="folder of exam records (config exam.exams_dir)"
    )
    parser.add_argument(
        "--allow-synthetic-model",
        action="store_true",
        default=None,
        help="let a synthetic demo model serve a live camera (it still says SYNTHETIC MODEL "
        "everywhere); refused otherwise",
    )


def _add_outbox_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outbox", type=Path, help="durable outbox file (SQLite)")
    parser.add_argument(
        "--confirm",
        choices=["auto", "broker", "logger"],
        help="a result leaves the outbox at the broker's PUBACK (broker) or when a logger "
        "confirms it stored (logger); auto: broker until a logger has confirmed once",
    )
    parser.add_argument(
        "--flush-timeout", type=float, help="seconds to wait for the outbox to empty at exit"
    )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags -> dotted config overrides (only the flags given)."""
    flat: dict[str, Any] = {
        "source": args.source,
        "output": args.output,
        "model.dir": args.model,
        # a model named on the command line is the one to load: no fallback to another
        "model.fallback_dir": args.model,
        "model.backend": args.backend,
        "device_id": args.device_id,
        "camera_id": args.camera_id,
        "mode": args.mode,
        "capture.realtime": args.realtime,
        "capture.fps": args.fps,
        "model.follow_manifest": args.follow_manifest,
        "model.allow_synthetic": args.allow_synthetic_model,
        "exam.exams_dir": args.exams_dir,
        "outbox.path": args.outbox,
        "outbox.confirm": args.confirm,
        "flush_timeout_s": args.flush_timeout,
        "log_level": args.log_level,
        "console.listen": args.console,
    }
    flat.update(broker_overrides(args))
    return {k: v for k, v in flat.items() if v is not None}


def exam_plan(args: argparse.Namespace) -> ExamPlan | None:
    """`--exam ID` and/or `--view V`: the exam the run starts by itself."""
    if args.exam is None and args.view is None:
        return None
    return ExamPlan(exam_id=args.exam, view=args.view or "frontal")


def check_max_frames(value: int | None) -> None:
    """`--max-frames` counts frames to capture: zero or fewer would be a run that means nothing."""
    if value is not None and value < 1:
        raise ConfigError(
            f"--max-frames {value}: give a number of frames of at least 1, or leave the flag out "
            "to run until the source ends"
        )


def config_path(args: argparse.Namespace) -> Path | None:
    if args.config is not None:
        return Path(args.config)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def print_summary(summary: RunSummary, cfg: AppConfig) -> None:
    lat = summary.latency_ms
    print(
        f"thermoscreen run: {summary.results} results from {summary.frames_captured} frames in "
        f"{summary.wall_s:.1f} s ({summary.fps:.1f} fps); capture->result p50 {lat.p50:.1f} ms, "
        f"p95 {lat.p95:.1f} ms, p99 {lat.p99:.1f} ms"
    )
    verdict = summary.verdict
    said = f"{verdict['label']} (score {verdict['score']:.3f})" if verdict else "none (no frames)"
    print(
        f"session {summary.session_id} ({summary.mode}): ended by {summary.end_reason}; "
        f"rolling verdict {said}; drops {summary.drops.total} {summary.drops.as_dict()}"
    )
    for line in delivery_lines(summary, cfg):
        print(line, file=sys.stderr if line.startswith(_ATTENTION) else sys.stdout)
    if summary.exams is not None and (summary.exams["closed"] or summary.exams["aborted"]):
        print(
            f"exams: {summary.exams['closed']} closed, {summary.exams['aborted']} aborted; "
            f"records and reports in {cfg.exam.exams_dir}"
        )
    if summary.synthetic_model:
        print("SYNTHETIC MODEL: trained on generated thermograms; a demo, not a medical model")
    print(f"Note: {DISCLAIMER}")


_ATTENTION = "outbox:"  # delivery lines a user must act on go to stderr


def delivery_lines(summary: RunSummary, cfg: AppConfig) -> list[str]:
    """Where this run's results are: delivered, waiting in the outbox, or lost (counted and
    named by seq range, with the fix)."""
    d, lines = summary.delivery, []
    if d.dropped:
        lines.append(
            f"outbox: {d.dropped} results dropped at the full outbox (outbox.max_messages "
            f"{cfg.outbox.max_messages}) and never sent: seq {format_ranges(d.dropped_seq)}; "
            "raise outbox.max_messages or restore the broker link sooner"
        )
    if d.refused:
        lines.append(
            f"outbox: {d.refused} messages undeliverable: {d.refusal}; they are kept in the "
            f"`refused` table of {cfg.outbox.path} and not sent again"
        )
    if d.expired:
        lines.append(
            f"outbox: {d.expired} results were never confirmed by a logger within outbox."
            f"retention_s and left the outbox unconfirmed: seq {format_ranges(d.expired_seq)}"
        )
    if summary.outbox_pending:
        unsent = summary.outbox_pending - d.unconfirmed
        why = f": {summary.broker_error}" if summary.broker_error and unsent else ""
        hint = (
            "; is `thermoscreen log` running (and may it publish `stored`)? Without a logger, "
            "set outbox.confirm: broker"
            if d.unconfirmed
            else ""
        )
        lines.append(
            f"outbox: {summary.outbox_pending} messages are still waiting in the outbox "
            f"{cfg.outbox.path}: {unsent} not acknowledged by {cfg.mqtt.host}:{cfg.mqtt.port}"
            f"{why}, {d.unconfirmed} acknowledged but not confirmed stored by a logger{hint}; "
            "they are sent again at the next start with this outbox"
        )
    elif d.confirm == "logger":
        lines.append("delivery: every result confirmed stored by a logger; the outbox is empty")
    else:
        lines.append(
            "delivery: every result acknowledged by the broker; the outbox is empty "
            f"(no logger confirmation: outbox.confirm {cfg.outbox.confirm})"
        )
    return lines


def main(args: argparse.Namespace) -> int:
    tune_malloc()
    try:
        check_max_frames(args.max_frames)
        cfg = load_config(config_path(args), overrides_from_args(args))
    except ConfigError as exc:
        print(f"thermoscreen run: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.getLogger().setLevel(
        cfg.log_level
    )  # the CLI set logging up; the config may name a level
    stop = threading.Event()
    live = LiveView() if cfg.console.listen else None
    try:
        console = None if live is None else start_console(cfg, live)
    except ConsoleError as exc:
        print(f"thermoscreen run: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if console is not None:
        announce(console)
    try:
        with stop_on_signals(stop):
            summary = run(
                cfg,
                stop=stop,
                max_frames=args.max_frames,
                exam_plan=exam_plan(args),
                consumers=() if console is None else console.consumers,
                live=live,
            )
    except RunError as exc:
        print(f"thermoscreen run: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if console is not None:
            console.stop()
    return finish(summary, cfg)


def start_console(cfg: AppConfig, live: LiveView) -> Console | None:
    """The operator console, loaded only when asked for: its web server (aiohttp, Prometheus)
    is a large part of the start-up of a run that has no console."""
    from pipeline.console.server import open_console  # optional: aiohttp

    return open_console(cfg, live)


def announce(console: Console) -> None:
    """The console's address, on stdout before the first frame (scripts may read it)."""
    print(
        f"operator console: {console.url} (exams {console.url}exams, health "
        f"{console.url}healthz, metrics {console.url}metrics)",
        flush=True,
    )


def finish(summary: RunSummary, cfg: AppConfig) -> int:
    """The error line (if any) on stderr, the summary, and the exit code it implies."""
    if summary.error is not None:
        print(f"thermoscreen run: {summary.error}", file=sys.stderr)
    print_summary(summary, cfg)
    return summary.exit_code
