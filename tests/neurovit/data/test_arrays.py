"""Decoding a split's images: a file that vanished since the split listed it is an error, not a gap."""

from __future__ import annotations

import shutil

import pytest

from neurovit.data.arrays import load_arrays
from neurovit.errors import DataError, MissingFileError
from neurovit.preprocessing import PreprocessConfig

CONFIG = PreprocessConfig(image_size=32)


def _paths(root, count: int):
    files = sorted(root.rglob("*.png"))
    return [files[i % len(files)] for i in range(count)]


@pytest.mark.parametrize("count", [6, 64])  # 64: decoded in the process pool
def test_a_vanished_file_is_a_data_error(class_folders, tmp_path, count: int) -> None:
    root = class_folders(per_class=3)
    paths = _paths(root, count)
    gone = tmp_path / "gone.png"
    shutil.copyfile(paths[0], gone)
    paths[1] = gone
    gone.unlink()  # deleted between the split and training
    with pytest.raises(MissingFileError, match="gone.png cannot be read .*analyse and split the data again"):
        load_arrays(paths, [0] * count, [str(path) for path in paths], CONFIG, workers=2)
    assert issubclass(MissingFileError, DataError)


def test_an_undecodable_file_is_still_skipped(class_folders, tmp_path) -> None:
    root = class_folders(per_class=3)
    paths = _paths(root, 6)
    paths[1] = tmp_path / "broken.png"
    paths[1].write_bytes(b"not an image")
    images, labels = load_arrays(paths, list(range(6)), [str(path) for path in paths], CONFIG)
    assert images.shape == (5, 32, 32) and list(labels) == [0, 2, 3, 4, 5]
