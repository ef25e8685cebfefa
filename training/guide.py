"""Guiding the served map with radiologists' tumour masks while training ("right for the right reasons").

A ViT trained from scratch on a few thousand slices learns whatever separates the classes, and on real scans
its maps pointed at the neck, the skull base and the background no more often at the tumour than a map
that always peaks at the centre (docs/explainability.md). Ross et al. (IJCAI 2017) constrain a model's
explanation with expert annotations during training; guided attention (Li et al., CVPR 2018) does it for an
attention map. Here the map constrained is the one the service shows: the CLS row of attention rollout
(``neurovit.explain.rollout_relevance``), whose share on the tumour's patch-grid cells is pushed up on
the few training slices that carry a mask. Whether the maps are then faithful is for deletion to show, on
slices never used here.

The masked slices come from a folder in the project's mask convention (``<class>/<id>.png`` beside
``<class>/<id>.mask.png``). ``in_guide_half`` keeps a deterministic half of them (by content hash) for
training and leaves the other half for scoring; the published version lists the slices it used
(``guide.json``), and ``make eval-explain`` leaves them out.

Pointing the map at the tumour does not make the answer depend on it: on real slices, deleting the tumour
mask's own cells lowered the answer's probability more slowly than deleting the centre, so the model read
the class from the rest of the slice. ``hide_lesions`` and ``lesion_hidden_loss`` add a counterfactual, in
the spirit of Teney et al. (ECCV 2020, "Learning what makes a difference from counterfactual examples"):
the same slice with its tumour replaced by black or by a blur of its surroundings should not keep its
tumour class with confidence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neurovit.data.imageio import read_image
from neurovit.data.layout import discover
from neurovit.data.masks import mask_on_input, mask_path, read_mask
from neurovit.errors import DataError, NeuroVitError
from neurovit.explain import rollout_relevance
from neurovit.preprocessing import PreprocessConfig, canonicalise

GUIDE_FILE = "guide.json"
# A tumour occupies a few of the 36-144 grid cells; the loss is -log of rollout's share on them, so a map
# already on the tumour costs nothing and one elsewhere costs a lot. Weighted against the cross-entropy.
DEFAULT_GUIDE_WEIGHT = 0.5
# Weight of ``lesion_hidden_loss`` (bench-train's default with a guide; 0 leaves training as it was).
DEFAULT_LESION_HIDDEN_WEIGHT = 0.5
# The hidden region: the mask grown by this share of the image side, so a tumour's rim goes with it.
_GROW_SHARE = 0.03
# The blur fill's sigma as a share of the side (8 px at 224 px, the blur substrate of eval-explain).
_BLUR_SHARE = 8 / 224


def in_guide_half(sha256: str) -> bool:
    """The half of the masked slices used for training: content hashes whose first byte is even. The odd
    half is never seen, so the scores measured on it are on slices new to the model."""
    return int(sha256[:2], 16) % 2 == 0


@dataclass
class GuideSet:
    """Masked slices added to the training split: canonical images, label indices, masks in the model
    input's geometry (uint8 0/255) and, per slice, its path relative to ``root`` and content hash."""

    root: str
    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    entries: list[dict]

    def write(self, path: Path, settings: dict) -> None:
        document = {"root": self.root, "n": len(self.entries), **settings, "slices": self.entries}
        Path(path).write_text(json.dumps(document, indent=2) + "\n")


def load_guide_set(folder: str | Path, class_names: list[str], preprocessing: PreprocessConfig) -> GuideSet:
    """The guide half (``in_guide_half``) of ``folder``'s slices that have a non-empty mask of their own
    size, in ``class_names``' classes. Other slices are not used; a folder without one is an error."""
    root = Path(folder).resolve()
    index = discover(root)
    images, labels, masks, entries = [], [], [], []
    for record in sorted(index.records, key=lambda record: record.relpath):
        if record.label not in class_names:
            continue
        digest = hashlib.sha256(record.path.read_bytes()).hexdigest()
        if not in_guide_half(digest) or not mask_path(record.path).is_file():
            continue
        try:
            pixels = read_image(record.path).pixels
            mask = read_mask(record.path)
        except NeuroVitError:
            continue  # an unreadable slice guides nothing; analysis reports such files
        if mask.shape != pixels.shape or not mask.any():
            continue
        images.append(canonicalise(pixels, preprocessing))
        masks.append((mask_on_input(mask, preprocessing.image_size) * 255).astype(np.uint8))
        labels.append(class_names.index(record.label))
        entries.append({"relpath": record.relpath, "label": record.label, "sha256": digest})
    if not entries:
        raise DataError(
            f"no masked slice of {root} to guide training with (<class>/<id>.mask.png, not empty)"
        )
    return GuideSet(str(root), np.stack(images), np.asarray(labels, dtype=np.int64), np.stack(masks), entries)


def guide_loss(attentions: list[torch.Tensor], masks: torch.Tensor, start_layer: int) -> torch.Tensor:
    """Mean over the batch of ``-log`` (the share of rollout's CLS row on the mask's cells).

    ``attentions``: the forward's per-layer attentions ``(N, heads, T, T)``; ``masks``: ``(N, 1, H, W)``
    in [0, 1] (augmented with their images). A cell counts as tumour when the mask covers any of it, so a
    small lesion still owns the cell it sits in.
    """
    relevance = rollout_relevance(attentions, min(start_layer, len(attentions) - 1))
    side = int(round(relevance.shape[1] ** 0.5))
    cells = F.adaptive_max_pool2d(masks.float(), side).flatten(1) > 0.5
    share = (relevance * cells).sum(dim=1) / relevance.sum(dim=1).clamp_min(1e-12)
    return -torch.log(share + 1e-6).mean()  # + not clamp: a map wholly off the mask still gets a gradient


def hide_lesions(
    images: torch.Tensor, masks: torch.Tensor, black: float, generator: torch.Generator
) -> torch.Tensor:
    """``images`` (N, C, H, W, standardised) with each mask's region (grown a little) replaced, per image at
    random, by ``black`` (the standardised value of a black pixel) or by a Gaussian blur of the image.

    Two fills, so that the model learns "no tumour tissue here", not "a black hole means no tumour".
    """
    side = images.shape[-1]
    grow = 2 * max(1, round(_GROW_SHARE * side)) + 1
    region = F.max_pool2d((masks.float() > 0.5).float(), grow, stride=1, padding=grow // 2)
    blurred = _gaussian_blur(images, _BLUR_SHARE * side)
    use_black = torch.rand(len(images), generator=generator, device=generator.device) < 0.5
    fill = torch.where(
        use_black.to(images.device)[:, None, None, None], torch.full_like(images, black), blurred
    )
    return images * (1 - region) + fill * region


def lesion_hidden_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean ``-log(1 - p)``, ``p`` the probability the slice with its tumour hidden keeps its tumour class.

    Asks only that the class not survive without its evidence; it does not call the slice healthy.
    """
    kept = logits.float().softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
    return -torch.log1p(-kept.clamp(max=1 - 1e-6)).mean()


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    rows = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    padded = F.pad(images, (0, 0, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, rows, groups=channels)
    padded = F.pad(blurred, (radius, radius, 0, 0), mode="replicate")
    return F.conv2d(padded, rows.transpose(2, 3), groups=channels)


__all__ = [
    "DEFAULT_GUIDE_WEIGHT",
    "DEFAULT_LESION_HIDDEN_WEIGHT",
    "GUIDE_FILE",
    "GuideSet",
    "guide_loss",
    "hide_lesions",
    "in_guide_half",
    "lesion_hidden_loss",
    "load_guide_set",
]
