"""Rollouts and pipeline runs from the command line: the patches `make deploy` sends (canary, promote,
rollback), through the real kserve SDK with a mocked Kubernetes API; `make pipeline-submit`'s kfp client call;
both fail with one clear line, no traceback, when the cluster or endpoint is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from k8s_render import ROOT, one, tools_bin

from handlers import kserve_rollout
from training import pipeline_submit
from training.cli import main as neurovit
from training.pipeline import PIPELINE_FILE, STORE_CONFIG, STORE_SECRET

OLD = "s3://neurovit/neurovit/v20261101-000000-aaaaaa"
NEW = "s3://neurovit/neurovit/v20261125-160000-ab12cd"


def isvc(mode: str = "Knative", annotations: dict | None = None) -> dict:
    return {
        "metadata": {
            "name": "neurovit",
            "annotations": {"serving.kserve.io/deploymentMode": mode, **(annotations or {})},
        },
        "spec": {"predictor": {"model": {"storageUri": OLD}}},
    }


class FakeClient:
    """KServeClient's get/patch, recording the patch."""

    def __init__(self, current: dict) -> None:
        self.current, self.patches = current, []

    def get(self, name, namespace=None):
        return self.current

    def patch(self, name, inferenceservice, namespace=None):
        self.patches.append((name, namespace, inferenceservice))


def test_canary_points_a_share_of_traffic_at_the_new_version_and_remembers_the_old() -> None:
    patch = kserve_rollout.canary_patch(isvc(), NEW, 10)
    assert patch["spec"]["predictor"] == {"canaryTrafficPercent": 10, "model": {"storageUri": NEW}}
    assert patch["metadata"]["annotations"][kserve_rollout.PREVIOUS_URI_ANNOTATION] == OLD


def test_promote_and_rollback() -> None:
    assert kserve_rollout.promote_patch(isvc())["spec"]["predictor"] == {"canaryTrafficPercent": 100}
    rolled = kserve_rollout.rollback_patch(
        isvc(annotations={kserve_rollout.PREVIOUS_URI_ANNOTATION: "s3://neurovit/neurovit/v0"})
    )
    assert rolled["spec"]["predictor"] == {
        "canaryTrafficPercent": 100,
        "model": {"storageUri": "s3://neurovit/neurovit/v0"},
    }
    assert rolled["metadata"]["annotations"][kserve_rollout.PREVIOUS_URI_ANNOTATION] == OLD


@pytest.mark.parametrize(
    ("current", "uri", "percent", "message"),
    [
        (isvc(), "gs://bucket/model", 10, "is not s3://"),
        (isvc(), NEW, 0, "1..100"),
        (isvc("Standard"), NEW, 10, "CANARY=100"),
        (isvc(), OLD, 10, "already serves"),
    ],
)
def test_bad_rollouts_are_refused(current, uri, percent, message) -> None:
    with pytest.raises(kserve_rollout.DeployError, match=message):
        kserve_rollout.canary_patch(current, uri, percent)
    with pytest.raises(kserve_rollout.DeployError, match="nothing to roll back"):
        kserve_rollout.rollback_patch(isvc())


def merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386, as the API server applies ``application/merge-patch+json``."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merged[key] = merge_patch(target[key], value)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize(
    ("overlay", "runtime"), [("knative", "neurovit-torchserve"), ("kserve", "neurovit-kserve")]
)
def test_a_canary_changes_only_the_version_whichever_runtime_serves(overlays, overlay, runtime) -> None:
    """Both runtimes read the same version folder: `make deploy`'s patch, applied to the InferenceService as
    deployed, keeps its runtime and model format and splits the traffic to the new folder."""
    live = one(overlays[overlay], "InferenceService")
    newer = "s3://neurovit/neurovit/v20261201-000000-cd34ef/"
    patched = merge_patch(live, kserve_rollout.canary_patch(live, newer, 10))
    before, after = live["spec"]["predictor"], patched["spec"]["predictor"]
    assert after["canaryTrafficPercent"] == 10 and after["model"]["storageUri"] == newer
    assert {k: v for k, v in after["model"].items() if k != "storageUri"} == {
        k: v for k, v in before["model"].items() if k != "storageUri"
    }
    assert after["model"]["runtime"] == runtime


def test_standard_mode_takes_a_rolling_update() -> None:
    assert (
        kserve_rollout.canary_patch(isvc("Standard"), NEW, 100)["spec"]["predictor"]["canaryTrafficPercent"]
        == 100
    )


@pytest.mark.parametrize("action", ["canary", "promote", "rollback"])
def test_kserve_sdk_sends_a_merge_patch_of_the_inference_service(action) -> None:
    """The real kserve and kubernetes clients in .venv-tools; only their HTTP layer is replaced."""
    result = subprocess.run(
        [str(tools_bin() / "python"), str(ROOT / "tests" / "deploy" / "kserve_sdk_probe.py"), action],
        capture_output=True, text=True, cwd=ROOT, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    if action == "rollback":  # the probe's service has no previous version recorded
        assert result.returncode != 0 and "nothing to roll back" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    get, patch = [json.loads(line) for line in result.stdout.splitlines()]
    path = "/apis/serving.kserve.io/v1beta1/namespaces/neurovit/inferenceservices/neurovit"
    assert get["method"] == "GET" and get["url"].endswith(path)
    assert patch["method"] == "PATCH" and patch["url"].endswith(path)
    assert patch["content_type"] == "application/merge-patch+json"
    assert (
        patch["body"]["apiVersion"] == "serving.kserve.io/v1beta1"
        and patch["body"]["kind"] == "InferenceService"
    )
    predictor = patch["body"]["spec"]["predictor"]
    if action == "canary":
        assert predictor == {"canaryTrafficPercent": 10, "model": {"storageUri": NEW}}
    else:
        assert predictor == {"canaryTrafficPercent": 100}


def run_module(python: str, module: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("KFP_", "NEUROVIT_STORE_URI", "KUBECONFIG"))
    }
    return subprocess.run(
        [python, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, check=False,
        env={**clean, **env}, timeout=120,
    )  # fmt: skip


def test_deploy_without_a_cluster_fails_clearly(tmp_path) -> None:
    result = run_module(
        str(tools_bin() / "python"), "training.cli", "deploy", "canary", "--storage-uri", NEW,
        env={"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing")},
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: no Kubernetes credentials")
    result = run_module(
        str(tools_bin() / "python"), "training.cli", "deploy", "canary", env={"HOME": str(tmp_path)}
    )
    assert result.returncode == 1 and "--storage-uri (STORAGE_URI=) is required" in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "error: KFP_HOST is not set"),
        ({"KFP_HOST": "http://127.0.0.1:9"}, "error: NEUROVIT_STORE_URI is not set"),
        (
            {"KFP_HOST": "http://127.0.0.1:9", "NEUROVIT_STORE_URI": "s3://neurovit"},
            "error: cannot submit to",
        ),
    ],
)
def test_pipeline_submit_without_an_endpoint_fails_clearly(env, message) -> None:
    result = run_module(sys.executable, "training.cli", "pipeline", "submit", env=env)
    assert result.returncode == 1 and result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_pipeline_submit_sends_the_compiled_pipeline(monkeypatch) -> None:
    calls = []

    class FakeKfp:
        def __init__(self, **settings) -> None:
            calls.append(("client", settings))

        def create_run_from_pipeline_package(self, pipeline_file, **kwargs):
            calls.append(("run", pipeline_file, kwargs))
            return type("Run", (), {"run_id": "r-1"})()

    import kfp

    monkeypatch.setattr(kfp, "Client", FakeKfp)
    env = {
        "KFP_HOST": "http://kfp",
        "KFP_TOKEN": "t",
        "KFP_NAMESPACE": "team",
        "NEUROVIT_STORE_URI": "s3://neurovit",
    }
    assert pipeline_submit.submit_from_env(["epochs=3", "train_gpus=0"], env)["run_id"] == "r-1"
    assert calls[0] == ("client", {"host": "http://kfp", "existing_token": "t", "namespace": "team"})
    _, pipeline_file, kwargs = calls[1]
    assert pipeline_file == str(PIPELINE_FILE)
    assert kwargs["arguments"] == {
        "store_uri": "s3://neurovit",
        "data_uri": "demo",
        "intensity_window": "foreground_median",  # the demo data's window, as in `make demo`
        "epochs": 3,
        "train_gpus": 0,
    }
    assert kwargs["experiment_name"] == "neurovit" and kwargs["namespace"] == "team"


def test_store_tasks_get_the_cluster_store_settings() -> None:
    """prepare-data and publish read the store Secret and ConfigMap the manifests create; no other task."""
    spec = list(yaml.safe_load_all(PIPELINE_FILE.read_text()))[-1]
    executors = spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-prepare-data", "exec-publish"}
    defaults = list(yaml.safe_load_all(PIPELINE_FILE.read_text()))[0]["root"]["inputDefinitions"][
        "parameters"
    ]
    assert defaults["store_secret"]["defaultValue"] == STORE_SECRET == "neurovit-s3"
    assert defaults["store_config"]["defaultValue"] == STORE_CONFIG == "neurovit-store"
    for executor in executors.values():
        (secret,) = executor["secretAsEnv"]
        assert {k["secretKey"] for k in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        (config,) = executor["configMapAsEnv"]
        assert "NEUROVIT_S3_ENDPOINT" in {k["configMapKey"] for k in config["keyToEnv"]}


def test_deploy_records_what_the_live_service_serves_and_rolls_back_to(tmp_path, monkeypatch, capsys) -> None:
    live = isvc(
        annotations={kserve_rollout.PREVIOUS_URI_ANNOTATION: "s3://neurovit/neurovit/v20261001-000000-bbbbbb"}
    )
    monkeypatch.setattr(kserve_rollout, "connect", lambda: FakeClient(live))
    # the SDK is in .venv-tools
    monkeypatch.setattr(kserve_rollout, "as_inference_service", lambda patch: patch)
    monkeypatch.setenv(kserve_rollout.RECORDS_ENV, str(tmp_path / "records"))
    assert neurovit(["deploy", "promote"]) == 0
    assert "recorded for `neurovit versions prune`" in capsys.readouterr().out
    record = json.loads((tmp_path / "records" / "neurovit.neurovit.json").read_text())
    assert record["serving"] == OLD and record["rollback"].endswith("v20261001-000000-bbbbbb")
    assert kserve_rollout.recorded_versions("neurovit") == {
        "v20261101-000000-aaaaaa",
        "v20261001-000000-bbbbbb",
    }
    assert kserve_rollout.recorded_versions("other-model") == set()
