"""`thermoscreen run` on bad input: one line naming the file and the fix, exit 2, no hang; and a
broker that is down at start: the run finishes, results wait in the outbox, nothing is lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.cli import main as cli
from pipeline.devtools.demo import ResultWatcher
from pipeline.preprocess import PreprocessConfig
from pipeline.run.stats import EXIT_BAD_INPUT, EXIT_OK, EXIT_PENDING
from tests.conftest import Broker, free_port
from tests.helpers.tiny_model import make_tiny_model_dir
from training.synth import SynthPlan
from training.synth import run as synth

pytestmark = pytest.mark.timeout(120)
N_FRAMES = 6


@pytest.fixture(scope="module")
def png16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("png16")
    synth(SynthPlan(out, ("png16",), 1, N_FRAMES, 10.0, 5, 0.5, (96, 128), N_FRAMES))
    return out


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("THERMOSCREEN_"):
            monkeypatch.delenv(name)


def run_cli(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, source: str, model: Path, port: int,
    *extra: str,
) -> tuple[int, str, str]:  # fmt: skip
    args = [
        "run", source, "--model", str(model), "--broker", f"127.0.0.1:{port}",
        "--outbox", str(tmp_path / "outbox.sqlite"), "--device-id", "edge-err",
        "--config", str(tmp_path / "none.yaml"), "--log-level", "WARNING", *extra,
    ]  # fmt: skip
    (tmp_path / "none.yaml").write_text("{}\n")
    code = cli(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("thermoscreen run:")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path) -> None:
    missing = tmp_path / "nope.mp4"
    code, out, err = run_cli(capsys, tmp_path, f"file://{missing}", tiny_model, free_port())
    assert code == EXIT_BAD_INPUT
    line = one_error_line(err)
    assert str(missing) in line and "not found" in line
    assert out == ""


def test_corrupt_recording(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path
) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(50_000))
    code, _, err = run_cli(capsys, tmp_path, str(bad), tiny_model, free_port())
    assert code == EXIT_BAD_INPUT
    assert str(bad) in one_error_line(err)


def test_unknown_scheme(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path
) -> None:
    code, _, err = run_cli(capsys, tmp_path, "ftp://host/rec.mp4", tiny_model, free_port())
    assert code == EXIT_BAD_INPUT
    line = one_error_line(err)
    assert "unknown scheme 'ftp://'" in line and "file://" in line


def test_modified_model_fails_the_sha256_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, png16: Path
) -> None:
    with (tiny_model / "model.onnx").open("ab") as f:
        f.write(b"\0")
    code, _, err = run_cli(capsys, tmp_path, str(png16), tiny_model, free_port())
    assert code == EXIT_BAD_INPUT
    line = one_error_line(err)
    assert "model.onnx" in line and "sha256" in line


def test_bad_config_value_names_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, png16: Path
) -> None:
    code, _, err = run_cli(capsys, tmp_path, str(png16), tiny_model, 1883, "--fps", "-1")
    assert code == EXIT_BAD_INPUT
    assert "command line: field 'capture.fps'" in one_error_line(err)


def test_outbox_that_cannot_be_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, png16: Path
) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the outbox folder should be\n")
    args = ["run", str(png16), "--model", str(tiny_model), "--config",
            str(tmp_path / "none.yaml"), "--outbox", str(blocker / "outbox.sqlite"),
            "--broker", f"127.0.0.1:{free_port()}"]  # fmt: skip
    assert cli(args) == EXIT_BAD_INPUT
    assert str(blocker) in one_error_line(capsys.readouterr().err)


def test_malformed_broker_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, png16: Path
) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    args = ["run", str(png16), "--model", str(tiny_model), "--broker", "localhost",
            "--config", str(tmp_path / "none.yaml")]  # fmt: skip
    assert cli(args) == EXIT_BAD_INPUT
    assert "--broker 'localhost': expected HOST:PORT" in one_error_line(capsys.readouterr().err)


def test_preprocessing_mismatch_is_refused_unless_following_the_manifest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, png16: Path, broker: Broker
) -> None:
    clahe = make_tiny_model_dir(
        tmp_path / "clahe-model", preprocessing=PreprocessConfig(equalization="clahe")
    )
    code, _, err = run_cli(capsys, tmp_path, str(png16), clahe, broker.port)
    assert code == EXIT_BAD_INPUT
    line = one_error_line(err)
    assert "model.json" in line and "preprocessing.equalization is clahe" in line
    assert "--follow-manifest" in line

    code, out, err = run_cli(capsys, tmp_path, str(png16), clahe, broker.port, "--follow-manifest")
    assert code == EXIT_OK, err
    assert f"{N_FRAMES} results from {N_FRAMES} frames" in out


def test_unreachable_broker_keeps_results_in_the_outbox_until_it_is_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, png16: Path
) -> None:
    port = free_port()  # nothing listens here yet
    code, out, err = run_cli(
        capsys, tmp_path, str(png16), tiny_model, port, "--flush-timeout", "0.5"
    )
    assert code == EXIT_PENDING, err
    assert f"{N_FRAMES} results from {N_FRAMES} frames" in out
    # every result plus the session summary waits on disk
    assert f"{N_FRAMES + 1} messages are still waiting in the outbox" in err

    broker = Broker(port=port, workdir=tmp_path / "broker")
    broker.workdir.mkdir()
    broker.start()
    try:
        with ResultWatcher(broker.host, port, "edge-err") as watcher:
            code, out, err = run_cli(capsys, tmp_path, str(png16), tiny_model, port)
            assert watcher.wait(lambda: watcher.count("session") >= 2, 20), err
    finally:
        broker.stop()
    assert code == EXIT_OK, err
    assert "the outbox is empty" in out
    by_session: dict[str, list[int]] = {}
    for r in watcher.bodies("result"):
        by_session.setdefault(r["session_id"], []).append(r["seq"])
    assert len(by_session) == 2  # the first (offline) run's results arrived too
    for seqs in by_session.values():
        assert sorted(seqs) == list(range(N_FRAMES))
    sessions = watcher.bodies("session")
    assert {s["session_id"] for s in sessions} == set(by_session)
    assert sorted(s["frames"] for s in sessions) == [N_FRAMES, N_FRAMES]


def test_unknown_output_scheme_is_refused_before_the_first_frame(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, png16: Path
) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    args = ["run", str(png16), "smtp://host/x", "--model", str(tiny_model), "--config",
            str(tmp_path / "none.yaml"), "--broker", f"127.0.0.1:{free_port()}",
            "--outbox", str(tmp_path / "o.sqlite")]  # fmt: skip
    assert cli(args) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "output 'smtp://host/x': unknown scheme" in one_error_line(captured.err)
    assert "results from" not in captured.out  # refused before any frame was read


def test_stop_with_a_full_outbox_and_no_broker_ends_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_model: Path,
    png16: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import threading

    from pipeline.config import load_config
    from pipeline.run import pipeline, stats, wiring

    monkeypatch.setattr(pipeline, "SHUTDOWN_STALL_S", 0.5)  # the real 10 s, shortened
    cfg = load_config(
        None,
        {
            "source": str(png16),
            "model.dir": str(tiny_model),
            "mqtt.port": free_port(),  # nobody acknowledges
            "outbox.path": str(tmp_path / "full.sqlite"),
            "outbox.max_messages": 2,  # replay blocks on the third result
            "flush_timeout_s": 0,
        },
        env={},
    )
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)  # SIGTERM's effect, while the replay is blocked
    timer.start()
    try:
        summary = wiring.run(cfg, stop=stop)
    finally:
        timer.cancel()
    assert summary.error is not None and summary.exit_code == stats.EXIT_FAILED
    assert summary.results == 2 and summary.outbox_pending == 2  # what was stored stays
    # one line each, no traceback (the stopped publisher used to crash the publish thread)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert "it and the frames after it are not stored" in summary.error
