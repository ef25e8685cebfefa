"""The built-in demo dataset: layout, masks, plausible lesion locations, planted duplicates, determinism."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from neurovit.data.demo import DEMO_CLASSES, MASK_SUFFIX, generate_demo_dataset, healthy_twin
from neurovit.errors import DataError

N_PER_CLASS = 8
SIZE = 96
SELLAR_TOP_MM = -22


def _generate(folder: Path, seed: int = 0) -> Path:
    return generate_demo_dataset(
        folder, n_per_class=N_PER_CLASS, image_size=SIZE, seed=seed, duplicate_fraction=0.1
    )


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def _outside(image: np.ndarray) -> np.ndarray:
    """Dark pixels connected to the image border: background, not brain."""
    dark = ndimage.gaussian_filter(image.astype(np.float32), 1.0) < 40
    labels, _ = ndimage.label(dark)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture(scope="module")
def description(demo: Path) -> dict:
    return json.loads((demo / "demo.json").read_text())


def _originals(demo: Path, label: str) -> list[Path]:
    return [demo / label / f"{label}_{index:04d}.png" for index in range(N_PER_CLASS)]


def test_layout_and_counts(demo: Path, description: dict) -> None:
    assert sorted(entry.name for entry in demo.iterdir() if entry.is_dir()) == sorted(DEMO_CLASSES)
    for label in DEMO_CLASSES:
        images = sorted(path for path in (demo / label).glob("*.png") if not path.name.endswith(MASK_SUFFIX))
        masks = sorted((demo / label).glob(f"*{MASK_SUFFIX}"))
        assert len(images) == len(masks) == description["counts"][label] >= N_PER_CLASS
        assert all(path.name.startswith(f"{label}_") for path in images)
        for path in _originals(demo, label):
            assert _load(path).shape == (SIZE, SIZE)
    assert description["seed"] == 0 and description["n_per_class"] == N_PER_CLASS
    assert description["image_size"] == SIZE


def test_masks_sit_beside_images_and_match_the_class(demo: Path) -> None:
    for label in DEMO_CLASSES:
        for path in (demo / label).glob("*.png"):
            if path.name.endswith(MASK_SUFFIX):
                continue
            mask = _load(path.with_name(path.name.removesuffix(".png") + MASK_SUFFIX))
            assert mask.shape == _load(path).shape
            assert set(np.unique(mask)) <= {0, 255}
            if label == "notumor":
                assert not mask.any(), path
            else:
                assert mask.any(), path


def test_images_vary_and_show_a_brain(demo: Path) -> None:
    images = [_load(path) for path in _originals(demo, "notumor")]
    for image in images:
        brain = ~_outside(image)
        assert 0.15 < brain.mean() < 0.9  # a brain in the middle, background around it
        assert not brain[0].any() and not brain[-1].any()
    assert len({image.tobytes() for image in images}) == len(images)


def test_meningiomas_touch_the_brain_edge(demo: Path) -> None:
    for path in _originals(demo, "meningioma"):
        mask = _load(path.with_name(path.stem + MASK_SUFFIX)) > 0
        near = ndimage.binary_dilation(mask, iterations=3)
        assert (near & _outside(_load(path))).any(), f"{path.name}: meningioma away from the brain edge"


def test_gliomas_lie_inside_the_brain(demo: Path) -> None:
    for path in _originals(demo, "glioma"):
        mask = _load(path.with_name(path.stem + MASK_SUFFIX)) > 0
        outside = _outside(_load(path))
        assert (mask & outside).sum() <= 0.05 * mask.sum(), f"{path.name}: glioma outside the brain"


def test_pituitary_lesions_are_small_anterior_and_midline(demo: Path, description: dict) -> None:
    for path in _originals(demo, "pituitary"):
        level = description["images"][f"pituitary/{path.name}"]["level_mm"]
        assert level <= SELLAR_TOP_MM
        mask = _load(path.with_name(path.stem + MASK_SUFFIX)) > 0
        brain = ~_outside(_load(path))
        mask_row, mask_col = ndimage.center_of_mass(mask)
        brain_row, brain_col = ndimage.center_of_mass(brain)
        assert mask.mean() < 0.03, f"{path.name}: pituitary lesion too large"
        assert abs(mask_col - brain_col) < 0.08 * SIZE, f"{path.name}: pituitary lesion off the midline"
        assert mask_row < brain_row, f"{path.name}: pituitary lesion not anterior"


def test_other_classes_also_sample_the_sellar_levels(description: dict) -> None:
    levels = {
        label: [
            facts["level_mm"] for name, facts in description["images"].items() if name.startswith(f"{label}/")
        ]
        for label in DEMO_CLASSES
    }
    others_low = [level for label in ("glioma", "meningioma", "notumor") for level in levels[label]]
    assert any(level <= SELLAR_TOP_MM for level in others_low)
    assert any(level > SELLAR_TOP_MM for level in others_low)


def test_planted_duplicates_are_recorded(demo: Path, description: dict) -> None:
    duplicates = description["duplicates"]
    assert len(duplicates) == round(0.1 * N_PER_CLASS * len(DEMO_CLASSES))
    assert {duplicate["kind"] for duplicate in duplicates} <= {"exact", "near"}
    for duplicate in duplicates:
        copy, source = demo / duplicate["path"], demo / duplicate["source"]
        assert copy.parent == source.parent  # same class
        assert copy.with_name(copy.stem + MASK_SUFFIX).is_file()
        if duplicate["kind"] == "exact":
            assert copy.read_bytes() == source.read_bytes()
        else:
            near, original = _load(copy), _load(source)
            assert near.shape != original.shape
            assert abs(near.shape[0] / original.shape[0] - 1) < 0.08
            resized = np.asarray(Image.fromarray(near).resize(original.shape[::-1], Image.BILINEAR), float)
            assert np.corrcoef(resized.ravel(), original.ravel().astype(float))[0, 1] > 0.9


def test_same_seed_same_bytes_other_seed_other_bytes(demo: Path, tmp_path: Path) -> None:
    state_numpy, state_python = np.random.get_state()[1].copy(), random.getstate()
    again = _generate(tmp_path / "again", seed=0)
    assert _digests(again) == _digests(demo)
    other = _digests(_generate(tmp_path / "other", seed=1))
    images = {name: digest for name, digest in _digests(demo).items() if not name.endswith(MASK_SUFFIX)}
    assert sum(other.get(name) == digest for name, digest in images.items()) == 0
    # The generator keeps to its own random streams.
    assert (np.random.get_state()[1] == state_numpy).all() and random.getstate() == state_python


def test_healthy_twin_is_the_slice_without_its_lesion(demo: Path) -> None:
    for label in ("glioma", "meningioma", "pituitary"):
        for path in _originals(demo, label)[:3]:
            image, mask = _load(path), _load(path.with_name(path.stem + MASK_SUFFIX)) > 0
            twin = healthy_twin(demo, path.relative_to(demo).as_posix())
            assert twin is not None and twin.shape == image.shape and twin.dtype == np.uint8
            changed = twin != image
            assert changed[mask].mean() > 0.5, path  # the lesion is gone...
            # the oedema reaches past the mask (up to 12 px here); beyond it nothing moved: same pose, noise
            far_from_lesion = ndimage.distance_transform_edt(~mask) > 16
            assert not changed[far_from_lesion].any(), path
    for path in _originals(demo, "notumor")[:2]:
        assert np.array_equal(healthy_twin(demo, path.relative_to(demo).as_posix()), _load(path))


def test_healthy_twin_only_for_unchanged_demo_originals(
    demo: Path, description: dict, tmp_path: Path
) -> None:
    assert healthy_twin(demo, description["duplicates"][0]["path"]) is None  # a planted copy
    assert healthy_twin(tmp_path, "glioma/glioma_0000.png") is None  # not a demo dataset
    edited = generate_demo_dataset(tmp_path / "edited", n_per_class=2, image_size=SIZE, seed=0)
    target = edited / "glioma" / "glioma_0001.png"
    pixels = _load(target).copy()
    pixels[:4, :4] = 255
    Image.fromarray(pixels).save(target)
    with pytest.raises(DataError, match="changed"):
        healthy_twin(edited, "glioma/glioma_0001.png")


def test_replaces_an_earlier_demo_set_but_not_other_folders(tmp_path: Path) -> None:
    target = _generate(tmp_path / "data", seed=3)
    stale = target / "glioma" / "stale.png"
    stale.write_bytes(b"x")
    _generate(target, seed=3)
    assert not stale.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to overwrite"):
        _generate(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "mine"]  # no build leftovers


@pytest.mark.parametrize("kwargs", [{"n_per_class": 0}, {"image_size": 8}, {"duplicate_fraction": 0.9}])
def test_rejects_bad_parameters(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_demo_dataset(tmp_path / "data", **kwargs)
