"""Shortcut checks, never used to choose anything: can the features tell the acquisition era
among sick patients; how a probe does trained on ID < 300 alone; how the rows move with other
renderings or with the marker masked / the frame cropped; and the random-init control."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from training.lite import EfficientNetLite
from training.study.cohort import Cohort
from training.study.cv import cv_probe, scores, summarize
from training.study.features import probe_features, random_lite0
from training.study.probe import stratified_folds
from training.study.tables import headline
from training.study.variants import DEFAULT_VARIANT, Variant, render_variant

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
IDX = npt.NDArray[np.intp]


def era_probe(
    feats: dict[str, F32], dev: Cohort, k: int, seed: int, sets: Sequence[str], n_boot: int
) -> dict[str, Any] | None:
    """Sick patients only: can the features tell ID >= 300 from ID < 300? (None: too few.)"""
    sick = np.flatnonzero(dev.y == 1)
    era = Cohort(
        [dev.items[int(i)] for i in sick],
        [dev.patient_ids[int(i)] for i in sick],
        (~dev.old[sick]).astype(np.int64),
    )
    smallest = int(np.bincount(era.y, minlength=2).min())
    if smallest < 2:
        return None
    folds = stratified_folds(era.y, min(k, smallest), seed)
    res = cv_probe({n: f[sick] for n, f in feats.items()}, era, folds, seed, sets)
    return {
        "what": "sick patients only: can frozen Lite0 features tell ID >= 300 from ID < 300?",
        "auc": summarize(era, res, n_boot, seed)["all"]["auc"],
    }


def old_only_probe(
    feats: dict[str, F32], dev: Cohort, k: int, seed: int, sets: Sequence[str], n_boot: int
) -> dict[str, Any] | None:
    """The probe trained and tested on ID < 300 patients alone (no era to learn)."""
    old = np.flatnonzero(dev.old)
    old_c = dev.take(old)
    if np.bincount(old_c.y, minlength=2).min() < k:
        return None
    folds = stratified_folds(old_c.y, k, seed)
    res = cv_probe({n: f[old] for n, f in feats.items()}, old_c, folds, seed, sets)
    return summarize(old_c, res, n_boot, seed)


def random_control(
    images: Sequence[U8], dev: Cohort, folds: list[IDX], seed: int, sets: Sequence[str], n_boot: int
) -> tuple[dict[str, Any], F64]:
    """The pre-training control: the same nested procedure on features of a randomly initialised
    Lite0 (seeded; BatchNorm statistics recomputed over the development images, labels unused)."""
    feats = probe_features(random_lite0(images, seed), images)
    res = cv_probe(feats, dev, folds, seed, sets)
    return summarize(dev, res, n_boot, seed), scores(dev, res)


def ablations(
    variants: Sequence[Variant],
    celsius: F32,
    feats: dict[str, F32],
    lite0: EfficientNetLite,
    dev: Cohort,
    folds: list[IDX],
    seed: int,
    n_boot: int,
    done: Callable[[str, dict[str, Any]], None],
) -> None:
    """Each variant with the session-1 feature set (`last`) and a nested penalty; `done(name,
    summary)` after each (the study writes its report there)."""
    for v in variants:
        f = feats if v == DEFAULT_VARIANT else probe_features(lite0, render_variant(celsius, v))
        res = cv_probe(f, dev, folds, seed, ("last",))
        s = {
            **summarize(dev, res, n_boot, seed),
            "servable": v.servable,
            "preprocessing": v.preprocessing.model_dump(mode="json"),
            "region": v.region,
        }
        log.info("%s", headline(v.name, s))
        done(v.name, s)
