"""Render what we ship as a user would: `kubectl kustomize` per overlay, Helm's library per values file.

Everything here runs offline on the repository's copies; nothing reads ../shared.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("knative", "standard", "gpu", "v2", "kserve")
CHART = ROOT / "helm" / "neurovit"
CHART_VARIANTS = tuple(
    sorted(path.name.removesuffix("-values.yaml") for path in (CHART / "ci").glob("*-values.yaml"))
)
CRDS = Path(__file__).with_name("crds")
BIN = Path(sys.executable).parent
TOOLS_BIN = ROOT / ".venv-tools" / "bin"
RELEASE = "neurovit"
NAMESPACE = "neurovit"
# The two model servers, and the port each serves its Prometheus metrics on: TorchServe's metrics address
# (handlers/package.py's config.properties); KServe's model server, beside its API (Dockerfile.kserve).
RUNTIMES = ("torchserve", "kserve")
METRICS_PORT = {"torchserve": 8082, "kserve": 8080}


def tools_bin() -> Path:
    """.venv-tools/bin (checkov, the kserve SDK), which `make test` creates first."""
    assert (TOOLS_BIN / "checkov").is_file(), "the tools environment is missing: run `make tools-venv`"
    return TOOLS_BIN


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


CREDENTIAL_FILES = ("s3-credentials.env", "s3-reader-credentials.env", "minio-root.env")


def manifests_copy(destination: Path) -> Path:
    """manifests/ copied, with the credentials files a user creates from their examples (gitignored here)."""
    copy = destination / "manifests"
    shutil.copytree(MANIFESTS, copy, ignore=shutil.ignore_patterns(*CREDENTIAL_FILES))
    for example in copy.rglob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    return copy


def kustomize(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(folder)], capture_output=True, text=True, check=False
    )


def build_overlay(manifests: Path, overlay: str) -> list[dict]:
    result = kustomize(manifests / "overlays" / overlay)
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
    return documents(result.stdout)


def chart_values(variant: str) -> dict:
    return yaml.safe_load((CHART / "ci" / f"{variant}-values.yaml").read_text())


def render_chart(values: dict, chart: Path = CHART) -> list[dict]:
    """Objects of the chart rendered as `helm template` would (schema check included), NOTES left out."""
    import helm_python as helm

    with helm.Chart.load(str(chart)) as loaded:
        loaded.validate_schema(values)
        rendered = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            objects += documents(text)
    return objects


def render_error(values: dict, chart: Path = CHART) -> str:
    """``"<HelmError class>: <message>"`` Helm stops with for ``values``, '' when it renders."""
    import helm_python as helm

    try:
        render_chart(values, chart)
    except helm.HelmError as error:
        return f"{type(error).__name__}: {error}"
    return ""


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def runtime_of(objects: list[dict]) -> str:
    """The model server a rendering runs, "torchserve" or "kserve": the runtime its InferenceService names."""
    name = one(objects, "InferenceService")["spec"]["predictor"]["model"]["runtime"]
    runtime = name.rsplit("-", 1)[-1]
    assert runtime in RUNTIMES, name
    return runtime


def scraped_port(endpoint: dict) -> int:
    """The port Prometheus scrapes for a PodMonitor endpoint: the declared port, unless a relabelling moves
    the address to another (TorchServe's metrics port is not declared: Knative allows one)."""
    for relabeling in endpoint.get("relabelings", []):
        if relabeling.get("targetLabel") == "__address__":
            return int(relabeling["replacement"].rsplit(":", 1)[1])
    return endpoint["portNumber"]
