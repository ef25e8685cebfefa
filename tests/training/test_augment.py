"""MRI acquisition changes (gamma, bias field, noise): what each does to a slice, and that off means off."""

from dataclasses import replace

import pytest
import torch

from training.augment import AugmentConfig, acquisition_changes, augment_batch


def brain_like(n: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A bright disc of varied intensities on a black background, (N, 1, size, size) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    texture = 0.2 + 0.7 * torch.rand(n, 1, size, size, generator=generator)
    return texture * inside


def test_no_change_asked_returns_the_batch_and_draws_nothing():
    images = brain_like()
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(acquisition_changes(images, AugmentConfig(), generator), images)
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(5).get_state())
    # so the whole augmentation of a recipe without them is what it was (the demo's random stream)
    plain = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(plain, augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(1)))


def test_gamma_keeps_black_black_and_each_slice_s_intensity_order():
    images = brain_like()
    changed = acquisition_changes(images, AugmentConfig(gamma_prob=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(changed[images == 0], images[images == 0])
    assert 0 <= changed.min() and changed.max() <= 1
    for before, after in zip(images.flatten(1), changed.flatten(1), strict=True):
        order = torch.argsort(before)
        assert torch.all(torch.diff(after[order]) >= -1e-6)  # a monotone curve, not a shuffle
    # the curve differs per slice: some brighter, some darker than before
    mean_shift = (changed - images).flatten(1).mean(1)
    assert (mean_shift > 0.01).any() and (mean_shift < -0.01).any()


def test_the_bias_field_is_smooth_multiplicative_and_bounded():
    images = brain_like(size=64)
    config = AugmentConfig(bias_field_prob=1.0, bias_field_strength=0.3)
    changed = acquisition_changes(images, config, torch.Generator().manual_seed(0))
    assert torch.equal(changed[images == 0], images[images == 0])
    inside = (images > 0) & (changed < 1)  # unclipped tissue
    ratio = torch.where(inside, changed / images.clamp(min=1e-6), torch.nan)
    assert torch.nanmean(ratio.log().abs()) > 0.02  # it does change the slice
    assert ratio[inside].log().abs().max() <= 0.3 + 1e-4  # by at most exp(strength)
    # smooth: a pixel's gain is close to its neighbour's, unlike the texture it multiplies
    gain_step = (ratio[..., 1:] - ratio[..., :-1]).abs()
    texture_step = (images[..., 1:] - images[..., :-1]).abs()
    assert (
        torch.nanmean(gain_step) < 0.05 * texture_step[(images[..., 1:] > 0) & (images[..., :-1] > 0)].mean()
    )


def test_noise_is_zero_mean_and_no_stronger_than_asked():
    images = torch.full((32, 1, 32, 32), 0.5)
    config = AugmentConfig(noise_prob=1.0, max_noise_std=0.03)
    changed = acquisition_changes(images, config, torch.Generator().manual_seed(0))
    difference = (changed - images).flatten(1)
    assert difference.std(1).max() <= 0.03 * 1.15 and difference.std(1).mean() > 0.005
    assert difference.mean().abs() < 0.002


def test_each_change_touches_about_its_share_of_the_slices_only():
    images = brain_like(n=400)
    config = AugmentConfig(gamma_prob=0.3)
    changed = acquisition_changes(images, config, torch.Generator().manual_seed(0))
    touched = (changed != images).flatten(1).any(1).float().mean()
    assert 0.22 < touched < 0.38


def test_geometry_factor_scales_rotation_scale_and_shift_and_one_changes_nothing():
    base = AugmentConfig()
    assert base.with_geometry(1.0) == base
    wider = base.with_geometry(2.0)
    assert wider.max_rotation_deg == 2 * base.max_rotation_deg
    assert wider.max_translate == 2 * base.max_translate
    assert wider.scale_range == pytest.approx(
        (1 - 2 * (1 - base.scale_range[0]), 1 + 2 * (base.scale_range[1] - 1))
    )
    assert (wider.brightness, wider.contrast, wider.hflip) == (base.brightness, base.contrast, base.hflip)
    # and none moves nothing: without a flip, a geometry of 0 leaves a slice where it was
    still = AugmentConfig(hflip=False, brightness=0.0, contrast=0.0).with_geometry(0.0)
    images = brain_like()
    torch.testing.assert_close(
        augment_batch(images, still, torch.Generator().manual_seed(0)), images, atol=1e-5, rtol=0
    )


def test_a_smaller_erase_max_fraction_makes_smaller_holes():
    images = torch.rand(256, 1, 48, 48) * 0.8 + 0.2  # nothing black before erasing
    config = AugmentConfig(erase_prob=1.0, brightness=0.0, contrast=0.0, max_rotation_deg=0, max_translate=0)

    def erased_share(max_fraction: float) -> torch.Tensor:
        erased = augment_batch(
            images,
            replace(config, scale_range=(1.0, 1.0), erase_max_fraction=max_fraction),
            torch.Generator().manual_seed(0),
            cell=8,
        )
        return (erased == 0).float().mean(dim=(1, 2, 3))

    small, large = erased_share(0.15), erased_share(0.5)
    # a 6x6 grid: up to 15 % is about 5 of 36 cells, a rectangle's rounding allowing one more row
    assert small.max() <= 0.15 + 6 / 36
    assert large.max() > 0.3 and small.mean() < large.mean() / 2


def test_erasing_that_spares_tumours_never_blacks_out_a_tumour_cell_or_a_slice_that_may_hide_one():
    images = torch.rand(64, 1, 32, 32) * 0.8 + 0.2  # nothing black before erasing
    masks = torch.zeros(64, 1, 32, 32)
    masks[:32, :, 8:16, 8:16] = 1.0  # the first half marks its tumour: one 8-px cell
    tumour_free = torch.arange(64) < 48  # the last 16 may hold a tumour no mask marks
    config = AugmentConfig(
        erase_prob=1.0, erase_spares_tumours=True, brightness=0.0, contrast=0.0, max_rotation_deg=0
    )
    config = replace(config, scale_range=(1.0, 1.0), max_translate=0.0, hflip=False)
    erased, erased_masks = augment_batch(
        images, config, torch.Generator().manual_seed(0), masks, cell=8, tumour_free=tumour_free
    )
    black = (erased == 0).flatten(1).any(dim=1)
    assert not black[48:].any()  # possibly an unmarked tumour: every cell kept
    assert black[:48].float().mean() > 0.6  # the rest erase as before
    assert (erased[:32, :, 8:16, 8:16] > 0).all()  # a marked tumour keeps its cells
    assert torch.equal(erased_masks, masks)  # so the guide keeps the whole tumour
    with pytest.raises(ValueError, match="tumour_free"):
        augment_batch(images, config, torch.Generator().manual_seed(0), cell=8)


@pytest.mark.parametrize("name", ["erase_prob", "erase_max_fraction", "gamma_prob", "noise_prob"])
def test_a_share_outside_zero_to_one_is_refused_where_the_config_is_made(name):
    with pytest.raises(ValueError, match=name):
        AugmentConfig(**{name: 1.5})
    with pytest.raises(ValueError, match=name):
        AugmentConfig(**{name: -0.1})
