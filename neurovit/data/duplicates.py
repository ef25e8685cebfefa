"""Exact and near duplicate images, found from per-image hashes without a pairwise Python loop.

* Exact: sha256 of the decoded image quantised to uint8, plus its shape, so a renamed copy or the same
  pixels saved in another lossless format is an exact duplicate.
* Near: ImageHash's perceptual hash (DCT of a 64x64 thumbnail, 256 bits); two images are near duplicates
  when the Hamming distance of their hashes is at most ``NEAR_THRESHOLD``. Hashes are packed into uint64
  words and compared block by block with XOR + ``np.bitwise_count``: 10,000 images take well under a
  second.

Groups are the connected components of the duplicate graph (union-find over all pairs), so a chain
A~B~C is one group even if A and C are further apart; the split keeps such a group in one split.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

logger = logging.getLogger(__name__)

# 16 -> 256-bit hashes from a 64x64 thumbnail. The 64-bit hash (size 8) did not separate copies from
# distinct slices on real MRI: at distance 4 of 64, where it first found all planted copies, 48 of the 380
# real pairs within it were "other" (see below), and looking at them showed clearly different slices
# (similar midline sagittal slices of different people). At 256 bits the same recall comes with far fewer.
PHASH_SIZE = 16

# Hamming distance (of 256 bits) at or below which two images are near duplicates. Measured with
# `neurovit experiment duplicate-threshold --data-dir ../shared/data/brain-tumor-mri` on the 5,484 real
# 128x128 slices (400 sampled, 6 planted copies of each; distances of balanced phashes are even):
#
#   thr | planted recall:                                              | real pairs
#       | jpeg70 size.75 size1.25 bright+10% bright-10% renamed    all | same other groups max
#     8 |  1.000   0.985    0.968      0.998      1.000   1.000  0.992 |  126     0    106   4
#    10 |  1.000   0.998    0.993      1.000      1.000   1.000  0.998 |  165     0    141   4
#    12 |  1.000   1.000    1.000      1.000      1.000   1.000  1.000 |  227     3    190   5
#    16 |  1.000   1.000    1.000      1.000      1.000   1.000  1.000 |  367    13    287   5
#    20 |  1.000   1.000    1.000      1.000      1.000   1.000  1.000 |  503    44    382   7
#    24 |  1.000   1.000    1.000      1.000      1.000   1.000  1.000 |  681    97    512   7
#
# "groups"/"max": the groups the real pairs form and the largest. "same": the pair's blurred 32x32
# thumbnails correlate >= 0.965 (the same slice, re-saved or augmented); "other": below that. Looking at
# all 13 "other" pairs at <= 16, 12 are still the same slice with added noise, a contrast change or a zoom
# (the collection holds many augmented copies) and one may be a neighbouring slice; clearly different
# slices (similar midline sagittal slices) appear from 18-20 on. 16 keeps full planted recall with a
# 4-bit margin, and transitive grouping stays small (largest group: 5 images).
NEAR_THRESHOLD = 16

# Cap on uint64 elements per compared block: bounds memory (~8 MB a block) whatever the dataset size.
_BLOCK_ELEMENTS = 1_000_000


class HashedImage(Protocol):
    """What the grouping needs from an image: its identity, split and hashes (None when unreadable)."""

    relpath: str
    split: str | None
    exact_hash: str | None
    phash: str | None


@dataclass
class DuplicateGroup:
    """A set of images that are the same picture.

    Args:
        kind: "exact" (same decoded pixels) or "near" (perceptual hashes within the threshold).
        members: relpaths, sorted.
        splits: the splits the members sit in, sorted (empty when the layout has no splits).
        is_leak: True when the members sit in more than one split.
    """

    kind: Literal["exact", "near"]
    members: list[str]
    splits: list[str]
    is_leak: bool


def quantise(pixels: np.ndarray) -> np.ndarray:
    """Grey float image in [0, 1] -> uint8 image, the common ground of both hashes."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def exact_hash(grey_uint8: np.ndarray) -> str:
    """sha256 over the shape and the uint8 pixels: equal for equal images whatever file held them."""
    digest = hashlib.sha256(f"{grey_uint8.shape[0]}x{grey_uint8.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(grey_uint8, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def perceptual_hash(grey_uint8: np.ndarray, hash_size: int = PHASH_SIZE) -> str:
    """ImageHash's phash of a uint8 grey image, as a hex string of hash_size**2 bits."""
    return str(imagehash.phash(Image.fromarray(grey_uint8, mode="L"), hash_size=hash_size))


def image_hashes(pixels: np.ndarray, hash_size: int = PHASH_SIZE) -> tuple[str, str]:
    """(exact hash, perceptual hash) of a decoded grey float image, quantising once."""
    grey = quantise(pixels)
    return exact_hash(grey), perceptual_hash(grey, hash_size)


def pack_hashes(hex_hashes: Sequence[str]) -> np.ndarray:
    """Hex hashes of one length -> (N, words) uint64 array, 64 bits per word."""
    if not hex_hashes:
        return np.zeros((0, 1), dtype=np.uint64)
    lengths = {len(value) for value in hex_hashes}
    if len(lengths) != 1:
        raise ValueError(f"hashes of different lengths cannot be compared: {sorted(lengths)}")
    hex_length = lengths.pop()
    padded = hex_length + (-hex_length) % 16  # whole 64-bit words
    raw = b"".join(bytes.fromhex(value.rjust(padded, "0")) for value in hex_hashes)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hex_hashes), padded // 16)


def near_pairs(packed: np.ndarray, threshold: int) -> np.ndarray:
    """All pairs (i, j), i < j, of rows of ``packed`` within ``threshold`` bits; shape (M, 2), int64.

    Vectorised by row blocks over the upper triangle: XOR the block against every later row and count
    the differing bits with ``np.bitwise_count``.
    """
    count, words = packed.shape
    if count < 2:
        return np.zeros((0, 2), dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // (count * words))
    found = []
    for start in range(0, count, block):
        stop = min(count, start + block)
        rows, columns = packed[start:stop], packed[start:]
        distance = np.bitwise_count(rows[:, 0, None] ^ columns[None, :, 0])
        if words > 1:
            distance = distance.astype(np.uint16)
            for word in range(1, words):
                distance += np.bitwise_count(rows[:, word, None] ^ columns[None, :, word])
        row, column = np.nonzero(distance <= threshold)
        upper = column > row  # column index is offset by start, as is row: compare before shifting
        found.append(np.stack([row[upper] + start, column[upper] + start], axis=1))
    return np.concatenate(found).astype(np.int64)


def duplicate_components(images: Sequence[HashedImage], threshold: int = NEAR_THRESHOLD) -> np.ndarray:
    """Component id per image: images in one exact or near duplicate group share an id.

    Unreadable images (no hashes) each get their own id.
    """
    count = len(images)
    edges = [np.zeros((0, 2), dtype=np.int64)]
    hashed = [index for index, image in enumerate(images) if image.phash is not None]
    if hashed:
        packed = pack_hashes([images[index].phash for index in hashed])
        pairs = near_pairs(packed, threshold)
        edges.append(np.asarray(hashed, dtype=np.int64)[pairs])
    # Exact groups are joined too, so the grouping holds even for hashes computed elsewhere.
    for members in _exact_groups(images).values():
        chain = np.asarray(members, dtype=np.int64)
        edges.append(np.stack([chain[:-1], chain[1:]], axis=1))
    edge_array = np.concatenate(edges)
    graph = coo_matrix(
        (np.ones(len(edge_array), dtype=np.int8), (edge_array[:, 0], edge_array[:, 1])), shape=(count, count)
    )
    _, labels = connected_components(graph, directed=False)
    return labels


def find_duplicates(images: Sequence[HashedImage], threshold: int = NEAR_THRESHOLD) -> list[DuplicateGroup]:
    """Exact groups, then near groups (a near group that is wholly one exact group is not repeated)."""
    exact = _exact_groups(images).values()
    groups = [_group("exact", [images[index] for index in members]) for members in exact]
    labels = duplicate_components(images, threshold)
    by_component: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_component[int(label)].append(index)
    for members in by_component.values():
        if len(members) < 2:
            continue
        if len({images[index].exact_hash for index in members}) == 1:
            continue  # already reported as one exact group
        groups.append(_group("near", [images[index] for index in members]))
    groups.sort(key=lambda group: (group.kind, group.members[0]))
    logger.info(
        "duplicates: %d exact groups, %d near groups, %d cross-split",
        sum(group.kind == "exact" for group in groups),
        sum(group.kind == "near" for group in groups),
        sum(group.is_leak for group in groups),
    )
    return groups


def _exact_groups(images: Sequence[HashedImage]) -> dict[str, list[int]]:
    by_hash: dict[str, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        if image.exact_hash is not None:
            by_hash[image.exact_hash].append(index)
    return {key: members for key, members in by_hash.items() if len(members) > 1}


def _group(kind: Literal["exact", "near"], members: Sequence[HashedImage]) -> DuplicateGroup:
    splits = sorted({image.split for image in members if image.split is not None})
    return DuplicateGroup(kind, sorted(image.relpath for image in members), splits, len(splits) > 1)


__all__ = [
    "NEAR_THRESHOLD",
    "PHASH_SIZE",
    "DuplicateGroup",
    "HashedImage",
    "duplicate_components",
    "exact_hash",
    "find_duplicates",
    "image_hashes",
    "near_pairs",
    "pack_hashes",
    "perceptual_hash",
    "quantise",
]
