"""`thermoscreen train`'s settings and command line, without importing torch: `--help` and
argument errors answer at once, and the defaults shown in `--help` are TrainConfig's own."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline.preprocess import PreprocessConfig
from training.archs import DEFAULT_ARCH, HEADS, PACKAGED_IMAGENET, resolve_weights


class TrainError(ValueError):
    """A training request that cannot run; the message is one line naming the fix."""


class TrainConfig(BaseModel):
    """Hyper-parameters of one run, saved in run.json and checked on --resume."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = Field(default=DEFAULT_ARCH, description="Architecture (training.archs.HEADS).")
    weights: str = Field(
        default="none",
        description="Initial weights: none (from scratch), imagenet, or a .pth file.",
    )
    epochs: int = Field(
        default=10, ge=1, description="Total epochs (a resumed run stops here too)."
    )
    batch_size: int = Field(default=16, ge=1, description="Images per optimisation step.")
    lr: float = Field(default=1e-3, gt=0, description="AdamW peak learning rate (cosine decay).")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay.")
    seed: int = Field(default=0, description="Seed of the split, shuffling, augmentation, init.")
    test_fraction: float = Field(default=0.3, ge=0, lt=1, description="Share of patients in test.")
    val_fraction: float = Field(default=0.0, ge=0, lt=1, description="Share of patients in val.")
    min_epoch_samples: int = Field(
        default=128,
        ge=0,
        description="Small sets: an epoch draws augmented repeats of the training images until it "
        "holds at least this many samples (each image equally often, +-1).",
    )
    workers: int = Field(default=0, ge=0, description="DataLoader worker processes.")
    max_images: int | None = Field(
        default=None, ge=2, description="Use at most this many images (whole patients; quick runs)."
    )
    preprocessing: PreprocessConfig = Field(
        default_factory=PreprocessConfig, description="Rendering and equalization."
    )


def _default(name: str) -> object:
    return TrainConfig.model_fields[name].default


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, help="folder with labels.csv + thermograms"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder (checkpoints, run.json)"
    )
    parser.add_argument(
        "--seed", type=int, default=_default("seed"), help="seed for split, init, augmentation"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=_default("test_fraction"),
        help="share of patients in test",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=_default("val_fraction"),
        help="share of patients in val",
    )
    parser.add_argument(
        "--max-images", type=int, default=None, help="use at most N images (whole patients)"
    )
    win = parser.add_mutually_exclusive_group()
    win.add_argument(
        "--window", type=float, nargs=2, metavar=("LO", "HI"), default=PreprocessConfig().window_c,
        help="Celsius window of the rendering",
    )  # fmt: skip
    win.add_argument("--minmax", action="store_true", help="per-frame min-max instead of a window")
    parser.add_argument(
        "--equalization",
        choices=("global", "clahe", "none"),
        default=PreprocessConfig().equalization,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `thermoscreen train`, each with its default in --help."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    _add_data(parser)
    parser.add_argument("--arch", default=DEFAULT_ARCH, help=f"one of: {', '.join(HEADS)}")
    parser.add_argument(
        "--weights",
        default="auto",
        help="auto: the packaged ImageNet weights for "
        f"{', '.join(PACKAGED_IMAGENET)}, from scratch (random init) for every other --arch; "
        "none: from scratch; imagenet: ImageNet weights (a download for torchvision models, "
        "needs internet); or PATH to a .pth file",
    )
    parser.add_argument("--epochs", type=int, default=_default("epochs"), help="total epochs")
    parser.add_argument(
        "--batch-size", type=int, default=_default("batch_size"), help="images per step"
    )
    parser.add_argument(
        "--lr", type=float, default=_default("lr"), help="AdamW learning rate (cosine decay)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument(
        "--min-epoch-samples",
        type=int,
        default=_default("min_epoch_samples"),
        help="small sets: repeat the (augmented) training images until an epoch has this many",
    )
    parser.add_argument(
        "--workers", type=int, default=_default("workers"), help="DataLoader worker processes"
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The parsed flags as a TrainConfig (`--weights auto` resolved for the architecture)."""
    window = None if args.minmax else (float(args.window[0]), float(args.window[1]))
    return TrainConfig(
        arch=args.arch,
        weights=resolve_weights(args.arch, args.weights),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        workers=args.workers,
        min_epoch_samples=args.min_epoch_samples,
        max_images=args.max_images,
        preprocessing=PreprocessConfig(window_c=window, equalization=args.equalization),
    )
