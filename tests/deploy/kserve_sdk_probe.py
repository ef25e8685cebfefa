"""Run by test_rollout.py in .venv-tools (where the kserve SDK lives): handlers.kserve_rollout through the
real kserve and kubernetes clients, with only the HTTP layer replaced. Prints the requests as JSON lines."""

from __future__ import annotations

import json
import sys

from kubernetes.client import rest

ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "neurovit", "namespace": "neurovit", "annotations": {}},
    "spec": {"predictor": {"model": {"storageUri": "s3://neurovit/neurovit/v20261101-000000-aaaaaa"}}},
    "status": {"deploymentMode": "Knative"},
}


class Urllib3Answer:
    """What urllib3 returns, as far as the kubernetes client reads it."""

    def __init__(self, body: dict) -> None:
        self.status, self.reason, self.data = 200, "OK", json.dumps(body).encode()
        self.headers = {"content-type": "application/json"}


def fake_request(self, method, url, headers=None, body=None, **_):
    print(
        json.dumps(
            {"method": method, "url": url, "content_type": (headers or {}).get("Content-Type"), "body": body}
        )
    )
    return rest.RESTResponse(Urllib3Answer(ISVC))


rest.RESTClientObject.request = fake_request

from kserve import KServeClient  # noqa: E402

from handlers import kserve_rollout  # noqa: E402

kubeconfig = {
    "apiVersion": "v1",
    "clusters": [{"name": "c", "cluster": {"server": "https://kubernetes.invalid"}}],
    "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "x",
}
client = KServeClient(config_dict=kubeconfig)
action = sys.argv[1]
kserve_rollout.apply(
    client, kserve_rollout.Target("neurovit", "neurovit"), action,
    new_uri="s3://neurovit/neurovit/v20261125-160000-ab12cd", percent=10,
)  # fmt: skip
