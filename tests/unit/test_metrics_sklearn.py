"""The study's own AUC, ROC curve and Brier score agree with scikit-learn's, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from training import calibration, metrics


def _cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    out = []
    for n in (5, 20, 200):
        y = rng.integers(0, 2, size=n)
        y[:2] = (0, 1)  # both classes present
        out.append((y, rng.random(n)))  # continuous scores
        out.append((y, np.round(rng.random(n), 1)))  # many ties
    return out


@pytest.mark.parametrize(("y", "s"), _cases())
def test_auc_matches_sklearn(y: np.ndarray, s: np.ndarray) -> None:
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize(("y", "s"), _cases())
def test_roc_curve_matches_sklearn(y: np.ndarray, s: np.ndarray) -> None:
    fpr, tpr, thr = metrics.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    np.testing.assert_allclose(thr[1:], sk_thr[1:], atol=1e-12)  # both start above every score
    assert thr[0] > s.max() and sk_thr[0] > s.max()


@pytest.mark.parametrize(("y", "s"), _cases())
def test_brier_matches_sklearn(y: np.ndarray, s: np.ndarray) -> None:
    assert calibration.brier_score(y, s) == pytest.approx(brier_score_loss(y, s), abs=1e-12)
