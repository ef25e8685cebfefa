"""Drift statistics: bin edges, bins, PSI by hand, the reference's round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neurovit.drift import (
    FRACTION_FLOOR,
    MonitoringReference,
    bin_index,
    image_features,
    psi,
    quantile_edges,
)


def test_decile_edges_give_ten_equal_bins():
    values = np.arange(1000, dtype=float)
    edges = quantile_edges(values)
    assert len(edges) == 9
    counts = np.bincount(bin_index(edges, values), minlength=10)
    assert counts.tolist() == [100] * 10


def test_tied_values_merge_bins_instead_of_leaving_them_empty():
    values = np.array([0.0] * 90 + [1.0] * 10)
    edges = quantile_edges(values)
    assert edges == sorted(set(edges))
    counts = np.bincount(bin_index(edges, values), minlength=len(edges) + 1)
    assert counts.sum() == 100 and (counts > 0).sum() >= 2


def test_bin_index_edges_are_left_closed():
    edges = [0.2, 0.5]
    assert bin_index(edges, [0.1, 0.2, 0.49, 0.5, 0.9]).tolist() == [0, 1, 1, 2, 2]


def test_psi_matches_a_hand_computation():
    reference = [0.5, 0.5]
    live = [80, 20]  # shares 0.8, 0.2
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(reference, live) == pytest.approx(expected)
    assert psi(reference, [50, 50]) == pytest.approx(0.0)


def test_psi_stays_finite_when_a_live_bin_is_empty():
    value = psi([0.5, 0.5], [10, 0])
    floor = FRACTION_FLOOR
    expected = (1.0 - 0.5) * math.log(1.0 / 0.5) + (floor - 0.5) * math.log(floor / 0.5)
    assert math.isfinite(value) and value == pytest.approx(expected)


def test_psi_refuses_mismatched_bins():
    with pytest.raises(ValueError, match="2 reference bins but 3 live bins"):
        psi([0.5, 0.5], [1, 2, 3])


def test_image_features_on_known_images():
    black = np.zeros((8, 8), np.uint8)
    half = np.zeros((8, 8), np.uint8)
    half[:, 4:] = 255
    features = image_features(np.stack([black, half]))
    assert features["mean_intensity"].tolist() == pytest.approx([0.0, 0.5])
    assert features["contrast"].tolist() == pytest.approx([0.0, 0.5])
    assert features["foreground_fraction"].tolist() == pytest.approx([0.0, 0.5])


def test_reference_round_trip_and_bins(tmp_path):
    rng = np.random.default_rng(0)
    features = {"mean_intensity": rng.random(500), "confidence": rng.random(500) * 0.5 + 0.5}
    reference = MonitoringReference.build(
        features,
        predicted=np.array([0] * 300 + [1] * 200),
        class_names=["a", "b", "c"],
        ood_threshold=3.5,
        ood_target_fpr=0.03,
    )
    assert reference.class_fractions["a"] == pytest.approx(0.6)
    assert reference.class_fractions["c"] == pytest.approx(FRACTION_FLOOR)  # never 0: ln(live/0) is infinite
    assert sum(reference.fractions["mean_intensity"]) == pytest.approx(1.0, abs=1e-3)
    assert reference.bin_of("confidence", 0.49) == 0 and reference.bin_of("confidence", 1.0) == 9
    reference.save(tmp_path)
    assert MonitoringReference.load(tmp_path) == reference
    assert MonitoringReference.load(tmp_path / "elsewhere") is None
