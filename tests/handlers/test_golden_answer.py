"""Same served answers before and after a change (issue 19): a fixed version answers two fixed images with
the probabilities, OOD check and both explanation maps committed in tests/fixtures/golden/served_answer.json,
to 1e-4.

The fixed version is built as the integration tests build theirs, with nothing random left: the project's
model builder from a seeded init (``save_tiny_model``: seed 0, BatchNorm statistics moved, temperature
1.7, the drift reference and OOD scorer fitted on seeded blobs), packaged with handlers/package.py into a
.mar, published to a local store and fetched back. The handler loads the archive's files as TorchServe
extracts them, under TorchServe's own Context (fixtures.handler_harness); the serving core
(neurovit.serving.Predictor) answers the same images as the handler does. Overlay PNGs are not compared
(matplotlib's bytes), the maps' grids are.

Served grids and OOD values are rounded to 4 decimals, so a value sitting on a rounding boundary may move
by one unit there: the tolerance is 1e-4 plus a hair, on every number.

A change that is meant to change answers (a new model builder, preprocessing or explainer) regenerates
the fixture and shows the diff in review:

    NEUROVIT_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/handlers/test_golden_answer.py

(the core-path test writes the file and skips; commit it with the change that explains it).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures.handler_harness import handler_for, request, run
from fixtures.serving_samples import MODEL, VERSION, encode, published_copy, save_tiny_model

from handlers.package import MODEL_CONFIG_FILE, MODEL_STORE, package_stage
from neurovit.serving import Predictor, ServingOptions, parse_item

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "served_answer.json"
REGENERATE = "NEUROVIT_REGENERATE_GOLDEN"
TOLERANCE = 1e-4 * (1 + 1e-6)  # one unit of the served rounding, and float noise on top
EXACT = ("label", "index", "model")


@pytest.fixture(scope="module")
def fixed_version(tmp_path_factory) -> tuple[Path, ServingOptions]:
    """The archive's files as TorchServe extracts them, and the handler options packaged with them."""
    root = tmp_path_factory.mktemp("golden")
    model = save_tiny_model(root / "model", seed=0)
    package_stage(model, root / "package", MODEL, VERSION)
    version = published_copy(root / "package")
    extracted = root / "extracted"
    with zipfile.ZipFile(version / MODEL_STORE / f"{MODEL}.mar") as archive:
        archive.extractall(extracted)
    options = yaml.safe_load((extracted / MODEL_CONFIG_FILE).read_text())["handler"]
    return extracted, ServingOptions.from_mapping(options)


@pytest.fixture(scope="module")
def images(make_slice) -> dict[str, bytes]:
    """A square slice and a wide one (resized and padded on its way in), as PNG files."""
    return {
        "square": encode(make_slice(11, size=64), "PNG"),
        "wide": encode(make_slice(12, size=64)[8:56, :], "PNG"),
    }


def comparable(answer: dict) -> dict:
    """What the golden file holds of one answer: everything but the overlay PNGs and the disclaimer."""
    assert "error" not in answer, answer
    return {
        "label": answer["label"],
        "index": answer["index"],
        "model": answer["model"],
        "confidence": answer["confidence"],
        "probabilities": answer["probabilities"],
        "ood": answer["ood"],
        "explanations": {
            name: answer["explanations"][name]["grid"] for name in sorted(answer["explanations"])
        },
    }


def load_golden() -> dict:
    if not GOLDEN.is_file():
        pytest.fail(
            f"{GOLDEN} is missing: regenerate it with {REGENERATE}=1 .venv/bin/python -m pytest "
            f"{Path(__file__).relative_to(GOLDEN.parents[3])} and commit it"
        )
    return json.loads(GOLDEN.read_text())


def assert_same_answers(answers: dict[str, dict], path: str) -> None:
    golden = load_golden()["answers"]
    assert sorted(answers) == sorted(golden), f"{path}: other images than the golden file's"
    for image, answer in answers.items():
        expected = golden[image]
        for key in EXACT:
            assert answer[key] == expected[key], f"{path}, {image}: {key}"
        assert answer["ood"]["flagged"] == expected["ood"]["flagged"], f"{path}, {image}: ood flagged"
        assert sorted(answer["probabilities"]) == sorted(expected["probabilities"])
        assert sorted(answer["explanations"]) == sorted(expected["explanations"]) == ["heatmap", "rollout"]
        numbers = {
            "confidence": (answer["confidence"], expected["confidence"]),
            "probabilities": (
                [answer["probabilities"][k] for k in sorted(expected["probabilities"])],
                [expected["probabilities"][k] for k in sorted(expected["probabilities"])],
            ),
            "ood score": (answer["ood"]["score"], expected["ood"]["score"]),
            "ood threshold": (answer["ood"]["threshold"], expected["ood"]["threshold"]),
            **{
                f"{name} map": (answer["explanations"][name], expected["explanations"][name])
                for name in expected["explanations"]
            },
        }
        for what, (actual, wanted) in numbers.items():
            np.testing.assert_allclose(
                np.asarray(actual, dtype=np.float64),
                np.asarray(wanted, dtype=np.float64),
                rtol=0,
                atol=TOLERANCE,
                err_msg=f"{path}, {image}: {what} differs from {GOLDEN.name}",
            )


def core_answers(fixed_version, images) -> dict[str, dict]:
    """neurovit.serving as the handler drives it: parse, prepare, one batched predict with both maps."""
    folder, options = fixed_version
    predictor = Predictor.load(folder, MODEL, VERSION, options=options)
    prepared = [
        predictor.prepare(parse_item({"body": data}, header_explain="all")) for data in images.values()
    ]
    return {
        name: comparable(answer) for name, answer in zip(images, predictor.predict(prepared), strict=True)
    }


def test_the_serving_core_gives_the_golden_answers(fixed_version, images):
    answers = core_answers(fixed_version, images)
    if os.environ.get(REGENERATE):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "about": (
                "Served answers of the fixed tiny version of tests/handlers/test_golden_answer.py; "
                f"regenerate with {REGENERATE}=1 and review the diff."
            ),
            "generated_with": {"torch": torch.__version__.split("+")[0], "numpy": np.__version__},
            "answers": answers,
        }
        text = json.dumps(document, indent=1, sort_keys=True)
        text = re.sub(r"\[\s*([-+0-9.e,\s]+?)\s*\]", lambda row: "[" + " ".join(row[1].split()) + "]", text)
        GOLDEN.write_text(text + "\n")  # one line per map row: a reviewable diff
        assert json.loads(GOLDEN.read_text()) == json.loads(json.dumps(document))
        pytest.skip(f"regenerated {GOLDEN}: review `git diff` and commit it")
    assert_same_answers(answers, "neurovit.serving")


def test_the_handler_gives_the_golden_answers(fixed_version, images):
    """The /explanations route (both maps by default), each image in its own request of one batch."""
    folder, options = fixed_version
    handler_and_context = handler_for(folder, options=options)
    requests = [request(data, "image/png", headers={"explain": "True"}) for data in images.values()]
    output, statuses = run(handler_and_context, requests)
    assert [status for status, _ in statuses] == [200] * len(images)
    assert_same_answers(
        {name: comparable(answer) for name, answer in zip(images, output, strict=True)}, "handler"
    )


@pytest.mark.gpu
def test_the_handler_on_a_gpu_gives_the_golden_answers_to_gpu_precision(fixed_version, images):
    """gpu_id 0, as TorchServe assigns it: the numbers within 5e-3 (TF32 convolutions, other kernels), the
    label wherever the golden top two probabilities are further apart than that."""
    folder, options = fixed_version
    handler_and_context = handler_for(folder, options=options, gpu_id=0)
    assert handler_and_context[0].predictor.device.type == "cuda"
    requests = [request(data, "image/png", headers={"explain": "True"}) for data in images.values()]
    output, statuses = run(handler_and_context, requests)
    assert [status for status, _ in statuses] == [200] * len(images)
    golden = load_golden()["answers"]
    for name, answer in zip(images, output, strict=True):
        answer, expected = comparable(answer), golden[name]
        classes = sorted(expected["probabilities"])
        wanted = np.array([expected["probabilities"][k] for k in classes])
        actual = np.array([answer["probabilities"][k] for k in classes])
        np.testing.assert_allclose(actual, wanted, rtol=0, atol=5e-3, err_msg=name)
        top_two = np.sort(wanted)[-2:]
        if top_two[1] - top_two[0] > 1e-2:
            assert answer["label"] == expected["label"], name
        for key, grid in expected["explanations"].items():
            np.testing.assert_allclose(answer["explanations"][key], grid, rtol=0, atol=5e-3, err_msg=name)
