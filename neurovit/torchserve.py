"""What the TorchServe handler needs from TorchServe's own behaviour, kept out of the thin handler.

- ``guard_envelopes``: TorchServe's KServe envelopes parse a body before the handler sees it, and any
  exception there (a v2 input without ``name``, a shape ``reshape`` refuses, a JSON body nested 5,000 deep, a
  body that is not JSON) fails the request with a 503 counted as a server error. Guarded, such a body becomes
  one ``InvalidInput`` item that the handler answers with its 4xx and reason.
- ``is_describe_request``: TorchServe passes request headers to the handler, so the ``describe`` header its
  management API sets can also come from a client; only the management API's own job (alone in its batch,
  without any parameter) may be answered with the model's description.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from neurovit.serving import InvalidInput

_GUARDED = "_neurovit_guarded"


class EnvelopeError(InvalidInput):
    """A body TorchServe's envelope could not parse; ``v2``: its answer travels as a v2 output."""

    def __init__(self, message: str, reason: str, v2: bool) -> None:
        super().__init__(message, reason=reason)
        self.v2 = v2  # a KServe v2 body: the answer travels as a v2 output


def guard_envelopes() -> None:
    """Wrap the ``parse_input`` of TorchServe's kserve and kservev2 envelopes (once per process)."""
    from ts.torch_handler.request_envelope.kserve import KServeEnvelope
    from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

    for envelope, v2 in ((KServeEnvelope, False), (KServev2Envelope, True)):
        if not getattr(envelope.parse_input, _GUARDED, False):
            envelope.parse_input = _guarded(envelope.parse_input, v2)


def _guarded(parse, v2: bool):
    @functools.wraps(parse)
    def parse_input(self, data):
        if all(not row for row in data):  # the management API's describe job: nothing to parse
            return data
        try:
            parsed = parse(self, data)
            if v2 and not parsed:  # `{"inputs": []}`: the v2 envelope would fail naming outputs of none
                raise _NoInputs
            return parsed
        except Exception as error:  # noqa: BLE001 - every failure of the envelope is the body's
            if v2:  # the v2 envelope names each output after an input
                self.context.input_names = ["input-0"]
            message, reason = _why(error, "KServe v2" if v2 else "KServe v1")
            return [EnvelopeError(message, reason, v2)]

    setattr(parse_input, _GUARDED, True)
    return parse_input


class _NoInputs(Exception):
    pass


def _why(error: Exception, protocol: str) -> tuple[str, str]:
    if isinstance(error, _NoInputs):
        return f"malformed {protocol} body: no image (`inputs` is empty)", "bad_request"
    if isinstance(error, RecursionError):
        return f"malformed {protocol} body: JSON nested too deeply", "bad_json"
    if isinstance(error, json.JSONDecodeError | UnicodeDecodeError):
        return f"malformed {protocol} body: not JSON ({error})", "bad_json"
    if isinstance(error, KeyError):
        return f"malformed {protocol} body: a required field {error.args[0]!r} is missing", "bad_request"
    if isinstance(error, ValueError):  # the v2 envelope reshapes non-BYTES data to its shape
        return f"malformed {protocol} body: {str(error)[:200]}", "bad_request"
    return f"malformed {protocol} body: not the expected structure ({type(error).__name__})", "bad_request"


def is_describe_request(data: Any, context) -> bool:
    """The management API's ``GET /models/<name>?customized=true`` job: alone in its batch, without any
    parameter, and with TorchServe's ``describe`` header. A client's header rides on a request that has a
    body, so it cannot make the handler answer a whole batch with one description."""
    return (
        len(context.request_ids) == 1
        and isinstance(data, list)
        and data == [{}]
        and context.get_request_header(0, "describe") == "True"
    )


__all__ = ["EnvelopeError", "guard_envelopes", "is_describe_request"]
