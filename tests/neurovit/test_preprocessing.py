"""The one transform: aspect kept, per-image intensity window, saved and reloaded identically."""

import json

import numpy as np
import pytest
import torch

from neurovit.preprocessing import (
    PreprocessConfig,
    black_input,
    canonicalise,
    intensity_window,
    preprocess,
    resize_keep_aspect,
    to_tensor,
)


def _head_with_lesion(lesion_value: float | None) -> np.ndarray:
    """A 64x64 'slice': dark background, a textured disc of tissue around 0.5, optionally a bright lesion."""
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[:64, :64]
    head = np.hypot(rows - 32, cols - 32) < 26
    image = np.where(head, 0.5 + 0.1 * rng.standard_normal((64, 64)), 0.02 * rng.random((64, 64)))
    if lesion_value is not None:
        image[np.hypot(rows - 24, cols - 40) < 6] = lesion_value  # ~5 % of the image, brighter than all else
    return image.astype(np.float32)


def test_resize_keeps_aspect_and_centres_on_a_zero_square():
    wide = np.ones((50, 100), dtype=np.float32)
    square = resize_keep_aspect(wide, 64)
    assert square.shape == (64, 64)
    # 100 -> 64 wide, 50 -> 32 tall, centred: rows 16..47 filled, the rest padding
    assert square[16:48].min() == pytest.approx(1.0)
    assert square[:16].max() == 0 and square[48:].max() == 0


def test_canonicalise_is_invariant_to_scanner_gain_and_bit_depth():
    rng = np.random.default_rng(0)
    image = rng.random((40, 40)).astype(np.float32)
    config = PreprocessConfig(image_size=40)
    as_8_bit = canonicalise(image, config)
    as_16_bit_with_offset = canonicalise(image * 0.05 + 0.01, config)  # dim 16-bit scan, other offset
    assert as_8_bit.dtype == np.uint8
    assert np.abs(as_8_bit.astype(int) - as_16_bit_with_offset.astype(int)).max() <= 1


def test_a_bright_lesion_does_not_rescale_the_tissue_around_it():
    healthy, lesioned = _head_with_lesion(None), _head_with_lesion(3.0)
    away = ~(np.hypot(*(np.mgrid[:64, :64] - np.array([24, 40])[:, None, None])) < 8)
    window = PreprocessConfig(image_size=64, intensity_window="foreground_median")
    moved = np.abs(canonicalise(lesioned, window).astype(int) - canonicalise(healthy, window).astype(int))
    assert moved[away].max() <= 4  # the lesion only displaces a few of the pixels the median sees
    # the whole-image percentile window lets the lesion set the top and darkens everything else
    legacy = PreprocessConfig(image_size=64, intensity_window="percentile")
    darkened = canonicalise(healthy, legacy).astype(int) - canonicalise(lesioned, legacy).astype(int)
    assert np.median(darkened[away & (healthy > 0.3)]) > 50


def test_foreground_median_lands_where_configured():
    image = _head_with_lesion(None)
    config = PreprocessConfig(
        image_size=64, intensity_window="foreground_median", foreground_median_level=0.25
    )
    low, high = intensity_window(image, config)
    head = image > 0.3
    assert (np.median(image[head]) - low) / (high - low) == pytest.approx(0.25, abs=0.01)


def test_a_config_saved_before_the_window_choice_keeps_the_percentile_window(tmp_path):
    saved = {"image_size": 32, "low_percentile": 0.5, "high_percentile": 99.5, "mean": 0.5, "std": 0.5}
    (tmp_path / "preprocessing.json").write_text(json.dumps(saved))
    assert PreprocessConfig.load(tmp_path).intensity_window == "percentile"
    median = PreprocessConfig(intensity_window="foreground_median")
    median.save(tmp_path)
    assert PreprocessConfig.load(tmp_path) == median


@pytest.mark.parametrize("window", ["foreground_median", "percentile"])
def test_flat_image_stays_flat_instead_of_dividing_by_zero(window):
    config = PreprocessConfig(image_size=20, intensity_window=window)
    assert canonicalise(np.full((20, 20), 0.7, dtype=np.float32), config).max() == 0
    assert canonicalise(np.zeros((20, 20), dtype=np.float32), config).max() == 0


def test_to_tensor_standardises_with_the_saved_mean_and_std():
    config = PreprocessConfig(image_size=8, mean=0.25, std=0.5)
    images = np.zeros((8, 8), dtype=np.uint8)
    images[:, 4:] = 255
    tensor = to_tensor(images, config)
    assert tensor.shape == (1, 1, 8, 8)
    assert tensor.min().item() == pytest.approx((0 - 0.25) / 0.5)
    assert tensor.max().item() == pytest.approx((1 - 0.25) / 0.5)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(images.astype(np.float32), config)


def test_config_saved_and_reloaded_gives_the_identical_transform(tmp_path):
    config = PreprocessConfig(image_size=48, low_percentile=2.0, high_percentile=98.0, mean=0.4, std=0.3)
    config.save(tmp_path)
    reloaded = PreprocessConfig.load(tmp_path)
    assert reloaded == config
    image = np.random.default_rng(1).random((70, 55)).astype(np.float32)
    assert torch.equal(preprocess(image, config), preprocess(image, reloaded))


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="low_percentile"):
        PreprocessConfig(low_percentile=60, high_percentile=40)
    with pytest.raises(ValueError, match="intensity_window"):
        PreprocessConfig(intensity_window="zscore")
    with pytest.raises(ValueError, match="foreground_median_level"):
        PreprocessConfig(foreground_median_level=1.5)
    with pytest.raises(FileNotFoundError, match="not a NeuroViT model folder"):
        PreprocessConfig.load("/nonexistent-folder")


def test_black_input_is_what_a_black_canonical_image_becomes():
    config = PreprocessConfig(image_size=8)
    black = to_tensor(np.zeros((8, 8), dtype=np.uint8), config)
    assert torch.all(black == black_input(config))
    assert black_input(config) < 0  # below the standardised mean: a real fill, not zero
