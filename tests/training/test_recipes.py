"""The GPU recipe and fine-tuning's learning rate, as `neurovit bench train` and `neurovit train` pass them
on; `--recipe gpu` without CUDA is refused before any data is read."""

from __future__ import annotations

import inspect

import pytest
import torch

import training.benchmarks.recipe as bench
from training.benchmarks.recipe import BENCH_BLACK_COUNTERFACTUALS, black_pairs_for
from training.benchmarks.recipe import run as bench_run  # before a test replaces it
from training.cli import main
from training.recipes import (
    FINE_TUNING_LEARNING_RATE,
    GPU_EPOCHS,
    gpu_bench_options,
    gpu_recipe,
    learning_rate_for,
)
from training.train import TrainConfig


def test_the_gpu_recipe_is_the_run_that_reached_096() -> None:
    recipe = gpu_recipe()
    assert recipe.model.image_size == 128 and recipe.model.stem_channels == (32, 64, 128, 192)
    assert (recipe.epochs, recipe.batch_size, recipe.amp, recipe.time_budget_s) == (
        GPU_EPOCHS,
        64,
        "auto",
        None,
    )
    assert recipe.patience >= recipe.epochs  # early stopping out of the way, as in that run
    assert gpu_recipe(epochs=3).epochs == 3


def test_the_bench_options_are_parameters_of_the_bench() -> None:
    options = gpu_bench_options()
    assert set(options) <= set(inspect.signature(bench.run).parameters)
    assert options["time_budget"] is None and options["image_size"] == 128


def test_a_base_model_gets_fine_tunings_learning_rate_unless_one_is_given() -> None:
    assert learning_rate_for(None) == TrainConfig.learning_rate == 1e-3
    assert learning_rate_for("some/vit") == FINE_TUNING_LEARNING_RATE == 1e-4
    assert learning_rate_for("some/vit", 3e-5) == 3e-5


@pytest.fixture()
def bench_calls(monkeypatch) -> list[dict]:
    calls = []
    monkeypatch.setattr(bench, "run", lambda data_dir, store, **options: calls.append(options) or {})
    return calls


def test_recipe_gpu_without_cuda_is_a_usage_error_before_any_data_is_read(monkeypatch, bench_calls, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "train", "--data-dir", "/no/such/folder", "--recipe", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "--recipe gpu is sized for a GPU and this machine has no CUDA device" in err
    assert bench_calls == []


def test_recipe_gpu_passes_the_recipe_and_given_options_win(monkeypatch, bench_calls, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["bench", "train", "--data-dir", str(tmp_path), "--recipe", "gpu"]) == 0
    assert main(["bench", "train", "--data-dir", str(tmp_path), "--recipe", "gpu", "--epochs", "5"]) == 0
    assert main(["bench", "train", "--data-dir", str(tmp_path)]) == 0  # the CPU recipe: run()'s defaults
    gpu, given, cpu = bench_calls
    assert gpu == gpu_bench_options()
    assert given == {**gpu_bench_options(), "epochs": 5}
    assert cpu == {}


def test_the_bench_trains_counterfactuals_towards_no_class_unless_told_otherwise(
    bench_calls, tmp_path
) -> None:
    assert inspect.signature(bench_run).parameters["counterfactual_class"].default == "uniform"
    for given in ("notumor", "none"):
        assert main(["bench", "train", "--data-dir", str(tmp_path), "--counterfactual-class", given]) == 0
    assert bench_calls == [{"counterfactual_class": "notumor"}, {"counterfactual_class": None}]


def test_black_counterfactuals_join_the_imputed_pairs_by_default_and_can_be_turned_off(bench_calls, tmp_path):
    assert inspect.signature(bench_run).parameters["black_counterfactuals"].default is None  # the bench's
    assert BENCH_BLACK_COUNTERFACTUALS is True
    assert main(["bench", "train", "--data-dir", str(tmp_path)]) == 0
    assert main(["bench", "train", "--data-dir", str(tmp_path), "--no-black-counterfactuals"]) == 0
    assert main(["bench", "train", "--data-dir", str(tmp_path), "--black-counterfactuals"]) == 0
    assert bench_calls == [{}, {"black_counterfactuals": False}, {"black_counterfactuals": True}]
    guide = tmp_path  # what run() then trains with
    assert black_pairs_for(None, "uniform", guide) is True
    assert black_pairs_for(False, "uniform", guide) is False
    assert black_pairs_for(None, None, guide) is False  # --counterfactual-class none: no pairs of either kind
    assert black_pairs_for(True, None, guide) is True  # asked for without a class: training's usage error
    assert black_pairs_for(True, "uniform", None) is False  # no masked slices, nothing to pair


def test_label_smoothing_zero_reaches_the_bench_and_its_default_is_training_s(bench_calls, tmp_path) -> None:
    # 0 is a real choice (no smoothing), not "not given"
    assert main(["bench", "train", "--data-dir", str(tmp_path), "--label-smoothing", "0"]) == 0
    assert bench_calls == [{"label_smoothing": 0.0}]
    assert inspect.signature(bench_run).parameters["label_smoothing"].default == TrainConfig.label_smoothing


def test_erasing_options_reach_the_bench_and_shares_outside_zero_to_one_are_usage_errors(
    bench_calls, tmp_path, capsys
) -> None:
    argv = ["bench", "train", "--data-dir", str(tmp_path)]
    assert main([*argv, "--erase-prob", "0.5", "--erase-max-fraction", "0.15"]) == 0
    assert main([*argv, "--erase-prob", "0.5", "--erase-spares-tumours"]) == 0
    assert bench_calls == [
        {"erase_prob": 0.5, "erase_max_fraction": 0.15},
        {"erase_prob": 0.5, "erase_spares_tumours": True},
    ]
    assert inspect.signature(bench_run).parameters["erase_spares_tumours"].default is False
    bad = (("--erase-prob", "1.5", "outside [0, 1]"), ("--erase-max-fraction", "-0.1", "outside [0, 1]"))
    for option, value, reason in (*bad, ("--acquisition-prob", "x", "not a number")):
        assert main([*argv, option, value]) == 2
        err = capsys.readouterr().err
        assert option in err and reason in err
    assert len(bench_calls) == 2  # nothing ran on a bad value


def test_weight_decay_reaches_the_bench_and_the_gpu_recipe_keeps_its_own(bench_calls, tmp_path, capsys):
    argv = ["bench", "train", "--data-dir", str(tmp_path)]
    assert main([*argv, "--weight-decay", "0.1"]) == 0
    assert main([*argv, "--weight-decay", "0"]) == 0  # 0 is a choice (no decay), not "not given"
    assert bench_calls == [{"weight_decay": 0.1}, {"weight_decay": 0.0}]
    assert inspect.signature(bench_run).parameters["weight_decay"].default == bench.BENCH_WEIGHT_DECAY == 0.2
    # the GPU recipe keeps the decay of the run that reached 0.961
    assert gpu_bench_options()["weight_decay"] == gpu_recipe().weight_decay == 0.05
    assert main([*argv, "--weight-decay", "-0.1"]) == 2
    assert "--weight-decay" in capsys.readouterr().err
    assert len(bench_calls) == 2  # nothing ran on a bad value
