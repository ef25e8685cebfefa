"""Train a NeuroViT on preloaded canonical images: seeded, resumable, early-stopped, within a time budget.

The recipe follows what small-data ViT work reports (see TRAINING-NOTES in the README): conv stem, AdamW
with warm-up then cosine decay, label smoothing, mild augmentation, an exponential moving average (EMA) of
the weights which is what gets validated and saved, class-balanced loss, gradient clipping.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from neurovit.base_model import checkpoint_image_size, load_base_model
from neurovit.data.layout import NO_TUMOUR_CLASS
from neurovit.errors import UsageError
from neurovit.explain import ROLLOUT_START_LAYER, rollout_relevance, served_start_layer
from neurovit.model import ModelConfig, ModelInfo, NeuroViTForImageClassification, build_model, save_model
from neurovit.preprocessing import PreprocessConfig, black_input, standardise
from neurovit.progress import progress_bar
from training.augment import AugmentConfig, augment_batch
from training.guide import (
    NO_EVIDENCE,
    UNIFORM_TARGET,
    GuideSet,
    counterfactual_slices,
    guide_loss,
    uniform_target_loss,
)
from training.precision import MixedPrecision
from training.saliency_guided import DEFAULT_MAX_FRACTION, consistency_loss, masked_copy
from training.teacher import distillation_loss, teacher_accuracy, train_teacher

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
BEST_DIR = "best"
BN_BATCHES = 16  # un-augmented training batches that re-estimate the EMA model's BatchNorm statistics


# The demo set is small and synthetic: 30 epochs train it in about 4 CPU minutes to 0.76 test accuracy,
# where the explanation maps find the lesions (12 epochs stopped near 0.6, where they did not).
# The head-median intensity window: in the demo's skull-stripped slices the lesion is the brightest thing,
# and a whole-image percentile window let it darken the slice (README, "Preprocessing").
DEMO_TRAINING = {
    "epochs": 30,
    "batch_size": 64,
    "patience": 10,
    "warmup_epochs": 1.0,
    "intensity_window": "foreground_median",
}


@dataclass
class TrainConfig:
    """Training recipe. Every field has a working default for 128 px brain slices on a 2-core CPU."""

    # None: as many as ``time_budget_s`` fits (the schedule is refitted to the budget after every epoch).
    epochs: int | None = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    ema_decay: float = 0.998
    grad_clip: float = 1.0
    patience: int = 8  # epochs without a better validation accuracy before stopping
    # Early stopping watches only from this fraction of the planned schedule on (Keras' start_from_epoch):
    # while the learning rate is high, validation accuracy plateaus and climbs again as the cosine decays
    # (real slices, 96 px, 48 planned epochs: best at 28, then 8 flat epochs stopped it at 0.890).
    # 0.9: the cosine's learning rate is then under 2.5 % of its peak.
    patience_start: float = 0.9
    # Which weights the run keeps: "best" (validation accuracy, early stopping) or "last" (the EMA weights at
    # the end of the schedule; validation is then only watched, so a calibration fitted on it is fitted on
    # slices nothing was selected on).
    keep: str = "best"
    # With keep="last" nothing is selected on validation, so it (and the EMA's BatchNorm re-estimate before
    # it) runs only every this many epochs and at the last: each pass costs about a tenth of a 96 px epoch
    # on the CPU, time the budget then spends on training steps. keep="best" validates every epoch.
    validate_every: int = 1
    # Weight of the tumour-mask guidance (``training.guide``) on the training slices that carry a mask; 0
    # (the default) trains exactly as before, masks or not.
    guide_weight: float = 0.0
    # A class name (the no-tumour class): the guide slices also join training with their tumour imputed
    # from the tissue around it, labelled as this class, and with a patch imputed elsewhere, label kept
    # (``training.guide.counterfactual_slices``), so that the answer has to rest on the tumour. "uniform"
    # (``training.guide.UNIFORM_TARGET``) trains the tumour-imputed slices towards no class at all rather
    # than towards one. None (the default) adds nothing.
    counterfactual_class: str | None = None
    # With ``counterfactual_class``: a second kind of pair beside the imputed one, the tumour's token cells
    # black (same target) and the same cells black elsewhere in the head (label kept). Black-cell deletion's
    # own probe, so only ROAD can say whether it made the maps faithful rather than the score easy
    # (docs/explainability.md). Off by default.
    black_counterfactuals: bool = False
    # Saliency-guided training (``training.saliency_guided``): each step also answers a copy of the batch
    # with the cells rollout ranks lowest blacked out, and adds this weight times the KL divergence from the
    # answer on the batch, so that what the map ranks low stops moving the answer. 0 (the default) trains
    # exactly as before; above 0 a step costs a second forward and backward.
    saliency_guided_weight: float = 0.0
    saliency_guided_max_fraction: float = DEFAULT_MAX_FRACTION  # of the cells, drawn uniformly up to this
    # Knowledge distillation (training.teacher): this share of ``time_budget_s`` first trains a small CNN
    # teacher, whose top class then joins the labels with weight ``distill_weight`` (DeiT's hard
    # distillation). 0 (the default) trains without a teacher.
    teacher_fraction: float = 0.0
    distill_weight: float = 0.5
    time_budget_s: float | None = None  # wall-clock budget for the epochs; the schedule is fitted to it
    class_balanced: bool = True
    # CPU only: train in channels_last memory layout (see ``place_for_training``). Off by default so that
    # `make demo` keeps training, bit for bit, the model its explanation figures were measured on;
    # `bench-train` turns it on for the epochs.
    channels_last: bool = False
    # Run the training forward through torch.compile (``compiled_forward``): the forward and backward of a
    # 96 px bf16 bench step then cost 0.57 of eager on 2 CPU cores, a whole epoch about 0.75, after up to
    # ~100 s of compiling in the first epoch.
    # Off by default: `make demo` and the tests train for a few minutes, which the compile would dominate.
    compile: bool = False
    # AdamW's fused kernel and one foreach EMA update over all tensors at once (``ema_for``): the same
    # maths with other rounding, 10 ms of a 96 px bench step instead of 31 (2 CPU cores; about 9 % of a
    # compiled step). Off by default so that `make demo` keeps training bit for bit; `bench-train` turns it
    # on.
    fused_updates: bool = False
    # The intensity window of the model's PreprocessConfig (neurovit.preprocessing.INTENSITY_WINDOWS). The
    # demo picks "foreground_median": its skull-stripped slices have the lesion as their brightest structure.
    intensity_window: str = "percentile"
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present
    # Mixed precision (training.precision.AMP_CHOICES): "auto" is bf16 on a GPU that has it, fp16 with loss
    # scaling on an older one, fp32 on the CPU (so `make demo` trains bit for bit as measured). On a CPU
    # with native bf16 (AVX512-BF16 or AMX) a 96 px bf16 step costs about 0.55 of fp32 (2 cores); elsewhere
    # it is slower, so `bench-train` asks for "bf16" only where ``cpu_has_native_bf16``.
    amp: str = "auto"
    # A pretrained HF ViT to fine-tune (a save_pretrained folder, or a hub id where the hub is reachable;
    # neurovit.base_model): its architecture and image size replace ``model``'s. None trains from scratch.
    base_model: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.epochs is None and not self.time_budget_s:
            raise ValueError("epochs=None plans the epochs from the time budget: give time_budget_s")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")
        if self.validate_every < 1 or (self.keep == "best" and self.validate_every != 1):
            raise ValueError(
                f"validate_every must be 1 with keep='best' (validation selects the weights) and at least 1 "
                f"with keep='last', got {self.validate_every}"
            )
        if not 0.0 <= self.teacher_fraction < 0.8:
            raise ValueError(f"teacher_fraction must be in [0, 0.8), got {self.teacher_fraction}")
        if self.teacher_fraction and not self.time_budget_s:
            raise ValueError("teacher_fraction is a share of the time budget: give time_budget_s")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.saliency_guided_weight < 0 or not 0.0 < self.saliency_guided_max_fraction <= 1.0:
            raise ValueError(
                f"saliency_guided_weight must be >= 0 and saliency_guided_max_fraction in (0, 1], got "
                f"{self.saliency_guided_weight} and {self.saliency_guided_max_fraction}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def input_size(self) -> int:
        """The model's input side: the base model's own, else ``model.image_size``."""
        return checkpoint_image_size(self.base_model) if self.base_model else self.model.image_size

    def preprocessing(self) -> PreprocessConfig:
        """The transform a model trained with this recipe is saved with and its arrays are cached by."""
        return PreprocessConfig(image_size=self.input_size(), intensity_window=self.intensity_window)

    @classmethod
    def from_dict(cls, payload: dict) -> TrainConfig:
        payload = dict(payload)
        model = dict(payload.pop("model", {}))
        if "stem_channels" in model:
            model["stem_channels"] = tuple(model["stem_channels"])
        augment = dict(payload.pop("augment", {}))
        if "scale_range" in augment:
            augment["scale_range"] = tuple(augment["scale_range"])
        return cls(**payload, model=ModelConfig(**model), augment=AugmentConfig(**augment))


@dataclass
class TrainResult:
    best_dir: Path
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    train_seconds: float
    images_per_second: float
    history: list[dict]
    epochs_planned: int | None = None  # the schedule's final length (its budget refit included)
    teacher: dict | None = None  # the distillation teacher's epochs, seconds, val_accuracy (None: no teacher)
    compiled: bool = False  # whether the training forward ran under torch.compile


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16, AMX): only then is bf16 faster."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def tumour_free_slices(labels: np.ndarray, masks: np.ndarray | None, class_names: list[str]) -> np.ndarray:
    """Per training image, whether it holds no tumour that its mask does not mark: a no-tumour slice, a
    slice trained towards no class (its tumour imputed), or one whose mask marks its tumour."""
    free = labels == NO_EVIDENCE
    if NO_TUMOUR_CLASS in class_names:
        free = free | (labels == class_names.index(NO_TUMOUR_CLASS))
    if masks is not None:
        free = free | (masks.reshape(len(masks), -1).max(axis=1) > 0)
    return free


class BatchLoader:
    """Shuffled, augmented, standardised batches drawn from a uint8 image tensor held in memory."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        preprocessing: PreprocessConfig,
        device: torch.device,
        augment: AugmentConfig | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        masks: np.ndarray | torch.Tensor | None = None,
        cell: int = 16,
        tumour_free: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        self.images = torch.as_tensor(images).to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        # (N, H, W) uint8 masks (all zero for a slice without one): batches then carry them, augmented with
        # their images, as a third item.
        self.masks = None if masks is None else torch.as_tensor(masks).to(device)
        self.batch_size = batch_size
        self.preprocessing = preprocessing
        self.device = device
        self.augment = augment
        self.cell = cell  # the model's token cell in pixels: augmentation erases whole cells
        # per image, whether it holds no tumour its mask does not mark (``tumour_free_slices``)
        self.tumour_free = None if tumour_free is None else torch.as_tensor(tumour_free).to(device)
        self.shuffle = shuffle
        # drop_last keeps every training batch the same shape (steady speed, sane BatchNorm statistics)
        self.drop_last = drop_last and len(self.labels) > batch_size

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.labels)
        generator = generator or torch.default_generator
        order = None
        if self.shuffle:
            # randperm must run where its generator lives (a CUDA generator cannot draw on the CPU)
            order = torch.randperm(n, generator=generator, device=generator.device).to(self.device)
        for b in range(len(self)):
            index = slice(b * self.batch_size, (b + 1) * self.batch_size)
            picked = order[index] if order is not None else torch.arange(n, device=self.device)[index]
            images = self.images[picked].unsqueeze(1).float().div_(255.0)
            free = None if self.tumour_free is None else self.tumour_free[picked]
            if self.masks is None:
                if self.augment is not None:
                    images = augment_batch(images, self.augment, generator, cell=self.cell, tumour_free=free)
                yield standardise(images, self.preprocessing), self.labels[picked]
                continue
            masks = self.masks[picked].unsqueeze(1).float().div_(255.0)
            if self.augment is not None:
                images, masks = augment_batch(
                    images, self.augment, generator, masks, cell=self.cell, tumour_free=free
                )
            yield standardise(images, self.preprocessing), self.labels[picked], masks


def initial_model(
    config: TrainConfig, class_names: list[str], preprocessing: PreprocessConfig
) -> tuple[NeuroViTForImageClassification, dict]:
    """The model training starts from, and what ``neurovit.json`` records of where it came from: a fresh
    ``config.model``, or the pretrained ``config.base_model`` with a head for ``class_names``."""
    if config.base_model is None:
        return build_model(config.model, class_names), {}
    start = load_base_model(config.base_model, class_names, preprocessing)
    return start.model, {"base_model": start.facts}


def place_for_training(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """Move ``model`` to ``device``; on the CPU, with ``channels_last``, also to that memory layout, oneDNN's
    preferred one for convolutions: a training step of the conv stem runs about 11 % faster (measured on 2
    cores, 96 px, batch 64). The weights' values are the same; the float rounding of the convolutions is
    not, so a run trains to a different model than in the default layout. GPUs keep the default layout
    (not measured there)."""
    model = model.to(device)
    if channels_last and device.type == "cpu":
        return model.to(memory_format=torch.channels_last)
    return model


def compiled_forward(model: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, bool]:
    """``model`` under ``torch.compile`` (the default Inductor backend), sharing its parameters, so the
    optimiser, the EMA and the checkpoints keep using ``model``; and whether it is compiled. On the CPU
    Inductor builds C++ kernels: without a C++ compiler the model is returned as it is, with a warning."""
    if device.type == "cpu" and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        log.warning("no C++ compiler (g++, clang++ or $CXX) for torch.compile on the CPU: training eagerly")
        return model, False
    return torch.compile(model), True


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases, position embeddings and the CLS token (standard for ViTs)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim <= 1 or "position_embeddings" in name or "cls_token" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _ema_with_warmup(decay: float):
    """EMA update whose decay ramps up as (1 + n) / (10 + n): early averages must not drag in the random
    initial weights, which a fixed decay would do for the first ~1/(1 - decay) steps of a short run."""

    def update(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        effective = min(decay, (1.0 + n) / (10.0 + n))
        return averaged * effective + current * (1.0 - effective)

    return update


def _ema_foreach_with_warmup(decay: float):
    """``_ema_with_warmup``'s update over all tensors of one device and dtype at once (torch's own
    foreach EMA at this step's decay) instead of one tensor at a time."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1.0 + n) / (10.0 + n)))(averaged, current, num_averaged)

    return update


def ema_for(model: torch.nn.Module, decay: float, foreach: bool = False) -> AveragedModel:
    """The EMA copy of ``model`` (buffers included) whose decay warms up; ``foreach`` updates every tensor
    in one call per device and dtype, the per-tensor loop costing more than the optimiser step on a CPU."""
    if foreach:
        return AveragedModel(model, multi_avg_fn=_ema_foreach_with_warmup(decay), use_buffers=True)
    return AveragedModel(model, avg_fn=_ema_with_warmup(decay), use_buffers=True)


class WarmupCosine:
    """Linear warm-up then cosine decay to zero; the total can shrink once the epoch time is known."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps = max(1, warmup_steps)
        self.plan(total_steps)

    def plan(self, total_steps: int) -> None:
        """Decay to zero over ``total_steps`` (at least one step past the warm-up)."""
        self.total_steps = max(total_steps, self.warmup_steps + 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, loader: BatchLoader, progress: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every image of an unshuffled, un-augmented loader.

    ``progress``: the label of a per-batch bar (drawn on a terminal only, ``neurovit.progress``); None
    draws none (validation inside a training epoch).
    """
    model.eval()
    logits, labels = [], []
    batches = progress_bar(
        loader.batches(), enabled=progress is not None, total=len(loader), desc=progress, leave=False
    )
    for images, targets in batches:
        logits.append(model(images).logits.float().cpu())
        labels.append(targets.cpu())
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def epoch_line(record: dict) -> str:
    """The one line a training epoch writes: epoch, loss, accuracy, validation accuracy and seconds."""
    val = "-" if record["val_accuracy"] is None else f"{record['val_accuracy']:.3f}"
    return (
        f"epoch {record['epoch']}: loss {record['train_loss']:.3f} train acc {record['train_accuracy']:.3f}"
        f" val acc {val} ({record['seconds']:.0f}s)"
    )


def _refit_to_budget(config: TrainConfig, state: dict, epoch: int, progress: bool) -> None:
    """Set ``state["planned_epochs"]`` to the epochs that fit the budget at the mean epoch time so far."""
    per_epoch = state["wall_seconds"] / epoch
    remaining = config.time_budget_s - state.get("teacher_seconds", 0.0) - state["wall_seconds"]
    affordable = epoch + max(0, int(remaining // per_epoch))
    if config.epochs is not None:
        affordable = min(config.epochs, affordable)
    if abs(affordable - state.get("announced_epochs", -10)) >= 5:
        # The plan is printed after the first epoch and whenever it has moved by 5 or more since.
        message = (
            f"time budget {config.time_budget_s:.0f} s at {per_epoch:.1f} s per epoch "
            f"(validation included): {affordable} epochs planned"
            + (f" (capped at {config.epochs})" if config.epochs is not None else "")
        )
        log.info(message)
        if progress:
            print(message, flush=True)
        state["announced_epochs"] = affordable
    state["planned_epochs"] = affordable


def _save_atomically(state: dict, path: Path) -> None:
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _save_best(model: NeuroViTForImageClassification, run_dir: Path, preprocessing, info: ModelInfo) -> Path:
    """Replace run_dir/best by a complete new copy: never a half-written best model."""
    staging = run_dir / (BEST_DIR + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    save_model(model, staging, preprocessing, info)
    best = run_dir / BEST_DIR
    old = run_dir / (BEST_DIR + ".old")
    if best.exists():
        os.replace(best, old)
    os.replace(staging, best)
    shutil.rmtree(old, ignore_errors=True)
    return best


def with_guide_slices(
    train_data: tuple[np.ndarray, np.ndarray],
    guide: GuideSet | None,
    config: TrainConfig,
    class_names: list[str],
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray | None]:
    """The training images and labels with the guide slices added (and, with ``counterfactual_class``, the
    same slices with their tumour imputed, labelled as that class or ``NO_EVIDENCE``, and their pairs with a
    patch imputed elsewhere, label kept: ``training.guide.counterfactual_slices``; with
    ``black_counterfactuals`` the black-cell pairs after those), and per image its mask
    (uint8, all zero where there is none), or None without a guide."""
    if guide is None:
        return train_data, None
    images = [train_data[0], guide.images]
    labels = [train_data[1], guide.labels.astype(train_data[1].dtype)]
    masks = [np.zeros_like(train_data[0]), guide.masks]
    if config.black_counterfactuals and config.counterfactual_class is None:
        raise UsageError("black_counterfactuals needs a counterfactual_class (the black tumour's target)")
    if config.counterfactual_class is not None:
        targets = [*class_names, UNIFORM_TARGET]
        if config.counterfactual_class not in targets:  # a usage error: exit status 2, not a crash
            raise UsageError(f"counterfactual_class {config.counterfactual_class!r} is not one of {targets}")
        uniform = config.counterfactual_class == UNIFORM_TARGET
        label = NO_EVIDENCE if uniform else class_names.index(config.counterfactual_class)
        kinds = [counterfactual_slices(guide, config.seed)]
        if config.black_counterfactuals:
            kinds.append(counterfactual_slices(guide, config.seed, black_cells=config.model.patch_size))
        for pairs in kinds:
            images += [pairs.without_tumour, pairs.with_control]
            labels += [
                np.full(len(pairs.without_tumour), label, train_data[1].dtype),
                guide.labels[pairs.controlled].astype(train_data[1].dtype),
            ]
            # no tumour left to guide the map towards; the pair keeps its tumour, and its mask
            masks += [np.zeros_like(pairs.without_tumour), guide.masks[pairs.controlled]]
    return (np.concatenate(images), np.concatenate(labels)), np.concatenate(masks)


def labelled_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    distill_weight: float,
    class_weights: torch.Tensor | None,
    label_smoothing: float,
) -> torch.Tensor:
    """``distillation_loss`` on the rows with a class, the uniform target on the ``NO_EVIDENCE`` rows
    (tumour-imputed counterfactual slices), each row weighing the same in the mean."""
    evidence = targets != NO_EVIDENCE
    if bool(evidence.all()):
        return distillation_loss(
            logits, targets, teacher_logits, distill_weight, class_weights, label_smoothing
        )
    total = uniform_target_loss(logits[~evidence]).sum()
    if bool(evidence.any()):
        taught = teacher_logits[evidence] if teacher_logits is not None else None
        answered = distillation_loss(
            logits[evidence], targets[evidence], taught, distill_weight, class_weights, label_smoothing
        )
        total = total + evidence.sum() * answered
    return total / len(targets)


def train(
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    class_names: list[str],
    preprocessing: PreprocessConfig,
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    guide: GuideSet | None = None,
) -> TrainResult:
    """Train and keep the EMA weights with the best validation accuracy in ``run_dir/best``.

    ``guide`` (masked slices, ``training.guide``) joins the training images; with ``config.guide_weight``
    above 0 their masks guide the rollout map (``guide_loss``); with ``config.counterfactual_class`` they
    also join with their tumour imputed, labelled as that class.

    With ``resume`` and a checkpoint in ``run_dir`` from the same config, training continues where it
    stopped (model, optimiser, EMA, schedule, RNG and early-stopping state are all restored).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.input_size() != preprocessing.image_size:
        raise ValueError(
            f"model image_size {config.input_size()} != preprocessing {preprocessing.image_size}"
        )
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    start, origin = initial_model(config, class_names, preprocessing)
    model = place_for_training(start, device, config.channels_last)
    forward, compiled = compiled_forward(model, device) if config.compile else (model, False)
    ema = ema_for(model, config.ema_decay, config.fused_updates)
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay),
        lr=config.learning_rate,
        **({"fused": True} if config.fused_updates else {}),
    )
    train_data, masks = with_guide_slices(train_data, guide, config, class_names)
    guided = masks is not None and config.guide_weight > 0
    saliency_guided = config.saliency_guided_weight > 0
    black = black_input(preprocessing)  # the fill of the cells saliency-guided training blacks out
    train_loader = BatchLoader(
        *train_data,
        config.batch_size,
        preprocessing,
        device,
        config.augment,
        masks=masks,
        cell=config.model.patch_size,
        tumour_free=tumour_free_slices(train_data[1], masks, class_names),
    )
    val_loader = BatchLoader(*val_data, 256, preprocessing, device, shuffle=False, drop_last=False)
    # Un-augmented training images for the EMA model's BatchNorm statistics (see below); it reuses the
    # training loader's tensors, so a GPU holds the training set once.
    bn_loader = BatchLoader(
        train_loader.images, train_loader.labels, config.batch_size, preprocessing, device, shuffle=True
    )
    steps_per_epoch = len(train_loader)
    # Without an epoch count the first plan is provisional: epoch 1 is warm-up, after which the budget refit
    # below knows the epoch time.
    planned_epochs = config.epochs or 10_000
    schedule = WarmupCosine(round(config.warmup_epochs * steps_per_epoch), planned_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    labelled = train_data[1][train_data[1] != NO_EVIDENCE]
    counts = np.bincount(labelled, minlength=len(class_names)).astype(np.float64)
    if (counts == 0).any():
        missing = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
        raise ValueError(f"classes without training images: {missing}")
    weights = counts.sum() / (len(counts) * counts) if config.class_balanced else np.ones_like(counts)
    class_weights = torch.tensor(weights, dtype=torch.float32, device=device)

    state = {
        "epoch": 0,
        "best_accuracy": -1.0,
        "best_epoch": 0,
        "history": [],
        "train_seconds": 0.0,
        "images_seen": 0,
        "planned_epochs": planned_epochs,
    }
    checkpoint = run_dir / CHECKPOINT_FILE
    config_key = json.dumps(config.to_dict(), sort_keys=True, default=str)
    if resume and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        if saved["config"] == config_key:
            model.load_state_dict(saved["model"])
            ema.load_state_dict(saved["ema"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            generator.set_state(saved["generator"].to(generator.get_state().device))
            state = saved["state"]
            schedule.plan(state["planned_epochs"] * steps_per_epoch)
            log.info("resumed from epoch %d", state["epoch"])
        else:
            log.warning("checkpoint in %s is from another config: starting afresh", run_dir)

    teacher, teacher_facts = None, None
    if config.teacher_fraction > 0:
        seconds = config.teacher_fraction * config.time_budget_s
        teacher, teacher_facts = train_teacher(
            train_loader,
            len(class_names),
            seconds,
            run_dir,
            device,
            config.amp,
            config.seed,
            channels_last=config.channels_last,
        )
        teacher_facts["val_accuracy"] = round(teacher_accuracy(teacher, val_loader), 4)
        # The budget's refit below leaves the teacher's share out of what the ViT's epochs may use.
        state.setdefault("teacher_seconds", teacher_facts["seconds"])
        message = f"teacher CNN: {json.dumps(teacher_facts)}"
        log.info(message)
        if progress:
            print(message, flush=True)
    origin = {**origin, **({"teacher": teacher_facts} if teacher_facts else {})}
    info = ModelInfo(class_names=list(class_names), extra={"train_config": config.to_dict(), **origin})
    precision = MixedPrecision(config.amp, device)
    while state["epoch"] < state["planned_epochs"]:
        epoch = state["epoch"] + 1
        model.train()
        started = time.perf_counter()
        loss_sum, correct, seen, with_class = 0.0, 0, 0, 0
        # A bar per batch on a terminal only; a log (kfp, CI, a file) gets the one line per epoch below.
        bar = progress_bar(
            train_loader.batches(generator),
            enabled=progress,
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{state['planned_epochs']}",
            mininterval=2.0,
            leave=False,
        )
        for images, targets, *batch_masks in bar:
            with precision.autocast():
                outputs = forward(images, output_attentions=guided or saliency_guided)
            logits = outputs.logits
            teacher_logits = None
            if teacher is not None:
                with torch.no_grad(), precision.autocast():
                    teacher_logits = teacher(images).float()
            loss = labelled_loss(
                logits.float(),
                targets,
                teacher_logits,
                config.distill_weight if teacher is not None else 0.0,
                class_weights,
                config.label_smoothing,
            )
            if guided:
                with_mask = batch_masks[0].flatten(1).amax(dim=1) > 0
                if with_mask.any():
                    attentions = [attention[with_mask].float() for attention in outputs.attentions]
                    start = ROLLOUT_START_LAYER
                    loss = loss + config.guide_weight * guide_loss(
                        attentions, batch_masks[0][with_mask], start
                    )
            if saliency_guided:
                with torch.no_grad():
                    attentions = [attention.detach().float() for attention in outputs.attentions]
                    start = served_start_layer(ROLLOUT_START_LAYER, len(attentions))
                    relevance = rollout_relevance(attentions, start)
                masked = masked_copy(
                    images,
                    relevance,
                    config.model.patch_size,
                    black,
                    config.saliency_guided_max_fraction,
                    generator,
                )
                with precision.autocast():
                    masked_logits = forward(masked).logits
                loss = loss + config.saliency_guided_weight * consistency_loss(masked_logits, logits)
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)
            precision.unscale(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            precision.step(optimizer)
            scheduler.step()
            ema.update_parameters(model)
            loss_sum += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
            with_class += int((targets != NO_EVIDENCE).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / max(with_class, 1):.3f}")
        epoch_seconds = time.perf_counter() - started
        state["train_seconds"] += epoch_seconds
        state["images_seen"] += seen
        state["wall_seconds"] = state.get("wall_seconds", 0.0) + epoch_seconds
        if config.time_budget_s:
            # Refit the schedule to the budget after every epoch (earlier epochs' validations included; this
            # one's is not yet run, as whether it runs depends on the plan): the cosine decay must reach its
            # end inside the budget even when the machine gets slower or faster mid-run.
            _refit_to_budget(config, state, epoch, progress)
            schedule.plan(state["planned_epochs"] * steps_per_epoch)
        last_epoch = epoch >= state["planned_epochs"]

        val_accuracy = None
        if last_epoch or epoch % config.validate_every == 0:
            validation_started = time.perf_counter()
            # The EMA weights need BatchNorm statistics of their own: averaging the live model's running
            # statistics lags the weights, and early in a short run the eval-mode model then answers one
            # class for every image while training accuracy climbs ("precise BN", Wu & Johnson 2021).
            # Its own seeded generator: the training stream stays as it was (and resumes identically).
            bn_batches = bn_loader.batches(torch.Generator().manual_seed(config.seed * 100_003 + epoch))
            update_bn(itertools.islice(bn_batches, BN_BATCHES), ema.module)
            val_logits, val_labels = predict_logits(ema.module, val_loader)
            val_accuracy = float((val_logits.argmax(1) == val_labels).mean())
            state["wall_seconds"] += time.perf_counter() - validation_started
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / max(with_class, 1),
            "val_accuracy": val_accuracy,
            "lr": scheduler.get_last_lr()[0],
            "seconds": epoch_seconds,
        }
        state["history"].append(record)
        log.info("epoch %d: %s", epoch, json.dumps(record))
        if progress:
            print(epoch_line(record), flush=True)
        if config.keep == "best" and val_accuracy > state["best_accuracy"]:
            state["best_accuracy"], state["best_epoch"] = val_accuracy, epoch
            _save_best(ema.module, run_dir, preprocessing, info)

        if config.keep == "last" and last_epoch:
            # Saved before the checkpoint that says the schedule is done: a run killed in between resumes
            # into an empty loop, and must find its weights already there.
            state["best_accuracy"], state["best_epoch"] = val_accuracy, epoch
            _save_best(ema.module, run_dir, preprocessing, info)
        state["epoch"] = epoch
        _save_atomically(
            {
                "config": config_key,
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "state": state,
            },
            checkpoint,
        )
        watched_from = max(state["best_epoch"], math.ceil(config.patience_start * state["planned_epochs"]))
        if config.keep == "best" and epoch - watched_from >= config.patience:
            log.info("early stop: no better validation accuracy for %d epochs", config.patience)
            break

    (run_dir / "history.json").write_text(json.dumps(state["history"], indent=2) + "\n")
    return TrainResult(
        best_dir=run_dir / BEST_DIR,
        best_val_accuracy=state["best_accuracy"],
        best_epoch=state["best_epoch"],
        epochs_run=state["epoch"],
        train_seconds=state["train_seconds"],
        images_per_second=state["images_seen"] / max(state["train_seconds"], 1e-9),
        history=state["history"],
        epochs_planned=state["planned_epochs"],
        teacher=teacher_facts,
        compiled=compiled,
    )


def measure_step_ratio(
    train_data: tuple[np.ndarray, np.ndarray],
    class_names: list[str],
    preprocessing: PreprocessConfig,
    config: TrainConfig,
    steps: int = 8,
) -> dict:
    """Time one training step through the real loader against the same step on a preloaded batch.

    Both include forward, backward and the optimiser step; the ratio is the loader's overhead (batch
    gathering, augmentation, standardisation). Measured on a throwaway copy of a fresh model.
    """
    device = pick_device(config.device)
    start, _ = initial_model(config, class_names, preprocessing)
    model = place_for_training(start, device, config.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = BatchLoader(
        *train_data,
        config.batch_size,
        preprocessing,
        device,
        config.augment,
        tumour_free=tumour_free_slices(train_data[1], None, class_names),
    )
    generator = torch.Generator(device=device).manual_seed(config.seed)
    preloaded, preloaded_targets = next(loader.batches(generator))
    preloaded, preloaded_targets = preloaded.clone(), preloaded_targets.clone()

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        loss = F.cross_entropy(model(images).logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    batches = loader.batches(generator)
    loader_times, bare_times = [], []
    for i in range(steps + 2):  # interleave the two so machine noise hits both alike; 2 warm-up rounds
        sync()
        t0 = time.perf_counter()
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = loader.batches(generator)
            images, targets = next(batches)
        step(images, targets)
        sync()
        t1 = time.perf_counter()
        step(preloaded, preloaded_targets)
        sync()
        t2 = time.perf_counter()
        if i >= 2:
            loader_times.append(t1 - t0)
            bare_times.append(t2 - t1)
    loader_step, bare_step = float(np.median(loader_times)), float(np.median(bare_times))
    return {"loader_step_s": loader_step, "bare_step_s": bare_step, "step_ratio": loader_step / bare_step}


__all__ = [
    "BatchLoader",
    "TrainConfig",
    "TrainResult",
    "epoch_line",
    "initial_model",
    "measure_step_ratio",
    "predict_logits",
    "train",
    "tumour_free_slices",
    "with_guide_slices",
]
