"""The OOD score: Mahalanobis distance to the nearest class mean of the CLS embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.serving_samples import CLASS_NAMES, TINY

from neurovit.model import build_model
from neurovit.ood import (
    FEATURES,
    MahalanobisScorer,
    OODScorer,
    capture_features,
    stack_features,
    threshold_for_fpr,
)


def gaussian_classes(rng, n=400, dim=6):
    labels = np.arange(n) % 2
    means = np.stack([np.zeros(dim), np.full(dim, 4.0)])
    return means[labels] + rng.normal(size=(n, dim)), labels


def test_points_far_from_every_class_score_higher_than_held_out_members():
    rng = np.random.default_rng(0)
    train, labels = gaussian_classes(rng)
    scorer = MahalanobisScorer.fit(train, labels)
    held_out, _ = gaussian_classes(rng, n=200)
    outliers = rng.normal(size=(200, 6)) + np.array([12.0, -8, 12, -8, 12, -8])
    inside, outside = scorer.score(held_out), scorer.score(outliers)
    assert outside.min() > np.quantile(inside, 0.99)
    # Distance to the NEAREST class: a point at a class mean scores about zero.
    assert scorer.score(scorer.means).max() == pytest.approx(0.0, abs=1e-6)


def test_threshold_flags_the_stated_share_of_in_distribution_scores():
    scores = np.arange(1000, dtype=float)
    threshold = threshold_for_fpr(scores, 0.05)
    assert np.mean(scores > threshold) <= 0.05
    assert np.mean(scores > threshold) > 0.04
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_for_fpr(scores, 0.0)


def test_the_score_is_the_largest_normalised_distance_and_survives_a_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    train = {name: gaussian_classes(rng)[0] for name in FEATURES}
    labels = gaussian_classes(rng)[1]
    val = {name: gaussian_classes(rng, n=100)[0] for name in FEATURES}
    scorer = OODScorer.fit(train, labels, val, target_fpr=0.05)
    for name, component in scorer.scorers.items():  # each layer: 1 at its own 95th validation percentile
        assert np.mean(component.score(val[name]) / scorer.scales[name] > 1) == pytest.approx(0.05, abs=0.011)
    # An image odd in one feature only (e.g. a photo's texture, with a plausible CLS) is still far.
    odd = {name: values[:20].copy() for name, values in val.items()}
    odd["tokens"] += 15.0
    assert scorer.score(odd).min() > np.quantile(scorer.score(val), 0.99)
    scorer.save(tmp_path)
    loaded = OODScorer.load(tmp_path)
    assert np.allclose(loaded.score(odd), scorer.score(odd), rtol=1e-4)
    assert OODScorer.load(tmp_path / "none") is None


def test_a_class_missing_from_the_data_has_no_mean():
    rng = np.random.default_rng(2)
    train, labels = gaussian_classes(rng)
    scorer = MahalanobisScorer.fit(train, labels * 2)  # classes 0 and 2; 1 absent
    assert scorer.means.shape == (2, 6) and np.isfinite(scorer.score(train[:5])).all()


def test_captured_features_are_the_stem_tokens_and_what_the_classifier_reads():
    torch.manual_seed(0)
    model = build_model(TINY, CLASS_NAMES).eval()
    pixels = torch.randn(3, 1, 32, 32)
    with torch.no_grad(), capture_features(model) as captured:
        outputs = model(pixels, output_hidden_states=True)
    features = stack_features(captured)
    assert features["cls"].shape == features["tokens"].shape == (3, TINY.hidden_size)
    with torch.no_grad():
        logits = model.classifier(torch.from_numpy(features["cls"]))
    assert torch.allclose(logits, outputs.logits, atol=1e-5)
    assert np.allclose(features["tokens"], outputs.hidden_states[0][:, 1:].mean(1).numpy(), atol=1e-6)
    with torch.no_grad():
        model(pixels)
    assert len(captured["cls"]) == 1  # the hooks are gone after the block
