"""The NeuroViT model: HuggingFace ``ViTForImageClassification`` with an optional convolutional stem.

A plain ViT learns poorly from a few thousand images; replacing the patch projection by a small stack of
stride-2 convolutions (Xiao et al., "Early Convolutions Help Transformers See Better", NeurIPS 2021) gives
the transformer locality for free while keeping everything else a standard HF ViT: a CLS token (which the
classifier reads and attention rollout follows), eager attention so per-layer attention probabilities are
returned, and ``save_pretrained``/``from_pretrained`` round trips.

A model folder holds ``config.json`` + ``model.safetensors`` (HF), ``preprocessing.json`` (the transform's
parameters) and ``neurovit.json`` (class names, the calibration temperature and confidence map).
``load_model`` reads all three back, so no stage ever re-declares them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification
from transformers.utils import logging as hf_logging

from neurovit.confidence_map import ConfidenceMap, apply_confidence_map
from neurovit.preprocessing import PreprocessConfig

MODEL_INFO_FILE = "neurovit.json"

# Padding of a stride-2 stem conv per kernel size. A stride-2 conv with kernel k and padding p centres output
# i on input 2i + (k - 1) / 2 - p: 2i + 0.5 for (2, 0) and (4, 1), so after s stages token i is centred at
# 2^s * i + (2^s - 1) / 2, the centre of its own patch; (3, 1) gives 2i, i.e. the patch's top-left corner.
STEM_PADDING = {2: 0, 3: 1, 4: 1}
# Configs saved before ``stem_kernel`` existed used 3x3 convs.
LEGACY_STEM_KERNEL = 3

# HF's per-call "Loading weights" / "Writing shards" bars would drown our own progress output.
hf_logging.disable_progress_bar()


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a from-scratch NeuroViT.

    Args:
        image_size: input side in pixels (must match ``PreprocessConfig.image_size``).
        stem: "conv" (stride-2 conv stack, total stride ``patch_size``) or "patch" (the plain ViT projection).
        stem_channels: output channels of each stride-2 conv in the stem; their count sets the total stride.
        stem_extra_convs: stride-1 convs after the stride-2 conv of every stage but the first (which runs at
            the highest resolution, where a stride-1 conv costs the most).
        stem_kernel: kernel of the stride-2 convs: 2 (no padding, as ConvNeXt downsamples) or 4 (padding 1)
            centre each token's receptive field on its own patch; the 3 (padding 1) of the first versions
            centres it on the patch's top-left corner, 7.5 px off at stride 16, which shifts every
            explanation map by half a patch (see ``ConvStem``).
        hidden_size, num_layers, num_heads, mlp_ratio: transformer width, depth, heads, MLP expansion.
        dropout: dropout on hidden states (attention-probability dropout stays 0 so rollout sees clean maps).
    """

    image_size: int = 128
    stem: str = "conv"
    stem_channels: tuple[int, ...] = (32, 64, 128, 192)
    stem_extra_convs: int = 1
    stem_kernel: int = 2
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 3
    mlp_ratio: int = 2
    dropout: float = 0.0

    @property
    def patch_size(self) -> int:
        return 2 ** len(self.stem_channels) if self.stem == "conv" else 16

    def __post_init__(self) -> None:
        if self.stem not in ("conv", "patch"):
            raise ValueError(f"stem must be 'conv' or 'patch', got {self.stem!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the stride {self.patch_size}"
            )
        if self.stem_kernel not in STEM_PADDING:
            raise ValueError(f"stem_kernel must be one of {sorted(STEM_PADDING)}, got {self.stem_kernel}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")


@dataclass
class ModelInfo:
    """What a model folder says about itself besides its weights."""

    class_names: list[str]
    temperature: float = 1.0
    # Applied after the temperature (neurovit.confidence_map); None: the temperature alone calibrates.
    confidence_map: ConfidenceMap | None = None
    extra: dict = field(default_factory=dict)

    def save(self, folder: str | Path) -> None:
        payload = {"class_names": self.class_names, "temperature": self.temperature, **self.extra}
        if self.confidence_map is not None:
            payload["confidence_map"] = self.confidence_map.to_dict()
        (Path(folder) / MODEL_INFO_FILE).write_text(json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> ModelInfo:
        payload = json.loads((Path(folder) / MODEL_INFO_FILE).read_text())
        names, temperature = payload.pop("class_names"), float(payload.pop("temperature", 1.0))
        saved_map = payload.pop("confidence_map", None)  # absent in versions published before it
        confidence_map = None if saved_map is None else ConfidenceMap.from_dict(saved_map)
        return cls(class_names=names, temperature=temperature, confidence_map=confidence_map, extra=payload)

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """The calibrated (N, C) probabilities the service reports: softmax of the logits divided by the
        temperature, then the confidence map where there is one."""
        # torch, not calibration.apply_temperature (the same maths): that one needs scipy, which the serving
        # image does not install (pyproject's `serve` list; tests/integration/test_image_dependencies.py).
        scaled = torch.softmax(torch.as_tensor(logits).double() / self.temperature, dim=-1).numpy()
        return apply_confidence_map(scaled, self.confidence_map)


class ConvStem(nn.Module):
    """Stages of a stride-2 conv (kernel ``kernel``, see ``STEM_PADDING``) + ``extra_convs`` stride-1 3x3
    convs in every stage but the first, each with BatchNorm and ReLU, then a 1x1 conv to the hidden size.
    Extra convs put capacity where a small dataset trains fastest: local texture and shape; being
    symmetric (3x3, padding 1) they keep each token centred on its patch."""

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...],
        hidden_size: int,
        extra_convs: int = 0,
        kernel: int = LEGACY_STEM_KERNEL,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for stage, out_channels in enumerate(channels):
            for stride in (2,) + (1,) * (extra_convs if stage else 0):
                size, padding = (kernel, STEM_PADDING[kernel]) if stride == 2 else (3, 1)
                layers += [
                    nn.Conv2d(in_channels, out_channels, size, stride=stride, padding=padding, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                ]
                in_channels = out_channels
        layers.append(nn.Conv2d(in_channels, hidden_size, 1))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    @property
    def weight(self) -> torch.Tensor:
        # ViTModel.forward reads ``projection.weight.dtype`` to cast its input; point it at the last conv.
        return self.layers[-1].weight

    def reset_parameters(self) -> None:
        # HF's _init_weights would give convs N(0, 0.02), far too small for a ReLU stack: use Kaiming.
        for module in self.layers:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values)


class NeuroViTForImageClassification(ViTForImageClassification):
    """``ViTForImageClassification`` whose patch projection is a conv stem when ``config.stem == "conv"``."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        if getattr(config, "stem", "patch") == "conv":
            self.vit.embeddings.patch_embeddings.projection = ConvStem(
                config.num_channels,
                tuple(config.stem_channels),
                config.hidden_size,
                int(getattr(config, "stem_extra_convs", 0)),
                int(getattr(config, "stem_kernel", LEGACY_STEM_KERNEL)),
            )

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, ConvStem):
            module.reset_parameters()
            return
        if any(module is m for m in self._stem_modules()):
            return  # initialised by ConvStem.reset_parameters
        super()._init_weights(module)

    def _stem_modules(self) -> list[nn.Module]:
        stem = self.vit.embeddings.patch_embeddings.projection
        return list(stem.modules()) if isinstance(stem, ConvStem) else []


def build_model(config: ModelConfig, class_names: list[str]) -> NeuroViTForImageClassification:
    """A freshly initialised model for ``class_names`` (offline: no weights are downloaded)."""
    if len(class_names) < 2:
        raise ValueError(f"need at least two classes, got {class_names}")
    vit_config = ViTConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=1,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.hidden_size * config.mlp_ratio,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=0.0,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
        stem=config.stem,
        stem_channels=list(config.stem_channels),
        stem_extra_convs=config.stem_extra_convs,
        stem_kernel=config.stem_kernel,
        attn_implementation="eager",  # rollout needs the attention probabilities; SDPA returns none
    )
    model = NeuroViTForImageClassification(vit_config)
    model.config._attn_implementation = "eager"
    return model


def save_model(
    model: NeuroViTForImageClassification,
    folder: str | Path,
    preprocessing: PreprocessConfig,
    info: ModelInfo,
) -> Path:
    """Write weights, HF config, preprocessing and model info into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    preprocessing.save(folder)
    info.save(folder)
    return folder


@dataclass
class LoadedModel:
    model: NeuroViTForImageClassification
    preprocessing: PreprocessConfig
    info: ModelInfo

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a model folder written by ``save_model``; the model is in eval mode on ``device``."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: not a saved NeuroViT model")
    model = NeuroViTForImageClassification.from_pretrained(folder, attn_implementation="eager")
    model.to(device).eval()
    return LoadedModel(model=model, preprocessing=PreprocessConfig.load(folder), info=ModelInfo.load(folder))


__all__ = [
    "ConvStem",
    "LoadedModel",
    "ModelConfig",
    "ModelInfo",
    "NeuroViTForImageClassification",
    "build_model",
    "load_model",
    "save_model",
]
