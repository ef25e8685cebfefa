"""The committed Kubeflow pipeline spec is current, asks for a GPU for training and sizes every task."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.pipeline import DEFAULT_TRAINING_IMAGE, GPU_RESOURCE, PIPELINE_FILE, PIPELINE_NAME, RESOURCES
from training.recipes import gpu_recipe
from training.train import TrainConfig

STAGES = ("prepare-data", "analyze", "split", "train", "evaluate", "publish")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The pipeline compiled now, in a fresh interpreter with the default image (env override removed)."""
    out = tmp_path_factory.mktemp("pipeline") / "pipeline.yaml"
    env = {k: v for k, v in os.environ.items() if k != "NEUROVIT_TRAINING_IMAGE"}
    subprocess.run(
        [sys.executable, "-m", "training.cli", "pipeline", "compile", "--output", str(out)],
        check=True,
        capture_output=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    return out.read_bytes()


@pytest.fixture(scope="module")
def spec() -> dict:
    # The first document is the pipeline spec; the second, kfp-kubernetes' platform spec (store access).
    return next(yaml.safe_load_all(PIPELINE_FILE.read_text()))


def _executor(spec: dict, task: str) -> dict:
    """The container spec that runs ``task`` of the root DAG."""
    component = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    label = spec["components"][component]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]


def test_committed_spec_is_current(compiled: bytes) -> None:
    assert PIPELINE_FILE.is_file(), f"{PIPELINE_FILE} is missing: run `make pipeline-compile` and commit it"
    assert compiled == PIPELINE_FILE.read_bytes(), (
        f"{PIPELINE_FILE} is stale (training/pipeline.py or kfp changed): run `make pipeline-compile` "
        "and commit the result"
    )


def test_pipeline_has_one_task_per_stage_on_the_training_image(spec: dict) -> None:
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    assert set(spec["root"]["dag"]["tasks"]) == set(STAGES)
    for task in STAGES:
        container = _executor(spec, task)
        assert container["image"] == DEFAULT_TRAINING_IMAGE
        # Nothing is pip-installed when a task starts: the image holds kfp and every dependency.
        assert "pip install" not in " ".join(container["command"]), task


def test_train_task_asks_for_a_gpu(spec: dict) -> None:
    accelerator = _executor(spec, "train")["resources"]["accelerator"]
    assert accelerator["resourceType"] == GPU_RESOURCE
    assert accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--train_gpus']}}"
    assert spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]["pipelinechannel--train_gpus"] == {
        "componentInputParameter": "train_gpus"
    }
    assert spec["root"]["inputDefinitions"]["parameters"]["train_gpus"]["defaultValue"] == 1
    for task in set(STAGES) - {"train"}:
        assert "accelerator" not in _executor(spec, task)["resources"], task


def test_every_task_has_cpu_and_memory_requests_and_limits(spec: dict) -> None:
    for task in STAGES:
        resources = _executor(spec, task)["resources"]
        (cpu_request, cpu_limit), (memory_request, memory_limit) = (
            RESOURCES[task]["cpu"],
            RESOURCES[task]["memory"],
        )
        assert resources["resourceCpuRequest"] == cpu_request, task
        assert resources["resourceCpuLimit"] == cpu_limit, task
        assert resources["resourceMemoryRequest"] == memory_request, task
        assert resources["resourceMemoryLimit"] == memory_limit, task
        # The deprecated numeric fields too, for older KFP backends.
        assert resources["cpuRequest"] <= resources["cpuLimit"], task
        assert resources["memoryRequest"] <= resources["memoryLimit"], task


def test_training_defaults_are_the_gpu_recipe(spec: dict) -> None:
    """The train task has a GPU by default, so its schedule is the GPU recipe's, not the CPU defaults."""
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    recipe = gpu_recipe()
    for name in ("epochs", "batch_size", "patience", "intensity_window", "seed", "amp"):
        assert parameters[name]["defaultValue"] == getattr(recipe, name), name
    assert recipe.epochs > TrainConfig().epochs and recipe.model.image_size == 128
    # 0: the recipe's learning rate (learning_rate_for), so a base model gets fine-tuning's
    assert parameters["learning_rate"]["defaultValue"] == 0.0
    assert parameters["base_model"]["defaultValue"] == ""
    assert "defaultValue" not in parameters["store_uri"], "store_uri must be given for every run"


def test_the_train_task_builds_the_gpu_recipe_with_the_runs_parameters(tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    from training import stages
    from training.pipeline import train

    seen = []

    def fake_train_stage(dataset, split, run_dir, config):
        seen.append(config)
        (Path(run_dir) / "best").mkdir(parents=True)
        return SimpleNamespace(
            best_dir=Path(run_dir) / "best",
            best_val_accuracy=0.5,
            best_epoch=1,
            epochs_run=1,
            train_seconds=1.0,
            images_per_second=1.0,
        )

    monkeypatch.setattr(stages, "train_stage", fake_train_stage)
    model = SimpleNamespace(path=str(tmp_path / "model"), metadata={})
    common = dict(dataset=SimpleNamespace(path="d"), split_plan=SimpleNamespace(path="s"), model=model)
    schedule = dict(epochs=3, batch_size=8, patience=2, intensity_window="percentile", seed=0, amp="bf16")
    train.python_func(**common, **schedule, learning_rate=0.0, time_budget_s=0.0, base_model="")
    train.python_func(**common, **schedule, learning_rate=0.0, time_budget_s=60.0, base_model="ckpt")
    scratch, tuned = seen
    assert scratch.model == gpu_recipe().model and scratch.amp == "bf16" and scratch.epochs == 3
    assert (scratch.learning_rate, scratch.base_model, scratch.time_budget_s) == (1e-3, None, None)
    assert (tuned.learning_rate, tuned.base_model, tuned.time_budget_s) == (1e-4, "ckpt", 60.0)
    assert model.metadata["base_model"] == "ckpt" and model.metadata["amp"] == "bf16"


def test_a_data_uri_with_credentials_is_refused_and_not_printed(tmp_path, capsys) -> None:
    from types import SimpleNamespace

    from training.pipeline import prepare_data

    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    dataset = SimpleNamespace(path=str(tmp_path / "dataset"), metadata={})
    with pytest.raises(ValueError, match="carries credentials") as caught:
        prepare_data.python_func(
            data_uri=f"s3://AKIAEXAMPLE:{secret}@datasets/brain-mri", demo_images_per_class=1, dataset=dataset
        )
    assert secret not in str(caught.value) and "s3://***@datasets/brain-mri" in str(caught.value)
    assert secret not in "".join(capsys.readouterr()) and dataset.metadata == {}
