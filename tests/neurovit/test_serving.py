"""The serving core (neurovit.serving) on its own: parsing a request item, the explanation choice, base64,
status phrases, the serving options and the limits a Predictor applies before decoding."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from fixtures import hostile
from fixtures.serving_samples import TEST_OPTIONS, VERSION, b64, encode, good_images, save_tiny_model

from neurovit.serving import (
    InvalidInput,
    Predictor,
    ServingOptions,
    decode_base64,
    json_depth,
    parse_explain,
    parse_item,
    status_phrase,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("serving") / "model")


@pytest.fixture(scope="module")
def images(make_slice) -> dict[str, bytes]:
    return good_images(make_slice(3, size=48))


# ---- parsing helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("none", ()),
        ("ALL", ("rollout", "heatmap")),
        ("heatmap, rollout", ("rollout", "heatmap")),
        (["heatmap"], ("heatmap",)),
        ([], ()),
        (b"rollout", ("rollout",)),
    ],
)
def test_parse_explain(value, expected):
    assert parse_explain(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [("gradcam", "unknown explanation 'gradcam'"), (3, "must be a string"), ([1], "must be a string")],
)
def test_parse_explain_refuses_unknown_names(value, message):
    with pytest.raises(InvalidInput, match=message) as caught:
        parse_explain(value)
    assert caught.value.status == 400


def test_base64_accepts_data_urls_url_safe_and_whitespace_and_refuses_the_rest():
    data = bytes(range(256))
    standard = b64(data)
    assert decode_base64(f"data:image/png;base64,{standard}") == data
    assert decode_base64(standard.replace("+", "-").replace("/", "_")) == data
    assert decode_base64(standard[:40] + "\n" + standard[40:]) == data
    assert decode_base64({"b64": standard}) == data
    for bad, message in [("abc", "malformed base64"), ("", "is empty"), (12, "must be a base64 string")]:
        with pytest.raises(InvalidInput, match=message):
            decode_base64(bad)


def test_parse_item_refuses_what_holds_no_image():
    for item, message in [
        ({"body": {"image": "x"}}, "expected a JSON object"),
        ({"body": [1, 2]}, "got a JSON list"),
        ({"explain": "all"}, "no image in the request"),
        (42, "expected an image or a JSON object"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            parse_item(item)


def test_a_dicom_preamble_starting_with_a_brace_is_not_json(images):
    dicom = images["dicom"]
    tricky = b"{" + dicom[1:]
    assert parse_item({"body": tricky}).data == tricky


def test_status_phrase_is_one_short_ascii_line():
    phrase = status_phrase("bad\r\nthing é " + "x" * 300)
    assert phrase.isascii() and "\n" not in phrase and "\r" not in phrase and len(phrase) <= 200


def test_serving_options_refuse_unknown_keys_and_document_their_defaults():
    with pytest.raises(ValueError, match="unknown serving options"):
        ServingOptions.from_mapping({"max_bytes": 1})
    with pytest.raises(ValueError, match="overlay_alpha"):
        ServingOptions(overlay_alpha=2.0)
    for field in fields(ServingOptions):
        assert field.name in ServingOptions.__doc__


# ---- hostile items and limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (hostile.v2_missing_name("aGk="), "without a 'name'"),
        (hostile.v2_bad_shape("aGk="), "disagrees"),
        (hostile.v2_tensor("aGk=", shape="1"), "'shape' must be a list"),
        (hostile.v2_tensor("aGk=", shape=[10**30, 0]), "disagrees"),
        (hostile.v2_tensor("aGk=", shape=[10**30]), "disagrees"),
        ({"body": hostile.deep_json()}, "nested 5001 deep"),
        ({"body": b'{"data": "' + b"A" * 2_000_000 + b'"}'}, "JSON body too large"),
        ({"data": "A" * 2_000_000}, "decodes to about 1,500,000 bytes"),
    ],
    ids=[
        "v2-missing-name",
        "v2-bad-shape",
        "v2-shape-not-a-list",
        "v2-empty-huge-shape",
        "v2-huge-shape",
        "deep-json",
        "big-json",
        "big-base64",
    ],
)
def test_parse_item_refuses_hostile_items_with_an_invalid_input(item, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_item(item, max_bytes=TEST_OPTIONS.max_image_bytes)


def test_json_depth_skips_strings():
    assert json_depth(b'{"a": "[[[[{{{", "b": [[1], {"c": "]]]\\"}]}') == 3
    assert json_depth(hostile.deep_json(5_000)) == 5_001


def test_the_default_pixel_limit_refuses_a_small_colour_bomb_before_decoding(model_dir):
    """A 58 KB one-colour 4096 x 4096 PNG took 419 MiB to decode under the old 40 MP default."""
    predictor = Predictor.load(model_dir, "neurovit", VERSION, options=ServingOptions())
    bomb = encode(np.zeros((4096, 4096, 3), np.uint8), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(InvalidInput, match="more than the limit of 4,194,304") as caught:
        predictor.prepare(parse_item({"body": bomb}))
    assert caught.value.status == 413
