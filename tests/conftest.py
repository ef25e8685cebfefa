"""Shared test fixtures (small generated data only: tests never read ../shared) and the markers each test
gets from its folder.

Markers (registered in pyproject.toml): ``unit`` for tests/neurovit, tests/training, tests/handlers,
tests/monitoring and the files directly in tests/; ``integration`` for tests/integration and for any test
that runs an installed binary (a fixture in ``BINARY_FIXTURES``: promtool); ``deploy`` for tests/deploy
(.venv-tools: checkov, the kserve SDK). ``slow``, ``gpu`` and ``image_deps`` are set on the tests
themselves; ``gpu`` tests are deselected when no CUDA device is present. ``make test-fast`` runs
``-m "not integration and not deploy and not slow and not image_deps"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS_DIR = Path(__file__).resolve().parent
FOLDER_MARKERS = {
    "neurovit": "unit",
    "training": "unit",
    "handlers": "unit",
    "monitoring": "unit",
    "integration": "integration",
    "deploy": "deploy",
}
# Fixtures that run a binary installed outside the venv: a test using one is an integration test.
BINARY_FIXTURES = {"promtool"}


def folder_marker(item: pytest.Item) -> str | None:
    """The marker ``item`` gets from its folder under tests/ (None outside tests/ or for other folders)."""
    try:
        area = Path(item.path).resolve().relative_to(TESTS_DIR).parts[0]
    except ValueError:
        return None
    if area.endswith(".py"):  # tests/test_*.py: rules over the whole repository, read from the source
        return "unit"
    marker = FOLDER_MARKERS.get(area)
    if marker == "unit" and BINARY_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "integration"
    return marker


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection, which must see these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marker = folder_marker(item)
        if marker is not None:
            item.add_marker(marker)
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests:
        import torch

        if not torch.cuda.is_available():
            config.hook.pytest_deselected(items=gpu_tests)
            items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def brain_slice(seed: int, size: int = 128) -> np.ndarray:
    """A brain-like uint8 slice: skull ring, brain ellipse, two ventricles and a few internal blobs.

    Different seeds give structurally similar images (like real slices, which share background and
    anatomy), so duplicate detection is tested against look-alikes, not trivially distinct noise.
    """
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:size, 0:size] / size - 0.5
    a, b = rng.uniform(0.33, 0.41), rng.uniform(0.39, 0.46)
    radius = (columns / a) ** 2 + (rows / b) ** 2
    image = np.where(radius < 1.0, 0.42, 0.0) + np.where((radius >= 0.82) & (radius < 1.0), 0.45, 0.0)
    for side in (-1, 1):  # ventricles
        ventricle = ((columns - side * 0.05) / rng.uniform(0.03, 0.06)) ** 2 + (
            rows / rng.uniform(0.08, 0.14)
        ) ** 2
        image = np.where(ventricle < 1.0, 0.12, image)
    for _ in range(rng.integers(4, 8)):  # internal structure that differs between slices
        y, x = rng.uniform(-0.25, 0.25, size=2)
        sigma = rng.uniform(0.02, 0.07)
        image += rng.uniform(-0.25, 0.45) * np.exp(-((columns - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))
    image = np.where(radius < 1.0, image, 0.0) + rng.normal(0, 0.015, image.shape)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def save_grey(path: Path, pixels: np.ndarray, fmt: str | None = None, **options) -> Path:
    """Write a uint8/uint16 grey array as an image file (format from the suffix unless given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt, **options)
    return path


@pytest.fixture(scope="session")
def make_slice() -> Callable[..., np.ndarray]:
    """Factory: ``make_slice(seed, size=128)`` -> brain-like uint8 slice."""
    return brain_slice


@pytest.fixture(scope="session")
def write_slice() -> Callable[..., Path]:
    """Factory: ``write_slice(path, seed=0, size=32, fmt=None, **options)`` writes a slice; returns path."""

    def write(path: Path, seed: int = 0, size: int = 32, fmt: str | None = None, **options) -> Path:
        return save_grey(path, brain_slice(seed, size), fmt, **options)

    return write


@pytest.fixture
def class_folders(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``<tmp>/<name>/<class>/img_<n>.png`` with distinct slices; returns the root."""

    def build(
        name: str = "data", per_class: int = 6, classes: tuple[str, ...] = ("glioma", "notumor")
    ) -> Path:
        root = tmp_path / name
        seed = 1000
        for label in classes:
            for number in range(per_class):
                save_grey(root / label / f"img_{number:03d}.png", brain_slice(seed))
                seed += 1
        return root

    return build
