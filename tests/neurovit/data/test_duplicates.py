"""Exact and near duplicates: planted copies of brain-like slices are grouped, look-alike slices are not."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from neurovit.data.duplicates import (
    NEAR_THRESHOLD,
    duplicate_components,
    exact_hash,
    find_duplicates,
    image_hashes,
    near_pairs,
    pack_hashes,
)
from neurovit.data.imageio import decode_image


@dataclass
class Item:
    relpath: str
    split: str | None
    exact_hash: str | None
    phash: str | None


def encode(grey: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, fmt, **options)
    return buffer.getvalue()


def resized(grey: np.ndarray, scale: float) -> np.ndarray:
    side = round(grey.shape[0] * scale)
    return np.asarray(Image.fromarray(grey).resize((side, side), Image.BILINEAR))


def item_from_bytes(relpath: str, data: bytes, split: str | None = None) -> Item:
    exact, perceptual = image_hashes(decode_image(data).pixels)
    return Item(relpath, split, exact, perceptual)


PLANTED = {
    "renamed": lambda grey: encode(grey, "PNG"),
    "as-bmp": lambda grey: encode(grey, "BMP"),
    "jpeg70": lambda grey: encode(grey, "JPEG", quality=70),
    "resize0.75": lambda grey: encode(resized(grey, 0.75), "PNG"),
    "resize1.25": lambda grey: encode(resized(grey, 1.25), "PNG"),
    "bright+10%": lambda grey: encode(np.clip(np.round(grey * 1.1), 0, 255).astype(np.uint8), "PNG"),
    "bright-10%": lambda grey: encode(np.round(grey * 0.9).astype(np.uint8), "PNG"),
}


@pytest.fixture(scope="module")
def collection(make_slice) -> tuple[list[Item], dict[str, str]]:
    """30 distinct look-alike slices, plus one planted copy of a different slice per transform."""
    items = [item_from_bytes(f"orig/{seed:02d}.png", encode(make_slice(seed), "PNG")) for seed in range(30)]
    planted = {}
    for source, (name, make) in enumerate(PLANTED.items()):
        relpath = f"copies/{name}.img"
        items.append(item_from_bytes(relpath, make(make_slice(source))))
        planted[relpath] = f"orig/{source:02d}.png"
    return items, planted


def test_exact_hash_ignores_file_name_and_lossless_format(make_slice):
    grey = make_slice(7)
    hashes = {image_hashes(decode_image(encode(grey, fmt)).pixels)[0] for fmt in ("PNG", "BMP", "TIFF")}
    assert len(hashes) == 1


def test_exact_hash_includes_the_shape():
    flat = np.zeros(16, dtype=np.uint8)
    assert exact_hash(flat.reshape(4, 4)) != exact_hash(flat.reshape(2, 8))


def test_exact_hash_changes_with_one_pixel(make_slice):
    grey = make_slice(8)
    changed = grey.copy()
    changed[0, 0] ^= 1
    assert exact_hash(grey) != exact_hash(changed)


def test_every_planted_copy_is_grouped_with_its_source(collection):
    items, planted = collection
    groups = find_duplicates(items)
    member_sets = [set(group.members) for group in groups]
    for copy, source in planted.items():
        assert any({copy, source} <= members for members in member_sets), f"{copy} not grouped with {source}"


def test_lossless_copies_are_exact_and_transformed_copies_near(collection):
    items, planted = collection
    groups = {frozenset(group.members): group.kind for group in find_duplicates(items)}
    kind_of = {copy: next(kind for members, kind in groups.items() if copy in members) for copy in planted}
    assert kind_of["copies/renamed.img"] == "exact" and kind_of["copies/as-bmp.img"] == "exact"
    for name in ("jpeg70", "resize0.75", "resize1.25", "bright+10%", "bright-10%"):
        assert kind_of[f"copies/{name}.img"] == "near"


def test_distinct_look_alike_slices_are_not_grouped(collection):
    items, planted = collection
    grouped = {member for group in find_duplicates(items) for member in group.members}
    assert grouped == set(planted) | set(planted.values())


def test_near_group_that_is_one_exact_group_is_reported_once(make_slice):
    data = encode(make_slice(3), "PNG")
    items = [item_from_bytes(name, data) for name in ("a.png", "b.png", "c.png")]
    groups = find_duplicates(items)
    assert [(group.kind, group.members) for group in groups] == [("exact", ["a.png", "b.png", "c.png"])]


def test_near_group_containing_an_exact_pair_is_reported_as_both(make_slice):
    grey = make_slice(4)
    items = [
        item_from_bytes("a.png", encode(grey, "PNG")),
        item_from_bytes("b.png", encode(grey, "PNG")),
        item_from_bytes("c.jpg", encode(grey, "JPEG", quality=70)),
    ]
    groups = find_duplicates(items)
    assert [(group.kind, group.members) for group in groups] == [
        ("exact", ["a.png", "b.png"]),
        ("near", ["a.png", "b.png", "c.jpg"]),
    ]


def test_groups_across_splits_are_leaks(make_slice):
    grey = make_slice(5)
    items = [
        item_from_bytes("train/a.png", encode(grey, "PNG"), "train"),
        item_from_bytes("test/a.jpg", encode(grey, "JPEG", quality=70), "test"),
        item_from_bytes("train/b.png", encode(make_slice(6), "PNG"), "train"),
        item_from_bytes("train/b2.png", encode(make_slice(6), "PNG"), "train"),
    ]
    groups = {group.members[0]: group for group in find_duplicates(items)}
    assert groups["test/a.jpg"].splits == ["test", "train"] and groups["test/a.jpg"].is_leak
    assert groups["train/b.png"].splits == ["train"] and not groups["train/b.png"].is_leak


def test_unreadable_images_are_never_grouped():
    items = [Item("a", None, None, None), Item("b", None, None, None)]
    assert find_duplicates(items) == []
    assert len(set(duplicate_components(items))) == 2


def test_grouping_is_transitive():
    # a~b and b~c within the threshold, a and c further apart: one group, the split keeps it whole.
    base = 0
    one_step = (1 << NEAR_THRESHOLD) - 1  # NEAR_THRESHOLD bits set
    two_steps = one_step | (one_step << NEAR_THRESHOLD)
    hashes = [f"{value:064x}" for value in (base, one_step, two_steps)]
    items = [Item(name, None, name, hashed) for name, hashed in zip("abc", hashes, strict=True)]
    assert len(set(duplicate_components(items))) == 1


def test_near_pairs_matches_brute_force_on_multi_word_hashes():
    rng = np.random.default_rng(0)
    base = [rng.bytes(32) for _ in range(40)]
    hashes = []
    for value in base:  # each base hash plus a copy with a few bits flipped, so pairs exist
        hashes.append(value.hex())
        flipped = bytearray(value)
        for position in rng.integers(0, 256, size=int(rng.integers(0, 30))):
            flipped[position // 8] ^= 1 << (position % 8)
        hashes.append(bytes(flipped).hex())
    packed = pack_hashes(hashes)
    threshold = 16
    found = {tuple(pair) for pair in near_pairs(packed, threshold).tolist()}
    as_ints = [int(value, 16) for value in hashes]
    expected = {
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if (as_ints[i] ^ as_ints[j]).bit_count() <= threshold
    }
    assert expected and found == expected


def test_near_pairs_of_fewer_than_two_hashes():
    assert near_pairs(pack_hashes([]), 4).shape == (0, 2)
    assert near_pairs(pack_hashes(["ff" * 32]), 4).shape == (0, 2)


def test_hashes_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="different lengths"):
        pack_hashes(["ff" * 8, "ff" * 32])


def test_near_search_of_10k_hashes_is_vectorised():
    """A Python pairwise loop over 50 million pairs takes minutes; the vectorised search well under 1 s."""
    rng = np.random.default_rng(1)
    packed = pack_hashes([rng.bytes(32).hex() for _ in range(10_000)])
    start = time.perf_counter()
    near_pairs(packed, NEAR_THRESHOLD)
    # Generous bound for a shared 2-core machine; measured about 0.4 s.
    assert time.perf_counter() - start < 3.0
