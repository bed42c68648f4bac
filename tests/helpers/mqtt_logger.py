"""Test helpers for the logger: schema-valid result payloads, a paho publisher that waits for the
broker's acknowledgements, and `thermoscreen log` run as a real subprocess (so it can be killed)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from pipeline.mqtt.payload import encode, result_payload
from pipeline.types import FrameResult, ModelInfo, Prediction, ThermalStats, TopK
from tests.helpers.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
MODEL = ModelInfo(name="tiny", version="1", sha256="0" * 64, backend="onnxruntime")


def make_payload(
    seq: int,
    session: str = "sess-1",
    device: str = "edge-01",
    camera: str = "cam0",
    label: str = "healthy",
    score: float = 0.75,
) -> dict[str, Any]:
    """A schema-valid result, built by the same code the pipeline publishes with."""
    index = 0 if label == "healthy" else 1
    pred = Prediction(
        label=label,
        index=index,
        score=score,
        scores=(score, 1 - score) if index == 0 else (1 - score, score),
        top_k=(TopK(index, label, score),),
        inference_ms=1.5,
    )
    result = FrameResult(
        session_id=session,
        mode="replay",
        camera_id=camera,
        seq=seq,
        frame_index=seq,
        capture_ts=1_790_000_000.0 + seq * 0.1,
        source="file://rec.mp4",
        prediction=pred,
        thermal=ThermalStats(28.0, 35.5, 31.2),
        capture_to_result_ms=12.0,
    )
    return result_payload(result, device, MODEL)


def result_topic(payload: dict[str, Any], prefix: str = "thermoscreen") -> str:
    return f"{prefix}/{payload['device_id']}/{payload['camera_id']}/result"


@dataclass
class Publisher:
    """A paho MQTT v5 client that counts the broker's PUBACKs."""

    host: str
    port: int
    client_id: str = "test-publisher"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    acked: dict[int, str] = field(default_factory=dict)  # mid -> PUBACK reason
    connect_rc: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if self.username:
            self.client.username_pw_set(self.username, self.password)
        if self.ca_file:
            self.client.tls_set(ca_certs=str(self.ca_file))
        self.client.on_publish = self._on_publish
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connect_rc.append(str(rc))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._lock:
            self.acked[mid] = str(rc)

    def __enter__(self) -> Publisher:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        wait_until(lambda: bool(self.connect_rc), 10, "publisher CONNACK")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, data: bytes | str, qos: int = 1, retain: bool = False) -> int:
        info = self.client.publish(topic, data, qos=qos, retain=retain)
        return int(info.mid)

    def publish_results(self, payloads: Iterable[dict[str, Any]]) -> list[int]:
        return [self.publish(result_topic(p), encode(p)) for p in payloads]

    def wait_acked(self, mids: Sequence[int], timeout_s: float = 20.0) -> None:
        def done() -> bool:
            with self._lock:
                return set(mids) <= self.acked.keys()

        wait_until(done, timeout_s, f"PUBACK for {len(mids)} messages")


class LoggerProcess:
    """`thermoscreen log` as a subprocess with its log in a file."""

    def __init__(self, workdir: Path, args: Sequence[str], env: dict[str, str] | None = None):
        self.workdir = workdir
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.log_path = workdir / f"logger-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LoggerProcess:
        self.log_path = self.workdir / f"logger-{time.monotonic_ns()}.log"
        out = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "pipeline.cli", "log", "--stats-interval", "2", *self.args]
        self.proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=self.env
        )
        return self

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_subscribed(self, times: int = 1, timeout_s: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"logger exited early:\n{self.text()}")
            return self.text().count("logger: subscribed") >= times

        wait_until(ready, timeout_s, "logger subscription")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def wait(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)


def count_rows(db: Path, table: str, where: str = "") -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table} {where}").fetchone()[0])


def stored_ids(db: Path) -> set[str]:
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT message_id FROM results")}


def stored_seqs(db: Path, session: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT seq FROM results WHERE session = ? ORDER BY seq", (session,))
        return [int(r[0]) for r in rows]


def make_png16_recording(folder: Path, frames: int) -> Path:
    """A small synthetic 16-bit PNG recording made by `thermoscreen synth` (not medical data)."""
    cmd = [sys.executable, "-m", "pipeline.cli", "synth", "--out", str(folder), "--kind", "png16"]
    cmd += ["--frames", str(frames), "--size", "96x128", "--patients", "2", "--seed", "3"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=120)
    assert len(list(folder.glob("*.png"))) == frames
    return folder


def run_pipeline(
    recording: Path | str,
    model: Path,
    broker_port: int,
    outbox: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """`thermoscreen run` on a recording as a subprocess (so tests can SIGKILL it)."""
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(recording), "--model", str(model)]
    cmd += ["--broker", f"127.0.0.1:{broker_port}", "--outbox", str(outbox), *extra]
    out = (log_path or outbox.with_suffix(".log")).open("ab")
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=full_env)
