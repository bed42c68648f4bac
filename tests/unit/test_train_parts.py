"""Pieces of training.train that decide what the model sees: epoch order, limits, class weights,
BatchNorm recalibration, and the train-config checks of the CLI."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.preprocess import model_input
from training import datasets, train, train_config, train_data
from training.datasets import ThermoItem


def test_epoch_order_repeats_every_image_equally_with_distinct_indices() -> None:
    order = train_data.epoch_order(5, 12, torch.Generator().manual_seed(0))
    assert len(order) == 15 and len(set(order)) == 15
    assert Counter(i % 5 for i in order) == {i: 3 for i in range(5)}
    again = train_data.epoch_order(5, 12, torch.Generator().manual_seed(0))
    other = train_data.epoch_order(5, 12, torch.Generator().manual_seed(1))
    assert order == again and order != other
    assert sorted(train_data.epoch_order(7, 0, torch.Generator().manual_seed(0))) == list(range(7))


def test_class_weights_balance_the_loss() -> None:
    w = train.class_weights([0, 0, 0, 1], 2)
    np.testing.assert_allclose(w.numpy(), [4 / 6, 4 / 2], rtol=1e-6)
    # each class then contributes the same total weight: 3 * w0 == 1 * w1
    assert 3 * w[0].item() == pytest.approx(w[1].item())


def test_label_space_keeps_healthy_sick_order() -> None:
    assert train_data.label_space(["sick", "healthy", "sick"]) == ("healthy", "sick")
    assert train_data.label_space(["sick"]) == ("healthy", "sick")  # then check_classes refuses it
    assert train_data.label_space(["b", "a"]) == ("a", "b")


def _items(spec: dict[str, tuple[str, int]]) -> list[ThermoItem]:
    return [
        ThermoItem(path=Path(f"T{p}.{k}.txt"), patient_id=p, label=label)
        for p, (label, n) in spec.items()
        for k in range(n)
    ]


def test_limit_images_takes_whole_patients_of_both_classes() -> None:
    items = _items({"1": ("healthy", 2), "2": ("healthy", 1), "3": ("sick", 2), "4": ("sick", 1)})
    chosen = datasets.limit_images(items, 4, seed=0)
    assert len(chosen) <= 4
    per_patient = Counter(it.patient_id for it in chosen)
    full = Counter(it.patient_id for it in items)
    assert all(per_patient[p] == full[p] for p in per_patient)  # never half a patient
    assert {it.label for it in chosen} == {"healthy", "sick"}
    assert datasets.limit_images(items, 4, seed=0) == chosen


def test_check_classes_names_the_empty_class() -> None:
    items = _items({"1": ("healthy", 1)})
    with pytest.raises(
        train_data.TrainError, match="class 'sick' has no images in the train split"
    ):
        train_data.check_classes(items, ("healthy", "sick"), "train split", Path("data"))


def test_batchnorm_recalibration_gives_exact_training_statistics() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    bn = torch.nn.BatchNorm2d(4)
    model = torch.nn.Sequential(conv, bn)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (30, 40), dtype=np.uint8) for _ in range(5)]
    train.recalibrate_batchnorm(model, images)
    with torch.no_grad():
        feats = conv(torch.from_numpy(np.concatenate([model_input(im) for im in images])))
    np.testing.assert_allclose(
        bn.running_mean.numpy(), feats.mean(dim=(0, 2, 3)).numpy(), atol=1e-5
    )
    assert bn.momentum == 0.1 and not model.training


def test_config_from_args_window_minmax_and_bad_values() -> None:
    parser = argparse.ArgumentParser()
    train_config.add_arguments(parser)
    base = ["--data", "d", "--out", "o"]
    cfg = train_config.config_from_args(parser.parse_args([*base, "--window", "25", "36"]))
    assert cfg.preprocessing.window_c == (25.0, 36.0)
    cfg = train_config.config_from_args(
        parser.parse_args([*base, "--minmax", "--equalization", "clahe"])
    )
    assert cfg.preprocessing.window_c is None and cfg.preprocessing.equalization == "clahe"
    with pytest.raises(ValueError, match="epochs"):
        train_config.config_from_args(parser.parse_args([*base, "--epochs", "0"]))
