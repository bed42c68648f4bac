"""The study's nested probe: the outer test fold never reaches any choice, the penalty grid reports
its edges, the scikit-learn fits minimise the objectives the study states, Platt scaling folds
into the probe, and the folds keep label and era balanced."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from training.study import cv, probe
from training.study.cohort import Cohort

ALL_SETS = ("last", "flip_mean", "flip_mean+asym", "two_blocks")


def _cohort(n: int = 40, seed: int = 0) -> tuple[Cohort, dict[str, np.ndarray]]:
    """n patients, 40% sick, half of the sick with ID >= 300; each feature set has a weak signal."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 5 < 2).astype(np.int64)
    ids = [str(100 + i) if i % 2 == 0 or y[i] == 0 else str(300 + i) for i in range(n)]
    cohort = Cohort([None] * n, ids, y)
    feats = {}
    for name, d in (("last", 12), ("last@flip", 12), ("flip_mean", 12)):
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, 0] += 1.5 * y
        feats[name] = x
    for name, d in (("flip_mean+asym", 16), ("two_blocks", 20)):
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, 1] += 1.0 * y
        feats[name] = x
    return cohort, feats


def test_outer_test_fold_never_reaches_the_nested_choices() -> None:
    cohort, feats = _cohort()
    folds = probe.stratified_folds(cohort.y, 4, seed=3)
    grid = (10.0, 1.0, 0.1)
    first = cv.cv_probe(feats, cohort, folds, 0, ALL_SETS, lambdas=grid)
    for r, test in zip(first, folds, strict=True):
        assert not set(r.train_idx.tolist()) & set(test.tolist())
        assert sorted(r.train_idx.tolist() + test.tolist()) == list(range(len(cohort.y)))

    # scramble fold 0's features and flip its labels: every choice of fold 0 must stay the same
    junk = {k: v.copy() for k, v in feats.items()}
    rng = np.random.default_rng(7)
    for k in junk:
        junk[k][folds[0]] = rng.normal(50.0, 9.0, size=junk[k][folds[0]].shape)
    flipped = Cohort(cohort.items, cohort.patient_ids, cohort.y.copy())
    flipped.y[folds[0]] = 1 - flipped.y[folds[0]]
    second = cv.cv_probe(junk, flipped, folds, 0, ALL_SETS, lambdas=grid)
    assert second[0].chosen == first[0].chosen
    assert second[0].threshold == first[0].threshold
    # ... while a fold that trained on the scrambled patients does see them (the test can fail)
    assert any(a.chosen != b.chosen for a, b in zip(first[1:], second[1:], strict=True))


def test_grid_edge_is_named_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    grid = (100.0, 1.0, 0.01)
    assert probe.grid_edge(100.0, grid) == "strongest"
    assert probe.grid_edge(0.01, grid) == "weakest"
    assert probe.grid_edge(1.0, grid) is None
    cohort, feats = _cohort()
    with caplog.at_level(logging.WARNING, logger="training.study.probe"):
        fit = probe.nested_fit(feats, cohort.y, cohort.old, 0, ("last",), (5.0,), where="here")
    assert fit.chosen["lambda_grid_edge"] == "strongest"
    assert any("here: L2 penalty 5 chosen at the strongest edge" in m for m in caplog.messages)


def test_default_grid_is_wide_and_log_spaced() -> None:
    lams = np.asarray(probe.PROBE_LAMBDAS)
    assert lams.max() / lams.min() >= 1e6
    ratios = lams[:-1] / lams[1:]
    assert np.allclose(ratios, ratios[0]) and ratios[0] > 1  # strongest first, even log steps


@pytest.mark.parametrize("lam", [10.0, 0.1, 1e-3])
def test_probe_minimises_the_stated_objective(lam: float) -> None:
    """Gradient of mean class-weighted log-loss + lam * |w|^2 (standardised x) is zero at the
    scikit-learn solution: the C = 1 / (2 lam n) mapping is right."""
    cohort, feats = _cohort()
    x, y = feats["flip_mean"].astype(np.float64), cohort.y
    p = probe.fit_probe(x, y, lam)
    xs = (x - p.mu) / p.sd
    weight = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum())))
    r = weight * (1.0 / (1.0 + np.exp(-(xs @ p.w + p.b))) - y) / len(y)
    np.testing.assert_allclose(xs.T @ r + 2 * lam * p.w, 0.0, atol=1e-5)
    assert abs(float(r.sum())) < 1e-5  # the intercept is not penalised


def test_platt_scaling_minimises_its_objective_and_folds_into_the_probe() -> None:
    cohort, feats = _cohort()
    fitted = probe.fit_probe(feats["last"], cohort.y, 1.0)
    z = fitted.logit(feats["last"])
    a, c = probe.fit_platt(z, cohort.y)
    assert a > 0
    r = (1.0 / (1.0 + np.exp(-(a * z + c))) - cohort.y) / len(z)
    assert abs(float(r @ z + 2 * probe.PLATT_PENALTY * a)) < 1e-6
    assert abs(float(r.sum())) < 1e-6
    scaled = fitted.rescaled(a, c)
    np.testing.assert_allclose(scaled.logit(feats["last"]), a * z + c, rtol=1e-9, atol=1e-9)
    # unweighted Platt scaling brings the mean p(sick) to the prevalence (0.4 here)
    assert abs(float(np.mean(scaled.predict(feats["last"]))) - cohort.y.mean()) < 0.05


def test_folds_balance_label_and_era_and_keep_patients_whole() -> None:
    cohort, _ = _cohort(n=80)
    strata = cohort.strata
    folds = probe.stratified_folds(strata, 4, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(80))
    for s in np.unique(strata):
        counts = [int(np.sum(strata[f] == s)) for f in folds]
        assert max(counts) - min(counts) <= 1, (s, counts)
    groups = [str(i // 2) for i in range(80)]  # two pictures per patient
    folds = probe.stratified_folds(np.repeat(strata[::2], 2), 4, seed=1, groups=groups)
    for f in folds:
        assert all(i ^ 1 in set(f.tolist()) for i in f)  # both pictures of a patient together
