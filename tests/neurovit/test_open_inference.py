"""The Open Inference Protocol view of answers (neurovit.open_inference): typed tensors with the shapes the
metadata declares, and a request's inputs split into the serving core's items."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.serving_samples import CLASS_NAMES, b64, good_images, save_tiny_model

from neurovit import RESEARCH_DISCLAIMER
from neurovit import open_inference as v2
from neurovit.serving import InvalidInput, Predictor, parse_item


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor.load(save_tiny_model(tmp_path_factory.mktemp("model")), "neurovit", "v1")


@pytest.fixture(scope="module")
def pngs(make_slice) -> list[bytes]:
    return [good_images(make_slice(seed, size=40))["png"] for seed in range(3)]


def answers(predictor, pngs, explain=("rollout", "heatmap")):
    prepared = [predictor.prepare(parse_item({"body": png})) for png in pngs]
    return predictor.predict(prepared, default=explain)


def test_every_output_has_the_declared_datatype_and_shape(predictor, pngs):
    given = answers(predictor, pngs)
    tensors = v2.output_tensors(given, CLASS_NAMES, ("rollout", "heatmap"), overlays=True)
    declared = {o["name"]: (o["datatype"], o["shape"]) for o in v2.output_metadata(4, 8, ood=True)}
    for tensor in tensors:
        datatype, shape = declared[tensor.name]
        assert tensor.datatype == datatype, tensor.name
        assert list(tensor.data.shape) == [len(pngs), *shape[1:]], tensor.name
    dtypes = {t.name: t.data.dtype for t in tensors}
    assert dtypes["probabilities"] == np.float32 and dtypes["ood_flagged"] == np.bool_
    assert dtypes["label"].kind == "O" and dtypes["rollout_overlay"].kind == "O"  # BYTES: Python strings


def test_the_tensors_hold_the_answers_numbers(predictor, pngs):
    given = answers(predictor, pngs)
    by_name = {t.name: t.data for t in v2.output_tensors(given, CLASS_NAMES, ("heatmap",), overlays=False)}
    assert "rollout" not in by_name and "heatmap_overlay" not in by_name
    for i, answer in enumerate(given):
        assert by_name["label"][i] == answer["label"]
        expected = [answer["probabilities"][name] for name in CLASS_NAMES]
        assert by_name["probabilities"][i] == pytest.approx(expected, abs=1e-6)
        assert by_name["confidence"][i] == pytest.approx(answer["confidence"], abs=1e-6)
        assert by_name["ood_flagged"][i] == answer["ood"]["flagged"]
        assert np.allclose(by_name["heatmap"][i], answer["explanations"]["heatmap"]["grid"], atol=1e-6)


def test_a_version_without_ood_gets_no_ood_outputs(predictor, pngs):
    given = [{**answer, "ood": None} for answer in answers(predictor, pngs, ())]
    names = [t.name for t in v2.output_tensors(given, CLASS_NAMES, (), overlays=False)]
    assert names == ["label", "probabilities", "confidence"]
    assert "ood_score" not in {o["name"] for o in v2.output_metadata(4, 8, ood=False)}


def test_an_input_of_n_images_becomes_n_items_with_the_requests_explain(pngs):
    tensor = {"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(pngs[0]), b64(pngs[1])]}
    own = {
        **tensor,
        "name": "other",
        "shape": [1],
        "data": [b64(pngs[2])],
        "parameters": {"explain": "rollout"},
    }
    items = v2.request_items([tensor, own], {"explain": "heatmap"})
    requests = [parse_item(item) for item in items]
    assert [r.data for r in requests] == pngs
    assert [r.explain for r in requests] == [("heatmap",), ("heatmap",), ("rollout",)]
    assert v2.maps_wanted([r.explain for r in requests]) == ("rollout", "heatmap")


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "image", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}, "disagrees with one"),
        ({"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}, "must have datatype BYTES"),
        ({"shape": [1], "datatype": "BYTES", "data": ["a"]}, "without a 'name'"),
    ],
)
def test_inputs_the_core_refuses_pass_through_to_its_checks(tensor, message):
    (item,) = v2.request_items([tensor], None)
    with pytest.raises(InvalidInput, match=message):
        parse_item(item)


def test_overlays_and_the_disclaimer_travel_as_parameters():
    image = {"name": "image", "parameters": {"overlays": "true"}}
    assert v2.wants_overlays([image], None) and v2.wants_overlays([{}], {"overlays": True})
    assert not v2.wants_overlays([{"name": "image"}], {"overlays": False})
    parameters = v2.response_parameters(CLASS_NAMES, "v7")
    assert (
        parameters["class_names"].split(",") == CLASS_NAMES
        and parameters["disclaimer"] == RESEARCH_DISCLAIMER
    )
