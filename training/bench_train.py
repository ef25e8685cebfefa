"""Benchmark the default training recipe on real slices within a time budget.

    python -m training.bench_train --data-dir ../shared/data/brain-tumor-mri [--time-budget 1800]

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

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from neurovit.config import DEFAULT_STORE, OUTPUT_DIR
from neurovit.model import ModelConfig
from training import flow
from training.cli import run_main_job
from training.guide import DEFAULT_GUIDE_WEIGHT, DEFAULT_LESION_HIDDEN_WEIGHT, GUIDE_FILE
from training.train import TrainConfig, measure_step_ratio

CPU_BENCH_IMAGE_SIZE = 96
# A narrower conv stem than the model's default (32, 64, 128, 192): a step costs about 0.84 of it, so the
# budget fits more epochs, which is what 2 cores lack (equal-CPU-cost GPU runs: held-out 0.908 vs 0.894).
CPU_BENCH_STEM_CHANNELS = (24, 48, 96, 192)


def _channels(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--store", default=DEFAULT_STORE)
    parser.add_argument("--time-budget", type=float, default=1800.0, help="training seconds (default 30 min)")
    parser.add_argument("--epochs", type=int, default=100, help="at most; the time budget fits the rest")
    parser.add_argument("--image-size", type=int, default=CPU_BENCH_IMAGE_SIZE, help="model input side (px)")
    parser.add_argument(
        "--stem-channels",
        type=_channels,
        default=CPU_BENCH_STEM_CHANNELS,
        help="channels of the stem's stride-2 stages, comma-separated (their count sets the patch size)",
    )
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument(
        "--patience", type=int, default=TrainConfig.patience, help="early-stopping patience in epochs"
    )
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="training seed (a second run)")
    parser.add_argument(
        "--guide-dir",
        type=Path,
        help="masked slices (<class>/<id>.png + <id>.mask.png) whose guide half steers the rollout map "
        "towards the tumour during training (training.guide); the other half is left for eval-explain",
    )
    parser.add_argument(
        "--guide-weight", type=float, default=DEFAULT_GUIDE_WEIGHT, help="weight of the guidance loss"
    )
    parser.add_argument(
        "--lesion-hidden-weight",
        type=float,
        default=DEFAULT_LESION_HIDDEN_WEIGHT,
        help="weight of the counterfactual loss: a guide slice with its tumour hidden should lose its class",
    )
    args = parser.parse_args(argv)
    guide_dir = args.guide_dir
    if guide_dir is not None and not guide_dir.is_dir():
        print(f"no masked slices at {guide_dir}: training without guidance", flush=True)
        guide_dir = None

    run_dir = args.run_dir or OUTPUT_DIR / "runs" / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.patience,
        time_budget_s=args.time_budget,
        device=args.device,
        seed=args.seed,
        guide_weight=args.guide_weight if guide_dir is not None else 0.0,
        lesion_hidden_weight=args.lesion_hidden_weight if guide_dir is not None else 0.0,
        channels_last=True,
        model=ModelConfig(image_size=args.image_size, stem_channels=args.stem_channels),
    )
    preprocessing = config.preprocessing()  # what train_stage used: its cached arrays are reused

    job = run_main_job(
        args.data_dir,
        args.store,
        config,
        run_dir,
        guide_dir=guide_dir,
        val_fraction=0.1,
        given_val_as_test=True,
    )
    plan, result, metrics = job["plan"], job["train"], job["metrics"]
    print(f"leaking held-out images dropped: {plan.dropped}", flush=True)
    # Measured after training, on the arrays the run cached: same loader, same data, same machine.
    train_arrays = flow.split_arrays(args.data_dir, plan, "train", preprocessing, run_dir / "cache")
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
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "stem_channels": list(args.stem_channels),
        "data_fingerprint": plan.fingerprint[:12],
        "seed": args.seed,
        "guide_slices": 0
        if guide_dir is None
        else len(json.loads((run_dir / GUIDE_FILE).read_text())["slices"]),
        "guide_weight": config.guide_weight,
        "lesion_hidden_weight": config.lesion_hidden_weight,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
