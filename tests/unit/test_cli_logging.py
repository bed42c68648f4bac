"""One logging set-up for every command: one handler, one format, the command's level."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from pipeline import cli


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def test_setup_logging_installs_one_handler_and_changes_only_the_level_after(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.setup_logging("DEBUG")
    cli.setup_logging("WARNING")
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, cli._StderrHandler)]
    assert len(ours) == 1 and root.level == logging.WARNING
    logging.getLogger("thermoscreen.test").info("not shown")
    logging.getLogger("thermoscreen.test").warning("shown")
    err = capsys.readouterr().err
    assert "not shown" not in err
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ WARNING thermoscreen\.test: shown$", err, re.M)


def test_the_level_comes_from_the_flag_then_the_command_then_info() -> None:
    quiet = SimpleNamespace(LOG_LEVEL="WARNING")
    assert cli._log_level(argparse.Namespace(log_level="DEBUG"), quiet) == "DEBUG"
    assert cli._log_level(argparse.Namespace(log_level=None), quiet) == "WARNING"
    assert cli._log_level(argparse.Namespace(), object()) == "INFO"
