"""The model card: built from the run's own files, one dict rendered as JSON and Markdown, published with
every version (listed in its manifest) and packed where the describe call finds it; and the per-image
predictions the evaluation writes beside it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fixtures.run_outputs import CLASSES, FINGERPRINT, write_run_outputs
from fixtures.serving_samples import CLASS_NAMES, save_tiny_model

from neurovit import RESEARCH_DISCLAIMER
from neurovit.confidence_map import ConfidenceMap
from neurovit.data.split import load_split
from neurovit.model import ModelInfo
from neurovit.preprocessing import PreprocessConfig
from neurovit.serving import MODEL_CARD_FILE
from neurovit.store import open_store, resolve
from training import stages
from training.evaluation_report import PREDICTIONS_FILE
from training.model_card import MODEL_CARD_MARKDOWN, build_card, render_markdown, write_card

VERSION = "v20260101-000000-abcdef"


@pytest.fixture()
def outputs(tmp_path: Path) -> dict[str, Path]:
    return write_run_outputs(tmp_path / "run")


def card_of(outputs: dict[str, Path]) -> dict:
    return build_card(
        "neurovit", VERSION, outputs["model"], outputs["evaluation"], outputs["split"], outputs["analysis"]
    )


def test_the_card_says_what_the_run_recorded(outputs):
    card = card_of(outputs)
    metrics = json.loads((outputs["evaluation"] / "metrics.json").read_text())
    assert card["version"] == VERSION and card["research_use_only"] is True
    assert card["disclaimer"] == RESEARCH_DISCLAIMER and "not for diagnosis" in card["intended_use"]
    image = card["network_data_format"]["inputs"]["image"]
    # The input contract is the model's preprocessing config, not constants.
    assert image["spatial_shape"] == [96, 96] and image["modality"] == "MR" and "DICOM" in image["formats"]
    assert image["preprocessing"]["intensity_window"] == "foreground_median"
    assert "foreground_median" in image["intensity"]
    assert card["network_data_format"]["outputs"]["pred"]["classes"] == CLASSES
    data = card["training_data"]
    assert data["fingerprint"] == FINGERPRINT
    assert data["removed"] == {
        "corrupt_files": 2,
        "not_mri_files": 2,
        "leaking_images_dropped": 4,
        "leaking_images_moved_to_train": 0,
    }
    assert data["analysis"]["noise_like"] == 2 and data["analysis"]["exact_duplicate_groups"] == 3
    glioma = card["performance"]["per_class"]["glioma"]
    assert glioma["sensitivity"]["value"] == metrics["per_class"]["glioma"]["sensitivity"]
    assert glioma["auc"]["ci_low"] <= glioma["auc"]["value"] <= glioma["auc"]["ci_high"]
    assert card["calibration"]["ece_before"] == 0.12 and card["calibration"]["ece_after"] == 0.04
    assert card["calibration"]["ece_if_calibrated_p95"] == 0.03
    assert card["out_of_distribution"]["threshold"] == 1.25
    assert card["out_of_distribution"]["false_positive_rate_held_out"] == 0.05
    assert card["explanations"]["measured"] is False
    assert "make eval-explain" in card["explanations"]["how_to_measure"]
    assert any(limit.startswith("Small data: 80 training slices") for limit in card["limitations"])
    assert any("Not validated clinically" in limit for limit in card["limitations"])


def test_the_markdown_is_rendered_from_the_json(outputs, tmp_path):
    paths = write_card(card_of(outputs), tmp_path / "card")
    card = json.loads(paths[MODEL_CARD_FILE].read_text())
    markdown = paths[MODEL_CARD_MARKDOWN].read_text()
    assert markdown == render_markdown(card)
    assert RESEARCH_DISCLAIMER in markdown and FINGERPRINT in markdown
    assert "Not measured in this version. Measure with `make eval-explain" in markdown
    row = card["performance"]["per_class"]["meningioma"]["auc"]
    assert f"{row['value']:.3f} ({row['ci_low']:.3f}-{row['ci_high']:.3f})" in markdown
    card["performance"]["accuracy"] = 0.5
    assert "Accuracy 0.500" in render_markdown(card)
    assert "0.0400 after (a perfectly calibrated model would show up to 0.0300" in markdown
    card["calibration"]["ece_if_calibrated_p95"] = None  # a version evaluated before the band existed
    assert "0.0400 after.\n" in render_markdown(card)


def test_a_version_with_a_confidence_map_says_so_with_both_eces(outputs):
    confidence_map = ConfidenceMap((0.5, 0.9, 0.97), (0.45, 0.8, 0.99))
    ModelInfo(class_names=CLASSES, temperature=1.5, confidence_map=confidence_map).save(outputs["model"])
    metrics_file = outputs["evaluation"] / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "ece_temperature_only": 0.07}))
    card = card_of(outputs)
    assert "confidence map" in card["calibration"]["method"]
    assert card["calibration"]["confidence_map"] == confidence_map.to_dict()
    assert "confidence map" in card["network_data_format"]["outputs"]["pred"]["calibration"]
    assert "0.1200 before, 0.0700 after the temperature, 0.0400 after" in render_markdown(card)
    assert (
        "confidence map"
        not in card_of(write_run_outputs(outputs["model"].parent.parent / "plain"))["calibration"]["method"]
    )


def test_explanation_scores_join_the_card_when_the_run_measured_them(outputs):
    measured = {
        "images": "the version's test split",
        "n_slices": 20,
        "explained": {
            "predicted": {
                "methods": {
                    "rollout": {"pointing_game": 0.7, "deletion": {"black": {"auc": 0.21}}},
                    "gradcam": {"pointing_game": None, "deletion": {"black": {"auc": 0.25}}},
                }
            }
        },
    }
    (outputs["evaluation"] / "explain_eval.json").write_text(json.dumps(measured))
    card = card_of(outputs)
    assert card["explanations"]["measured"] is True
    assert card["explanations"]["methods"]["rollout"] == {
        "pointing_game": 0.7,
        "deletion_auc": {"black": 0.21},
    }
    assert "| rollout | 0.700 | black 0.210 |" in render_markdown(card)


def test_a_version_without_an_ood_score_says_so(tmp_path):
    card = card_of(write_run_outputs(tmp_path / "run", ood=False))
    assert card["out_of_distribution"] is None
    assert "This version has no OOD score." in render_markdown(card)


def test_every_published_version_holds_its_card_in_the_manifest(outputs, tmp_path):
    uri = stages.publish_stage(
        str(tmp_path / "store"),
        "neurovit",
        outputs["model"],
        outputs["evaluation"],
        outputs["split"],
        outputs["analysis"],
        tmp_path / "staging",
        version=VERSION,
        package=False,
    )
    store, model, version = resolve(uri)
    manifest = store.manifest(model, version)
    assert {MODEL_CARD_FILE, MODEL_CARD_MARKDOWN} <= set(manifest["files"])
    assert manifest["model_card"] == sorted([MODEL_CARD_FILE, MODEL_CARD_MARKDOWN])
    store.verify(model, version)  # the sha256 of every file, the card's included
    fetched = store.fetch(model, version, tmp_path / "fetched")
    assert json.loads((fetched / MODEL_CARD_FILE).read_text())["version"] == VERSION
    assert not list(tmp_path.glob("staging-card*"))  # the card is written in a temporary folder


# ---- the stages on real files: evaluation, predictions.csv, OOD on held-out slices, the card -------------


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, write_slice):
    """A tiny model (no training: the stages, not the figures, are under test) calibrated and evaluated on
    a small data folder, then published."""
    root = tmp_path_factory.mktemp("stages")
    data = root / "data"
    for index in range(48):
        write_slice(data / CLASS_NAMES[index % 4] / f"slice_{index:03d}.png", seed=index)
    (data / "glioma" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    stages.analyze_stage(data, root / "analysis", workers=1)
    stages.split_stage(data, root / "analysis", root / "split.json", seed=0)
    best = save_tiny_model(root / "best", monitoring=False)
    metrics = stages.calibrate_and_evaluate_stage(
        data, root / "split.json", best, root / "evaluation", root / "model"
    )
    uri = stages.publish_stage(
        str(root / "store"),
        "neurovit",
        root / "model",
        root / "evaluation",
        root / "split.json",
        root / "analysis",
        root / "staging",
        package=False,
    )
    return {"root": root, "data": data, "metrics": metrics, "uri": uri}


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_evaluation_writes_one_prediction_per_held_out_image(evaluated_run):
    root, metrics = evaluated_run["root"], evaluated_run["metrics"]
    rows = read_rows(root / "evaluation" / PREDICTIONS_FILE)
    test_paths = [entry.relpath for entry in load_split(root / "split.json").entries_in("test")]
    assert [row["path"] for row in rows] == test_paths and len(rows) == metrics["n"]
    assert list(rows[0]) == [
        "path",
        "true_class",
        "predicted_class",
        *(f"p_{name}" for name in CLASS_NAMES),
        "ood_score",
        "ood_flagged",
    ]
    correct = 0
    for row in rows:
        probabilities = [float(row[f"p_{name}"]) for name in CLASS_NAMES]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert row["predicted_class"] == CLASS_NAMES[probabilities.index(max(probabilities))]
        assert row["true_class"] == row["path"].split("/")[0]
        correct += row["predicted_class"] == row["true_class"]
        flagged = float(row["ood_score"]) > metrics["monitoring"]["ood_threshold"]
        assert row["ood_flagged"] == str(flagged).lower()
    assert correct / len(rows) == pytest.approx(metrics["accuracy"])
    flagged_rate = sum(row["ood_flagged"] == "true" for row in rows) / len(rows)
    assert metrics["monitoring"]["ood_evaluated_flagged_rate"] == pytest.approx(flagged_rate)
    assert set(metrics["per_class_intervals"]["per_class"]) == set(CLASS_NAMES)


def test_the_published_card_carries_the_runs_figures(evaluated_run):
    store, model, version = resolve(evaluated_run["uri"])
    fetched = store.fetch(model, version, evaluated_run["root"] / "fetched")
    card, metrics = json.loads((fetched / MODEL_CARD_FILE).read_text()), evaluated_run["metrics"]
    assert card["version"] == version and card["performance"]["accuracy"] == metrics["accuracy"]
    assert card["training_data"]["fingerprint"] == load_split(fetched / "split.json").fingerprint
    assert card["training_data"]["analysis"]["corrupt"] == 1
    assert card["calibration"]["ece_after"] == metrics["ece_after_calibration"]
    assert card["out_of_distribution"]["false_positive_rate_held_out"] == pytest.approx(
        metrics["monitoring"]["ood_evaluated_flagged_rate"]
    )
    size = PreprocessConfig.load(fetched / "model").image_size
    assert card["network_data_format"]["inputs"]["image"]["spatial_shape"] == [size, size]
    assert (fetched / MODEL_CARD_MARKDOWN).read_text() == render_markdown(card)
    assert (fetched / "evaluation" / PREDICTIONS_FILE).is_file()


def test_evaluate_writes_predictions_for_every_readable_image_of_a_folder(evaluated_run, tmp_path):
    store, model, version = resolve(evaluated_run["uri"])
    fetched = store.fetch(model, version, tmp_path / "fetched")
    metrics = stages.evaluate_model_stage(fetched / "model", evaluated_run["data"], tmp_path / "out")
    rows = read_rows(tmp_path / "out" / PREDICTIONS_FILE)
    readable = sorted(
        path.relative_to(evaluated_run["data"]).as_posix()
        for path in evaluated_run["data"].rglob("slice_*.png")
    )
    assert sorted(row["path"] for row in rows) == readable  # the broken file is left out, not misnamed
    assert len(rows) == metrics["n"] == 48
    flagged = sum(row["ood_flagged"] == "true" for row in rows) / len(rows)
    assert metrics["ood"]["flagged_rate"] == pytest.approx(flagged)
    assert open_store(evaluated_run["root"] / "store").list_models() == ["neurovit"]


def test_the_card_says_where_the_weights_started(outputs):
    assert card_of(outputs)["model"] == {"kind": "from scratch", "base_model": None}
    assert "- Weights: trained from scratch" in render_markdown(card_of(outputs))
    info = ModelInfo.load(outputs["model"])
    info.extra["base_model"] = {
        "source": "google/vit-base-patch16-224",
        "model_type": "vit",
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "layers": 12,
        "heads": 12,
        "checkpoint_channels": 3,
        "grey_input": "repeated into the 3 channels, folded into the patch projection",
        "input_normalisation": {"mean": [0.5] * 3, "std": [0.5] * 3, "source": "preprocessor_config.json"},
    }
    info.save(outputs["model"])
    card = card_of(outputs)
    assert card["model"]["base_model"]["source"] == "google/vit-base-patch16-224"
    assert "fine-tuned" in card["model"]["kind"]
    markdown = render_markdown(card)
    assert "- Weights: fine-tuned from `google/vit-base-patch16-224` (vit, 12 layers" in markdown
    assert "normalised with its image processor's mean [0.5, 0.5, 0.5]" in markdown
