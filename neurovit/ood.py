"""Out-of-distribution score per request: Mahalanobis distances of the model's own features to the training
classes (Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS 2018), over two layers as in their feature ensemble:
- ``tokens``: the mean of the patch tokens entering the transformer (conv stem output plus position
  embeddings): low-level texture and intensity statistics, which tell photographs, noise and documents from
  MRI even when the classifier would be confident about them;
- ``cls``: the CLS embedding the classifier reads (the final layernorm's output at token 0): semantics.
For each, class means and one shared covariance are fitted on the training split's features (Ledoit-Wolf
shrinkage: a few hundred images cannot pin down a 192x192 covariance) and the distance to the nearest class
mean is divided by its own validation quantile at the target false-positive rate, so that 1 means "as far
as the farthest few percent of real slices" in every layer; the score is the larger of the two. (Dividing
by the median instead let the CLS distance's long validation tail, hard but real slices, raise the joint
threshold until a third of the photographs passed on the real-data model.) Lee et al. weight the layers
with a regression fitted on OOD examples; the maximum of tail-normalised distances needs none, so no
"unknown" data leaks into the threshold. The flagging threshold is the validation scores' quantile for the
stated false-positive rate on real slices. No extra forward: hooks read both features during the forward
that classifies.

Saved as ``ood.safetensors`` in the model folder; the threshold lives in the monitoring reference
(``neurovit.drift``), so both travel inside the archive and are covered by the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

OOD_FILE = "ood.safetensors"


FEATURES = ("tokens", "cls")


@contextmanager
def capture_features(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Collect, for every forward run inside the block, the ``FEATURES`` of each image: the mean patch token
    entering the encoder and the CLS embedding the classifier reads."""
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in FEATURES}

    def keep(name: str, select):
        return lambda module, args, output: captured[name].append(select(output).detach().float().cpu())

    handles = [
        model.vit.embeddings.register_forward_hook(keep("tokens", lambda out: out[:, 1:].mean(dim=1))),
        model.vit.layernorm.register_forward_hook(keep("cls", lambda out: out[:, 0])),
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def stack_features(captured: dict[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
    return {name: torch.cat(chunks).numpy() for name, chunks in captured.items()}


@dataclass
class MahalanobisScorer:
    """Class means ``(classes, dim)`` and the shared precision matrix ``(dim, dim)``."""

    means: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: np.ndarray) -> MahalanobisScorer:
        embeddings = np.asarray(embeddings, dtype=np.float64)
        labels = np.asarray(labels)
        classes = np.unique(labels)  # a class absent from the split simply has no mean
        if len(embeddings) < 2:
            raise ValueError("fitting the OOD score needs at least two embeddings")
        means = np.stack([embeddings[labels == c].mean(axis=0) for c in classes])
        centred = embeddings - means[np.searchsorted(classes, labels)]
        # Imported here: fitting is training's job; the serving image loads the saved numbers only and has
        # no scikit-learn (tests/integration/test_image_dependencies.py).
        from sklearn.covariance import LedoitWolf

        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
        return cls(means=means, precision=precision)

    def score(self, embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
        """Distance to the nearest class mean, ``(N,)``; larger = less like the training slices."""
        x = np.asarray(embeddings, dtype=np.float64)
        diffs = x[:, None, :] - self.means[None, :, :]  # (N, classes, dim)
        squared = np.einsum("ncd,de,nce->nc", diffs, self.precision, diffs)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


@dataclass
class OODScorer:
    """One ``MahalanobisScorer`` per feature, each distance divided by its validation quantile at the target
    false-positive rate; the score is the largest normalised distance."""

    scorers: dict[str, MahalanobisScorer]
    scales: dict[str, float]

    @classmethod
    def fit(
        cls,
        train: dict[str, np.ndarray],
        labels: np.ndarray,
        val: dict[str, np.ndarray],
        target_fpr: float,
    ) -> OODScorer:
        scorers = {name: MahalanobisScorer.fit(train[name], labels) for name in FEATURES}
        scales = {
            name: threshold_for_fpr(scorers[name].score(val[name]), target_fpr) or 1.0 for name in FEATURES
        }
        return cls(scorers=scorers, scales=scales)

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """``(N,)`` scores; 1 = as far as the farthest ``target_fpr`` of validation slices in one layer."""
        distances = [self.scorers[name].score(features[name]) / self.scales[name] for name in FEATURES]
        return np.max(np.stack(distances), axis=0)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / OOD_FILE
        tensors = {}
        for name, scorer in self.scorers.items():
            tensors[f"{name}.means"] = scorer.means.astype(np.float32)
            tensors[f"{name}.precision"] = scorer.precision.astype(np.float32)
            tensors[f"{name}.scale"] = np.array([self.scales[name]], dtype=np.float64)
        save_file(tensors, path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> OODScorer | None:
        """The folder's scorer, or None for a model published before OOD scoring existed."""
        path = Path(folder) / OOD_FILE
        if not path.is_file():
            return None
        tensors = load_file(path)
        scorers = {
            name: MahalanobisScorer(
                means=tensors[f"{name}.means"].astype(np.float64),
                precision=tensors[f"{name}.precision"].astype(np.float64),
            )
            for name in FEATURES
        }
        return cls(scorers=scorers, scales={name: float(tensors[f"{name}.scale"][0]) for name in FEATURES})


def threshold_for_fpr(scores: np.ndarray, target_fpr: float) -> float:
    """The score above which at most ``target_fpr`` of ``scores`` (in-distribution) lie."""
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1 - target_fpr, method="higher"))


__all__ = [
    "FEATURES",
    "OOD_FILE",
    "MahalanobisScorer",
    "OODScorer",
    "capture_features",
    "stack_features",
    "threshold_for_fpr",
]
