"""The one transform: aspect kept, per-image percentile scaling, saved and reloaded identically."""

import numpy as np
import pytest
import torch

from neurovit.preprocessing import PreprocessConfig, canonicalise, preprocess, resize_keep_aspect, to_tensor


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


def test_flat_image_stays_flat_instead_of_dividing_by_zero():
    out = canonicalise(np.full((20, 20), 0.7, dtype=np.float32), PreprocessConfig(image_size=20))
    assert out.max() == 0


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
    with pytest.raises(FileNotFoundError, match="not a NeuroViT model folder"):
        PreprocessConfig.load("/nonexistent-folder")
