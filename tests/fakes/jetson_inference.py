"""Fake `jetson_inference`: imageNet for custom ONNX models, run on real ONNX Runtime.

Interface as documented by jetson-inference's Python bindings (PyImageNet.cpp, JetPack 6):
`imageNet(network="googlenet", argv=None, model=None, labels=None, input_blob="data",
output_blob="prob")`; `Classify(image, width=0, height=0, format="rgba32f", topK=-1)` returns
`(class, confidence)` for topK < 0 and a list of such tuples otherwise (topK = 0: all classes at or
above the threshold); `SetThreshold(float)`, `GetThreshold()`, `GetNumClasses()`,
`GetClassDesc(i)` (alias `GetClassLabel`), `GetClassSynset(i)`, `GetNetworkName()`.

Preprocessing follows imageNet's ONNX path (cudaTensorNormMeanRGB), written here independently of
pipeline.preprocess: source pixel at int(float32(dst) * float32(in / out)) per axis, then
((v * float32(1/255)) - mean) / std per channel, planar. RGB formats only, as imageNet refuses
others. The first load writes an engine cache file beside the model, as TensorRT does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tests.fakes.jetson_utils import cudaImage

INSTANCES: list[imageNet] = []

_MEAN = (np.float32(0.485), np.float32(0.456), np.float32(0.406))
_STD = (np.float32(0.229), np.float32(0.224), np.float32(0.225))
_RGB_FORMATS = {"rgb8", "rgba8", "rgb32f", "rgba32f"}  # imageFormatIsRGB (bgr formats too)
_RGB_FORMATS |= {"bgr8", "bgra8", "bgr32f", "bgra32f"}
ENGINE_SUFFIX = ".1.1.100300.GPU.FP16.engine"


def reset() -> None:
    INSTANCES.clear()


def _read_labels(path: str) -> tuple[list[str], list[str]]:
    """labels.txt as imageNet reads it: 'n' + 8 chars + space is a synset prefix."""
    descs: list[str] = []
    synsets: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line[:-1] if line.endswith("\n") else line
            if len(line) > 9 and line[0] == "n" and line[9] == " ":
                synsets.append(line[:9])
                descs.append(text[10:])
            elif line:
                synsets.append(f"n{len(descs):08d}")
                descs.append(text)
    return descs, synsets


def _source_index(in_size: int, out_size: int) -> list[int]:
    scale = np.float32(in_size) / np.float32(out_size)
    return [int(np.float32(i) * scale) for i in range(out_size)]


def norm_mean_rgb(pixels: np.ndarray, fmt: str, out_h: int, out_w: int) -> np.ndarray:
    """imageNet's input tensor [1, 3, out_h, out_w] for an RGB(A)/BGR(A) image."""
    rows = _source_index(pixels.shape[0], out_h)
    cols = _source_index(pixels.shape[1], out_w)
    picked = pixels[np.ix_(rows, cols)].astype(np.float32)
    order = (2, 1, 0) if fmt.startswith("bgr") else (0, 1, 2)
    multiplier = np.float32(1.0) / np.float32(255.0)
    tensor = np.empty((1, 3, out_h, out_w), dtype=np.float32)
    for c in range(3):
        channel = picked[:, :, order[c]]
        tensor[0, c] = ((channel * multiplier + np.float32(0.0)) - _MEAN[c]) / _STD[c]
    return tensor


class imageNet:
    def __init__(
        self,
        network: str = "googlenet",
        argv: list[str] | None = None,
        model: str | None = None,
        labels: str | None = None,
        input_blob: str = "data",
        output_blob: str = "prob",
    ) -> None:
        self.init_kwargs = {
            "network": network,
            "argv": argv,
            "model": model,
            "labels": labels,
            "input_blob": input_blob,
            "output_blob": output_blob,
        }
        if argv:
            raise Exception("fake imageNet does not parse argv; pass model= and friends")
        if model is None or not model.endswith(".onnx") or labels is None:
            raise Exception("imageNet failed to load network")  # no built-in networks here
        self._session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        if input_blob not in inputs or output_blob not in outputs:
            raise Exception("imageNet failed to load network")
        self._input_blob, self._output_blob = input_blob, output_blob
        _, _, self.input_height, self.input_width = inputs[input_blob]
        self._desc, self._synset = _read_labels(labels)
        if len(self._desc) != outputs[output_blob][-1]:
            raise Exception("imageNet failed to load network")  # synset count != classes
        self._write_engine_cache(Path(model))
        self.threshold = np.float32(0.01)
        self.thresholds_set: list[float] = []
        self.images: list[tuple[str, tuple[int, ...], str, np.ndarray]] = []
        self.topk_args: list[int] = []
        self.last_output: np.ndarray | None = None
        INSTANCES.append(self)

    @staticmethod
    def _write_engine_cache(model: Path) -> None:
        engine = model.with_name(model.name + ENGINE_SUFFIX)
        if not engine.exists():
            try:
                engine.write_bytes(b"fake serialized engine")
            except OSError as exc:
                raise Exception("imageNet failed to load network") from exc

    def Classify(
        self,
        image: Any,
        width: int = 0,
        height: int = 0,
        format: str = "rgba32f",
        topK: int = -1,
    ) -> Any:
        if not isinstance(image, cudaImage):
            raise Exception("imageNet.Classify() needs a cudaImage")
        if image.format not in _RGB_FORMATS:
            raise Exception(f"imageNet::Classify() -- unsupported image format ({image.format})")
        self.images.append((image.format, image.shape, str(image._data.dtype), image._data.copy()))
        self.topk_args.append(topK)
        pixels = image._data[:, :, :3]
        fmt = image.format
        tensor = norm_mean_rgb(pixels, fmt, int(self.input_height), int(self.input_width))
        out = self._session.run([self._output_blob], {self._input_blob: tensor})[0].reshape(-1)
        self.last_output = out
        if topK < 0:
            best, best_conf = -1, 0.0
            for n, conf in enumerate(out):
                if conf < self.threshold:
                    continue
                if conf > best_conf:
                    best, best_conf = n, float(conf)
            return best, best_conf
        preds = [(n, float(c)) for n, c in enumerate(out) if c >= self.threshold]
        preds.sort(key=lambda p: p[1], reverse=True)
        return preds[:topK] if topK > 0 else preds

    def SetThreshold(self, threshold: float) -> None:
        self.threshold = np.float32(threshold)  # C float
        self.thresholds_set.append(float(self.threshold))

    def GetThreshold(self) -> float:
        return float(self.threshold)

    def GetNumClasses(self) -> int:
        return len(self._desc)

    def _check_index(self, index: int) -> None:
        if index >= len(self._desc):
            raise Exception("imageNet requested class index is out of bounds")

    def GetClassDesc(self, index: int) -> str:
        self._check_index(index)
        return self._desc[index]

    GetClassLabel = GetClassDesc

    def GetClassSynset(self, index: int) -> str:
        self._check_index(index)
        return self._synset[index]

    def GetNetworkName(self) -> str:
        return "custom"
