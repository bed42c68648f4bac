"""Frozen EfficientNet-Lite0 features of a thermogram and of its left-right mirror, and the one
ONNX graph that serves a linear probe on them.

Why mirror: thermographers read the difference between the two breasts. The backbone runs on x
and on torch.flip(x, dims=[3]); at every position of a feature map, F(x) and F(flip x) look at
the same place of the body and at its mirror place, with mirrored filters. So

- mean   = spatial mean of (F(x) + F(flip x)) / 2  (horizontal-flip test-time averaging), and
- asym   = spatial mean of |F(x) - F(flip x)|      (zero for a left-right symmetric picture)

are both exactly unchanged when the input itself is mirrored (the pair just swaps), which a test
checks through ONNX Runtime.

The feature sets compared (fixed before any result was seen; chosen per training fold by inner CV
in `training.study`):

- `last`: pooled head features of x alone (the session-1 probe; trained with mirrored copies);
- `flip_mean`: `mean` of the head (1280-d);
- `flip_mean+asym`: `mean` and `asym` of the head (2560-d);
- `two_blocks`: `mean` and `asym` of the head and of the last 112-channel block (14x14 map, a
  finer scale) (2784-d).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pipeline.preprocess import model_input
from training.lite import EfficientNetLite

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FeatureSet:
    """Which pooled statistics of which taps feed the probe."""

    name: str
    taps: tuple[str, ...]  # "head" and/or "mid"
    mirror: bool  # False: features of x alone; True: mean (and maybe asym) of x and flip(x)
    asym: bool


FEATURE_SETS = (
    FeatureSet("last", ("head",), mirror=False, asym=False),
    FeatureSet("flip_mean", ("head",), mirror=True, asym=False),
    FeatureSet("flip_mean+asym", ("head",), mirror=True, asym=True),
    FeatureSet("two_blocks", ("head", "mid"), mirror=True, asym=True),
)
BY_NAME = {fs.name: fs for fs in FEATURE_SETS}


def tap_maps(model: EfficientNetLite, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Feature maps of the head (after its activation) and of the mid block, for a batch x."""
    h = model.act(model._bn0(model._conv_stem(model.adapter(x))))
    mid = h
    for i, block in enumerate(model._blocks):
        h = block(h)
        if i == model.mid_block:
            mid = h
    head = model.act(model._bn1(model._conv_head(h)))
    return {"head": head, "mid": mid}


def pooled(
    fs: FeatureSet, maps: dict[str, torch.Tensor], maps_flip: dict[str, torch.Tensor]
) -> torch.Tensor:
    """[N, D] probe input of feature set `fs` from the maps of x and of flip(x)."""
    parts = []
    for tap in fs.taps:
        a, b = maps[tap], maps_flip[tap]
        if not fs.mirror:
            parts.append(a.mean(dim=(2, 3)))
            continue
        parts.append(((a + b) * 0.5).mean(dim=(2, 3)))
        if fs.asym:
            parts.append((a - b).abs().mean(dim=(2, 3)))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def extract(model: EfficientNetLite, tensors: F32, batch: int = 8) -> dict[str, F32]:
    """For [N, 3, H, W] model inputs: every feature set's [N, D] features, plus `last@flip` (the
    head features of the mirrored input: the training copies of the `last` set)."""
    out: dict[str, list[F32]] = {fs.name: [] for fs in FEATURE_SETS}
    out["last@flip"] = []
    model.eval()
    for start in range(0, len(tensors), batch):
        x = torch.from_numpy(np.ascontiguousarray(tensors[start : start + batch]))
        xf = torch.flip(x, dims=[3])
        maps, maps_flip = tap_maps(model, x), tap_maps(model, xf)
        for fs in FEATURE_SETS:
            out[fs.name].append(pooled(fs, maps, maps_flip).numpy())
        out["last@flip"].append(maps_flip["head"].mean(dim=(2, 3)).numpy())
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def model_tensors(images: Sequence[U8]) -> F32:
    """[N, 3, 224, 224] serving tensors of rendered thermograms (`model_input`, as served)."""
    return np.concatenate([model_input(np.ascontiguousarray(im)) for im in images])


class BilateralProbe(nn.Module):
    """The served graph: backbone on x and flip(x) (one batch of two), the feature set's pooling,
    then the probe as a 2-class head: logits [0, w . (f - mu) / sd + b] (softmax is added by the
    exporter, so p(sick) = sigmoid of the probe's logit, calibration included)."""

    def __init__(
        self, backbone: EfficientNetLite, fs: FeatureSet, w: F64, b: float, mu: F64, sd: F64
    ) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        self.fs = fs
        scale = w / sd
        self.head = nn.Linear(len(w), 2)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[1] = torch.from_numpy(scale).float()
            self.head.bias[1] = float(b - np.dot(scale, mu))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fs.mirror:
            maps = tap_maps(self.backbone, x)
            single: torch.Tensor = self.head(pooled(self.fs, maps, maps))
            return single
        n = x.shape[0]
        both = tap_maps(self.backbone, torch.cat([x, torch.flip(x, dims=[3])], dim=0))
        mine = {k: v[:n] for k, v in both.items()}
        mirrored = {k: v[n:] for k, v in both.items()}
        logits: torch.Tensor = self.head(pooled(self.fs, mine, mirrored))
        return logits


class ProbeEnsemble(nn.Module):
    """Several probes' calibrated p(sick) averaged inside one graph. Its output are the
    log-probabilities [log(1 - p), log(p)], so the exporter's softmax gives back exactly
    [1 - p, p]."""

    def __init__(self, members: list[BilateralProbe]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(m(x), dim=1)[:, 1:] for m in self.members]
        p = torch.stack(probs, dim=0).mean(dim=0).clamp(1e-7, 1.0 - 1e-7)
        out: torch.Tensor = torch.cat([torch.log1p(-p), torch.log(p)], dim=1)
        return out
