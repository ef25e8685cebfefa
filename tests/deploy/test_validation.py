"""Every rendered object is validated as the API server would: built-in kinds strictly against the Kubernetes
schemas (oldest and newest supported version), custom resources against their CRD's openAPIV3Schema with
unknown fields rejected (kubectl's default strict field validation)."""

from __future__ import annotations

import copy
from functools import cache

import jsonschema
import kubernetes_validate
import pytest
import yaml
from k8s_render import CRDS

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # Chart.yaml's kubeVersion floor and the newest schemas shipped
CUSTOM_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "serving.kserve.io_servingruntimes.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}


def strict(schema):
    """The CRD schema as jsonschema: unknown fields rejected, OpenAPI's nullable honoured."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    return schema


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((CRDS / CUSTOM_KINDS[(api_version, kind)]).read_text())
    version = api_version.split("/")[1]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    return jsonschema.Draft7Validator(schema)


def custom(obj: dict) -> bool:
    return "." in obj["apiVersion"].split("/")[0] and not obj["apiVersion"].startswith(
        ("apps/", "batch/", "networking.k8s.io/", "rbac.authorization.k8s.io/", "policy/", "autoscaling/")
    )


def test_only_kinds_we_can_validate(rendered) -> None:
    for name, objects in rendered.items():
        for obj in objects:
            if custom(obj):
                assert (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS, f"{name}: no CRD for {obj['kind']}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_objects_are_valid_strictly(rendered, version) -> None:
    errors = []
    for name, objects in rendered.items():
        for obj in objects:
            if custom(obj):
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                errors.append(
                    f"{name} {obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}"
                )
    assert not errors, "\n".join(errors)


def test_custom_resources_are_valid_against_their_crds(rendered) -> None:
    errors = []
    for name, objects in rendered.items():
        for obj in filter(custom, objects):
            validator = crd_validator(obj["apiVersion"], obj["kind"])
            for error in validator.iter_errors(obj):
                errors.append(
                    f"{name} {obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}"
                )
    assert not errors, "\n".join(errors)


def test_the_crd_check_rejects_what_a_cluster_rejects(rendered) -> None:
    isvc = copy.deepcopy(next(o for o in rendered["kustomize/knative"] if o["kind"] == "InferenceService"))
    validator = crd_validator(isvc["apiVersion"], isvc["kind"])
    assert not list(validator.iter_errors(isvc))
    isvc["spec"]["predictor"]["scaleMetric"] = "gpu"
    isvc["spec"]["predictor"]["minReplica"] = 1
    messages = " ".join(error.message for error in validator.iter_errors(isvc))
    assert "'gpu' is not one of" in messages and "minReplica" in messages
