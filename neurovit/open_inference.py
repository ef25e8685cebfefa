"""Typed v2 tensors: the Open Inference Protocol (KServe v2) view of answers, and the metadata declaring them.

A v2 client (tritonclient, KServe's ``InferenceRESTClient``) reads numbers, not JSON strings.

Request: one or more BYTES inputs, each of shape ``[N]`` holding N base64 images (in JSON, or as the binary
extension's elements: KServe's REST server decodes binary BYTES inputs as UTF-8 text, so raw files cannot
travel that way). The maps are chosen with
``parameters.explain`` (``none | rollout | heatmap | all``) on an input or on the request; a request's maps
are the union of what its inputs ask, and every image gets them (a tensor has one shape for all N).
``parameters.overlays: true`` adds the overlay PNGs.

Outputs, for N answered images, C classes and a g x g explanation grid:

=================== ========= ============ ===========================================================
name                datatype  shape        what
=================== ========= ============ ===========================================================
``label``           BYTES     [N]          the predicted class
``probabilities``   FP32      [N, C]       calibrated, in the order of the ``class_names`` parameter
``confidence``      FP32      [N]          the top class's probability
``ood_score``       FP32      [N]          out-of-distribution score (versions with an OOD scorer)
``ood_flagged``     BOOL      [N]          score over the version's threshold (idem)
``rollout``         FP32      [N, g, g]    attention rollout, when asked
``heatmap``         FP32      [N, g, g]    the class heat map, when asked
``<map>_overlay``   BYTES     [N]          base64 PNG of a map over the image, with ``overlays``
=================== ========= ============ ===========================================================

The response's parameters carry ``class_names``, the model version and the research-use statement.
Pure numpy: the KServe runtime wraps these in kserve's own types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neurovit import RESEARCH_DISCLAIMER
from neurovit.serving import EXPLANATIONS

INPUT_NAME = "image"
OVERLAYS = "overlays"  # the request parameter that adds the overlay PNGs
OVERLAY_SUFFIX = "_overlay"


@dataclass(frozen=True)
class Tensor:
    """One typed output: its v2 name, datatype and data (shape = ``data.shape``)."""

    name: str
    datatype: str
    data: np.ndarray


def request_items(inputs: Sequence[Mapping[str, Any]], parameters: Mapping[str, Any] | None) -> list:
    """v2 input tensors (``name, shape, datatype, data, parameters``) -> one ``neurovit.serving.parse_item``
    item per image: an input of shape ``[N]`` with N elements becomes N single-image inputs. The request's
    ``explain`` applies to an input that names none. Anything else passes unchanged, so that the core's
    checks refuse it with their message."""
    request_explain = (parameters or {}).get("explain")
    items = []
    for tensor in inputs:
        if not isinstance(tensor, Mapping):  # e.g. the RequestError of an unreadable input
            items.append(tensor)
            continue
        tensor = dict(tensor)
        own = tensor.get("parameters")
        if request_explain is not None and (own is None or (isinstance(own, dict) and "explain" not in own)):
            tensor["parameters"] = {**(own or {}), "explain": request_explain}
        data, shape = tensor.get("data"), tensor.get("shape")
        several = isinstance(data, list) and len(data) > 1 and shape == [len(data)]
        items += [{**tensor, "shape": [1], "data": [one]} for one in data] if several else [tensor]
    return items


def maps_wanted(explain_by_item: Sequence[tuple[str, ...] | None]) -> tuple[str, ...]:
    """The union of the maps the images asked for, in ``EXPLANATIONS`` order."""
    asked = {name for names in explain_by_item for name in names or ()}
    return tuple(name for name in EXPLANATIONS if name in asked)


def wants_overlays(inputs: Sequence[Mapping[str, Any]], parameters: Mapping[str, Any] | None) -> bool:
    """``parameters.overlays`` true on the request or on any input (``true``, ``"true"`` or 1)."""
    values = [(parameters or {}).get(OVERLAYS)]
    values += [
        (tensor.get("parameters") or {}).get(OVERLAYS)
        for tensor in inputs
        if isinstance(tensor, Mapping) and isinstance(tensor.get("parameters") or {}, Mapping)
    ]
    return any(str(value).strip().lower() in ("true", "1") for value in values if value is not None)


def output_tensors(
    answers: Sequence[Mapping[str, Any]], class_names: Sequence[str], maps: Sequence[str], overlays: bool
) -> list[Tensor]:
    """The typed outputs of ``answers`` (``neurovit.serving.Predictor.predict``), each asked for ``maps``."""
    tensors = [
        Tensor("label", "BYTES", np.array([answer["label"] for answer in answers], dtype=object)),
        Tensor(
            "probabilities",
            "FP32",
            np.array([[a["probabilities"][name] for name in class_names] for a in answers], np.float32),
        ),
        Tensor("confidence", "FP32", np.array([answer["confidence"] for answer in answers], np.float32)),
    ]
    if all(answer.get("ood") is not None for answer in answers):
        tensors += [
            Tensor("ood_score", "FP32", np.array([a["ood"]["score"] for a in answers], np.float32)),
            Tensor("ood_flagged", "BOOL", np.array([a["ood"]["flagged"] for a in answers], np.bool_)),
        ]
    for name in maps:
        grids = [answer["explanations"][name]["grid"] for answer in answers]
        tensors.append(Tensor(name, "FP32", np.array(grids, np.float32)))
        if overlays:
            pngs = [answer["explanations"][name]["overlay_png"] for answer in answers]
            tensors.append(Tensor(name + OVERLAY_SUFFIX, "BYTES", np.array(pngs, dtype=object)))
    return tensors


def response_parameters(class_names: Sequence[str], version: str) -> dict[str, str]:
    """What every v2 answer carries beside its tensors (v2 parameters are scalars: names comma-joined)."""
    return {"class_names": ",".join(class_names), "model_version": version, "disclaimer": RESEARCH_DISCLAIMER}


def input_metadata() -> list[dict]:
    return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]


def output_metadata(class_count: int, grid_size: int, ood: bool) -> list[dict]:
    """Every output a request can get (-1: the number of images), for ``GET /v2/models/<name>``."""
    outputs = [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, class_count]},
        {"name": "confidence", "datatype": "FP32", "shape": [-1]},
    ]
    if ood:
        outputs += [
            {"name": "ood_score", "datatype": "FP32", "shape": [-1]},
            {"name": "ood_flagged", "datatype": "BOOL", "shape": [-1]},
        ]
    for name in EXPLANATIONS:
        outputs.append({"name": name, "datatype": "FP32", "shape": [-1, grid_size, grid_size]})
        outputs.append({"name": name + OVERLAY_SUFFIX, "datatype": "BYTES", "shape": [-1]})
    return outputs


__all__ = [
    "INPUT_NAME",
    "OVERLAYS",
    "OVERLAY_SUFFIX",
    "Tensor",
    "input_metadata",
    "maps_wanted",
    "output_metadata",
    "output_tensors",
    "request_items",
    "response_parameters",
    "wants_overlays",
]
