"""The core of serving: one request item in, one documented answer (or one typed client error) out.

A server (TorchServe's handler in ``handlers/``, or anything else) does three things with this module:
``parse_item`` turns what the server received for one image into an ``ImageRequest`` (the image's bytes and
the explanations asked for), ``Predictor.prepare`` decodes and canonicalises it, and ``Predictor.predict``
answers a whole batch with one forward pass. Every problem with the input is an ``InvalidInput`` that
carries its HTTP status (400, or 413 for images over the limits) and a message a user can act on;
``error_body`` shapes it. Anything else that goes wrong is a server error and is left to propagate.

Items accepted by ``parse_item`` (what TorchServe hands a handler for one request, or one instance of an
envelope):

- raw image bytes (PNG, JPEG, TIFF, BMP, DICOM): ``{"body": b"..."}``;
- a JSON object ``{"data": "<base64>", "explain": "all"}`` (``{"body": {...}}``, or the bytes of one);
- a multipart form: the image in a part named ``data``, ``file`` or ``image``, optionally an ``explain``
  part; query parameters arrive the same way on the routes where TorchServe forwards them;
- a KServe v1 instance (``TS_SERVICE_ENVELOPE=kserve``): ``{"data": "<base64>", "explain": ...}``,
  ``{"b64": "<base64>"}`` or a bare base64 string;
- a KServe v2 input (``kservev2``): ``{"name", "shape", "datatype": "BYTES", "data": "<base64>",
  "parameters": {"explain": ...}}``; its answer is meant to travel as a JSON string (``ImageRequest.v2``).

The explanation wanted is one of ``none``, ``rollout`` (attention rollout, class-agnostic, computed from the
forward's own attentions), ``heatmap`` (Grad-CAM for the predicted class) or ``all``; a comma-separated list
or a JSON list of names also works. Preprocessing, class names, temperature and the limits come from the
model folder and ``ServingOptions``, never from constants here.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurovit import RESEARCH_DISCLAIMER
from neurovit.data.imageio import DEFAULT_MAX_PIXELS, decode_image
from neurovit.drift import MonitoringReference, image_features
from neurovit.errors import ImageTooLargeError, NeuroVitError, NotASliceError, UnreadableImageError
from neurovit.explain import explain, overlay_png
from neurovit.model import LoadedModel, load_model
from neurovit.ood import OODScorer, capture_features, stack_features
from neurovit.preprocessing import canonicalise, to_tensor

# Names in answers -> methods of neurovit.explain. "heatmap" is Grad-CAM on the ViT's tokens (neurovit.explain
# says why it, and not HiResCAM, is the service's heat map).
EXPLANATIONS = {"rollout": "rollout", "heatmap": "gradcam"}
EXPLAIN_CHOICES = ("none", "rollout", "heatmap", "all")
# Where raw bodies name their explanation on TorchServe's /predictions route, which drops query strings.
EXPLAIN_HEADER = "x-neurovit-explain"
IMAGE_FIELDS = ("data", "file", "image")
JSON_FIELDS = ("data", "explain")
_GRID_DECIMALS = 4


class InvalidInput(NeuroVitError, ValueError):
    """The request cannot be answered as sent; ``status`` is the HTTP status that says so and ``reason``
    one of ``ERROR_REASONS``, the cause the error metrics count (monitoring/METRICS.md)."""

    status = 400
    reason = "bad_request"

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class PayloadTooLarge(InvalidInput):
    """The image is over the byte or pixel limit (a decompression bomb among them)."""

    status = 413
    reason = "too_large"


ERROR_REASONS = (
    "empty_body",
    "bad_json",
    "bad_base64",
    "bad_request",
    "unknown_explanation",
    "too_large",
    "undecodable_image",
    "not_2d",
)


@dataclass(frozen=True)
class ServingOptions:
    """Limits and rendering settings of the service (TorchServe reads them from the archive's model config,
    section ``handler``).

    Args:
        max_image_bytes: largest image file accepted, in bytes (after base64 decoding).
        max_image_pixels: largest image accepted, in pixels, checked from the header before decoding.
        overlay_alpha: weight of the heat map over the grey image in the overlays, in [0, 1].
    """

    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    overlay_alpha: float = 0.45

    def __post_init__(self) -> None:
        if self.max_image_bytes < 1 or self.max_image_pixels < 1:
            raise ValueError(
                f"limits must be positive, got max_image_bytes={self.max_image_bytes}, "
                f"max_image_pixels={self.max_image_pixels}"
            )
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {self.overlay_alpha}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ServingOptions:
        """Options from a config section; unknown keys are refused (a typo must not pass silently)."""
        values = dict(values or {})
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown serving options {unknown}; expected some of {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class ImageRequest:
    """One image to answer: its encoded bytes, the explanations asked for (None: the route's default) and
    whether the answer must travel as a JSON string (KServe v2 outputs)."""

    data: bytes
    explain: tuple[str, ...] | None = None
    v2: bool = False


@dataclass(frozen=True)
class PreparedImage:
    """A decoded, canonicalised image (uint8, ``image_size`` square) ready for the model."""

    image: np.ndarray
    explain: tuple[str, ...] | None = None
    v2: bool = False


# ---- request parsing ---------------------------------------------------------------------------------------


def parse_explain(value: Any) -> tuple[str, ...] | None:
    """``none | rollout | heatmap | all``, a comma-separated list or a JSON list of them -> the map names
    (``()`` for none); None when nothing was asked."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        value = _text(value, "explain")
    if isinstance(value, str):
        names = [name.strip().lower() for name in value.split(",")]
    elif isinstance(value, list) and all(isinstance(name, str) for name in value):
        names = [name.strip().lower() for name in value]
    else:
        raise InvalidInput(f"'explain' must be a string or a list of strings, got {type(value).__name__}")
    names = [name for name in names if name]
    unknown = [name for name in names if name not in EXPLAIN_CHOICES]
    if unknown:
        raise InvalidInput(
            f"unknown explanation {unknown[0]!r}: expected one of {', '.join(EXPLAIN_CHOICES)}",
            reason="unknown_explanation",
        )
    if not names and isinstance(value, str):
        return None  # an empty query parameter or field: the default
    if "all" in names:
        return tuple(EXPLANATIONS)
    return tuple(name for name in EXPLANATIONS if name in names)


def decode_base64(value: Any, field: str = "data") -> bytes:
    """Strict base64 (standard or URL-safe alphabet, ``data:`` URL prefix allowed) -> bytes."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        value = value["b64"]
    if isinstance(value, bytes | bytearray):
        value = _text(value, field)
    if not isinstance(value, str):
        raise InvalidInput(f"'{field}' must be a base64 string, got {type(value).__name__}")
    text = "".join(value.split())
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    if not text:
        raise InvalidInput(f"'{field}' is empty: expected a base64-encoded image", reason="empty_body")
    alphabet = b"-_" if ("-" in text or "_" in text) else None
    try:
        return base64.b64decode(text.encode("ascii"), altchars=alphabet, validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as error:
        raise InvalidInput(f"malformed base64 in '{field}': {error}", reason="bad_base64") from error


def parse_item(item: Any, header_explain: str | None = None) -> ImageRequest:
    """What a server received for one image -> ``ImageRequest``; InvalidInput when it holds no image."""
    if isinstance(item, str):  # a KServe v1 instance that is a bare base64 string
        return ImageRequest(decode_base64(item, "instance"), parse_explain(header_explain))
    if isinstance(item, bytes | bytearray):
        return _from_body(bytes(item), None, header_explain)
    if not isinstance(item, dict):
        raise InvalidInput(f"expected an image or a JSON object, got {type(item).__name__}")
    if "datatype" in item and "name" in item:  # a KServe v2 input tensor
        return _from_v2_input(item)
    if "body" in item:
        return _from_body(item["body"], item.get("explain"), header_explain)
    field = next((name for name in IMAGE_FIELDS if item.get(name) is not None), None)
    if field is None and "b64" in item:
        return ImageRequest(decode_base64(item["b64"], "b64"), _explain(item.get("explain"), header_explain))
    if field is None:
        raise InvalidInput(
            f"no image in the request: send the image as the body, as a form part named one of "
            f'{", ".join(IMAGE_FIELDS)}, or as JSON {{"data": "<base64>"}} (got fields {sorted(item)})'
        )
    value = item[field]
    if isinstance(value, bytes | bytearray) and not _is_base64_text(bytes(value)):
        data = bytes(value)  # a file part
    else:
        data = decode_base64(value, field)  # a JSON string, or a form field TorchServe passes as bytes
    return ImageRequest(data, _explain(item.get("explain"), header_explain))


def _explain(value: Any, header_explain: str | None) -> tuple[str, ...] | None:
    chosen = parse_explain(value)
    return chosen if chosen is not None else parse_explain(header_explain)


def _from_body(body: Any, query_explain: Any, header_explain: str | None) -> ImageRequest:
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, bytes | bytearray) and _looks_like_json(bytes(body)):
        try:
            body = json.loads(bytes(body))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidInput(f"malformed JSON body: {error}", reason="bad_json") from error
    if isinstance(body, dict):
        unknown = sorted(set(body) - set(JSON_FIELDS))
        if unknown or "data" not in body:
            raise InvalidInput(
                f'expected a JSON object {{"data": "<base64>", "explain": "none|rollout|heatmap|all"}}, '
                f"got fields {sorted(body)}"
            )
        explain_value = body.get("explain", query_explain)
        return ImageRequest(decode_base64(body["data"]), _explain(explain_value, header_explain))
    if isinstance(body, list):
        raise InvalidInput('expected a JSON object {"data": "<base64>"}, got a JSON list')
    if not isinstance(body, bytes | bytearray):
        raise InvalidInput(f"expected an image or a JSON object, got {type(body).__name__}")
    return ImageRequest(bytes(body), _explain(query_explain, header_explain))


def _from_v2_input(tensor: dict) -> ImageRequest:
    name = tensor.get("name")
    if tensor.get("datatype") != "BYTES":
        raise InvalidInput(
            f"v2 input {name!r} must have datatype BYTES (a base64 image), got {tensor['datatype']!r}"
        )
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"v2 input {name!r}: 'parameters' must be an object")
    data = tensor.get("data")
    if isinstance(data, list):  # the envelope keeps the first element; a direct caller may not
        data = data[0] if data else None
    if data is None:
        raise InvalidInput(f"v2 input {name!r} holds no data: expected one base64-encoded image")
    return ImageRequest(
        decode_base64(data, f"inputs[{name}].data"), parse_explain(parameters.get("explain")), v2=True
    )


def _is_base64_text(data: bytes) -> bool:
    """Base64 text (what a form's text field holds), not image bytes: no image format starts like that."""
    text = b"".join(data[:4096].split())
    if text.startswith(b"data:"):
        return True
    return re.fullmatch(rb"[A-Za-z0-9+/_-]+=*", text) is not None


def _looks_like_json(data: bytes) -> bool:
    is_dicom = data[128:132] == b"DICM"  # a DICOM preamble may hold anything, even a brace
    return not is_dicom and data[:64].lstrip()[:1] in (b"{", b"[")


def _text(value: bytes | bytearray, field: str) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"'{field}' is not UTF-8 text: {error}") from error


# ---- answers -----------------------------------------------------------------------------------------------


def error_body(error: InvalidInput) -> dict:
    """The JSON body of a client error: ``{"error": message, "code": status, "reason": cause}`` (KServe's
    wrapper reads ``error``)."""
    return {"error": error.message, "code": error.status, "reason": error.reason}


def status_phrase(message: str, limit: int = 200) -> str:
    """A message usable as an HTTP reason phrase: printable ASCII, one line, at most ``limit`` characters."""
    text = " ".join(str(message).split())
    text = text.encode("ascii", "replace").decode("ascii")
    return text[: limit - 3] + "..." if len(text) > limit else text


class Predictor:
    """A loaded model with its preprocessing, labels and temperature, answering batches of images."""

    def __init__(
        self,
        loaded: LoadedModel,
        name: str,
        version: str,
        options: ServingOptions | None = None,
        reference: MonitoringReference | None = None,
        ood_scorer: OODScorer | None = None,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model.eval()
        self.name, self.version = name, version
        self.options = options or ServingOptions()
        # Both come with every version the main job publishes; older versions answer with ``ood: null``.
        self.reference, self.ood_scorer = reference, ood_scorer
        if ood_scorer is not None and (reference is None or reference.ood_threshold is None):
            raise ValueError("an OOD scorer needs the monitoring reference's threshold")
        self.last_timings: dict[str, float] = {}  # seconds per stage of the latest ``predict``
        self.device = next(self.model.parameters()).device
        temperature = float(loaded.info.temperature)
        if not temperature > 0:
            raise ValueError(f"the model's temperature must be positive, got {temperature}")
        self.temperature = temperature

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        name: str,
        version: str,
        device: str | torch.device = "cpu",
        options: ServingOptions | None = None,
    ) -> Predictor:
        return cls(
            load_model(model_dir, device=device),
            name,
            version,
            options,
            reference=MonitoringReference.load(model_dir),
            ood_scorer=OODScorer.load(model_dir),
        )

    @property
    def class_names(self) -> list[str]:
        return self.loaded.class_names

    def describe(self) -> dict:
        """What the service answers with: model, classes, calibration, preprocessing, limits, maps."""
        return {
            "model": {"name": self.name, "version": self.version},
            "class_names": self.class_names,
            "temperature": self.temperature,
            "preprocessing": asdict(self.loaded.preprocessing),
            "limits": asdict(self.options),
            "explanations": list(EXPLANATIONS),
            "disclaimer": RESEARCH_DISCLAIMER,
        }

    def prepare(self, request: ImageRequest) -> PreparedImage:
        """Check the limits, decode and canonicalise one image; InvalidInput when it is not one 2-D slice."""
        size, limit = len(request.data), self.options.max_image_bytes
        if size == 0:
            raise InvalidInput("empty body: the file is empty (0 bytes)", reason="empty_body")
        if size > limit:
            raise PayloadTooLarge(f"image too large: {size:,} bytes, more than the limit of {limit:,}")
        try:
            decoded = decode_image(request.data, max_pixels=self.options.max_image_pixels)
        except ImageTooLargeError as error:
            raise PayloadTooLarge(str(error)) from error
        except NotASliceError as error:
            raise InvalidInput(str(error), reason="not_2d") from error
        except UnreadableImageError as error:
            raise InvalidInput(str(error), reason="undecodable_image") from error
        image = canonicalise(decoded.pixels, self.loaded.preprocessing)
        return PreparedImage(image, request.explain, request.v2)

    def predict(self, batch: Sequence[PreparedImage], default: Iterable[str] = ()) -> list[dict]:
        """Answers for a batch (one forward pass; one backward when a heat map is asked); each image gets the
        explanations it asked for, or ``default`` when it asked for none."""
        if not batch:
            return []
        default = tuple(default)
        wanted = [item.explain if item.explain is not None else default for item in batch]
        methods = tuple(EXPLANATIONS[name] for name in EXPLANATIONS if any(name in w for w in wanted))
        pixels = to_tensor(np.stack([item.image for item in batch]), self.loaded.preprocessing)
        pixels = pixels.to(self.device)
        maps: dict[str, np.ndarray] = {}
        timings: dict[str, float] = {}
        with capture_features(self.model) as features:
            if methods:
                maps = explain(self.model, pixels, methods, timings=timings)
                logits = torch.from_numpy(maps.pop("logits"))
            else:
                start = time.perf_counter()
                with torch.no_grad():
                    logits = self.model(pixels).logits.float().cpu()
                timings["forward"] = time.perf_counter() - start
        probabilities = torch.softmax(logits.double() / self.temperature, dim=-1).numpy()
        ood_scores = self.ood_scorer.score(stack_features(features)) if self.ood_scorer else None
        start = time.perf_counter()
        answers = [
            self._answer(
                probabilities[i],
                {name: maps[EXPLANATIONS[name]][i] for name in wanted[i]},
                item,
                None if ood_scores is None else float(ood_scores[i]),
            )
            for i, item in enumerate(batch)
        ]
        if methods:  # rendering the overlays is part of explaining
            timings["explanation"] = timings.get("explanation", 0.0) + time.perf_counter() - start
        self.last_timings = timings
        return answers

    def monitored_features(self, item: PreparedImage, answer: dict) -> dict[str, int]:
        """The drift bin of each monitored feature of one answered request (``neurovit.drift``); empty for a
        version published without a monitoring reference."""
        if self.reference is None:
            return {}
        values = {name: float(value[0]) for name, value in image_features(item.image).items()}
        values["confidence"] = answer["confidence"]
        if answer.get("ood") is not None:
            values["ood_score"] = answer["ood"]["score"]
        return {
            name: self.reference.bin_of(name, value)
            for name, value in values.items()
            if name in self.reference.edges
        }

    def _answer(
        self,
        probabilities: np.ndarray,
        grids: dict[str, np.ndarray],
        item: PreparedImage,
        ood_score: float | None = None,
    ) -> dict:
        index = int(np.argmax(probabilities))
        explanations = {}
        for name, grid in grids.items():
            png = overlay_png(item.image, grid, alpha=self.options.overlay_alpha)
            explanations[name] = {
                "grid": np.round(grid.astype(np.float64), _GRID_DECIMALS).tolist(),
                "grid_size": int(grid.shape[0]),
                "overlay_png": base64.b64encode(png).decode("ascii"),
            }
        return {
            "label": self.class_names[index],
            "index": index,
            "confidence": float(probabilities[index]),
            "probabilities": {
                name: float(value) for name, value in zip(self.class_names, probabilities, strict=True)
            },
            "explanations": explanations,
            "ood": self._ood(ood_score),
            "model": {"name": self.name, "version": self.version},
            "disclaimer": RESEARCH_DISCLAIMER,
        }

    def _ood(self, score: float | None) -> dict | None:
        """``{"score", "threshold", "flagged"}``: an input unlike the training slices is still answered, and
        flagged so that nobody trusts its label."""
        if score is None:
            return None
        threshold = float(self.reference.ood_threshold)
        return {
            "score": round(score, 4),
            "threshold": round(threshold, 4),
            "flagged": bool(score > threshold),
        }


__all__ = [
    "ERROR_REASONS",
    "EXPLAIN_CHOICES",
    "EXPLAIN_HEADER",
    "EXPLANATIONS",
    "ImageRequest",
    "InvalidInput",
    "PayloadTooLarge",
    "Predictor",
    "PreparedImage",
    "ServingOptions",
    "decode_base64",
    "error_body",
    "parse_explain",
    "parse_item",
    "status_phrase",
]
