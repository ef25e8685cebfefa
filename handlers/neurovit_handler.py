"""TorchServe handler for NeuroViT: parse each request, call ``neurovit.serving``, shape the answers.

One answer per request of a batch, in order, each with the explanations that request asked for
(``explain``: none, rollout, heatmap or all; TorchServe's /explanations route, which KServe's ``:explain``
reaches, defaults to all). A request that cannot be answered gets its own 4xx through
``context.set_response_status(code, phrase, idx)`` and an ``{"error", "code"}`` body; the rest of the batch
is answered normally and the worker carries on. Under ``TS_SERVICE_ENVELOPE=kserve`` every instance of the
one request is answered (status: the first error's, if any); under ``kservev2`` each answer travels as a
JSON string in a BYTES output. The response shape is ``handlers/response.schema.json``.

Model, preprocessing, class names, temperature and limits come from the archive (``load_model`` reads the
model folder; the ``handler`` section of the archive's model config holds ``ServingOptions``).
"""

from __future__ import annotations

import json
import time

import torch
from ts.metrics.metric_type_enum import MetricTypes

from neurovit.integrity import verify_served_version
from neurovit.serving import (
    EXPLAIN_HEADER,
    EXPLANATIONS,
    InvalidInput,
    Predictor,
    ServingOptions,
    error_body,
    parse_item,
    status_phrase,
)
from neurovit.telemetry import Telemetry

NO_IMAGE = 'no image in the request (KServe v1 bodies hold {"instances": [{"data": "<base64>"}]})'


class NeuroViTHandler:
    """TorchServe's initialize / preprocess / inference / postprocess split, plus explain_handle."""

    def __init__(self) -> None:
        self.initialized = False
        self.predictor: Predictor | None = None
        self.context = None
        self.telemetry: Telemetry | None = None
        self._shared = False  # True when an envelope's several instances all belong to request 0
        self._v2: list[bool] = []
        self._prepared: list = []

    def initialize(self, context) -> None:
        properties, manifest = context.system_properties, context.manifest.get("model", {})
        # Nothing loads unless the mounted version matches its manifest.json (neurovit.integrity).
        verify_served_version(manifest.get("modelName", context.model_name), manifest.get("modelVersion"))
        gpu = properties.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        options = ServingOptions.from_mapping((context.model_yaml_config or {}).get("handler"))
        self.predictor = Predictor.load(
            properties["model_dir"],
            name=manifest.get("modelName", context.model_name),
            version=manifest.get("modelVersion", "unknown"),
            device=device,
            options=options,
        )
        self.telemetry = Telemetry(
            lambda name, kind: context.metrics.get_metric(name, MetricTypes(kind)),
            self.predictor.name,
            self.predictor.version,
            self.predictor.reference,
            self.predictor.class_names,
        )
        self.initialized = True

    def handle(self, data, context) -> list:
        start = time.perf_counter()
        self.context = context
        if context.get_request_header(0, "describe") == "True":  # GET /models/<name>?customized=true
            return [json.dumps(self.predictor.describe())]
        self.telemetry.reference_if_due()
        prepared = self.preprocess(data)
        preprocess_s = time.perf_counter() - start
        explaining = context.get_request_header(0, "explain") == "True"  # TorchServe's explanation routes
        if explaining:
            output = self.explain_handle(prepared, data)
        else:
            output = self.postprocess(self.inference(prepared))
        requests = len(context.request_ids)
        self.telemetry.stages({"preprocess": preprocess_s, **self.predictor.last_timings}, requests)
        self.telemetry.request("explain" if explaining else "predict", time.perf_counter() - start, requests)
        return output

    def preprocess(self, data) -> list:
        """Each item -> a prepared image, or the InvalidInput that says why it cannot be answered."""
        items = list(data) if data else [None]  # an envelope without instances still gets an answer
        self._shared = len(items) != len(self.context.request_ids)
        self._v2 = [isinstance(item, dict) and "datatype" in item for item in items]
        prepared = []
        for i, item in enumerate(items):
            try:
                if item is None:
                    raise InvalidInput(NO_IMAGE, reason="empty_body")
                prepared.append(self.predictor.prepare(parse_item(item, self._header(i))))
            except InvalidInput as error:
                prepared.append(error)
        self._prepared = prepared
        return prepared

    def inference(self, prepared: list, default: tuple[str, ...] = ()) -> list:
        """One forward pass over the valid images of the batch; errors keep their places."""
        valid = [item for item in prepared if not isinstance(item, InvalidInput)]
        self.predictor.last_timings = {}  # a batch of errors only has no forward to time
        answers = iter(self.predictor.predict(valid, default))
        return [item if isinstance(item, InvalidInput) else next(answers) for item in prepared]

    def postprocess(self, results: list) -> list:
        """Statuses, content types and metrics per request; v2 answers as JSON strings."""
        output = []
        for i, result in enumerate(results):
            idx = 0 if self._shared else i
            self.context.set_response_content_type(idx, "application/json")
            if isinstance(result, InvalidInput):
                if self.context.get_response_status(idx)[0] in (None, 200):  # the first error names it
                    self.context.set_response_status(result.status, status_phrase(result.message), idx)
                self.telemetry.error(result.reason, result.status)
                body = error_body(result)
            else:
                self.telemetry.answered(result, self.predictor.monitored_features(self._prepared[i], result))
                body = result
            output.append(json.dumps(body) if self._v2[i] else body)
        return output

    def explain_handle(self, data_preprocess: list, raw_data) -> list:
        """TorchServe's /explanations (and KServe's :explain): both maps unless a request chose."""
        return self.postprocess(self.inference(data_preprocess, default=tuple(EXPLANATIONS)))

    def _header(self, i: int) -> str | None:
        headers = self.context.get_all_request_header(0 if self._shared else i) or {}
        return next(
            (v for k, v in headers.items() if k.lower() == EXPLAIN_HEADER and isinstance(v, str)), None
        )
