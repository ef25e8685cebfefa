"""The split: groups never straddle splits, classes are stratified, seeds reproduce, leaks are handled."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from neurovit.data.analysis import ImageFingerprint, scan
from neurovit.data.duplicates import find_duplicates
from neurovit.data.layout import DatasetIndex, discover
from neurovit.data.split import (
    SPLIT_FILE,
    SplitEntry,
    data_fingerprint,
    load_split,
    plan_split,
    split_dataset,
)
from neurovit.errors import DataError

# --- fabricated fingerprints: the split logic without decoding anything --------------------------------


def picture(key: str) -> tuple[str, str]:
    """(exact hash, phash) of an imaginary picture: random 256-bit phashes are ~128 bits apart."""
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return hashlib.sha256(key.encode()).hexdigest(), np.random.default_rng(seed).bytes(32).hex()


def fingerprint(
    relpath: str, label: str, split: str | None = None, same_as: str | None = None
) -> ImageFingerprint:
    exact, perceptual = picture(same_as or relpath)
    return ImageFingerprint(
        relpath,
        label,
        split,
        exact_hash=exact,
        phash=perceptual,
        file_sha256=hashlib.sha256(relpath.encode()).hexdigest(),
    )


def index_of(fingerprints: list[ImageFingerprint], layout: str = "class-folders") -> DatasetIndex:
    return DatasetIndex(Path("/data"), layout, sorted({f.label for f in fingerprints}), [])


def unsplit_collection(per_class: int = 40, classes: tuple[str, ...] = ("glioma", "notumor", "pituitary")):
    """Singletons plus duplicate groups of 2-5 images per class."""
    items = []
    for label in classes:
        for number in range(per_class):
            items.append(fingerprint(f"{label}/{number:03d}.png", label))
        for group in range(4):
            for copy in range(1, group + 2):
                items.append(
                    fingerprint(f"{label}/copy{group}_{copy}.png", label, same_as=f"{label}/{group:03d}.png")
                )
    return items


def split_of(plan) -> dict[str, str]:
    return {entry.relpath: entry.split for entry in plan.entries}


def test_duplicate_groups_never_straddle_splits():
    items = unsplit_collection()
    for seed in range(5):
        assigned = split_of(plan_split(index_of(items), items, seed=seed))
        for group in find_duplicates(items):
            assert len({assigned[member] for member in group.members}) == 1, group.members


def test_split_is_stratified_close_to_the_fractions():
    items = unsplit_collection(per_class=60)
    plan = plan_split(index_of(items), items, val_fraction=0.2, test_fraction=0.1, seed=3)
    per_class = Counter(item.label for item in items)
    for label, total in per_class.items():
        assert abs(plan.counts["val"][label] - 0.2 * total) <= 2
        assert abs(plan.counts["test"][label] - 0.1 * total) <= 2
        assert sum(plan.counts[split][label] for split in ("train", "val", "test")) == total


def test_split_is_reproducible_from_its_seed():
    items = unsplit_collection()
    first, again = (
        plan_split(index_of(items), items, seed=7),
        plan_split(index_of(items), items[::-1], seed=7),
    )
    other = plan_split(index_of(items), items, seed=8)
    assert first.entries == again.entries and first.fingerprint == again.fingerprint
    assert split_of(first) != split_of(other) and first.fingerprint != other.fingerprint


def test_small_class_still_reaches_every_split():
    items = [fingerprint(f"{label}/{n}.png", label) for label in ("a", "b") for n in range(3)]
    plan = plan_split(index_of(items), items)
    assert all(plan.counts[split][label] == 1 for split in ("train", "val", "test") for label in ("a", "b"))


def test_too_few_images_is_a_data_error():
    items = [fingerprint(f"a/{n}.png", "a") for n in range(5)] + [
        fingerprint(f"b/{n}.png", "b") for n in range(2)
    ]
    with pytest.raises(DataError, match="class b has 2 image group"):
        plan_split(index_of(items), items)


def test_a_class_that_is_one_duplicate_group_cannot_be_split():
    items = [fingerprint(f"a/{n}.png", "a") for n in range(6)]
    items += [fingerprint(f"b/{n}.png", "b", same_as="b/0.png") for n in range(6)]
    with pytest.raises(DataError, match="class b has 1 image group"):
        plan_split(index_of(items), items)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"leak_policy": "keep"}, "leak_policy"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "val \\+ test < 1"),
        ({"val_fraction": -0.1}, "fractions"),
    ],
)
def test_bad_options(options, message):
    items = unsplit_collection(per_class=5)
    with pytest.raises(DataError, match=message):
        plan_split(index_of(items), items, **options)


def test_corrupt_files_are_excluded_and_counted():
    items = unsplit_collection(per_class=10)
    items.append(ImageFingerprint("glioma/broken.png", "glioma", None, error="not an image"))
    plan = plan_split(index_of(items), items)
    assert plan.excluded_corrupt == 1 and "glioma/broken.png" not in split_of(plan)
    assert len(plan.entries) == len(items) - 1


# --- pre-split input -----------------------------------------------------------------------------------


def pre_split_collection():
    """train/val/test, three leaking groups: train+test (2 test members), train+val, and val+test."""
    items = []
    for split, count in (("train", 20), ("val", 6), ("test", 6)):
        for label in ("glioma", "notumor"):
            items += [fingerprint(f"{split}/{label}/{n}.png", label, split) for n in range(count)]
    items += [
        fingerprint("test/glioma/leak_a.png", "glioma", "test", same_as="train/glioma/0.png"),
        fingerprint("test/glioma/leak_b.png", "glioma", "test", same_as="train/glioma/0.png"),
        fingerprint("val/notumor/leak_c.png", "notumor", "val", same_as="train/notumor/1.png"),
        fingerprint("test/notumor/leak_d.png", "notumor", "test", same_as="val/notumor/2.png"),
    ]
    return items


def test_pre_split_leaks_are_dropped_from_the_later_split():
    items = pre_split_collection()
    plan = plan_split(index_of(items, "pre-split"), items)
    assigned = split_of(plan)
    assert plan.dropped == 4 and plan.moved == 0
    for dropped in (
        "test/glioma/leak_a.png",
        "test/glioma/leak_b.png",
        "val/notumor/leak_c.png",
        "test/notumor/leak_d.png",
    ):
        assert dropped not in assigned
    assert assigned["train/glioma/0.png"] == "train" and assigned["val/notumor/2.png"] == "val"
    # Everything else keeps its given split.
    assert all(assigned[item.relpath] == item.split for item in items if item.relpath in assigned)
    assert plan.params["carved_from_train"] == []


def test_pre_split_leaks_can_be_moved_to_train():
    items = pre_split_collection()
    plan = plan_split(index_of(items, "pre-split"), items, leak_policy="move")
    assigned = split_of(plan)
    assert plan.moved == 5 and plan.dropped == 0  # the val+test group moves both members
    for moved in (
        "test/glioma/leak_a.png",
        "test/glioma/leak_b.png",
        "val/notumor/leak_c.png",
        "test/notumor/leak_d.png",
        "val/notumor/2.png",
    ):
        assert assigned[moved] == "train"
    assert len(plan.entries) == len(items)


def test_missing_val_split_is_carved_from_train_group_aware():
    items = [item for item in pre_split_collection() if item.split != "val"]
    items += [
        fingerprint(f"train/glioma/dup{n}.png", "glioma", "train", same_as="train/glioma/5.png")
        for n in range(3)
    ]
    plan = plan_split(index_of(items, "pre-split"), items, val_fraction=0.25, seed=1)
    assigned = split_of(plan)
    assert plan.params["carved_from_train"] == ["val"]
    assert set(plan.counts) == {"train", "val", "test"}
    assert all(
        assigned[item.relpath] == "test"
        for item in items
        if item.split == "test" and item.relpath in assigned
    )
    trained = sum(1 for item in items if item.split == "train")
    assert abs(sum(plan.counts["val"].values()) - 0.25 * trained) <= 3
    group = ["train/glioma/5.png"] + [f"train/glioma/dup{n}.png" for n in range(3)]
    assert len({assigned[member] for member in group}) == 1


def test_dropped_leaks_are_not_carved_back_into_a_split():
    items = [item for item in pre_split_collection() if item.split != "val"]
    plan = plan_split(index_of(items, "pre-split"), items)
    assert plan.dropped == 2  # leak_a and leak_b; without val, leak_d no longer leaks
    assigned = split_of(plan)
    assert "test/glioma/leak_a.png" not in assigned and "test/glioma/leak_b.png" not in assigned
    assert len(plan.entries) == len(items) - 2


def test_pre_split_without_train_is_an_error():
    items = [
        fingerprint(f"{split}/{label}/{n}.png", label, split)
        for split in ("val", "test")
        for label in "ab"
        for n in range(3)
    ]
    with pytest.raises(DataError, match="needs a train split"):
        plan_split(index_of(items, "pre-split"), items)


def test_dropping_a_whole_class_from_test_is_an_error():
    items = [fingerprint(f"train/{label}/{n}.png", label, "train") for label in "ab" for n in range(10)]
    items += [fingerprint(f"val/{label}/{n}.png", label, "val") for label in "ab" for n in range(2)]
    items += [
        fingerprint("test/a/0.png", "a", "test"),
        fingerprint("test/b/0.png", "b", "test", same_as="train/b/0.png"),
    ]
    with pytest.raises(DataError, match="split test would have no images of class b"):
        plan_split(index_of(items, "pre-split"), items)


# --- the split file ------------------------------------------------------------------------------------


def test_write_and_load_round_trip(tmp_path):
    items = unsplit_collection(per_class=8)
    plan = plan_split(index_of(items), items)
    written = plan.write(tmp_path)
    assert written == tmp_path / SPLIT_FILE
    loaded = load_split(written)
    assert loaded == plan
    assert load_split(tmp_path).fingerprint == plan.fingerprint


def test_fingerprint_is_over_the_sorted_entry_lines():
    entries = [SplitEntry("b.png", "x", "train", "1" * 64), SplitEntry("a.png", "y", "test", "2" * 64)]
    lines = "a.png\ty\ttest\t" + "2" * 64 + "\n" + "b.png\tx\ttrain\t" + "1" * 64 + "\n"
    assert data_fingerprint(entries) == hashlib.sha256(lines.encode()).hexdigest()
    assert data_fingerprint(entries[::-1]) == data_fingerprint(entries)


def test_edited_split_file_is_rejected(tmp_path):
    items = unsplit_collection(per_class=8)
    path = plan_split(index_of(items), items).write(tmp_path / "split.json")
    raw = json.loads(path.read_text())
    raw["entries"][0]["split"] = "test" if raw["entries"][0]["split"] != "test" else "train"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="was edited"):
        load_split(path)


def test_not_a_split_file(tmp_path):
    (tmp_path / "split.json").write_text("{}")
    with pytest.raises(DataError, match="not a NeuroViT split file"):
        load_split(tmp_path / "split.json")
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "absent.json")


# --- end to end on real files -----------------------------------------------------------------------------


def test_split_of_real_files_records_file_checksums(tmp_path, write_slice):
    root = tmp_path / "data"
    for label, first_seed in (("glioma", 0), ("notumor", 50)):
        for number in range(8):
            write_slice(root / label / f"{number}.png", seed=first_seed + number, size=48)
    write_slice(root / "glioma" / "0_again.jpg", seed=0, size=48, fmt="JPEG", quality=70)
    shutil.copyfile(root / "notumor" / "0.png", root / "notumor" / "0_copy.png")
    (root / "notumor" / "readme.txt").write_text("not an image")

    index = discover(root)
    plan = plan_split(index, scan(index, workers=1), seed=2)

    assert plan.excluded_corrupt == 1 and plan.source["layout"] == "class-folders"
    assigned = split_of(plan)
    assert assigned["glioma/0.png"] == assigned["glioma/0_again.jpg"]
    assert assigned["notumor/0.png"] == assigned["notumor/0_copy.png"]
    for entry in plan.entries:
        assert entry.sha256 == hashlib.sha256((root / entry.relpath).read_bytes()).hexdigest()
    assert split_dataset(root, workers=1, seed=2).fingerprint == plan.fingerprint
