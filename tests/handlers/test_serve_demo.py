"""The demo's held-out slices are chosen from the version's split before any answer, and each served map's
peak is judged against the lesion outline the way eval-explain scores it."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from handlers.local_service import ServeError, demo_slices, lesion_verdict
from neurovit.data.split import SplitEntry, SplitPlan
from neurovit.store import LocalStore


def _publish(tmp_path, entries, classes):
    version_dir = tmp_path / "version"
    (version_dir / "model").mkdir(parents=True)
    (version_dir / "model" / "weights.bin").write_bytes(b"x")
    SplitPlan(entries, classes, {}).write(version_dir / "split.json")
    LocalStore(tmp_path / "store").publish("neurovit", version_dir, metadata={})
    return str(tmp_path / "store")


def _entry(data, relpath, label, split):
    path = data / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
    return SplitEntry(relpath, label, split, hashlib.sha256(path.read_bytes()).hexdigest())


def test_the_first_test_slice_of_each_class_in_the_split_is_shown(tmp_path):
    data = tmp_path / "data"
    entries = [
        _entry(data, "notumor/n_2.png", "notumor", "test"),
        _entry(data, "glioma/g_0.png", "glioma", "train"),  # trained on: never shown
        _entry(data, "glioma/g_3.png", "glioma", "test"),
        _entry(data, "glioma/g_1.png", "glioma", "test"),
        _entry(data, "notumor/n_1.png", "notumor", "val"),
    ]
    store = _publish(tmp_path, entries, ["glioma", "notumor"])
    assert demo_slices(store, data) == [
        (data / "glioma/g_1.png", "glioma"),
        (data / "notumor/n_2.png", "notumor"),
    ]
    with pytest.raises(ServeError, match="none of version"):
        demo_slices(store, tmp_path / "elsewhere")


def test_a_served_map_is_on_the_lesion_when_its_peak_is(tmp_path):
    image = tmp_path / "g.png"
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(image)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[40:60, 40:60] = 255  # lower right
    grid = np.zeros((4, 4))
    assert lesion_verdict(image, {"grid": grid.tolist()}) == "no mask"
    Image.fromarray(mask).save(tmp_path / "g.mask.png")
    grid[3, 3] = 1.0
    assert lesion_verdict(image, {"grid": grid.tolist()}) == "on lesion"
    grid[3, 3], grid[0, 0] = 0.0, 1.0
    assert lesion_verdict(image, {"grid": grid.tolist()}) == "off lesion"
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "g.mask.png")
    assert lesion_verdict(image, {"grid": grid.tolist()}) == "no lesion"
