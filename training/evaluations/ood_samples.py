"""Images that are not brain MRI, for measuring the OOD flag (``make eval-ood``); nothing is downloaded.

Three groups, each encoded as PNG bytes the way a client would send them:
- ``photo``: natural photographs shipped inside scikit-image and scikit-learn (people, animals, objects,
  textures, the moon, a deep-sky field), each whole and as two crops, one of them mirrored;
- ``noise``: Gaussian, uniform, salt-and-pepper and smoothed noise, the kind of file that ends up in a
  folder of slices by mistake (the shared dataset holds hundreds);
- ``other``: documents, text, logos, charts and microscopy/fundus images from scikit-image: other pictures
  a hospital system might send to the wrong endpoint.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

PHOTOS = (
    "astronaut", "camera", "cat", "coffee", "rocket", "clock", "coins",
    "moon", "brick", "grass", "gravel", "hubble_deep_field",
)  # fmt: skip
OTHER = (
    "text", "page", "checkerboard", "colorwheel", "logo", "binary_blobs", "horse", "cell",
    "retina", "microaneurysms", "immunohistochemistry",
)  # fmt: skip


@dataclass(frozen=True)
class Sample:
    group: str
    name: str
    png: bytes


def _png(pixels: np.ndarray) -> bytes:
    pixels = np.asarray(pixels)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype != np.uint8:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) / (high - low or 1.0) * 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _views(pixels: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """The whole image, a centre crop, and a mirrored corner crop."""
    height, width = pixels.shape[:2]
    yield "whole", pixels
    yield "centre", pixels[height // 4 : height * 3 // 4, width // 4 : width * 3 // 4]
    yield "corner-mirrored", pixels[: height * 2 // 3, : width * 2 // 3][:, ::-1]


def photographs() -> Iterator[Sample]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = [(name, getattr(skimage.data, name)()) for name in PHOTOS]
    images += [(f"sklearn-{i}", image) for i, image in enumerate(load_sample_images().images)]
    for name, pixels in images:
        for view, cropped in _views(pixels):
            yield Sample("photo", f"{name}/{view}", _png(cropped))


def others() -> Iterator[Sample]:
    import skimage.data

    for name in OTHER:
        for view, cropped in _views(getattr(skimage.data, name)()):
            yield Sample("other", f"{name}/{view}", _png(cropped))


def noise(count_per_kind: int = 8, size: int = 256, seed: int = 0) -> Iterator[Sample]:
    rng = np.random.default_rng(seed)
    for i in range(count_per_kind):
        shape = (size, size)
        yield Sample(
            "noise", f"gaussian/{i}", _png(np.clip(rng.normal(128, 50, shape), 0, 255).astype(np.uint8))
        )
        yield Sample("noise", f"uniform/{i}", _png(rng.integers(0, 256, shape, dtype=np.uint8)))
        salt = np.full(shape, 128, np.uint8)
        salt[rng.random(shape) < 0.1] = 0
        salt[rng.random(shape) < 0.1] = 255
        yield Sample("noise", f"salt-and-pepper/{i}", _png(salt))
        yield Sample("noise", f"smoothed/{i}", _png(gaussian_filter(rng.normal(size=shape), sigma=1 + i)))


def non_mri_samples() -> list[Sample]:
    return [*photographs(), *noise(), *others()]


__all__ = ["Sample", "non_mri_samples", "noise", "others", "photographs"]
