"""A training run's folder: run.json, split.json and checkpoints, read and written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.models import build_model
from training.train_config import TrainError

RUN_JSON = "run.json"
SPLIT_JSON = "split.json"


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_JSON
    if not path.is_file():
        raise TrainError(f"{path}: missing; pass a folder written by `thermoscreen train`")
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    return data


def read_split(run_dir: Path) -> dict[str, list[str]]:
    path = run_dir / SPLIT_JSON
    if not path.is_file():
        raise TrainError(f"{path}: missing; pass a folder written by `thermoscreen train`")
    data = json.loads(path.read_text(encoding="utf-8"))
    return {part: [str(p) for p in data["patients"][part]] for part in ("train", "val", "test")}


def checkpoint_path(run_dir: Path, which: str) -> Path:
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        raise TrainError(f"{path}: missing; train the run first (or use --checkpoint last)")
    return path


def load_run_model(run_dir: Path, which: str = "best") -> nn.Module:
    """The run's architecture with the weights of `best.pt` or `last.pt`, in eval mode."""
    run = read_run(run_dir)
    path = checkpoint_path(run_dir, which)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if list(ckpt.get("labels", run["labels"])) != list(run["labels"]):
        raise TrainError(
            f"{run_dir / RUN_JSON}: labels {run['labels']} differ from the {len(ckpt['labels'])} "
            f"classes {ckpt['labels']} the checkpoint {path.name} outputs; re-train or restore "
            "run.json"
        )
    model = build_model(run["arch"], len(run["labels"]), "none")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise TrainError(f"{path}: does not fit {run['arch']} from run.json ({first})") from exc
    return model.eval()


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def best_epoch(out: Path) -> int:
    """The epoch best.pt was saved at."""
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    return int(ckpt.get("best_epoch", ckpt["epoch"]))
