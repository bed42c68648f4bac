"""training.metrics against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics


def test_confusion_matrix_rows_are_truth_columns_prediction() -> None:
    cm = metrics.confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 2)
    assert cm.tolist() == [[1, 1], [1, 2]]


def test_accuracy_sensitivity_specificity_by_hand() -> None:
    y = [1, 1, 1, 0, 0]
    p = [1, 0, 1, 0, 1]
    assert metrics.accuracy(y, p) == pytest.approx(3 / 5)
    assert metrics.sensitivity(y, p) == pytest.approx(2 / 3)
    assert metrics.specificity(y, p) == pytest.approx(1 / 2)


def test_undefined_rates_are_nan_not_zero() -> None:
    assert math.isnan(metrics.sensitivity([0, 0], [1, 0]))  # no positives
    assert math.isnan(metrics.specificity([1, 1], [1, 0]))  # no negatives
    assert math.isnan(metrics.roc_auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert metrics.specificity([0, 0], [1, 0]) == pytest.approx(0.5)


def test_auc_perfect_inverted_and_ties() -> None:
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    # pairs (pos, neg): (0.5,0.5) tie=1/2, (0.5,0.2) win, (0.7,0.5) win, (0.7,0.2) win -> 3.5/4
    assert metrics.roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.7, 0.2]) == pytest.approx(3.5 / 4)
    # all scores equal: every pair ties
    assert metrics.roc_auc([1, 0, 1, 0, 0], [0.3] * 5) == pytest.approx(0.5)


def test_auc_matches_pairwise_definition_on_random_data() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert metrics.roc_auc(y, s) == pytest.approx(pairs / (pos.size * neg.size))


def test_roc_curve_points_and_trapezoid_area_equal_auc() -> None:
    y = [1, 0, 1, 0]
    s = [0.5, 0.5, 0.7, 0.2]
    fpr, tpr, thr = metrics.roc_curve(y, s)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert thr[0] == np.inf and thr[1:].tolist() == [0.7, 0.5, 0.2]
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(y, s))


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics.sensitivity([0, 2], [0, 1])
    with pytest.raises(ValueError, match="class indices"):
        metrics.confusion_matrix([0, 3], [0, 1], 2)


def _stat(y: np.ndarray, p: np.ndarray, s: np.ndarray):  # type: ignore[no-untyped-def]
    return lambda idx: metrics.binary_metrics(y[idx], p[idx], s[idx])


def test_bootstrap_contains_point_and_is_deterministic_per_seed() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    s = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1)
    p = (s > 0.5).astype(int)
    groups = [np.array([i]) for i in range(60)]
    a = metrics.bootstrap(groups, _stat(y, p, s), 300, seed=7)
    b = metrics.bootstrap(groups, _stat(y, p, s), 300, seed=7)
    c = metrics.bootstrap(groups, _stat(y, p, s), 300, seed=8)
    for name in metrics.METRIC_NAMES:
        iv = a[name]
        assert iv.low <= iv.value <= iv.high
        assert iv.high > iv.low  # real spread, not a degenerate interval
        assert iv == b[name]
    assert any(a[n] != c[n] for n in metrics.METRIC_NAMES)
    assert a["auc"].value == pytest.approx(metrics.roc_auc(y, s))


def test_bootstrap_resamples_whole_patients() -> None:
    # two patients, each with 3 identical-label images: a resample holds 0, 3 or 6 positives
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    seen_sizes: set[int] = set()

    def stat(idx: np.ndarray) -> dict[str, float]:
        seen_sizes.add(int(y[idx].sum()))
        return {"auc": metrics.roc_auc(y[idx], s[idx])}

    out = metrics.bootstrap([np.arange(3), np.arange(3, 6)], stat, 50, seed=1)
    assert seen_sizes <= {0, 3, 6}
    # resamples with a single patient have one class: AUC undefined and skipped
    assert 0 < out["auc"].n_valid < 50
    assert out["auc"].low == out["auc"].high == 1.0


def test_group_indices_and_patient_means() -> None:
    keys, groups = metrics.group_indices(["7", "3", "7", "3", "9"])
    assert keys == ["7", "3", "9"]
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [0.8, 0.2], [0.5, 0.5]])
    means = metrics.mean_by_group(probs, groups)
    np.testing.assert_allclose(means, [[0.3, 0.7], [0.7, 0.3], [0.5, 0.5]])


def test_interval_as_dict_reports_nan_as_none() -> None:
    iv = metrics.Interval(value=float("nan"), low=float("nan"), high=float("nan"), n_valid=0)
    assert iv.as_dict() == {"value": None, "ci95": [None, None], "n_valid": 0}


# ---------------------------------------------------------------- evaluate's report arithmetic


def _scored(threshold: float | None = None):  # type: ignore[no-untyped-def]
    from training.evaluate import Scored

    # patient 5 has two images (mean p_sick 0.7), patient 310 one; patient 7 is healthy
    return Scored(
        paths=["a", "b", "c", "d"],
        patient_ids=["5", "5", "310", "7"],
        targets=np.array([1, 1, 1, 0]),
        probs=np.array([[0.6, 0.4], [0.0, 1.0], [0.45, 0.55], [0.8, 0.2]]),
        labels=("healthy", "sick"),
        positive=1,
        threshold=threshold,
    )


def test_report_per_image_per_patient_and_old_acquisitions() -> None:
    from training.evaluate import full_report

    r = full_report(_scored(), n_boot=50, seed=0)
    img, pat = r["all"]["per_image"], r["all"]["per_patient"]
    assert img["confusion_matrix"] == [[1, 0], [1, 2]]  # image "a" (0.4) is missed
    assert pat["confusion_matrix"] == [[1, 0], [0, 2]]  # patient 5's mean 0.7 is caught
    assert img["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert pat["sensitivity"]["value"] == 1.0 and pat["auc"]["value"] == 1.0
    old = r["id_below_300"]
    assert old["n_patients"] == 2 and old["n_images"] == 3  # patient 310 left out
    assert r["decision"].startswith("argmax")


def test_report_threshold_changes_the_decision_not_the_auc() -> None:
    from training.evaluate import decide, full_report

    probs = _scored().probs
    np.testing.assert_array_equal(decide(probs, 1, 0.3), [1, 1, 1, 0])
    np.testing.assert_array_equal(decide(probs, 1, None), [0, 1, 1, 0])
    loose = full_report(_scored(threshold=0.3), n_boot=20, seed=0)["all"]["per_image"]
    strict = full_report(_scored(), n_boot=20, seed=0)["all"]["per_image"]
    assert loose["sensitivity"]["value"] == 1.0 and strict["sensitivity"]["value"] < 1.0
    assert loose["auc"] == strict["auc"]


def test_only_one_era_gives_no_old_acquisition_section() -> None:
    from training.evaluate import full_report, subset

    only_old = subset(_scored(), lambda p: p != "310")
    assert "id_below_300" not in full_report(only_old, n_boot=10, seed=0)


def test_data_labels_the_model_lacks_are_one_line_errors() -> None:
    from training.evaluate import EvaluationError, label_targets

    assert label_targets(["sick", "healthy"], ("healthy", "sick"), "m") == [1, 0]
    with pytest.raises(EvaluationError, match="'benign' is not among the model's labels"):
        label_targets(["benign"], ("healthy", "sick"), "m")
