"""The chart and the kustomize manifests deploy the same thing: same kinds and names, same images, same ports.
Each overlay is compared with the chart variant that documents the same setting."""

from __future__ import annotations

import pytest
from k8s_render import scraped_port

PAIRS = [
    ("knative", "knative-scale-to-zero"),
    ("standard", "standard"),
    ("gpu", "gpu"),
    ("v2", "v2"),
    ("kserve", "kserve"),
]


def inventory(objects: list[dict]) -> set[tuple[str, str]]:
    # The Secret: kustomize always generates it; the chart only when given keys (else it names one).
    return {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] != "Secret"}


def images(objects: list[dict]) -> set[str]:
    found = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("image"), str):
                found.add(node["image"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(objects)
    return found


def ports(objects: list[dict]) -> set[tuple]:
    found = set()
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "Service":
            found |= {
                ("Service", obj["metadata"]["name"], p["port"], p.get("targetPort")) for p in spec["ports"]
            }
        containers = spec.get("containers", []) + spec.get("template", {}).get("spec", {}).get(
            "containers", []
        )
        for container in containers:
            found |= {
                (obj["kind"], container["name"], p["containerPort"]) for p in container.get("ports", [])
            }
        if obj["kind"] == "PodMonitor":
            for endpoint in spec["podMetricsEndpoints"]:
                found.add(("PodMonitor", endpoint["portNumber"], scraped_port(endpoint)))
        if obj["kind"] == "NetworkPolicy":
            found |= {
                ("NetworkPolicy", obj["metadata"]["name"], p["port"])
                for rule in spec.get("ingress", [])
                for p in rule.get("ports", [])
            }
    return found


@pytest.mark.parametrize(("overlay", "variant"), PAIRS)
def test_chart_and_kustomize_agree(overlays, charts, overlay, variant) -> None:
    kustomized, charted = overlays[overlay], charts[variant]
    assert inventory(kustomized) == inventory(charted)
    assert images(kustomized) == images(charted)
    assert ports(kustomized) == ports(charted)


def test_credentials_secrets_agree(overlays, charts) -> None:
    """Writer (pipeline), reader (predictor) and MinIO's root: same names and keys either way."""
    generated = {o["metadata"]["name"]: o for o in overlays["knative"] if o["kind"] == "Secret"}
    created = {o["metadata"]["name"]: o for o in charts["default"] if o["kind"] == "Secret"}
    assert set(generated) == set(created) == {"neurovit-s3", "neurovit-s3-reader", "neurovit-minio-root"}
    aws_keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for name in ("neurovit-s3", "neurovit-s3-reader"):
        assert set(generated[name]["data"]) == set(created[name]["data"]) == aws_keys
        for key in ("serving.kserve.io/s3-endpoint", "serving.kserve.io/s3-usehttps"):
            assert (
                generated[name]["metadata"]["annotations"][key]
                == created[name]["metadata"]["annotations"][key]
            )
    root_keys = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    assert (
        set(generated["neurovit-minio-root"]["data"])
        == set(created["neurovit-minio-root"]["data"])
        == root_keys
    )


def test_bucket_setup_script_agrees(overlays, charts) -> None:
    from k8s_render import CHART, MANIFESTS

    script = (MANIFESTS / "base" / "store" / "setup-users.sh").read_text()
    assert (CHART / "files" / "store" / "setup-users.sh").read_text() == script
    for objects in (overlays["knative"], charts["default"]):
        (config,) = [
            o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("setup")
        ]
        assert config["data"]["setup-users.sh"] == script
