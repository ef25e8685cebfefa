"""Mixed precision: what "auto" means per device, and bf16 and fp16 steps that train (both autocast on the
CPU, which is where these tests reach the code a GPU runs); a real-GPU run is marked ``gpu``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurovit.model import ModelConfig, load_model
from neurovit.preprocessing import PreprocessConfig
from training.precision import MixedPrecision, resolve_amp
from training.train import TrainConfig, train

TINY = ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2)


@pytest.mark.parametrize(
    ("amp", "device", "bf16_supported", "expected"),
    [
        ("auto", "cpu", True, "none"),  # the CPU recipes were measured in fp32
        ("auto", "cuda", True, "bf16"),
        ("auto", "cuda", False, "fp16"),  # T4, V100: no bf16
        ("bf16", "cpu", False, "bf16"),
        ("fp16", "cuda", True, "fp16"),
        ("none", "cuda", True, "none"),
    ],
)
def test_auto_picks_what_the_device_has(monkeypatch, amp, device, bf16_supported, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    assert resolve_amp(amp, torch.device(device)) == expected


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("fp8", torch.device("cpu"))


def _step(precision: MixedPrecision, model: torch.nn.Module, scale: float = 1.0) -> torch.Tensor:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with precision.autocast():
        out = model(torch.ones(4, 8))
    loss = out.float().pow(2).mean() * scale
    optimizer.zero_grad()
    precision.backward(loss)
    precision.unscale(optimizer)
    precision.step(optimizer)
    return out


@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_a_mixed_precision_step_computes_in_half_and_updates_fp32_weights(amp, dtype) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    before = model.weight.detach().clone()
    out = _step(MixedPrecision(amp, torch.device("cpu")), model)
    assert out.dtype == dtype and model.weight.dtype == torch.float32
    assert not torch.equal(model.weight, before)


def test_fp16_skips_a_step_whose_gradients_overflowed_and_lowers_the_scale() -> None:
    model = torch.nn.Linear(8, 2)
    before = model.weight.detach().clone()
    precision = MixedPrecision("fp16", torch.device("cpu"))
    scale = precision.scaler.get_scale()
    _step(precision, model, scale=float("inf"))
    assert torch.equal(model.weight, before)  # no inf or NaN reached the weights
    assert precision.scaler.get_scale() < scale


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 60, (n, 32, 32)).astype(np.uint8)
    images[labels == 1, 8:24, 8:24] += 150  # a bright square: class 1
    return images, labels


def test_training_runs_under_bf16_autocast_and_saves_fp32_weights(tmp_path) -> None:
    config = TrainConfig(epochs=1, batch_size=16, amp="bf16", model=TINY, device="cpu")
    result = train(
        _blobs(64, 0), _blobs(16, 1), ["a", "b"], PreprocessConfig(image_size=32), config, tmp_path
    )
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])
    assert next(load_model(result.best_dir).model.parameters()).dtype == torch.float32


@pytest.mark.gpu
def test_on_a_gpu_auto_trains_in_half_precision(tmp_path) -> None:
    device = torch.device("cuda")
    assert resolve_amp("auto", device) in ("bf16", "fp16")
    config = TrainConfig(epochs=2, batch_size=16, amp="auto", model=TINY, device="cuda")
    result = train(
        _blobs(128, 0), _blobs(32, 1), ["a", "b"], PreprocessConfig(image_size=32), config, tmp_path
    )
    assert all(np.isfinite(record["train_loss"]) for record in result.history)
    assert result.best_val_accuracy >= 0.9  # a bright square is learnt in two epochs
