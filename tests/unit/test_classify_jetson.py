"""The jetson-inference backend against stand-in jetson_inference/jetson_utils modules.

The stand-ins (tests/fakes) implement imageNet's documented Python interface and run the model on
real ONNX Runtime with their own implementation of imageNet's preprocessing, so these tests check
both how the backend calls imageNet and that a Jetson would answer as the ONNX Runtime backend does.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from pipeline.classify.factory import choose_backend, load_classifier
from pipeline.classify.jetson import JetsonImageNetClassifier
from pipeline.classify.onnx import OnnxRuntimeClassifier
from pipeline.manifest import ModelError, load_model_dir, sha256_file
from tests.helpers.tiny_model import make_tiny_model_dir

FRAMES = [(37, 53), (480, 640), (1, 1), (224, 224), (300, 150)]


def _frame(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


@pytest.fixture
def jetson(fake_jetson: tuple[Any, Any], tiny_model: Path) -> JetsonImageNetClassifier:
    return JetsonImageNetClassifier(load_model_dir(tiny_model), threshold=0.01, top_k=2)


def test_imagenet_constructed_with_documented_keywords(
    fake_jetson: tuple[Any, Any], jetson: JetsonImageNetClassifier, tiny_model: Path
) -> None:
    ji, _ = fake_jetson
    assert len(ji.INSTANCES) == 1
    assert ji.INSTANCES[0].init_kwargs == {
        "network": "googlenet",  # untouched default: model= selects the custom ONNX model
        "argv": None,
        "model": str(tiny_model / "model.onnx"),
        "labels": str(tiny_model / "labels.txt"),
        "input_blob": "input_0",
        "output_blob": "output_0",
    }


def test_rgb_uint8_frame_is_handed_over(
    fake_jetson: tuple[Any, Any], jetson: JetsonImageNetClassifier
) -> None:
    ji, _ = fake_jetson
    gray = _frame(48, 64, 0)
    jetson.classify(gray)
    fmt, shape, dtype, pixels = ji.INSTANCES[0].images[-1]
    assert (fmt, shape, dtype) == ("rgb8", (48, 64, 3), "uint8")
    for c in range(3):
        assert np.array_equal(pixels[:, :, c], gray)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=2)
    jetson.classify(rgb)
    assert np.array_equal(ji.INSTANCES[0].images[-1][3], rgb)


def test_full_probability_vector_requested_and_threshold_applied(
    fake_jetson: tuple[Any, Any], tiny_model: Path
) -> None:
    ji, _ = fake_jetson
    gray = _frame(60, 80, 1)
    clf = JetsonImageNetClassifier(load_model_dir(tiny_model), threshold=0.01, top_k=2)
    pred = clf.classify(gray)
    net = ji.INSTANCES[-1]
    # imageNet returns every class (threshold 0, topK 0); our threshold is applied afterwards
    assert net.thresholds_set == [0.0]
    assert net.topk_args == [0]
    assert np.array_equal(np.array(pred.scores, dtype=np.float32), net.last_output)
    strict = JetsonImageNetClassifier(
        load_model_dir(tiny_model), threshold=min(1.0, max(pred.scores) + 1e-6), top_k=2
    )
    none = strict.classify(gray)
    assert (none.index, none.label, none.score, none.top_k) == (-1, "none", 0.0, ())


@pytest.mark.parametrize(("h", "w"), FRAMES)
def test_jetson_backend_equals_onnxruntime_backend(
    fake_jetson: tuple[Any, Any], tmp_path: Path, h: int, w: int
) -> None:
    root = make_tiny_model_dir(tmp_path / "m", labels=("healthy", "sick", "other"), seed=h)
    model = load_model_dir(root)
    jet = JetsonImageNetClassifier(model, threshold=0.01, top_k=3)
    ort_clf = OnnxRuntimeClassifier(model, threshold=0.01, top_k=3)
    for seed in range(2):
        gray = _frame(h, w, seed)
        a, b = jet.classify(gray), ort_clf.classify(gray)
        assert a.scores == b.scores
        assert (a.label, a.index, a.score, a.top_k) == (b.label, b.index, b.score, b.top_k)


def test_auto_picks_jetson_when_jetson_inference_imports(
    fake_jetson: tuple[Any, Any], tiny_model: Path
) -> None:
    assert choose_backend("auto") == "jetson"
    clf = load_classifier(tiny_model, backend="auto")
    assert isinstance(clf, JetsonImageNetClassifier)
    assert clf.backend == "jetson"
    assert clf.labels == ("healthy", "sick")


def test_mapped_buffer_allocated_once_per_frame_size(
    fake_jetson: tuple[Any, Any], jetson: JetsonImageNetClassifier
) -> None:
    _, ju = fake_jetson
    for seed in range(3):
        jetson.classify(_frame(30, 40, seed))
    jetson.classify(_frame(40, 30, 9))
    allocs = [kw for name, kw in ju.CALLS if name == "cudaAllocMapped"]
    assert allocs == [
        {"width": 40, "height": 30, "format": "rgb8"},
        {"width": 30, "height": 40, "format": "rgb8"},
    ]


def test_first_load_warns_about_engine_build_once(
    fake_jetson: tuple[Any, Any], tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = load_model_dir(tiny_model)
    with caplog.at_level(logging.WARNING, logger="pipeline.classify.jetson"):
        JetsonImageNetClassifier(model)
        first = caplog.text
        caplog.clear()
        JetsonImageNetClassifier(model)
    assert "builds one now" in first and "minutes" in first
    assert "builds one now" not in caplog.text
    assert list(tiny_model.glob("model.onnx.*.engine"))  # the fake cached its engine beside it


def test_unwritable_model_folder_fails_up_front(
    fake_jetson: tuple[Any, Any], tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ji, _ = fake_jetson
    if os.geteuid() == 0:  # root writes anywhere: make the probe fail as it would for a user

        def refuse(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("pipeline.classify.jetson.tempfile.NamedTemporaryFile", refuse)
    else:
        tiny_model.chmod(0o555)
    try:
        with pytest.raises(ModelError) as err:
            JetsonImageNetClassifier(load_model_dir(tiny_model))
    finally:
        tiny_model.chmod(0o755)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tiny_model}: model folder is not writable")
    assert "TensorRT engine" in msg
    assert ji.INSTANCES == []  # refused before imageNet started an engine build


def test_missing_jetson_inference_is_one_clear_line(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "jetson_inference", None)  # import now raises ImportError
    assert choose_backend("auto") == "onnxruntime"
    with pytest.raises(ModelError, match=r"cannot import jetson_inference .*backend: onnxruntime"):
        load_classifier(tiny_model, backend="jetson")


def test_labels_read_differently_by_imagenet_are_refused(
    fake_jetson: tuple[Any, Any], tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ji, _ = fake_jetson
    monkeypatch.setattr(ji.imageNet, "GetClassDesc", lambda self, i: f"class{i}")
    with pytest.raises(ModelError, match=r"imageNet read labels \['class0', 'class1'\]"):
        JetsonImageNetClassifier(load_model_dir(tiny_model))


def test_non_imagenet_mean_is_refused(fake_jetson: tuple[Any, Any], tiny_model: Path) -> None:
    path = tiny_model / "model.json"
    data = json.loads(path.read_text())
    data["mean"] = [0.5, 0.5, 0.5]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="differ from the ImageNet values imageNet applies"):
        JetsonImageNetClassifier(load_model_dir(tiny_model))


def test_output_without_softmax_is_refused(fake_jetson: tuple[Any, Any], tiny_model: Path) -> None:
    onnx_path = tiny_model / "model.onnx"
    graph_model = onnx.load(str(onnx_path))
    graph = graph_model.graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    graph.node.remove(softmax)
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    gemm.output[0] = "output_0"
    graph.initializer[3].ClearField("raw_data")  # fc bias: make one logit clearly negative
    graph.initializer[3].float_data[:] = [-50.0, 50.0]
    onnx.save(graph_model, str(onnx_path))
    path = tiny_model / "model.json"
    data = json.loads(path.read_text())
    data["sha256"] = sha256_file(onnx_path)
    path.write_text(json.dumps(data))
    clf = JetsonImageNetClassifier(load_model_dir(tiny_model))
    with pytest.raises(ModelError, match="not a probability vector; export the model with softmax"):
        clf.classify(_frame(20, 20, 0))


def test_closed_jetson_classifier_refuses_frames(jetson: JetsonImageNetClassifier) -> None:
    jetson.close()
    with pytest.raises(RuntimeError, match="closed"):
        jetson.classify(_frame(4, 4, 0))


@pytest.mark.jetson
def test_real_imagenet_agrees_with_onnxruntime(tmp_path: Path) -> None:
    """On a Jetson only (`pytest -m jetson`): the real imageNet's FP16 engine against ORT's FP32."""
    ji = pytest.importorskip("jetson_inference")
    if getattr(ji, "INSTANCES", None) is not None:
        pytest.skip("jetson_inference is the stand-in, not the real module")
    model = load_model_dir(make_tiny_model_dir(tmp_path / "m", labels=("healthy", "sick", "x")))
    jet = JetsonImageNetClassifier(model, threshold=0.01, top_k=3)
    ort_clf = OnnxRuntimeClassifier(model, threshold=0.01, top_k=3)
    for h, w in FRAMES:
        gray = _frame(h, w, 0)
        a, b = jet.classify(gray), ort_clf.classify(gray)
        assert np.allclose(a.scores, b.scores, atol=2e-2)


def test_imagenet_load_failure_is_one_line_model_error(
    fake_jetson: tuple[Any, Any], tiny_model: Path
) -> None:
    path = tiny_model / "model.json"
    data = json.loads(path.read_text())
    data["input"]["name"] = "data"  # imageNet cannot find this blob in the graph
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError) as err:
        JetsonImageNetClassifier(load_model_dir(tiny_model))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tiny_model / 'model.onnx'}: imageNet could not load it")
