"""A model fine-tuned from a pretrained ViT checkpoint (``--base-model``) serves through the real TorchServe
path like any NeuroViT: packaged into a .mar, both maps on its own patch grid, its card in the describe
call. The weights are the checkpoint's as loaded (serving, not training, is under test here)."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.pretrained import IMAGE_SIZE, PATCH_SIZE, save_tiny_checkpoint
from fixtures.run_outputs import write_run_outputs
from fixtures.serving_samples import (
    CLASS_NAMES,
    MODEL,
    TEST_OPTIONS,
    VERSION,
    assert_answer,
    encode,
    published_copy,
)

from handlers.package import package_stage
from neurovit.base_model import load_base_model
from neurovit.model import ModelInfo, save_model
from neurovit.preprocessing import PreprocessConfig
from neurovit.serving import MODEL_CARD_FILE
from training.model_card import build_card, write_card
from training.monitoring_reference import write_monitoring_reference

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fine_tuned_server(tmp_path_factory, start_torchserve, make_slice):
    root = tmp_path_factory.mktemp("base-model-serving")
    checkpoint = save_tiny_checkpoint(root / "tiny-vit")
    preprocessing = PreprocessConfig(image_size=IMAGE_SIZE)
    start = load_base_model(str(checkpoint), CLASS_NAMES, preprocessing)
    info = ModelInfo(CLASS_NAMES, temperature=1.3, extra={"base_model": start.facts})
    model = save_model(start.model, root / "model", preprocessing, info)
    images = np.stack([make_slice(seed, IMAGE_SIZE) for seed in range(24)])
    labels = np.arange(24) % len(CLASS_NAMES)
    write_monitoring_reference(model, (images, labels), (images[::2], labels[::2]))
    run = write_run_outputs(root / "run")
    info.save(run["model"])  # the card reads where the weights came from
    card = build_card(MODEL, VERSION, run["model"], run["evaluation"], run["split"], run["analysis"])
    card_file = write_card(card, root / "card")[MODEL_CARD_FILE]
    package_stage(model, root / "package", MODEL, VERSION, options=TEST_OPTIONS, extra_files=[card_file])
    with start_torchserve(published_copy(root / "package"), root / "serve") as server:
        yield server, str(checkpoint)


def test_both_maps_come_on_the_checkpoints_patch_grid(fine_tuned_server, make_slice) -> None:
    server, _ = fine_tuned_server
    response = server.post(f"/explanations/{MODEL}", encode(make_slice(3, 60), "PNG"), "image/png")
    assert response.status == 200, response.body[:300]
    answer = response.json()
    assert_answer(answer, ("heatmap", "rollout"))
    assert answer["explanations"]["rollout"]["grid_size"] == IMAGE_SIZE // PATCH_SIZE
    assert answer["ood"]["threshold"] > 0


def test_the_describe_call_names_the_base_model(fine_tuned_server) -> None:
    server, checkpoint = fine_tuned_server
    custom = server.describe(MODEL)
    assert custom["preprocessing"]["image_size"] == IMAGE_SIZE
    assert custom["model_card"]["model"]["base_model"]["source"] == checkpoint
