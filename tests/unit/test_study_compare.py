"""The comparison's parts: rendering-augmentation rows, the warm-started penalty path, ensembles,
the seed-averaged AUC, the 8-bit renderings, and early stopping on inner folds only."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.preprocess import PreprocessConfig, render
from pipeline.types import Frame, FrameKind
from training import calibration, metrics
from training.study import cv, probe
from training.study.cohort import Cohort
from training.study.finetune import JPEG, rows_of_fold
from training.study.renderings import MATRIX, Rendering, jpeg_round_trip, random_rendering
from training.study.run import chosen_candidate


def _cohort(n: int = 40) -> Cohort:
    y = (np.arange(n) % 5 < 2).astype(np.int64)
    ids = [str(100 + i) if i % 2 == 0 or y[i] == 0 else str(300 + i) for i in range(n)]
    return Cohort([None] * n, ids, y)


def _feats(y: np.ndarray, d: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("last", "last@flip", "flip_mean"):
        x = rng.normal(size=(len(y), d)).astype(np.float32)
        x[:, 0] += 1.5 * y
        out[name] = x
    return out


def test_augmentation_adds_each_renderings_rows_and_mirrors_for_last() -> None:
    y = _cohort(10).y
    bank = probe.FeatureBank(_feats(y, 4, 0), (_feats(y, 4, 1), _feats(y, 4, 2)))
    idx = np.arange(6)
    x, yy = probe.design(bank, "flip_mean", idx, y)
    assert x.shape == (18, 4) and yy.tolist() == y[idx].tolist() * 3
    x, yy = probe.design(bank, "last", idx, y)
    assert x.shape == (36, 4)
    np.testing.assert_array_equal(x[6:12], bank.base["last@flip"][idx])
    np.testing.assert_array_equal(x[12:18], bank.augment[0]["last"][idx])
    assert bank.take(idx).augment[1]["last"].shape == (6, 4)


def test_warm_started_path_matches_cold_fits() -> None:
    y = _cohort().y
    x = _feats(y, 12, 3)["flip_mean"]
    lambdas = (10.0, 0.1, 1e-3)
    path = probe.penalty_path(x[:30], y[:30], x[30:], lambdas)
    for row, lam in zip(path, lambdas, strict=True):
        cold = probe.fit_probe(x[:30], y[:30], lam).logit(x[30:])
        np.testing.assert_allclose(row, cold, rtol=2e-3, atol=1e-3)  # within solver tolerance


def test_ensemble_averages_members_and_thresholds_their_inner_mean() -> None:
    cohort = _cohort(20)
    train, test = np.arange(12), np.arange(12, 20)
    rng = np.random.default_rng(0)
    members = [
        [
            cv.FoldResult(
                test, rng.random(8), 0.5, {}, train, {"jpeg": rng.random(8)}, rng.random(12)
            )
        ]
        for _ in range(3)
    ]
    (fold,) = cv.ensemble(members, cohort)
    np.testing.assert_allclose(fold.prob, np.mean([m[0].prob for m in members], axis=0))
    np.testing.assert_allclose(
        fold.extra["jpeg"], np.mean([m[0].extra["jpeg"] for m in members], axis=0)
    )
    inner = np.mean([m[0].inner_prob for m in members], axis=0)
    assert fold.threshold == calibration.choose_threshold(cohort.y[train], inner, 0.9).value


def test_seed_mean_auc_is_the_mean_of_the_seeds_aucs() -> None:
    cohort = _cohort()
    rng = np.random.default_rng(1)
    oof = [rng.random(40) + 0.3 * cohort.y for _ in range(3)]
    got = cv.seed_mean_auc(cohort, oof, 200, 0)
    want = np.mean([metrics.roc_auc(cohort.y, p) for p in oof])
    assert got["all"]["value"] == pytest.approx(want)
    lo, hi = got["all"]["ci95"]
    assert lo < want < hi
    old = cohort.old
    want_old = np.mean([metrics.roc_auc(cohort.y[old], p[old]) for p in oof])
    assert got["id_below_300"]["value"] == pytest.approx(want_old)


def _celsius() -> np.ndarray:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    c = 24.0 + 10.0 * np.exp(-(((xx - 80) / 50) ** 2) - ((yy - 60) / 40) ** 2)
    return (c + rng.normal(0, 0.2, c.shape)).astype(np.float32)


def _frame(pixels: np.ndarray, kind: FrameKind) -> Frame:
    return Frame(
        pixels=pixels, kind=kind, index=0, source_id="t", capture_ts=0.0, capture_mono_ns=0
    )


def test_renderings_take_the_pipelines_own_paths() -> None:
    c, cfg = _celsius(), PreprocessConfig()
    np.testing.assert_array_equal(MATRIX(c, cfg), render(_frame(c, FrameKind.CELSIUS), cfg))
    jpeg = Rendering("min-max JPEG q75", None, 75)
    gray = jpeg_round_trip(
        render(_frame(c, FrameKind.CELSIUS), PreprocessConfig(window_c=None, equalization="none")),
        75,
    )
    np.testing.assert_array_equal(jpeg(c, cfg), render(_frame(gray, FrameKind.GRAY8), cfg))
    assert not np.array_equal(jpeg(c, cfg), MATRIX(c, cfg))  # the shift the study measures
    a = random_rendering(c, cfg, np.random.default_rng(5))
    b = random_rendering(c, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_early_stopping_reads_inner_scores_only() -> None:
    cohort = _cohort(20)
    test, train = np.arange(15, 20), np.arange(15)
    y = cohort.y[train].astype(np.float64)
    epochs = 5
    quality = np.array([0.0, 0.1, 1.0, 0.1, 0.0])  # inner separation peaks at epoch 3
    rng = np.random.default_rng(3)
    val = np.stack([1 / (1 + np.exp(-(3 * q * y + rng.normal(0, 0.5, 15)))) for q in quality])
    tests = {k: rng.random((epochs, 5)) for k in ("test", "test_flip", "test_jpeg")}
    tests["test"][4] = 0.0  # the test scores of other epochs cannot sway the choice
    fold = {"train_idx": train, "oof": {"val": val, "val_flip": val}, "tests": tests}
    rows = rows_of_fold(cohort, fold, test, epochs, fixed_epoch=4)
    stop = rows["early stopping"]
    assert stop.chosen["epoch"] == 3
    np.testing.assert_array_equal(stop.prob, tests["test"][2])
    np.testing.assert_array_equal(stop.extra[JPEG.name], tests["test_jpeg"][2])
    flip = rows["early stopping + flip averaging"]
    np.testing.assert_allclose(flip.prob, (tests["test"][2] + tests["test_flip"][2]) / 2)
    np.testing.assert_array_equal(rows["4 epochs, no early stopping"].prob, tests["test"][3])


def test_ship_rule_picks_the_best_complete_candidate_and_none_without_a_study() -> None:
    def row(all_: float | None, old: float) -> dict[str, object]:
        return {"matrix": {"all": {"auc": {"mean": all_}}, "id_below_300": {"auc": {"mean": old}}}}

    assert chosen_candidate({}) is None  # a fresh clone: `--ship` falls back to its default
    report = {"candidates": {"a": row(0.9, 0.7), "b": row(0.85, 0.8), "c": row(None, 0.9)}}
    assert chosen_candidate(report)["candidate"] == "b"  # (0.85 + 0.8) / 2 > (0.9 + 0.7) / 2
