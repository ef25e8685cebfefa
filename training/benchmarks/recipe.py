"""Benchmark the default training recipe on real slices within a time budget.

    neurovit bench train --data-dir ../shared/data/brain-tumor-mri [--time-budget 1800]

The data folder's own validation split is held out as the test set (never trained on, never used to pick
a checkpoint); a val split for selection and calibration is carved out of train, leak-free. The last line
printed is one JSON object: version, val_accuracy (on the held-out folder), train_seconds,
images_per_second and step_ratio (a training step through the real loader / the bare step on a
preloaded batch, measured in the same run).

The CPU recipe buys epochs, because in 30 CPU minutes the model underfits: 96 px (a step costs half a
128 px one, at the price of 6x6 explanation maps instead of 8x8) and a narrower stem (0.84 of a step);
with channels_last on the CPU (see ``place_for_training``) 55 epochs fit, held-out 0.908 (0.882 with 39
epochs of the wider stem). With a GPU, `--image-size 128 --stem-channels 32,64,128,192 --epochs 250`
reached 0.96.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from neurovit.config import DEFAULT_STORE, OUTPUT_DIR
from neurovit.model import ModelConfig
from training import stages
from training.guide import DEFAULT_GUIDE_WEIGHT, GUIDE_FILE
from training.stages import run_main_job
from training.train import TrainConfig, measure_step_ratio

CPU_BENCH_IMAGE_SIZE = 96
# A narrower conv stem than the model's default (32, 64, 128, 192): a step costs about 0.84 of it, so the
# budget fits more epochs, which is what 2 cores lack (equal-CPU-cost GPU runs: held-out 0.908 vs 0.894).
CPU_BENCH_STEM_CHANNELS = (24, 48, 96, 192)


def run(
    data_dir: Path,
    store: str = DEFAULT_STORE,
    time_budget: float = 1800.0,
    epochs: int = 100,
    image_size: int = CPU_BENCH_IMAGE_SIZE,
    stem_channels: tuple[int, ...] = CPU_BENCH_STEM_CHANNELS,
    batch_size: int = TrainConfig.batch_size,
    patience: int = TrainConfig.patience,
    run_dir: Path | None = None,
    device: str = "auto",
    seed: int = TrainConfig.seed,
    guide_dir: Path | None = None,
    guide_weight: float = DEFAULT_GUIDE_WEIGHT,
    amp: str = TrainConfig.amp,
    base_model: str | None = None,
    learning_rate: float = TrainConfig.learning_rate,
) -> dict:
    """The benchmark (module docstring); returns the summary it prints as its last JSON line."""
    if guide_dir is not None and not guide_dir.is_dir():
        print(f"no masked slices at {guide_dir}: training without guidance", flush=True)
        guide_dir = None

    run_dir = run_dir or OUTPUT_DIR / "runs" / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        time_budget_s=time_budget,
        device=device,
        seed=seed,
        guide_weight=guide_weight if guide_dir is not None else 0.0,
        channels_last=True,
        model=ModelConfig(image_size=image_size, stem_channels=stem_channels),
        amp=amp,
        base_model=base_model,
        learning_rate=learning_rate,
    )
    preprocessing = config.preprocessing()  # what train_stage used: its cached arrays are reused

    job = run_main_job(
        data_dir,
        store,
        config,
        run_dir,
        guide_dir=guide_dir,
        val_fraction=0.1,
        given_val_as_test=True,
    )
    plan, result, metrics = job["plan"], job["train"], job["metrics"]
    print(f"leaking held-out images dropped: {plan.dropped}", flush=True)
    # Measured after training, on the arrays the run cached: same loader, same data, same machine.
    train_arrays = stages.split_arrays(data_dir, plan, "train", preprocessing, run_dir / "cache")
    ratio = measure_step_ratio(train_arrays, plan.classes, preprocessing, config)
    print(f"step ratio: {json.dumps(ratio)}", flush=True)
    summary = {
        "version": job["version"],
        "val_accuracy": round(metrics["accuracy"], 4),
        "val_macro_f1": round(metrics["macro_f1"], 4),
        "val_ece": round(metrics["ece"], 4),
        "held_out_images": metrics["n"],
        "selection_val_accuracy": round(result.best_val_accuracy, 4),
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.train_seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
        "step_ratio": round(ratio["step_ratio"], 3),
        "leaks_in_data": job["report"]["leaks"]["groups"],
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "image_size": preprocessing.image_size,
        "batch_size": batch_size,
        "amp": amp,
        "base_model": base_model,
        "learning_rate": learning_rate,
        "stem_channels": list(stem_channels),
        "data_fingerprint": plan.fingerprint[:12],
        "seed": seed,
        "guide_slices": 0
        if guide_dir is None
        else len(json.loads((run_dir / GUIDE_FILE).read_text())["slices"]),
        "guide_weight": config.guide_weight,
    }
    print(json.dumps(summary), flush=True)
    return summary
