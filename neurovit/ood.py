"""Out-of-distribution score per request: Mahalanobis distance of the CLS embedding (Lee et al., "A Simple
Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018).

The embedding is what the classifier reads: the final layernorm's output at the CLS token. Class means and
one shared covariance are fitted on the training split's embeddings (Ledoit-Wolf shrinkage, because a few
hundred images cannot pin down a 192x192 covariance); the score is the distance to the nearest class mean.
The flagging threshold is a quantile of the validation split's scores, chosen for a stated false-positive
rate on real slices (``target_fpr``). The score needs no extra forward: a hook reads the embedding during
the forward that classifies.

Saved as ``ood.safetensors`` (means, precision) in the model folder; the threshold lives in the monitoring
reference (``neurovit.drift``), so both travel inside the archive and are covered by the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from sklearn.covariance import LedoitWolf
from torch import nn

OOD_FILE = "ood.safetensors"


@contextmanager
def capture_embeddings(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the CLS embedding (``vit.layernorm`` output, token 0) of every forward run inside the block."""
    captured: list[torch.Tensor] = []
    handle = model.vit.layernorm.register_forward_hook(
        lambda module, args, output: captured.append(output[:, 0].detach().float().cpu())
    )
    try:
        yield captured
    finally:
        handle.remove()


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
        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
        return cls(means=means, precision=precision)

    def score(self, embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
        """Distance to the nearest class mean, ``(N,)``; larger = less like the training slices."""
        x = np.asarray(embeddings, dtype=np.float64)
        diffs = x[:, None, :] - self.means[None, :, :]  # (N, classes, dim)
        squared = np.einsum("ncd,de,nce->nc", diffs, self.precision, diffs)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / OOD_FILE
        save_file(
            {"means": self.means.astype(np.float32), "precision": self.precision.astype(np.float32)}, path
        )
        return path

    @classmethod
    def load(cls, folder: str | Path) -> MahalanobisScorer | None:
        """The folder's scorer, or None for a model published before OOD scoring existed."""
        path = Path(folder) / OOD_FILE
        if not path.is_file():
            return None
        tensors = load_file(path)
        return cls(
            means=tensors["means"].astype(np.float64), precision=tensors["precision"].astype(np.float64)
        )


def threshold_for_fpr(scores: np.ndarray, target_fpr: float) -> float:
    """The score above which at most ``target_fpr`` of ``scores`` (in-distribution) lie."""
    if not 0 < target_fpr < 1:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1 - target_fpr, method="higher"))


__all__ = ["OOD_FILE", "MahalanobisScorer", "capture_embeddings", "threshold_for_fpr"]
