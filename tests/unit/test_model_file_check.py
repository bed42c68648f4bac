"""A model file whose sha256 matches its manifest can still be a truncated or inconsistent graph
(the manifest rewritten after a bad copy): the graph is parsed and checked before any runtime
reads it, and each problem is one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from pipeline.manifest import ModelError, load_model_dir, sha256_file
from pipeline.modelfile import ModelFileError, check_model_bytes
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


def test_every_cut_of_a_model_is_refused_or_still_a_whole_model(tmp_path: Path) -> None:
    """The check reads the protobuf wire format itself (no onnx import on the run path): a file
    cut anywhere is refused in one line, unless the cut fell after the last field that matters
    (then ONNX Runtime must load it and answer the same)."""
    whole = build_tiny_onnx(2).SerializeToString()
    accepted = []
    for cut in range(len(whole)):
        try:
            check_model_bytes(whole[:cut])
        except ModelFileError as exc:
            assert "\n" not in str(exc)
            continue
        accepted.append(cut)
    for cut in accepted:  # only cuts inside trailing metadata may pass
        tail = onnx.ModelProto.FromString(whole[:cut])
        assert tail.graph == onnx.ModelProto.FromString(whole).graph
        assert ort.InferenceSession(whole[:cut], providers=["CPUExecutionProvider"])
    assert len(accepted) <= 2


@pytest.mark.parametrize("where", ["constant", "subgraph", "float_data"])
def test_a_short_tensor_anywhere_in_the_graph_is_refused(where: str) -> None:
    """Weights are not only initializers: Constant nodes, subgraphs (If/Loop bodies) and tensors
    stored as typed values are checked too, as onnx.checker does."""
    short = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2, 3])
    if where == "float_data":
        short.float_data.extend([1.0] * 5)
    else:
        short.raw_data = np.zeros(5, np.float32).tobytes()
    model = build_tiny_onnx(2)
    if where == "float_data":
        model.graph.initializer.append(short)
    else:
        const = helper.make_node("Constant", [], ["k"], value=short)
        if where == "subgraph":
            body = helper.make_graph(
                [const], "body", [], [helper.make_tensor_value_info("k", 1, [2, 3])]
            )
            const = helper.make_node("If", ["cond"], ["k2"], then_branch=body, else_branch=body)
        model.graph.node.append(const)
    with pytest.raises(
        ModelFileError, match=r"initializer 'w' holds (20 bytes|5 values), too small"
    ):
        check_model_bytes(model.SerializeToString())
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)


def test_the_check_accepts_what_onnx_checker_accepts(tmp_path: Path) -> None:
    model = build_tiny_onnx(3)
    model.graph.initializer.append(
        onnx.TensorProto(
            name="t", data_type=onnx.TensorProto.FLOAT, dims=[2, 2], float_data=[1, 2, 3, 4]
        )
    )
    onnx.checker.check_model(model)
    check_model_bytes(model.SerializeToString())
    empty = onnx.ModelProto()
    with pytest.raises(ModelFileError, match="no IR version"):
        check_model_bytes(empty.SerializeToString())
    with pytest.raises(ModelFileError, match=r"not protobuf|ends inside"):
        check_model_bytes(b"\x00\x01\x02 not a model at all")
