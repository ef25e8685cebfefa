"""The monitoring reference a version is published with: drift bins, class mix and the OOD scorer.

Written into the calibrated model folder (``monitoring.json`` and ``ood.safetensors``), so it travels in
the archive and the manifest covers it. Which split feeds which part, and why:
- image features and the predicted-class mix: the training split (the population the model learnt);
- confidence and OOD score: the validation split, because on its own training images a model is more
  confident and closer to its class means than on any new slice, so a train reference would report drift
  on perfectly ordinary traffic;
- the OOD scorer is fitted on training features and normalised on validation ones; its threshold is the
  validation scores' quantile for ``target_fpr``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neurovit.drift import MonitoringReference, image_features
from neurovit.model import LoadedModel, load_model
from neurovit.ood import OODScorer, capture_features, stack_features, threshold_for_fpr
from training.train import BatchLoader, pick_device

DEFAULT_TARGET_FPR = 0.03  # margin under the 5% of real slices we allow to be flagged on unseen data


@torch.no_grad()
def logits_and_features(loaded: LoadedModel, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Raw logits ``(N, classes)`` and the OOD features (``neurovit.ood.FEATURES``) of canonical images."""
    device = next(loaded.model.parameters()).device
    labels = np.zeros(len(images), dtype=np.int64)
    loader = BatchLoader(images, labels, 256, loaded.preprocessing, device, shuffle=False, drop_last=False)
    logits = []
    with capture_features(loaded.model) as features:
        for batch, _ in loader.batches():
            logits.append(loaded.model(batch).logits.float().cpu())
    return torch.cat(logits).numpy(), stack_features(features)


def write_monitoring_reference(
    model_dir: str | Path,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    target_fpr: float = DEFAULT_TARGET_FPR,
) -> dict:
    """Fit the OOD scorer and the drift reference of the calibrated model in ``model_dir`` (its class names
    and calibration come from the folder); save both there. Returns a summary for the evaluation's metrics
    (threshold, validation flag rate)."""
    (train_images, train_labels), (val_images, _) = train, val
    loaded = load_model(model_dir, device=pick_device("auto"))
    train_logits, train_features = logits_and_features(loaded, train_images)
    val_logits, val_features = logits_and_features(loaded, val_images)

    scorer = OODScorer.fit(train_features, train_labels, val_features, target_fpr)
    val_scores = scorer.score(val_features)
    threshold = threshold_for_fpr(val_scores, target_fpr)
    val_confidence = loaded.info.probabilities(torch.from_numpy(val_logits)).max(axis=1)  # as served

    features = {
        **image_features(train_images),
        "confidence": val_confidence,
        "ood_score": val_scores,
    }
    reference = MonitoringReference.build(
        features,
        predicted=train_logits.argmax(axis=1),
        class_names=loaded.class_names,
        sources={
            "image_features": f"train split, {len(train_images)} images",
            "class_mix": f"predictions on the train split, {len(train_images)} images",
            "confidence": f"val split, {len(val_images)} images",
            "ood_score": f"val split, {len(val_images)} images",
        },
        ood_threshold=threshold,
        ood_target_fpr=target_fpr,
    )
    scorer.save(model_dir)
    reference.save(model_dir)
    return {
        "ood_threshold": threshold,
        "ood_target_fpr": target_fpr,
        "ood_val_flagged_rate": float(np.mean(val_scores > threshold)),
    }


__all__ = ["DEFAULT_TARGET_FPR", "logits_and_features", "write_monitoring_reference"]
