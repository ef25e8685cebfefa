"""Every overlay and every documented chart variant renders; the InferenceService is autoscaled, bounded and
reads an object-store URI; bad values fail early with a message that names them."""

from __future__ import annotations

import re

import pytest
import yaml
from k8s_render import (
    CHART,
    CHART_VARIANTS,
    OVERLAYS,
    RUNTIMES,
    chart_values,
    kustomize,
    manifests_copy,
    one,
    render_chart,
    render_error,
    runtime_of,
)

S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]+[a-z0-9]/neurovit/\S+$")


def test_every_overlay_and_variant_is_covered(rendered) -> None:
    assert set(OVERLAYS) == {"knative", "standard", "gpu", "v2", "kserve"}
    assert {
        "default",
        "standard",
        "gpu",
        "v2",
        "external-s3",
        "parts-off",
        "kserve",
        "kserve-standard",
    } <= set(CHART_VARIANTS)
    assert all(rendered.values())
    for tool in ("kustomize/", "helm/"):
        assert {runtime_of(o) for name, o in rendered.items() if name.startswith(tool)} == set(RUNTIMES), tool


@pytest.mark.parametrize("name", ["kustomize/" + o for o in OVERLAYS] + ["helm/" + v for v in CHART_VARIANTS])
def test_inference_service_is_autoscaled_bounded_on_s3(rendered, name) -> None:
    predictor = one(rendered[name], "InferenceService")["spec"]["predictor"]
    assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"] <= 10
    assert predictor["scaleMetric"] in {"concurrency", "rps", "cpu", "memory"}
    assert predictor["scaleTarget"] >= 1
    assert S3_URI.match(predictor["model"]["storageUri"])
    assert predictor["serviceAccountName"].endswith("-predictor")


@pytest.mark.parametrize("name", ["kustomize/" + o for o in OVERLAYS] + ["helm/" + v for v in CHART_VARIANTS])
def test_the_named_runtime_serves_the_model_format_and_protocol(rendered, name) -> None:
    """What KServe's controller checks before it builds a predictor: the runtime the InferenceService names
    exists beside it, supports its model format and protocol; it is the only one, and never auto-selected."""
    model = one(rendered[name], "InferenceService")["spec"]["predictor"]["model"]
    runtime = one(rendered[name], "ServingRuntime")
    assert runtime["metadata"]["name"] == model["runtime"] == f"neurovit-{runtime_of(rendered[name])}"
    (served,) = runtime["spec"]["supportedModelFormats"]
    assert served["name"] == model["modelFormat"]["name"] and served["autoSelect"] is False
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


def test_modes_and_variants(overlays, charts) -> None:
    for objects in (overlays["knative"], charts["knative-scale-to-zero"]):
        isvc = one(objects, "InferenceService")
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
        assert isvc["spec"]["predictor"]["minReplicas"] == 0  # scale to zero allowed
        assert isvc["spec"]["predictor"]["scaleMetric"] == "concurrency"
        assert isvc["spec"]["predictor"]["containerConcurrency"] >= isvc["spec"]["predictor"]["scaleTarget"]
    for objects in (overlays["standard"], charts["standard"]):
        isvc = one(objects, "InferenceService")
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
        assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
        assert isvc["spec"]["predictor"]["scaleMetric"] == "cpu"
        assert "containerConcurrency" not in isvc["spec"]["predictor"]
    for objects in (overlays["gpu"], charts["gpu"]):
        predictor = one(objects, "InferenceService")["spec"]["predictor"]
        assert predictor["model"]["image"].endswith("-gpu")
        assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert predictor["nodeSelector"] and predictor["tolerations"]
    for objects in (overlays["v2"], charts["v2"]):
        model = one(objects, "InferenceService")["spec"]["predictor"]["model"]
        assert model["protocolVersion"] == "v2"
        assert {"name": "TS_SERVICE_ENVELOPE", "value": "kservev2"} in model["env"]
    for objects in (overlays["kserve"], charts["kserve"], charts["kserve-standard"]):
        model = one(objects, "InferenceService")["spec"]["predictor"]["model"]
        (container,) = one(objects, "ServingRuntime")["spec"]["containers"]
        assert (model["runtime"], model["modelFormat"]["name"]) == ("neurovit-kserve", "neurovit")
        assert "/neurovit/neurovit-serve-kserve:" in model.get("image", container["image"])
        assert "TS_SERVICE_ENVELOPE" not in str(model) + str(container)  # no TorchServe envelope to choose
    model = one(charts["kserve-standard"], "InferenceService")["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["image"].endswith("neurovit-serve-kserve:0.1.0-gpu")
    assert model["readinessProbe"]["httpGet"]["path"] == "/v2/models/neurovit/ready"
    assert not [o for o in charts["external-s3"] if "minio" in o["metadata"]["name"]]
    assert {o["kind"] for o in charts["parts-off"]}.isdisjoint({"PodMonitor", "PrometheusRule", "Role"})


def test_autoscaling_defaults_live_in_one_place_per_tool(overlays, charts) -> None:
    """scaleTarget / containerConcurrency come from `make bench-load`: values.yaml and the base hold them."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]["knative"]
    for objects in (overlays["knative"], charts["default"]):
        predictor = one(objects, "InferenceService")["spec"]["predictor"]
        assert (predictor["scaleTarget"], predictor["containerConcurrency"]) == (
            values["scaleTarget"],
            values["containerConcurrency"],
        )
    assert "make bench-load" in (CHART / "values.yaml").read_text()
    base = (CHART.parents[1] / "manifests" / "base" / "serving" / "inferenceservice.yaml").read_text()
    assert "make bench-load" in base


def test_chart_lints_strictly_for_every_variant() -> None:
    import helm_python as helm

    for variant in CHART_VARIANTS:
        report = helm.lint(str(CHART), chart_values(variant), strict=True, namespace="neurovit")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"{variant}: {problems}"


def test_kustomize_build_fails_without_the_credentials_file(tmp_path) -> None:
    manifests = manifests_copy(tmp_path)
    (manifests / "base" / "s3-credentials.env").unlink()
    result = kustomize(manifests / "overlays" / "knative")
    assert result.returncode != 0 and "s3-credentials.env" in result.stderr


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"autoscaling": {"maxReplicas": "four"}}, "/autoscaling/maxReplicas"),
        ({"autoscaling": {"minReplicas": -1}}, "/autoscaling/minReplicas"),
        ({"inferenceService": {"deploymentMode": "Serverful"}}, "/inferenceService/deploymentMode"),
        ({"model": {"storageUri": "gs://bucket/neurovit/v1"}}, "/model/storageUri"),
        ({"model": {"protocolVersion": "v3"}}, "/model/protocolVersion"),
        ({"runtime": "triton"}, "/runtime"),
        ({"image": {"kserveRepository": ""}}, "/image/kserveRepository"),
        ({"s3": {"endpoint": "https://minio:9000"}}, "/s3/endpoint"),
        ({"gpu": {"enabled": "yes"}}, "/gpu/enabled"),
        ({"monitoring": {"enable": True}}, "enable"),
        ({"replicaCount": 2}, "replicaCount"),
    ],
)
def test_wrong_values_fail_at_schema_validation_naming_the_value(change, named) -> None:
    values = chart_values("default")
    for key, part in change.items():
        values[key] = {**values.get(key, {}), **part} if isinstance(part, dict) else part
    message = render_error(values)
    assert message.startswith("HelmValuesError") and named in message, message


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (("model", "storageUri"), "model.storageUri is required"),
        (("s3", "accessKeyId"), "s3.existingSecret is required"),
        (("s3", "reader", "accessKeyId"), "s3.reader.existingSecret is required"),
        (("minio", "auth", "rootPassword"), "minio.auth.existingSecret is required"),
    ],
)
def test_missing_storage_uri_or_credentials_fails_rendering_with_required(remove, message) -> None:
    values = chart_values("default")
    *path, key = remove
    parent = values
    for part in path:
        parent = parent[part]
    del parent[key]
    error = render_error(values)
    assert error.startswith("HelmRenderError") and message in error, error


def test_impossible_combinations_fail_with_a_message() -> None:
    values = chart_values("standard")
    values["autoscaling"] = {"minReplicas": 0}
    assert "only Knative scales to zero" in render_error(values)
    values = chart_values("default")
    values["minio"] = {"enabled": False}
    assert "s3.endpoint is required when minio.enabled is false" in render_error(values)


def test_every_value_is_documented() -> None:
    """Like community charts: a "# --" comment right above every value; a documented key documents its block
    (resources, nodeSelector, ...), and keys that only group others need none."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, block_indent = [], None
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and indent > block_indent:
            continue  # inside a documented block value
        block_indent = None
        above = number - 1
        while (
            above >= 0
            and lines[above].strip().startswith("#")
            and not lines[above].strip().startswith("# --")
        ):
            above -= 1
        documented = above >= 0 and lines[above].strip().startswith("# --")
        is_group = stripped.endswith(":") and not documented
        if documented and stripped.endswith(":"):
            block_indent = indent
        if not documented and not is_group:
            undocumented.append(f"{number + 1}: {stripped}")
    assert not undocumented, undocumented


def test_notes_tell_the_first_request_and_the_dashboards() -> None:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        notes = chart.render(chart_values("default"), name="neurovit", namespace="neurovit")[
            "neurovit/templates/NOTES.txt"
        ]
    assert ":predict" in notes and ":explain" in notes and "grafana_dashboard" in notes
    assert render_chart(chart_values("default"))


def test_first_install_without_a_version_leaves_the_inference_service_out() -> None:
    """Before any pipeline run there is nothing to serve: the store and the rest install without a URI."""
    values = {
        "inferenceService": {"enabled": False},
        "s3": {"existingSecret": "neurovit-s3", "reader": {"existingSecret": "neurovit-s3-reader"}},
        "minio": {"auth": {"existingSecret": "neurovit-minio-root"}},
    }
    objects = render_chart(values)
    kinds = {obj["kind"] for obj in objects}
    assert "InferenceService" not in kinds and {"StatefulSet", "ServingRuntime", "ConfigMap"} <= kinds
