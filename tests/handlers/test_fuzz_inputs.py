"""Fuzzing the input side (issue 18): random, truncated and mutated image bytes, random JSON shapes, every
envelope, and batches mixing good and hostile requests. The property is always the same: an answer or a
typed refusal (``UnreadableImageError`` from the decoders, ``InvalidInput`` from parsing, a 4xx per request
from the handler), within a time and a memory bound, and never a changed answer for a good request.

The seed corpus (``@example``) holds every hostile case the issue lists; example counts stay small so the
unit suite stays fast.
"""

from __future__ import annotations

import json
import resource
import time
import tracemalloc
from contextlib import contextmanager

import numpy as np
import pytest
from fixtures import hostile
from fixtures.handler_harness import handler_for, json_request, request, run
from fixtures.serving_samples import TEST_OPTIONS, assert_answer, b64, dicom_bytes, encode, save_tiny_model
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ts.torch_handler.request_envelope.kserve import KServeEnvelope
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

from neurovit.data.imageio import decode_image
from neurovit.errors import UnreadableImageError
from neurovit.serving import ImageRequest, InvalidInput, parse_item

# CPU seconds per example (process time, so a loaded machine does not fail it; a hang or a decompression
# bomb burns CPU and still does); the hostile seeds are refused in well under that.
SECONDS = 2.0
TRACED_BYTES = 64 * 1024 * 1024  # Python and numpy allocations per example
RSS_GROWTH = 300 * 1024 * 1024  # the worker's whole process, per test (issue 18's bound)
FUZZ = settings(
    max_examples=25,
    deadline=None,  # the bound is ours (SECONDS), measured without Hypothesis' own overhead
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

GREY = (np.arange(24 * 32).reshape(24, 32) % 251).astype(np.uint8)
SEEDS = {
    "PNG": encode(GREY, "PNG"),
    "JPEG": encode(GREY, "JPEG", quality=90),
    "TIFF": encode(GREY.astype(np.uint16) * 257, "TIFF"),
    "BMP": encode(GREY, "BMP"),
    "DICOM": dicom_bytes(GREY.astype(np.uint16) * 16, rescale=(2.0, -10.0), window=(400.0, 600.0)),
}


@contextmanager
def bounded(seconds: float = SECONDS, traced_bytes: int = TRACED_BYTES):
    """Fails the example when the block uses more CPU time or allocates more (peak) than the bound."""
    tracemalloc.start()
    start = time.process_time()
    try:
        yield
    finally:
        elapsed = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < seconds, f"{elapsed:.2f} s"
    assert peak < traced_bytes, f"peak {peak / 2**20:.0f} MiB"


@pytest.fixture(autouse=True)
def process_memory_stays_bounded():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < RSS_GROWTH, f"the process grew by {grown / 2**20:.0f} MiB"


def answer_or_refusal(data: bytes) -> None:
    with bounded():
        try:
            image = decode_image(data, max_pixels=TEST_OPTIONS.max_image_pixels)
        except UnreadableImageError:
            return
    assert image.pixels.ndim == 2 and image.pixels.dtype == np.float32
    assert np.isfinite(image.pixels).all() and 0.0 <= image.pixels.min() <= image.pixels.max() <= 1.0


# ---- decoders ----------------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
@example(hostile.deflated_dicom_bomb())
@example(hostile.nan_slope_dicom())
@example(hostile.huge_slope_dicom())
@example(hostile.nan_window_dicom())
@example(hostile.tiff_pages(40_000))
@example(b"II*\x00" + b"\xff" * 64)
@example(b"\x00" * 128 + b"DICM" + b"\xff" * 64)
def test_random_bytes_decode_or_are_refused(data):
    answer_or_refusal(data)


@st.composite
def damaged(draw) -> bytes:
    """A good file of one format, truncated, with bytes overwritten, or with a chunk inserted."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            data = data[:at]
        elif kind == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(patch)] = patch
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@FUZZ
@given(damaged())
def test_truncated_and_mutated_images_decode_or_are_refused(data):
    answer_or_refusal(data)


# ---- parse_item over every envelope's shapes ---------------------------------------------------------------

KEYS = [
    "data",
    "explain",
    "b64",
    "body",
    "file",
    "image",
    "name",
    "shape",
    "datatype",
    "parameters",
    "inputs",
]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.just(b64(SEEDS["PNG"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)
ITEMS = (
    JSON_VALUES
    | st.binary(max_size=256)
    | st.builds(lambda v: {"body": json.dumps(v).encode()}, JSON_VALUES)
    | st.builds(lambda v: {"body": v}, JSON_VALUES)
    | st.builds(lambda v, e: {"data": v, "explain": e}, JSON_VALUES, JSON_VALUES)
    | st.builds(
        lambda **t: {k: v for k, v in t.items()},
        name=JSON_VALUES,
        datatype=JSON_VALUES,
        data=JSON_VALUES,
        shape=JSON_VALUES,
        parameters=JSON_VALUES,
    )
)


@FUZZ
@given(ITEMS, st.none() | st.text(max_size=20))
@example({"body": hostile.deep_json()}, None)
@example(hostile.v2_missing_name(b64(SEEDS["PNG"])), None)
@example(hostile.v2_bad_shape(b64(SEEDS["PNG"])), None)
@example({"instances": 5}, None)
@example({"body": b'{"instances": 5}'}, None)
@example({"data": "A" * 3_000_000}, "all")
def test_parse_item_gives_a_request_or_an_invalid_input(item, header):
    with bounded():
        try:
            parsed = parse_item(item, header, max_bytes=TEST_OPTIONS.max_image_bytes)
        except InvalidInput as error:
            assert 400 <= error.status < 500 and error.message
            return
    assert isinstance(parsed, ImageRequest) and isinstance(parsed.data, bytes)


# ---- the handler: batches mixing good and hostile requests, every envelope ---------------------------------


@pytest.fixture(scope="module")
def handler_and_context(tmp_path_factory):
    return handler_for(save_tiny_model(tmp_path_factory.mktemp("fuzz") / "model"))


GOOD = request(SEEDS["PNG"], "image/png")
HOSTILE = [
    request(hostile.deflated_dicom_bomb(), "application/dicom"),
    request(hostile.nan_slope_dicom(), "application/dicom"),
    request(hostile.tiff_pages(9_000), "image/tiff"),
    request(hostile.deep_json(), "application/json"),
    request(SEEDS["PNG"], "image/png", headers={"describe": "True"}),
    request(form={}),  # no parameter at all
]
PLAIN = (
    st.sampled_from(HOSTILE)
    | st.builds(lambda data: request(data), st.binary(max_size=512))
    | st.builds(
        lambda value: (
            json_request(value)
            if isinstance(value, dict)
            else request(json.dumps(value).encode(), "application/json")
        ),
        JSON_VALUES,
    )
)


@settings(FUZZ, max_examples=10)  # a forward pass each: fewer examples; memory is the process bound
@given(st.lists(PLAIN, min_size=1, max_size=3), st.lists(st.booleans(), min_size=4, max_size=4))
@example(HOSTILE, [False, True, False, True])  # the whole hostile corpus beside one good request
def test_a_good_request_is_answered_whatever_is_batched_beside_it(handler_and_context, others, explain):
    batch = [GOOD, *others]
    for i, flag in enumerate(explain[: len(batch)]):  # either route, per request (the rest: predict)
        route = {"name": b"explain", "value": str(flag).encode()}
        batch[i] = {**batch[i], "headers": [*batch[i]["headers"], route]}
    start = time.perf_counter()
    output, statuses = run(handler_and_context, batch)
    assert time.perf_counter() - start < 10.0
    assert_answer(output[0], ("heatmap", "rollout") if explain[0] else ())
    for answer, (status, _) in zip(output[1:], statuses[1:], strict=True):
        assert status == 200 or 400 <= status < 500, (status, answer)
        assert (status == 200) == ("error" not in answer)


@FUZZ
@given(JSON_VALUES)
@example({"instances": 5})
@example({"instances": [{"data": b64(SEEDS["PNG"])}] * (TEST_OPTIONS.max_images_per_request + 1)})
@example({"inputs": [hostile.v2_missing_name(b64(SEEDS["PNG"]))]})
@example({"inputs": [hostile.v2_bad_shape(b64(SEEDS["PNG"]))]})
@example(hostile.deep_json())
def test_every_envelope_answers_any_body_with_a_status(handler_and_context, body):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    for envelope in (KServeEnvelope, KServev2Envelope):
        with bounded(seconds=10.0, traced_bytes=256 * 1024 * 1024):
            (response,), statuses = run(handler_and_context, [request(raw, "application/json")], envelope)
        status = statuses[0][0] or 200
        assert status == 200 or 400 <= status < 500, (envelope.__name__, status, str(response)[:300])
        assert isinstance(response, dict)
