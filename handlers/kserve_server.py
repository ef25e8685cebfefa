"""Start the KServe runtime: KServe's model server on a published version.

``python -m handlers.kserve_server --model_dir <version folder> --model_name neurovit [--http_port 8080]``

The version folder is one published version as the store lays it out (``manifest.json``, ``model/``,
``config/``, ``model-store/``); in a pod it is ``/mnt/models``, filled by KServe's storage initializer.
Every option of KServe's own ``ModelServer`` parser is accepted; gRPC is off unless ``--enable_grpc true``
(the v2 REST routes carry everything, and a second port is one more thing to expose). One process, one
uvicorn worker: the model is loaded once, before the server starts. ``/metrics`` on the HTTP port serves
prometheus-client's default registry: KServe's stage histograms and NeuroViT's ``neurovit_*`` series.

Every refusal has the TorchServe handler's body, ``{"error", "code", "reason"}``, and is counted in
``neurovit_errors_total``, including the bodies KServe's server refuses before the model sees them (a v1
body that is not JSON, a v2 body that is not an inference request).
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from fastapi import FastAPI
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from kserve import ModelServer, errors, model_server
from kserve import logging as kserve_logging
from kserve.protocol.rest import server as rest_server
from starlette.exceptions import HTTPException

from handlers.kserve_model import ErrorAnswer, NeuroViTModel
from neurovit.integrity import DEFAULT_VERSION_DIR
from neurovit.serving import InvalidInput, error_body

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        parents=[model_server.parser], description="NeuroViT on KServe's model server"
    )
    p.add_argument("--model_dir", default=DEFAULT_VERSION_DIR, help="the published version folder")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.set_defaults(model_name="neurovit", enable_grpc=False)
    return p


def install_error_answers(app: FastAPI, model: NeuroViTModel) -> None:
    """Answer every refusal with NeuroViT's error body and count it."""

    def refuse(error: InvalidInput) -> ORJSONResponse:
        model.telemetry.error(error.reason, error.status)
        return ORJSONResponse(error_body(error), status_code=error.status)

    async def answer(_request, error: ErrorAnswer) -> ORJSONResponse:
        return ORJSONResponse(error.body, status_code=error.status)

    async def not_a_v2_request(_request, error: RequestValidationError) -> ORJSONResponse:
        # The v2 route's body is `InferenceRequest | bytes`: the bytes branch's complaint says nothing.
        problems = [p for p in error.errors() if tuple(p.get("loc", ()))[:2] != ("body", "bytes")]
        reason = "bad_json" if any(p.get("type") == "json_invalid" for p in problems) else "bad_request"
        where = "; ".join(f"{'.'.join(map(str, p.get('loc', ())))}: {p.get('msg')}" for p in problems[:3])
        return refuse(InvalidInput(f"malformed KServe v2 body: {where}"[:500], reason=reason))

    async def not_a_body(_request, error: errors.InvalidInput) -> ORJSONResponse:
        text = str(error)
        if "Unrecognized request format" in text:  # orjson refused a v1 body (or an octet-stream one)
            detail = text.split("Unrecognized request format: ", 1)[-1]
            what = "nested too deeply" if "depth limit" in detail else "not JSON"
            return refuse(InvalidInput(f"malformed JSON body: {what} ({detail})"[:500], reason="bad_json"))
        return refuse(InvalidInput(f"malformed KServe body: {text}"[:500]))

    async def unparsable(request, error: HTTPException):
        if error.status_code != 400:  # 404, 405, ...: FastAPI's own answer
            return await http_exception_handler(request, error)
        return refuse(InvalidInput(f"malformed request body: {error.detail}", reason="bad_json"))

    async def not_utf8(request, error: errors.InferenceError) -> ORJSONResponse:
        if "Failed to encode" not in str(error):  # a failure of the server's own
            return await errors.inference_error_handler(request, error)
        # KServe's REST server decodes binary-extension BYTES inputs as UTF-8 text
        message = "a v2 binary BYTES input that is not UTF-8 text: send the images base64-encoded"
        return refuse(InvalidInput(message, reason="bad_base64"))

    app.add_exception_handler(ErrorAnswer, answer)
    app.add_exception_handler(HTTPException, unparsable)  # FastAPI's 400 for a body it cannot parse
    app.add_exception_handler(RequestValidationError, not_a_v2_request)
    # KServe registers its own InvalidInput and InferenceError handlers ({"error"} only) when the server
    # starts, so the names it registers are the ones replaced.
    rest_server.invalid_input_handler = not_a_body
    rest_server.inference_error_handler = not_utf8


def install_describe(app: FastAPI, model: NeuroViTModel) -> None:
    """``GET /v1/models/<name>/describe``: what TorchServe's describe call returns (classes, calibration,
    preprocessing, limits, maps, disclaimer and the version's model card)."""

    async def describe() -> ORJSONResponse:
        return ORJSONResponse(model.predictor.describe())

    app.add_api_route(f"/v1/models/{model.name}/describe", describe, methods=["GET"])


def main(argv: list[str] | None = None) -> None:
    args, _ = parser().parse_known_args(argv)
    if args.configure_logging:  # before loading, so the verification's lines reach the log
        kserve_logging.configure_logging(args.log_config_file)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = NeuroViTModel(args.model_name, args.model_dir, device=device)
    model.load()
    install_error_answers(model_server.app, model)
    install_describe(model_server.app, model)
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        enable_grpc=args.enable_grpc,
        enable_latency_logging=args.enable_latency_logging,
    )
    server.start([model])


if __name__ == "__main__":
    sys.exit(main())
