"""--base-model: a pretrained HF ViT checkpoint becomes a one-channel NeuroViT that reads our preprocessing
exactly as the checkpoint read its RGB input, and a hub id this machine cannot fetch fails clearly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from fixtures.pretrained import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, PATCH_SIZE, save_tiny_checkpoint
from transformers import DeiTConfig, ViTForImageClassification

from neurovit.base_model import checkpoint_folder, checkpoint_image_size, load_base_model
from neurovit.errors import BaseModelError, NeuroVitError
from neurovit.explain import explain
from neurovit.model import ModelInfo, load_model, save_model
from neurovit.preprocessing import PreprocessConfig

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
OURS = PreprocessConfig(image_size=IMAGE_SIZE)


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return save_tiny_checkpoint(tmp_path / "tiny-vit")


def test_the_checkpoint_becomes_a_one_channel_model_with_our_head(checkpoint: Path) -> None:
    start = load_base_model(str(checkpoint), CLASSES, OURS)
    model, config = start.model, start.model.config
    assert config.num_channels == 1 and model.vit.embeddings.patch_embeddings.projection.in_channels == 1
    assert (config.image_size, config.patch_size, config.num_labels) == (IMAGE_SIZE, PATCH_SIZE, len(CLASSES))
    assert [config.id2label[i] for i in range(4)] == CLASSES
    assert config._attn_implementation == "eager" and config.attention_probs_dropout_prob == 0.0
    assert model(torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)).logits.shape == (2, 4)
    assert start.facts["input_normalisation"] == {
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "source": "preprocessor_config.json",
    }
    assert start.facts["checkpoint_channels"] == 3 and start.facts["patch_size"] == PATCH_SIZE
    assert checkpoint_image_size(str(checkpoint)) == IMAGE_SIZE


@pytest.mark.parametrize("image_processor", [True, False])
def test_folding_gives_the_checkpoint_exactly_its_rgb_input(tmp_path: Path, image_processor: bool) -> None:
    """The pretrained encoder sees what it would have seen: the grey slice repeated in three channels,
    normalised per channel (ImageNet statistics, or ours without an image processor)."""
    folder = save_tiny_checkpoint(tmp_path / "tiny", image_processor=image_processor)
    original = ViTForImageClassification.from_pretrained(folder, attn_implementation="eager").eval()
    folded = load_base_model(str(folder), CLASSES, OURS).model.eval()
    grey01 = torch.rand(3, 1, IMAGE_SIZE, IMAGE_SIZE)
    mean = torch.tensor(IMAGENET_MEAN if image_processor else [OURS.mean] * 3)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD if image_processor else [OURS.std] * 3)[None, :, None, None]
    rgb = (grey01.repeat(1, 3, 1, 1) - mean) / std
    ours = (grey01 - OURS.mean) / OURS.std
    with torch.no_grad():
        expected = original.vit(rgb).last_hidden_state
        got = folded.vit(ours).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_a_saved_fine_tuned_model_loads_and_explains_like_any_neurovit(
    checkpoint: Path, tmp_path: Path
) -> None:
    start = load_base_model(str(checkpoint), CLASSES, OURS)
    save_model(start.model, tmp_path / "model", OURS, ModelInfo(CLASSES, extra={"base_model": start.facts}))
    loaded = load_model(tmp_path / "model")
    assert loaded.info.extra["base_model"]["source"] == str(checkpoint)
    maps = explain(loaded.model, torch.randn(2, 1, IMAGE_SIZE, IMAGE_SIZE), ("rollout", "gradient_rollout"))
    grid = IMAGE_SIZE // PATCH_SIZE
    assert maps["rollout"].shape == maps["gradient_rollout"].shape == (2, grid, grid)


def test_a_hub_id_without_hub_access_names_the_id_and_says_why(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing downloaded before
    started = time.perf_counter()
    with pytest.raises(BaseModelError, match="no model hub access") as caught:
        checkpoint_folder("google/vit-base-patch16-224")
    assert "'google/vit-base-patch16-224'" in str(caught.value) and "--local-dir" in str(caught.value)
    assert isinstance(caught.value, NeuroVitError)
    assert time.perf_counter() - started < 10  # offline: no retries against an unreachable host


def test_a_distilled_deit_or_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    deit = tmp_path / "deit"
    DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(deit)
    with pytest.raises(BaseModelError, match="'deit' checkpoint"):
        load_base_model(str(deit), CLASSES, OURS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="no config.json"):
        load_base_model(str(tmp_path / "empty"), CLASSES, OURS)


def test_preprocessing_at_another_size_than_the_checkpoints_is_refused(checkpoint: Path) -> None:
    with pytest.raises(BaseModelError, match="32 px images, the preprocessing makes 64 px"):
        load_base_model(str(checkpoint), CLASSES, PreprocessConfig(image_size=64))


def test_a_bad_image_processor_is_refused(checkpoint: Path) -> None:
    path = checkpoint / "preprocessor_config.json"
    path.write_text(json.dumps({"image_mean": [0.5, 0.5], "image_std": [0.5, 0.5]}))
    with pytest.raises(BaseModelError, match="do not fit a 3-channel checkpoint"):
        load_base_model(str(checkpoint), CLASSES, OURS)
