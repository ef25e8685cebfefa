"""Explanation scores against hand-computed cases: the pointing game on maps peaking inside and outside a
mask (tolerance, ties, upsampling), deletion on a toy model whose probability is exactly the share of a
region left, the RISE area formula, the baselines' shapes and ranges, and model-input maps put back on the
image. The evaluation command itself: tests/training/test_eval_explain.py."""

import numpy as np
import pytest
import torch

from neurovit.explain_metrics import (
    cell_index,
    centre_map,
    deletion_auc,
    deletion_curve,
    deletion_curves,
    deletion_inputs,
    deletion_order,
    gaussian_map,
    lesion_hit,
    lesion_map,
    make_substrate,
    map_on_image,
    max_point,
    noisy_linear_imputation,
    paired_bootstrap,
    pointing_game_hit,
    random_map,
    removed_counts,
)

# ---- pointing game -----------------------------------------------------------------------------------------


def peak_map(shape: tuple[int, int], row: int, col: int) -> np.ndarray:
    saliency = np.zeros(shape, dtype=np.float32)
    saliency[row, col] = 1.0
    return saliency


def test_a_peak_inside_the_mask_hits_and_outside_misses():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 2:4] = True
    assert pointing_game_hit(peak_map((6, 6), 2, 3), mask) == 1.0
    assert pointing_game_hit(peak_map((6, 6), 5, 0), mask) == 0.0


def test_tolerance_is_a_euclidean_distance_to_the_nearest_mask_pixel():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0, 0] = True
    saliency = peak_map((10, 10), 3, 4)  # 5 pixels from (0, 0): a 3-4-5 triangle
    assert pointing_game_hit(saliency, mask, tolerance=4.99) == 0.0
    assert pointing_game_hit(saliency, mask, tolerance=5) == 1.0  # <= tolerance, unlike TorchRay's <
    assert pointing_game_hit(saliency, mask, tolerance=0) == 0.0
    assert pointing_game_hit(peak_map((10, 10), 0, 0), mask, tolerance=0) == 1.0


def test_a_grid_map_is_upsampled_to_the_mask():
    # 2x2 grid on an 8x8 image: the top-right cell's peak becomes a plateau in the top-right corner.
    saliency = np.array([[0.0, 1.0], [0.2, 0.0]], dtype=np.float32)
    top_right = np.zeros((8, 8), dtype=bool)
    top_right[:4, 4:] = True
    assert pointing_game_hit(saliency, top_right) == 1.0
    assert pointing_game_hit(saliency, ~top_right) == 0.0
    assert max_point(saliency, (8, 8)) == (0.5, 6.5)  # centre of the 2x2 plateau of tied maxima


def test_tied_maxima_score_the_share_that_hits():
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True  # a quarter of the image
    assert pointing_game_hit(np.zeros((4, 4)), mask) == pytest.approx(0.25)  # a flat map: a random point
    two_peaks = np.zeros((4, 4))
    two_peaks[0, 0] = two_peaks[3, 3] = 1.0
    assert pointing_game_hit(two_peaks, mask) == pytest.approx(0.5)


def test_an_empty_mask_has_no_answer_and_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="empty"):
        pointing_game_hit(peak_map((4, 4), 0, 0), np.zeros((4, 4), dtype=bool))
    mask = np.ones((4, 4), dtype=bool)
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game_hit(peak_map((4, 4), 0, 0), mask, tolerance=-1)
    with pytest.raises(ValueError, match="NaN"):
        pointing_game_hit(np.full((4, 4), np.nan), mask)
    with pytest.raises(ValueError, match="2-D"):
        pointing_game_hit(np.zeros((1, 4, 4)), mask)


# ---- deletion ----------------------------------------------------------------------------------------------
# A 4x4 image whose cells are its pixels. The region is 3 cells; the toy model's probability is the share of
# region pixels still at their original value 1: exactly the fraction of the region left.

REGION = torch.zeros(4, 4, dtype=torch.bool)
REGION[1, 1] = REGION[1, 2] = REGION[2, 1] = True  # raster cells 5, 6, 9


def region_left(batch: torch.Tensor) -> torch.Tensor:
    return (batch[:, 0][:, REGION] == 1.0).double().mean(dim=1)


def toy_image() -> torch.Tensor:
    return REGION.float()[None]  # (1, 4, 4): 1 on the region, 0 elsewhere


def region_first_map() -> np.ndarray:
    saliency = np.linspace(0.0, 0.5, 16).reshape(4, 4)  # background ranked in reverse raster order...
    saliency[REGION.numpy()] = [1.0, 0.9, 0.8]  # ...after the region
    return saliency


def test_deletion_of_the_region_first_gives_the_hand_computed_curve_and_area():
    curve = deletion_curve(region_left, toy_image(), region_first_map(), substrate=0.0)
    expected = np.array([1, 2 / 3, 1 / 3] + [0] * 14)
    np.testing.assert_allclose(curve, expected)
    # (sum - first/2 - last/2) / steps = (2 - 0.5 - 0) / 16
    assert deletion_auc(curve) == pytest.approx(1.5 / 16)


def test_deletion_of_the_region_last_gives_a_high_area():
    curve = deletion_curve(region_left, toy_image(), 1.0 - region_first_map(), substrate=0.0)
    expected = np.array([1] * 14 + [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(curve, expected)
    assert deletion_auc(curve) == pytest.approx((15 - 0.5) / 16)


def test_coarser_steps_remove_several_cells_at_once():
    # steps=4: 0, 4, 8, 12, 16 cells removed; the first step already removes all three region cells.
    curve = deletion_curve(region_left, toy_image(), region_first_map(), steps=4, substrate=0.0)
    np.testing.assert_allclose(curve, [1, 0, 0, 0, 0])
    assert deletion_auc(curve) == pytest.approx(0.5 / 4)
    np.testing.assert_array_equal(removed_counts(16, 3), [0, 5, 11, 16])
    with pytest.raises(ValueError, match="steps"):
        removed_counts(16, 17)


def test_the_mean_substrate_replaces_cells_by_the_image_mean():
    image = toy_image()
    inputs = deletion_inputs(image, region_first_map(), substrate="mean")
    assert inputs.shape == (17, 1, 4, 4)
    torch.testing.assert_close(inputs[0], image)
    torch.testing.assert_close(inputs[-1], torch.full_like(image, 3 / 16))
    torch.testing.assert_close(inputs[1][0, 1, 1], torch.tensor(3 / 16))  # cell 5 went first
    assert inputs[1][0, 1, 2] == 1.0
    # The toy model counts pixels still at 1, so the mean substrate gives the same curve as zeros.
    np.testing.assert_allclose(
        deletion_curve(region_left, image, region_first_map(), substrate="mean"),
        deletion_curve(region_left, image, region_first_map(), substrate=0.0),
    )


def test_the_blur_substrate_keeps_a_flat_image_and_unknown_ones_are_refused():
    flat = torch.full((1, 8, 8), 0.3)
    torch.testing.assert_close(make_substrate(flat, "blur", blur_sigma=2.0), flat)
    with pytest.raises(ValueError, match="substrate"):
        make_substrate(flat, "noise")


def test_road_imputation_continues_a_linear_ramp_exactly():
    # Symmetric neighbour weights reproduce any linear function away from the border: a removed block in
    # the middle of a ramp comes back exactly (no noise), and the known pixels are untouched.
    rows, cols = np.mgrid[0:12, 0:12]
    image = torch.as_tensor(0.3 * rows - 0.2 * cols + 1.0)[None]
    removed = np.zeros((12, 12), dtype=bool)
    removed[3:8, 4:10] = True
    filled = noisy_linear_imputation(image, removed, noise=0.0)
    torch.testing.assert_close(filled, image)
    spoiled = image.clone()
    spoiled[0][torch.as_tensor(removed)] = 99.0  # what was there before does not leak into the fill
    torch.testing.assert_close(noisy_linear_imputation(spoiled, removed, noise=0.0), image)


def test_road_imputation_stays_within_the_known_values_and_solves_every_channel():
    rng = np.random.default_rng(1)
    image = torch.as_tensor(rng.random((2, 10, 10)))
    image[1] = 2 * image[0]
    removed = np.zeros((10, 10), dtype=bool)
    removed[:4, :] = True  # a band along the border, whose weights are renormalised
    filled = noisy_linear_imputation(image, removed, noise=0.0)
    known = image[0][torch.as_tensor(~removed)]
    values = filled[0][torch.as_tensor(removed)]
    assert known.min() <= values.min() and values.max() <= known.max()  # a weighted mean of neighbours
    torch.testing.assert_close(filled[1], 2 * filled[0])
    torch.testing.assert_close(filled[:, 4:], image[:, 4:])
    # Each removed pixel is the weighted mean of its neighbours: check one inside the band.
    y, x = 2, 5
    weights = np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1]]) / 12
    neighbourhood = filled[0, y - 1 : y + 2, x - 1 : x + 2].numpy()
    assert filled[0, y, x].item() == pytest.approx((weights * neighbourhood).sum())


def test_road_noise_is_seeded_and_the_edge_cases_are_defined():
    image = torch.zeros((1, 8, 8))
    removed = np.zeros((8, 8), dtype=bool)
    removed[2:6, 2:6] = True
    noisy = noisy_linear_imputation(image, removed, noise=0.01, rng=3)
    torch.testing.assert_close(noisy, noisy_linear_imputation(image, removed, noise=0.01, rng=3))
    assert 0.004 < noisy[0][torch.as_tensor(removed)].std().item() < 0.02
    assert noisy[0][torch.as_tensor(~removed)].abs().max() == 0
    ramp = torch.arange(64, dtype=torch.float64).reshape(1, 8, 8)
    torch.testing.assert_close(noisy_linear_imputation(ramp, np.zeros((8, 8), bool)), ramp)
    torch.testing.assert_close(
        noisy_linear_imputation(ramp, np.ones((8, 8), bool)), torch.full_like(ramp, 31.5)
    )
    with pytest.raises(ValueError, match="removed mask"):
        noisy_linear_imputation(ramp, np.zeros((4, 4), bool))


def test_the_road_substrate_imputes_each_step_from_what_is_left():
    rows, cols = np.mgrid[0:8, 0:8]
    image = torch.as_tensor(0.1 * rows + 0.05 * cols, dtype=torch.float32)[None]
    saliency = np.zeros((4, 4))
    saliency[1, 1], saliency[2, 2] = 1.0, 0.5  # two inner cells first
    inputs = deletion_inputs(image, saliency, steps=16, substrate="road")
    assert inputs.shape == (17, 1, 8, 8)
    torch.testing.assert_close(inputs[0], image)
    # One and two inner cells of a ramp: imputed back to the ramp, up to ROAD's small noise.
    assert (inputs[1] - image).abs().max() < 0.05 and (inputs[2] - image).abs().max() < 0.05
    assert not torch.equal(inputs[1], image)  # the noise is there
    torch.testing.assert_close(inputs[-1], torch.full_like(image, image.mean().item()))
    # The same map gives the same inputs (seeded), and a curve runs through it like any substrate.
    torch.testing.assert_close(deletion_inputs(image, saliency, steps=16, substrate="road"), inputs)
    curve = deletion_curve(lambda batch: batch.mean(dim=(1, 2, 3)), image, saliency, 4, "road")
    assert curve.shape == (5,)
    with pytest.raises(ValueError, match="imputed per deletion step"):
        make_substrate(image, "road")


def test_cells_cover_patches_of_a_larger_image():
    np.testing.assert_array_equal(
        cell_index((2, 2), 4, 4), [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    )
    image = torch.arange(16.0).reshape(1, 4, 4)
    saliency = np.array([[0.0, 1.0], [0.5, 0.2]])  # order: top-right, bottom-left, bottom-right, top-left
    np.testing.assert_array_equal(deletion_order(saliency), [1, 2, 3, 0])
    inputs = deletion_inputs(image, saliency, substrate=-1.0)
    assert inputs.shape == (5, 1, 4, 4)
    assert (inputs[1][0, :2, 2:] == -1).all() and (inputs[1] == -1).sum() == 4
    assert (inputs[2][0, 2:, :2] == -1).all() and (inputs[2] == -1).sum() == 8


def test_ties_are_removed_in_raster_order():
    np.testing.assert_array_equal(deletion_order(np.array([[0.5, 1.0], [1.0, 0.5]])), [1, 2, 0, 3])


def test_batched_curves_match_single_curves_whatever_the_batch_size():
    calls = []

    def counting(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return region_left(batch)

    maps = np.stack([region_first_map(), 1.0 - region_first_map(), np.zeros((4, 4))])
    curves = deletion_curves(counting, toy_image(), maps, substrate=0.0, batch_size=10)
    assert curves.shape == (3, 17)
    assert calls == [10, 10, 10, 10, 10, 1]  # 51 inputs in batches of 10
    for grid_map, curve in zip(maps, curves, strict=True):
        np.testing.assert_allclose(curve, deletion_curve(region_left, toy_image(), grid_map, substrate=0.0))
    np.testing.assert_allclose(deletion_auc(curves), [deletion_auc(curve) for curve in curves])


def test_the_area_follows_the_rise_trapezoid():
    assert deletion_auc(np.ones(11)) == pytest.approx(1.0)
    assert deletion_auc(np.linspace(1.0, 0.0, 11)) == pytest.approx(0.5)
    assert deletion_auc([1.0, 0.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="two points"):
        deletion_auc([1.0])


# ---- baselines ---------------------------------------------------------------------------------------------


def test_random_maps_are_seeded_and_in_the_unit_range():
    one = random_map(8, seed=3)
    assert one.shape == (8, 8) and one.dtype == np.float32
    assert one.min() == 0.0 and one.max() == 1.0
    np.testing.assert_array_equal(one, random_map(8, seed=3))
    assert not np.array_equal(one, random_map(8, seed=4))
    many = random_map(8, seed=np.random.default_rng(0), count=5)
    assert many.shape == (5, 8, 8) and many.min() >= 0.0 and many.max() <= 1.0
    assert len({map_.tobytes() for map_ in many}) == 5


def test_the_gaussian_map_peaks_at_the_centre():
    odd = gaussian_map(5)
    assert odd.shape == (5, 5) and odd.min() == 0.0 and odd.max() == 1.0
    assert np.unravel_index(odd.argmax(), odd.shape) == (2, 2)
    even = gaussian_map(8)
    assert even.shape == (8, 8) and even.min() == 0.0
    np.testing.assert_array_equal(np.argwhere(even == even.max()), [[3, 3], [3, 4], [4, 3], [4, 4]])
    np.testing.assert_allclose(even, even.T)
    np.testing.assert_allclose(even, even[::-1, ::-1])
    centre = np.zeros((64, 64), dtype=bool)
    centre[28:36, 28:36] = True
    assert pointing_game_hit(even, centre) == 1.0
    with pytest.raises(ValueError, match="sigma"):
        gaussian_map(8, sigma=0)


def test_the_lesion_map_removes_the_lesion_by_its_share_of_each_cell():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:4, 0:2] = True  # half of the top-left 4x4 cell
    mask[4:8, 4:8] = True  # all of the bottom-right cell
    reference = lesion_map(mask, 2)
    np.testing.assert_allclose(reference[[0, 1], [0, 1]], [0.75, 1.0])
    assert (reference[[0, 1], [1, 0]] < 0.5).all()
    # deletion following it removes the fully covered cell, then the half-covered one, then the rest
    assert deletion_order(reference).tolist()[:2] == [3, 0]
    with pytest.raises(ValueError, match="empty"):
        lesion_map(np.zeros((8, 8), dtype=bool), 2)


def test_after_the_lesion_the_lesion_map_goes_outward_not_in_raster_order():
    mask = np.zeros((40, 40), dtype=bool)
    mask[31:34, 31:34] = True  # a small lesion in cell (3, 3) of a 4x4 grid of 10 px cells
    order = deletion_order(lesion_map(mask, 4)).tolist()
    assert order[0] == 15
    # then its neighbours (right next to the lesion's cell), and the far corner (0, 0) last
    assert set(order[1:4]) == {10, 11, 14}
    assert order[-1] == 0


def test_paired_bootstrap_of_a_constant_difference():
    result = paired_bootstrap(np.full(20, 0.7), np.full(20, 0.2))
    assert result == pytest.approx({"mean_difference": 0.5, "ci_low": 0.5, "ci_high": 0.5})
    spread = paired_bootstrap(np.arange(50.0), np.zeros(50))
    assert spread["ci_low"] < spread["mean_difference"] < spread["ci_high"]


# ---- maps on the image ------------------------------------------------------------------------------------


def test_the_centre_map_peaks_at_the_centre_pixels_and_falls_with_distance():
    odd = centre_map(5)
    assert odd[2, 2] == 1.0 and (odd < 1.0).sum() == 24 and odd.min() == 0.0
    assert odd[2, 0] > odd[0, 0] and odd[2, 0] == pytest.approx(odd[0, 2])
    even = centre_map(4)
    assert (even == 1.0).sum() == 4 and even[1:3, 1:3].min() == 1.0
    with pytest.raises(ValueError):
        centre_map(0)


def test_a_model_input_map_goes_back_onto_the_image_without_its_padding():
    # A 20 x 40 image fills a 4 x 4 model-input grid's middle two rows (rows 1 and 2): a map peaking in row
    # 1 peaks in the image's upper half, one peaking in the padding row 0 only reaches its top edge.
    grid = np.zeros((4, 4), dtype=np.float32)
    grid[1, 3] = 1.0
    seen = map_on_image(grid, (20, 40))
    assert seen.shape == (20, 40)
    row, col = np.unravel_index(seen.argmax(), seen.shape)
    assert row < 10 and col >= 30
    square = map_on_image(grid, (40, 40))
    assert square.shape == (40, 40) and np.unravel_index(square.argmax(), square.shape)[0] < 20
    # the hit: a mask in the image's upper right is found, one in its lower left is not; the tolerance,
    # 15 px at 224, is 2.7 px on this 40 px image
    upper_right, lower_left = np.zeros((20, 40), bool), np.zeros((20, 40), bool)
    upper_right[2:6, 32:38], lower_left[14:18, 2:8] = True, True
    assert lesion_hit(grid, upper_right) == 1.0 and lesion_hit(grid, lower_left) == 0.0
