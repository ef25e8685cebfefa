"""Mixed precision: the autocast dtype of a training step, and a loss scaler where fp16 needs one.

``amp`` (``TrainConfig.amp``): "auto" is bf16 on a CUDA device that has it (Ampere and later), fp16 with
loss scaling on an older one (T4, V100), and fp32 on the CPU, where the recipes were measured; "bf16",
"fp16" and "none" force one (bf16 and fp16 autocast run on the CPU too, which is how the tests reach them).
bf16 keeps fp32's exponent range, so it needs no scaler; fp16 underflows small gradients without one.
"""

from __future__ import annotations

import contextlib

import torch

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision ``amp`` means on ``device``: "bf16", "fp16" or "none"."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp != "auto":
        return amp
    if device.type != "cuda":
        return "none"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


class MixedPrecision:
    """Autocast for the forward, and for fp16 a ``GradScaler`` around backward and the optimiser step.

    A step: ``with precision.autocast(): loss = ...``; ``precision.backward(loss)``;
    ``precision.unscale(optimizer)`` before clipping gradients; ``precision.step(optimizer)``.
    """

    def __init__(self, amp: str, device: torch.device) -> None:
        self.mode = resolve_amp(amp, device)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if self.mode == "fp16" else None

    def autocast(self):
        if self.mode == "none":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=_DTYPES[self.mode])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (clipping must see that one)."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step; under fp16 skipped when a gradient overflowed, and the scale adapted."""
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


__all__ = ["AMP_CHOICES", "MixedPrecision", "resolve_amp"]
