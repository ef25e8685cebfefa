"""Model build, save/load round trip, and the documented config defaults."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from neurovit.model import ConvStem, ModelConfig, ModelInfo, build_model, load_model, save_model
from neurovit.preprocessing import PreprocessConfig

TINY = ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2)
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def test_conv_stem_gives_one_token_per_stride_cell_plus_cls():
    model = build_model(TINY, CLASSES).eval()
    out = model(torch.zeros(2, 1, 32, 32), output_attentions=True)
    grid = 32 // TINY.patch_size
    assert TINY.patch_size == 4
    assert out.logits.shape == (2, 4)
    assert len(out.attentions) == TINY.num_layers
    assert out.attentions[0].shape == (2, TINY.num_heads, grid * grid + 1, grid * grid + 1)
    assert isinstance(model.vit.embeddings.patch_embeddings.projection, ConvStem)


def test_conv_stem_uses_kaiming_not_hf_small_init():
    model = build_model(ModelConfig(), CLASSES)
    first_conv = model.vit.embeddings.patch_embeddings.projection.layers[0]
    kernel = first_conv.kernel_size[0] * first_conv.kernel_size[1]
    expected = (2.0 / (first_conv.out_channels * kernel)) ** 0.5  # Kaiming fan_out
    assert first_conv.weight.std().item() == pytest.approx(expected, rel=0.2)


def receptive_field_centre(stem: ConvStem, row: int, col: int, image_size: int) -> tuple[float, float]:
    """Centre of the input pixels that token (row, col) of the stem depends on (ReLUs removed, so every
    pixel of the receptive field gets a non-zero gradient)."""
    linear = [torch.nn.Identity() if isinstance(m, torch.nn.ReLU) else m for m in stem.layers]
    pixels = torch.randn(1, 1, image_size, image_size, requires_grad=True)
    (gradient,) = torch.autograd.grad(
        torch.nn.Sequential(*linear).eval()(pixels)[0, :, row, col].sum(), pixels
    )
    rows, cols = np.nonzero(gradient[0, 0].numpy())
    return (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2


@pytest.mark.parametrize("kernel", [2, 4])
def test_every_token_is_centred_on_its_own_patch(kernel):
    # The explanation maps put token (r, c)'s value on patch (r, c): that is only true when the token sees
    # the patch centred. 2x2/stride-2 (ConvNeXt's downsampling) and 4x4/padding 1 both do.
    torch.manual_seed(0)
    stem = ConvStem(1, (8, 8, 8, 8), 16, extra_convs=1, kernel=kernel)
    for row, col in [(5, 6), (7, 8), (9, 10)]:  # tokens whose receptive field the image border does not cut
        assert receptive_field_centre(stem, row, col, 256) == (16 * row + 7.5, 16 * col + 7.5)


def test_the_first_versions_3x3_stem_is_off_by_half_a_patch():
    # Why stem_kernel exists: padding-1 3x3 stride-2 convs centre token i on pixel 16 i, the patch's corner.
    torch.manual_seed(0)
    stem = ConvStem(1, (8, 8, 8, 8), 16, extra_convs=1, kernel=3)
    assert receptive_field_centre(stem, 3, 5, 128) == (48.0, 80.0)


def test_a_config_saved_without_stem_kernel_loads_the_3x3_stem(tmp_path):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, stem_kernel=3), CLASSES).eval()
    save_model(model, tmp_path, PreprocessConfig(image_size=32), ModelInfo(CLASSES))
    config = json.loads((tmp_path / "config.json").read_text())
    del config["stem_kernel"]  # as versions published before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_model(tmp_path)
    assert loaded.model.vit.embeddings.patch_embeddings.projection.layers[0].kernel_size == (3, 3)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.model(x).logits.numpy(), model(x).logits.numpy(), atol=1e-6)


def test_save_and_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY, CLASSES).eval()
    with torch.no_grad():  # move BatchNorm statistics away from their defaults so they must be saved
        model(torch.randn(4, 1, 32, 32))
    model.vit.embeddings.patch_embeddings.projection.layers[1].running_mean.fill_(0.3)
    preprocessing = PreprocessConfig(image_size=32, low_percentile=1.0)
    save_model(model, tmp_path, preprocessing, ModelInfo(CLASSES, temperature=1.7, extra={"note": "x"}))

    loaded = load_model(tmp_path)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.model(x).logits.numpy(), model(x).logits.numpy(), atol=1e-6)
    assert loaded.preprocessing == preprocessing
    assert loaded.class_names == CLASSES
    assert loaded.info.temperature == 1.7 and loaded.info.extra["note"] == "x"
    assert loaded.model.config._attn_implementation == "eager"
    assert not loaded.model.training


def test_load_model_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved NeuroViT model"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stem": "resnet"}, "stem must be"),
        ({"image_size": 100}, "not a multiple"),
        ({"hidden_size": 30, "num_heads": 4}, "not divisible"),
        ({"stem_kernel": 5}, "stem_kernel must be"),
    ],
)
def test_model_config_rejects_inconsistent_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_build_model_needs_two_classes():
    with pytest.raises(ValueError, match="at least two classes"):
        build_model(TINY, ["glioma"])


def test_documented_defaults_match_the_code():
    # The docstrings say: conv stem, 128 px, attention-probability dropout 0 (rollout needs clean maps).
    config = ModelConfig()
    assert config.stem == "conv" and config.image_size == 128 and config.stem_kernel == 2
    assert config.patch_size == 2 ** len(config.stem_channels)
    vit_config = build_model(dataclasses.replace(TINY), CLASSES).config
    assert vit_config.attention_probs_dropout_prob == 0.0
    assert vit_config.id2label == dict(enumerate(CLASSES))
