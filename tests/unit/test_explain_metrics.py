"""Explanation scores against hand-computed cases: the pointing game on maps peaking inside and outside a
mask (tolerance, ties, upsampling), deletion on a toy model whose probability is exactly the share of a
region left, the RISE area formula, the baselines' shapes and ranges, and the evaluation command end to end
on a tiny random model (mask geometry, split selection, outputs)."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from neurovit.data.demo import DEMO_CLASSES, generate_demo_dataset
from neurovit.data.split import SplitEntry, SplitPlan
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
from neurovit.model import LoadedModel, ModelConfig, ModelInfo, build_model, save_model
from neurovit.preprocessing import PreprocessConfig, canonicalise, to_tensor
from neurovit.store import LocalStore
from training.cli import main as neurovit
from training.eval_explain import ROAD_STEPS, lesion_reliance, load_mask, load_slices

# ---- pointing game -----------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """``neurovit explain-eval ARGV``: its exit status (2 usage, 3 data)."""
    return neurovit(["explain-eval", *argv])


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


def test_the_lesion_map_is_the_lesion_share_of_each_cell():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:4, 0:2] = True  # half of the top-left 4x4 cell
    mask[4:8, 4:8] = True  # all of the bottom-right cell
    np.testing.assert_allclose(lesion_map(mask, 2), [[0.5, 0.0], [0.0, 1.0]])
    # deletion following it removes the fully covered cell, then the half-covered one, then the rest
    assert deletion_order(lesion_map(mask, 2)).tolist() == [3, 0, 1, 2]
    with pytest.raises(ValueError, match="empty"):
        lesion_map(np.zeros((8, 8), dtype=bool), 2)


def test_paired_bootstrap_of_a_constant_difference():
    result = paired_bootstrap(np.full(20, 0.7), np.full(20, 0.2))
    assert result == pytest.approx({"mean_difference": 0.5, "ci_low": 0.5, "ci_high": 0.5})
    spread = paired_bootstrap(np.arange(50.0), np.zeros(50))
    assert spread["ci_low"] < spread["mean_difference"] < spread["ci_high"]


# ---- the evaluation command, end to end on a tiny random model -------------------------------------------


def test_masks_go_through_the_image_geometry(tmp_path):
    # A 48x30 image (not square: resized and padded) with a bright block and its mask.
    image = np.zeros((48, 30), dtype=np.uint8)
    image[10:20, 5:15] = 255
    Image.fromarray(image).save(tmp_path / "slice.png")
    Image.fromarray(image).save(tmp_path / "slice.mask.png")
    # the percentile window maps the block to 255, so >= 128 is the resized block's half-way contour
    canonical = canonicalise(image / 255.0, PreprocessConfig(image_size=32, intensity_window="percentile"))
    mask = load_mask(tmp_path / "slice.png", 32)
    assert mask.shape == (32, 32)
    np.testing.assert_array_equal(mask, canonical >= 128)
    assert load_mask(tmp_path / "other.png", 32) is None


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


def _masked_folder(root, sizes):
    """Slices ``<class>/g<i>.png`` (32 x 32), glioma then notumor alternating, with a mask of ``sizes[i]``
    each (None: no mask file, 0: an unreadable one, "empty": an all-zero one)."""
    for i, size in enumerate(sizes):
        folder = root / ("glioma", "notumor")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        image = np.full((32, 32), 40, dtype=np.uint8)
        image[8:16, 8:16] = 250
        Image.fromarray(image).save(folder / f"g{i}.png")
        mask_path = folder / f"g{i}.mask.png"
        if size == 0:
            mask_path.write_bytes(b"not a png")
        elif size == "empty":
            Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(mask_path)
        elif size is not None:
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[: size // 2, : size // 2] = 255
            Image.fromarray(mask).save(mask_path)


def test_bad_masks_are_left_out_and_counted_and_a_folder_without_masks_is_refused(tmp_path, capsys):
    classes = ["glioma", "notumor"]
    torch.manual_seed(0)
    config = ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2)
    save_model(
        build_model(config, classes),
        tmp_path / "version" / "model",
        PreprocessConfig(image_size=32),
        ModelInfo(class_names=classes),
    )
    store = tmp_path / "store"
    LocalStore(store).publish("neurovit", tmp_path / "version", metadata={})
    data = tmp_path / "masked"
    _masked_folder(data, [32, 32, 64, 0, "empty", None])
    out = tmp_path / "out"
    argv = ["--store", str(store), "--data-dir", str(data), "--out", str(out), "--steps", "2"]
    assert main([*argv, "--explained-class", "predicted"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "explain_eval.json").read_text())
    assert result["n_slices"] == 4  # g0, g1, the empty mask's g4 and the unmasked g5
    assert result["left_out"] == {
        "mask size differs from the image's": {"n": 1, "relpaths": ["glioma/g2.png"]},
        "unreadable image or mask": {"n": 1, "relpaths": ["notumor/g3.png"]},
    }
    assert "left out: 1 mask size differs" in printed
    rollout = result["explained"]["predicted"]["methods"]["rollout"]
    assert rollout["n_pointing_game"] == 2 and set(rollout["pointing_game_per_class"]) == {
        "glioma",
        "notumor",
    }
    # every image of a folder the version was not trained on, quietly: no split to match
    assert "every image of" in result["images"]

    bare = tmp_path / "bare"
    _masked_folder(bare, [None, "empty"])
    assert main([*argv, "--data-dir", str(bare), "--out", str(tmp_path / "out2")]) == 3
    assert "has a lesion mask" in capsys.readouterr().err


def test_the_command_scores_every_method_and_writes_its_outputs(tmp_path, capsys):
    classes = ["glioma", "notumor"]
    data, entries = tmp_path / "data", []
    rng = np.random.default_rng(0)
    for label in classes:
        (data / label).mkdir(parents=True)
        for number in range(3):
            image = (rng.random((32, 32)) * 120).astype(np.uint8)
            mask = np.zeros((32, 32), dtype=np.uint8)
            if label == "glioma":
                image[8:16, 16:24] = 250
                mask[8:16, 16:24] = 255
            name = f"{label}/{label}_{number}"
            Image.fromarray(image).save(data / f"{name}.png")
            Image.fromarray(mask).save(data / f"{name}.mask.png")
            digest = hashlib.sha256((data / f"{name}.png").read_bytes()).hexdigest()
            entries.append(SplitEntry(f"{name}.png", label, "test" if number < 2 else "train", digest))
    torch.manual_seed(0)
    config = ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2)
    version_dir = tmp_path / "version"
    save_model(
        build_model(config, classes),
        version_dir / "model",
        PreprocessConfig(image_size=32),
        ModelInfo(class_names=classes, temperature=1.5),
    )
    SplitPlan(entries, classes, {}).write(version_dir / "split.json")
    store = tmp_path / "store"
    version = LocalStore(store).publish("neurovit", version_dir, metadata={})

    out = tmp_path / "out"
    argv = ["--store", str(store), "--data-dir", str(data), "--out", str(out), "--steps", "4"]
    assert main([*argv, "--model", "latest"]) == 0
    printed = capsys.readouterr().out
    assert "test split" in printed and "pointing game" in printed
    assert "explained class: predicted" in printed and "explained class: true" in printed
    result = json.loads((out / "explain_eval.json").read_text())
    assert result["version"] == version and result["n_slices"] == 4
    assert set(result["explained"]) == {"predicted", "true"}
    assert set(result["accuracy_per_class"]) == {"glioma", "notumor"}
    for explained in result["explained"].values():
        assert set(explained["methods"]) == {
            "rollout",
            "gradcam",
            "hirescam",
            "gradient_rollout",
            "random",
            "gaussian",
            "centre",
        }
        for values in explained["methods"].values():
            assert values["n"] == 4 and values["n_pointing_game"] == 2
            assert set(values["pointing_game_per_class"]) == {"glioma"}
            deletion = values["deletion"]["black"]
            assert 0.0 <= values["pointing_game"] <= 1.0 and 0.0 <= deletion["auc"] <= 1.0
            assert len(deletion["mean_curve"]) == 5  # --steps 4, for token maps and pixel maps alike
        assert set(explained["comparisons"]["rollout"]) == {"random", "gaussian", "centre"}
        reference = explained["lesion_mask_reference"]["black"]
        assert reference["n"] == 2 and 0.0 <= reference["deletion_auc_lesion_slices"] <= 1.0
        # not the demo generator's data: no healthy twins, so no lesion-reliance line
        assert explained["lesion_reliance"] == {"n": 0, "per_class": {}}
    # the centre peak hits exactly when the lesion lies within the tolerance of the centre: 15 px at 224 px
    # is 2.1 px on these 32 px slices, and the lesion block [8, 16) x [16, 24) touches the centre 15.5
    assert result["explained"]["predicted"]["methods"]["centre"]["pointing_game"] == 1.0
    assert "2.1 px at 32 px" in result["settings"]["pointing_game"]["tolerance"]
    assert result["settings"]["rollout"] == {"head_fusion": "mean", "discard_ratio": 0.0, "start_layer": 2}
    assert result["settings"]["gradient_rollout"] == {"start_layer": 1}
    assert "the lesion mask as the map (2 lesion slices, black fill)" in printed
    assert "healthy twin" not in printed
    road = tmp_path / "road"
    road_argv = ["--store", str(store), "--data-dir", str(data), "--out", str(road)]
    assert main([*road_argv, "--substrate", "black,road", "--explained-class", "true"]) == 0
    road_result = json.loads((road / "explain_eval.json").read_text())
    assert set(road_result["explained"]) == {"true"}
    assert road_result["settings"]["deletion"]["road"]["steps"] == ROAD_STEPS  # not one step per cell
    assert road_result["settings"]["deletion"]["black"]["steps"] == 64  # one step per cell of the 8x8 grid
    rollout = road_result["explained"]["true"]["methods"]["rollout"]["deletion"]
    assert len(rollout["road"]["mean_curve"]) == ROAD_STEPS + 1 and len(rollout["black"]["mean_curve"]) == 65
    for name in ("gallery-true.png", "deletion_curves-true.png", "deletion_curves-true-road.png"):
        assert (road / name).stat().st_size > 0
    assert main([*argv, "--substrate", "healthy", "--out", str(tmp_path / "healthy")]) == 3
    assert "healthy substrate needs the demo generator's lesion-free twin" in capsys.readouterr().err
    for name in ("gallery.png", "gallery-true.png", "deletion_curves.png", "per_image.csv"):
        assert (out / name).stat().st_size > 0
    # an unknown fill is a usage error (exit 2) before anything runs
    assert main([*argv, "--substrate", "black,grey"]) == 2

    # A changed test image: the split no longer describes the data, so every image is evaluated.
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(data / "notumor" / "notumor_0.png")
    assert main([*argv, "--model", version, "--out", str(tmp_path / "out2")]) == 0
    assert json.loads((tmp_path / "out2" / "explain_eval.json").read_text())["n_slices"] == 6


def test_lesion_reliance_compares_each_lesion_slice_with_its_healthy_twin(tmp_path, capsys):
    data = generate_demo_dataset(tmp_path / "demo", n_per_class=2, image_size=32, seed=0)
    chosen = [
        (data / label / f"{label}_{n:04d}.png", f"{label}/{label}_{n:04d}.png", label)
        for label in DEMO_CLASSES
        for n in range(2)
    ]
    torch.manual_seed(0)
    config = ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2)
    model = build_model(config, list(DEMO_CLASSES)).eval()
    preprocessing = PreprocessConfig(image_size=32)
    loaded = LoadedModel(model, preprocessing, ModelInfo(class_names=list(DEMO_CLASSES), temperature=2.0))
    slices = load_slices(chosen, loaded, None, data)
    lesion = [item for item in slices if item.has_lesion]
    assert len(lesion) == 6 and all(item.healthy_scan is not None for item in lesion)
    assert all(item.healthy_scan is None for item in slices if item.label == "notumor")
    assert all(
        not np.array_equal(canonicalise(item.healthy_scan, preprocessing), item.image) for item in lesion
    )
    for item in lesion:  # the twin's scan equals the slice's away from the lesion and its oedema
        far = ndimage.distance_transform_edt(~item.mask) > 6
        np.testing.assert_array_equal(item.healthy_scan[far], item.scan[far])
        assert not np.array_equal(item.healthy_scan, item.scan)
    assert load_slices(chosen, loaded, None)[0].healthy_scan is None  # no data folder given: no twins

    targets = np.array([3, 0, 1, 2, 0, 0, 1, 2])  # any explained class per slice
    with torch.no_grad():
        logits = model(to_tensor(np.stack([item.image for item in slices]), preprocessing)).logits
    probabilities = torch.softmax(logits / 2.0, dim=-1).numpy()
    reliance = lesion_reliance(slices, targets, probabilities, loaded)
    assert reliance["n"] == 6 and set(reliance["per_class"]) == {"glioma", "meningioma", "pituitary"}
    glioma = [i for i, item in enumerate(slices) if item.label == "glioma"]
    twins = to_tensor(
        np.stack([canonicalise(slices[i].healthy_scan, preprocessing) for i in glioma]), preprocessing
    )
    with torch.no_grad():
        on_twins = torch.softmax(model(twins).logits / 2.0, dim=-1).numpy()
    expected_twin = np.mean([on_twins[k, targets[i]] for k, i in enumerate(glioma)])
    expected_slice = np.mean([probabilities[i, targets[i]] for i in glioma])
    values = reliance["per_class"]["glioma"]
    assert values["n"] == 2
    assert values["probability_on_healthy_twin"] == pytest.approx(expected_twin, abs=1e-6)
    assert values["probability_on_slice"] == pytest.approx(expected_slice, abs=1e-6)

    # The command on the demo data, deletion with the healthy twins as the substrate: lesion slices only.
    save_model(model, tmp_path / "version" / "model", preprocessing, loaded.info)
    store = tmp_path / "store"
    LocalStore(store).publish("neurovit", tmp_path / "version", metadata={})
    out = tmp_path / "out"
    argv = ["--store", str(store), "--data-dir", str(data), "--out", str(out), "--steps", "4"]
    assert main([*argv, "--substrate", "healthy", "--explained-class", "predicted"]) == 0
    printed = capsys.readouterr().out
    document = json.loads((out / "explain_eval.json").read_text())
    result = document["explained"]["predicted"]
    assert document["n_slices"] == 6 and set(document["settings"]["deletion"]) >= {"healthy"}
    assert result["lesion_reliance"]["n"] == 6
    assert "slice -> its healthy twin (6 lesion slices)" in printed
    # every cell restored = the healthy twin, scaled as any input: each map's curve ends at the probability
    # the lesion-reliance line gives the twin
    per_class = result["lesion_reliance"]["per_class"].values()
    on_twins = sum(v["probability_on_healthy_twin"] * v["n"] for v in per_class) / 6
    for values in result["methods"].values():
        assert values["deletion"]["healthy"]["mean_curve"][-1] == pytest.approx(on_twins, abs=1e-4)
