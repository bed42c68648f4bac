"""The model contract: what training exports and the pipeline loads (DESIGN.md, "Model contract").

A model directory holds `model.onnx`, `labels.txt` and `model.json` (this manifest). The pipeline
trusts the manifest, checks the sha256 and labels, and fails with one clear line on disagreement.
A matching sha256 only says the file is the one the manifest names, not that it is a whole
model (a manifest rewritten after a truncated copy matches too), so the graph itself is parsed
and checked before any runtime (ONNX Runtime, TensorRT) reads it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline import DISCLAIMER
from pipeline.modelfile import EXTERNAL, INCOMPLETE, ModelFileError, check_model_file
from pipeline.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

MANIFEST_SCHEMA = 1
ONNX_NAME = "model.onnx"
LABELS_NAME = "labels.txt"
MANIFEST_NAME = "model.json"
INPUT_NAME = "input_0"
OUTPUT_NAME = "output_0"
INPUT_SHAPE = (1, 3, 224, 224)
OPSET = 13
# imageNet reads "n01440764 tench" style lines as synset + description.
_SYNSET = re.compile(r"^n.{8} ")


class ModelError(Exception):
    """A model directory that cannot be used; the message is one line naming the file and fix."""


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="Tensor name in the ONNX graph.")
    shape: tuple[int, ...] = Field(description="Fixed shape; no dynamic axes.")


class ModelManifest(BaseModel):
    """model.json, written by `thermoscreen export`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_schema: int = Field(default=MANIFEST_SCHEMA, description="Manifest format version.")
    name: str = Field(description="Model name, e.g. resnet18-dmr.")
    version: str = Field(description="Model version string.")
    created: str = Field(description="RFC 3339 UTC time of export.")
    sha256: str = Field(description="sha256 of model.onnx.")
    architecture: str = Field(description="torchvision architecture name.")
    weights: str = Field(description="Initial weights used for training (imagenet, none, a file).")
    format: Literal["onnx"] = "onnx"
    opset: int = Field(default=OPSET, description="ONNX opset.")
    input: TensorSpec = Field(description="Input tensor.")
    output: TensorSpec = Field(description="Output tensor: probabilities (softmax in graph).")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: Literal["nearest-stretch"] = Field(
        default="nearest-stretch", description="imageNet's whole-frame nearest-neighbour stretch."
    )
    preprocessing: PreprocessConfig = Field(
        description="Rendering and equalization used in training."
    )
    labels: tuple[str, ...] = Field(description="Class labels, same order as output.")
    threshold: float | None = Field(
        default=None,
        description="Operating threshold on the positive ('sick') probability chosen on validation "
        "folds; null means argmax.",
    )
    positive_label: str = Field(
        default="sick", description="Label whose probability is thresholded."
    )
    data: dict[str, Any] = Field(default_factory=dict, description="Training data summary.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Evaluation metrics.")
    synthetic: bool = Field(
        default=False, description="True for demo models trained on synthetic thermograms."
    )
    quantization: dict[str, Any] | None = Field(
        default=None,
        description="How an INT8 model was derived from its FP32 parent (`thermoscreen quantize`); "
        "null for an exported FP32 model.",
    )
    disclaimer: str = DISCLAIMER


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_labels(labels: list[str] | tuple[str, ...], where: str) -> None:
    """Labels imageNet can read back unchanged: none blank, none synset-shaped, no duplicates."""
    if not labels:
        raise ModelError(f"{where}: no labels; write one label per line (e.g. healthy, sick)")
    for i, label in enumerate(labels):
        if not label.strip() or label != label.strip():
            raise ModelError(
                f"{where}: label {i + 1} is blank or padded; remove blank lines/spaces"
            )
        if _SYNSET.match(label):
            raise ModelError(
                f"{where}: label {label!r} looks like an ImageNet synset ('n' + 8 chars + "
                "space) and imageNet would split it; rename it"
            )
    if len(set(labels)) != len(labels):
        raise ModelError(f"{where}: duplicate labels {list(labels)}; make each label unique")


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise ModelError(f"{path}: missing; export the model with `thermoscreen export`")
    lines = path.read_text(encoding="utf-8").splitlines()
    check_labels(lines, str(path))
    return lines


def write_labels(path: Path, labels: list[str] | tuple[str, ...]) -> None:
    check_labels(labels, str(path))
    path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


@dataclass(frozen=True)
class ModelDir:
    """A checked model directory."""

    root: Path
    manifest: ModelManifest
    labels: tuple[str, ...]

    @property
    def onnx_path(self) -> Path:
        return self.root / ONNX_NAME

    @property
    def labels_path(self) -> Path:
        return self.root / LABELS_NAME


def load_model_dir(root: str | Path, verify_sha256: bool = True) -> ModelDir:
    """Read and check a model directory; raise ModelError with one line on any disagreement."""
    root = Path(root)
    if not root.is_dir():
        raise ModelError(
            f"{root}: model directory not found; build one with `make model` or "
            "`thermoscreen export`"
        )
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise ModelError(
            f"{mpath}: manifest missing; re-export the model with `thermoscreen export`"
        )
    try:
        manifest = ModelManifest.model_validate(json.loads(mpath.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"{mpath}: not valid JSON ({exc.msg} at line {exc.lineno}); re-export"
        ) from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ModelError(f"{mpath}: field '{field}': {err['msg']}; re-export the model") from exc
    onnx_path = root / ONNX_NAME
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: missing; re-export the model")
    if verify_sha256:
        digest = sha256_file(onnx_path)
        if digest != manifest.sha256:
            raise ModelError(
                f"{onnx_path}: sha256 {digest[:12]}… does not match model.json "
                f"({manifest.sha256[:12]}…); the file was changed: re-export or restore it"
            )
    check_onnx_file(onnx_path)
    labels = tuple(read_labels(root / LABELS_NAME))
    if labels != manifest.labels:
        raise ModelError(
            f"{root / LABELS_NAME}: labels {list(labels)} differ from model.json "
            f"{list(manifest.labels)}; re-export the model"
        )
    n_out = manifest.output.shape[-1]
    if n_out != len(labels):
        raise ModelError(
            f"{mpath}: output has {n_out} classes but {len(labels)} labels; re-export the model"
        )
    return ModelDir(root=root, manifest=manifest, labels=labels)


def check_onnx_file(path: Path) -> None:
    """The file must be one whole, self-contained ONNX model (every stored tensor as long as its
    shape says: `pipeline.modelfile`); raise ModelError otherwise. A runtime handed a truncated
    or inconsistent graph may crash instead of raising."""
    fix = "re-export the model or restore the file"
    try:
        check_model_file(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror}); {fix}") from exc
    except ModelFileError as exc:
        if exc.kind == INCOMPLETE:
            raise ModelError(f"{path}: not a complete ONNX model ({exc}); {fix}") from exc
        if exc.kind == EXTERNAL:
            raise ModelError(f"{path}: {exc}: {fix}") from exc
        raise ModelError(f"{path}: the ONNX graph is invalid ({exc}); {fix}") from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def write_manifest(root: Path, manifest: ModelManifest) -> Path:
    path = root / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path
