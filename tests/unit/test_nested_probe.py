"""The study's nested probe: the outer test fold never reaches any choice, the penalty grid reports
its edges, Platt scaling folds into the probe, inner folds keep label and era balanced."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("torch")

from training import study


def _cohort(n: int = 40, seed: int = 0) -> tuple[study.Cohort, dict[str, np.ndarray]]:
    """n patients, 40% sick, half of the sick with ID >= 300; each feature set has a weak signal."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 5 < 2).astype(np.int64)
    ids = [str(100 + i) if i % 2 == 0 or y[i] == 0 else str(300 + i) for i in range(n)]
    cohort = study.Cohort([None] * n, ids, y)
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
    folds = study._inner_folds(cohort.y, 4, seed=3)
    sets = study.ALL_SETS
    grid = (10.0, 1.0, 0.1)
    first = study.cv_probe(feats, cohort, folds, 0, sets, lambdas=grid)
    for r, test in zip(first, folds, strict=True):
        assert not set(r.train_idx.tolist()) & set(test.tolist())
        assert sorted(r.train_idx.tolist() + test.tolist()) == list(range(len(cohort.y)))

    # scramble fold 0's features and flip its labels: every choice of fold 0 must stay the same
    junk = {k: v.copy() for k, v in feats.items()}
    rng = np.random.default_rng(7)
    for k in junk:
        junk[k][folds[0]] = rng.normal(50.0, 9.0, size=junk[k][folds[0]].shape)
    flipped = study.Cohort(cohort.items, cohort.patient_ids, cohort.y.copy())
    flipped.y[folds[0]] = 1 - flipped.y[folds[0]]
    second = study.cv_probe(junk, flipped, folds, 0, sets, lambdas=grid)
    assert second[0].chosen == first[0].chosen
    assert second[0].threshold == first[0].threshold
    # ... while a fold that trained on the scrambled patients does see them (the test can fail)
    assert any(a.chosen != b.chosen for a, b in zip(first[1:], second[1:], strict=True))


def test_grid_edge_is_named_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    grid = (100.0, 1.0, 0.01)
    assert study.grid_edge(100.0, grid) == "strongest"
    assert study.grid_edge(0.01, grid) == "weakest"
    assert study.grid_edge(1.0, grid) is None
    cohort, feats = _cohort()
    with caplog.at_level(logging.WARNING, logger="training.study"):
        fit = study.nested_fit(feats, cohort.y, cohort.old, 0, ("last",), (5.0,), where="here")
    assert fit.chosen["lambda_grid_edge"] == "strongest"
    assert any("here: L2 penalty 5 chosen at the strongest edge" in m for m in caplog.messages)


def test_default_grid_is_wide_and_log_spaced() -> None:
    lams = np.asarray(study.PROBE_LAMBDAS)
    assert lams.max() / lams.min() >= 1e6
    ratios = lams[:-1] / lams[1:]
    assert np.allclose(ratios, ratios[0]) and ratios[0] > 1  # strongest first, even log steps


def test_platt_scaling_folds_into_the_probe() -> None:
    cohort, feats = _cohort()
    probe = study.fit_probe(feats["last"], cohort.y, 1.0)
    z = probe.logit(feats["last"])
    a, c = study.fit_platt(z, cohort.y)
    assert a > 0
    scaled = probe.rescaled(a, c)
    np.testing.assert_allclose(scaled.logit(feats["last"]), a * z + c, rtol=1e-9, atol=1e-9)
    # unweighted Platt scaling brings the mean p(sick) to the prevalence (0.4 here)
    assert abs(float(np.mean(scaled.predict(feats["last"]))) - cohort.y.mean()) < 0.05


def test_inner_folds_balance_label_and_era() -> None:
    cohort, _ = _cohort(n=80)
    strata = 2 * cohort.y + cohort.old.astype(np.int64)
    folds = study._stratified_folds(strata, 4, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(80))
    for s in np.unique(strata):
        counts = [int(np.sum(strata[f] == s)) for f in folds]
        assert max(counts) - min(counts) <= 1, (s, counts)
