"""Where the model looked: saliency maps for NeuroViT predictions, for training, evaluation and serving.

Every explainer takes the model and a preprocessed batch ``(N, 1, H, W)`` and returns maps on the patch grid,
``(N, g, g)`` float32 numpy in [0, 1] (each map min-max scaled; a constant map becomes zeros), for a target
class per image that defaults to the predicted one.

- ``rollout``: attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"),
  checked against jacobgil/vit-explain ``vit_rollout.py``; class-agnostic; the service accumulates it from
  the third layer (``ROLLOUT_START_LAYER``, chosen on validation slices). ``rollout_from_attentions`` works
  on the attentions of a forward pass the caller already ran, so serving gets it for the price of a few tiny
  matrix products.
- ``gradcam``: Grad-CAM (Selvaraju et al. 2017) on the ViT's tokens, as in jacobgil/pytorch-grad-cam
  ``usage_examples/vit_example.py`` (``target_layers = [model.blocks[-1].norm1]``). Scored for comparison:
  on real tumours it pointed at the tumour no more often than a map peaking at the centre.
- ``hirescam``: HiResCAM (Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations
  of convolutional neural networks"), pytorch-grad-cam's ``HiResCAM``: the same tokens and gradients, but
  multiplied element-wise before summing over channels instead of weighting each channel by its gradient
  averaged over all tokens. Scored beside Grad-CAM, not served: on the demo models it points at the lesion
  about as often (more often on some), but ranks the rest of the slice worse, so it loses deletion to the
  centred Gaussian where Grad-CAM beats it (README, "Explanations").
- ``gradient_rollout``: class-specific gradient-weighted rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic
  Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", rules 5 and 6),
  checked against hila-chefer/Transformer-MM-Explainability ``Transformer_MM_explainability_ViT.ipynb``.
  This is the service's class heat map (``neurovit.serving.EXPLANATIONS``; docs/explainability.md).
- ``lrp``: conservative layer-wise relevance propagation (Ali et al., ICML 2022; ``neurovit.explain_lrp``)
  to the tokens entering the encoder, signed. Scored for comparison, not served: on the bench models it
  points at real tumours less often than gradient rollout.

The other gradient methods share one forward and one backward per batch (the sum of each image's target
logit: images do not interact in eval mode, so each gets its own gradient); ``lrp`` runs its own, because
its hooks change the gradients. ``torch.autograd.grad`` differentiates only the tensors needed, so nothing
is accumulated in the parameters' ``.grad``.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image
from torch import nn

from neurovit.errors import NeuroVitError
from neurovit.explain_lrp import token_relevance

METHODS = ("rollout", "gradcam", "hirescam", "gradient_rollout", "lrp")
HEAD_FUSIONS = ("mean", "max", "min")
GRADIENT_METHODS = ("gradcam", "hirescam", "gradient_rollout", "lrp")
TOKEN_METHODS = ("gradcam", "hirescam")  # the CAMs on the last block's input tokens
# Rollout as the service and the scores run it: mean head fusion, nothing discarded, accumulated from the
# third layer on (``start_layer``, as gradient rollout below and the CLIP notebook). Chosen on the validation
# slices of two demo models of the current recipe (seeds 0 and 1) among start layers 0-3 (0-based), each
# with discard 0 or 0.9: pointing game 0.711 -> 0.842 and 0.394 -> 0.629, deletion (black) 0.258 -> 0.226
# and 0.293 -> 0.282 against all layers with discard 0.9 (the earlier choice, vit-explain's example value;
# max fusion helped one older model and hurt another).
ROLLOUT_HEAD_FUSION = "mean"
ROLLOUT_DISCARD_RATIO = 0.0
ROLLOUT_START_LAYER = 2
# Gradient rollout as the service and the scores run it: accumulated from the third layer on, as rollout
# (the maintainer's CLIP notebook, Transformer-MM-Explainability ``interpret``, has this ``start_layer``
# and starts at the last layer by default). Chosen by black-cell deletion on the validation slices
# (brain-tumor-mri, 235 per run) of two bench-train runs (seeds 0 and 1) among start layers 0-3: 0.349 ->
# 0.327 and 0.391 -> 0.369 against the second layer (the earlier choice, made on older demo models), the
# best of the four on both; then confirmed on real tumours those runs never saw (docs/explainability.md).
GRADIENT_ROLLOUT_START_LAYER = 2

Target = int | Sequence[int] | np.ndarray | torch.Tensor | None


class ExplainError(NeuroVitError, ValueError):
    """An explanation cannot be computed from what was given (bad target, method, shapes, no attentions)."""


# ------------------------------------------------------------------------------------------------------------
# Pure map computations (tensors in, normalised numpy out): what the tests check by hand.


def normalise_maps(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max scale each map of a batch ``(N, ...)`` to [0, 1]; a constant map becomes all zeros."""
    array = torch.as_tensor(maps).detach().to("cpu", torch.float64).numpy()
    flat = array.reshape(array.shape[0], -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = high - low
    constant = span <= 1e-12 * np.maximum(1.0, np.abs(high))
    scaled = np.where(constant, 0.0, (flat - low) / np.where(constant, 1.0, span))
    return np.clip(scaled, 0.0, 1.0).reshape(array.shape).astype(np.float32)


def _patch_grid(token_maps: torch.Tensor) -> np.ndarray:
    """``(N, 1 + g*g)`` token scores (CLS first) -> normalised ``(N, g, g)`` maps over the patches."""
    patches = token_maps[:, 1:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1] or side == 0:
        raise ExplainError(
            f"expected 1 CLS token + a square number of patch tokens, got {token_maps.shape[1]} tokens"
        )
    return normalise_maps(patches.reshape(-1, side, side))


def _check_attentions(attentions: Sequence[torch.Tensor], name: str = "attentions") -> None:
    if len(attentions) == 0:
        raise ExplainError(
            f"no {name}: the model must run with eager attention and output_attentions=True "
            "(SDPA returns none; load with attn_implementation='eager', as neurovit.model.load_model does)"
        )
    shape = tuple(attentions[0].shape)
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise ExplainError(f"expected {name} of shape (N, heads, T, T), got {shape}")
    for layer, attention in enumerate(attentions):
        if tuple(attention.shape) != shape:
            raise ExplainError(f"{name}[{layer}] has shape {tuple(attention.shape)}, layer 0 has {shape}")


def _check_rollout_options(head_fusion: str, discard_ratio: float) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise ExplainError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ExplainError(f"discard_ratio must be in [0, 1), got {discard_ratio}")


def _check_start_layer(start_layer: int, layers: int) -> None:
    if not 0 <= start_layer < layers:
        raise ExplainError(f"start_layer must be in [0, {layers}), got {start_layer}")


def served_start_layer(start_layer: int, layers: int) -> int:
    """The layer a map starts at on a model with ``layers`` layers: ``start_layer``, or the last layer of a
    model too shallow for it (a tiny test model or checkpoint), so training and serving read the same
    layers."""
    return min(start_layer, layers - 1)


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)  # half/bfloat16 -> float32; float64 stays


def rollout_from_attentions(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> np.ndarray:
    """Attention rollout from per-layer attention probabilities ``[(N, heads, T, T)] * layers``.

    Per layer from ``start_layer`` (0: every layer, as the paper) to the last: fuse heads (mean/max/min),
    optionally zero the ``discard_ratio`` weakest fused weights of each image (never the CLS->CLS entry, as
    vit-explain), add the identity for the residual path, renormalise rows, and multiply into the running
    product ``R <- A @ R`` from ``R = I``. The CLS row over the patches is the map.
    Unlike vit-explain this works per batch, renormalises rows (``keepdim``: its issue #16 divides columns),
    and leaves the given tensors untouched (its discard writes through a view).
    """
    _check_attentions(attentions)
    _check_rollout_options(head_fusion, discard_ratio)
    _check_start_layer(start_layer, len(attentions))
    with torch.no_grad():
        first = attentions[0]
        batch, _, tokens, _ = first.shape
        eye = torch.eye(tokens, dtype=_work_dtype(first), device=first.device)
        result = eye.expand(batch, tokens, tokens)
        for attention in attentions[start_layer:]:
            attention = attention.detach().to(eye.dtype)
            if head_fusion == "mean":
                fused = attention.mean(dim=1)
            elif head_fusion == "max":
                fused = attention.amax(dim=1)
            else:
                fused = attention.amin(dim=1)
            count = int(tokens * tokens * discard_ratio)
            if count:
                flat = fused.reshape(batch, -1)
                weakest = flat.topk(count, dim=-1, largest=False).indices
                drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, weakest, True)
                drop[:, 0] = False  # flat index 0 is CLS->CLS
                fused = flat.masked_fill(drop, 0.0).reshape(batch, tokens, tokens)
            augmented = fused + eye
            augmented = augmented / augmented.sum(dim=-1, keepdim=True)
            result = augmented @ result
        return _patch_grid(result[:, 0])


def rollout_relevance(
    attentions: Sequence[torch.Tensor], start_layer: int = ROLLOUT_START_LAYER
) -> torch.Tensor:
    """The served rollout (mean head fusion, nothing discarded) as a differentiable tensor: the CLS row of
    ``prod_l (A_l + I) / 2`` from ``start_layer`` to the last layer, over the patch tokens, ``(N, T - 1)``,
    unnormalised. ``rollout_from_attentions`` computes the same map without gradients (and with its other
    options); training uses this one to guide the map it will serve (``training.guide``).
    Mean-fused rows sum to 1, so ``(A + I) / 2`` needs no renormalisation.
    """
    _check_attentions(attentions)
    _check_start_layer(start_layer, len(attentions))
    first = attentions[0]
    tokens = first.shape[-1]
    eye = torch.eye(tokens, dtype=_work_dtype(first), device=first.device)
    result = None
    for attention in attentions[start_layer:]:
        augmented = (attention.to(eye.dtype).mean(dim=1) + eye) / 2
        result = augmented if result is None else augmented @ result
    return result[:, 0, 1:]


def gradient_rollout_from_attentions(
    attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor], start_layer: int = 0
) -> np.ndarray:
    """Chefer et al. (ICCV 2021) relevance from attentions and their gradients w.r.t. the target logit.

    Rule 5: ``A_bar = mean_heads((grad * A).clamp(min=0))`` (clamped before the head mean, as the notebook).
    Rule 6: ``R <- R + A_bar @ R`` from ``R = I``, layer ``start_layer`` to the last (0: every layer, as the
    paper; the CLIP notebook's ``start_layer`` skips the ones before). The map is ``R[CLS, patches]``.
    No row normalisation: the maintainer keeps it for the bi-modal rules only (Transformer-MM issue #9).
    """
    _check_attentions(attentions)
    _check_attentions(gradients, "gradients")
    if len(gradients) != len(attentions) or gradients[0].shape != attentions[0].shape:
        raise ExplainError(
            f"need one gradient per attention of the same shape, got {len(gradients)} x "
            f"{tuple(gradients[0].shape)} for {len(attentions)} x {tuple(attentions[0].shape)}"
        )
    _check_start_layer(start_layer, len(attentions))
    with torch.no_grad():
        first = attentions[0]
        batch, _, tokens, _ = first.shape
        dtype = _work_dtype(first)
        relevance = torch.eye(tokens, dtype=dtype, device=first.device).expand(batch, tokens, tokens)
        for attention, gradient in zip(attentions[start_layer:], gradients[start_layer:], strict=True):
            weighted = (gradient.detach().to(dtype) * attention.detach().to(dtype)).clamp(min=0).mean(dim=1)
            relevance = relevance + weighted @ relevance
        return _patch_grid(relevance[:, 0])


def _check_token_gradients(tokens: torch.Tensor, gradients: torch.Tensor) -> None:
    if tokens.ndim != 3 or tokens.shape != gradients.shape:
        raise ExplainError(
            f"expected tokens and gradients of one shape (N, T, C), got {tuple(tokens.shape)} "
            f"and {tuple(gradients.shape)}"
        )


def grad_cam_from_tokens(tokens: torch.Tensor, gradients: torch.Tensor) -> np.ndarray:
    """Grad-CAM on token activations ``(N, T, C)`` and their gradients: CLS dropped, channel weights = mean
    gradient over the patch tokens, ``ReLU(sum_c w_c * A_c)`` per patch."""
    _check_token_gradients(tokens, gradients)
    with torch.no_grad():
        dtype = _work_dtype(tokens)
        activations, grads = tokens.detach().to(dtype), gradients.detach().to(dtype)
        weights = grads[:, 1:].mean(dim=1, keepdim=True)  # (N, 1, C)
        cam = (activations * weights).sum(dim=-1).clamp(min=0)  # (N, T); the CLS entry is dropped below
        return _patch_grid(cam)


def hires_cam_from_tokens(tokens: torch.Tensor, gradients: torch.Tensor) -> np.ndarray:
    """HiResCAM on token activations ``(N, T, C)`` and their gradients: ``ReLU(sum_c A_c * dY/dA_c)`` per
    patch token (each token weighted by its own gradient), CLS dropped."""
    _check_token_gradients(tokens, gradients)
    with torch.no_grad():
        dtype = _work_dtype(tokens)
        cam = (tokens.detach().to(dtype) * gradients.detach().to(dtype)).sum(dim=-1).clamp(min=0)
        return _patch_grid(cam)


# ------------------------------------------------------------------------------------------------------------
# Model-level explainers.


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    vit = model.vit
    layers = getattr(vit, "layers", None)  # transformers >= 5.9 ("Refactor ViT")
    return layers if layers is not None else vit.encoder.layer  # older layout


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (dropout off, BatchNorm on running statistics) and give the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def resolve_target(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """The class index per image ``(N,)``: the predicted one when ``target`` is None, else ``target``
    (one int for every image, or one per image)."""
    batch, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=-1)
    values = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target)
    if values.dtype == bool or not np.issubdtype(values.dtype, np.integer):
        raise ExplainError(f"target must be an int or a list of ints, got {target!r}")
    if values.ndim == 0:
        values = np.full(batch, int(values))
    if values.shape != (batch,):
        raise ExplainError(f"target needs one class per image ({batch}), got shape {values.shape}")
    if values.min() < 0 or values.max() >= num_classes:
        raise ExplainError(f"target classes must be in [0, {num_classes}), got {values.tolist()}")
    return torch.as_tensor(values, dtype=torch.long, device=logits.device)


def explain(
    model: nn.Module,
    pixel_values: torch.Tensor,
    methods: Sequence[str] = METHODS,
    target: Target = None,
    head_fusion: str = ROLLOUT_HEAD_FUSION,
    discard_ratio: float = ROLLOUT_DISCARD_RATIO,
    timings: dict[str, float] | None = None,
    rollout_start_layer: int = ROLLOUT_START_LAYER,
) -> dict[str, np.ndarray]:
    """All requested maps from one forward (and, for the gradient methods, one backward) pass.

    ``timings``, when given, receives the seconds spent in the forward (``"forward"``) and in the backward
    plus the maps (``"explanation"``), for the serving metrics.

    Returns ``{method: (N, g, g) maps}`` plus ``"target"`` (the class index each map explains, ``(N,)``) and
    ``"logits"`` (``(N, classes)``, the forward's raw logits, so a caller need not run the model again).
    ``rollout`` ignores ``target``: it is class-agnostic.
    """
    methods = tuple(methods)
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise ExplainError(f"methods must be a non-empty subset of {METHODS}, got {methods}")
    if "rollout" in methods:
        _check_rollout_options(head_fusion, discard_ratio)  # before paying for the forward
    if pixel_values.ndim != 4:
        raise ExplainError(f"expected pixel_values of shape (N, C, H, W), got {tuple(pixel_values.shape)}")
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        raise ExplainError(
            f"attention maps need eager attention, the model uses {model.config._attn_implementation!r}: "
            "load it with attn_implementation='eager' (neurovit.model.load_model does)"
        )
    if any(method in GRADIENT_METHODS for method in methods) and torch.is_inference_mode_enabled():
        raise ExplainError(f"{GRADIENT_METHODS} need autograd: call explain outside torch.inference_mode()")
    # lrp runs its own forward and backward (below): its hooks change the gradients the others read
    needs_grad = any(method in GRADIENT_METHODS and method != "lrp" for method in methods)
    needs_tokens = any(method in TOKEN_METHODS for method in methods)

    captured: dict[str, torch.Tensor] = {}
    handle = None
    if needs_tokens:
        # CAM activations: the output of the LAST layer's layernorm_before, i.e. the tokens entering the
        # final attention (pytorch-grad-cam's ``blocks[-1].norm1``). Not the last layer's output nor the input
        # of the final layernorm (the same tensor here): only CLS feeds the classifier, so after the last
        # attention the patch tokens get exactly zero gradient and the CAM would be blank.
        last = _encoder_layers(model)[-1]
        handle = last.layernorm_before.register_forward_hook(
            lambda module, args, output: captured.__setitem__("tokens", output)
        )
    try:
        with _eval_mode(model), torch.set_grad_enabled(needs_grad):
            # A fresh input that requires grad keeps a graph even if the parameters are frozen; backward
            # still stops at the tensors asked for, so it never runs through the stem.
            inputs = pixel_values.detach().clone().requires_grad_(needs_grad)
            started = time.perf_counter()
            outputs = model(inputs, output_attentions=True)
            forward_done = time.perf_counter()
            attentions = list(outputs.attentions)
            _check_attentions(attentions)
            targets = resolve_target(outputs.logits.detach(), target)
            wanted: list[torch.Tensor] = []
            if "gradient_rollout" in methods:
                wanted += attentions  # the softmax outputs themselves: eval-mode dropout returns its input
            if needs_tokens:
                wanted.append(captured["tokens"])
            gradients: list[torch.Tensor] = []
            if wanted:
                score = outputs.logits.gather(1, targets[:, None]).sum()
                gradients = list(torch.autograd.grad(score, wanted))
    finally:
        if handle is not None:
            handle.remove()
    if "lrp" in methods:  # after the CAM hook is gone: this pass must not replace its tokens
        with _eval_mode(model):
            relevance = token_relevance(model, pixel_values, targets)

    result: dict[str, np.ndarray] = {}
    for method in methods:
        if method == "rollout":
            start = served_start_layer(rollout_start_layer, len(attentions))
            result[method] = rollout_from_attentions(attentions, head_fusion, discard_ratio, start)
        elif method == "gradient_rollout":
            start = served_start_layer(GRADIENT_ROLLOUT_START_LAYER, len(attentions))
            result[method] = gradient_rollout_from_attentions(attentions, gradients[: len(attentions)], start)
        elif method == "lrp":
            result[method] = _patch_grid(relevance)
        elif method == "hirescam":
            result[method] = hires_cam_from_tokens(captured["tokens"], gradients[-1])
        else:
            result[method] = grad_cam_from_tokens(captured["tokens"], gradients[-1])
    result["target"] = targets.cpu().numpy()
    result["logits"] = outputs.logits.detach().float().cpu().numpy()
    if timings is not None:
        timings["forward"] = forward_done - started
        timings["explanation"] = time.perf_counter() - forward_done
    return result


def attention_rollout(
    model: nn.Module,
    pixel_values: torch.Tensor,
    head_fusion: str = ROLLOUT_HEAD_FUSION,
    discard_ratio: float = ROLLOUT_DISCARD_RATIO,
    start_layer: int = ROLLOUT_START_LAYER,
) -> np.ndarray:
    """Attention rollout maps ``(N, g, g)``; class-agnostic (a forward pass without gradients)."""
    settings = {"head_fusion": head_fusion, "discard_ratio": discard_ratio}
    return explain(model, pixel_values, ("rollout",), rollout_start_layer=start_layer, **settings)["rollout"]


def grad_cam(model: nn.Module, pixel_values: torch.Tensor, target: Target = None) -> np.ndarray:
    """Grad-CAM maps ``(N, g, g)`` for ``target`` (default: the predicted class)."""
    return explain(model, pixel_values, ("gradcam",), target=target)["gradcam"]


def hires_cam(model: nn.Module, pixel_values: torch.Tensor, target: Target = None) -> np.ndarray:
    """HiResCAM maps ``(N, g, g)`` for ``target`` (default: the predicted class)."""
    return explain(model, pixel_values, ("hirescam",), target=target)["hirescam"]


def gradient_rollout(model: nn.Module, pixel_values: torch.Tensor, target: Target = None) -> np.ndarray:
    """Chefer et al. class-specific rollout maps ``(N, g, g)`` for ``target`` (default: predicted class)."""
    return explain(model, pixel_values, ("gradient_rollout",), target=target)["gradient_rollout"]


# ------------------------------------------------------------------------------------------------------------
# Rendering.


def upsample(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map ``(g, g)`` or maps ``(N, g, g)`` to ``size`` (side, or (height, width))."""
    array = np.asarray(maps, dtype=np.float32)
    if array.ndim not in (2, 3):
        raise ExplainError(f"expected a map (g, g) or maps (N, g, g), got shape {array.shape}")
    height, width = (size, size) if isinstance(size, int) else size
    batch = torch.from_numpy(array.reshape(-1, 1, *array.shape[-2:]))
    resized = nn.functional.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False)
    return resized.reshape(*array.shape[:-2], height, width).numpy()


def overlay_png(image: np.ndarray, grid_map: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> bytes:
    """PNG bytes of ``grid_map`` (values in [0, 1]) colour-mapped, upsampled and blended over the grey uint8
    ``image`` (H, W): an RGB image of the input's size, ``(1 - alpha) * grey + alpha * heat``."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ExplainError(f"expected a grey uint8 image (H, W), got {image.dtype} {image.shape}")
    if np.ndim(grid_map) != 2:
        raise ExplainError(f"expected one map (g, g), got shape {np.shape(grid_map)}")
    if not 0.0 <= alpha <= 1.0:
        raise ExplainError(f"alpha must be in [0, 1], got {alpha}")
    if colormap not in colormaps:
        raise ExplainError(f"unknown matplotlib colormap {colormap!r}")
    heat = np.clip(upsample(grid_map, image.shape), 0.0, 1.0)
    rgb_heat = colormaps[colormap](heat)[..., :3]
    grey = (image.astype(np.float32) / 255.0)[..., None]
    blended = (1.0 - alpha) * grey + alpha * rgb_heat
    buffer = io.BytesIO()
    Image.fromarray(np.round(blended * 255.0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = [
    "GRADIENT_METHODS",
    "GRADIENT_ROLLOUT_START_LAYER",
    "HEAD_FUSIONS",
    "METHODS",
    "ROLLOUT_DISCARD_RATIO",
    "ROLLOUT_HEAD_FUSION",
    "ROLLOUT_START_LAYER",
    "TOKEN_METHODS",
    "ExplainError",
    "attention_rollout",
    "explain",
    "grad_cam",
    "grad_cam_from_tokens",
    "gradient_rollout",
    "gradient_rollout_from_attentions",
    "hires_cam",
    "hires_cam_from_tokens",
    "normalise_maps",
    "overlay_png",
    "resolve_target",
    "rollout_from_attentions",
    "rollout_relevance",
    "served_start_layer",
    "upsample",
]
