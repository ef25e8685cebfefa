"""Explanation maps: rollout, Grad-CAM, HiResCAM, gradient rollout and LRP against hand-computed cases, a
hand-built model whose class is read from one quadrant, an autograd reference, and the batch/gradient/mode
contract."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from neurovit.explain import (
    GRADIENT_ROLLOUT_START_LAYER,
    ROLLOUT_DISCARD_RATIO,
    ROLLOUT_HEAD_FUSION,
    ROLLOUT_START_LAYER,
    ExplainError,
    attention_rollout,
    explain,
    grad_cam,
    grad_cam_from_tokens,
    gradient_rollout,
    gradient_rollout_from_attentions,
    hires_cam,
    hires_cam_from_tokens,
    overlay_png,
    rollout_from_attentions,
    served_start_layer,
    upsample,
)
from neurovit.model import ModelConfig, build_model

TINY = ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2)
GRID = 32 // TINY.patch_size
METHODS = ("rollout", "gradcam", "hirescam", "gradient_rollout", "lrp")
CLASS_METHODS = ("gradcam", "hirescam", "gradient_rollout", "lrp")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_model(TINY, ["a", "b", "c"])
    model.train()
    with torch.no_grad():  # move BatchNorm running statistics off their defaults: eval mode must use them
        model(torch.randn(8, 1, 32, 32) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))


# ---- attention rollout, by hand ----------------------------------------------------------------------------
# Tokens (CLS, p1, p2, p3, p4), patches on a 2x2 grid. Each layer has two heads, 0.5*I + 0.5*P and P, where P
# sends every token to one other token (zero diagonal). P1: c->p1, p1->p2, p2->p3, p3->p4, p4->c; P2 differs
# only in the CLS row: c->p3. Fusing the heads gives x*I + y*P; adding I and renormalising rows gives
# a = alpha*I + beta*P. Then R = a2 @ a1 and its CLS row is
#   alpha*a1[c] + beta*a1[p3] = alpha*(alpha*e_c + beta*e_p1) + beta*(alpha*e_p3 + beta*e_p4),
# i.e. patches (p1, p2, p3, p4) = (alpha*beta, 0, alpha*beta, beta^2); divided by alpha*beta, the map is
# [[1, 0], [1, beta/alpha]].
# (The reversed product a1 @ a2 would light p2 instead of p4.)
#   mean: 0.25I + 0.75P -> +I: 1.25I + 0.75P, row sum 2   -> alpha, beta = 5/8, 3/8 -> beta/alpha = 3/5
#   max:  0.5I + P      -> +I: 1.5I + P,      row sum 2.5 -> alpha, beta = 3/5, 2/5 -> 2/3
#   min:  0.5P          -> +I: I + 0.5P,      row sum 1.5 -> alpha, beta = 2/3, 1/3 -> 1/2


def shift(targets: list[int]) -> torch.Tensor:
    matrix = torch.zeros(5, 5, dtype=torch.float64)
    matrix[range(5), targets] = 1.0
    return matrix


def two_layer_attentions() -> list[torch.Tensor]:
    eye = torch.eye(5, dtype=torch.float64)
    layers = []
    for p in (shift([1, 2, 3, 4, 0]), shift([3, 2, 3, 4, 0])):
        layers.append(torch.stack([0.5 * eye + 0.5 * p, p])[None])  # (N=1, heads=2, 5, 5)
    return layers


@pytest.mark.parametrize(("head_fusion", "ratio"), [("mean", 3 / 5), ("max", 2 / 3), ("min", 1 / 2)])
def test_rollout_matches_hand_computation(head_fusion, ratio):
    maps = rollout_from_attentions(two_layer_attentions(), head_fusion=head_fusion)
    np.testing.assert_allclose(maps, [[[1.0, 0.0], [1.0, ratio]]], atol=1e-6)


def test_rollout_discard_drops_the_weakest_weights_but_never_cls_to_cls():
    # Mean-fused layers are 0.25I + 0.75P: 15 zeros, five 0.25 diagonal entries, five 0.75 entries. Discarding
    # int(25 * 0.8) = 20 drops the zeros and the diagonal, except CLS->CLS. Rows then become
    #   CLS:     (1.25*e_c + 0.75*e_next) / 2  -> 5/8, 3/8
    #   patches: (1*e_self + 0.75*e_next) / 1.75 -> 4/7, 3/7
    # CLS row of R: 5/8*(5/8 e_c + 3/8 e_p1) + 3/8*(4/7 e_p3 + 3/7 e_p4) -> p1 15/64, p3 3/14, p4 9/56;
    # over 15/64: [[1, 0], [32/35, 24/35]]. (Dropping CLS->CLS too would give [[1, 0], [1, 3/4]].)
    attentions = two_layer_attentions()
    before = [a.clone() for a in attentions]
    maps = rollout_from_attentions(attentions, head_fusion="mean", discard_ratio=0.8)
    np.testing.assert_allclose(maps, [[[1.0, 0.0], [32 / 35, 24 / 35]]], atol=1e-6)
    for original, after in zip(before, attentions, strict=True):
        assert torch.equal(original, after)  # vit-explain discards through a view, editing the caller's maps


def test_rollout_from_a_later_layer_leaves_the_earlier_ones_out():
    # Only the second layer, 0.25I + 0.75P with P sending CLS to p3: the CLS row is 5/8 CLS, 3/8 p3, so the
    # map lights p3 alone (all layers light p1 and p3, above).
    maps = rollout_from_attentions(two_layer_attentions(), head_fusion="mean", start_layer=1)
    np.testing.assert_allclose(maps, [[[0.0, 0.0], [1.0, 0.0]]], atol=1e-6)
    with pytest.raises(ExplainError, match="start_layer"):
        rollout_from_attentions(two_layer_attentions(), start_layer=2)


def test_rollout_treats_each_image_of_a_batch_on_its_own():
    first = two_layer_attentions()
    second = [torch.flip(a, dims=(-2, -1)).roll((1, 1), dims=(-2, -1)) for a in first]  # another valid case
    batch = [torch.cat([a, b]) for a, b in zip(first, second, strict=True)]
    for fusion, discard in (("mean", 0.8), ("max", 0.8), ("min", 0.0)):  # 0.8: no ties at the cut
        together = rollout_from_attentions(batch, fusion, discard)
        alone = [rollout_from_attentions(case, fusion, discard)[0] for case in (first, second)]
        np.testing.assert_allclose(together, np.stack(alone), atol=1e-6)


def test_rollout_rejects_bad_arguments():
    attentions = two_layer_attentions()
    with pytest.raises(ExplainError, match="head_fusion"):
        rollout_from_attentions(attentions, head_fusion="median")
    with pytest.raises(ExplainError, match="discard_ratio"):
        rollout_from_attentions(attentions, discard_ratio=1.0)
    with pytest.raises(ExplainError, match="eager"):
        rollout_from_attentions(())  # what an SDPA model returns
    with pytest.raises(ExplainError, match="square"):
        rollout_from_attentions([torch.rand(1, 2, 4, 4)])  # 3 patch tokens


# ---- Grad-CAM and gradient rollout on known tensors --------------------------------------------------------


def test_grad_cam_weights_channels_by_mean_patch_gradient_and_drops_cls():
    tokens = torch.tensor([[[7.0, -3.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])
    gradients = torch.tensor([[[100.0, 100.0], [2.0, -2.0], [0.0, 0.0], [2.0, -2.0], [0.0, 0.0]]])
    # Weights: mean over the 4 patches = [1, -1] (the CLS gradient would make them ~[21, 19]).
    # CAM = ReLU([1, -1, 2, 0]) = [1, 0, 2, 0], scaled by 2.
    np.testing.assert_allclose(grad_cam_from_tokens(tokens, gradients), [[[0.5, 0.0], [1.0, 0.0]]])


def test_hires_cam_weights_each_patch_by_its_own_gradient_and_drops_cls():
    tokens = torch.tensor([[[7.0, -3.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]]])
    gradients = torch.tensor([[[100.0, 100.0], [2.0, -2.0], [5.0, 0.0], [0.5, 9.0], [0.0, 1.0]]])
    # Per patch sum_c A_c * G_c: [2, 0, 1, 3] -> ReLU -> min-max scaled. Grad-CAM's mean weights [1.875, 2]
    # give [1.875, 2, 3.75, 6] instead: patch 2 (the second) counts although its own gradient is zero on
    # the channel it activates, and patch 1, second by its own evidence, comes last.
    np.testing.assert_allclose(hires_cam_from_tokens(tokens, gradients), [[[2 / 3, 0.0], [1 / 3, 1.0]]])
    expected_grad_cam = (np.array([1.875, 2.0, 3.75, 6.0]) - 1.875) / (6.0 - 1.875)
    np.testing.assert_allclose(
        grad_cam_from_tokens(tokens, gradients)[0].ravel(), expected_grad_cam, rtol=1e-6
    )


def test_gradient_rollout_clamps_before_the_head_mean_and_accumulates_layers():
    attention = torch.full((1, 2, 5, 5), 0.2)
    first, second = torch.zeros(1, 2, 5, 5), torch.zeros(1, 2, 5, 5)
    # grad * attention, written as 5 * wanted because the attention is 0.2 everywhere.
    first[0, 0, 0] = 5 * torch.tensor([0, 1, 0, 0, 0])  # head 0, CLS row
    first[0, 1, 0] = 5 * torch.tensor([0, -1, 0, 0, 0.5])  # head 1, CLS row: the -1 is clamped away
    first[0, 0, 2] = 5 * torch.tensor([0, 0, 0, 1, 0])  # head 0, row p2
    second[0, :, 0] = 5 * torch.tensor([0, 0, 1, 0, 0])  # both heads, CLS row
    # A1 = mean_h(clamp): row c [0, .5, 0, 0, .25], row p2 [0, 0, 0, .5, 0]; A2: row c [0, 0, 1, 0, 0].
    # R = (I + A2)(I + A1); CLS row over patches = A1[c] + A2[c] + A2[c] @ A1 = [.5, 1, .5, .25]
    # -> min-max [1/3, 1, 1/3, 0]. (Mean before clamp: [0, 1, .5, .25]; the last layer only: [0, 1, 0, 0].)
    maps = gradient_rollout_from_attentions([attention, attention], [first, second])
    np.testing.assert_allclose(maps, [[[1 / 3, 1.0], [1 / 3, 0.0]]], atol=1e-6)
    # Starting at the second layer (the CLIP notebook's start_layer): R = I + A2.
    later = gradient_rollout_from_attentions([attention, attention], [first, second], start_layer=1)
    np.testing.assert_allclose(later, [[[0.0, 1.0], [0.0, 0.0]]], atol=1e-6)
    with pytest.raises(ExplainError, match="start_layer"):
        gradient_rollout_from_attentions([attention, attention], [first, second], start_layer=2)


# ---- a hand-built model whose class is the quadrant of the bright blob -------------------------------------


def direction(plus: int, minus: int, size: int = 16) -> torch.Tensor:
    vector = torch.zeros(size)
    vector[plus], vector[minus] = 1.0, -1.0  # zero-mean, so LayerNorm keeps its direction
    return vector


def quadrant_model():
    """One layer, one head, 2x2 patches. A patch token is (mean intensity)*(e0 - e1) plus its position code
    (e_{2+2j} - e_{3+2j}); the CLS query matches bright keys, values carry the position code, and the
    classifier row of class k is position code k. So the CLS attends to the bright patch and class k wins
    when the blob is in quadrant k; only patch k's attention raises logit k."""
    model = build_model(
        ModelConfig(image_size=32, stem="patch", hidden_size=16, num_layers=1, num_heads=1),
        ["top_left", "top_right", "bottom_left", "bottom_right"],
    ).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # also the MLP, so it adds nothing
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        embeddings = model.vit.embeddings
        embeddings.patch_embeddings.projection.weight[:, 0] = direction(0, 1)[:, None, None] / 256
        embeddings.cls_token[0, 0] = 10 * direction(10, 11)
        for patch in range(4):
            embeddings.position_embeddings[0, 1 + patch] = direction(2 + 2 * patch, 3 + 2 * patch)
        attention = model.vit.layers[0].attention
        attention.q_proj.weight[0] = direction(10, 11) / 2
        attention.k_proj.weight[0] = 1.5 * direction(0, 1)
        attention.v_proj.weight[2:10, 2:10] = torch.eye(8)
        attention.o_proj.weight.copy_(torch.eye(16))
        for label in range(4):
            model.classifier.weight[label] = direction(2 + 2 * label, 3 + 2 * label)
    return model


def blob_images(quadrants: list[int]) -> torch.Tensor:
    images = torch.zeros(len(quadrants), 1, 32, 32)
    for index, quadrant in enumerate(quadrants):
        row, column = divmod(quadrant, 2)
        images[index, 0, 16 * row + 4 : 16 * row + 12, 16 * column + 4 : 16 * column + 12] = 4.0
    return images


def test_class_specific_maps_follow_the_target_on_a_hand_built_model():
    model = quadrant_model()
    images = blob_images([0, 1, 2, 3])
    one_hot = np.eye(4).reshape(4, 2, 2)

    predicted = explain(model, images)
    assert predicted["target"].tolist() == [0, 1, 2, 3]  # the construction works: blob quadrant = class
    for method in METHODS:
        np.testing.assert_allclose(predicted[method], one_hot, atol=1e-3, err_msg=method)

    # Asking for the next quadrant's class: the evidence for class k is patch k, whatever the image shows.
    others = [1, 2, 3, 0]
    shifted = explain(model, images, target=others)
    for method in CLASS_METHODS:
        np.testing.assert_allclose(shifted[method], one_hot[others], atol=1e-3, err_msg=method)
        assert not np.allclose(shifted[method], predicted[method])
    np.testing.assert_array_equal(shifted["rollout"], predicted["rollout"])  # rollout has no class


# ---- the model-level contract ------------------------------------------------------------------------------


def reference_tensors(model, image: torch.Tensor, target: int):
    """The upstream way, one image at a time: retain_grad on the returned attentions and on the hooked
    layernorm_before output of the last layer, then backward of the target logit."""
    captured = {}
    hook = model.vit.layers[-1].layernorm_before.register_forward_hook(
        lambda module, args, output: captured.setdefault("tokens", output)
    )
    outputs = model(image[None], output_attentions=True)
    hook.remove()
    for attention in outputs.attentions:
        attention.retain_grad()
    captured["tokens"].retain_grad()
    outputs.logits[0, target].backward()
    model.zero_grad(set_to_none=True)
    return outputs.attentions, captured["tokens"]


def test_batched_maps_match_a_per_image_autograd_reference(model, images):
    targets = [2, 0, 1]
    maps = explain(model, images, methods=CLASS_METHODS, target=targets)
    for index, target in enumerate(targets):
        attentions, tokens = reference_tensors(model, images[index], target)
        expected_cam = grad_cam_from_tokens(tokens, tokens.grad)
        expected_hires = hires_cam_from_tokens(tokens, tokens.grad)
        np.testing.assert_allclose(maps["hirescam"][index], expected_hires[0], atol=1e-5)
        # explain starts a model shallower than GRADIENT_ROLLOUT_START_LAYER at its last layer
        start = min(GRADIENT_ROLLOUT_START_LAYER, len(attentions) - 1)
        expected_rollout = gradient_rollout_from_attentions(attentions, [a.grad for a in attentions], start)
        np.testing.assert_allclose(maps["gradcam"][index], expected_cam[0], atol=1e-5)
        np.testing.assert_allclose(maps["gradient_rollout"][index], expected_rollout[0], atol=1e-5)


def test_a_map_starts_at_its_layer_or_at_the_last_layer_of_a_shallower_model():
    assert served_start_layer(2, 6) == 2
    assert served_start_layer(2, 3) == 2
    assert served_start_layer(2, 2) == 1
    assert served_start_layer(2, 1) == 0


def test_the_served_heatmap_reads_the_layers_from_its_start_layer_on(images):
    # A model deep enough for GRADIENT_ROLLOUT_START_LAYER to matter (the test model above clamps it).
    torch.manual_seed(0)
    layers = GRADIENT_ROLLOUT_START_LAYER + 2
    deep = build_model(
        ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=layers, num_heads=2),
        ["a", "b", "c"],
    ).eval()
    served = explain(deep, images[:1], methods=("gradient_rollout",), target=[1])["gradient_rollout"][0]
    attentions, _ = reference_tensors(deep, images[0], 1)
    gradients = [a.grad for a in attentions]
    from_start = gradient_rollout_from_attentions(attentions, gradients, GRADIENT_ROLLOUT_START_LAYER)[0]
    from_first = gradient_rollout_from_attentions(attentions, gradients, 0)[0]
    np.testing.assert_allclose(served, from_start, atol=1e-5)
    assert not np.allclose(served, from_first, atol=1e-3)


def test_maps_do_not_depend_on_the_position_in_the_batch(model, images):
    alone = explain(model, images[:1], target=[1])
    batch = torch.cat([images[1:], images[:1]])  # the same image at position 2 of 3
    together = explain(model, batch, target=[0, 2, 1])
    for method in METHODS:
        # float32 batch kernels differ in the last bits; min-max scaling magnifies that to ~1e-5
        np.testing.assert_allclose(together[method][2], alone[method][0], atol=5e-5, err_msg=method)
    predicted_alone, predicted_together = explain(model, images[:1]), explain(model, batch)
    assert predicted_together["target"][2] == predicted_alone["target"][0]
    np.testing.assert_allclose(predicted_together["gradcam"][2], predicted_alone["gradcam"][0], atol=1e-5)


def test_maps_have_the_grid_shape_and_lie_in_unit_range(model, images):
    single = {
        "rollout": attention_rollout(model, images, head_fusion="max", discard_ratio=0.5),
        "gradcam": grad_cam(model, images),
        "hirescam": hires_cam(model, images, target=2),
        "gradient_rollout": gradient_rollout(model, images, target=0),
    }
    for method, maps in single.items():
        assert maps.shape == (3, GRID, GRID) and maps.dtype == np.float32, method
        assert maps.min() >= 0.0 and maps.max() <= 1.0, method
        np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, err_msg=method)  # not blank


def test_explain_returns_what_the_forward_gave_so_serving_can_reuse_it(model, images):
    result = explain(model, images)
    with torch.no_grad():
        outputs = model(images, output_attentions=True)
    np.testing.assert_allclose(result["logits"], outputs.logits.numpy(), atol=1e-5)
    np.testing.assert_array_equal(result["target"], outputs.logits.argmax(-1).numpy())
    # with the service's rollout settings, not the plain defaults of the pure function
    start = min(ROLLOUT_START_LAYER, len(outputs.attentions) - 1)  # the tiny model has 2 layers
    expected = rollout_from_attentions(outputs.attentions, ROLLOUT_HEAD_FUSION, ROLLOUT_DISCARD_RATIO, start)
    np.testing.assert_allclose(result["rollout"], expected, atol=1e-6)
    assert not np.allclose(result["rollout"], rollout_from_attentions(outputs.attentions), atol=1e-3)


def test_no_gradient_is_left_on_parameters_and_the_mode_is_kept(model, images):
    explain(model, images)
    assert all(parameter.grad is None for parameter in model.parameters())
    assert not model.training

    model.train()
    try:
        training_mode = explain(model, images, target=1)
        assert model.training  # the caller's mode comes back...
    finally:
        model.eval()
    evaluated = explain(model, images, target=1)
    for method in METHODS:  # ...and the maps were computed in eval mode all the same
        np.testing.assert_allclose(training_mode[method], evaluated[method], atol=1e-6)


def test_gradient_maps_work_on_a_frozen_model(images):
    frozen = build_model(TINY, ["a", "b"]).eval().requires_grad_(False)
    maps = explain(frozen, images, methods=CLASS_METHODS)
    assert all(maps[method].max() == 1.0 for method in CLASS_METHODS)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ([0, 1], "one class per image"),
        (3, r"\[0, 3\)"),
        ([0, -1, 1], r"\[0, 3\)"),
        (1.5, "int"),
        (True, "int"),
    ],
)
def test_bad_targets_are_rejected(model, images, target, message):
    with pytest.raises(ExplainError, match=message):
        explain(model, images, target=target)


def test_bad_methods_and_sdpa_models_are_rejected(model, images):
    with pytest.raises(ExplainError, match="methods"):
        explain(model, images, methods=("saliency",))
    sdpa = build_model(TINY, ["a", "b"]).eval()
    sdpa.config._attn_implementation = "sdpa"
    with pytest.raises(ExplainError, match="eager"):
        explain(sdpa, images)


# ---- rendering ---------------------------------------------------------------------------------------------


def test_upsample_is_bilinear_to_the_requested_size():
    grid = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    assert upsample(grid, 8).shape == (8, 8)
    batch = upsample(np.stack([grid, 1 - grid]), (6, 10))
    assert batch.shape == (2, 6, 10) and batch.min() >= 0.0 and batch.max() <= 1.0
    # Pixel centres sit at (i + 0.5) / 2 - 0.5 cells: -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
    ramp = upsample(np.array([[0.0, 1.0], [0.0, 1.0]]), 4)
    np.testing.assert_allclose(ramp, np.tile([0.0, 0.25, 0.75, 1.0], (4, 1)), atol=1e-6)


def test_overlay_png_is_an_rgb_image_of_the_input_size():
    image = np.full((40, 56), 128, dtype=np.uint8)
    hot = np.zeros((2, 2), dtype=np.float32)
    hot[0, 1] = 1.0
    png = overlay_png(image, hot, alpha=0.5)
    decoded = np.asarray(Image.open(io.BytesIO(png)))
    assert decoded.shape == (40, 56, 3) and decoded.dtype == np.uint8
    red, green, blue = decoded[2, -2].astype(int)  # inside the hot cell: jet's dark red over grey
    assert red > green + 40 and red > blue + 40
    red, green, blue = decoded[-2, 2].astype(int)  # a cold cell: jet's dark blue
    assert blue > red and blue > green
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(overlay_png(image, hot, alpha=0.0)))), np.full((40, 56, 3), 128)
    )


def test_overlay_png_rejects_bad_inputs():
    with pytest.raises(ExplainError, match="uint8"):
        overlay_png(np.zeros((8, 8), dtype=np.float32), np.zeros((2, 2)))
    with pytest.raises(ExplainError, match="colormap"):
        overlay_png(np.zeros((8, 8), dtype=np.uint8), np.zeros((2, 2)), colormap="no-such-map")
