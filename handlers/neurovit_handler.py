"""TorchServe handler for NeuroViT: parse each request, call ``neurovit.serving``, shape the answers.

One answer per request of a batch, in order, each with the explanations that request asked for
(``explain``: none, rollout, heatmap or all; TorchServe's /explanations route, which KServe's ``:explain``
reaches, defaults to all, decided per request, so a batch mixing both routes answers each on its own). A
request that cannot be answered gets its own 4xx (or a 500 for an unexpected failure of that item alone)
through ``context.set_response_status(code, phrase, idx)`` and an ``{"error", "code", "reason"}`` body; the
rest of the batch is answered normally and the worker carries on. Under ``TS_SERVICE_ENVELOPE=kserve`` every
instance of the one request is answered (status: the first error's, if any; more than
``max_images_per_request`` instances is one 413); under ``kservev2`` each answer travels as a JSON string in
a BYTES output. A body the envelope cannot parse is a 4xx too (``neurovit.torchserve.guard_envelopes``). The
response shape is ``handlers/response.schema.json``.

Model, preprocessing, class names, calibration and limits come from the archive (``load_model`` reads the
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
    Predictor,
    RequestError,
    ServingOptions,
    answers_as_v2,
    error_body,
    split_batch,
    status_phrase,
)
from neurovit.telemetry import Telemetry
from neurovit.torchserve import guard_envelopes, is_describe_request


class NeuroViTHandler:
    """TorchServe's initialize / preprocess / inference / postprocess split."""

    def __init__(self) -> None:
        self.initialized = False
        self.predictor: Predictor | None = None
        self.context = None
        self.telemetry: Telemetry | None = None
        self._shared = False  # True when an envelope's several instances all belong to request 0
        self._explaining: list[bool] = []  # per request: TorchServe's explanation route
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
        guard_envelopes()
        self.initialized = True

    def handle(self, data, context) -> list:
        start = time.perf_counter()
        self.context = context
        if is_describe_request(data, context):  # GET /models/<name>?customized=true
            return [json.dumps(self.predictor.describe())]
        self.telemetry.reference_if_due()
        prepared = self.preprocess(data)
        preprocess_s = time.perf_counter() - start
        output = self.postprocess(self.inference(prepared))
        requests, seconds = len(context.request_ids), time.perf_counter() - start
        self.telemetry.stages({"preprocess": preprocess_s, **self.predictor.last_timings}, requests)
        explaining = sum(self._explaining)
        for route, count in (("explain", explaining), ("predict", requests - explaining)):
            if count:
                self.telemetry.request(route, seconds, count)
        return output

    def preprocess(self, data) -> list:
        """Each item -> a prepared image, or the RequestError that says why it cannot be answered."""
        requests = len(self.context.request_ids)
        limit = self.predictor.options.max_images_per_request
        items, self._shared = split_batch(data, requests, limit)
        self._explaining = [self.context.get_request_header(i, "explain") == "True" for i in range(requests)]
        self._v2 = answers_as_v2(items)
        self._prepared = [
            self.predictor.prepare_item(
                item, self._header(i), EXPLANATIONS if self._explaining[self._owner(i)] else ()
            )
            for i, item in enumerate(items)
        ]
        return self._prepared

    def inference(self, prepared: list) -> list:
        """One forward pass over the valid images of the batch; errors keep their places."""
        valid = [item for item in prepared if not isinstance(item, RequestError)]
        self.predictor.last_timings = {}  # a batch of errors only has no forward to time
        answers = iter(self.predictor.predict(valid))
        return [item if isinstance(item, RequestError) else next(answers) for item in prepared]

    def postprocess(self, results: list) -> list:
        """Statuses, content types and metrics per request; v2 answers as JSON strings."""
        output = []
        for i, result in enumerate(results):
            idx = self._owner(i)
            self.context.set_response_content_type(idx, "application/json")
            if isinstance(result, RequestError):
                if self.context.get_response_status(idx)[0] in (None, 200):  # the first error names it
                    self.context.set_response_status(result.status, status_phrase(result.message), idx)
                if result.status < 500:  # 5xx are TorchServe's Requests5XX (counted once)
                    self.telemetry.error(result.reason, result.status)
                body = error_body(result)
            else:
                self.telemetry.answered(result, self.predictor.monitored_features(self._prepared[i], result))
                body = result
            output.append(json.dumps(body) if self._v2[i] else body)
        return output

    def _owner(self, i: int) -> int:
        return 0 if self._shared else i

    def _header(self, i: int) -> str | None:
        headers = self.context.get_all_request_header(self._owner(i)) or {}
        return next(
            (v for k, v in headers.items() if k.lower() == EXPLAIN_HEADER and isinstance(v, str)), None
        )
