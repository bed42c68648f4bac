"""`thermoscreen` command line: a table of subcommands, each in the module that does the work.

Modules are imported only when their subcommand runs, so `thermoscreen run` never imports torch and
a runtime-only install (no `[train]` extra) still runs the pipeline. Each module provides
`add_arguments(parser)` and `main(args) -> int`, and may set `LOG_LEVEL` (default INFO). A command
listed in `ARGUMENTS` takes its flags from a lighter module, so its `--help` answers without
importing torch.

Logging is set up here, once, for every command (`setup_logging`): one format on stderr, at the
level of the command's `--log-level` flag when it has one, else its `LOG_LEVEL`. A command whose
config also names a level (`run`: `log_level`) changes only the root logger's level.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pipeline import DISCLAIMER, __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "pipeline.run.command",
        "capture, classify and publish frames from a camera or recording",
    ),
    "exam": (
        "pipeline.run.examctl",
        "start, ready, view, close or abort a camera's screening exam (over MQTT)",
    ),
    "log": (
        "pipeline.logger.subscriber",
        "subscribe to results and store each one once (SQLite/PostgreSQL)",
    ),
    "report": ("pipeline.logger.report", "per-session summaries from a logger database (CSV/JSON)"),
    "convert": (
        "pipeline.convert",
        "a radiometric recording or camera -> a lossless 16-bit PNG recording",
    ),
    "bench": (
        "pipeline.devtools.bench.command",
        "benchmark the bare model, replays of every source kind, live runs, the naive loop",
    ),
    "synth": ("training.synth", "generate synthetic thermograms (matrices, PNG16, MP4)"),
    "train": ("training.train", "transfer-learn a torchvision classifier on thermograms"),
    "evaluate": ("training.evaluate", "patient-level metrics with bootstrap intervals"),
    "export": ("training.export", "export a checked ONNX model directory with manifest"),
    "quantize": ("training.quantize", "INT8 static quantization of an exported model"),
}

# name -> module with `add_arguments` when that is not the command's module (no torch import)
ARGUMENTS: dict[str, str] = {"train": "training.train_config"}

TRAINING_HINT = "install the training extra: pip install -e '.[train]' (or `make setup`)"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_LOG_LEVEL = "INFO"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record arrives (tests and tools swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(level: str | int = DEFAULT_LOG_LEVEL) -> None:
    """The one logging set-up of every command: records go to stderr as
    `time LEVEL logger: message`. Calling it again only changes the level."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)


def _log_level(args: argparse.Namespace, module: object) -> str:
    """The command's `--log-level` when given, else its module's LOG_LEVEL, else INFO."""
    flag = getattr(args, "log_level", None)
    return str(flag or getattr(module, "LOG_LEVEL", DEFAULT_LOG_LEVEL))


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="thermoscreen",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Breast thermography screening at the edge.\n\n{DISCLAIMER}",
        epilog=f"commands:\n{lines}\n\nRun `thermoscreen COMMAND --help` for a command's options.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    top.add_argument("--version", action="version", version=f"thermoscreen {__version__}")
    top.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints help/version or the unknown-command error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, text = COMMANDS[name]
    flags = _load(name, ARGUMENTS.get(name, module_name))
    if flags is None:
        return 2
    parser = argparse.ArgumentParser(
        prog=f"thermoscreen {name}", description=f"{text}.\n\n{DISCLAIMER}"
    )
    flags.add_arguments(parser)
    args = parser.parse_args(rest)
    module = _load(name, module_name)
    if module is None:
        return 2
    setup_logging(_log_level(args, module))
    return int(module.main(args))


def _load(name: str, module_name: str) -> Any:
    """The module, or None after one line naming the missing package and how to install it."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        hint = TRAINING_HINT if module_name.startswith("training") else "run `make setup`"
        print(f"thermoscreen {name}: missing Python package '{missing}'; {hint}", file=sys.stderr)
        return None


if __name__ == "__main__":
    raise SystemExit(main())
