"""Relevance propagation through the ViT, scored beside the served maps.

Conservative propagation (CP-LRP; Ali et al., "XAI for Transformers: Better Explanations through
Conservative Propagation", ICML 2022): how much each token entering the encoder contributes to a class
logit. Layer-wise relevance propagation for a transformer, written as gradient x input: in the backward pass
the attention weights and LayerNorm's scale (1 / std) are held constant, so the network is linear in its
input tokens apart from the MLP's nonlinearity and the biases, and the token relevances add up to the logit
(exactly so without biases and with a ReLU MLP, as a test checks). Ali et al. name those two layers as what
breaks plain gradients in transformers; their method came after Chefer et al.'s (CVPR 2021) LRP for ViTs,
with an author in common. ``make eval-explain`` scores it; it is not served: on the bench models it points at
real tumours less often than gradient rollout (docs/explainability.md).

The forward values are unchanged: the hooks recompute each layer's output with detached constants, not
altered ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.models.vit.modeling_vit import ViTAttention


def _layernorm_with_constant_scale(module: nn.LayerNorm, args: tuple, output: torch.Tensor) -> torch.Tensor:
    tokens = args[0]
    centred = tokens - tokens.mean(dim=-1, keepdim=True)
    scale = torch.rsqrt(tokens.var(dim=-1, unbiased=False, keepdim=True) + module.eps).detach()
    normalised = centred * scale
    if module.weight is not None:
        normalised = normalised * module.weight
    if module.bias is not None:
        normalised = normalised + module.bias
    return normalised


def _attention_with_constant_weights(module: ViTAttention, args: tuple, output: tuple) -> tuple:
    hidden = args[0]
    _, weights = output
    if weights is None:
        raise ValueError("conservative propagation needs the attention weights (eager attention)")
    batch, tokens, _ = hidden.shape
    values = module.v_proj(hidden).view(batch, tokens, -1, module.head_dim).transpose(1, 2)
    context = (weights.detach() @ values).transpose(1, 2).reshape(batch, tokens, -1)
    return module.o_proj(context), weights


@contextmanager
def conservative_propagation(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """While open, the model's backward treats attention weights and LayerNorm scales as constants; the
    yielded dict receives the encoder's input tokens (``"tokens"``, ``(N, T, D)``) at each forward."""
    captured: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(_layernorm_with_constant_scale)
        for module in model.modules()
        if isinstance(module, nn.LayerNorm)
    ]
    handles += [
        module.register_forward_hook(_attention_with_constant_weights)
        for module in model.modules()
        if isinstance(module, ViTAttention)
    ]
    handles.append(
        model.vit.embeddings.register_forward_hook(
            lambda module, args, output: captured.__setitem__("tokens", output)
        )
    )
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def token_relevance(model: nn.Module, pixel_values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Relevance ``(N, T)`` of every token (CLS first) for the logit of ``targets`` ``(N,)``: one forward and
    one backward, in the model's current mode (the caller sets eval mode)."""
    with conservative_propagation(model) as captured, torch.enable_grad():
        # an input that requires grad keeps a graph on a frozen model too
        logits = model(pixel_values.detach().clone().requires_grad_(True)).logits
        score = logits.gather(1, targets.to(logits.device)[:, None]).sum()
        (gradient,) = torch.autograd.grad(score, captured["tokens"])
    return (captured["tokens"].detach() * gradient).sum(dim=-1).float()
