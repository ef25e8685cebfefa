"""Training-only augmentation on whole batches of canonical uint8 images, as tensor ops.

Batched tensor ops keep the 2-core CPU busy with the model rather than with per-image Python, and run
unchanged on a GPU. Augmentations are mild on purpose: MRI slices are already aligned, and with a
minutes-long budget heavy mixup/RandAugment slows convergence more than it regularises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
    # Token-cell erasing ("counterfactual training", Hase, Xie & Bansal, NeurIPS 2021): with this
    # probability an image gets some of its token cells set to black (intensity 0, the substrate of the
    # deletion score), label unchanged, so that a slice with missing cells is not out of distribution and
    # deletion measures lost evidence rather than the shock of a black hole. 0 (the default) draws nothing:
    # the random stream, and `make demo`, stay as they were.
    erase_prob: float = 0.0
    erase_max_fraction: float = 0.5  # of the cells, drawn uniformly up to this
    # Erase only where no tumour is: slices that may hold an unmarked tumour keep every cell, a masked slice
    # keeps the cells its tumour touches, and the no-tumour slices (and tumour-imputed ones) erase as before.
    # Label-kept erasing anywhere can black out a small tumour whole and so teach that the answer survives
    # without it; this way a hole only ever removes what is not evidence. Needs ``tumour_free`` per slice.
    erase_spares_tumours: bool = False
    # MRI acquisition changes, each drawn per image with its probability (0, the default, draws nothing, so
    # `make demo` trains as before), as in nnU-Net's and TorchIO's training transforms, batched here:
    # a gamma curve (intensity ** exp(U(-max_log_gamma, max_log_gamma)), TorchIO RandomGamma's range), a
    # smooth multiplicative bias field (exp of a coarse random field, the scanner's coil inhomogeneity, as
    # TorchIO RandomBiasField) and Gaussian noise (std up to ``max_noise_std`` of the [0, 1] range). Black
    # background stays black under the first two.
    gamma_prob: float = 0.0
    max_log_gamma: float = 0.3
    bias_field_prob: float = 0.0
    bias_field_strength: float = 0.3  # the field's log-amplitude, drawn uniformly up to this
    noise_prob: float = 0.0
    max_noise_std: float = 0.03

    def __post_init__(self) -> None:
        shares = ("erase_prob", "erase_max_fraction", "gamma_prob", "bias_field_prob", "noise_prob")
        for name in shares:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a share and must be in [0, 1], got {getattr(self, name)}")

    def with_geometry(self, factor: float) -> AugmentConfig:
        """These ranges with the rotation, the scale's distance from 1 and the shift multiplied by ``factor``
        (1: unchanged), the one knob for how far a slice may move from where the scanner put it."""
        low, high = self.scale_range
        return replace(
            self,
            max_rotation_deg=self.max_rotation_deg * factor,
            scale_range=(1 - (1 - low) * factor, 1 + (high - 1) * factor),
            max_translate=self.max_translate * factor,
        )


def augment_batch(
    images: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
    masks: torch.Tensor | None = None,
    cell: int = 16,
    tumour_free: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Randomly flip, rotate, scale, shift and jitter a float batch (N, 1, H, W) with values in [0, 1],
    then (``erase_prob`` > 0) black out token cells of ``cell`` pixels (the model's patch size).

    With ``masks`` (N, 1, H, W), each mask gets its image's flip, rotation, scale and shift (not the
    intensity jitter) and loses its erased cells (the guide must not ask for attention on a black cell);
    ``(images, masks)`` is returned; the random draws are the same either way. ``tumour_free`` (N bool:
    the slice holds no tumour its mask does not mark) is what ``erase_spares_tumours`` needs.
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
    jittered = acquisition_changes(jittered, config, generator)
    if config.erase_prob > 0:
        kept = erase_cells_mask(n, images.shape[-2:], cell, config, generator).to(device)
        if config.erase_spares_tumours:
            kept = spare_tumours(kept, tumour_free, warped_masks, cell)
        jittered = jittered * kept
        if warped_masks is not None:
            warped_masks = warped_masks * kept
    return jittered if warped_masks is None else (jittered, warped_masks)


def acquisition_changes(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Gamma, bias field and noise (``AugmentConfig``) on a float batch (N, 1, H, W) in [0, 1], each on the
    images its probability picks (only those are computed: the step budget is tight); a change whose
    probability is 0 draws nothing from ``generator``."""
    n, device = images.shape[0], images.device
    if not (config.gamma_prob or config.bias_field_prob or config.noise_prob):
        return images

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=generator.device).to(device)

    def picked(probability: float) -> torch.Tensor:
        return torch.nonzero(draw(n) < probability).flatten()

    images = images.clone()
    if config.gamma_prob > 0:
        index = picked(config.gamma_prob)
        gamma = torch.exp((draw(len(index)) * 2 - 1) * config.max_log_gamma).view(-1, 1, 1, 1)
        images[index] = images[index].clamp(min=0.0).pow(gamma)
    if config.bias_field_prob > 0:
        index = picked(config.bias_field_prob)
        amplitude = (draw(len(index)) * config.bias_field_strength).view(-1, 1, 1, 1)
        coarse = draw(len(index), 1, 4, 4) * 2 - 1  # a 4x4 field in [-1, 1], smooth once upsampled
        field = F.interpolate(coarse, size=images.shape[-2:], mode="bicubic", align_corners=True)
        images[index] = images[index] * torch.exp(field.clamp(-1.0, 1.0) * amplitude)
    if config.noise_prob > 0:
        index = picked(config.noise_prob)
        std = (draw(len(index)) * config.max_noise_std).view(-1, 1, 1, 1)
        shape = (len(index), *images.shape[1:])
        noise = torch.randn(shape, generator=generator, device=generator.device).to(device)
        images[index] = images[index] + noise * std
    return images.clamp_(0.0, 1.0)


def spare_tumours(
    kept: torch.Tensor, tumour_free: torch.Tensor | None, masks: torch.Tensor | None, cell: int
) -> torch.Tensor:
    """``kept`` (N, 1, H, W of 1 kept, 0 erased) with every cell kept on a slice that is not ``tumour_free``
    and every cell a mask touches kept on one that is."""
    if tumour_free is None:
        raise ValueError("erase_spares_tumours needs tumour_free: which slices hold no unmarked tumour")
    keep_all = ~tumour_free.to(kept.device).bool().view(-1, 1, 1, 1)
    spared = keep_all.expand_as(kept)
    if masks is not None:
        touched = F.max_pool2d(masks, cell, ceil_mode=True) > 0  # per cell: any of its pixels on the tumour
        spared = spared | cells_to_pixels(touched, cell, kept.shape[-2:])
    return torch.where(spared, torch.ones_like(kept), kept)


def erase_cells_mask(
    n: int, size: tuple[int, int], cell: int, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """(N, 1, H, W) of 1 (kept) and 0 (erased): for each image picked with ``erase_prob``, a fraction of its
    token cells drawn uniformly in [0, ``erase_max_fraction``], half the time as scattered cells (the
    order of a patchy map) and half as one rectangle (the order of a blob, as a centred prior deletes)."""
    height, width = size
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    on = generator.device

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=on)

    picked = draw(n) < config.erase_prob
    fraction = draw(n) * config.erase_max_fraction
    as_block = draw(n) < 0.5
    scattered = draw(n, rows, cols) < fraction.view(n, 1, 1)
    # A rectangle of about ``fraction`` of the cells: random aspect, random place, clipped to the grid.
    aspect = torch.exp((draw(n) - 0.5) * 2 * math.log(2.0))  # width / height in [1/2, 2]
    area = fraction * rows * cols
    block_rows = (area / aspect).sqrt().round().clamp(0, rows)
    block_cols = (area * aspect).sqrt().round().clamp(0, cols)
    top = (draw(n) * (rows - block_rows + 1)).floor()
    left = (draw(n) * (cols - block_cols + 1)).floor()
    r = torch.arange(rows, device=on).view(1, rows, 1)
    c = torch.arange(cols, device=on).view(1, 1, cols)
    block = (
        (r >= top.view(n, 1, 1))
        & (r < (top + block_rows).view(n, 1, 1))
        & (c >= left.view(n, 1, 1))
        & (c < (left + block_cols).view(n, 1, 1))
    )
    erased = torch.where(as_block.view(n, 1, 1), block, scattered) & picked.view(n, 1, 1)
    return (~cells_to_pixels(erased, cell, (height, width))).float().unsqueeze(1)


def cells_to_pixels(cells: torch.Tensor, cell: int, size: tuple[int, int]) -> torch.Tensor:
    """A per-cell grid (..., rows, cols) blown up to pixels (..., H, W): each value repeated over its
    ``cell`` x ``cell`` pixels, cut to ``size`` where the last cells overhang the image."""
    height, width = size
    pixels = cells.repeat_interleave(cell, dim=-2).repeat_interleave(cell, dim=-1)
    return pixels[..., :height, :width]
