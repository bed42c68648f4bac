"""The candidates compared under one nested protocol: patient-grouped outer 5-fold CV repeated
over split seeds; inside each outer training fold, inner CV chooses (feature set, penalty),
Platt scaling and the threshold. Each candidate's outer test patients are also scored from
8-bit JPEG renderings of their matrices (rendering robustness).

Every (candidate, split seed) result is kept on disk, so a long comparison on a shared CPU can
be stopped and resumed. The rule that picks the shipped candidate is fixed here, before any
result: the highest mean over split seeds of (AUC all + AUC ID < 300) / 2.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.bilateral import FEATURE_SETS
from training.study.cohort import Cohort
from training.study.cv import (
    FoldResult,
    across_seeds,
    cv_probe,
    ensemble,
    patient_folds,
    scores,
    seed_mean_auc,
    seed_row,
    summarize,
    with_scores,
)
from training.study.features import FeatureCache
from training.study.probe import FeatureBank
from training.study.renderings import MATRIX, TEST_JPEG, TRAIN_AUGMENT

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
ALL_SETS = tuple(fs.name for fs in FEATURE_SETS)
OUTER_FOLDS = 5


@dataclass(frozen=True)
class Candidate:
    """A frozen-backbone probe (one backbone) or an ensemble of such probes (several backbones,
    their calibrated probabilities averaged inside one graph)."""

    name: str
    backbones: tuple[str, ...]
    augment: bool  # train on the rendering-augmentation copies too
    sets: tuple[str, ...] = ALL_SETS

    @property
    def members(self) -> tuple[Candidate, ...]:
        """The single-backbone candidates an ensemble averages (itself when single)."""
        if len(self.backbones) == 1:
            return (self,)
        return tuple(single(b, self.augment) for b in self.backbones)


def single(backbone: str, augment: bool) -> Candidate:
    suffix = " + rendering augmentation" if augment else ""
    return Candidate(f"{backbone} frozen, nested probe{suffix}", (backbone,), augment)


CANDIDATES = (
    single("lite0", False),
    single("lite0", True),
    single("lite1", True),
    single("lite2", True),
    Candidate(
        "lite0+lite1+lite2 ensemble + rendering augmentation", ("lite0", "lite1", "lite2"), True
    ),
)


def criterion_mean(row: dict[str, Any]) -> float:
    """The selection rule: mean over split seeds of (AUC all + AUC ID < 300) / 2."""
    return float(0.5 * (row["all"]["auc"]["mean"] + row["id_below_300"]["auc"]["mean"]))


class Comparison:
    """Runs candidates over split seeds with resumable per-(candidate, seed) results."""

    def __init__(
        self,
        cohort: Cohort,
        cache: FeatureCache,
        folder: Path,
        n_boot: int,
        lambdas: Sequence[float],
    ) -> None:
        self.cohort, self.cache, self.folder = cohort, cache, folder
        self.n_boot, self.lambdas = n_boot, tuple(lambdas)

    def bank(self, backbone: str, augment: bool) -> FeatureBank:
        base = self.cache.get(backbone, MATRIX)
        extra = tuple(self.cache.get(backbone, r) for r in TRAIN_AUGMENT) if augment else ()
        return FeatureBank(base, extra)

    def jpeg(self, backbone: str) -> dict[str, dict[str, F32]]:
        return {r.name: self.cache.get(backbone, r) for r in TEST_JPEG}

    def _path(self, c: Candidate, seed: int) -> Path:
        safe = "".join(ch if ch.isalnum() else "_" for ch in c.name)
        return self.folder / f"{safe}-seed{seed}-{self.cache.key}.pkl"

    def folds(self, c: Candidate, seed: int) -> list[FoldResult]:
        """One single-backbone candidate's outer-fold results on split seed `seed` (cached)."""
        path = self._path(c, seed)
        if path.is_file():
            with path.open("rb") as f:
                cached: list[FoldResult] = pickle.load(f)
            return cached
        (backbone,) = c.backbones
        folds = patient_folds(self.cohort, OUTER_FOLDS, seed)
        res = cv_probe(
            self.bank(backbone, c.augment), self.cohort, folds, seed, c.sets, self.lambdas,
            self.jpeg(backbone),
        )  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            pickle.dump(res, f)
        return res

    def results(self, c: Candidate, seed: int) -> list[FoldResult]:
        members = [self.folds(m, seed) for m in c.members]
        return members[0] if len(members) == 1 else ensemble(members, self.cohort)


def _rendered(results: list[FoldResult], rendering: str) -> list[FoldResult]:
    return results if rendering == "matrix" else with_scores(results, rendering)


def summarize_candidate(
    cohort: Cohort, per_seed: dict[int, list[FoldResult]], n_boot: int
) -> dict[str, Any]:
    """Per split seed, across seeds, the seed-averaged AUC with its interval; the same for each
    JPEG rendering of the test patients."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    out: dict[str, Any] = {}
    for rendering in ("matrix", *first[0].extra):
        picked = {s: _rendered(per_seed[s], rendering) for s in seeds}
        rows = {str(s): seed_row(summarize(cohort, picked[s], n_boot, s)) for s in seeds}
        oof = [scores(cohort, picked[s]) for s in seeds]
        out[rendering] = {
            **across_seeds(rows, seeds),
            "seed_mean_auc": seed_mean_auc(cohort, oof, n_boot, seeds[0]),
        }
    out["choices"] = {
        str(s): [r.chosen.get("feature_set", r.chosen.get("members")) for r in per_seed[s]]
        for s in seeds
    }
    return out
