"""Calibration and threshold choice, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import calibration


def test_brier_score_by_hand() -> None:
    # (0.1^2 + 0.2^2 + 0.4^2 + 0.3^2) / 4 = 0.3 / 4
    assert calibration.brier_score([0, 1, 1, 0], [0.1, 0.8, 0.6, 0.3]) == pytest.approx(0.075)
    assert calibration.brier_score([1, 0], [0.5, 0.5]) == pytest.approx(0.25)
    assert math.isnan(calibration.brier_score([], []))


def test_brier_rejects_non_probabilities() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        calibration.brier_score([0, 1], [0.2, 1.5])
    with pytest.raises(ValueError, match="only 0 and 1"):
        calibration.brier_score([0, 2], [0.2, 0.5])


def test_reliability_bins_and_ece_by_hand() -> None:
    rel = calibration.reliability([0, 1, 1, 1], [0.1, 0.2, 0.7, 0.9], n_bins=2)
    assert rel.count.tolist() == [2, 2]
    assert rel.mean_prob.tolist() == pytest.approx([0.15, 0.8])
    assert rel.frac_positive.tolist() == pytest.approx([0.5, 1.0])
    # (|0.5 - 0.15| * 2 + |1.0 - 0.8| * 2) / 4
    assert rel.ece() == pytest.approx(0.275)


def test_reliability_edges_and_empty_bins() -> None:
    rel = calibration.reliability([1, 0, 1], [1.0, 0.5, 0.0], n_bins=4)
    assert rel.count.tolist() == [1, 0, 1, 1]  # 1.0 falls in the last bin, 0.5 in the third
    assert math.isnan(rel.mean_prob[1]) and math.isnan(rel.frac_positive[1])
    assert rel.as_dict()["mean_prob"][1] is None


def test_threshold_is_highest_reaching_target_by_hand() -> None:
    pos = [0.95, 0.90, 0.85, 0.80, 0.75, 0.70, 0.65, 0.60, 0.55, 0.50]
    neg = [0.6, 0.3, 0.1]
    y = [1] * len(pos) + [0] * len(neg)
    p = pos + neg
    # 9 of 10 positives needed: the 9th highest positive is 0.55, the next lower score 0.50
    t = calibration.choose_threshold(y, p, 0.90)
    assert t.value == pytest.approx(0.525)
    assert t.sensitivity == pytest.approx(0.9)
    assert t.specificity == pytest.approx(2 / 3)
    # all positives: the lowest positive is 0.50, the next lower score 0.3
    t = calibration.choose_threshold(y, p, 1.0)
    assert t.value == pytest.approx(0.4)
    assert (t.sensitivity, t.n_positive, t.n_negative) == (1.0, 10, 3)


def test_threshold_uses_the_pipelines_rule() -> None:
    # the pipeline calls positive when p >= threshold; nothing below the needed positive score
    t = calibration.choose_threshold([1, 1, 0], [0.7, 0.7, 0.9], 1.0)
    assert t.value == pytest.approx(0.7)
    assert calibration.rates_at([1, 1, 0], [0.7, 0.7, 0.9], t.value) == (1.0, 0.0)


@pytest.mark.parametrize("seed", range(20))
def test_threshold_is_maximal_on_random_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=40)
    y[:3] = 1
    p = np.round(rng.random(40), 2)  # ties on purpose
    t = calibration.choose_threshold(y, p, 0.9)
    sens, _ = calibration.rates_at(y, p, t.value)
    assert sens >= 0.9
    higher = p[p > t.value]
    if higher.size:  # the next distinct score up no longer reaches the target
        assert calibration.rates_at(y, p, float(higher.min()) + 1e-12)[0] < 0.9


def test_threshold_needs_positives() -> None:
    with pytest.raises(ValueError, match="without positive"):
        calibration.choose_threshold([0, 0], [0.2, 0.4])
    with pytest.raises(ValueError, match="min_sensitivity"):
        calibration.choose_threshold([0, 1], [0.2, 0.4], 0.0)
