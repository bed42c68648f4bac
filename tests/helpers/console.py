"""A real `run` with the operator console, for the HTTP and browser tests: a live `test://`
source, a real (tiny) ONNX model, a real mosquitto, the console on a free loopback port, and an
MQTT watcher on the device's topics. Nothing is faked."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import AppConfig, load_config
from pipeline.console.server import Console, open_console
from pipeline.devtools.bench.console import read_part
from pipeline.devtools.demo import ResultWatcher
from pipeline.run.live import LiveView
from pipeline.run.stats import RunSummary
from pipeline.run.wiring import run
from tests.helpers.wait import wait_until

DEVICE = "edge-console"


def console_config(broker_port: int, model: Path, tmp_path: Path, **more: Any) -> AppConfig:
    """A live synthetic patient at 10 frames/s whose skin settles in ~12 s, and a compressed
    acclimatization (3 s minimum, drift over 10 s under 0.3 C/min)."""
    return load_config(
        None,
        {
            "device_id": DEVICE,
            "source": "test://?settle_s=12&fps=10&width=160&height=120",
            "model.dir": str(model),
            "mqtt.port": broker_port,
            "mqtt.reconnect_max_s": 1.0,
            "outbox.path": str(tmp_path / "outbox.sqlite"),
            "exam.exams_dir": str(tmp_path / "exams"),
            "exam.acclimatization.min_s": 3.0,
            "exam.acclimatization.drift_window_s": 10,
            "exam.acclimatization.drift_limit_c_per_min": 0.3,
            "console.listen": "127.0.0.1:0",
            "flush_timeout_s": 5,
            **more,
        },
        env={},
    )


@dataclass
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class ConsoleRun:
    """`run` in a thread with its console; `get`/`post` talk to the console."""

    cfg: AppConfig
    console: Console
    live: LiveView
    watcher: ResultWatcher
    stop: threading.Event = field(default_factory=threading.Event)
    summary: list[RunSummary] = field(default_factory=list)
    thread: threading.Thread | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return self.console.url

    def start(self) -> ConsoleRun:
        consumers = self.console.consumers

        def body() -> None:
            self.summary.append(run(self.cfg, self.stop, consumers=consumers, live=self.live))

        self.thread = threading.Thread(target=body, name="test-run")
        self.thread.start()
        wait_until(lambda: self.live.latest() is not None, 60, "the first classified frame")
        return self

    def finish(self) -> RunSummary:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)
        self.console.stop()
        assert self.summary, "the run did not end"
        return self.summary[0]

    def request(
        self,
        path: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        password: str | None = None,
    ) -> HttpAnswer:
        """One request; HTTP errors come back as answers, never as exceptions."""
        sent = dict(headers or {})
        secret = self.password if password is None else password
        if secret:
            token = base64.b64encode(f"operator:{secret}".encode()).decode()
            sent.setdefault("Authorization", f"Basic {token}")
        req = urllib.request.Request(self.url + path.lstrip("/"), body, sent, method=method)
        try:
            with urllib.request.urlopen(req, timeout=15) as answer:
                return HttpAnswer(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as err:
            return HttpAnswer(err.code, dict(err.headers), err.read())

    def get(self, path: str, **kw: Any) -> HttpAnswer:
        return self.request(path, **kw)

    def csrf_token(self) -> str:
        return self.console.guard.csrf_token

    def command(self, headers: Mapping[str, str] | None = None, **command: Any) -> HttpAnswer:
        """POST /api/exam as the page does (JSON, the CSRF token), unless `headers` say else."""
        sent = {"Content-Type": "application/json", "X-CSRF-Token": self.csrf_token()}
        if headers is not None:
            sent = dict(headers)
        return self.request("/api/exam", "POST", json.dumps(command).encode(), sent)

    def exam_states(self) -> list[dict[str, Any]]:
        return [b for b in self.watcher.bodies("exam") if isinstance(b, dict)]

    def wait_exam(self, test: Callable[[dict[str, Any]], bool], timeout_s: float) -> bool:
        return self.watcher.wait(lambda: any(test(s) for s in self.exam_states()), timeout_s)


def mjpeg_frames(url: str, count: int, timeout_s: float = 30.0) -> list[tuple[int, bytes]]:
    """Read `count` parts of the console's MJPEG stream: (the result's seq, the JPEG bytes)."""
    parts: list[tuple[int, bytes]] = []
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request("GET", "/stream.mjpg")
        answer = conn.getresponse()
        assert answer.status == 200, answer.status
        assert answer.getheader("Content-Type", "").startswith("multipart/x-mixed-replace")
        while len(parts) < count:
            part = read_part(answer)
            assert part is not None, "the stream ended"
            parts.append(part)
    finally:
        conn.close()
    return parts


@contextmanager
def console_run(
    broker_port: int,
    model: Path,
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
    **more: Any,
) -> Iterator[ConsoleRun]:
    """A started ConsoleRun (first frame classified), finished on the way out."""
    cfg = console_config(broker_port, model, tmp_path, **more)
    env = {} if env is None else env
    live = LiveView()
    console = open_console(cfg, live, env)
    assert console is not None
    with ResultWatcher("127.0.0.1", broker_port, DEVICE) as watcher:
        running = ConsoleRun(cfg, console, live, watcher)
        running.password = env.get("THERMOSCREEN_CONSOLE_PASSWORD")
        try:
            yield running.start()
        finally:
            if running.thread is not None and running.thread.is_alive():
                running.finish()
            console.stop()
