"""The KServe runtime's model: a ``kserve.Model`` over ``neurovit.serving``, run by KServe's model server.

``load`` verifies the version folder against its manifest (``neurovit.integrity``), loads ``model/`` with the
limits the version was packaged with, runs one warm-up forward (which also gives the map's grid size for the
v2 metadata) and sets ``ready``. A request is parsed, prepared and answered by the serving core, exactly as
the TorchServe handler does; only the envelopes differ:

- v1 ``:predict`` and ``:explain`` (both maps unless an instance chose): ``{"instances": [...]}``, a lone
  ``{"data": ...}`` object, or the raw image with its own content type -> ``{"predictions": [...]}`` or
  ``{"explanations": [...]}``. Every instance is answered; when one fails, the status is the first error's
  and the body is that error's (``{"error", "code", "reason"}``) with every instance's outcome beside it.
- v2 ``/infer``: typed tensors (``neurovit.open_inference``); any bad image refuses the request with its
  error body.

Each request is one forward pass over its own images: KServe's Python server has no request batching (the
batcher is KServe's agent sidecar, which holds a lone request for ``maxLatency``), and a request never waits
for others. Requests are answered one at a time on one worker thread, so readiness and /metrics answer
meanwhile; the wait for that thread is this runtime's queue (stage ``queue`` of
``neurovit_stage_duration_seconds``).
KServe's server counts no answers by status, so 5xx are counted here too (``neurovit_errors_total``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model

from handlers.package import archived_options
from neurovit import open_inference as v2
from neurovit.integrity import verify_folder
from neurovit.serving import (
    EXPLAIN_HEADER,
    EXPLANATIONS,
    Predictor,
    PreparedImage,
    RequestError,
    error_body,
    load_model_card,
    split_batch,
)
from neurovit.telemetry import Telemetry
from neurovit.telemetry_prometheus import PrometheusMetrics

log = logging.getLogger(__name__)


class ErrorAnswer(Exception):
    """A request answered with a client (or server) error: its status and JSON body."""

    def __init__(self, status: int, body: dict) -> None:
        super().__init__(body.get("error", ""))
        self.status, self.body = status, body


@dataclass(frozen=True)
class Job:
    """One request, parsed into the serving core's items (nothing decoded yet)."""

    items: Any
    header_explain: str | None = None
    request: InferRequest | None = None  # the v2 request (id, requested outputs), None for v1
    overlays: bool = False


class NeuroViTModel(Model):
    def __init__(self, name: str, version_dir: str | Path, device: str = "cpu", metrics=None) -> None:
        super().__init__(name)
        self.version_dir, self.device = Path(version_dir), device
        self.metrics = metrics or PrometheusMetrics()
        self.predictor: Predictor | None = None
        self.telemetry: Telemetry | None = None
        self.grid_size = 0
        # Every torch call of this runtime, loading included, runs on this one thread: one forward at a time
        # (torch already uses every core for one), and one OpenMP thread team. Forwards from a second thread
        # (the main one, or the event loop's default pool) ran 3.4 times slower on 2 cores (24.9 ms against
        # 7.3), their thread teams competing for the cores (docs/benchmarks.md).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurovit-torch")

    def load(self) -> bool:
        return self._worker.submit(self._load).result()

    def _load(self) -> bool:
        manifest = verify_folder(self.version_dir, model=self.name)
        version = manifest["version"]
        log.info("verified %s %s in %s against manifest.json", self.name, version, self.version_dir)
        options = archived_options(self.version_dir, self.name)
        self.predictor = Predictor.load(self.version_dir / "model", self.name, version, self.device, options)
        p = self.predictor
        if p.model_card is None:  # published beside model/ (TorchServe finds it at the archive's root)
            p.model_card = load_model_card(self.version_dir)
        self.telemetry = Telemetry(self.metrics.get_metric, p.name, p.version, p.reference, p.class_names)
        self.telemetry.reference_if_due()  # neurovit_model_info from load on (the model-not-loaded alert)
        size = p.loaded.preprocessing.image_size
        warm = p.predict([PreparedImage(np.zeros((size, size), np.uint8), ("rollout",))])[0]
        self.grid_size = warm["explanations"]["rollout"]["grid_size"]
        self.ready = True
        return self.ready

    def validate(self, payload):
        return payload  # the serving core checks every body (KServe's check assumes dict payloads)

    async def preprocess(self, payload, headers: dict | None = None) -> Job:
        header_explain = (headers or {}).get(EXPLAIN_HEADER)
        if isinstance(payload, InferRequest):
            inputs = [tensor.to_dict() for tensor in payload.inputs]
            overlays = v2.wants_overlays(inputs, payload.parameters)
            return Job(v2.request_items(inputs, payload.parameters), None, payload, overlays)
        if isinstance(payload, dict) and "instances" in payload:
            return Job(payload["instances"], header_explain)
        return Job([payload], header_explain)  # a raw image body, or one JSON object

    async def predict(self, job: Job, headers: dict | None = None, response_headers=None):
        return await self._in_worker(job, "predict", ())

    async def explain(self, job: Job, headers: dict | None = None):
        return await self._in_worker(job, "explain", tuple(EXPLANATIONS))

    def get_input_types(self) -> list[dict]:
        return v2.input_metadata()

    def get_output_types(self) -> list[dict]:
        p = self.predictor
        return v2.output_metadata(len(p.class_names), self.grid_size, p.ood_scorer is not None)

    async def _in_worker(self, job: Job, route: str, default: tuple[str, ...]):
        submitted = time.perf_counter()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._answer, job, route, default, submitted)

    def _answer(self, job: Job, route: str, default: tuple[str, ...], submitted: float):
        start, p = time.perf_counter(), self.predictor
        queued_s = start - submitted  # the runtime's queue: waiting for the torch thread
        self.telemetry.reference_if_due()
        items, _ = split_batch(job.items, 1, p.options.max_images_per_request)
        prepared = [p.prepare_item(item, job.header_explain, default) for item in items]
        preprocess_s = time.perf_counter() - start
        errors = [item for item in prepared if isinstance(item, RequestError)]
        for error in errors:  # 5xx too: KServe's server counts no answers by status (METRICS.md)
            self.telemetry.error(error.reason, error.status)
        if job.request is not None and errors:
            raise ErrorAnswer(errors[0].status, error_body(errors[0]))
        valid = [item for item in prepared if not isinstance(item, RequestError)]
        maps = v2.maps_wanted([item.explain for item in valid]) if job.request is not None else ()
        if job.request is not None:  # one tensor per map: every image gets the union of what was asked
            valid = [dataclasses.replace(item, explain=maps) for item in valid]
        answers, timings = [], {}
        if valid:  # a request of errors only has no forward to run or time
            answers, timings = self._predict(valid), {"queue": queued_s, **p.last_timings}
        for item, answer in zip(valid, answers, strict=True):
            self.telemetry.answered(answer, p.monitored_features(item, answer))
        self.telemetry.stages({"preprocess": preprocess_s, **timings})
        self.telemetry.request(route, time.perf_counter() - start)
        if job.request is not None:
            return self._v2_response(job, answers, maps)
        outcomes = iter(answers)
        results = [error_body(i) if isinstance(i, RequestError) else next(outcomes) for i in prepared]
        body = {"explanations" if route == "explain" else "predictions": results}
        if errors:
            raise ErrorAnswer(errors[0].status, {**error_body(errors[0]), **body})
        return body

    def _predict(self, valid: list[PreparedImage]) -> list[dict]:
        """The serving core's answers; an unexpected failure is counted and answered as a 500 (its reason)."""
        try:
            return self.predictor.predict(valid)
        except Exception as error:  # noqa: BLE001 - any failure here is the server's, never the client's
            log.exception("forward failed on %d image(s)", len(valid))  # no image data in the log
            self.telemetry.error(RequestError.reason, RequestError.status)
            failure = RequestError(f"the model failed to answer: {type(error).__name__}")
            raise ErrorAnswer(failure.status, error_body(failure)) from error

    def _v2_response(self, job: Job, answers: list[dict], maps: tuple[str, ...]) -> InferResponse:
        p, request = self.predictor, job.request
        tensors = v2.output_tensors(answers, p.class_names, maps, job.overlays)
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=p.version,
            infer_outputs=[InferOutput(t.name, list(t.data.shape), t.datatype, t.data) for t in tensors],
            parameters=v2.response_parameters(p.class_names, p.version),
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )


__all__ = ["ErrorAnswer", "Job", "NeuroViTModel"]
