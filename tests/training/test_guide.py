"""Guiding the rollout map with tumour masks: the differentiable rollout is the served one, masks move with
their images through augmentation, the loss prefers a map on the mask, the guide half of a masked folder is
chosen by content and its slices are never scored, and a guided training run puts more of rollout on the
masks than the same run unguided."""

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from neurovit.errors import DataError, UsageError
from neurovit.explain import rollout_from_attentions, rollout_relevance
from neurovit.model import ModelConfig, ModelInfo, build_model, save_model
from neurovit.preprocessing import PreprocessConfig, to_tensor
from neurovit.store import LocalStore
from training.augment import AugmentConfig, augment_batch
from training.cli import main as neurovit
from training.guide import (
    GUIDE_FILE,
    NO_EVIDENCE,
    counterfactual_slices,
    guide_loss,
    in_guide_half,
    load_guide_set,
    touched_cells,
)
from training.teacher import distillation_loss
from training.train import CHECKPOINT_FILE, TrainConfig, labelled_loss, train, with_guide_slices


def _attentions(batch=2, heads=2, tokens=5, layers=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, heads, tokens, tokens, generator=generator).softmax(-1) for _ in range(layers)]


def test_the_differentiable_rollout_is_the_served_rollout():
    attentions = _attentions(tokens=10)  # CLS + a 3x3 grid
    for start in range(3):
        relevance = rollout_relevance(attentions, start)
        served = rollout_from_attentions(attentions, "mean", 0.0, start)
        flat = relevance.reshape(2, 3, 3)
        low = flat.amin(dim=(1, 2), keepdim=True)
        high = flat.amax(dim=(1, 2), keepdim=True)
        np.testing.assert_allclose(((flat - low) / (high - low)).numpy(), served, atol=1e-5)
    leaf = [attention.clone().requires_grad_(True) for attention in attentions]
    rollout_relevance(leaf, 1).sum().backward()
    assert leaf[0].grad is None and leaf[1].grad.abs().sum() > 0  # layers before the start do not count


def test_masks_get_their_images_geometry_and_the_draws_stay_the_same():
    images = torch.zeros(4, 1, 16, 16)
    images[:, :, 2:7, 9:14] = 1.0
    config = AugmentConfig(brightness=0.0, contrast=0.0, max_rotation_deg=30, max_translate=0.2)
    alone = augment_batch(images, config, torch.Generator().manual_seed(3))
    warped, masks = augment_batch(images, config, torch.Generator().manual_seed(3), images.clone())
    torch.testing.assert_close(warped, alone)  # the mask does not change the random stream
    torch.testing.assert_close(masks, warped)  # no intensity jitter here: the mask is the warped image


def test_the_loss_prefers_a_map_on_the_mask():
    tokens = 5  # CLS + 2x2 grid
    focus = torch.zeros(1, 1, tokens, tokens)
    focus[..., :, 4] = 1.0  # every token attends to the last patch (bottom right)
    attentions = [focus.clone().requires_grad_(True) for _ in range(2)]
    on, off = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    on[..., 5:7, 5:7], off[..., 0:2, 0:2] = 1.0, 1.0
    assert guide_loss(attentions, on, 0) < guide_loss(attentions, off, 0)
    guide_loss(attentions, off, 0).backward()
    assert attentions[1].grad.abs().sum() > 0


def _masked_slices(root, count=12):
    """``glioma``/``meningioma`` slices with a bright block and its mask at a place of their own."""
    rng = np.random.default_rng(0)
    for i in range(count):
        label = ("glioma", "meningioma")[i % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        image = (rng.random((32, 32)) * 80).astype(np.uint8)
        mask = np.zeros((32, 32), dtype=np.uint8)
        row, col = rng.integers(2, 22, size=2)
        image[row : row + 8, col : col + 8], mask[row : row + 8, col : col + 8] = 250, 255
        Image.fromarray(image).save(root / label / f"s{i:02d}.png")
        Image.fromarray(mask).save(root / label / f"s{i:02d}.mask.png")


def test_the_guide_half_is_chosen_by_content_and_bad_masks_guide_nothing(tmp_path):
    _masked_slices(tmp_path / "masked")
    (tmp_path / "masked" / "glioma" / "s00.mask.png").write_bytes(b"broken")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "masked" / "glioma" / "s02.mask.png")
    guide = load_guide_set(tmp_path / "masked", ["glioma", "meningioma", "notumor"], PreprocessConfig(32))
    digests = {
        path.relative_to(tmp_path / "masked").as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (tmp_path / "masked").rglob("s??.png")
    }
    expected = sorted(
        r for r, d in digests.items() if in_guide_half(d) and r not in ("glioma/s00.png", "glioma/s02.png")
    )
    assert [entry["relpath"] for entry in guide.entries] == expected and expected
    assert guide.images.shape == guide.masks.shape == (len(expected), 32, 32)
    assert set(np.unique(guide.masks)) == {0, 255}
    with pytest.raises(DataError, match="no masked slice"):
        load_guide_set(tmp_path / "masked", ["notumor", "pituitary"], PreprocessConfig(32))


def _rollout_share(run_dir, config, classes, guide) -> float:
    """Rollout's mean share on the masks, for the weights at the end of the run (the checkpoint's: the best
    saved model is chosen on validation accuracy, which these random images cannot move)."""
    model = build_model(config.model, classes)
    model.load_state_dict(torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)["model"])
    inputs = to_tensor(guide.images, PreprocessConfig(image_size=config.model.image_size))
    with torch.no_grad():
        attentions = list(model.eval()(inputs, output_attentions=True).attentions)
    masks = torch.as_tensor(guide.masks[:, None] / 255.0)
    return float(torch.exp(-guide_loss(attentions, masks, 1)))


def _tiny_guided_run(root, count):
    """A guide set of ``count`` masked 32 px slices, 16 unmasked noise slices to train on, a tiny model."""
    _masked_slices(root, count=count)
    classes = ["glioma", "meningioma"]
    preprocessing = PreprocessConfig(image_size=32)
    guide = load_guide_set(root, classes, preprocessing)
    rng = np.random.default_rng(1)
    train_data = ((rng.random((16, 32, 32)) * 80).astype(np.uint8), np.arange(16) % 2)
    model = ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2)
    return classes, preprocessing, guide, train_data, model


def test_guided_training_puts_more_of_rollout_on_the_masks(tmp_path):
    classes, preprocessing, guide, train_data, model = _tiny_guided_run(tmp_path / "masked", 48)
    shares = {}
    for weight in (0.0, 5.0):
        config = TrainConfig(epochs=10, batch_size=8, learning_rate=3e-3, guide_weight=weight, model=model)
        result = train(
            train_data,
            train_data,
            classes,
            preprocessing,
            config,
            tmp_path / f"w{weight}",
            progress=False,
            guide=guide,
        )
        shares[weight] = _rollout_share(result.best_dir.parent, config, classes, guide)
    assert shares[5.0] > shares[0.0] + 0.05, shares


def test_eval_explain_never_scores_a_slice_that_guided_training(tmp_path, capsys):
    _masked_slices(tmp_path / "masked", count=6)
    classes = ["glioma", "meningioma"]
    torch.manual_seed(0)
    config = ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2)
    version = tmp_path / "version"
    save_model(build_model(config, classes), version / "model", PreprocessConfig(32), ModelInfo(classes))
    guide = load_guide_set(tmp_path / "masked", classes, PreprocessConfig(32))
    guide.write(version / GUIDE_FILE, {"guide_weight": 0.5})
    LocalStore(tmp_path / "store").publish("neurovit", version, metadata={})
    out = tmp_path / "out"
    argv = ["--store", str(tmp_path / "store"), "--data-dir", str(tmp_path / "masked"), "--out", str(out)]
    assert neurovit(["explain-eval", *argv, "--steps", "2", "--explained-class", "predicted"]) == 0
    result = json.loads((out / "explain_eval.json").read_text())
    used = sorted(entry["relpath"] for entry in guide.entries)
    assert result["left_out"]["used to guide training (guide.json)"]["relpaths"] == used
    assert result["n_slices"] == 6 - len(used)
    assert "used to guide training" in capsys.readouterr().out


def test_erasing_blacks_out_whole_token_cells_and_the_masks_lose_them():
    images = torch.rand(64, 1, 32, 32) * 0.8 + 0.2  # nothing black before erasing
    masks = torch.ones(64, 1, 32, 32)
    plain = AugmentConfig(brightness=0.0, contrast=0.0, max_rotation_deg=0, max_translate=0, hflip=False)
    plain = replace(plain, scale_range=(1.0, 1.0))
    # erase_prob 0 draws nothing: the stream, and so every earlier model, is unchanged
    untouched = augment_batch(images, plain, torch.Generator().manual_seed(0), cell=8)
    assert torch.allclose(untouched, images, atol=1e-5)

    erased, erased_masks = augment_batch(
        images, replace(plain, erase_prob=1.0), torch.Generator().manual_seed(0), masks, cell=8
    )
    black = erased == 0
    cells = black.view(64, 1, 4, 8, 4, 8).float().mean(dim=(3, 5))
    assert set(cells.unique().tolist()) <= {0.0, 1.0}  # whole 8-px cells or nothing
    assert torch.equal(erased_masks == 0, black)  # the guide never asks for a black cell
    share = cells.mean(dim=(1, 2, 3))
    assert share.max() <= 0.5 + 3 / 16  # up to erase_max_fraction, a rectangle's rounding aside
    assert (share > 0).float().mean() > 0.6  # most images lose something (fraction ~ U(0, 0.5))


def _guide_and_pairs(tmp_path, **options):
    """A guide set of 24 masked 32 px slices and its counterfactual pairs, with the shapes every kind has."""
    _masked_slices(tmp_path / "masked", count=24)
    classes = ["glioma", "meningioma", "notumor"]
    guide = load_guide_set(tmp_path / "masked", classes, PreprocessConfig(32))
    pairs = counterfactual_slices(guide, **options)
    assert pairs.without_tumour.shape == guide.images.shape and pairs.without_tumour.dtype == np.uint8
    assert 0 < len(pairs.controlled) <= len(guide.images) and len(pairs.with_control) == len(pairs.controlled)
    return classes, guide, pairs


def test_counterfactual_slices_lose_their_tumour_to_the_tissue_around_it_and_join_as_the_given_class(
    tmp_path,
):
    classes, guide, pairs = _guide_and_pairs(tmp_path)
    n = len(guide.images)
    triples = zip(guide.images, guide.masks, pairs.without_tumour, strict=True)
    for index, (image, mask, after) in enumerate(triples):
        tumour = mask > 127
        near = ndimage.binary_dilation(tumour, iterations=3)
        assert image[tumour].mean() > 200  # the bright block ...
        assert after[tumour].mean() < 90  # ... is now tissue like the noise around it (0-80)
        np.testing.assert_array_equal(after[~near], image[~near])  # the rest of the slice is untouched
        if index in pairs.controlled:  # the pair keeps the tumour and loses a patch elsewhere
            paired = pairs.with_control[list(pairs.controlled).index(index)]
            np.testing.assert_array_equal(paired[tumour], image[tumour])
            assert (paired != image).sum() >= 0.5 * tumour.sum()

    rng = np.random.default_rng(0)
    train_data = ((rng.random((6, 32, 32)) * 80).astype(np.uint8), np.array([0, 1, 2, 0, 1, 2]))
    (images, labels), masks = with_guide_slices(train_data, guide, TrainConfig(epochs=1), classes)
    assert len(images) == len(labels) == len(masks) == 6 + n
    config = TrainConfig(epochs=1, counterfactual_class="notumor")
    (images, labels), masks = with_guide_slices(train_data, guide, config, classes)
    k = len(pairs.controlled)
    assert len(images) == len(labels) == len(masks) == 6 + 2 * n + k
    np.testing.assert_array_equal(images[6 + n : 6 + 2 * n], pairs.without_tumour)
    assert (labels[6 + n : 6 + 2 * n] == classes.index("notumor")).all()
    assert not masks[6 + n : 6 + 2 * n].any()  # no tumour left to guide the map towards
    np.testing.assert_array_equal(labels[6 + 2 * n :], guide.labels[pairs.controlled])  # pairs keep theirs
    np.testing.assert_array_equal(masks[6 + 2 * n :], guide.masks[pairs.controlled])
    assert with_guide_slices(train_data, None, config, classes) == (train_data, None)
    with pytest.raises(UsageError, match="counterfactual_class .healthy. is not one of"):
        with_guide_slices(train_data, guide, TrainConfig(counterfactual_class="healthy"), classes)
    # "uniform": the same slices, with no class at all for the tumour-imputed ones
    config = TrainConfig(epochs=1, counterfactual_class="uniform")
    (images, labels), masks = with_guide_slices(train_data, guide, config, classes)
    np.testing.assert_array_equal(images[6 + n : 6 + 2 * n], pairs.without_tumour)
    assert (labels[6 + n : 6 + 2 * n] == NO_EVIDENCE).all()
    assert (labels[: 6 + n] >= 0).all() and (labels[6 + 2 * n :] >= 0).all()


def test_black_counterfactuals_black_out_the_cells_a_tumour_touches_and_as_many_cells_elsewhere(tmp_path):
    classes, guide, pairs = _guide_and_pairs(tmp_path, black_cells=8)
    n = len(guide.images)
    triples = zip(guide.images, guide.masks, pairs.without_tumour, strict=True)
    for index, (image, mask, after) in enumerate(triples):
        tumour = mask > 127
        cells = touched_cells(tumour, 8)
        per_cell = cells.reshape(4, 8, 4, 8).mean(axis=(1, 3))
        assert set(np.unique(per_cell)) <= {0.0, 1.0} and (cells >= tumour).all()  # whole cells, all of it
        assert (after[cells] == 0).all()
        np.testing.assert_array_equal(after[~cells], image[~cells])
        if index in pairs.controlled:  # the pair keeps its tumour cells and loses as many elsewhere
            paired = pairs.with_control[list(pairs.controlled).index(index)]
            lost = paired != image
            np.testing.assert_array_equal(paired[cells], image[cells])
            assert (paired[lost] == 0).all() and 0.5 * cells.sum() <= lost.sum() <= cells.sum()
            moved = (paired != image).reshape(4, 8, 4, 8).any(axis=(1, 3))  # the cells the control touched
            whole = (paired.reshape(4, 8, 4, 8) == 0).all(axis=(1, 3))
            assert (whole[moved]).all()  # on the token grid too: whole black cells, like the tumour's

    rng = np.random.default_rng(0)
    train_data = ((rng.random((6, 32, 32)) * 80).astype(np.uint8), np.array([0, 1, 2, 0, 1, 2]))
    model = ModelConfig(image_size=32, stem_channels=(8, 16, 32))  # stride 8: 4x4 cells
    config = TrainConfig(epochs=1, counterfactual_class="uniform", black_counterfactuals=True, model=model)
    (images, labels), masks = with_guide_slices(train_data, guide, config, classes)
    imputed = counterfactual_slices(guide)
    start = 6 + 2 * n + len(imputed.controlled)  # after the imputed pairs, as before
    k = len(pairs.controlled)
    assert len(images) == len(labels) == len(masks) == start + n + k
    np.testing.assert_array_equal(images[start : start + n], pairs.without_tumour)
    assert (labels[start : start + n] == NO_EVIDENCE).all() and not masks[start : start + n].any()
    np.testing.assert_array_equal(images[start + n :], pairs.with_control)
    np.testing.assert_array_equal(labels[start + n :], guide.labels[pairs.controlled])
    np.testing.assert_array_equal(masks[start + n :], guide.masks[pairs.controlled])
    with pytest.raises(UsageError, match="black_counterfactuals needs a counterfactual_class"):
        with_guide_slices(train_data, guide, TrainConfig(black_counterfactuals=True), classes)


def test_slices_without_evidence_are_trained_towards_no_class_and_the_rest_as_before():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=generator) * 3
    targets = torch.tensor([0, NO_EVIDENCE, 2, 3, NO_EVIDENCE, 1])
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0])
    with_class = targets != NO_EVIDENCE
    expected = distillation_loss(logits[with_class], targets[with_class], None, 0.0, weights, 0.1)
    # rows without a class cost their cross-entropy with the uniform distribution; each row weighs the same
    uniform = -torch.log_softmax(logits[~with_class], dim=1).mean(dim=1)
    mixed = labelled_loss(logits, targets, None, 0.0, weights, 0.1)
    torch.testing.assert_close(mixed, (4 * expected + uniform.sum()) / 6)
    # all rows with a class: exactly the old loss; none: finite, and least where every class is as likely
    torch.testing.assert_close(
        labelled_loss(logits[with_class], targets[with_class], None, 0.0, weights, 0.1), expected
    )
    free = logits[~with_class].clone().requires_grad_(True)
    for _ in range(200):
        loss = labelled_loss(free, torch.full((2,), NO_EVIDENCE), None, 0.0, weights, 0.1)
        (gradient,) = torch.autograd.grad(loss, free)
        free = (free - 0.5 * gradient).detach().requires_grad_(True)
    probabilities = free.softmax(dim=1)
    torch.testing.assert_close(probabilities, torch.full_like(probabilities, 0.25), atol=1e-3, rtol=0)
    torch.testing.assert_close(float(loss.detach()), float(np.log(4)), atol=1e-4, rtol=0)


def test_training_with_uniform_counterfactuals_and_a_teacher_runs_to_the_end(tmp_path, ticking_clock):
    classes, preprocessing, guide, train_data, model = _tiny_guided_run(tmp_path / "masked", 24)
    config = TrainConfig(
        epochs=3,
        batch_size=8,
        model=model,
        counterfactual_class="uniform",
        teacher_fraction=0.05,
        time_budget_s=60,  # a ticking clock (tests/training/conftest.py): room for all 3 and the teacher's
    )
    result = train(
        train_data, train_data, classes, preprocessing, config, tmp_path / "run", False, False, guide
    )
    history = result.history
    assert result.teacher is not None and result.teacher["epochs"] == 3  # its 3 s, its first epoch one tick
    assert len(history) == 3 and all(np.isfinite(epoch["train_loss"]) for epoch in history)
    assert all(0.0 <= epoch["train_accuracy"] <= 1.0 for epoch in history)
