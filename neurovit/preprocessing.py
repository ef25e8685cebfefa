"""The one preprocessing transform shared by training, evaluation and serving.

Two steps, so that training can cache the expensive part and serving runs exactly the same code:
1. ``canonicalise``: grey float image -> square uint8 image of ``image_size`` (aspect kept, padded),
   intensities scaled per image. MRI intensities are in arbitrary scanner units, so a per-image scale is
   the only normalisation that transfers across scanners and bit depths. Two windows (see
   ``INTENSITY_WINDOWS``): between two percentiles of the whole image (the default), or up to where the
   head's median lands at a set level, which a bright lesion cannot shift (a lesion that sets the top
   percentile darkens the whole slice and lets a model read the lesion from everywhere else).
2. ``to_tensor``: uint8 image(s) -> float tensor, standardised with the saved mean and std.

The parameters live in ``PreprocessConfig``; it is saved as ``preprocessing.json`` beside the weights and
read back everywhere, never re-declared as constants.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PREPROCESSING_FILE = "preprocessing.json"

# "foreground_median": 0 at the low percentile, ``foreground_median_level`` at the median of the pixels
# brighter than the background, which a lesion covering a small part of the head barely moves. On the demo
# set it cuts how far a lesion moves the scaled intensities of the tissue away from it from 0.04-0.08 to
# under 0.006 (mean per class, of the [0, 1] range; measured against each slice's lesion-free twin).
# It also makes noise and non-MRI pictures look more like MRI to the OOD score (real slices, same recipe:
# "other pictures" flagged 93.9 % instead of 100 %), so it is the demo recipe's choice, not the default.
# "percentile": between the low and high percentiles of the whole image (the default; slices with a
# skull, whose bright scalp sets the top percentile rather than the lesion).
INTENSITY_WINDOWS = ("foreground_median", "percentile")
# Background / head split: above this fraction of the way from the low percentile to the 95th (a level
# the head's bulk reaches whatever the lesion) a pixel is head. A rough split is enough for a median.
_FOREGROUND_FRACTION = 0.2
_FOREGROUND_REFERENCE_PERCENTILE = 95.0


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the transform.

    Args:
        image_size: side of the square model input, in pixels.
        intensity_window: how the window is set, one of ``INTENSITY_WINDOWS``.
        low_percentile: intensity percentile mapped to 0 (robust to a few dark outliers).
        high_percentile: intensity percentile mapped to 1 (the "percentile" window only).
        foreground_median_level: where the head's median intensity lands in [0, 1] (the
            "foreground_median" window only); 0.4 leaves room above it, so on the real slices of the
            brain-tumour set 0.3 % of the head's pixels saturate on average (1.5 % at the 95th percentile).
        mean: value subtracted after scaling to [0, 1].
        std: divisor after subtracting ``mean``.
    """

    image_size: int = 128
    intensity_window: str = "percentile"
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    foreground_median_level: float = 0.4
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError(
                f"need 0 <= low_percentile < high_percentile <= 100, got {self.low_percentile}, "
                f"{self.high_percentile}"
            )
        if self.intensity_window not in INTENSITY_WINDOWS:
            raise ValueError(
                f"intensity_window must be one of {INTENSITY_WINDOWS}, got {self.intensity_window!r}"
            )
        if not 0 < self.foreground_median_level < 1:
            raise ValueError(f"foreground_median_level must be in (0, 1), got {self.foreground_median_level}")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / PREPROCESSING_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> PreprocessConfig:
        path = Path(folder) / PREPROCESSING_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {PREPROCESSING_FILE} in {folder}: not a NeuroViT model folder")
        saved = json.loads(path.read_text())
        saved.setdefault("intensity_window", "percentile")  # saved before the window was a choice
        return cls(**saved)


def content_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Where ``resize_keep_aspect`` puts a ``height`` x ``width`` image on its ``size`` square:
    ``(top, left, new_height, new_width)``. Evaluation maps a model-input map back to the image with it."""
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def resize_keep_aspect(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D float image so its longer side is ``size``, then centre it on a zero square."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
    height, width = pixels.shape
    top, left, new_h, new_w = content_box(height, width, size)
    if (new_h, new_w) != (height, width):
        # PIL's float mode keeps full precision; bilinear with antialiasing when shrinking.
        as_float = np.asarray(pixels, dtype=np.float32)  # no copy when it already is (a 4096^2 one is 64 MiB)
        resized = Image.fromarray(as_float, mode="F").resize((new_w, new_h), Image.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32)
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top : top + new_h, left : left + new_w] = pixels
    return canvas


def canonicalise(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Grey float image (any range) -> ``image_size`` square uint8 image, intensities scaled per image."""
    square = resize_keep_aspect(np.asarray(pixels, dtype=np.float32), config.image_size)
    low, high = intensity_window(square, config)
    if high - low < 1e-6:  # a flat image: keep it flat rather than dividing by zero
        scaled = np.zeros_like(square)
    else:
        scaled = np.clip((square - low) / (high - low), 0.0, 1.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def intensity_window(square: np.ndarray, config: PreprocessConfig) -> tuple[float, float]:
    """The grey levels ``(low, high)`` that ``canonicalise`` maps to 0 and 1."""
    if config.intensity_window == "percentile":
        low, high = np.percentile(square, [config.low_percentile, config.high_percentile])
        return float(low), float(high)
    low, reference = np.percentile(square, [config.low_percentile, _FOREGROUND_REFERENCE_PERCENTILE])
    head = square[square > low + _FOREGROUND_FRACTION * (reference - low)]
    if head.size == 0:  # nothing above the background: a flat image
        return float(low), float(low)
    median = float(np.median(head))
    return float(low), float(low + (median - low) / config.foreground_median_level)


def to_tensor(images: np.ndarray | torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """uint8 image (H, W) or batch (N, H, W) -> float tensor (N, 1, H, W), standardised."""
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8:
        raise ValueError(f"to_tensor expects uint8 canonical images, got {tensor.dtype}")
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3:
        raise ValueError(f"expected (H, W) or (N, H, W), got shape {tuple(tensor.shape)}")
    return standardise(tensor.float().div_(255.0).unsqueeze(1), config)


def standardise(images01: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Float images with values in [0, 1] -> model input (training applies it after augmentation)."""
    return (images01 - config.mean) / config.std


def black_input(config: PreprocessConfig) -> float:
    """A black pixel (intensity 0) in model-input units: the fill of black-cell deletion when scoring and of
    the cells training blacks out, which must be the same value."""
    return float(standardise(torch.zeros(()), config))


def preprocess(pixels: np.ndarray, config: PreprocessConfig) -> torch.Tensor:
    """The full transform for one decoded grey image: (1, 1, size, size) float tensor."""
    return to_tensor(canonicalise(pixels, config), config)


__all__ = [
    "INTENSITY_WINDOWS",
    "PREPROCESSING_FILE",
    "PreprocessConfig",
    "black_input",
    "canonicalise",
    "content_box",
    "intensity_window",
    "preprocess",
    "resize_keep_aspect",
    "standardise",
    "to_tensor",
]
