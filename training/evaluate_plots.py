"""The figures of `thermoscreen evaluate`: confusion matrices with the decision rule written on
them, ROC curves with the operating point marked, and a reliability plot (predicted p(sick)
against the observed fraction sick), per image and per patient."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from training import calibration, metrics

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
LEVEL_TITLES = {"per_image": "per image", "per_patient": "per patient (mean of its images)"}
ADJUNCT = "adjunct to mammography only"


def decision_rule(labels: list[str], pos: int, threshold: float | None) -> str:
    """The rule that turned scores into the predictions counted here, in words."""
    if threshold is None:
        return "predicted = the class with the highest probability (no threshold in model.json)"
    return f"called {labels[pos]} when p({labels[pos]}) >= {threshold:g} (model.json threshold)"


def confusion_figure(report: dict[str, Any], labels: list[str], rule: str, path: Path) -> Path:
    """Both confusion matrices of all patients, the decision rule under the title."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    for ax, level in zip(axes, ("per_image", "per_patient"), strict=True):
        cm = np.asarray(report["all"][level]["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        for (r, c), v in np.ndenumerate(cm):
            dark = v > cm.max() / 2
            ax.text(c, r, str(v), ha="center", va="center", color="white" if dark else "black")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(LEVEL_TITLES[level], fontsize=9)
    fig.suptitle(f"Confusion matrices, all patients ({ADJUNCT})\n{rule}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def operating_point(y: I64, s: F64, threshold: float | None) -> tuple[float, float] | None:
    """(1 - specificity, sensitivity) of the rule p >= threshold, or None without a threshold."""
    if threshold is None:
        return None
    sens, spec = calibration.rates_at(y, s, threshold)
    return 1.0 - spec, sens


def roc_figure(
    curves: dict[str, tuple[I64, F64]], positive: str, threshold: float | None, path: Path
) -> Path:
    """ROC per image and per patient, each with its operating point at the threshold."""
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = metrics.roc_curve(y, s)
        line = ax.plot(fpr, tpr, marker=".", label=f"{name} (AUC {metrics.roc_auc(y, s):.3f})")
        point = operating_point(y, s, threshold)
        if point is not None:
            ax.plot(*point, marker="o", markersize=10, color=line[0].get_color(), fillstyle="none")
            ax.annotate(f"p >= {threshold:g}", point, textcoords="offset points", xytext=(8, -12))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    mark = "circles: the operating point" if threshold is not None else "no threshold in model.json"
    ax.set_title(f"ROC, positive class '{positive}' ({mark})", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reliability_figure(curves: dict[str, tuple[I64, F64]], path: Path) -> Path:
    """Predicted p(sick) against the observed fraction sick, per image and per patient."""
    rel = {name: calibration.reliability(y, s) for name, (y, s) in curves.items()}
    return calibration.plot_reliability(rel, path, f"Reliability ({ADJUNCT})")
