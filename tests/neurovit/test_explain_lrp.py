"""Conservative propagation (neurovit.explain_lrp): relevances that add up to the logit, forward values that
the hooks leave alone, and hooks that leave with the context."""

import pytest
import torch

from neurovit.explain_lrp import conservative_propagation, token_relevance
from neurovit.model import ModelConfig, build_model

TINY = ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2)


@pytest.fixture(scope="module")
def linear_model():
    """A model whose only nonlinearities are the softmax, LayerNorm's scale and a ReLU MLP, with no biases:
    with the first two held constant it is linear and homogeneous in its input tokens."""
    torch.manual_seed(0)
    model = build_model(TINY, ["a", "b", "c"]).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif "layernorm" in name:
                parameter.uniform_(0.5, 1.5)  # not all ones, so the weight's place in the rule matters
    for layer in model.vit.layers:
        layer.mlp.activation_fn = torch.nn.ReLU()
    return model


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_token_relevances_add_up_to_the_explained_logit(linear_model, images):
    targets = torch.tensor([2, 0, 1])
    relevance = token_relevance(linear_model, images, targets)
    logits = linear_model(images).logits.detach()
    assert relevance.shape == (3, 1 + (32 // TINY.patch_size) ** 2)
    torch.testing.assert_close(relevance.sum(dim=1), logits[torch.arange(3), targets], rtol=1e-4, atol=1e-4)


def test_plain_gradient_times_input_does_not_add_up(linear_model, images):
    # What the rule fixes: through the softmax and LayerNorm's scale, gradient x input loses the logit.
    captured = {}
    hook = linear_model.vit.embeddings.register_forward_hook(lambda m, a, o: captured.setdefault("t", o))
    logits = linear_model(images.clone().requires_grad_(True)).logits
    hook.remove()
    (gradient,) = torch.autograd.grad(logits[:, 0].sum(), captured["t"])
    plain = (captured["t"] * gradient).sum(dim=(1, 2)).detach()
    assert not torch.allclose(plain, logits[:, 0].detach(), rtol=1e-2, atol=1e-2)


def test_the_hooks_change_no_forward_value_and_leave_with_the_context(linear_model, images):
    before = linear_model(images).logits.detach()
    hooks = sum(len(module._forward_hooks) for module in linear_model.modules())
    with conservative_propagation(linear_model) as captured, torch.no_grad():
        during = linear_model(images).logits
    assert captured["tokens"].shape[:2] == (3, 1 + (32 // TINY.patch_size) ** 2)
    torch.testing.assert_close(during, before)
    assert sum(len(module._forward_hooks) for module in linear_model.modules()) == hooks


def test_relevance_needs_no_trainable_parameters(images):
    frozen = build_model(TINY, ["a", "b"]).eval().requires_grad_(False)
    relevance = token_relevance(frozen, images, torch.tensor([0, 1, 0]))
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
    assert all(parameter.grad is None for parameter in frozen.parameters())
