"""`thermoscreen train`'s weights: `--weights auto` starts from the packaged ImageNet weights only
where they exist, and a run from scratch says so."""

from __future__ import annotations

import argparse

import pytest

from training import train_config
from training.archs import describe_weights, resolve_weights


@pytest.mark.parametrize(
    ("arch", "weights", "resolved"),
    [
        ("efficientnet_lite0", "auto", "imagenet"),
        ("efficientnet_lite2", "auto", "imagenet"),
        ("resnet18", "auto", "none"),
        ("resnet18", "imagenet", "imagenet"),
        ("efficientnet_lite0", "none", "none"),
    ],
)
def test_auto_weights_are_packaged_imagenet_or_from_scratch(
    arch: str, weights: str, resolved: str
) -> None:
    assert resolve_weights(arch, weights) == resolved
    parser = argparse.ArgumentParser()
    train_config.add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", "o", "--arch", arch, "--weights", weights])
    assert train_config.config_from_args(args).weights == resolved


def test_runs_from_scratch_say_so() -> None:
    assert "from scratch" in describe_weights("none")
    assert "ImageNet" in describe_weights("imagenet")
