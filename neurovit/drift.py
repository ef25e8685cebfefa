"""Drift statistics shared by training (the reference) and serving (the live side): features, bins, PSI.

Each monitored feature is counted in bins whose edges are the reference data's deciles, so each reference bin
holds about a tenth and a shift shows up as bins filling unevenly. Training stores the edges and the
reference fractions with the model version (``monitoring.json``); the handler counts live requests per bin
and exports the reference as gauges, and Prometheus computes the Population Stability Index
(``sum (live - ref) * ln(live / ref)``) from both, so it adds up across replicas. ``psi`` here is the same
formula, for tests and the drift demo. Metric names: ``monitoring/METRICS.md``.

Image features are computed on the canonical image the model sees (after the per-image percentile stretch),
so they track what reaches the model: a different contrast curve, a cropped field of view, an empty slice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REFERENCE_FILE = "monitoring.json"
IMAGE_FEATURES = ("mean_intensity", "contrast", "foreground_fraction")
FEATURES = (*IMAGE_FEATURES, "confidence", "ood_score")
BINS = 10
FOREGROUND_LEVEL = 0.1  # canonical intensity above which a pixel counts as tissue, not background
FRACTION_FLOOR = 1e-4  # empty bins get this share, so ln(live / ref) stays finite


def image_features(images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean intensity, contrast (standard deviation) and foreground fraction of canonical uint8 images.

    ``images``: ``(N, H, W)`` or one ``(H, W)`` image; values are reported on [0, 1].
    """
    pixels = np.asarray(images, dtype=np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = pixels[None]
    flat = pixels.reshape(len(pixels), -1)
    return {
        "mean_intensity": flat.mean(axis=1),
        "contrast": flat.std(axis=1),
        "foreground_fraction": (flat > FOREGROUND_LEVEL).mean(axis=1),
    }


def quantile_edges(values: np.ndarray, bins: int = BINS) -> list[float]:
    """Inner bin edges (``bins - 1`` deciles for 10 bins); ties merge bins rather than leave them empty."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to take bin edges from")
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(edge) for edge in np.unique(edges)]


def bin_index(edges: Sequence[float], values: np.ndarray | float) -> np.ndarray:
    """Bin of each value: 0 below the first edge, ``len(edges)`` at or above the last."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, np.float64), side="right")


def fractions(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("no observations")
    return np.maximum(counts / total, FRACTION_FLOOR)


def psi(reference: Sequence[float], live_counts: Sequence[float]) -> float:
    """Population Stability Index of live bin counts against reference fractions (the recording rule's
    formula: both sides floored at ``FRACTION_FLOOR``)."""
    ref = np.maximum(np.asarray(reference, dtype=np.float64), FRACTION_FLOOR)
    live = fractions(np.asarray(live_counts))
    if ref.shape != live.shape:
        raise ValueError(f"{len(ref)} reference bins but {len(live)} live bins")
    return float(np.sum((live - ref) * np.log(live / ref)))


@dataclass
class MonitoringReference:
    """What a model version expects to see: per-feature bin edges and fractions, the predicted-class mix,
    and the OOD threshold. ``sources`` says which split and how many images each part came from."""

    edges: dict[str, list[float]]
    fractions: dict[str, list[float]]
    class_fractions: dict[str, float]
    ood_threshold: float | None = None
    ood_target_fpr: float | None = None
    sources: dict = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        features: Mapping[str, np.ndarray],
        predicted: np.ndarray,
        class_names: Sequence[str],
        sources: dict | None = None,
        ood_threshold: float | None = None,
        ood_target_fpr: float | None = None,
    ) -> MonitoringReference:
        edges, shares = {}, {}
        for name, values in features.items():
            edges[name] = quantile_edges(values)
            counts = np.bincount(bin_index(edges[name], values), minlength=len(edges[name]) + 1)
            shares[name] = [round(float(x), 6) for x in fractions(counts)]
        class_counts = np.bincount(np.asarray(predicted), minlength=len(class_names))
        class_shares = fractions(class_counts)
        return cls(
            edges=edges,
            fractions=shares,
            class_fractions={
                name: round(float(x), 6) for name, x in zip(class_names, class_shares, strict=True)
            },
            ood_threshold=ood_threshold,
            ood_target_fpr=ood_target_fpr,
            sources=sources or {},
        )

    def bin_of(self, feature: str, value: float) -> int:
        return int(bin_index(self.edges[feature], value))

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / REFERENCE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> MonitoringReference | None:
        """The folder's reference, or None for a model published before monitoring existed."""
        path = Path(folder) / REFERENCE_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


__all__ = [
    "BINS",
    "FEATURES",
    "IMAGE_FEATURES",
    "REFERENCE_FILE",
    "MonitoringReference",
    "bin_index",
    "fractions",
    "image_features",
    "psi",
    "quantile_edges",
]
