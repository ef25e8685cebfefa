"""Time the dataset analysis on a 10,000-image folder; prints one JSON line.

Usage::

    neurovit bench analyze [--images 10000] [--workers 2] [--source ../shared/data/brain-tumor-mri]

The folder is built in a temporary directory and removed afterwards. With ``--source`` present, its
real slices are copied (then mirrored left-right, a distinct picture, until the count is reached);
otherwise brain-like slices are generated. Only ``analyze`` (decode, hash, duplicates, both reports)
is timed, not building the folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from neurovit.data.analysis import analyze
from neurovit.data.layout import discover

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
DEFAULT_SOURCE = Path("../shared/data/brain-tumor-mri")


def generated_slice(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A synthetic axial slice: skull ring, brain ellipse, a few blobs, noise."""
    rows, columns = np.mgrid[0:size, 0:size] / size - 0.5
    a, b = rng.uniform(0.32, 0.42), rng.uniform(0.38, 0.46)
    radius = (columns / a) ** 2 + (rows / b) ** 2
    image = np.where(radius < 1.0, 0.45, 0.0) + np.where((radius >= 0.85) & (radius < 1.0), 0.4, 0.0)
    for _ in range(rng.integers(3, 7)):
        y, x = rng.uniform(-0.25, 0.25, size=2)
        sigma = rng.uniform(0.02, 0.08)
        image += rng.uniform(-0.3, 0.4) * np.exp(-((columns - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))
    image += rng.normal(0, 0.02, image.shape)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def build_folder(target: Path, count: int, source: Path | None, seed: int = 0) -> str:
    """Fill ``target/<class>/`` with ``count`` PNG slices; returns "real" or "generated"."""
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        (target / label).mkdir(parents=True)
    if source is not None and source.is_dir():
        records = discover(source).records
        for number in range(count):
            record = records[number % len(records)]
            destination = target / record.label / f"image_{number:05d}.png"
            if number < len(records):
                shutil.copyfile(record.path, destination)
            else:
                with Image.open(record.path) as image:
                    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(destination)
        return "real"
    for number in range(count):
        label = CLASSES[number % len(CLASSES)]
        Image.fromarray(generated_slice(rng), mode="L").save(target / label / f"image_{number:05d}.png")
    return "generated"


def run(images: int = 10_000, workers: int = 2, source: Path | None = DEFAULT_SOURCE) -> dict:
    """Build the folder, time ``analyze`` on it; prints and returns one JSON object."""
    with tempfile.TemporaryDirectory(prefix="neurovit-bench-") as temporary:
        data_dir, out_dir = Path(temporary) / "data", Path(temporary) / "report"
        origin = build_folder(data_dir, images, source)
        start = time.perf_counter()
        report = analyze(data_dir, out_dir, workers=workers)
        seconds = time.perf_counter() - start
    result = {
        "images": report["dataset"]["files"],
        "source": origin,
        "workers": workers,
        "seconds": round(seconds, 2),
        "images_per_s": round(report["dataset"]["files"] / seconds, 1),
        "corrupt": report["dataset"]["corrupt"],
        "duplicate_groups": len(report["duplicates"]["groups"]),
    }
    print(json.dumps(result))
    return result
