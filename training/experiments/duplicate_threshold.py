"""Measure the near-duplicate threshold on real slices: recall on planted copies, real pairs grouped.

Usage::

    neurovit experiment duplicate-threshold --data-dir ../shared/data/brain-tumor-mri [--sample 400]

For a seeded sample of real slices it plants transformed copies (JPEG re-encode at quality 70, resize to
0.75x and 1.25x, brightness +10% and -10%, a renamed byte-identical copy) and reports, per Hamming
threshold, the share of planted pairs found. It also lists every pair of distinct real files within the
threshold and sorts them by pixel similarity: real collections hold true duplicates (the same slice
saved twice, or augmented copies with added noise, a shift or a brightness change), which are not false
positives, so those are counted apart. A pair counts as a likely true duplicate when the two images,
scaled to 32x32, blurred and standardised, correlate at ``--same-correlation`` or more (0.965 matched
what we saw looking at pairs sorted by this correlation); ``--pairs-out`` saves side-by-side pictures of
pairs to check. It also reports how many groups the pairs form and the largest, since grouping is
transitive and loose thresholds chain distinct slices into one big group.
Nothing is copied into the repository.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neurovit.data.duplicates import PHASH_SIZE, near_pairs, pack_hashes, perceptual_hash, quantise
from neurovit.data.imageio import decode_image
from neurovit.data.layout import discover

TRANSFORMS = ("jpeg70", "resize0.75", "resize1.25", "bright+10%", "bright-10%", "renamed")


def encode(grey: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, fmt, **options)
    return buffer.getvalue()


def planted_copy(grey: np.ndarray, original_bytes: bytes, transform: str) -> bytes:
    """The bytes of a transformed copy of one slice, as a file someone might have added."""
    if transform == "jpeg70":
        return encode(grey, "JPEG", quality=70)
    if transform.startswith("resize"):
        scale = float(transform.removeprefix("resize"))
        height, width = grey.shape
        resized = Image.fromarray(grey, mode="L").resize(
            (round(width * scale), round(height * scale)), Image.BILINEAR
        )
        return encode(np.asarray(resized), "PNG")
    if transform.startswith("bright"):
        factor = 1.0 + float(transform.removeprefix("bright").rstrip("%")) / 100.0
        return encode(np.clip(np.round(grey.astype(np.float32) * factor), 0, 255).astype(np.uint8), "PNG")
    if transform == "renamed":
        return original_bytes
    raise ValueError(transform)


def thumbnail(grey: np.ndarray, side: int = 32) -> np.ndarray:
    """Blurred, standardised small copy: the added noise of augmented copies averages out."""
    small = np.asarray(Image.fromarray(grey, mode="L").resize((side, side), Image.BOX), dtype=np.float32)
    small = gaussian_filter(small, 1.0)
    return ((small - small.mean()) / (small.std() + 1e-6)).ravel()


def largest_group(count: int, pairs: np.ndarray) -> tuple[int, int]:
    """(number of groups, size of the largest) when pairs are joined transitively, as the grouping does."""
    if len(pairs) == 0:
        return 0, 0
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    return int(np.sum(sizes > 1)), int(sizes.max())


def hamming(packed: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.bitwise_count(packed[first] ^ packed[second]).sum(axis=1)


def save_pair_pictures(out: Path, pairs: list[tuple[int, int, int, float]], greys: list[np.ndarray]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for rank, (first, second, distance, correlation) in enumerate(pairs):
        canvas = np.concatenate(
            [np.asarray(Image.fromarray(greys[i]).resize((128, 128))) for i in (first, second)], axis=1
        )
        Image.fromarray(canvas).save(out / f"pair{rank:03d}_d{distance}_r{correlation:.3f}.png")


def run(
    data_dir: Path,
    sample: int = 400,
    seed: int = 0,
    max_threshold: int = 16,
    hash_size: int = PHASH_SIZE,
    same_correlation: float = 0.965,
    pairs_out: Path | None = None,
) -> dict:
    """The experiment (module docstring): prints the table; returns it as the final JSON line's object."""
    index = discover(data_dir)
    raw = [record.path.read_bytes() for record in index.records]
    greys = [quantise(decode_image(data).pixels) for data in raw]
    hashes = [perceptual_hash(grey, hash_size) for grey in greys]
    packed = pack_hashes(hashes)
    print(f"{len(greys)} real slices, phash hash_size {hash_size} ({packed.shape[1] * 64} bits)")

    # Planted copies of a seeded sample: distance of each copy to its source.
    rng = np.random.default_rng(seed)
    chosen_sample = rng.choice(len(greys), size=min(sample, len(greys)), replace=False)
    planted = {transform: [] for transform in TRANSFORMS}
    for source in chosen_sample:
        for transform in TRANSFORMS:
            copy = decode_image(planted_copy(greys[source], raw[source], transform)).pixels
            copy_hash = pack_hashes([perceptual_hash(quantise(copy), hash_size)])
            planted[transform].append(int(np.bitwise_count(copy_hash[0] ^ packed[source]).sum()))
    planted_distances = {name: np.asarray(values) for name, values in planted.items()}

    # Real pairs of distinct files within the largest threshold, split by pixel similarity.
    pairs = near_pairs(packed, max_threshold)
    distances = hamming(packed, pairs[:, 0], pairs[:, 1]) if len(pairs) else np.zeros(0, dtype=np.int64)
    thumbs = [thumbnail(grey) for grey in greys]
    correlations = np.array([float(np.mean(thumbs[i] * thumbs[j])) for i, j in pairs])
    if len(pairs) == 0:
        correlations = np.zeros(0)
    likely_same = correlations >= same_correlation

    header = (
        "threshold | "
        + " ".join(f"{name:>10}" for name in TRANSFORMS)
        + " |   all | real pairs: same distinct | groups largest"
    )
    print(header)
    rows = []
    for threshold in range(max_threshold + 1):
        recalls = {name: float(np.mean(values <= threshold)) for name, values in planted_distances.items()}
        overall = float(np.mean(np.concatenate(list(planted_distances.values())) <= threshold))
        within = distances <= threshold
        same, distinct = int(np.sum(within & likely_same)), int(np.sum(within & ~likely_same))
        groups, largest = largest_group(len(greys), pairs[within])
        rows.append(
            {
                "threshold": threshold,
                "recall": recalls,
                "recall_all": overall,
                "real_pairs_same": same,
                "real_pairs_distinct": distinct,
                "groups": groups,
                "largest_group": largest,
            }
        )
        print(
            f"{threshold:>9} | "
            + " ".join(f"{recalls[name]:>10.3f}" for name in TRANSFORMS)
            + f" | {overall:.3f} | {same:>15} {distinct:>8} | {groups:>6} {largest:>7}"
        )

    order = np.argsort(distances, kind="stable")
    print("closest distinct real pairs (distance, correlation, files):")
    shown = [i for i in order if not likely_same[i]][:10]
    for i in shown:
        first, second = pairs[i]
        print(
            f"  {distances[i]:>2} {correlations[i]:.3f} {index.records[first].relpath} "
            f"{index.records[second].relpath}"
        )
    print("likely true duplicates among real pairs (distance, correlation, files):")
    for i in [i for i in order if likely_same[i]][:10]:
        first, second = pairs[i]
        print(
            f"  {distances[i]:>2} {correlations[i]:.3f} {index.records[first].relpath} "
            f"{index.records[second].relpath}"
        )
    if pairs_out:
        chosen = [i for i in order if likely_same[i]][:10] + shown
        save_pair_pictures(
            pairs_out,
            [(int(pairs[i][0]), int(pairs[i][1]), int(distances[i]), float(correlations[i])) for i in chosen],
            greys,
        )
    result = {"images": len(greys), "sample": len(chosen_sample), "table": rows}
    print(json.dumps(result))
    return result
