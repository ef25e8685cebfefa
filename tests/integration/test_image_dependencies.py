"""The images' dependency lists are tested artefacts: a fresh venv gets exactly what each Dockerfile installs
(the pyproject.toml extras its RUN line reads, then the project with --no-deps), and must do the image's job.
The KServe runtime's list (``serve-kserve``) is built the same way: it answers through the runtime's model
without TorchServe or the training dependencies.

- serving (handlers/Dockerfile): the handler module imports, answers a PNG through neurovit.serving's
  Predictor and through NeuroViTHandler with TorchServe's own Context, and scikit-learn, minio and kfp are
  not importable (a training-only import on the serving path fails here, not in a cluster);
- training (training/Dockerfile): the pipeline's entry points import.

What the images add on top (the base image's KServe wrapper, the CUDA torch index) cannot be reproduced
without Docker. Each venv is built once per session (pip: torch's CPU wheel from the local wheel folder,
the rest from the package index; about two minutes each on two cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from fixtures.serving_samples import VERSION, published_copy, save_tiny_model

from neurovit.integrity import VERSION_DIR_ENV

pytestmark = [pytest.mark.integration, pytest.mark.image_deps]

ROOT = Path(__file__).resolve().parents[2]
NOT_FOR_SERVING = ("sklearn", "minio", "kfp")
PIP_TIMEOUT_S = 1800


def extras_installed_by(dockerfile: Path) -> list[str]:
    """The pyproject.toml extras the Dockerfile's requirements step reads, in order."""
    text = dockerfile.read_text()
    step = next(block for block in text.split("\nRUN ") if "optional-dependencies" in block)
    return [
        name
        for name in re.findall(r"\['([\w-]+)'\]", step)
        if name not in {"project", "optional-dependencies"}
    ]


def copied_sources(dockerfile: Path) -> list[str]:
    """What the Dockerfile copies of the project before `pip install --no-deps` (pyproject.toml first)."""
    return re.findall(r"^COPY (\S+) /tmp/neurovit/\S+$", dockerfile.read_text(), flags=re.MULTILINE)


def requirements(extras: list[str]) -> list[str]:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return [line for extra in extras for line in table[extra]]


def clean_env() -> dict[str, str]:
    """No PYTHONPATH (it points at the work tree) and no user site: only the venv's own packages count."""
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "PYTHONHOME"}}
    return {**env, "PYTHONNOUSERSITE": "1", "MPLBACKEND": "Agg", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def build_venv(dockerfile: Path, where: Path) -> Path:
    """A venv holding what ``dockerfile`` installs of the project: its extras' pins, then the project."""
    return build_venv_from(extras_installed_by(dockerfile), copied_sources(dockerfile), where)


def build_venv_from(extras: list[str], sources: list[str], where: Path) -> Path:
    """A venv holding ``extras``' pins, then the project (``sources`` copied) without dependencies."""
    listed = requirements(extras)
    assert any(line.startswith("torch==") for line in listed), "the list must pin torch (CPU wheel on disk)"
    source = where / "source"
    source.mkdir(parents=True)
    for name in sources:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    (where / "requirements.txt").write_text("\n".join(listed) + "\n")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    for args in (["-r", str(where / "requirements.txt")], ["--no-deps", str(source)]):
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *args],
            capture_output=True, text=True, env=clean_env(), cwd=where, timeout=PIP_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"pip install {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    shutil.rmtree(source)  # what runs below must come from the venv, as in the image
    return python


def run_probe(python: Path, script: str, *args: str, cwd: Path, env: dict | None = None) -> dict:
    result = subprocess.run(
        [str(python), "-c", textwrap.dedent(script), *args],
        capture_output=True, text=True, env={**clean_env(), **(env or {})}, cwd=cwd, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"probe failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def serving_python(tmp_path_factory) -> Path:
    return build_venv(ROOT / "handlers" / "Dockerfile", tmp_path_factory.mktemp("serving-image"))


@pytest.fixture(scope="session")
def training_python(tmp_path_factory) -> Path:
    return build_venv(ROOT / "training" / "Dockerfile", tmp_path_factory.mktemp("training-image"))


SERVING_PROBE = """
import importlib.util, io, json, sys

import numpy as np
from PIL import Image

not_for_serving = sys.argv[1].split(",")
present = [name for name in not_for_serving if importlib.util.find_spec(name) is not None]

import handlers.neurovit_handler as handler_module  # the module TorchServe loads from the .mar
from neurovit.serving import Predictor, parse_item
from ts.context import Context
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.service import Service

model_dir, metrics_yaml = sys.argv[2], sys.argv[3]
buffer = io.BytesIO()
Image.fromarray((np.arange(48 * 48) % 251).astype(np.uint8).reshape(48, 48)).save(buffer, "PNG")
png = buffer.getvalue()

predictor = Predictor.load(model_dir, name="neurovit", version=sys.argv[4])
direct = predictor.predict([predictor.prepare(parse_item({"body": png}))])[0]

metrics = MetricsCacheYamlImpl(config_file_path=metrics_yaml)
metrics.initialize_cache()
metrics.model_name = "neurovit"
context = Context(
    "neurovit", model_dir, {"model": {"modelName": "neurovit", "modelVersion": sys.argv[4]}},
    1, None, "0.12.0", metrics=metrics, model_yaml_config={},
)
handler = handler_module.NeuroViTHandler()
handler.initialize(context)
# One request as TorchServe's worker hands it over (ts.service.Service.predict).
batch = [{
    "requestId": b"request-0",
    "parameters": [{"name": "body", "contentType": "image/png", "value": bytearray(png)}],
    "headers": [{"name": b"Content-Type", "value": b"image/png"}],
}]
processors, inputs, ids = Service.retrieve_data_for_inference(batch)
context.request_ids, context.request_processor, context.metrics.request_ids = ids, processors, ids
via_handler = handler.handle(inputs, context)[0]
status = context.get_response_status(0)[0]

loaded = sorted(name for name in not_for_serving if name in sys.modules)
answer = {"present": present, "loaded": loaded, "status": status, "direct": direct, "handler": via_handler}
print(json.dumps(answer))
"""


def test_serving_image_list_answers_a_request_without_training_dependencies(serving_python, tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    version_dir = published_copy(model_dir)  # the handler verifies it before loading
    answer = run_probe(
        serving_python,
        SERVING_PROBE,
        ",".join(NOT_FOR_SERVING),
        str(model_dir),
        str(ROOT / "handlers" / "metrics.yaml"),
        VERSION,
        cwd=tmp_path,
        env={VERSION_DIR_ENV: str(version_dir)},
    )
    assert answer["present"] == [], f"installed in the serving image: {answer['present']}"
    assert answer["loaded"] == []
    assert answer["status"] in (None, 200)
    for result in (answer["direct"], answer["handler"]):
        assert result["label"] in result["probabilities"], result
        assert abs(sum(result["probabilities"].values()) - 1.0) < 1e-6
    assert answer["direct"]["label"] == answer["handler"]["label"]


@pytest.fixture(scope="session")
def kserve_runtime_python(tmp_path_factory) -> Path:
    """What the KServe runtime's image installs: the serve-kserve list, then the project."""
    sources = ["pyproject.toml", "neurovit", "training", "handlers"]  # as handlers/Dockerfile copies them
    return build_venv_from(["serve-kserve"], sources, tmp_path_factory.mktemp("kserve-image"))


KSERVE_PROBE = """
import asyncio, importlib.util, io, json, sys

import numpy as np
from PIL import Image

not_for_serving = sys.argv[1].split(",")
present = [name for name in not_for_serving if importlib.util.find_spec(name) is not None]

import kserve_storage  # the storage initializer's code ships with the runtime's list
from handlers.kserve_model import NeuroViTModel

buffer = io.BytesIO()
Image.fromarray((np.arange(48 * 48) % 251).astype(np.uint8).reshape(48, 48)).save(buffer, "PNG")
model = NeuroViTModel("neurovit", sys.argv[2])
model.load()


async def ask():
    job = await model.preprocess(buffer.getvalue(), {"x-neurovit-explain": "heatmap"})
    return await model.predict(job)


(answer,) = asyncio.run(ask())["predictions"]
loaded = sorted(name for name in not_for_serving if name in sys.modules)
print(json.dumps({"present": present, "loaded": loaded, "ready": model.ready, "answer": answer}))
"""


def test_kserve_runtime_list_answers_a_request_without_training_or_torchserve(
    kserve_runtime_python, tmp_path
):
    staged = tmp_path / "version"
    save_tiny_model(staged / "model")  # a version as the main job lays it out: model/ at its root
    version_dir = published_copy(staged)  # the runtime verifies it against its manifest before loading
    answer = run_probe(
        kserve_runtime_python,
        KSERVE_PROBE,
        ",".join((*NOT_FOR_SERVING, "ts")),
        str(version_dir),
        cwd=tmp_path,
    )
    assert answer["present"] == [] and answer["loaded"] == [] and answer["ready"] is True
    result = answer["answer"]
    assert result["label"] in result["probabilities"] and list(result["explanations"]) == ["heatmap"]
    assert abs(sum(result["probabilities"].values()) - 1.0) < 1e-6


TRAINING_PROBE = """
import json, importlib.util, subprocess, sys

import kfp, sklearn, minio  # the training image holds what serving leaves out
import training.cli, training.evaluation_report, training.stages, training.pipeline, training.train
import handlers.package
from training import pipeline

components = sorted(
    name for name, value in vars(pipeline).items() if hasattr(value, "component_spec")
)
cli = subprocess.run([sys.executable, "-m", "training.cli", "--help"], capture_output=True, text=True)
print(json.dumps({"components": components, "cli": cli.returncode, "kfp": kfp.__version__}))
"""


def test_training_image_list_imports_the_pipeline_entry_points(training_python, tmp_path):
    answer = run_probe(training_python, TRAINING_PROBE, cwd=tmp_path)
    assert answer["cli"] == 0
    assert len(answer["components"]) >= 3, answer["components"]


def test_each_dockerfile_installs_one_list_and_the_project_without_dependencies():
    """What the venvs above reproduce is what the Dockerfiles do: no other pip install of packages."""
    for dockerfile, extras in (
        ("handlers/Dockerfile", ["serve"]),
        ("handlers/Dockerfile.kserve", ["serve-kserve"]),
        ("training/Dockerfile", ["serve", "train"]),
    ):
        path = ROOT / dockerfile
        assert extras_installed_by(path) == extras
        assert copied_sources(path)[0] == "pyproject.toml"
        commands = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))
        installs = re.findall(r"pip install ([^\n&]*)", commands)
        allowed = (r"--upgrade pip", r".*\"torch==\$\{TORCH_VERSION\}\"", r".*-r /tmp/.*requirements\.txt")
        others = [line for line in installs if not any(re.fullmatch(p, line.strip()) for p in allowed)]
        assert len(others) == 1 and re.fullmatch(
            r"(--no-cache-dir )?--no-deps /tmp/neurovit \\", others[0].strip()
        )
