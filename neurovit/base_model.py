"""A pretrained ViT to fine-tune (``--base-model``): a HF checkpoint instead of training from scratch.

A checkpoint is a folder written by ``save_pretrained`` (``config.json`` + weights, optionally the image
processor's ``preprocessor_config.json``) or, where the model hub is reachable, a hub id resolved to such a
folder in the HF cache. Only ``model_type: vit`` checkpoints load: ``ViTForImageClassification`` and DeiT's
undistilled ones, which the hub stores as ViTs; a distilled DeiT adds a second class token the
explanation maps have no place for.

The checkpoint keeps its own width, depth, patch size and image size (the preprocessing canonicalises to that
size and is saved with the weights as for any NeuroViT); its head is replaced by a fresh one for our classes
(``ignore_mismatched_sizes``). An RGB checkpoint reads the grey slice repeated in its three channels, each
normalised with its image processor's per-channel mean and std (NeuroViT's own when it has no
``preprocessor_config.json``). That input is an affine function of our one standardised grey channel, so it
is folded into the patch projection exactly (``fold_grey_input``): the model that trains is a one-channel
NeuroViT like any other, and calibration, the OOD score, explanations, serving and packaging read it
unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig

from neurovit.errors import BaseModelError
from neurovit.model import NeuroViTForImageClassification
from neurovit.preprocessing import PreprocessConfig

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
# What a hub download fetches: configs and weights, not other frameworks' copies of the weights.
HUB_FILES = ["*.json", "*.safetensors"]
SUPPORTED_MODEL_TYPE = "vit"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class BaseModel:
    """A loaded checkpoint, ready to fine-tune, and the facts ``neurovit.json`` records about it."""

    model: NeuroViTForImageClassification
    facts: dict


def hub_offline() -> bool:
    """True when the environment turns the hub off (read now, not when huggingface_hub was imported)."""
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in OFFLINE_VARIABLES)


def checkpoint_folder(source: str) -> Path:
    """The local folder of ``source``: the folder itself, or a hub id's snapshot in the HF cache (fetched
    when the hub is reachable). Raises ``BaseModelError`` naming ``source`` when neither works."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise BaseModelError(
                f"base model folder {folder} holds no config.json: not a save_pretrained folder"
            )
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    offline = hub_offline()
    try:
        return Path(snapshot_download(source, allow_patterns=HUB_FILES, local_files_only=offline))
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OSError) as error:
        fetch = (
            f"download it where the hub is reachable (`hf download {source} --local-dir <folder>`) and "
            "pass that folder"
        )
        if offline:
            reason = (
                "this machine has no model hub access (HF_HUB_OFFLINE is set) and it is not in the HF cache"
            )
        else:
            reason = f"the model hub could not be reached from this machine or has no such model ({error})"
        raise BaseModelError(f"base model {source!r} is not a local folder, and {reason}: {fetch}") from error


def _square(value, name: str, source: str) -> int:
    sides = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(sides) != 2 or sides[0] != sides[1]:
        raise BaseModelError(
            f"base model {source!r}: NeuroViT needs a square {name}, the checkpoint has {value}"
        )
    return int(sides[0])


def checkpoint_config(source: str):
    """The checkpoint's HF config, refused unless it is a ViT with square images and patches."""
    config = AutoConfig.from_pretrained(checkpoint_folder(source))
    if config.model_type != SUPPORTED_MODEL_TYPE:
        raise BaseModelError(
            f"base model {source!r} is a {config.model_type!r} checkpoint; NeuroViT fine-tunes "
            f"{SUPPORTED_MODEL_TYPE!r} ones (ViTForImageClassification, undistilled DeiT)"
        )
    if config.num_channels not in (1, 3):
        raise BaseModelError(f"base model {source!r} reads {config.num_channels} channels; expected 1 or 3")
    _square(config.patch_size, "patch size", source)
    return config


def checkpoint_image_size(source: str) -> int:
    """The input side the checkpoint was trained at: the preprocessing canonicalises to it."""
    return _square(checkpoint_config(source).image_size, "image size", source)


def input_normalisation(folder: Path, ours: PreprocessConfig, channels: int) -> dict:
    """Per-channel mean and std the checkpoint expects of [0, 1] images, and where they come from."""
    path = folder / IMAGE_PROCESSOR_FILE
    processor = json.loads(path.read_text()) if path.is_file() else None
    if processor is None or not {"image_mean", "image_std"} <= processor.keys():
        return {"mean": [ours.mean] * channels, "std": [ours.std] * channels, "source": "neurovit"}
    if not processor.get("do_normalize", True):
        return {"mean": [0.0] * channels, "std": [1.0] * channels, "source": IMAGE_PROCESSOR_FILE}
    mean, std = processor["image_mean"], processor["image_std"]
    mean = mean if isinstance(mean, list) else [mean] * channels
    std = std if isinstance(std, list) else [std] * channels
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise BaseModelError(
            f"{path}: image_mean {mean} and image_std {std} do not fit a {channels}-channel checkpoint"
        )
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std], "source": IMAGE_PROCESSOR_FILE}


@torch.no_grad()
def fold_grey_input(
    model: NeuroViTForImageClassification, preprocessing: PreprocessConfig, normalisation: dict
) -> None:
    """Make a multi-channel patch projection read our one standardised grey channel, exactly.

    Our input is ``z = (x - m) / s``; channel c of the checkpoint's is ``(x - mean_c) / std_c = a_c z + b_c``
    with ``a_c = s / std_c`` and ``b_c = (m - mean_c) / std_c``. The projection is a convolution with
    kernel = stride = patch and no padding, so ``W * (a z + b) + bias = (sum_c a_c W_c) * z + (bias +
    sum_c b_c sum(W_c))``: one input channel with those weights gives the same output.
    """
    patches = model.vit.embeddings.patch_embeddings
    projection = patches.projection
    mean = torch.tensor(normalisation["mean"], dtype=projection.weight.dtype)
    std = torch.tensor(normalisation["std"], dtype=projection.weight.dtype)
    scale = preprocessing.std / std  # a_c
    shift = (preprocessing.mean - mean) / std  # b_c
    grey = nn.Conv2d(1, projection.out_channels, projection.kernel_size, stride=projection.stride)
    grey.weight.copy_((projection.weight * scale[None, :, None, None]).sum(dim=1, keepdim=True))
    bias = projection.bias if projection.bias is not None else torch.zeros(projection.out_channels)
    grey.bias.copy_(bias + (projection.weight.sum(dim=(2, 3)) * shift[None, :]).sum(dim=1))
    patches.projection = grey.to(projection.weight.device)
    patches.num_channels = 1
    model.config.num_channels = 1


def load_base_model(source: str, class_names: list[str], preprocessing: PreprocessConfig) -> BaseModel:
    """The checkpoint at ``source`` as a one-channel NeuroViT with a fresh head for ``class_names``."""
    config = checkpoint_config(source)
    image_size = _square(config.image_size, "image size", source)
    if preprocessing.image_size != image_size:
        raise BaseModelError(
            f"base model {source!r} reads {image_size} px images, the preprocessing makes "
            f"{preprocessing.image_size} px: it must use the checkpoint's size"
        )
    folder = checkpoint_folder(source)
    model = NeuroViTForImageClassification.from_pretrained(
        folder,
        id2label=dict(enumerate(class_names)),  # num_labels follows; given too, HF warns it disagrees
        label2id={name: i for i, name in enumerate(class_names)},
        ignore_mismatched_sizes=True,  # the checkpoint's head (its classes) gives way to ours
        attn_implementation="eager",  # rollout reads the attention probabilities
        attention_probs_dropout_prob=0.0,  # and needs them clean (as neurovit.model.build_model)
    )
    model.config._attn_implementation = "eager"
    channels = config.num_channels
    normalisation = input_normalisation(folder, preprocessing, channels)
    if channels == 3:
        fold_grey_input(model, preprocessing, normalisation)
    facts = {
        "source": source,
        "model_type": config.model_type,
        "image_size": image_size,
        "patch_size": _square(config.patch_size, "patch size", source),
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "checkpoint_channels": channels,
        "grey_input": "repeated into the 3 channels, folded into the patch projection"
        if channels == 3
        else "read as is",
        "input_normalisation": normalisation,
    }
    return BaseModel(model=model, facts=facts)


__all__ = [
    "BaseModel",
    "checkpoint_config",
    "checkpoint_folder",
    "checkpoint_image_size",
    "fold_grey_input",
    "hub_offline",
    "input_normalisation",
    "load_base_model",
]
