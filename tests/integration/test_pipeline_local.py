"""The Kubeflow pipeline end to end with kfp's local subprocess runner, on a tiny demo set."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from neurovit.data.split import load_split
from neurovit.store import resolve
from training.cli import main as neurovit
from training.evaluations import ood as ood_eval
from training.pipeline import run_local

pytestmark = [
    pytest.mark.integration,
    # The local runner notes, once per task, that it ignores resources and accelerators: expected here.
    pytest.mark.filterwarnings("ignore:Task '[^']*'. settings .* have no effect in the current local runner"),
]


def test_local_run_publishes_a_complete_verified_version(tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    version_uri = run_local(
        str(store_root),
        data_uri="demo",
        pipeline_root=tmp_path / "kfp",
        model_name="neurovit-pipeline-test",
        demo_images_per_class=12,
        epochs=1,
        batch_size=8,
        intensity_window="foreground_median",
    )

    store, model, version = resolve(version_uri)
    assert model == "neurovit-pipeline-test"
    assert Path(store.uri).resolve() == store_root.resolve()
    manifest = store.verify(model, version)
    assert {"model/config.json", "evaluation/metrics.json", "split.json"} <= set(manifest["files"])
    assert "analysis/report.html" in manifest["files"]
    assert set(manifest["metrics"]) >= {"accuracy", "macro_f1", "ece", "temperature"}
    assert manifest["class_names"] == ["glioma", "meningioma", "notumor", "pituitary"]
    # The recipe's parameters reach the train task: the model is saved with the window it was trained on.
    preprocessing = json.loads((store.root / model / version / "model" / "preprocessing.json").read_text())
    assert preprocessing["intensity_window"] == "foreground_median"

    # Every stage left its typed output under the pipeline root.
    (run_dir,) = (tmp_path / "kfp").iterdir()
    for output in (
        "prepare-data/dataset",
        "analyze/report",
        "split/split_plan",
        "train/model/config.json",
        "evaluate/calibrated_model/neurovit.json",
        "evaluate/evaluation/metrics.json",
    ):
        assert (run_dir / output).exists(), output

    # What the Kubeflow UI shows for the evaluate task: scalar metrics and the confusion matrix.
    logged = json.loads((run_dir / "evaluate" / "executor_output.json").read_text())["artifacts"]
    scalars = logged["metrics"]["artifacts"][0]["metadata"]
    assert set(scalars) >= {"accuracy", "macro_f1", "ece", "temperature"}
    matrix = logged["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]] == manifest["class_names"]
    assert sum(sum(row["row"]) for row in matrix["rows"]) == manifest["metrics"]["n"]

    # The monitoring reference, the OOD scorer and the model card travel with the version, inside the
    # archive too; the card is also the publish task's Markdown artifact, and the evaluation has one
    # prediction per held-out image.
    assert {"model/monitoring.json", "model/ood.safetensors"} <= set(manifest["files"])
    assert {"MODEL_CARD.md", "model_card.json", "evaluation/predictions.csv"} <= set(manifest["files"])
    with zipfile.ZipFile(store.root / model / version / "model-store" / f"{model}.mar") as archive:
        assert {"monitoring.json", "ood.safetensors", "model_card.json"} <= set(archive.namelist())
    card_page = (run_dir / "publish" / "model_card").read_text()
    assert card_page == (store.root / model / version / "MODEL_CARD.md").read_text()
    assert f"# Model card: {model} {version}" in card_page

    # make eval-ood on the published version: held-out slices vs the built-in non-MRI images.
    out = tmp_path / "ood-eval"
    code = neurovit(
        [
            "ood-eval",
            "--model",
            version_uri,
            "--data-dir",
            str(run_dir / "prepare-data" / "dataset"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads((out / ood_eval.RESULTS_FILE).read_text())
    summary = result["summary"]
    assert {"mri (held-out)", "photo", "noise", "other", "all non-MRI"} <= set(summary)
    held_out = load_split(store.root / model / version / "split.json").entries_in("test")
    assert summary["mri (held-out)"]["images"] == len(held_out) > 0
    assert all(0 <= row["flagged_rate"] <= 1 for row in summary.values())
    assert (out / ood_eval.PLOT_FILE).stat().st_size > 0
