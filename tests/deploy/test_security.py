"""Secure defaults on every pod we define: non-root, no privilege escalation, read-only root filesystem,
all capabilities dropped, seccomp RuntimeDefault, requests and limits, probes; images pinned by tag.

Predictor pods are built by KServe from our ServingRuntime's container merged with the InferenceService's
model fields (the model's fields win), so that merge is what is checked."""

from __future__ import annotations

import json
import re

import pytest
from k8s_render import METRICS_PORT, ROOT, by_kind, one, runtime_of

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}


def pod_spec(obj: dict) -> dict:
    template = (
        obj["spec"]["jobTemplate"]["spec"]["template"]
        if obj["kind"] == "CronJob"
        else obj["spec"]["template"]
    )
    return template["spec"]


def predictor_container(objects: list[dict]) -> tuple[dict, dict]:
    """The predictor container as KServe builds it, and the predictor's pod-level fields."""
    runtime = one(objects, "ServingRuntime")["spec"]["containers"][0]
    predictor = one(objects, "InferenceService")["spec"]["predictor"]
    model = {
        key: value
        for key, value in predictor["model"].items()
        if key not in {"modelFormat", "runtime", "storageUri", "protocolVersion"}
    }
    return {**runtime, **model}, predictor


def pods(objects: list[dict]) -> list[tuple[str, dict, list[dict], bool]]:
    """(name, pod-level securityContext, containers, long-running) for every pod we define."""
    found = [
        (
            f"{obj['kind']}/{obj['metadata']['name']}",
            pod_spec(obj).get("securityContext", {}),
            pod_spec(obj)["containers"] + pod_spec(obj).get("initContainers", []),
            obj["kind"] not in {"Job", "CronJob"},
        )
        for obj in objects
        if obj["kind"] in WORKLOADS
    ]
    container, predictor = predictor_container(objects)
    found.append(("predictor", predictor.get("securityContext", {}), [container], True))
    return found


def setting(pod_context: dict, container: dict, key: str):
    """A container's security setting, falling back to the pod's (as the kubelet does)."""
    return container.get("securityContext", {}).get(key, pod_context.get(key))


def test_every_pod_is_hardened(rendered) -> None:
    problems = []
    for name, objects in rendered.items():
        for pod, pod_context, containers, long_running in pods(objects):
            for container in containers:
                where = f"{name} {pod}/{container['name']}"
                context = container.get("securityContext", {})
                if setting(pod_context, container, "runAsNonRoot") is not True:
                    problems.append(f"{where}: runAsNonRoot")
                if context.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{where}: allowPrivilegeEscalation")
                if context.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{where}: readOnlyRootFilesystem")
                if context.get("capabilities", {}).get("drop") != ["ALL"] or context["capabilities"].get(
                    "add"
                ):
                    problems.append(f"{where}: capabilities")
                if (setting(pod_context, container, "seccompProfile") or {}).get("type") != "RuntimeDefault":
                    problems.append(f"{where}: seccompProfile")
                resources = container.get("resources", {})
                for part in ("requests", "limits"):
                    if not {"cpu", "memory"} <= set(resources.get(part, {})):
                        problems.append(f"{where}: {part}")
                # A Job's one-shot container serves nothing to probe; its backoff and deadline bound it.
                if long_running and not (container.get("readinessProbe") and container.get("livenessProbe")):
                    problems.append(f"{where}: probes")
    assert not problems, "\n".join(problems)


def test_service_accounts_carry_no_api_token(rendered) -> None:
    for name, objects in rendered.items():
        for account in by_kind(objects, "ServiceAccount"):
            assert account.get("automountServiceAccountToken") is False, (
                f"{name} {account['metadata']['name']}"
            )


@pytest.mark.parametrize("kind", ["ServingRuntime", "InferenceService", "StatefulSet", "Job"])
def test_images_are_pinned(rendered, kind) -> None:
    for name, objects in rendered.items():
        for obj in by_kind(objects, kind):
            text = str(obj)
            for image in [part.split("'")[0] for part in text.split("'image': '")[1:]]:
                tag = image.rsplit("/", 1)[-1]
                assert "@sha256:" in image or (":" in tag and not tag.endswith(":latest")), f"{name}: {image}"


def test_predictor_is_reachable_only_from_the_ingress_path_and_prometheus(rendered) -> None:
    for name, objects in rendered.items():
        policies = [
            p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"].endswith("-predictor")
        ]
        assert len(policies) == 1, name
        (policy,) = policies
        assert policy["spec"]["podSelector"]["matchLabels"]["component"] == "predictor"
        sources = [
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in policy["spec"]["ingress"]
            for peer in rule["from"]
        ]
        assert "monitoring" in sources and "default" not in sources
        assert all("podSelector" not in peer for rule in policy["spec"]["ingress"] for peer in rule["from"])


# Ports in the pod no policy may admit: TorchServe's own APIs (handlers/package.py: inference, management,
# gRPC; on loopback, management unregisters the model or scales it to zero) and KServe's gRPC port (off).
PRIVATE_PORTS = {8085, 8086, 7070, 7071, 8081}
# Knative: queue-proxy's serving ports (HTTP/1, h2c) and its autoscaling metrics; Standard: the model server.
INGRESS_PORTS = {"Knative": {8012, 8013, 9090}, "Standard": {8080}}
QUEUE_PROXY_METRICS = 9091


def predictor_policy_ports(objects: list[dict]) -> dict[str, set[int]]:
    """Source namespace -> TCP ports the predictor's NetworkPolicy admits from it (None: every port)."""
    (policy,) = [p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"].endswith("-predictor")]
    admitted: dict[str, set[int]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("ports"), f"a rule admits {rule['from']} on every port"
        ports = {port["port"] for port in rule["ports"]}
        for peer in rule["from"]:
            namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            admitted.setdefault(namespace, set()).update(ports)
    return admitted


def test_predictor_policy_admits_each_namespace_on_its_ports_only(rendered) -> None:
    for name, objects in rendered.items():
        mode = one(objects, "InferenceService")["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        admitted = predictor_policy_ports(objects)
        metrics = {METRICS_PORT[runtime_of(objects)], QUEUE_PROXY_METRICS}
        for namespace, ports in admitted.items():
            allowed = metrics if namespace == "monitoring" else INGRESS_PORTS[mode]
            assert ports <= allowed, f"{name}: {namespace} admitted on {sorted(ports - allowed)}"
            assert not ports & PRIVATE_PORTS, f"{name}: {namespace} reaches a port private to the pod"
        assert METRICS_PORT[runtime_of(objects)] in admitted["monitoring"], (
            f"{name}: Prometheus cannot scrape"
        )
        if mode == "Knative":
            assert admitted["knative-serving"] == {8012, 8013, 9090}, name
            assert admitted["istio-system"] == {8012, 8013}, name


def dockerfile_instruction(text: str, instruction: str) -> str:
    (value,) = re.findall(rf"^{instruction} (.+)$", text, flags=re.MULTILINE)
    return value


def test_kserve_runtime_runs_the_image_as_built(rendered) -> None:
    """The ServingRuntime and handlers/Dockerfile.kserve agree: the image's non-root user, the entrypoint's
    arguments (the storage initializer's mount, the model the probe asks about, the one port), gRPC off."""
    dockerfile = (ROOT / "handlers" / "Dockerfile.kserve").read_text()
    uid, gid = (int(part) for part in dockerfile_instruction(dockerfile, "USER").split(":"))
    assert json.loads(dockerfile_instruction(dockerfile, "ENTRYPOINT")) == [
        "python",
        "-m",
        "handlers.kserve_server",
    ]
    default_args = json.loads(dockerfile_instruction(dockerfile, "CMD"))
    kserve = {name: objects for name, objects in rendered.items() if runtime_of(objects) == "kserve"}
    assert kserve
    for name, objects in kserve.items():
        (container,) = one(objects, "ServingRuntime")["spec"]["containers"]
        context = container["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid) and uid != 0, name
        # The image's defaults, gRPC switched off (no port declared or admitted for it).
        args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
        defaults = {
            flag.removeprefix("--"): value
            for flag, value in zip(default_args[::2], default_args[1::2], strict=True)
        }
        assert args == {**defaults, "enable_grpc": "false"}, name
        assert args["model_dir"] == "/mnt/models", name  # where KServe's storage initializer puts storageUri
        assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{args['model_name']}", name
        assert {p["containerPort"] for p in container["ports"]} == {int(args["http_port"])}, name
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}, name


def test_no_credentials_in_the_repository() -> None:
    from k8s_render import CHART, MANIFESTS

    values = (CHART / "values.yaml").read_text()
    assert values.count('accessKeyId: ""') == values.count('secretAccessKey: ""') == 2  # writer, reader
    assert 'rootUser: ""' in values and 'rootPassword: ""' in values
    import yaml

    secrets = [
        path
        for path in MANIFESTS.rglob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "Secret"
    ]
    assert not secrets, "credentials come from gitignored *.env files, never from a manifest"
    ignored = (CHART.parents[1] / ".gitignore").read_text().splitlines()
    for example in MANIFESTS.rglob("*.env.example"):
        assert example.with_suffix("").relative_to(CHART.parents[1]).as_posix() in ignored, example


def test_the_deployer_may_only_read_and_patch_the_named_inference_service(rendered) -> None:
    for name, objects in rendered.items():
        roles = [role for role in by_kind(objects, "Role") if role["metadata"]["name"].endswith("deployer")]
        if not roles:
            continue  # pipeline objects switched off
        (role,) = roles
        isvc = one(objects, "InferenceService")["metadata"]["name"]
        assert role["rules"] == [
            {
                "apiGroups": ["serving.kserve.io"],
                "resources": ["inferenceservices"],
                "resourceNames": [isvc],
                "verbs": ["get", "patch"],
            }
        ], name


# ---- credentials: one key pair per role ------------------------------------------------------------------

ROOT_SECRET, READER_SECRET, WRITER_SECRET = "neurovit-minio-root", "neurovit-s3-reader", "neurovit-s3"


def secrets_referenced(obj: dict) -> set[str]:
    """Names of the Secrets a workload's containers read (env, envFrom) or mount (volumes)."""
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key in ("secretKeyRef", "secretRef"):
                if key in node:
                    found.add(node[key]["name"])
            if "secret" in node and isinstance(node["secret"], dict):
                found.add(node["secret"]["secretName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj.get("spec", {}))
    return found


def test_each_workload_gets_only_its_own_store_credentials(rendered) -> None:
    for name, objects in rendered.items():
        accounts = {a["metadata"]["name"]: a for a in by_kind(objects, "ServiceAccount")}
        predictor_account = one(objects, "InferenceService")["spec"]["predictor"]["serviceAccountName"]
        # KServe's storage initializer reads the Secrets the predictor's account lists: the reader only.
        assert [s["name"] for s in accounts[predictor_account]["secrets"]] == [READER_SECRET], name
        assert not secrets_referenced(one(objects, "InferenceService")), name
        assert not secrets_referenced(one(objects, "ServingRuntime")), name
        for workload in (o for o in objects if o["kind"] in WORKLOADS):
            used = secrets_referenced(workload)
            where = f"{name} {workload['kind']}/{workload['metadata']['name']}"
            if workload["kind"] == "StatefulSet":  # MinIO
                assert used == {ROOT_SECRET}, where
            elif workload["metadata"]["name"].endswith("minio-bucket"):  # creates the reader and writer
                assert used == {ROOT_SECRET, READER_SECRET, WRITER_SECRET}, where
            else:
                assert ROOT_SECRET not in used, where
        for account in accounts.values():
            assert ROOT_SECRET not in {s["name"] for s in account.get("secrets", [])}, name


def test_pipeline_runs_use_the_writer_secret() -> None:
    from training.pipeline import STORE_SECRET

    assert STORE_SECRET == WRITER_SECRET


def _run_setup(tmp_path, *, reader="reader-key", writer="writer-key", attached=()):
    """Run setup-users.sh with a fake mc that logs its arguments; ``attached``: users whose policy is on.
    The script's /tmp (where it writes the policies) becomes ``<tmp_path>/tmp``."""
    import os
    import subprocess

    from k8s_render import MANIFESTS

    log, policies = tmp_path / "mc.log", tmp_path / "tmp"
    policies.mkdir(exist_ok=True)
    fake = tmp_path / "bin" / "mc"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'case "$*" in\n'
        + "".join(
            f'  "admin policy attach store "*" --user {user}") '
            'echo "mc: <ERROR> The specified policy change is already in effect." >&2; exit 1 ;;\n'
            for user in attached
        )
        + '  "admin policy attach store "*" --user broken") '
        + 'echo "mc: <ERROR> Access Denied." >&2; exit 1 ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    script = (MANIFESTS / "base" / "store" / "setup-users.sh").read_text().replace("/tmp/", f"{policies}/")
    env = {
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "BUCKET": "neurovit",
        "MINIO_ROOT_USER": "root-user",
        "READER_ACCESS_KEY": reader,
        "READER_SECRET_KEY": "reader-secret",
        "WRITER_ACCESS_KEY": writer,
        "WRITER_SECRET_KEY": "writer-secret",
    }
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=False)
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return result, lines, policies


def test_bucket_job_creates_a_read_only_and_a_read_write_user(tmp_path) -> None:
    import json

    result, calls, policies = _run_setup(tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls[0] == "mb --ignore-existing store/neurovit"
    assert "admin user add store reader-key reader-secret" in calls
    assert "admin policy attach store neurovit-read --user reader-key" in calls
    assert "admin policy attach store neurovit-write --user writer-key" in calls
    read = json.loads((policies / "neurovit-read.json").read_text())["Statement"][0]
    write = json.loads((policies / "neurovit-write.json").read_text())["Statement"][0]
    assert set(read["Action"]) == {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"}
    assert {"s3:PutObject", "s3:DeleteObject"} <= set(write["Action"])
    assert read["Resource"] == write["Resource"] == ["arn:aws:s3:::neurovit", "arn:aws:s3:::neurovit/*"]
    assert not any(action.startswith("admin:") or action == "s3:*" for action in write["Action"])


def test_bucket_job_runs_again_and_stops_on_real_errors(tmp_path) -> None:
    result, _, _ = _run_setup(tmp_path, attached=("reader-key", "writer-key"))
    assert result.returncode == 0, result.stderr  # an upgrade re-runs it: "already attached" is done
    result, _, _ = _run_setup(tmp_path, reader="broken")
    assert result.returncode != 0 and "Access Denied" in result.stderr
    for reader, writer in (("same", "same"), ("root-user", "writer-key")):
        result, calls, _ = _run_setup(tmp_path, reader=reader, writer=writer)
        assert result.returncode != 0 and not calls, result.stderr  # refused before touching MinIO
