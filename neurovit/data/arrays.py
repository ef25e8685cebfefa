"""Decode a split's images once into canonical uint8 arrays, cached on disk by content.

Training reads the whole set from memory (5,500 slices of 128x128 are 90 MB), so the data loader costs
almost nothing next to the model. The cache key is the image content hashes plus the preprocessing
parameters: a changed file or transform can never reuse a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from neurovit.data.imageio import read_image
from neurovit.errors import DataError, MissingFileError, UnreadableImageError
from neurovit.preprocessing import PreprocessConfig, canonicalise

log = logging.getLogger(__name__)


def _canonical_or_none(args: tuple[str, PreprocessConfig]) -> np.ndarray | None:
    """The canonical image, None when the file does not decode; a file that cannot be read at all (gone
    since the analysis or split listed it) is an error, never a silent gap in the split."""
    path, config = args
    try:
        return canonicalise(read_image(path).pixels, config)
    except UnreadableImageError as error:
        if isinstance(error.__cause__, OSError):
            reason = error.__cause__.strerror or error.__cause__
            raise MissingFileError(
                f"{path} cannot be read ({reason}): it was listed when the data was analysed and split; "
                "restore it, or analyse and split the data again"
            ) from None
        return None


def decode_all(paths: list[Path], config: PreprocessConfig, workers: int = 2) -> list[np.ndarray | None]:
    """Canonical uint8 images for ``paths`` (None where a file cannot be decoded), in order."""
    jobs = [(str(p), config) for p in paths]
    if workers <= 1 or len(jobs) < 64:
        return [_canonical_or_none(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_canonical_or_none, jobs, chunksize=64))


def load_arrays(
    paths: list[Path],
    labels: list[int],
    content_hashes: list[str],
    config: PreprocessConfig,
    cache_dir: str | Path | None = None,
    workers: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 images and (N,) int64 labels; undecodable files are skipped with a warning.

    Raises:
        MissingFileError: a listed file is gone or unreadable (a vanished file is not skipped).
    """
    images, label_array, _ = load_arrays_kept(paths, labels, content_hashes, config, cache_dir, workers)
    return images, label_array


def load_arrays_kept(
    paths: list[Path],
    labels: list[int],
    content_hashes: list[str],
    config: PreprocessConfig,
    cache_dir: str | Path | None = None,
    workers: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``load_arrays`` plus the (N,) indices into ``paths`` of the images kept, so each row can be named."""
    key = hashlib.sha256(
        json.dumps([content_hashes, labels, asdict(config)], sort_keys=True).encode()
    ).hexdigest()[:24]
    cache = Path(cache_dir) / f"arrays-{key}.npz" if cache_dir else None
    if cache and cache.is_file():
        with np.load(cache) as stored:
            images, label_array = stored["images"], stored["labels"]
            kept = stored["kept"] if "kept" in stored else None
        if kept is None and len(images) == len(paths):  # cached before "kept" was: nothing was skipped
            kept = np.arange(len(paths))
        if kept is not None:
            return images, label_array, kept

    decoded = decode_all(paths, config, workers)
    keep = [i for i, image in enumerate(decoded) if image is not None]
    if len(keep) < len(decoded):
        log.warning("skipped %d undecodable images", len(decoded) - len(keep))
    if not keep:
        raise DataError("none of the images in this split could be decoded")
    images = np.stack([decoded[i] for i in keep])
    label_array = np.asarray([labels[i] for i in keep], dtype=np.int64)
    kept = np.asarray(keep, dtype=np.int64)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.npz")
        np.savez(partial, images=images, labels=label_array, kept=kept)
        os.replace(partial, cache)  # atomic: a crash never leaves a truncated cache behind
    return images, label_array, kept
