"""Named training recipes: the GPU recipe, and fine-tuning's learning rate (TrainConfig has the defaults).

The GPU recipe (`neurovit bench train --recipe gpu`, the kfp pipeline's train task) is the run that reached
held-out 0.961 on one H200 (docs/benchmarks.md: 128 px, the wide 32-64-128-192 stem and its 8x8 maps,
batches of 64, bf16, 229 epochs in 329 s): a GPU step is launch-bound, so what a GPU buys is epochs, not a
smaller model. Its epochs are fixed rather than fitted to a time budget, and early stopping is kept out of
the way (patience = epochs), as in that run. Mixed precision is "auto": bf16 where the GPU has it, fp16 with
loss scaling on older ones (``training.precision``).

Fine-tuning a pretrained ViT (``--base-model``) starts from weights that already see; the from-scratch
learning rate (1e-3) would wipe them out in the first epochs, so it gets the usual fine-tuning one unless a
learning rate is given.
"""

from __future__ import annotations

from neurovit.errors import UsageError
from neurovit.model import ModelConfig
from training.train import TrainConfig

RECIPES = ("cpu", "gpu")
GPU_EPOCHS = 230
GPU_IMAGE_SIZE = 128
GPU_STEM_CHANNELS = (32, 64, 128, 192)
GPU_BATCH_SIZE = 64
# AdamW fine-tuning rates for ViTs sit between 1e-5 and 1e-4 (DeiT's 5e-4 x batch / 512 at batch 64 is
# 6e-5); 1e-4 with the warm-up, for a small head-replaced model. Not measured here: no hub is reachable.
FINE_TUNING_LEARNING_RATE = 1e-4


def gpu_recipe(**overrides) -> TrainConfig:
    """The GPU recipe as a TrainConfig; ``overrides`` replace its fields (``model`` included)."""
    values = {
        "epochs": GPU_EPOCHS,
        "batch_size": GPU_BATCH_SIZE,
        "patience": GPU_EPOCHS,
        "amp": "auto",
        "model": ModelConfig(image_size=GPU_IMAGE_SIZE, stem_channels=GPU_STEM_CHANNELS),
    }
    return TrainConfig(**{**values, **overrides})


def gpu_bench_options() -> dict:
    """The GPU recipe in ``training.benchmarks.recipe.run``'s parameters (no time budget: fixed epochs)."""
    recipe = gpu_recipe()
    return {
        "epochs": recipe.epochs,
        "patience": recipe.patience,
        "batch_size": recipe.batch_size,
        "image_size": recipe.model.image_size,
        "stem_channels": recipe.model.stem_channels,
        "time_budget": None,
        "amp": recipe.amp,
        "weight_decay": recipe.weight_decay,  # the 0.961 run's; the CPU bench's own is larger
    }


def learning_rate_for(base_model: str | None, given: float | None = None) -> float:
    """The learning rate to train with: ``given``, else fine-tuning's for a base model, else TrainConfig's."""
    if given is not None:
        return given
    return FINE_TUNING_LEARNING_RATE if base_model else TrainConfig.learning_rate


def require_cuda(what: str) -> None:
    """Refuse ``what`` on a machine without a CUDA device, before any data is read."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            f"{what} is sized for a GPU and this machine has no CUDA device (torch.cuda.is_available() is "
            "False): run it on a GPU node, or leave it out for the 30-minute CPU recipe"
        )


__all__ = [
    "FINE_TUNING_LEARNING_RATE",
    "GPU_EPOCHS",
    "RECIPES",
    "gpu_bench_options",
    "gpu_recipe",
    "learning_rate_for",
    "require_cuda",
]
