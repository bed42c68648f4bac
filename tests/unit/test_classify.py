"""imageNet's result rules, preprocessing agreement, backend choice and the ONNX Runtime backend."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from pipeline.classify.base import Classifier, imagenet_prediction
from pipeline.classify.factory import (
    MAX_AUTO_WORKERS,
    choose_backend,
    load_classifier,
    model_info,
    replay_workers,
    resolve_preprocessing,
    threads_per_worker,
    usable_cores,
)
from pipeline.classify.onnx import CPU, CUDA, TENSORRT, OnnxRuntimeClassifier, select_providers
from pipeline.config import ConfigError, load_config
from pipeline.manifest import ModelError, load_model_dir, sha256_file
from pipeline.preprocess import PreprocessConfig, model_input
from tests.helpers.tiny_model import make_tiny_model_dir

LABELS3 = ("a", "b", "c")


def _rewrite_manifest(root: Path, **changes: object) -> None:
    path = root / "model.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# --- imageNet result rules -------------------------------------------------------------------


def test_top1_is_highest_class_at_or_above_threshold() -> None:
    pred = imagenet_prediction([0.2, 0.5, 0.3], LABELS3, threshold=0.01, top_k=3)
    assert (pred.index, pred.label) == (1, "b")
    assert pred.score == pytest.approx(0.5)
    assert [t.index for t in pred.top_k] == [1, 2, 0]
    assert [t.label for t in pred.top_k] == ["b", "c", "a"]
    assert pred.scores == pytest.approx((0.2, 0.5, 0.3))


def test_ties_go_to_lowest_index_in_top1_and_top_k() -> None:
    pred = imagenet_prediction([0.1, 0.45, 0.45], LABELS3, threshold=0.01, top_k=0)
    assert pred.index == 1
    assert [t.index for t in pred.top_k] == [1, 2, 0]
    all_equal = imagenet_prediction([0.25, 0.25, 0.25, 0.25], ("w", "x", "y", "z"), 0.01, 2)
    assert all_equal.index == 0
    assert [t.index for t in all_equal.top_k] == [0, 1]


def test_threshold_is_inclusive_like_imagenet() -> None:
    # imageNet skips `conf < threshold`, so a class exactly at the threshold counts
    probs = np.array([0.5, 0.25, 0.25], dtype=np.float32)
    at = imagenet_prediction(probs, LABELS3, threshold=0.5, top_k=3)
    assert at.index == 0
    assert [t.index for t in at.top_k] == [0]
    above = imagenet_prediction(probs, LABELS3, threshold=float(np.nextafter(np.float32(0.5), 1)))
    assert above.index == -1


def test_nothing_above_threshold_gives_none() -> None:
    pred = imagenet_prediction([0.3, 0.35, 0.35], LABELS3, threshold=0.9, top_k=2)
    assert (pred.index, pred.label, pred.score) == (-1, "none", 0.0)
    assert pred.top_k == ()
    assert pred.scores == pytest.approx((0.3, 0.35, 0.35))  # scores are kept for the session


def test_classes_below_threshold_are_skipped_in_top_k() -> None:
    pred = imagenet_prediction([0.005, 0.99, 0.005], LABELS3, threshold=0.01, top_k=3)
    assert [t.index for t in pred.top_k] == [1]


def test_top_k_cut_and_zero_keeps_all() -> None:
    probs = [0.1, 0.2, 0.3, 0.4]
    labels = ("p", "q", "r", "s")
    assert [t.index for t in imagenet_prediction(probs, labels, 0.0, 1).top_k] == [3]
    assert [t.index for t in imagenet_prediction(probs, labels, 0.0, 0).top_k] == [3, 2, 1, 0]


def test_zero_probability_never_wins_top1_even_at_threshold_zero() -> None:
    # imageNet's top-1 starts from a maximum of 0.0 and needs a strictly greater confidence
    pred = imagenet_prediction([0.0, 0.0], ("x", "y"), threshold=0.0, top_k=2)
    assert pred.index == -1
    assert [t.index for t in pred.top_k] == [0, 1]


def test_nan_is_never_chosen() -> None:
    pred = imagenet_prediction([float("nan"), 0.4, 0.6], LABELS3, threshold=0.01, top_k=3)
    assert pred.index == 2
    assert [t.index for t in pred.top_k] == [2, 1]


def test_prediction_rejects_wrong_class_count_and_negative_top_k() -> None:
    with pytest.raises(ValueError, match="2 classes but there are 3 labels"):
        imagenet_prediction([0.5, 0.5], LABELS3)
    with pytest.raises(ValueError, match="top_k"):
        imagenet_prediction([0.2, 0.5, 0.3], LABELS3, top_k=-1)


def test_prediction_accepts_model_output_shape() -> None:
    pred = imagenet_prediction(np.array([[0.7, 0.3]], dtype=np.float32), ("healthy", "sick"))
    assert (pred.label, len(pred.scores)) == ("healthy", 2)


# --- preprocessing agreement ------------------------------------------------------------------


def test_resolve_preprocessing_accepts_equal_config(tiny_model: Path) -> None:
    model = load_model_dir(tiny_model)
    assert resolve_preprocessing(model, PreprocessConfig(), follow_manifest=False) == (
        PreprocessConfig()
    )


def test_resolve_preprocessing_refuses_mismatch_in_one_line(tmp_path: Path) -> None:
    root = make_tiny_model_dir(tmp_path / "m", preprocessing=PreprocessConfig(equalization="clahe"))
    model = load_model_dir(root)
    with pytest.raises(ModelError) as err:
        resolve_preprocessing(model, PreprocessConfig(), follow_manifest=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(root / "model.json") in msg
    assert "preprocessing.equalization" in msg
    assert "clahe" in msg and "global" in msg
    assert "--follow-manifest" in msg


def test_resolve_preprocessing_names_window_field(tmp_path: Path) -> None:
    model = load_model_dir(
        make_tiny_model_dir(tmp_path / "m", preprocessing=PreprocessConfig(window_c=(22.0, 36.0)))
    )
    with pytest.raises(ModelError, match=r"preprocessing\.window_c is \[22.0, 36.0\]"):
        resolve_preprocessing(model, PreprocessConfig(), follow_manifest=False)
    with pytest.raises(ModelError, match=r"window_c is null"):
        resolve_preprocessing(
            load_model_dir(
                make_tiny_model_dir(tmp_path / "n", preprocessing=PreprocessConfig(window_c=None))
            ),
            PreprocessConfig(),
            follow_manifest=False,
        )


def test_resolve_preprocessing_follows_manifest_when_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained = PreprocessConfig(equalization="clahe", clahe_clip_limit=3.0)
    model = load_model_dir(make_tiny_model_dir(tmp_path / "m", preprocessing=trained))
    with caplog.at_level(logging.WARNING):
        got = resolve_preprocessing(model, PreprocessConfig(), follow_manifest=True)
    assert got == trained
    assert "following the model's preprocessing.equalization" in caplog.text


def test_clahe_parameters_matter_only_for_clahe(tmp_path: Path) -> None:
    model = load_model_dir(
        make_tiny_model_dir(tmp_path / "m", preprocessing=PreprocessConfig(clahe_clip_limit=4.0))
    )
    # global equalization ignores the CLAHE clip limit: no refusal
    assert resolve_preprocessing(model, PreprocessConfig(), False) == PreprocessConfig()
    clahe = load_model_dir(
        make_tiny_model_dir(
            tmp_path / "c",
            preprocessing=PreprocessConfig(equalization="clahe", clahe_clip_limit=4.0),
        )
    )
    with pytest.raises(ModelError, match=r"clahe_clip_limit is 4\.0"):
        resolve_preprocessing(clahe, PreprocessConfig(equalization="clahe"), False)


# --- backend choice and load_classifier --------------------------------------------------------


def test_auto_backend_is_onnxruntime_without_jetson_inference() -> None:
    assert choose_backend("auto") == "onnxruntime"
    assert choose_backend("jetson") == "jetson"
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("tensorrt")


def test_load_classifier_opens_onnxruntime_backend(tiny_model: Path) -> None:
    clf = load_classifier(tiny_model, backend="auto")
    assert isinstance(clf, OnnxRuntimeClassifier)
    assert isinstance(clf, Classifier)
    assert clf.backend == "onnxruntime"
    assert clf.labels == ("healthy", "sick")
    info = model_info(clf)
    assert (info.name, info.backend) == ("tiny-test", "onnxruntime")
    assert info.sha256 == sha256_file(tiny_model / "model.onnx")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"threshold": 1.5}, "threshold"), ({"top_k": -1}, "top_k"), ({"backend": "x"}, "backend")],
)
def test_load_classifier_rejects_bad_arguments(tiny_model: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_classifier(tiny_model, **kwargs)


def test_changed_model_file_is_refused_before_first_frame(tiny_model: Path) -> None:
    onnx_path = tiny_model / "model.onnx"
    model = onnx.load(str(onnx_path))
    model.graph.initializer[1].float_data[:] = [1.0] * 4  # conv bias, same shapes
    model.graph.initializer[1].ClearField("raw_data")
    onnx.save(model, str(onnx_path))
    with pytest.raises(ModelError, match=r"sha256 .* does not match model\.json"):
        load_classifier(tiny_model)


def test_graph_disagreeing_with_manifest_is_refused(tiny_model: Path) -> None:
    _rewrite_manifest(tiny_model, input={"name": "input_0", "shape": [1, 3, 256, 256]})
    with pytest.raises(ModelError) as err:
        load_classifier(tiny_model)
    msg = str(err.value)
    assert "\n" not in msg
    assert (
        "input is input_0 [1, 3, 256, 256] but the ONNX graph has input_0 [1, 3, 224, 224]" in msg
    )


def test_output_name_disagreeing_with_manifest_is_refused(tiny_model: Path) -> None:
    _rewrite_manifest(tiny_model, output={"name": "prob", "shape": [1, 2]})
    with pytest.raises(ModelError, match=r"output is prob .* ONNX graph has output_0"):
        load_classifier(tiny_model)


def test_unloadable_onnx_file_is_one_line_model_error(tiny_model: Path) -> None:
    onnx_path = tiny_model / "model.onnx"
    onnx_path.write_bytes(b"not a protobuf")
    _rewrite_manifest(tiny_model, sha256=sha256_file(onnx_path))
    with pytest.raises(ModelError, match=r"model\.onnx: not a complete ONNX model") as err:
        load_classifier(tiny_model)
    assert "\n" not in str(err.value)


# --- providers -----------------------------------------------------------------------------------


def test_providers_default_to_cuda_when_built_else_cpu() -> None:
    assert select_providers(None, [CPU]) == [CPU]
    assert select_providers(None, [TENSORRT, CUDA, CPU]) == [CUDA, CPU]


def test_requested_providers_keep_order_and_skip_missing(caplog: pytest.LogCaptureFixture) -> None:
    assert select_providers([TENSORRT, CUDA], [TENSORRT, CUDA, CPU]) == [TENSORRT, CUDA, CPU]
    with caplog.at_level(logging.WARNING):
        assert select_providers([TENSORRT], [CPU]) == [CPU]
    assert "TensorrtExecutionProvider" in caplog.text and "not in this build" in caplog.text
    with pytest.raises(ValueError, match="unknown onnxruntime provider 'cuda'"):
        select_providers(["cuda"], [CPU])


def test_session_uses_requested_threads_and_cpu(tiny_model: Path) -> None:
    clf = OnnxRuntimeClassifier(load_model_dir(tiny_model), intra_op_threads=1)
    assert clf.providers == [CPU]
    with pytest.raises(ValueError, match="intra_op_threads"):
        OnnxRuntimeClassifier(load_model_dir(tiny_model), intra_op_threads=0)


# --- the ONNX Runtime backend ------------------------------------------------------------------


def _frame(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def test_classify_runs_the_model_on_imagenet_tensor(tiny_model: Path) -> None:
    clf = load_classifier(tiny_model, top_k=2)
    gray = _frame(120, 160, 1)
    pred = clf.classify(gray)
    session = ort.InferenceSession(str(tiny_model / "model.onnx"), providers=[CPU])
    expected = session.run(None, {"input_0": model_input(gray)})[0].reshape(-1)
    assert np.array_equal(np.array(pred.scores, dtype=np.float32), expected)
    assert pred.index == int(np.argmax(expected))
    assert pred.label == clf.labels[pred.index]
    assert pred.inference_ms > 0
    assert len(pred.top_k) == sum(expected >= 0.01)


def test_gray_and_rgb_frames_give_the_same_prediction(tiny_model: Path) -> None:
    clf = load_classifier(tiny_model)
    gray = _frame(64, 48, 2)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    assert clf.classify(gray).scores == clf.classify(rgb).scores


def test_probabilities_and_run_tensor_agree_with_classify(tiny_model: Path) -> None:
    clf = OnnxRuntimeClassifier(load_model_dir(tiny_model))
    gray = _frame(300, 150, 3)
    tensor = clf.tensor(gray)
    assert clf.run_tensor(tensor).shape == (1, 2)
    probs = clf.probabilities(tensor)
    assert probs.dtype == np.float32
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert tuple(float(p) for p in probs) == clf.classify(gray).scores


def test_position_matters_to_the_tiny_model(tiny_model: Path) -> None:
    # guards the golden tests: a model blind to pixel placement would hide a wrong resize
    clf = OnnxRuntimeClassifier(load_model_dir(tiny_model))
    ramp = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (64, 1))
    assert clf.classify(ramp).scores != clf.classify(ramp[:, ::-1].copy()).scores


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((10, 10), dtype=np.float32), "uint8"),
        (np.zeros((10, 10, 4), dtype=np.uint8), "HxW gray or HxWx3 RGB"),
        (np.zeros((0, 10), dtype=np.uint8), "empty"),
    ],
)
def test_classify_rejects_unusable_frames(tiny_model: Path, image: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_classifier(tiny_model).classify(image)


def test_closed_classifier_refuses_frames(tiny_model: Path) -> None:
    clf = load_classifier(tiny_model)
    clf.close()
    with pytest.raises(RuntimeError, match="closed"):
        clf.classify(_frame(8, 8, 0))


def test_threshold_and_top_k_reach_the_backend(tmp_path: Path) -> None:
    root = make_tiny_model_dir(tmp_path / "m", labels=("a", "b", "c", "d"), seed=3)
    gray = _frame(50, 70, 4)
    loose = load_classifier(root, threshold=0.0, top_k=0).classify(gray)
    assert len(loose.top_k) == 4
    top = max(loose.scores)
    strict = load_classifier(root, threshold=min(1.0, top + 1e-6), top_k=0).classify(gray)
    assert (strict.index, strict.label, strict.top_k) == (-1, "none", ())


def test_replay_workers_one_frame_per_core_only_for_replays_on_the_cpu() -> None:
    per_core = min(usable_cores(), MAX_AUTO_WORKERS)
    assert replay_workers("auto", "onnxruntime", live=False) == per_core  # CPU-only build
    assert replay_workers("auto", "onnxruntime", live=True) == 1  # live: latency first
    assert replay_workers(3, "onnxruntime", live=False) == 3
    assert replay_workers(3, "onnxruntime", live=True) == 1
    assert replay_workers("auto", "auto", live=False) == per_core  # no jetson-inference here


def test_threads_per_worker_share_out_the_cores_unless_configured() -> None:
    assert threads_per_worker(1, None) is None  # one frame at a time: ORT takes every core
    assert threads_per_worker(1, 3) == 3
    assert threads_per_worker(2, 5) == 5  # an explicit setting wins
    assert threads_per_worker(usable_cores(), None) == 1
    assert threads_per_worker(usable_cores() + 1, None) == 1  # never zero


def test_replay_workers_setting_is_checked_in_config() -> None:
    assert load_config(None, {"model.replay_workers": 2}, env={}).model.replay_workers == 2
    with pytest.raises(ConfigError, match="replay_workers"):
        load_config(None, {"model.replay_workers": 0}, env={})
