"""Train and eval transforms: rendered uint8 thermogram -> the model's float tensor.

Both end with `pipeline.preprocess.model_input`, the function serving uses, so the tensor the model
trains on is built exactly like the one it sees on a Jetson (no train/serve skew). Augmentation
happens before it, on the 8-bit image, and its output is again uint8 like a real rendering.
Rendering and equalization (`pipeline.preprocess.render`) happen once per file, in a cache.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.preprocess import model_input

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


class EvalPreset:
    """What serving does: the whole frame stretched (nearest) to 224x224, ImageNet mean/std."""

    def __call__(self, gray: U8) -> F32:
        return np.asarray(model_input(gray)[0], dtype=np.float32)

    def describe(self) -> dict[str, object]:
        return {"final": "pipeline.preprocess.model_input"}


class TrainPreset:
    """Small geometric and photometric jitter, then `model_input`.

    A horizontal flip swaps the left and right breast; the label (asymmetry present or not) is
    unchanged, so it is a valid augmentation for this task.
    """

    def __init__(
        self,
        hflip_prob: float = 0.5,
        rotation_deg: float = 8.0,
        scale: tuple[float, float] = (0.92, 1.08),
        translate_frac: float = 0.04,
        brightness: float = 0.08,
        contrast: float = 0.12,
    ) -> None:
        self.hflip_prob = hflip_prob
        self.rotation_deg = rotation_deg
        self.scale = scale
        self.translate_frac = translate_frac
        self.brightness = brightness
        self.contrast = contrast

    def augment(self, gray: U8, rng: np.random.Generator) -> U8:
        """The jittered 8-bit image (same size as the input)."""
        img = gray[:, ::-1] if rng.random() < self.hflip_prob else gray
        h, w = img.shape[:2]
        angle = rng.uniform(-self.rotation_deg, self.rotation_deg)
        scale = rng.uniform(*self.scale)
        matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
        matrix[0, 2] += rng.uniform(-self.translate_frac, self.translate_frac) * w
        matrix[1, 2] += rng.uniform(-self.translate_frac, self.translate_frac) * h
        warped = cv2.warpAffine(
            np.ascontiguousarray(img),
            matrix,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        gain = 1.0 + rng.uniform(-self.contrast, self.contrast)
        bias = 255.0 * rng.uniform(-self.brightness, self.brightness)
        mean = float(warped.mean())
        jittered = (warped.astype(np.float32) - mean) * gain + mean + bias
        return np.asarray(np.clip(np.rint(jittered), 0, 255), dtype=np.uint8)

    def __call__(self, gray: U8, rng: np.random.Generator) -> F32:
        return np.asarray(model_input(self.augment(gray, rng))[0], dtype=np.float32)

    def describe(self) -> dict[str, object]:
        return {
            "hflip_prob": self.hflip_prob,
            "rotation_deg": self.rotation_deg,
            "scale": list(self.scale),
            "translate_frac": self.translate_frac,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "final": "pipeline.preprocess.model_input",
        }
