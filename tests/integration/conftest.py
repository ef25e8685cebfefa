"""A real TorchServe for the serving tests: a tiny model packaged with handlers/package.py, started on free
ports in a temporary folder with token authorisation on (as ``make serve`` does), always stopped; and a real
S3 endpoint (moto's server) for the store and KServe's storage initializer."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from fixtures.run_outputs import write_run_outputs
from fixtures.serving_samples import MODEL, TEST_OPTIONS, VERSION, published_copy, save_tiny_model

from handlers import kserve_launcher
from handlers.package import MODEL_STORE, ServerSettings, package_stage
from handlers.torchserve_launcher import ServeError, running
from neurovit.serving import MODEL_CARD_FILE
from training.model_card import build_card, write_card


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on (all bound at once, so they differ, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


@dataclass
class Answer:
    status: int
    reason: str
    headers: Message  # case-insensitive
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class TorchServe:
    """A running TorchServe: its URLs, inference key and working folder (logs, key_file.json)."""

    url: str
    metrics_url: str
    key: str
    workdir: Path
    management_url: str = ""
    management_key: str = ""

    def post(self, path: str, body: bytes = b"", content_type: str = "application/octet-stream", **kwargs):
        return self.call(
            "POST", path, body, {"Content-Type": content_type, **kwargs.pop("headers", {})}, **kwargs
        )

    def post_json(self, path: str, payload, **kwargs) -> Answer:
        return self.post(path, json.dumps(payload).encode(), "application/json", **kwargs)

    def post_form(self, path: str, parts: dict[str, bytes | str], **kwargs) -> Answer:
        """multipart/form-data: bytes become file parts, strings plain fields."""
        boundary = uuid.uuid4().hex
        chunks = []
        for name, value in parts.items():
            if isinstance(value, bytes):
                head = f'Content-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'
                head += "Content-Type: application/octet-stream\r\n\r\n"
                chunks.append(f"--{boundary}\r\n{head}".encode() + value + b"\r\n")
            else:
                head = f'Content-Disposition: form-data; name="{name}"\r\n\r\n'
                chunks.append(f"--{boundary}\r\n{head}{value}\r\n".encode())
        body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
        return self.post(path, body, f"multipart/form-data; boundary={boundary}", **kwargs)

    def describe(self, model: str) -> dict:
        """What the handler's describe call answers (the management API, ``?customized=true``)."""
        request = urllib.request.Request(
            f"{self.management_url}/models/{model}?customized=true",
            headers={"Authorization": f"Bearer {self.management_key}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            (description,) = json.loads(response.read())
        custom = description["customizedMetadata"]
        return json.loads(custom) if isinstance(custom, str) else custom

    def call(self, method: str, path: str, body: bytes | None, headers: dict, token: bool = True) -> Answer:
        headers = {**headers, **({"Authorization": f"Bearer {self.key}"} if token else {})}
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return Answer(response.status, response.reason, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.reason, error.headers, error.read())


@pytest.fixture(scope="session")
def published_version(tmp_path_factory) -> Path:
    """A freshly packaged tiny model with a model card, published and fetched as the main job publishes a
    version: ``model/``, ``model_card.json``, ``config/``, ``model-store/`` and the ``manifest.json`` the
    runtimes verify, as KServe would mount them (TorchServe loads the archive, the KServe runtime model/)."""
    root = tmp_path_factory.mktemp("published-version")
    model = save_tiny_model(root / "model")
    run = write_run_outputs(root / "run")  # a card as the publish stage builds it (other run's figures)
    card = build_card(MODEL, VERSION, run["model"], run["evaluation"], run["split"], run["analysis"])
    card_file = write_card(card, root / "card")[MODEL_CARD_FILE]
    package_stage(model, root / "package", MODEL, VERSION, options=TEST_OPTIONS, extra_files=[card_file])
    shutil.copytree(model, root / "package" / "model")
    shutil.copy2(card_file, root / "package" / MODEL_CARD_FILE)
    return published_copy(root / "package")


@pytest.fixture(scope="session")
def torchserve_package(published_version) -> Path:
    """``published_version``, where Java is present for TorchServe."""
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        message = "TorchServe needs Java 17: `make java` (apt-get install -y openjdk-17-jre-headless)"
        if os.environ.get("CI"):  # `make test` installs Java first: in CI a missing JRE is a failure
            pytest.fail(message)
        pytest.skip(message)
    return published_version


@contextmanager
def running_torchserve(
    package: Path,
    workdir: Path,
    envelope: str | None = None,
    batch_size: int = 1,
    max_batch_delay_ms: int = 50,
    ready_timeout_s: float = 180,
    **other_settings: object,
) -> Iterator[TorchServe]:
    """Start TorchServe in ``workdir`` (its own process group and pid file), yield it, stop it: the project's
    launcher (handlers.torchserve_launcher) with the KServe-like settings (environment overrides on).
    ``other_settings``: more ServerSettings fields (the load tests set ``job_queue_size``)."""
    inference, management, metrics, grpc, grpc_management = free_ports(5)
    settings = ServerSettings(
        inference_address=f"http://127.0.0.1:{inference}",
        management_address=f"http://127.0.0.1:{management}",
        metrics_address=f"http://127.0.0.1:{metrics}",
        grpc_inference_port=grpc,
        grpc_management_port=grpc_management,
        model_store=str(package / MODEL_STORE),
        metrics_config=str(package / "config" / "metrics.yaml"),
        batch_size=batch_size,
        max_batch_delay_ms=max_batch_delay_ms,
        token_authorization=True,
        **other_settings,
    )
    # The handler verifies ``package`` (a published copy) against its manifest before loading.
    with running(
        workdir, MODEL, VERSION, settings, package, envelope=envelope, timeout_s=ready_timeout_s
    ) as server:
        yield TorchServe(
            settings.inference_address,
            settings.metrics_address,
            server.key(),
            workdir,
            settings.management_address,
            server.key("management"),
        )


@dataclass
class KServe(TorchServe):
    """The KServe runtime (handlers.kserve_server, KServe's model server from .venv-kserve): one port for v1,
    v2 and /metrics, no token."""

    def call(self, method: str, path: str, body: bytes | None, headers: dict, token: bool = False) -> Answer:
        return super().call(method, path, body, headers, token=False)

    def get(self, path: str) -> Answer:
        return self.call("GET", path, None, {})


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """.venv-kserve's Python (`make kserve-venv`; `make test` creates it first: in CI a missing one fails)."""
    try:
        return kserve_launcher.kserve_python()
    except ServeError as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))


@contextmanager
def running_kserve(version_dir: Path, workdir: Path, ready_timeout_s: float = 300) -> Iterator[KServe]:
    """The KServe runtime on ``version_dir`` on a free port (handlers.kserve_launcher), stopped after."""
    (port,) = free_ports(1)
    with kserve_launcher.running(workdir, version_dir, MODEL, port, ready_timeout_s) as server:
        yield KServe(server.url, server.url, "", workdir)


@pytest.fixture(scope="module")
def kserve(kserve_python, published_version, tmp_path_factory) -> Iterator[KServe]:
    """The KServe runtime on the tiny published version."""
    with running_kserve(published_version, tmp_path_factory.mktemp("kserve")) as server:
        yield server


@pytest.fixture(scope="session")
def start_kserve():
    """``running_kserve`` itself, for a test that serves a version folder of its own."""
    return running_kserve


@pytest.fixture(scope="session")
def start_torchserve():
    """``running_torchserve`` itself, for a test that serves a package of its own."""
    return running_torchserve


@pytest.fixture(scope="module")
def torchserve(torchserve_package, tmp_path_factory) -> Iterator[TorchServe]:
    """No envelope, batching on: up to 4 requests per batch, waiting up to 200 ms for them."""
    workdir = tmp_path_factory.mktemp("torchserve")
    with running_torchserve(torchserve_package, workdir, batch_size=4, max_batch_delay_ms=200) as server:
        yield server


@pytest.fixture(scope="module")
def torchserve_small_queue(torchserve_package, tmp_path_factory) -> Iterator[TorchServe]:
    """Batching on (4, 50 ms) and a job queue of 4: a burst a test can send overflows it (load tests)."""
    workdir = tmp_path_factory.mktemp("torchserve-small-queue")
    with running_torchserve(torchserve_package, workdir, batch_size=4, job_queue_size=4) as server:
        yield server


@pytest.fixture(scope="module")
def torchserve_kserve(torchserve_package, tmp_path_factory) -> Iterator[TorchServe]:
    """TS_SERVICE_ENVELOPE=kserve, as KServe's v1 protocol sets it (batch size 1, as the package's)."""
    workdir = tmp_path_factory.mktemp("torchserve-kserve")
    with running_torchserve(torchserve_package, workdir, envelope="kserve") as server:
        yield server


@pytest.fixture(scope="module")
def torchserve_kservev2(torchserve_package, tmp_path_factory) -> Iterator[TorchServe]:
    """TS_SERVICE_ENVELOPE=kservev2, as KServe's v2 protocol sets it."""
    workdir = tmp_path_factory.mktemp("torchserve-kservev2")
    with running_torchserve(torchserve_package, workdir, envelope="kservev2") as server:
        yield server


# ---- an S3 endpoint (moto) ---------------------------------------------------------------------------------


ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def _set_auth(url: str, free_actions: str) -> None:
    """Moto checks signatures and IAM policies once this many unauthenticated requests have passed."""
    request = urllib.request.Request(
        f"{url}/moto-api/reset-auth",
        data=free_actions.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["status"] == "ok"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """Moto's S3 server on a free port, an IAM user allowed s3:*, and authentication enforced; its endpoint
    and the user's keys as the store reads them from the environment."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    werkzeug_log = logging.getLogger("werkzeug")
    previous_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_ports(1)[0], verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="neurovit-ci")
    iam.put_user_policy(UserName="neurovit-ci", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_S3))
    key = iam.create_access_key(UserName="neurovit-ci")["AccessKey"]
    _set_auth(url, "0")
    try:
        yield {
            "NEUROVIT_S3_ENDPOINT": f"{host}:{port}",
            "NEUROVIT_S3_SECURE": "0",
            "NEUROVIT_S3_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
    finally:
        # Moto's settings are process-wide: give other tests an open, empty moto back.
        _set_auth(url, "inf")
        urllib.request.urlopen(
            urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=5
        ).close()
        server.stop()
        werkzeug_log.setLevel(previous_level)
