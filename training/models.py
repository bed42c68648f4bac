"""torchvision classifiers with their head replaced for our classes, and initial weights.

`--weights` is `none` (random init), `imagenet` (torchvision's download; needs internet or a
populated torch hub cache) or a local `.pth` file: a bare state_dict, a torchvision ImageNet file
(its 1000-class head is skipped and re-initialised), or a checkpoint of `thermoscreen train`.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from training.archs import DEFAULT_ARCH, HEADS, PACKAGED_IMAGENET, ModelBuildError, check_arch
from training.lite import LiteWeightsError, build_lite

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ARCH",
    "HEADS",
    "ModelBuildError",
    "WithSoftmax",
    "build_model",
    "check_arch",
]

# Old DenseNet files name keys "denselayer1.norm.1.weight"; the modules are "norm1".
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _replace_head(model: nn.Module, arch: str, num_classes: int) -> None:
    """Swap the final Linear layer for one with `num_classes` outputs (freshly initialised)."""
    parent_path, _, leaf = HEADS[arch].rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = model.get_submodule(HEADS[arch])
    if not isinstance(old, nn.Linear):
        raise ModelBuildError(f"{arch}: expected a Linear head at {HEADS[arch]}, found {type(old)}")
    # Module.__setattr__ re-registers the child, also for Sequential's numbered children ("3")
    setattr(parent, leaf, nn.Linear(old.in_features, num_classes))


def _imagenet_model(arch: str) -> nn.Module:
    try:
        model: nn.Module = torchvision.models.get_model(arch, weights="DEFAULT")
        return model
    except (OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelBuildError(
            f"cannot download ImageNet weights for {arch} (offline? {reason}); "
            "use --weights none or --weights PATH to a local .pth file"
        ) from exc


def _plain_model(arch: str) -> nn.Module:
    model: nn.Module = torchvision.models.get_model(arch, weights=None)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a .pth file: bare, or inside a checkpoint under 'model'/'state_dict'."""
    if not path.is_file():
        raise ModelBuildError(f"{path}: weights file not found; use --weights none|imagenet|PATH")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelBuildError(
            f"{path}: not a readable PyTorch weights file ({first[:120]}); save a state_dict "
            "with torch.save(model.state_dict(), PATH)"
        ) from exc
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelBuildError(
            f"{path}: holds no state_dict (expected a dict of tensors or a checkpoint with 'model')"
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        k = k.removeprefix("module.")  # saved from DataParallel
        m = _DENSENET_OLD_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def load_weights_file(model: nn.Module, arch: str, path: Path) -> list[str]:
    """Load `path` into `model`; head tensors of another class count are skipped (returned).

    Any other missing, unexpected or mis-shaped key fails with one line naming file, key and shapes.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head = HEADS[arch] + "."
    skipped: list[str] = []
    for key, tensor in own.items():
        if key not in state:
            raise ModelBuildError(
                f"{path}: does not fit {arch}: key {key!r} missing from the file "
                "(weights of another architecture?)"
            )
        if tuple(state[key].shape) != tuple(tensor.shape):
            if key.startswith(head):
                skipped.append(key)
                continue
            raise ModelBuildError(
                f"{path}: does not fit {arch}: key {key!r} has shape {tuple(state[key].shape)} "
                f"in the file, the model expects {tuple(tensor.shape)}"
            )
    extra = sorted(set(state) - set(own))
    if extra:
        raise ModelBuildError(
            f"{path}: does not fit {arch}: unexpected key {extra[0]!r} "
            f"({len(extra)} in all; weights of another architecture?)"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    return skipped


def build_model(arch: str, num_classes: int, weights: str = "none") -> nn.Module:
    """A torchvision classifier for `num_classes` classes, initialised as `weights` says."""
    check_arch(arch)
    if num_classes < 2:
        raise ModelBuildError(f"need at least 2 classes, got {num_classes}")
    if arch in PACKAGED_IMAGENET:  # `imagenet` = the packaged Apache-2.0 weights, offline
        try:
            return build_lite(arch.removeprefix("efficientnet_"), num_classes, weights)
        except LiteWeightsError as exc:
            raise ModelBuildError(str(exc)) from exc
    if weights == "imagenet":
        model = _imagenet_model(arch)
        _replace_head(model, arch, num_classes)
        return model
    model = _plain_model(arch)
    _replace_head(model, arch, num_classes)
    if weights == "none":
        return model
    skipped = load_weights_file(model, arch, Path(weights))
    if skipped:
        log.info("%s: head %s re-initialised for %d classes", weights, HEADS[arch], num_classes)
    return model


class WithSoftmax(nn.Module):
    """The exported graph: logits -> probabilities, because imageNet applies no softmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)
