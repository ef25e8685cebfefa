"""Lesion masks in the project's convention: ``<id>.mask.png`` (0/255) beside ``<id>.png``, read once here
for evaluation, guided training and the demo alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurovit.data.imageio import read_image
from neurovit.data.layout import MASK_SUFFIX
from neurovit.preprocessing import resize_keep_aspect


def mask_path(image_path: Path) -> Path:
    """Where the mask of ``image_path`` lies."""
    return image_path.with_name(image_path.stem + MASK_SUFFIX)


def read_mask(image_path: Path) -> np.ndarray | None:
    """The lesion mask beside ``image_path`` at its own resolution, as booleans; None without a mask file.
    A mask that cannot be decoded raises the decoder's ``NeuroVitError``."""
    path = mask_path(image_path)
    if not path.is_file():
        return None
    return read_image(path).pixels >= 0.5  # 0 / 1 after decoding a 0 / 255 PNG


def mask_on_input(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean mask resized and padded as ``canonicalise`` does its image: the model input's geometry."""
    return resize_keep_aspect(np.asarray(mask, dtype=np.float32), size) >= 0.5


__all__ = ["mask_on_input", "mask_path", "read_mask"]
