"""A real TorchServe for the serving tests: a tiny model packaged with handlers/package.py, started on free
ports in a temporary folder with token authorisation on (as ``make serve`` does), always stopped."""

from __future__ import annotations

import json
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

from handlers.package import MODEL_STORE, ServerSettings, package_stage
from handlers.torchserve_launcher import running
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

    def call(self, method: str, path: str, body: bytes | None, headers: dict, token: bool = True) -> Answer:
        headers = {**headers, **({"Authorization": f"Bearer {self.key}"} if token else {})}
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return Answer(response.status, response.reason, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.reason, error.headers, error.read())


@pytest.fixture(scope="session")
def torchserve_package(tmp_path_factory) -> Path:
    """A freshly packaged tiny model with a model card, published and fetched as the main job publishes a
    version: ``model/``, ``model_card.json``, ``config/``, ``model-store/`` and the ``manifest.json`` the
    runtimes verify, as KServe would mount them (TorchServe loads the archive, the KServe runtime model/)."""
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        message = "TorchServe needs Java 17: `make java` (apt-get install -y openjdk-17-jre-headless)"
        if os.environ.get("CI"):  # `make test` installs Java first: in CI a missing JRE is a failure
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("torchserve-package")
    model = save_tiny_model(root / "model")
    run = write_run_outputs(root / "run")  # a card as the publish stage builds it (other run's figures)
    card = build_card(MODEL, VERSION, run["model"], run["evaluation"], run["split"], run["analysis"])
    card_file = write_card(card, root / "card")[MODEL_CARD_FILE]
    package_stage(model, root / "package", MODEL, VERSION, options=TEST_OPTIONS, extra_files=[card_file])
    shutil.copytree(model, root / "package" / "model")
    shutil.copy2(card_file, root / "package" / MODEL_CARD_FILE)
    return published_copy(root / "package")


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
