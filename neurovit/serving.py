"""The core of serving: one request item in, one documented answer (or one typed client error) out.

A server (TorchServe's handler in ``handlers/``, or anything else) does three things with this module:
``parse_item`` turns what the server received for one image into an ``ImageRequest`` (the image's bytes and
the explanations asked for), ``Predictor.prepare`` decodes and canonicalises it, and ``Predictor.predict``
answers a whole batch with one forward pass. For a server's batch, ``split_batch`` gives one item per image
and ``Predictor.prepare_item`` parses and prepares each, returning (never raising) its error, so that one
bad item never changes another item's answer. Every problem with the input is an
``InvalidInput`` that carries its HTTP status (400, or 413 for images over the limits) and a message a user
can act on; ``error_body`` shapes it. An unexpected failure while preparing one item is a ``ServerError``
(500) for that item alone; anything that goes wrong in the forward pass is a server error and propagates.

Every cap is checked before the step it protects: the number of images per request, a JSON body's size and
nesting depth before it is parsed, a base64 string's length before it is decoded, the image's bytes before
it is decoded (and ``neurovit.data.imageio`` checks pixels, pages and decoded sizes from the headers).

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
forward's own attentions), ``heatmap`` (gradient-weighted rollout for the predicted class) or ``all``; a
comma-separated list
or a JSON list of names also works. Preprocessing, class names, temperature, confidence map and the limits
come from the model folder and ``ServingOptions``, never from constants here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurovit import RESEARCH_DISCLAIMER
from neurovit.data.imageio import DEFAULT_MAX_DECODED_BYTES, decode_image
from neurovit.drift import MonitoringReference, image_features
from neurovit.errors import (
    DegenerateImageError,
    ImageTooLargeError,
    NeuroVitError,
    NotASliceError,
    UnreadableImageError,
)
from neurovit.explain import explain, overlay_png
from neurovit.model import LoadedModel, load_model
from neurovit.ood import OODScorer, capture_features, stack_features
from neurovit.preprocessing import canonicalise, to_tensor

# Names in answers -> methods of neurovit.explain: what `make eval-explain` scores best. The class heat map is
# Chefer et al.'s gradient-weighted rollout: on real tumours never trained on it found the tumour 0.74 of the
# time against the centre peak's 0.51 and beat the centred Gaussian on deletion, where Grad-CAM (0.38) did
# not point better than the centre; it also wins both scores on the demo set (docs/explainability.md).
EXPLANATIONS = {"rollout": "rollout", "heatmap": "gradient_rollout"}
EXPLAIN_CHOICES = ("none", "rollout", "heatmap", "all")
# Where raw bodies name their explanation on TorchServe's /predictions route, which drops query strings.
EXPLAIN_HEADER = "x-neurovit-explain"
IMAGE_FIELDS = ("data", "file", "image")
# The version's model card (training.model_card), packed into the archive beside the weights.
MODEL_CARD_FILE = "model_card.json"
JSON_FIELDS = ("data", "explain")
_GRID_DECIMALS = 4
# Our bodies nest 4 deep at most (a v2 body's inputs -> tensor -> parameters); Python's json raises
# RecursionError near 1,000, so the depth is checked on the raw bytes first.
MAX_JSON_DEPTH = 32
# JSON around a base64 image: 4/3 of the image's bytes and room for the other fields.
_JSON_OVERHEAD = 64 * 1024
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included
NO_IMAGE = 'no image in the request (KServe v1 bodies hold {"instances": [{"data": "<base64>"}]})'

logger = logging.getLogger(__name__)


class RequestError(NeuroVitError):
    """One item of a batch cannot be answered; ``status`` is the HTTP status that says so and ``reason``
    the cause the error metrics count (monitoring/METRICS.md)."""

    status = 500
    reason = "internal_error"
    v2 = False  # the answer travels as a KServe v2 output (a JSON string)

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class ServerError(RequestError):
    """An unexpected failure while preparing one item (a bug, not the client's fault): 500 for that item,
    the rest of the batch is answered."""


class InvalidInput(RequestError, ValueError):
    """The request cannot be answered as sent; ``status`` is the HTTP status that says so and ``reason``
    one of ``ERROR_REASONS``, the cause the error metrics count (monitoring/METRICS.md)."""

    status = 400
    reason = "bad_request"


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
    "invalid_intensity",
    "too_many_images",
)


@dataclass(frozen=True)
class ServingOptions:
    """Limits and rendering settings of the service (TorchServe reads them from the archive's model config,
    section ``handler``).

    Args:
        max_image_bytes: largest image file accepted, in bytes (after base64 decoding).
        max_image_pixels: largest image accepted, in pixels, checked from the header before decoding.
        max_decoded_bytes: largest decoded DICOM dataset (a deflated file inflated, or the pixel data
            its header promises), checked before it is inflated or decoded.
        max_images_per_request: most images one request may hold (KServe v1 ``instances``, v2 ``inputs``),
            checked before any is decoded.
        overlay_alpha: weight of the heat map over the grey image in the overlays, in [0, 1].
    """

    max_image_bytes: int = 20 * 1024 * 1024
    # 2048 x 2048: 4x an MRI slice's usual 1024 x 1024 at most, and a worker's decoding peak stays well
    # within 300 MB (measured: ~160 MiB for a rescaled, windowed 16-bit DICOM of that size; a 4096 x 4096
    # RGB PNG of 58 KB took 419 MiB to decode, a 6300 x 6300 one 939 MiB, under the old 40 MP default).
    max_image_pixels: int = 2048 * 2048
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    max_images_per_request: int = 16
    overlay_alpha: float = 0.45

    def __post_init__(self) -> None:
        limits = ("max_image_bytes", "max_image_pixels", "max_decoded_bytes", "max_images_per_request")
        if any(getattr(self, name) < 1 for name in limits):
            values = ", ".join(f"{name}={getattr(self, name)}" for name in limits)
            raise ValueError(f"limits must be positive, got {values}")
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


def decode_base64(value: Any, field: str = "data", max_bytes: int | None = None) -> bytes:
    """Strict base64 (standard or URL-safe alphabet, ``data:`` URL prefix allowed) -> bytes; a string that
    would decode to more than ``max_bytes`` is refused before it is decoded."""
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
    if max_bytes is not None and len(text) * 3 // 4 > max_bytes + 2:
        raise PayloadTooLarge(
            f"image too large: '{field}' decodes to about {len(text) * 3 // 4:,} bytes, more than the limit "
            f"of {max_bytes:,}"
        )
    alphabet = b"-_" if ("-" in text or "_" in text) else None
    try:
        return base64.b64decode(text.encode("ascii"), altchars=alphabet, validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as error:
        raise InvalidInput(f"malformed base64 in '{field}': {error}", reason="bad_base64") from error


def parse_item(item: Any, header_explain: str | None = None, max_bytes: int | None = None) -> ImageRequest:
    """What a server received for one image -> ``ImageRequest``; InvalidInput when it holds no image.
    ``max_bytes``: the image byte limit, also checked on base64 text and JSON bodies before decoding them."""
    if isinstance(item, RequestError):  # what a guarded envelope could not parse (neurovit.torchserve)
        raise item
    if isinstance(item, str):  # a KServe v1 instance that is a bare base64 string
        return ImageRequest(decode_base64(item, "instance", max_bytes), parse_explain(header_explain))
    if isinstance(item, bytes | bytearray):
        return _from_body(bytes(item), None, header_explain, max_bytes)
    if not isinstance(item, dict):
        raise InvalidInput(f"expected an image or a JSON object, got {type(item).__name__}")
    if _is_v2_input(item):
        return _from_v2_input(item, max_bytes)
    if "body" in item:
        return _from_body(item["body"], item.get("explain"), header_explain, max_bytes)
    field = next((name for name in IMAGE_FIELDS if item.get(name) is not None), None)
    if field is None and "b64" in item:
        data = decode_base64(item["b64"], "b64", max_bytes)
        return ImageRequest(data, _explain(item.get("explain"), header_explain))
    if field is None:
        raise InvalidInput(
            f"no image in the request: send the image as the body, as a form part named one of "
            f'{", ".join(IMAGE_FIELDS)}, or as JSON {{"data": "<base64>"}} '
            f"(got fields {sorted(map(str, item))})"
        )
    value = item[field]
    if isinstance(value, bytes | bytearray) and not _is_base64_text(bytes(value)):
        data = bytes(value)  # a file part
    else:
        data = decode_base64(value, field, max_bytes)  # a JSON string, or a form field passed as bytes
    return ImageRequest(data, _explain(item.get("explain"), header_explain))


def _explain(value: Any, header_explain: str | None) -> tuple[str, ...] | None:
    chosen = parse_explain(value)
    return chosen if chosen is not None else parse_explain(header_explain)


def _from_body(
    body: Any, query_explain: Any, header_explain: str | None, max_bytes: int | None
) -> ImageRequest:
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, bytes | bytearray) and _looks_like_json(bytes(body)):
        body = load_json(bytes(body), None if max_bytes is None else max_bytes * 4 // 3 + _JSON_OVERHEAD)
    if isinstance(body, dict):
        unknown = sorted(set(map(str, body)) - set(JSON_FIELDS))
        if unknown or "data" not in body:
            raise InvalidInput(
                f'expected a JSON object {{"data": "<base64>", "explain": "none|rollout|heatmap|all"}}, '
                f"got fields {sorted(map(str, body))}"
            )
        explain_value = body.get("explain", query_explain)
        return ImageRequest(
            decode_base64(body["data"], "data", max_bytes), _explain(explain_value, header_explain)
        )
    if isinstance(body, list):
        raise InvalidInput('expected a JSON object {"data": "<base64>"}, got a JSON list')
    if not isinstance(body, bytes | bytearray):
        raise InvalidInput(f"expected an image or a JSON object, got {type(body).__name__}")
    return ImageRequest(bytes(body), _explain(query_explain, header_explain))


def load_json(data: bytes, max_bytes: int | None = None) -> Any:
    """Parse a JSON body after checking its size and nesting depth (Python's parser recurses: 5,000 levels
    raise RecursionError, which no client may cause)."""
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(
            f"JSON body too large: {len(data):,} bytes, more than the limit of {max_bytes:,}"
        )
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise InvalidInput(
            f"malformed JSON body: nested {depth} deep, more than the limit of {MAX_JSON_DEPTH}",
            reason="bad_json",
        )
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InvalidInput(f"malformed JSON body: {error}", reason="bad_json") from error


def json_depth(data: bytes) -> int:
    """Deepest nesting of objects and arrays in JSON text, strings skipped; vectorised, so a 20 MB body
    costs a fraction of a second."""
    skeleton = _JSON_STRING.sub(b'""', data)
    codes = np.frombuffer(skeleton, dtype=np.uint8).astype(np.int8)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int64) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _from_v2_input(tensor: dict, max_bytes: int | None) -> ImageRequest:
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"v2 input without a 'name': every input tensor needs one (got {name!r})")
    if tensor.get("datatype") != "BYTES":
        raise InvalidInput(
            f"v2 input {name!r} must have datatype BYTES (a base64 image), got {tensor['datatype']!r}"
        )
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f"v2 input {name!r}: 'parameters' must be an object")
    data = tensor.get("data")
    _check_v2_shape(name, tensor.get("shape"), data)
    if isinstance(data, list):  # the envelope keeps the first element; a direct caller may not
        data = data[0] if data else None
    if data is None:
        raise InvalidInput(f"v2 input {name!r} holds no data: expected one base64-encoded image")
    return ImageRequest(
        decode_base64(data, f"inputs[{name}].data", max_bytes),
        parse_explain(parameters.get("explain")),
        v2=True,
    )


def _check_v2_shape(name: str, shape: Any, data: Any) -> None:
    """One base64 image per input: shape [1] (or any shape of one element) and at most one data element.
    TorchServe's envelope keeps only the first element, so a disagreeing shape would drop images silently."""
    sizes = isinstance(shape, list) and all(type(size) is int and size >= 0 for size in shape)
    if not sizes:
        raise InvalidInput(f"v2 input {name!r}: 'shape' must be a list of sizes, got {str(shape)[:80]}")
    elements = math.prod(shape)  # exact for any size a client writes
    given = len(data) if isinstance(data, list) else 1
    if elements != 1 or given > 1:
        raise InvalidInput(
            f"v2 input {name!r}: shape {shape} with {given} data element(s) disagrees with one base64 image "
            f"per input: send shape [1] and one element, one input per image"
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


def split_batch(data: Any, requests: int, max_images: int) -> tuple[list, bool]:
    """What a server handed over for a batch -> one item per image, and whether they all belong to request 0
    (an envelope's instances or inputs). A batch no image can be read from is one ``InvalidInput`` item;
    more images in one request than ``max_images`` is one 413 item, before any is decoded."""
    if data is None or (isinstance(data, list | tuple) and not data):
        return [InvalidInput(NO_IMAGE, reason="empty_body")], requests != 1
    if not isinstance(data, list | tuple):  # e.g. {"instances": 5} under the kserve envelope
        message = f"expected a list of images (KServe 'instances' or 'inputs'), got {type(data).__name__}"
        return [InvalidInput(message)], requests != 1
    shared = len(data) != requests
    if shared and len(data) > max_images:
        message = f"too many images in one request: {len(data):,}, more than the limit of {max_images:,}"
        error = PayloadTooLarge(message, reason="too_many_images")
        error.v2 = any(_is_v2_input(item) for item in data)
        return [error], True
    return list(data), shared


def answers_as_v2(items: Sequence[Any]) -> list[bool]:
    """Per item of ``split_batch``: whether its answer must travel as a JSON string (KServe v2)."""
    return [getattr(item, "v2", False) or _is_v2_input(item) for item in items]


def _is_v2_input(item: Any) -> bool:
    return isinstance(item, dict) and "datatype" in item


# ---- answers -----------------------------------------------------------------------------------------------


def error_body(error: RequestError) -> dict:
    """The JSON body of a client error: ``{"error": message, "code": status, "reason": cause}`` (KServe's
    wrapper reads ``error``)."""
    return {"error": error.message, "code": error.status, "reason": error.reason}


def status_phrase(message: str, limit: int = 200) -> str:
    """A message usable as an HTTP reason phrase: printable ASCII, one line, at most ``limit`` characters."""
    text = " ".join(str(message).split())
    text = text.encode("ascii", "replace").decode("ascii")
    return text[: limit - 3] + "..." if len(text) > limit else text


def load_model_card(model_dir: str | Path) -> dict | None:
    """The folder's ``model_card.json``, or None when it has none."""
    path = Path(model_dir) / MODEL_CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


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
        model_card: dict | None = None,
    ) -> None:
        self.loaded = loaded
        self.model_card = model_card  # None for a version published before model cards
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
        self.confidence_map = loaded.info.confidence_map  # after the temperature; None for older versions

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
            model_card=load_model_card(model_dir),
        )

    @property
    def class_names(self) -> list[str]:
        return self.loaded.class_names

    def describe(self) -> dict:
        """What the service answers with: model, classes, calibration, preprocessing, limits, maps, and the
        version's model card (``model_card``: None when the version has none)."""
        return {
            "model": {"name": self.name, "version": self.version},
            "class_names": self.class_names,
            "temperature": self.temperature,
            "confidence_map": None if self.confidence_map is None else self.confidence_map.to_dict(),
            "preprocessing": asdict(self.loaded.preprocessing),
            "limits": asdict(self.options),
            "explanations": list(EXPLANATIONS),
            "disclaimer": RESEARCH_DISCLAIMER,
            "model_card": self.model_card,
        }

    def prepare(self, request: ImageRequest) -> PreparedImage:
        """Check the limits, decode and canonicalise one image; InvalidInput when it is not one 2-D slice."""
        size, limit = len(request.data), self.options.max_image_bytes
        if size == 0:
            raise InvalidInput("empty body: the file is empty (0 bytes)", reason="empty_body")
        if size > limit:
            raise PayloadTooLarge(f"image too large: {size:,} bytes, more than the limit of {limit:,}")
        try:
            decoded = decode_image(
                request.data,
                max_pixels=self.options.max_image_pixels,
                max_decoded_bytes=self.options.max_decoded_bytes,
            )
        except ImageTooLargeError as error:
            raise PayloadTooLarge(str(error)) from error
        except NotASliceError as error:
            raise InvalidInput(str(error), reason="not_2d") from error
        except DegenerateImageError as error:
            raise InvalidInput(str(error), reason="invalid_intensity") from error
        except UnreadableImageError as error:
            raise InvalidInput(str(error), reason="undecodable_image") from error
        image = canonicalise(decoded.pixels, self.loaded.preprocessing)
        return PreparedImage(image, request.explain, request.v2)

    def prepare_item(
        self, item: Any, header_explain: str | None = None, default: Iterable[str] = ()
    ) -> PreparedImage | RequestError:
        """Parse and prepare one item of a batch; every failure is returned as that item's ``RequestError``,
        never raised, so one bad item never changes another item's answer. ``default``: the explanations
        of the item's route when it asked for none."""
        try:
            prepared = self.prepare(parse_item(item, header_explain, self.options.max_image_bytes))
        except RequestError as error:
            return error
        except MemoryError:
            return PayloadTooLarge("image too large to decode in the memory this replica has")
        except Exception as error:  # a bug, not the client's fault: logged without the payload
            logger.error("unexpected %s while preparing one item", type(error).__name__, exc_info=True)
            return ServerError(
                "internal error while reading this image (logged); the rest of the batch is answered"
            )
        if prepared.explain is None:
            prepared = dataclasses.replace(prepared, explain=tuple(default))
        return prepared

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
        probabilities = self.loaded.info.probabilities(logits)
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
    "MAX_JSON_DEPTH",
    "MODEL_CARD_FILE",
    "NO_IMAGE",
    "ImageRequest",
    "InvalidInput",
    "PayloadTooLarge",
    "Predictor",
    "PreparedImage",
    "RequestError",
    "ServerError",
    "ServingOptions",
    "decode_base64",
    "error_body",
    "json_depth",
    "load_json",
    "load_model_card",
    "parse_explain",
    "parse_item",
    "split_batch",
    "status_phrase",
]
