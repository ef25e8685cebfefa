"""Training-only augmentation on whole batches of canonical uint8 images, as tensor ops.

Batched tensor ops keep the 2-core CPU busy with the model rather than with per-image Python, and run
unchanged on a GPU. Augmentations are mild on purpose: MRI slices are already aligned, and with a
minutes-long budget heavy mixup/RandAugment slows convergence more than it regularises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (each drawn per image)."""

    hflip: bool = True
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_translate: float = 0.06  # fraction of the image side
    brightness: float = 0.1  # additive, in [0, 1] intensity units
    contrast: float = 0.15  # multiplicative around the image mean


def augment_batch(
    images: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
    masks: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Randomly flip, rotate, scale, shift and jitter a float batch (N, 1, H, W) with values in [0, 1].

    With ``masks`` (N, 1, H, W), each mask gets its image's flip, rotation, scale and shift (not the
    intensity jitter) and ``(images, masks)`` is returned; the random draws are the same either way.
    """
    n = images.shape[0]
    device = images.device

    def draw() -> torch.Tensor:
        # drawn where the generator lives, then moved: a CPU generator can feed a CUDA batch and vice versa
        return torch.rand(n, generator=generator, device=generator.device).to(device)

    def uniform(low: float, high: float) -> torch.Tensor:
        return draw() * (high - low) + low

    angle = uniform(-config.max_rotation_deg, config.max_rotation_deg) * math.pi / 180
    scale = uniform(*config.scale_range)
    flip = torch.ones(n, device=device)
    if config.hflip:
        flip = torch.where(draw() < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, 0, 2] = uniform(-config.max_translate, config.max_translate) * 2
    theta[:, 1, 2] = uniform(-config.max_translate, config.max_translate) * 2
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped_masks = None
    if masks is not None:
        warped_masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(1 - config.contrast, 1 + config.contrast).view(n, 1, 1, 1)
    brightness = uniform(-config.brightness, config.brightness).view(n, 1, 1, 1)
    jittered = ((warped - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)
    return jittered if warped_masks is None else (jittered, warped_masks)
