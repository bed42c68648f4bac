"""Golden: the ONNX Runtime backend sees exactly the tensor jetson-inference imageNet builds.

The reference (tests/helpers/imagenet_reference.py) transcribes imageNet's preprocessing one
pixel at a time and shares no code with pipeline.preprocess; the model's probabilities must
equal ONNX Runtime run on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.classify.onnx import OnnxRuntimeClassifier
from pipeline.manifest import load_model_dir
from pipeline.preprocess import model_input
from tests.helpers.imagenet_reference import crafted, reference_tensor

# 124x248 and 76x62: sizes where float32 index math differs from exact floor(dst * in / out)
SIZES = [(37, 53), (480, 640), (1, 1), (224, 224), (300, 150), (124, 248), (76, 62)]


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_gray_frame_tensor_is_imagenets(h: int, w: int) -> None:
    image = crafted(h, w)
    assert np.array_equal(model_input(image), reference_tensor(image))


@pytest.mark.parametrize(("h", "w"), [(37, 53), (300, 150), (480, 640)])
def test_rgb_frame_tensor_is_imagenets(h: int, w: int) -> None:
    base = crafted(h, w)
    rgb = np.stack([base, 255 - base, base // 3], axis=2)
    assert np.array_equal(model_input(rgb), reference_tensor(rgb))


def test_every_byte_value_maps_like_imagenet() -> None:
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = np.kron(ramp, np.ones((14, 14), dtype=np.uint8))  # 224x224: identity resize
    tensor = model_input(image)
    assert np.array_equal(tensor, reference_tensor(image))
    assert tensor[0, 0, 0, 0] == pytest.approx(-0.485 / 0.229, abs=1e-6)
    assert tensor[0, 2, -1, -1] == pytest.approx((1.0 - 0.406) / 0.225, abs=1e-6)


def test_float32_index_math_is_what_the_reference_pins() -> None:
    # guards the reference itself: at these sizes exact arithmetic picks other source pixels
    exact_cols = [x * 248 // 224 for x in range(224)]
    float_cols = [int(np.float32(x) * (np.float32(248) / np.float32(224))) for x in range(224)]
    assert exact_cols != float_cols
    image = crafted(124, 248)
    exact = np.array([[image[y * 124 // 224, c] for c in exact_cols] for y in range(224)])
    assert not np.array_equal(model_input(image)[0, 0], model_input(exact)[0, 0])


@pytest.mark.parametrize(("h", "w"), [(37, 53), (480, 640), (1, 1), (224, 224), (300, 150)])
def test_backend_probabilities_equal_onnxruntime_on_reference(
    tiny_model: Path, h: int, w: int
) -> None:
    clf = OnnxRuntimeClassifier(load_model_dir(tiny_model), threshold=0.0, top_k=0)
    session = ort.InferenceSession(
        str(tiny_model / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    image = crafted(h, w)
    expected = session.run(["output_0"], {"input_0": reference_tensor(image)})[0].reshape(-1)
    pred = clf.classify(image)
    assert pred.scores == tuple(float(p) for p in expected)
    assert pred.index == int(np.argmax(expected))
