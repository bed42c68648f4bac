"""The fault campaign: real mosquitto, `thermoscreen run` and `thermoscreen log` processes on
loopback, each case breaking one thing and counting what the logger ends up with.

Each case returns a `CaseResult`: results sent (classified by the pipeline), stored (distinct
seqs in the logger's database or databases), doubled (seqs stored more than once), duplicates
the logger dropped (re-deliveries, harmless), gaps (sent, never stored). Every case runs the
pipeline with `--confirm logger`, the setting for a deployment with a logger. `make chaos` runs
them all (`python -m tests.chaos`); `tests/integration/test_chaos.py` runs the fast ones.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO, Broker, free_port
from tests.helpers.mqtt_logger import (
    LoggerProcess,
    Publisher,
    count_rows,
    make_payload,
    make_png16_recording,
    result_topic,
    run_pipeline,
    wait_until,
)
from tests.helpers.tiny_model import make_tiny_model_dir

SHIPPED = REPO / "config" / "mosquitto"
CONFIRM = ("--confirm", "logger")
ACCOUNTS = {"edge-01": "chaos-dev1", "edge-02": "chaos-dev2", "logger": "chaos-log"}


@dataclass
class CaseResult:
    name: str
    sent: int = 0
    stored: int = 0
    doubled: int = 0
    duplicates: int = 0  # re-deliveries the logger recognised and dropped
    gaps: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.gaps == 0 and self.doubled == 0 and self.stored == self.sent > 0


@dataclass
class Rig:
    """One case's folder, model and recording, and the processes it starts."""

    root: Path
    model: Path
    recording: Path
    frames: int
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def broker(self, config_text: str | None = None) -> Broker:
        port = free_port()
        workdir = self.root / f"broker-{port}"
        workdir.mkdir()
        b = Broker(port=port, workdir=workdir, config_text=config_text)
        if config_text is not None:
            b.config_text = config_text.replace("@PORT@", str(port))
        b.start()
        return b

    def logger(
        self, broker: Broker, db: Path | None = None, env: dict[str, str] | None = None
    ) -> LoggerProcess:
        args = ["--broker", f"127.0.0.1:{broker.port}", "--db", str(db or self.db)]
        logger = LoggerProcess(self.root, args, env=env).start()
        assert logger.proc is not None
        self.started.append(logger.proc)
        return logger

    @property
    def db(self) -> Path:
        return self.root / "results.sqlite"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox.sqlite"

    def run(self, broker: Broker, *extra: str, env: dict[str, str] | None = None) -> Proc:
        log = self.root / f"run-{time.monotonic_ns()}.log"
        proc = run_pipeline(
            self.recording, self.model, broker.port, self.outbox, *CONFIRM, *extra,
            env=env, log_path=log,
        )  # fmt: skip
        self.started.append(proc)
        return Proc(proc, log)


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout_s: float = 180.0) -> int:
        return self.popen.wait(timeout=timeout_s)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def rig(root: Path, frames: int) -> Iterator[Rig]:
    root.mkdir(parents=True, exist_ok=True)
    model = make_tiny_model_dir(root / "model")
    recording = make_png16_recording(root / "rec", frames)
    r = Rig(root, model, recording, frames)
    try:
        yield r
    finally:  # a case that failed half-way leaves no process behind
        for proc in r.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _seq_counts(dbs: list[Path], session: str | None = None) -> dict[str, dict[int, int]]:
    """session -> seq -> how many rows hold it, over one or more logger databases."""
    out: dict[str, dict[int, int]] = {}
    for db in dbs:
        if not db.exists():
            continue
        with sqlite3.connect(db) as conn:
            for s, seq, n in conn.execute(
                "SELECT session, seq, COUNT(*) FROM results GROUP BY session, seq"
            ):
                if session is None or s == session:
                    out.setdefault(s, {})[seq] = out.get(s, {}).get(seq, 0) + n
    return out


def _duplicates(dbs: list[Path]) -> int:
    total = 0
    for db in dbs:
        if db.exists():
            with sqlite3.connect(db) as conn:
                total += conn.execute("SELECT COALESCE(SUM(count), 0) FROM duplicates").fetchone()[
                    0
                ]
    return int(total)


def _tally(result: CaseResult, dbs: list[Path], sent: int) -> CaseResult:
    """Fill stored/doubled/gaps for the case's replay (the session with the most results).
    Doubled counts a seq held twice within one database; a result in two databases (the old
    one saved by the logger and the fresh one) is a re-delivery, noted apart."""
    per_db = [_seq_counts([db]) for db in dbs]
    merged = _seq_counts(dbs)
    session = max(merged, key=lambda s: len(merged[s])) if merged else ""
    seqs = merged.get(session, {})
    result.sent = sent
    result.stored = sum(1 for s in seqs if s < sent)
    result.doubled = sum(n - 1 for counts in per_db for n in counts.get(session, {}).values())
    result.gaps = sent - result.stored
    result.duplicates = _duplicates(dbs)
    across = sum(n - 1 for n in seqs.values()) - result.doubled
    if across:
        result.notes.append(f"{across} in both databases")
    return result


def _progress(db: Path, at_least: int, timeout_s: float = 60.0) -> int:
    wait_until(lambda: db.exists() and count_rows(db, "results") >= at_least, timeout_s, "progress")
    return count_rows(db, "results")


def _finish(r: Rig, broker: Broker, proc: Proc, result: CaseResult) -> None:
    code = proc.wait()
    result.notes.append(f"run exit {code}")
    if code != 0:
        result.notes.append(proc.text().strip().splitlines()[-2][:160])


# -- the cases ----------------------------------------------------------------------------------


def broker_kill_logger_off(r: Rig) -> CaseResult:
    """The broker is SIGKILLed while the logger is down and everything it acknowledged waits
    in its memory for the logger; then broker, logger and pipeline start again."""
    res = CaseResult("broker SIGKILL, logger offline")
    broker = r.broker()
    try:
        lg = r.logger(broker)
        lg.wait_subscribed()
        lg.stop()
        first = r.run(broker, "--max-frames", str(r.frames), "--flush-timeout", "2")
        res.notes.append(f"first run exit {first.wait()} (unconfirmed results kept)")
        broker.kill()
        broker.start()
        lg = r.logger(broker)
        lg.wait_subscribed()
        _finish(r, broker, r.run(broker, "--max-frames", "1", "--flush-timeout", "60"), res)
        lg.stop()
    finally:
        broker.stop()
    return _tally(res, [r.db], r.frames)


def broker_kill_logger_on(r: Rig, kills: int = 3) -> CaseResult:
    """Three broker SIGKILLs during a 20 fps replay, the logger online throughout."""
    res = CaseResult(f"{kills} broker SIGKILLs, logger online")
    broker = r.broker()
    try:
        lg = r.logger(broker)
        lg.wait_subscribed()
        proc = r.run(broker, "--realtime", "--fps", "20", "--flush-timeout", "90")
        step = r.frames // (kills + 2)
        for k in range(kills):
            _progress(r.db, step * (k + 1))
            broker.kill()
            time.sleep(0.3)
            broker.start()
        _finish(r, broker, proc, res)
        wait_until(lambda: count_rows(r.db, "sessions") == 1, 60, "the session summary")
        lg.stop()
    finally:
        broker.stop()
    return _tally(res, [r.db], r.frames)


def logger_kill(r: Rig, kills: int = 3) -> CaseResult:
    """The logger is SIGKILLed three times during a 20 fps replay and restarted each time."""
    res = CaseResult(f"{kills} logger SIGKILLs")
    broker = r.broker()
    try:
        lg = r.logger(broker)
        lg.wait_subscribed()
        proc = r.run(broker, "--realtime", "--fps", "20", "--flush-timeout", "90")
        step = r.frames // (kills + 2)
        for k in range(kills):
            _progress(r.db, step * (k + 1))
            lg.kill()
            time.sleep(1.0)
            lg = r.logger(broker)
            lg.wait_subscribed()
        _finish(r, broker, proc, res)
        lg.stop()
    finally:
        broker.stop()
    return _tally(res, [r.db], r.frames)


def pipeline_kill(r: Rig) -> CaseResult:
    """The pipeline is SIGKILLed mid-replay with the broker away (its outbox full of unsent
    results), then started again on the same outbox."""
    res = CaseResult("pipeline SIGKILL and restart")
    broker = r.broker()
    try:
        lg = r.logger(broker)
        lg.wait_subscribed()
        first = r.run(broker, "--realtime", "--fps", "20")
        _progress(r.db, r.frames // 4)
        broker.stop()
        time.sleep(1.0)  # results wait in the outbox
        first.popen.kill()
        first.wait()
        with sqlite3.connect(r.outbox) as conn:
            waiting = conn.execute("SELECT MAX(seq), COUNT(*) FROM outbox WHERE kind = 'result'")
            last_seq, pending = waiting.fetchone()
        res.notes.append(f"{pending} results in the outbox at the kill")
        broker.start()
        lg.wait_subscribed(times=2)
        _finish(r, broker, r.run(broker, "--max-frames", "1", "--flush-timeout", "60"), res)
        lg.stop()
    finally:
        broker.stop()
    return _tally(res, [r.db], int(last_seq) + 1)


def logger_db_removed(r: Rig) -> CaseResult:
    """The logger's SQLite file (and -wal, -shm) is deleted mid-run: the logger saves what it
    had committed, stops (exit 4) before acknowledging more, and is started on a fresh file."""
    res = CaseResult("logger database removed")
    broker = r.broker()
    try:
        lg = r.logger(broker)
        lg.wait_subscribed()
        proc = r.run(broker, "--realtime", "--fps", "20", "--flush-timeout", "90")
        _progress(r.db, r.frames // 3)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{r.db}{suffix}").unlink(missing_ok=True)
        res.notes.append(f"logger exit {lg.wait(60)}")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{r.db}{suffix}").unlink(missing_ok=True)
        lg = r.logger(broker)
        lg.wait_subscribed()
        _finish(r, broker, proc, res)
        lg.stop()
    finally:
        broker.stop()
    rescued = sorted(r.db.parent.glob(f"{r.db.name}.rescued-*"))
    res.notes.append(f"rescued files {len(rescued)}")
    return _tally(res, [r.db, *rescued], r.frames)


def _poison() -> list[bytes]:
    nan = json.dumps(make_payload(1000)).replace('"score": 0.75', '"score": NaN', 1)
    big_seq = json.dumps(make_payload(1001) | {"seq": "@"}).replace('"@"', str(2**64))
    return [nan.encode(), b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 9_000 + b"1" + b"}" * 9_000,
            big_seq.encode(), b"\xff\xfe not even text"]  # fmt: skip


def poison_payloads(r: Rig) -> CaseResult:
    """Hostile payloads on a device's own result topic, between the results of a replay."""
    res = CaseResult("poison payloads")
    broker = r.broker()
    try:
        lg = r.logger(broker)
        lg.wait_subscribed()
        proc = r.run(broker, "--realtime", "--fps", "20", "--flush-timeout", "60")
        topic = result_topic(make_payload(0))  # config/default.yaml: edge-01/cam0
        with Publisher(broker.host, broker.port, client_id="chaos-poison") as pub:
            for raw in _poison():
                _progress(r.db, 1)
                pub.wait_acked([pub.publish(topic, raw)])
                time.sleep(0.2)
        _finish(r, broker, proc, res)
        wait_until(lambda: count_rows(r.db, "rejects") >= len(_poison()), 30, "the rejects")
        res.notes.append(f"rejects {count_rows(r.db, 'rejects')}, logger alive")
        assert lg.proc is not None and lg.proc.poll() is None, lg.text()
        lg.stop()
    finally:
        broker.stop()
    return _tally(res, [r.db], r.frames)


def shipped_plain_config(etc: Path) -> str:
    """config/mosquitto/mosquitto.conf without TLS, on a loopback port: the same accounts,
    ACL and client-id binding (the TLS side has tests of its own)."""
    lines = []
    for line in (SHIPPED / "mosquitto.conf").read_text().splitlines():
        if line.startswith(("persistence", "autosave", "cafile", "certfile", "keyfile", "tls_")):
            continue
        line = line.replace("/etc/mosquitto/thermoscreen/", f"{etc}/")
        lines.append("listener @PORT@ 127.0.0.1" if line.startswith("listener ") else line)
    return "\n".join(lines) + "\n"


def client_id_takeover(r: Rig) -> CaseResult:
    """With the shipped broker settings, device accounts connect with the logger's client id
    (and its account name) while the logger is down, which used to wipe the results queued
    for it."""
    res = CaseResult("client-id takeover")
    etc = r.root / "etc"
    etc.mkdir()
    shutil.copy(SHIPPED / "acl", etc / "acl")
    for i, (user, password) in enumerate(ACCOUNTS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", "-b", *create, str(etc / "passwd"), user, password],
                       check=True, capture_output=True, timeout=30)  # fmt: skip
    broker = r.broker(shipped_plain_config(etc))
    as_logger = {"THERMOSCREEN_MQTT_USERNAME": "logger", "THERMOSCREEN_MQTT_PASSWORD": "chaos-log"}
    as_device = {
        "THERMOSCREEN_MQTT_USERNAME": "edge-01",
        "THERMOSCREEN_MQTT_PASSWORD": "chaos-dev1",
    }
    try:
        lg = r.logger(broker, env=as_logger)
        lg.wait_subscribed()
        lg.stop()
        first = r.run(broker, "--device-id", "edge-01", "--max-frames", str(r.frames),
                      "--flush-timeout", "2", env=as_device)  # fmt: skip
        res.notes.append(f"first run exit {first.wait()}")
        for client_id in ("thermoscreen-logger", "logger"):
            thief = Publisher("127.0.0.1", broker.port, client_id, "edge-02", ACCOUNTS["edge-02"])
            with thief:
                pass
        lg = r.logger(broker, env=as_logger)
        lg.wait_subscribed()
        wait_until(lambda: r.db.exists() and count_rows(r.db, "results") >= r.frames, 30,
                   "the queued results")  # fmt: skip
        _finish(r, broker, r.run(broker, "--device-id", "edge-01", "--max-frames", "1",
                                 "--flush-timeout", "30", env=as_device), res)  # fmt: skip
        lg.stop()
    finally:
        broker.stop()
    return _tally(res, [r.db], r.frames)


Case = Callable[[Rig], CaseResult]
CASES: dict[str, tuple[Case, int]] = {  # name -> (case, frames)
    "broker-kill-logger-off": (broker_kill_logger_off, 100),
    "broker-kill-logger-on": (broker_kill_logger_on, 200),
    "logger-kill": (logger_kill, 200),
    "pipeline-kill": (pipeline_kill, 200),
    "logger-db-removed": (logger_db_removed, 150),
    "poison": (poison_payloads, 60),
    "client-id-takeover": (client_id_takeover, 40),
}
REPEATED = ("broker-kill-logger-on",)  # run `--repeat` times: the required repetitions
