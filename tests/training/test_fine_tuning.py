"""`neurovit train --base-model`: a tiny pretrained checkpoint (3 channels, its own image and patch size, a
10-class head) fine-tuned end to end through calibration, OOD, publish and packaging, then served in
process and explained like any NeuroViT; and the options that do not go with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.pretrained import IMAGE_SIZE, PATCH_SIZE, save_tiny_checkpoint
from fixtures.serving_samples import assert_answer, encode
from safetensors.torch import load_file

from neurovit.serving import ImageRequest, Predictor
from neurovit.store import resolve_version
from training.cli import main

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, write_slice) -> dict:
    root = tmp_path_factory.mktemp("fine-tune")
    data = root / "data"
    for index in range(40):
        write_slice(data / CLASSES[index % 4] / f"slice_{index:03d}.png", seed=2000 + index, size=64)
    checkpoint = save_tiny_checkpoint(root / "tiny-vit")
    argv = ["train", "--data-dir", str(data), "--store", str(root / "store"), "--run-dir", str(root / "run")]
    argv += ["--base-model", str(checkpoint), "--epochs", "2", "--batch-size", "8", "--json"]
    code = main(argv)
    assert code == 0
    store, model, version = resolve_version("latest", str(root / "store"), model="neurovit")
    fetched = store.fetch(model, version, root / "fetched")
    return {"checkpoint": checkpoint, "version": fetched, "manifest": store.manifest(model, version)}


def test_the_version_records_its_base_model_and_the_checkpoints_input_size(fine_tuned) -> None:
    manifest, version = fine_tuned["manifest"], fine_tuned["version"]
    base = manifest["base_model"]
    assert base["source"] == str(fine_tuned["checkpoint"]) and base["patch_size"] == PATCH_SIZE
    assert base["input_normalisation"]["source"] == "preprocessor_config.json"
    assert manifest["preprocessing"]["image_size"] == IMAGE_SIZE
    config = json.loads((version / "model" / "config.json").read_text())
    assert (config["num_channels"], config["patch_size"], len(config["id2label"])) == (1, PATCH_SIZE, 4)
    card = json.loads((version / "model_card.json").read_text())
    assert card["model"]["base_model"]["source"] == str(fine_tuned["checkpoint"])
    assert "fine-tuned from" in (version / "MODEL_CARD.md").read_text()
    train_config = json.loads((version / "model" / "neurovit.json").read_text())["train_config"]
    assert train_config["base_model"] == str(fine_tuned["checkpoint"])
    assert train_config["learning_rate"] == 1e-4  # fine-tuning's, none was given
    assert list((version / "model-store").glob("*.mar")), "the TorchServe archive is part of the version"


def test_the_encoder_started_from_the_checkpoint_and_moved(fine_tuned) -> None:
    pretrained = load_file(fine_tuned["checkpoint"] / "model.safetensors")
    tuned = load_file(fine_tuned["version"] / "model" / "model.safetensors")
    name = "vit.encoder.layer.0.attention.attention.query.weight"
    before, after = pretrained[name], tuned[name]
    assert not np.allclose(before.numpy(), after.numpy())  # trained
    # ...but from the checkpoint, not from scratch: far closer to it than a fresh init would be
    assert (after - before).norm() < 0.5 * before.norm()


def test_the_fine_tuned_version_serves_and_explains(fine_tuned, make_slice) -> None:
    model_dir = fine_tuned["version"] / "model"
    predictor = Predictor.load(model_dir, "neurovit", fine_tuned["manifest"]["version"])
    image = encode(make_slice(7, 80), "PNG")
    prepared = predictor.prepare(ImageRequest(image, ("rollout", "heatmap")))
    answer = predictor.predict([prepared])[0]
    assert_answer(answer, ("rollout", "heatmap"))
    assert answer["explanations"]["rollout"]["grid_size"] == IMAGE_SIZE // PATCH_SIZE
    assert answer["ood"] is not None and answer["ood"]["threshold"] > 0
    assert predictor.describe()["preprocessing"]["image_size"] == IMAGE_SIZE


def test_image_size_does_not_go_with_a_base_model(tmp_path, capsys) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny-vit")
    argv = [
        "train",
        "--data-dir",
        str(tmp_path),
        "--store",
        str(tmp_path / "s"),
        "--base-model",
        str(checkpoint),
    ]
    assert main([*argv, "--image-size", "64"]) == 2
    assert "--image-size does not go with --base-model" in capsys.readouterr().err


def test_an_unreachable_hub_id_fails_before_training_with_one_clear_line(
    tmp_path, monkeypatch, capsys, write_slice
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for index in range(8):
        write_slice(tmp_path / "data" / CLASSES[index % 2] / f"s{index}.png", seed=index)
    argv = ["train", "--data-dir", str(tmp_path / "data"), "--store", str(tmp_path / "s")]
    code = main([*argv, "--run-dir", str(tmp_path / "run"), "--base-model", "facebook/deit-tiny-patch16-224"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: base model 'facebook/deit-tiny-patch16-224' is not a local folder" in err
    assert "no model hub access" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before the analysis, not after minutes of it
