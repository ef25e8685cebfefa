"""Guiding the served map with radiologists' tumour masks while training ("right for the right reasons").

A ViT trained from scratch on a few thousand slices learns whatever separates the classes, and on real scans
its maps pointed at the neck, the skull base and the background no more often at the tumour than a map
that always peaks at the centre (docs/explainability.md). Ross et al. (IJCAI 2017) constrain a model's
explanation with expert annotations during training; guided attention (Li et al., CVPR 2018) does it for an
attention map. Here the map constrained is the one the service shows: the CLS row of attention rollout
(``neurovit.explain.rollout_relevance``), whose share on the tumour's patch-grid cells is pushed up on
the few training slices that carry a mask. The classifier reads the CLS token, so a rollout that flows from
the tumour makes the prediction depend on it; whether the maps are then faithful is for deletion to show,
on slices never used here.

The masked slices come from a folder in the project's mask convention (``<class>/<id>.png`` beside
``<class>/<id>.mask.png``). ``in_guide_half`` keeps a deterministic half of them (by content hash) for
training and leaves the other half for scoring; the published version lists the slices it used
(``guide.json``), and ``make eval-explain`` leaves them out.
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
from neurovit.explain import rollout_relevance, served_start_layer
from neurovit.explain_metrics import cell_index, control_region, grown_lesion, noisy_linear_imputation
from neurovit.preprocessing import PreprocessConfig, canonicalise

GUIDE_FILE = "guide.json"
# ``TrainConfig.counterfactual_class`` value that trains the tumour-imputed slices towards the uniform
# distribution ("no evidence for any class", Outlier Exposure's target: Hendrycks et al., ICLR 2019) rather
# than towards a class: removing the evidence should remove the answer, not assert "no tumour" on a slice
# whose oedema and mass effect still say otherwise.
UNIFORM_TARGET = "uniform"
# The label such a slice carries in the training arrays; no class has it.
NO_EVIDENCE = -1
# A tumour occupies a few of the 36-144 grid cells; the loss is -log of rollout's share on them, so a map
# already on the tumour costs nothing and one elsewhere costs a lot. Weighted against the cross-entropy.
DEFAULT_GUIDE_WEIGHT = 0.5


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
    relevance = rollout_relevance(attentions, served_start_layer(start_layer, len(attentions)))
    side = int(round(relevance.shape[1] ** 0.5))
    cells = F.adaptive_max_pool2d(masks.float(), side).flatten(1) > 0.5
    share = (relevance * cells).sum(dim=1) / relevance.sum(dim=1).clamp_min(1e-12)
    return -torch.log(share + 1e-6).mean()  # + not clamp: a map wholly off the mask still gets a gradient


@dataclass
class Counterfactuals:
    """The guide slices with their tumour imputed (``without_tumour``, one per guide slice) and, where the
    head has room, with the same shape imputed elsewhere instead (``with_control``, tumour kept;
    ``controlled`` indexes the guide slices they come from). Canonical uint8 images."""

    without_tumour: np.ndarray
    with_control: np.ndarray
    controlled: np.ndarray


def counterfactual_slices(guide: GuideSet, seed: int = 0, black_cells: int | None = None) -> Counterfactuals:
    """Each guide slice with its tumour (``grown_lesion``) imputed from the tissue around it as ROAD imputes
    (``noisy_linear_imputation``), and, as its pair, with a patch of the same shape imputed elsewhere in the
    head (``control_region``): the counterfactual slices training labels by what is left
    (``TrainConfig.counterfactual_class``).

    ``black_cells`` (the model's patch size in pixels) makes the other kind of pair: the token cells the
    tumour touches set to black, as black-cell deletion removes them, and the same cells moved elsewhere in
    the head (by whole cells, so that both holes sit on the token grid) set to black instead. A model whose
    answer for a tumour slice falls to "no tumour" under any black middle (docs/explainability.md, "Where a
    black middle sends the answer") is then shown a black middle that keeps its label and a black tumour
    that leaves no answer.

    On real slices the answer for glioma barely needs the tumour (docs/explainability.md, "Does the answer
    need the tumour?"): a slice of the tumour collections is recognised as such from the rest of it. The
    same slice without its tumour, labelled as having none, is the counterexample to that shortcut; imputed
    rather than blacked out, so that it looks like tissue and not like a hole. The pair, an imputed patch
    away from the tumour with the label kept, leaves "an imputed patch" itself saying nothing.
    """
    rng = np.random.default_rng(seed)
    without_tumour, with_control, controlled = [], [], []

    def imputed(image: np.ndarray, region: np.ndarray, index: int) -> np.ndarray:
        pixels = torch.as_tensor(image, dtype=torch.float32)[None] / 255.0
        filled = noisy_linear_imputation(pixels, region, rng=seed + index)
        return (filled[0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()

    def blacked(image: np.ndarray, region: np.ndarray, index: int) -> np.ndarray:
        return np.where(region, 0, image).astype(np.uint8)

    remove = imputed if black_cells is None else blacked
    for index, (image, mask) in enumerate(zip(guide.images, guide.masks, strict=True)):
        tumour = grown_lesion(mask > 127) if black_cells is None else touched_cells(mask > 127, black_cells)
        without_tumour.append(remove(image, tumour, index))
        control = control_region(tumour, image, rng, step=black_cells or 1)
        if control is not None:
            with_control.append(remove(image, control, index))
            controlled.append(index)
    empty = np.zeros((0, *guide.images.shape[1:]), dtype=np.uint8)
    return Counterfactuals(
        np.stack(without_tumour) if without_tumour else empty,
        np.stack(with_control) if with_control else empty,
        np.asarray(controlled, dtype=np.int64),
    )


def touched_cells(mask: np.ndarray, cell: int) -> np.ndarray:
    """``mask`` ``(H, W)`` grown to every whole ``cell`` x ``cell`` token cell it touches: the cells
    black-cell deletion (``cell_index``, the same grid) has to remove before no tumour is left."""
    height, width = mask.shape
    cells = cell_index((height // cell, width // cell), height, width)
    return np.isin(cells, cells[mask])


def uniform_target_loss(logits: torch.Tensor) -> torch.Tensor:
    """Per row, the cross-entropy with the uniform distribution over the classes (its minimum, log C,
    where every class gets the same probability)."""
    return -F.log_softmax(logits.float(), dim=1).mean(dim=1)


__all__ = [
    "DEFAULT_GUIDE_WEIGHT",
    "GUIDE_FILE",
    "NO_EVIDENCE",
    "UNIFORM_TARGET",
    "GuideSet",
    "guide_loss",
    "uniform_target_loss",
    "in_guide_half",
    "load_guide_set",
    "Counterfactuals",
    "counterfactual_slices",
    "touched_cells",
]
