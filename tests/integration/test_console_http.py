"""The operator console over HTTP, inside a real `run`: a live `test://` patient, a real tiny
ONNX model, a real mosquitto. /healthz, /metrics, the live stream, exam commands through the
run's command path, the exam pages, and every refusal of the security rules."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.console.config import ENV_CONSOLE_PASSWORD, ConsoleError
from pipeline.console.server import open_console
from pipeline.exam.report import render_report
from pipeline.run.live import LiveView
from tests.conftest import REPO, Broker
from tests.helpers.console import ConsoleRun, console_config, console_run, mjpeg_frames
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.timeout(300)
PASSWORD = "a long console password"


@pytest.fixture
def running(broker: Broker, tiny_model: Path, tmp_path: Path) -> ConsoleRun:
    with console_run(broker.port, tiny_model, tmp_path) as live_run:
        yield live_run  # type: ignore[misc]


def metric_values(text: str) -> dict[str, float]:
    """name{labels} -> value, from Prometheus text (prometheus_client's own parser)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def test_healthz_is_200_while_running_and_503_with_the_broker_down(
    running: ConsoleRun, broker: Broker
) -> None:
    wait_until(lambda: running.get("/healthz").status == 200, 30, "a healthy /healthz")
    body = running.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["capture"]["frames"] > 0 and body["classification"]["frames"] > 0
    assert body["mqtt"]["connected"] is True and body["outbox"]["ok"] is True

    broker.stop()
    wait_until(lambda: running.get("/healthz").status == 503, 30, "a 503 with the broker down")
    down = running.get("/healthz").json()
    assert down["status"] == "unhealthy" and down["mqtt"]["ok"] is False
    assert down["mqtt"]["problem"]
    assert down["capture"]["ok"] is True  # the camera itself still works

    broker.start()
    wait_until(lambda: running.get("/healthz").status == 200, 60, "health after the broker")


def test_metrics_parse_as_prometheus_text_and_move_with_the_frames(running: ConsoleRun) -> None:
    answer = running.get("/metrics")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
    first = metric_values(answer.text)
    seen = int(first["thermoscreen_results_published_total"])
    wait_until(
        lambda: (
            metric_values(running.get("/metrics").text)["thermoscreen_results_published_total"]
            >= seen + 5
        ),
        30,
        "five more results in /metrics",
    )
    later = metric_values(running.get("/metrics").text)
    assert later["thermoscreen_frames_captured_total"] > first["thermoscreen_frames_captured_total"]
    assert later["thermoscreen_capture_to_result_seconds_count"] >= seen + 5
    assert later["thermoscreen_exam_state{state=idle}"] == 1.0
    assert later["thermoscreen_exam_state{state=capturing}"] == 0.0
    for stage in ("capture", "output", "console_encoder", "console_client"):
        assert f"thermoscreen_frames_dropped_total{{stage={stage}}}" in later
    assert later["thermoscreen_mqtt_connected"] == 1.0
    assert "thermoscreen_outbox_pending" in later and "thermoscreen_outbox_unconfirmed" in later


def test_the_live_stream_sends_new_jpeg_frames_and_is_counted(running: ConsoleRun) -> None:
    frames = mjpeg_frames(running.url, 4)
    seqs = [seq for seq, _ in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4  # newer frames, never the same twice
    assert all(jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9" for _, jpeg in frames)
    encoded = metric_values(running.get("/metrics").text)
    assert encoded["thermoscreen_console_frames_encoded_total"] >= 4
    single = running.get("/frame.jpg")
    assert single.status == 200 and single.body[:2] == b"\xff\xd8"


def test_an_exam_from_the_console_takes_the_mqtt_command_path(running: ConsoleRun) -> None:
    answer = running.command(action="start", exam_id="ACC-HTTP-1", ambient_c=22.0)
    assert answer.status == 200, answer.text
    assert answer.json()["ok"] is True and answer.json()["state"]["state"] == "acclimatizing"
    assert running.wait_exam(
        lambda s: s["exam_id"] == "ACC-HTTP-1" and s["state"] == "acclimatizing", 15
    ), "the retained MQTT exam state never said acclimatizing"
    refused = running.command(action="start", exam_id="ACC-HTTP-2")  # one exam at a time
    assert refused.status == 409 and refused.json()["ok"] is False and refused.json()["error"]
    bad = running.command(action="view", view="upside-down")
    assert bad.status == 409 and "view" in bad.json()["error"]
    assert running.command(action="ready", reason="test override").json()["ok"] is True
    assert running.command(action="view", view="frontal").json()["state"]["state"] == "capturing"
    wait_until(
        lambda: running.get("/api/state").json()["exam"]["frames"]["accepted"] >= 5,
        30,
        "five accepted frames",
    )
    closed = running.command(action="close").json()
    assert closed["ok"] is True and closed["state"]["state"] == "closed"
    verdict = closed["state"]["exam_verdict"]
    assert verdict["final"] is True and verdict["frames"] >= 5
    assert running.watcher.wait(lambda: running.watcher.count("summary") >= 1, 15)

    listing = running.get("/exams")
    assert listing.status == 200
    assert "ACC-HTTP-1" in listing.text and verdict["label"] in listing.text
    report = running.get("/exams/ACC-HTTP-1")
    folder = running.cfg.exam.exams_dir / "ACC-HTTP-1"
    assert report.status == 200 and report.text == render_report(folder)  # the one report
    assert "script-src" not in report.headers["Content-Security-Policy"]
    assert "default-src 'none'" in report.headers["Content-Security-Policy"]


@pytest.mark.parametrize("exam_id", ["..", "a%2F..%2F..", "x" * 65, "bad%20id", "no-such-exam"])
def test_exam_pages_refuse_bad_ids_and_paths(running: ConsoleRun, exam_id: str) -> None:
    answer = running.get(f"/exams/{exam_id}")
    assert answer.status == 404
    assert b"exam.json" not in answer.body and b"root:" not in answer.body


def test_state_changes_need_a_post_with_the_csrf_token_from_the_same_origin(
    running: ConsoleRun,
) -> None:
    start = {"action": "start", "exam_id": "ACC-CSRF"}
    no_token = running.command(headers={"Content-Type": "application/json"}, **start)
    assert no_token.status == 403 and "X-CSRF-Token" in no_token.json()["error"]
    wrong = running.command(
        headers={"Content-Type": "application/json", "X-CSRF-Token": "guess"}, **start
    )
    assert wrong.status == 403
    foreign = running.command(
        headers={
            "Content-Type": "application/json",
            "X-CSRF-Token": running.csrf_token(),
            "Origin": "http://evil.example",
        },
        **start,
    )
    assert foreign.status == 403 and "cross-site" in foreign.json()["error"]
    as_form = running.request(
        "/api/exam",
        "POST",
        b"action=start&exam_id=ACC-CSRF",
        {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": running.csrf_token()},
    )
    assert as_form.status == 415
    assert running.get("/api/exam").status == 405  # a GET changes nothing
    assert running.get("/api/state").json()["exam"]["state"] == "idle"  # nothing happened
    counted = metric_values(running.get("/metrics").text)
    assert counted["thermoscreen_console_refused_requests_total{reason=csrf}"] >= 2
    assert counted["thermoscreen_console_refused_requests_total{reason=origin}"] >= 1


def test_a_foreign_host_name_is_refused_on_a_loopback_bind(running: ConsoleRun) -> None:
    rebound = running.get("/api/state", headers={"Host": "attacker.example:80"})
    assert rebound.status == 421
    assert running.get("/api/state", headers={"Host": "localhost"}).status == 200


def test_the_page_carries_its_token_and_no_patient_identity(running: ConsoleRun) -> None:
    page = running.get("/")
    assert page.status == 200 and running.csrf_token() in page.text
    assert "adjunct to mammography" in page.text and "never the patient's name" in page.text
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("console.js", "console.css"):
        assert running.get(f"/static/{name}").status == 200
    assert running.get("/static/..%2Fapp.py").status == 404
    state = running.get("/api/state").json()
    assert state["synthetic_model"] is True and state["frame"]["radiometric"] is True
    assert "adjunct to mammography" in state["disclaimer"]


def test_a_wrong_password_gets_401(broker: Broker, tiny_model: Path, tmp_path: Path) -> None:
    env = {ENV_CONSOLE_PASSWORD: PASSWORD}
    with console_run(broker.port, tiny_model, tmp_path, env=env) as live_run:
        anonymous = live_run.request("/api/state", headers={}, password="")
        assert anonymous.status == 401
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
        assert live_run.get("/healthz", password="not the password").status == 401
        assert live_run.get("/api/state").status == 200  # the right one
        counted = metric_values(live_run.get("/metrics").text)
        assert counted["thermoscreen_console_auth_failures_total"] >= 2


def test_a_network_address_without_a_password_is_refused(
    broker: Broker, tiny_model: Path, tmp_path: Path
) -> None:
    cfg = console_config(broker.port, tiny_model, tmp_path, **{"console.listen": "0.0.0.0:0"})
    with pytest.raises(ConsoleError, match=ENV_CONSOLE_PASSWORD):
        open_console(cfg, LiveView(), env={})
    env = {k: v for k, v in os.environ.items() if k != ENV_CONSOLE_PASSWORD}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "test://", "--model", str(tiny_model)]
    cmd += ["--console", "0.0.0.0:0", "--broker", f"127.0.0.1:{broker.port}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and ENV_CONSOLE_PASSWORD in lines[0], done.stderr
    assert "operator console:" not in done.stdout


def test_a_taken_port_is_one_line(broker: Broker, tiny_model: Path, tmp_path: Path) -> None:
    with console_run(broker.port, tiny_model, tmp_path) as live_run:
        taken = live_run.console.port
        cfg = console_config(
            broker.port, tiny_model, tmp_path / "2", **{"console.listen": f"127.0.0.1:{taken}"}
        )
        with pytest.raises(ConsoleError, match="cannot listen"):
            open_console(cfg, LiveView(), env={})


def test_commands_are_refused_plainly_when_the_body_is_not_a_json_object(
    running: ConsoleRun,
) -> None:
    headers = {"Content-Type": "application/json", "X-CSRF-Token": running.csrf_token()}
    for body in (b"[1, 2]", b"{not json", json.dumps({"action": "x" * 5000}).encode()):
        answer = running.request("/api/exam", "POST", body, headers)
        assert answer.status in (400, 413), (body[:20], answer.status)


def test_https_with_the_configured_certificate(
    broker: Broker, tiny_model: Path, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    tls = {"console.tls_cert_file": str(cert), "console.tls_key_file": str(key)}
    with console_run(broker.port, tiny_model, tmp_path / "run", **tls) as live_run:
        assert live_run.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(live_run.url + "api/state", context=trusted) as answer:
            assert json.loads(answer.read())["camera_id"] == "cam0"
        plain = live_run.url.replace("https://", "http://") + "api/state"
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(plain, timeout=10).read()
