"""Does INT8 keep a frozen-backbone candidate's development AUC? Each member's backbone and
pooling (the chosen feature set) is exported as a feature graph, quantized exactly as
`thermoscreen quantize` quantizes a model (ONNX Runtime static QDQ, calibrated on development
frames), and the outer test patients of the nested CV are scored from the INT8 features with
the probes fitted on FP32 features: the serving situation of an INT8 model."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from pipeline.preprocess import PreprocessConfig
from training import bilateral
from training.lite import EfficientNetLite, load_imagenet
from training.quantize import quantize_onnx
from training.study.compare import Candidate, Comparison
from training.study.cv import cv_probe, ensemble, patient_folds, summarize, with_scores
from training.study.probe import FeatureBank, nested_fit
from training.study.renderings import MATRIX

F32 = npt.NDArray[np.float32]
INPUT = "input_0"
CALIBRATION_FRAMES = 64


class FeatureGraph(torch.nn.Module):
    """Backbone (and the mirror pass) plus the feature set's pooling: [1, D] features."""

    def __init__(self, backbone: EfficientNetLite, fs: bilateral.FeatureSet) -> None:
        super().__init__()
        self.backbone, self.fs = backbone.eval(), fs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = bilateral.tap_maps(self.backbone, torch.cat([x, torch.flip(x, dims=[3])], dim=0))
        mine = {k: v[:1] for k, v in both.items()}
        mirrored = {k: v[1:] for k, v in both.items()}
        return bilateral.pooled(self.fs, mine, mirrored)


def _export(module: torch.nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module, (torch.zeros(1, 3, 224, 224),), str(path), input_names=[INPUT],
            output_names=["features"], opset_version=13, dynamo=False,
        )  # fmt: skip


def _run(path: Path, tensors: list[F32]) -> F32:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {INPUT: t})[0] for t in tensors]).astype(np.float32)


def int8_features(backbone: str, feature_set: str, tensors: list[F32]) -> tuple[F32, F32]:
    """(FP32, INT8) features of `tensors` from the ONNX feature graph, before and after static
    INT8 quantization calibrated on the first frames."""
    graph = FeatureGraph(load_imagenet(backbone), bilateral.BY_NAME[feature_set])
    with tempfile.TemporaryDirectory(prefix="thermoscreen-int8-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        _export(graph, fp32)
        quantize_onnx(fp32, int8, INPUT, tensors[:CALIBRATION_FRAMES])
        return _run(fp32, tensors), _run(int8, tensors)


def int8_check(
    comparison: Comparison, candidate: Candidate, seed: int, tolerance: float = 0.01
) -> dict[str, Any]:
    """The candidate with each member's shipped feature set forced, on split seed `seed`:
    its pooled out-of-fold AUC from FP32 features and from INT8 features (same probes)."""
    cohort = comparison.cohort
    cfg = PreprocessConfig()
    tensors = [bilateral.model_tensors([MATRIX(c, cfg)]) for c in comparison.cache.celsius]
    folds = patient_folds(cohort, 5, seed)
    members = []
    for m in candidate.members:
        (backbone,) = m.backbones
        bank = comparison.bank(backbone, m.augment)
        fs = nested_fit(bank, cohort.y, cohort.old, seed, m.sets, comparison.lambdas).feature_set
        fp32, int8 = int8_features(backbone, fs, tensors)
        base = FeatureBank({**bank.base, fs: fp32}, bank.augment)
        members.append(
            cv_probe(base, cohort, folds, seed, (fs,), comparison.lambdas, {"int8": {fs: int8}})
        )
    res = members[0] if len(members) == 1 else ensemble(members, cohort)
    out: dict[str, Any] = {"split_seed": seed, "tolerance": tolerance}
    for name, r in (("fp32", res), ("int8", with_scores(res, "int8"))):
        s = summarize(cohort, r, comparison.n_boot, seed)
        out[name] = {p: s[p]["auc"]["value"] for p in ("all", "id_below_300")}
    out["change"] = {p: round(out["int8"][p] - out["fp32"][p], 4) for p in ("all", "id_below_300")}
    out["quantize"] = all(abs(v) <= tolerance for v in out["change"].values())
    return out
