"""Saliency-guided training on the rollout map.

Why: on the long bench runs, blacking out the middle of a slice lowers the answer faster than blacking
out the cells the maps rank first, on some seeds (docs/explainability.md, "Where a black middle sends the
answer"): the model reads a hole as evidence. Saliency-guided training (Ismail, Corrada Bravo and Feizi,
NeurIPS 2021) masks each training image's lowest-saliency features and adds the KL divergence between the
answers on the image and on its masked copy, so that what the map ranks low stops moving the answer and
removing what it ranks high moves it first. Here the saliency is the map the service shows, rollout's CLS
row, taken from the training forward's own attentions (no extra pass to rank); the masked cells go black,
the fill of the deletion probe that the models fail. Departures from the paper, each for what deletion
measures: only cells inside the head are ranked (the lowest-ranked cells of a slice are otherwise its
already black corners, and masking them teaches nothing); the masked share of those is drawn per image up
to ``max_fraction`` (the paper fixes it; a deletion curve crosses every share); and the answer on the image
is the KL's fixed target (no gradient), so the term moves what the masked copy answers, not the answer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurovit.explain_metrics import HEAD_LEVEL
from training.augment import cells_to_pixels

# The paper's default drops half the features; here the share is drawn uniformly up to it.
DEFAULT_MAX_FRACTION = 0.5


# A cell is in the head when at least this share of its pixels is (eval-explain's head level, relative to
# each image's own range: augmentation shifts and stretches the intensities).
HEAD_SHARE = 0.5


def head_cells(images: torch.Tensor, cell: int) -> torch.Tensor:
    """``(N, T)`` bool over the ``cell`` x ``cell`` token cells of ``images`` (N, C, H, W, any units): True
    where at least ``HEAD_SHARE`` of the cell's pixels lie above ``HEAD_LEVEL`` of the image's range."""
    flat = images[:, :1].flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    level = (low + HEAD_LEVEL * (high - low)).view(-1, 1, 1, 1)
    above = (images[:, :1] > level).float()
    return F.avg_pool2d(above, cell, ceil_mode=True).flatten(1) >= HEAD_SHARE


def lowest_cells(
    relevance: torch.Tensor,
    max_fraction: float,
    generator: torch.Generator,
    candidates: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(N, T)`` bool, True on each image's ``k`` least relevant ``candidates`` (all cells when None),
    ``k`` drawn uniformly in ``[0, max_fraction]`` of its candidates per image (rounded down).
    ``relevance`` is ``(N, T)``, any scale."""
    if candidates is None:
        candidates = torch.ones_like(relevance, dtype=torch.bool)
    share = torch.rand(len(relevance), generator=generator, device=generator.device).to(relevance.device)
    count = torch.floor(share * max_fraction * candidates.sum(dim=1))
    ranked = relevance.float().masked_fill(~candidates, float("inf"))  # other cells rank last
    rank = ranked.argsort(dim=1).argsort(dim=1)  # 0 for the least relevant cell
    return rank < count.unsqueeze(1)


def masked_copy(
    images: torch.Tensor,
    relevance: torch.Tensor,
    cell: int,
    fill: float,
    max_fraction: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``images`` (N, C, H, W, model input) with the ``lowest_cells`` of each image's ``head_cells`` set to
    ``fill``; ``relevance`` ``(N, T)`` over the square grid of ``cell`` x ``cell`` token cells (the last
    may overhang the image)."""
    side = round(relevance.shape[1] ** 0.5)
    if side * side != relevance.shape[1]:
        raise ValueError(f"relevance has {relevance.shape[1]} cells, not a square grid")
    height, width = images.shape[-2:]
    candidates = head_cells(images, cell)
    if candidates.shape != relevance.shape:
        raise ValueError(f"{relevance.shape[1]} relevances for {candidates.shape[1]} cells of {cell} px")
    masked = lowest_cells(relevance, max_fraction, generator, candidates).view(-1, 1, side, side)
    pixels = cells_to_pixels(masked, cell, (height, width))
    return torch.where(pixels, torch.full_like(images, fill), images)


def consistency_loss(masked_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` averaged over the batch: ``p`` the answer on the images (a fixed target), ``q`` the
    answer on their masked copies."""
    target = F.softmax(logits.detach().float(), dim=1)
    return F.kl_div(F.log_softmax(masked_logits.float(), dim=1), target, reduction="batchmean")


__all__ = [
    "DEFAULT_MAX_FRACTION",
    "HEAD_SHARE",
    "consistency_loss",
    "head_cells",
    "lowest_cells",
    "masked_copy",
]
