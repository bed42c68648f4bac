"""A model file whose sha256 matches its manifest can still be a truncated or inconsistent graph
(the manifest rewritten after a bad copy): the graph is parsed and checked before any runtime
reads it, and each problem is one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from pipeline.manifest import ModelError, load_model_dir, sha256_file
from tests.helpers.tiny_model import build_tiny_onnx, make_tiny_model_dir


def _rewrite(model_dir: Path, data: bytes) -> Path:
    """Replace model.onnx and make the manifest's sha256 match it again."""
    onnx_path = model_dir / "model.onnx"
    onnx_path.write_bytes(data)
    manifest = json.loads((model_dir / "model.json").read_text())
    manifest["sha256"] = sha256_file(onnx_path)
    (model_dir / "model.json").write_text(json.dumps(manifest))
    return onnx_path


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.9, 0.999])
def test_a_truncated_model_with_a_matching_sha256_is_one_line(
    tmp_path: Path, fraction: float
) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "m")
    data = (model_dir / "model.onnx").read_bytes()
    onnx_path = _rewrite(model_dir, data[: int(len(data) * fraction)])
    with pytest.raises(ModelError) as err:
        load_model_dir(model_dir)
    text = str(err.value)
    assert text.startswith(f"{onnx_path}: ") and "\n" not in text
    assert "re-export the model or restore the file" in text


def test_an_initializer_shorter_than_its_shape_is_refused(tmp_path: Path) -> None:
    """What a cut inside a weight looks like once the protobuf still parses."""
    model_dir = make_tiny_model_dir(tmp_path / "m")
    model = build_tiny_onnx(2)
    weight = model.graph.initializer[0]
    weight.raw_data = weight.raw_data[: len(weight.raw_data) // 2]
    onnx_path = _rewrite(model_dir, model.SerializeToString())
    with pytest.raises(ModelError, match=r"the ONNX graph is invalid \(.*conv_w.*too small"):
        load_model_dir(model_dir)
    assert onnx_path.is_file()


def test_weights_in_an_external_file_are_refused(tmp_path: Path) -> None:
    """The contract is one self-contained file; external data could point anywhere."""
    model_dir = make_tiny_model_dir(tmp_path / "m")
    model = build_tiny_onnx(2)
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../etc/passwd")
    _rewrite(model_dir, model.SerializeToString())
    with pytest.raises(ModelError, match="initializer 'conv_w' points to external data"):
        load_model_dir(model_dir)


def test_a_whole_model_still_loads(tmp_path: Path) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "m")
    assert load_model_dir(model_dir).labels == ("healthy", "sick")
