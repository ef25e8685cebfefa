"""Roll a published version out to the InferenceService with the kserve SDK: canary, promote, rollback.

    neurovit deploy canary   --storage-uri s3://neurovit/neurovit/<version> [--percent 10]
    neurovit deploy promote
    neurovit deploy rollback
    (all take --name and --namespace, default neurovit; make deploy / deploy-promote / deploy-rollback)

- canary: points ``predictor.model.storageUri`` at the new version and sends ``--percent`` of the traffic to
  it (``canaryTrafficPercent``); the rest stays on the previous revision. The previous URI is kept in the
  annotation ``neurovit.io/previous-storage-uri`` for a rollback. ``--percent 100`` is a plain rollout.
  The URI must name one complete version, which is verified first (manifest present, every file's sha256:
  ``neurovit.store``), and is always sent as the version folder with its trailing slash: KServe copies
  ``storageUri`` as a key prefix, and ``.../v1`` would also match ``.../v10``.
- promote: ``canaryTrafficPercent`` 100, so the new revision takes all the traffic.
- rollback: points the service back at the previous URI with all the traffic.

Traffic splitting needs KServe's Knative mode. In Standard mode only ``--percent 100`` (a rolling update) is
accepted. The Kubernetes connection is the usual one: ``KUBECONFIG`` / ``~/.kube/config``, or the pod's
ServiceAccount in a cluster (``neurovit-deployer`` may get and patch the InferenceService it is named for,
nothing else). Runs in .venv-tools, where the kserve SDK lives (its pins clash with the project's);
besides the SDK and the standard library it imports only ``neurovit.errors`` and ``neurovit.store`` (minio
is in requirements-tools.txt), to verify the version. After each action the served and rollback URIs are
recorded for ``neurovit versions prune`` (``record_deployment``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from neurovit.errors import NeuroVitError, StoreError

PREVIOUS_URI_ANNOTATION = "neurovit.io/previous-storage-uri"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
KNATIVE_MODES = {"Knative", "Serverless"}  # "Serverless": KServe's former name, still accepted
STORAGE_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+$")


class DeployError(NeuroVitError, ValueError):
    """The rollout cannot be done as asked (bad URI, wrong mode, nothing to roll back to, no cluster)."""


@dataclass(frozen=True)
class Target:
    name: str
    namespace: str


def storage_uri(isvc: dict) -> str:
    return isvc["spec"]["predictor"]["model"]["storageUri"]


def deployment_mode(isvc: dict) -> str:
    """The mode KServe resolved (status), else the annotation; KServe's default is Standard."""
    status_mode = (isvc.get("status") or {}).get("deploymentMode")
    return status_mode or (isvc["metadata"].get("annotations") or {}).get(MODE_ANNOTATION, "Standard")


def verified_version_uri(uri: str) -> str:
    """The URI of the one complete version ``uri`` names, after checking every file against its manifest,
    as the version folder with its trailing slash; DeployError saying why otherwise.

    Refused: a URI naming a model or ``latest`` rather than a version (what it serves would change under
    it) is a DeployError; a version without manifest (an interrupted publish), a file missing or not
    matching its sha256, a store that cannot be read are a StoreError.
    """
    try:
        from neurovit.store import LATEST, resolve
    except ImportError as error:
        raise DeployError(f"cannot read the store ({error}): run `make tools-venv`") from error
    named = uri.rstrip("/").rsplit("/", 1)[-1]
    try:
        store, model, version = resolve(uri.rstrip("/"))
        if named in (LATEST, model) or version != named:
            raise DeployError(
                f"{uri} does not name one version (it resolves to {model}/{version} today): "
                f"use {store.version_uri(model, version)}/"
            )
        store.verify(model, version)  # downloads every file and checks its sha256
    except DeployError:
        raise
    except NeuroVitError as error:
        raise StoreError(f"{uri} is not one complete, verified version: {error}") from error
    return store.version_uri(model, version) + "/"


def canary_patch(isvc: dict, new_uri: str, percent: int) -> dict:
    """Merge patch that serves ``new_uri`` to ``percent`` % of the traffic, remembering the current URI."""
    if not STORAGE_URI.match(new_uri):
        raise DeployError(f"storage URI {new_uri!r} is not s3://<bucket>/<model>/<version>")
    if not 1 <= percent <= 100:
        raise DeployError(f"canary percent must be 1..100, got {percent}")
    if percent < 100 and deployment_mode(isvc) not in KNATIVE_MODES:
        raise DeployError(
            f"traffic splitting needs KServe's Knative mode; {isvc['metadata']['name']} runs in "
            f"{deployment_mode(isvc)} mode: use --percent 100 (CANARY=100) for a rolling update"
        )
    current = storage_uri(isvc)
    if current.rstrip("/") == new_uri.rstrip("/"):
        raise DeployError(f"{isvc['metadata']['name']} already serves {new_uri}")
    return {
        "metadata": {"annotations": {PREVIOUS_URI_ANNOTATION: current}},
        "spec": {"predictor": {"canaryTrafficPercent": percent, "model": {"storageUri": new_uri}}},
    }


def promote_patch(isvc: dict) -> dict:
    """Merge patch that sends all the traffic to the latest revision."""
    return {"spec": {"predictor": {"canaryTrafficPercent": 100}}}


def rollback_patch(isvc: dict) -> dict:
    """Merge patch that serves the previous version again, with all the traffic."""
    previous = (isvc["metadata"].get("annotations") or {}).get(PREVIOUS_URI_ANNOTATION)
    if not previous:
        raise DeployError(
            f"{isvc['metadata']['name']} has no {PREVIOUS_URI_ANNOTATION} annotation: "
            "nothing to roll back to "
            "(only versions rolled out with `make deploy` can be rolled back)"
        )
    return {
        "metadata": {"annotations": {PREVIOUS_URI_ANNOTATION: storage_uri(isvc)}},
        "spec": {"predictor": {"canaryTrafficPercent": 100, "model": {"storageUri": previous}}},
    }


def as_inference_service(patch: dict):
    """The patch as the SDK's V1beta1InferenceService (KServeClient.patch reads its api_version)."""
    from kserve import V1beta1InferenceService, constants

    return V1beta1InferenceService(
        api_version=f"{constants.KSERVE_GROUP}/{constants.KSERVE_V1BETA1_VERSION}",
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=patch.get("metadata", {}),
        spec=patch["spec"],
    )


def apply(client, target: Target, action: str, *, new_uri: str = "", percent: int = 10) -> dict:
    """Read the InferenceService, build the patch for ``action`` and send it; returns the patch."""
    isvc = client.get(target.name, namespace=target.namespace)
    if action == "canary":
        patch = canary_patch(isvc, new_uri, percent)
    elif action == "promote":
        patch = promote_patch(isvc)
    elif action == "rollback":
        patch = rollback_patch(isvc)
    else:
        raise DeployError(f"unknown action {action!r}")
    client.patch(target.name, as_inference_service(patch), namespace=target.namespace)
    return patch


# --- the record `neurovit versions prune` keeps ------------------------------------------------------------
# After each action the live object's storageUri (serving) and previous-URI annotation (rollback target) go to
# <records>/<namespace>.<name>.json; `neurovit versions prune` never removes the versions named there.

RECORDS_ENV = "NEUROVIT_DEPLOY_RECORDS"


def records_dir() -> Path:
    """$NEUROVIT_DEPLOY_RECORDS, else <$NEUROVIT_OUTPUT_DIR or outputs>/deployments (neurovit.config's)."""
    if os.environ.get(RECORDS_ENV):
        return Path(os.environ[RECORDS_ENV])
    return Path(os.environ.get("NEUROVIT_OUTPUT_DIR", "outputs")) / "deployments"


def record_deployment(isvc: dict, target: Target, folder: Path | None = None) -> Path:
    """Write what ``isvc`` (read back after the patch) serves and would roll back to; returns the file."""
    folder = Path(folder or records_dir())
    record = {
        "inference_service": target.name,
        "namespace": target.namespace,
        "serving": storage_uri(isvc),
        "rollback": (isvc["metadata"].get("annotations") or {}).get(PREVIOUS_URI_ANNOTATION),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{target.namespace}.{target.name}.json"
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".record-", delete=False) as handle:
        handle.write(json.dumps(record, indent=2) + "\n")
    os.replace(handle.name, path)  # a reader sees the old record or the new one, never half
    return path


def recorded_versions(model: str, folder: Path | None = None) -> set[str]:
    """Version ids of ``model`` that any record names as serving or rollback target."""
    folder = Path(folder or records_dir())
    versions = set()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = json.loads(path.read_text())
        for uri in (record.get("serving"), record.get("rollback")):
            parts = (uri or "").rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == model:
                versions.add(parts[-1])
    return versions


def connect():
    """A KServeClient on the usual Kubernetes configuration; DeployError when there is none."""
    try:
        from kserve import KServeClient
        from kubernetes.config import ConfigException
    except ImportError as error:
        raise DeployError(f"the kserve SDK is missing ({error}): run `make tools-venv`") from error
    try:
        return KServeClient()
    except (ConfigException, OSError) as error:
        raise DeployError(
            f"no Kubernetes credentials ({error}): set KUBECONFIG or ~/.kube/config, or run in a pod"
        ) from error


def describe(patch: dict, target: Target) -> str:
    predictor = patch["spec"]["predictor"]
    uri = predictor.get("model", {}).get("storageUri")
    where = f"inferenceservice/{target.name} in {target.namespace}"
    if uri:
        return f"{where}: {predictor['canaryTrafficPercent']}% of the traffic to {uri}"
    return f"{where}: promoted, 100% of the traffic to the latest revision"


def rollout(
    action: str, storage_uri: str = "", percent: int = 10, name: str = "neurovit", namespace: str = "neurovit"
) -> dict:
    """``canary`` (``storage_uri`` verified first), ``promote`` or ``rollback`` on one InferenceService;
    prints what it did and records it for ``neurovit versions prune``. Returns the patch and the record."""
    target = Target(name, namespace)
    if action == "canary" and not storage_uri:
        raise DeployError("--storage-uri (STORAGE_URI=) is required: the s3:// URI a pipeline run printed")
    try:
        client = connect()
        new_uri = storage_uri
        if action == "canary":
            if not STORAGE_URI.match(new_uri):
                raise DeployError(f"storage URI {new_uri!r} is not s3://<bucket>/<model>/<version>")
            # After connect (it reads local configuration only): verifying downloads the whole version.
            new_uri = verified_version_uri(new_uri)
        patch = apply(client, target, action, new_uri=new_uri, percent=percent)
    except RuntimeError as error:
        if isinstance(error, NeuroVitError):
            raise
        # The SDK's wrapping of API errors (not found, forbidden, unreachable): its first line says it.
        raise DeployError(str(error).strip().splitlines()[0]) from error
    print(describe(patch, target))
    record = None
    try:
        live = client.get(target.name, namespace=target.namespace)  # as patched, not as we meant it
        record = record_deployment(live, target)
        print(f"recorded for `neurovit versions prune`: {record}")
    except (OSError, RuntimeError) as error:
        print(f"warning: rolled out, but the record for prune was not written: {error}", file=sys.stderr)
    if action != "canary":
        print(
            "record the served version in your values or overlay before the next helm upgrade / kubectl apply"
        )
    return {"patch": patch, "record": str(record) if record else None}
