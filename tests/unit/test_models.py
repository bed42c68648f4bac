"""training.models (architectures, heads, weights files) and training.presets (transforms)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pipeline.preprocess import model_input
from tests.helpers.imagenet_reference import crafted, reference_tensor
from training import models
from training.presets import EvalPreset, TrainPreset


@pytest.mark.parametrize("arch", list(models.HEADS))
def test_every_architecture_gets_a_head_for_our_classes(arch: str) -> None:
    model = models.build_model(arch, 3, "none")
    head = model.get_submodule(models.HEADS[arch])
    assert isinstance(head, torch.nn.Linear) and head.out_features == 3


def test_forward_gives_one_row_per_image_and_softmax_wrapper_sums_to_one() -> None:
    model = models.build_model("mobilenet_v3_small", 2, "none").eval()
    with torch.no_grad():
        probs = models.WithSoftmax(model)(torch.randn(2, 3, 224, 224))
    assert probs.shape == (2, 2)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-6)


def test_unknown_architecture_lists_the_choices() -> None:
    with pytest.raises(models.ModelBuildError) as err:
        models.build_model("vgg99", 2)
    msg = str(err.value)
    assert "vgg99" in msg and all(a in msg for a in models.HEADS) and "\n" not in msg


def test_one_class_is_refused() -> None:
    with pytest.raises(models.ModelBuildError, match="at least 2 classes"):
        models.build_model("resnet18", 1)


def test_imagenet_offline_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # The download itself cannot be exercised offline (nor should a test fetch 45 MB online).
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(models.ModelBuildError) as err:
        models.build_model("resnet18", 2, "imagenet")
    msg = str(err.value)
    assert "cannot download ImageNet weights for resnet18" in msg
    assert "--weights none" in msg and "\n" not in msg


def test_imagenet_style_file_loads_trunk_and_reinitialises_head(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(source.state_dict(), path)
    model = models.build_model("resnet18", 2, str(path))
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], source.layer4[1].conv2.weight)
    assert model.fc.out_features == 2


def test_training_checkpoint_loads(tmp_path: Path) -> None:
    source = models.build_model("mobilenet_v3_small", 2, "none")
    path = tmp_path / "last.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    model = models.build_model("mobilenet_v3_small", 2, str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_weights_of_another_architecture_name_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(models.ModelBuildError) as err:
        models.build_model("resnet18", 2, str(path))
    msg = str(err.value)
    assert str(path) in msg and "does not fit resnet18" in msg and "key 'conv1.weight'" in msg


def test_mis_shaped_trunk_tensor_names_key_and_shapes(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(num_classes=2).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(models.ModelBuildError) as err:
        models.build_model("resnet18", 2, str(path))
    msg = str(err.value)
    assert "layer1.0.conv1.weight" in msg and "(64, 64, 1, 1)" in msg and "(64, 64, 3, 3)" in msg


def test_missing_and_garbage_weights_files(tmp_path: Path) -> None:
    with pytest.raises(models.ModelBuildError, match="weights file not found"):
        models.build_model("resnet18", 2, str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(models.ModelBuildError, match="not a readable PyTorch weights file"):
        models.build_model("resnet18", 2, str(junk))


def _gray() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64), dtype=np.uint8)


@pytest.mark.parametrize(("h", "w"), [(48, 64), (480, 640), (124, 248)])
def test_eval_preset_builds_the_tensor_jetson_inference_builds(h: int, w: int) -> None:
    # the reference is imageNet's preprocessing written out per pixel, independent of pipeline/
    gray = crafted(h, w)
    np.testing.assert_array_equal(EvalPreset()(gray), reference_tensor(gray)[0])


def test_train_preset_ends_with_model_input_of_an_uint8_image() -> None:
    preset = TrainPreset()
    gray = _gray()
    aug = preset.augment(gray, np.random.default_rng(5))
    assert aug.dtype == np.uint8 and aug.shape == gray.shape
    x = preset(gray, np.random.default_rng(5))
    np.testing.assert_array_equal(x, model_input(aug)[0])  # same draw -> same tensor
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    other = preset(gray, np.random.default_rng(6))
    assert not np.array_equal(x, other)


def test_train_preset_without_jitter_is_identity_and_flip_mirrors() -> None:
    gray = _gray()
    still = TrainPreset(
        hflip_prob=0.0, rotation_deg=0, scale=(1, 1), translate_frac=0, brightness=0, contrast=0
    )
    np.testing.assert_array_equal(still.augment(gray, np.random.default_rng(1)), gray)
    flip = TrainPreset(
        hflip_prob=1.0, rotation_deg=0, scale=(1, 1), translate_frac=0, brightness=0, contrast=0
    )
    np.testing.assert_array_equal(flip.augment(gray, np.random.default_rng(1)), gray[:, ::-1])
