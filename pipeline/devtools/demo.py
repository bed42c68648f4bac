"""`make demo`: replay a generated SYNTHETIC recording through the whole pipeline.

    python -m pipeline.devtools.demo --model models/demo --workdir var/demo

Generates a recording if missing, starts a private mosquitto on a free loopback port and a
logger (`thermoscreen log`, in a thread) that stores each result and confirms it, subscribes and
prints every result as it arrives, runs `thermoscreen run` in replay with `outbox.confirm:
logger`, and ends with a short summary. Exit 0 only when every frame's result arrived and the
logger confirmed storing each one. The operator console is open on loopback all along (its
address is printed first); run from a terminal, the demo then keeps it open on a live synthetic
camera until Ctrl-C, so a person can run an exam from the page and read its report. The demo
model is trained on synthetic data: a pipeline demo, not a medical model. Thermography is an
adjunct to mammography only.

`ResultWatcher` (a small paho subscriber) is also what the integration tests listen with.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from pipeline import DISCLAIMER
from pipeline.cli import setup_logging
from pipeline.config import AppConfig, MqttConfig, load_config
from pipeline.console.config import ConsoleError
from pipeline.console.server import Console, open_console
from pipeline.devtools.broker import LocalBroker
from pipeline.logger.store import open_store
from pipeline.logger.subscriber import Logger, LoggerOptions
from pipeline.mqtt.client import make_client
from pipeline.run.live import LiveView
from pipeline.run.stats import RunSummary
from pipeline.run.wiring import RunError, run
from pipeline.signals import stop_on_signals

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO_CONF = REPO / "config" / "demo-mosquitto.conf"
DEMO_DEVICE = "demo"
NOT_MEDICAL = "demo model trained on synthetic data — not a medical model"
LIVE_REST_S = 30.0  # the live camera's acclimatization minimum (a clinic's is 15 minutes)


@dataclass(frozen=True)
class Message:
    """One received MQTT message: its topic's last level (result, state, status…) and body."""

    kind: str
    topic: str
    body: Any  # parsed JSON, or the text (status)
    retain: bool


class ResultWatcher:
    """Subscribes to `<prefix>/<device>/#` and keeps every message, in arrival order, by kind."""

    def __init__(
        self,
        host: str,
        port: int,
        device_id: str = "+",
        prefix: str = "thermoscreen",
        on_message: Callable[[Message], None] | None = None,
    ) -> None:
        self.topic = f"{prefix}/{device_id}/#"
        self._host, self._port = host, port
        self._on = on_message
        self._cond = threading.Condition()
        self._subscribed = False
        self.messages: dict[str, list[Message]] = defaultdict(list)
        self._client = make_client(
            MqttConfig(host=host, port=port, topic_prefix=prefix),
            f"thermoscreen-watch-{id(self):x}",
        )
        self._client.on_connect = self._connected
        self._client.on_subscribe = self._subscribed_cb
        self._client.on_message = self._message

    def _connected(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _subscribed_cb(self, _c: Any, _u: Any, _mid: int, _rcs: Any, _p: Any) -> None:
        with self._cond:
            self._subscribed = True
            self._cond.notify_all()

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        text = msg.payload.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text)
        except json.JSONDecodeError:
            body = text
        item = Message(msg.topic.rsplit("/", 1)[-1], msg.topic, body, bool(msg.retain))
        with self._cond:
            self.messages[item.kind].append(item)
            self._cond.notify_all()
        if self._on is not None:
            self._on(item)

    def start(self, timeout_s: float = 10.0) -> ResultWatcher:
        """Connect and return once the subscription is acknowledged."""
        self._client.connect(self._host, self._port)
        self._client.loop_start()
        if not self.wait(lambda: self._subscribed, timeout_s):
            self.stop()
            raise TimeoutError(f"no SUBACK from {self._host}:{self._port} in {timeout_s} s")
        return self

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until `predicate()` holds (checked on every message) or the timeout passes."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout_s)

    def bodies(self, kind: str) -> list[Any]:
        with self._cond:
            return [m.body for m in self.messages[kind]]

    def count(self, kind: str) -> int:
        with self._cond:
            return len(self.messages[kind])

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> ResultWatcher:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def demo_broker(workdir: Path) -> LocalBroker:
    """A private mosquitto on a free loopback port (config/demo-mosquitto.conf + listener)."""
    broker = LocalBroker(workdir / "broker")
    broker.config_text = MOSQUITTO_CONF.read_text() + f"listener {broker.port} 127.0.0.1\n"
    return broker


def ensure_recording(workdir: Path, frames: int, fps: float, seed: int) -> Path:
    """The demo recording (SYNTHETIC thermograms as MP4), generated once."""
    out = workdir / "recording"
    path = out / "recording.mp4"
    if path.is_file():
        return path
    cmd = [
        sys.executable, "-m", "pipeline.cli", "synth", "--out", str(out), "--kind", "mp4",
        "--frames", str(frames), "--fps", str(fps), "--seed", str(seed),
        "--patients", str(max(1, frames // 10)),  # each synthetic patient on screen ~10 frames
    ]  # fmt: skip
    print(f"generating a synthetic recording: {' '.join(cmd[2:])}")
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"`thermoscreen synth` failed (exit {done.returncode}); no {path}")
    return path


def synthetic_labels(frames_csv: Path) -> dict[int, str]:
    """frame -> label the generator drew (frames.csv from `thermoscreen synth`); {} if absent."""
    if not frames_csv.is_file():
        return {}
    with frames_csv.open(newline="") as fh:
        return {int(row["frame"]): row["label"] for row in csv.DictReader(fh)}


def result_line(msg: Message) -> str:
    """One compact line per result: seq, frame, label, score, t_max."""
    body = msg.body
    t_max = body.get("thermal", {}).get("t_max_c")
    thermal = f"{t_max:.1f} C" if isinstance(t_max, int | float) else "n/a (8-bit video)"
    res = body["result"]
    return (
        f"  seq {body['seq']:>3}  frame {body['frame_index']:>3}  {res['label']:<8} "
        f"score {res['score']:.3f}  t_max {thermal}  "
        f"latency {body['latency_ms']['capture_to_result']:.0f} ms"
    )


def _printer(msg: Message) -> None:
    if msg.kind == "result" and isinstance(msg.body, dict):
        print(result_line(msg), flush=True)


@contextmanager
def demo_logger(port: int, workdir: Path) -> Iterator[Logger]:
    """`thermoscreen log` in a thread: it stores each result once and confirms it (`stored`),
    so the demo shows delivery confirmed end to end (`outbox.confirm: logger`)."""
    db = workdir / "results.sqlite"
    db.unlink(missing_ok=True)
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    stop = threading.Event()
    cfg = MqttConfig(host="127.0.0.1", port=port)
    made: list[Logger] = []

    def serve() -> None:  # SQLite wants the thread that opened the store to use it
        made.append(Logger(cfg, LoggerOptions(db=str(db), client_id="demo-logger"),
                           open_store(db), stop))  # fmt: skip
        made[0].run()

    thread = threading.Thread(target=serve, name="demo-logger", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10.0
    while not (made and made[0].subscribed) and time.monotonic() < deadline:
        if not thread.is_alive():
            break
        time.sleep(0.05)
    if not (made and made[0].subscribed):
        stop.set()
        raise RuntimeError(f"the demo logger did not subscribe on 127.0.0.1:{port}")
    logger = made[0]
    try:
        yield logger
    finally:
        stop.set()
        thread.join(10.0)


@dataclass(frozen=True)
class DemoOptions:
    """What `make demo` does: the replay (always checked), then optionally a live camera."""

    model: Path
    workdir: Path
    frames: int = 60
    fps: float = 10.0
    seed: int = 7
    console: str = "127.0.0.1:0"  # the operator console's HOST:PORT (loopback)
    live_s: float | None = 0.0  # after the replay, a live camera for this long; None: Ctrl-C


def replay_config(opts: DemoOptions, recording: Path, port: int) -> AppConfig:
    return load_config(
        REPO / "config" / "replay.yaml",
        {
            "device_id": DEMO_DEVICE,
            "source": f"file://{recording.resolve()}",
            "model.dir": str(opts.model),
            "mqtt.host": "127.0.0.1",
            "mqtt.port": port,
            "outbox.path": str(opts.workdir / "outbox.sqlite"),
            "outbox.confirm": "logger",
            "exam.exams_dir": str(opts.workdir / "exams"),
            "console.listen": opts.console,
            "log_level": "WARNING",
        },
    )


def start_console(cfg: AppConfig) -> tuple[Console, LiveView]:
    """The operator console of this run, listening, with its address printed."""
    live = LiveView()
    console = open_console(cfg, live)
    assert console is not None  # the demo always sets console.listen
    print(f"operator console: {console.url} (open it in a browser)", flush=True)
    return console, live


def run_demo(opts: DemoOptions) -> int:
    opts.workdir.mkdir(parents=True, exist_ok=True)
    recording = ensure_recording(opts.workdir, opts.frames, opts.fps, opts.seed)
    started = time.monotonic()
    with demo_broker(opts.workdir) as broker, demo_logger(broker.port, opts.workdir) as logger:
        port = broker.port
        cfg = replay_config(opts, recording, port)
        setup_logging(cfg.log_level)
        print(f"mosquitto on 127.0.0.1:{port}; replaying {recording} with model {opts.model}")
        print(f"a logger stores every result in {opts.workdir / 'results.sqlite'} and confirms it")
        console, live = start_console(cfg)
        with ResultWatcher("127.0.0.1", port, DEMO_DEVICE, on_message=_printer) as watcher:
            try:
                summary = run(cfg, consumers=console.consumers, live=live)
            except RunError as exc:
                print(f"demo: {exc}", file=sys.stderr)
                return 2
            finally:
                console.stop()
            watcher.wait(lambda: watcher.count("session") >= 1, 10.0)
            results = watcher.bodies("result")
        stored = logger.counters.stored
        wall = time.monotonic() - started
        seqs = [r["seq"] for r in results if r["session_id"] == summary.session_id]
        complete = seqs == list(range(summary.frames_captured)) and summary.results == len(seqs)
        _print_summary(summary, seqs, complete, results, recording, stored, wall)
        if opts.live_s is None or opts.live_s > 0:
            live_camera(opts, port, console.port or 0)
    delivered = summary.outbox_pending == 0 and stored == summary.results
    return 0 if complete and delivered else 1


def live_config(opts: DemoOptions, broker_port: int, console_port: int) -> AppConfig:
    """A live SYNTHETIC camera whose patient settles in about a minute; the seed's 15-minute
    rest is shortened to LIVE_REST_S so that a whole exam fits in a demo."""
    return load_config(
        None,
        {
            "device_id": DEMO_DEVICE,
            "camera_id": "live",
            "source": "test://?settle_s=60&fps=9",
            "model.dir": str(opts.model),
            "mqtt.port": broker_port,
            "outbox.path": str(opts.workdir / "outbox-live.sqlite"),
            "exam.exams_dir": str(opts.workdir / "exams"),
            "exam.acclimatization.min_s": LIVE_REST_S,
            "exam.acclimatization.drift_window_s": 20,
            "exam.acclimatization.drift_limit_c_per_min": 0.2,
            "console.listen": f"127.0.0.1:{console_port}",
            "log_level": "WARNING",
        },
        env={},
    )


def live_camera(opts: DemoOptions, broker_port: int, console_port: int) -> None:
    """The console on a live synthetic camera, for a person to run an exam from the page."""
    cfg = live_config(opts, broker_port, console_port)
    console, live = start_console(cfg)
    how_long = "Ctrl-C ends the demo" if opts.live_s is None else f"for {opts.live_s:g} s"
    print(
        f"The console now shows a live SYNTHETIC camera ({how_long}): run an exam from the "
        f"page; it says what to do next (the rest is shortened to {LIVE_REST_S:g} s here). "
        f"Past exams and their reports: {console.url}exams",
        flush=True,
    )
    stop = threading.Event()
    timer = None if opts.live_s is None else threading.Timer(opts.live_s, stop.set)
    try:
        if timer is not None:
            timer.start()
        main = threading.current_thread() is threading.main_thread()  # signals reach it only
        with stop_on_signals(stop, "ending the demo") if main else contextlib.nullcontext():
            run(cfg, stop, consumers=console.consumers, live=live)
    except RunError as exc:
        print(f"demo: live camera: {exc}", file=sys.stderr)
    finally:
        if timer is not None:
            timer.cancel()
        console.stop()
    print(f"exam records and reports: {cfg.exam.exams_dir}")


def _print_summary(
    summary: RunSummary,
    seqs: list[int],
    complete: bool,
    results: list[Any],
    recording: Path,
    stored: int,
    wall: float,
) -> None:
    verdict = summary.verdict
    lat = summary.latency_ms
    print()
    print(f"frames replayed     {summary.frames_captured}")
    print(f"results received    {len(seqs)} (seq 0..{len(seqs) - 1}, none missing: {complete})")
    if verdict:
        print(f"rolling verdict     {verdict['label']} (score {verdict['score']:.3f})")
    print(f"pipeline rate       {summary.fps:.1f} fps; capture->result p50 {lat.p50:.1f} ms, "
          f"p95 {lat.p95:.1f} ms")  # fmt: skip
    truth = synthetic_labels(recording.parent / "frames.csv")
    if truth:
        agree = sum(1 for r in results if truth.get(r["frame_index"]) == r["result"]["label"])
        print(f"generator's labels  {agree}/{len(results)} frames agree (synthetic truth)")
    pending = summary.outbox_pending
    print(f"stored by logger    {stored} (each confirmed back to the pipeline)")
    print(f"outbox              {'empty' if pending == 0 else f'{pending} messages waiting'}")
    print(f"demo wall time      {wall:.1f} s")
    print()
    print(f"Note: {NOT_MEDICAL}.")
    print(DISCLAIMER)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.devtools.demo",
        description=f"Replay a synthetic recording through the pipeline.\n\n{DISCLAIMER}",
    )
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--workdir", type=Path, required=True, help="where the demo writes")
    parser.add_argument("--frames", type=int, default=60, help="frames in the recording")
    parser.add_argument("--fps", type=float, default=10.0, help="recording frame rate")
    parser.add_argument("--seed", type=int, default=7, help="synthetic recording seed")
    parser.add_argument(
        "--console",
        metavar="HOST:PORT",
        default="127.0.0.1:0",
        help="the operator console's address (default: a free loopback port)",
    )
    parser.add_argument(
        "--live-seconds",
        type=float,
        default=None,
        help="after the replay, keep the console on a live synthetic camera this long "
        "(default: until Ctrl-C when run from a terminal, else not at all)",
    )
    args = parser.parse_args(argv)
    live_s = args.live_seconds
    if live_s is None and not sys.stdin.isatty():
        live_s = 0.0
    opts = DemoOptions(
        args.model, args.workdir, args.frames, args.fps, args.seed, args.console, live_s
    )
    try:
        return run_demo(opts)
    except (RuntimeError, TimeoutError, ValueError, ConsoleError) as exc:  # ConfigError too
        print(f"demo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
