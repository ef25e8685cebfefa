"""Package a model folder for TorchServe and KServe: ``model-store/<model>.mar`` plus ``config/``.

The layout is the one KServe's TorchServe runtime mounts at ``/mnt/models`` (``storageUri`` names the folder
that holds both)::

    config/config.properties   TorchServe settings, model_snapshot naming the model
    config/metrics.yaml        TorchServe's metrics config (global to the server, so it lives here too)
    model-store/<model>.mar    handler, weights, config.json, preprocessing.json, neurovit.json (labels and
                               temperature), model-config.yaml (handler limits), metrics.yaml, the schema,
                               and the version's model_card.json when given (the describe call returns it)

The main job packages before it publishes, so both files belong to the published version and its manifest.
``neurovit package --model <version|latest>`` packages a published version into
``outputs/package/<version>/`` (for versions published before packaging existed).

Batching under KServe: TorchServe's ``kserve`` and ``kservev2`` envelopes read only the first request of a
batch and return one answer, so TorchServe fails every batch of more than one request with 503 ("number of
batch response mismatched"). The KServe config therefore sets ``batchSize`` 1; the handler itself batches
(``make serve`` runs without an envelope, with ``batchSize`` 4).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from neurovit.config import DEFAULT_STORE, MODEL_NAME, OUTPUT_DIR
from neurovit.drift import REFERENCE_FILE
from neurovit.errors import NeuroVitError
from neurovit.model import MODEL_INFO_FILE
from neurovit.ood import OOD_FILE
from neurovit.preprocessing import PREPROCESSING_FILE
from neurovit.serving import MODEL_CARD_FILE, ServingOptions

HANDLERS_DIR = Path(__file__).resolve().parents[1] / "handlers"
HANDLER_FILE = HANDLERS_DIR / "neurovit_handler.py"
METRICS_FILE = HANDLERS_DIR / "metrics.yaml"
SCHEMA_FILE = HANDLERS_DIR / "response.schema.json"
MODEL_FILES = ("config.json", "model.safetensors", PREPROCESSING_FILE, MODEL_INFO_FILE)
# The monitoring reference and OOD scorer: every version the main job publishes has them; versions
# published before they existed are still packaged (they are then served without drift and OOD fields).
OPTIONAL_MODEL_FILES = (REFERENCE_FILE, OOD_FILE)
MODEL_CONFIG_FILE = "model-config.yaml"
CONFIG_PROPERTIES = "config/config.properties"
METRICS_CONFIG = "config/metrics.yaml"
MODEL_STORE = "model-store"
MiB = 1024 * 1024


class PackagingError(NeuroVitError, RuntimeError):
    """A model folder cannot be packaged (missing files, torch-model-archiver failed)."""


@dataclass(frozen=True)
class ServerSettings:
    """What config.properties tells TorchServe. Defaults are KServe's layout (``/mnt/models``).

    Args:
        inference_address, management_address, metrics_address: where TorchServe listens. KServe's wrapper,
            in the same container, proxies to inference on 8085 (its own server takes 8080, its gRPC 8081) and
            polls management for readiness, so both bind to loopback: nothing outside the pod reaches them,
            whatever a NetworkPolicy admits (management can unregister the model or scale it to zero
            workers, with token auth off here). Metrics listen on every interface: a PodMonitor reads 8082.
        grpc_inference_port, grpc_management_port: TorchServe's gRPC ports (KServe's grpc-v2 protocol).
        grpc_inference_address, grpc_management_address: their bind addresses, loopback for the same reason
            (TorchServe 0.12's default too; written out so a different default cannot open them).
        model_store: the folder holding ``<model>.mar``.
        metrics_config: TorchServe's metrics YAML (custom model metrics must be declared there).
        batch_size, max_batch_delay_ms: TorchServe batching; 1 under KServe's envelopes (see the module).
        min_workers, max_workers: Python workers of the model.
        response_timeout_s: seconds a batch may take before TorchServe restarts the worker.
        token_authorization: TorchServe's token authorisation; off behind KServe (its readiness polling
            cannot send a token; both APIs listen on loopback only), on for local serving.
        max_request_size, max_response_size: bytes; TorchServe's 6.5 MB default is too small for a large
            base64 image, and a batch of answers with two overlays each must fit.
        envvars_config: let ``TS_*`` variables override settings (KServe sets ``TS_SERVICE_ENVELOPE``).
        job_queue_size: requests TorchServe holds waiting for the worker; past it, it answers 503 at once.
    """

    inference_address: str = "http://127.0.0.1:8085"
    management_address: str = "http://127.0.0.1:8086"
    metrics_address: str = "http://0.0.0.0:8082"
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    grpc_inference_address: str = "127.0.0.1"
    grpc_management_address: str = "127.0.0.1"
    model_store: str = "/mnt/models/model-store"
    metrics_config: str = "/mnt/models/config/metrics.yaml"
    batch_size: int = 1
    max_batch_delay_ms: int = 50
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 120
    token_authorization: bool = False
    max_request_size: int = 64 * MiB
    max_response_size: int = 64 * MiB
    envvars_config: bool = True
    # Bounded so that a burst past capacity gets a quick 503 instead of a wait that grows without limit
    # (TorchServe's default is 100). 24 ≈ what one replica drains within the 500 ms p95 objective (mixed
    # traffic, batch size 1: ~49 req/s by `make bench-load`), 24 in flight still met the objective with
    # batching on, and it is ≥ the containerConcurrency (8) KServe is given, so traffic KServe admits
    # never bounces off this queue (README, "Load tests").
    job_queue_size: int = 24


def config_properties(model_name: str, version: str, settings: ServerSettings) -> str:
    """The text of TorchServe's config.properties for one model version."""
    snapshot = {
        "name": "startup.cfg",
        "modelCount": 1,
        "models": {
            model_name: {
                version: {
                    "defaultVersion": True,
                    "marName": f"{model_name}.mar",
                    "minWorkers": settings.min_workers,
                    "maxWorkers": settings.max_workers,
                    "batchSize": settings.batch_size,
                    "maxBatchDelay": settings.max_batch_delay_ms,
                    "responseTimeout": settings.response_timeout_s,
                }
            }
        },
    }
    lines = [
        f"# TorchServe settings for {model_name} {version}, written by handlers/package.py.",
        f"inference_address={settings.inference_address}",
        f"management_address={settings.management_address}",
        f"metrics_address={settings.metrics_address}",
        f"grpc_inference_port={settings.grpc_inference_port}",
        f"grpc_management_port={settings.grpc_management_port}",
        f"grpc_inference_address={settings.grpc_inference_address}",
        f"grpc_management_address={settings.grpc_management_address}",
        "enable_metrics_api=true",
        "metrics_mode=prometheus",
        f"metrics_config={settings.metrics_config}",
        f"enable_envvars_config={str(settings.envvars_config).lower()}",
        f"model_store={settings.model_store}",
        f"disable_token_authorization={str(not settings.token_authorization).lower()}",
        "enable_model_api=false",
        f"max_request_size={settings.max_request_size}",
        f"max_response_size={settings.max_response_size}",
        f"job_queue_size={settings.job_queue_size}",
        f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}",
    ]
    return "\n".join(lines) + "\n"


def build_archive(
    model_dir: str | Path,
    export_dir: str | Path,
    model_name: str,
    version: str,
    options: ServingOptions | None = None,
    extra_files: Sequence[Path] = (),
) -> Path:
    """``<export_dir>/<model_name>.mar`` from a model folder written by ``save_model``; ``extra_files`` (e.g.
    the version's model card) join the archive's root."""
    model_dir, export_dir = Path(model_dir), Path(export_dir)
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise PackagingError(f"cannot package {model_dir}: missing {', '.join(missing)}")
    export_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="neurovit-package-") as scratch:
        staging = Path(scratch) / "files"
        staging.mkdir()
        present = [*MODEL_FILES, *(name for name in OPTIONAL_MODEL_FILES if (model_dir / name).is_file())]
        for name in present:
            shutil.copy2(model_dir / name, staging / name)
        handler_options = asdict(options or ServingOptions())
        (staging / MODEL_CONFIG_FILE).write_text(yaml.safe_dump({"handler": handler_options}))
        for source in (METRICS_FILE, SCHEMA_FILE, *extra_files):
            shutil.copy2(source, staging / Path(source).name)
        extra = [staging / name for name in present if name != "model.safetensors"]
        extra += [staging / Path(source).name for source in (METRICS_FILE, SCHEMA_FILE, *extra_files)]
        command = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", model_name,
            "--version", version,
            "--serialized-file", str(staging / "model.safetensors"),
            "--handler", str(HANDLER_FILE),
            "--extra-files", ",".join(str(path) for path in extra),
            "--config-file", str(staging / MODEL_CONFIG_FILE),
            "--export-path", str(export_dir),
            "--force",
        ]  # fmt: skip
        # The archiver stages files in <tmp>/<model name>: a private TMPDIR keeps parallel runs apart.
        env = {**os.environ, "TMPDIR": scratch}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    archive = export_dir / f"{model_name}.mar"
    if result.returncode != 0 or not archive.is_file():
        details = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise PackagingError(f"torch-model-archiver failed for {model_dir}: {' | '.join(details)}")
    return archive


def package_stage(
    model_dir: str | Path,
    out_dir: str | Path,
    model_name: str,
    version: str,
    settings: ServerSettings | None = None,
    options: ServingOptions | None = None,
    extra_files: Sequence[Path] = (),
) -> dict[str, Path]:
    """Archive and TorchServe config in ``out_dir``; returns ``{relpath in the version: file}``.
    ``extra_files`` go into the archive (``build_archive``)."""
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    archive = build_archive(model_dir, out_dir / MODEL_STORE, model_name, version, options, extra_files)
    (out_dir / "config").mkdir(parents=True)
    properties = out_dir / CONFIG_PROPERTIES
    properties.write_text(config_properties(model_name, version, settings or ServerSettings()))
    metrics = out_dir / METRICS_CONFIG
    shutil.copy2(METRICS_FILE, metrics)
    return {
        f"{MODEL_STORE}/{archive.name}": archive,
        CONFIG_PROPERTIES: properties,
        METRICS_CONFIG: metrics,
    }


def archived_options(version_dir: str | Path, model_name: str) -> ServingOptions:
    """The limits a published version was packaged with (the ``handler`` section of its archive's
    model-config.yaml), so that every runtime serving the version refuses the same inputs; the defaults for a
    version without an archive."""
    archive = Path(version_dir) / MODEL_STORE / f"{model_name}.mar"
    if not archive.is_file():
        return ServingOptions()
    try:
        with zipfile.ZipFile(archive) as mar:
            config = yaml.safe_load(mar.read(MODEL_CONFIG_FILE)) or {}
    except (zipfile.BadZipFile, KeyError, yaml.YAMLError) as error:
        raise PackagingError(f"cannot read the serving limits from {archive}: {error}") from error
    return ServingOptions.from_mapping(config.get("handler"))


def package_version(model: str = "latest", store: str = DEFAULT_STORE, out: Path | None = None) -> dict:
    """Package the published version ``model`` names (``neurovit.store.resolve_version``) into ``out``
    (default ``outputs/package/<version>``); prints the files; returns them."""
    from neurovit.store import resolve_version

    store_, name, version = resolve_version(model, store, model=MODEL_NAME)
    out = Path(out or OUTPUT_DIR / "package" / version)
    with tempfile.TemporaryDirectory(prefix="neurovit-fetch-") as scratch:
        fetched = store_.fetch(name, version, Path(scratch) / "version")
        card = [fetched / MODEL_CARD_FILE] if (fetched / MODEL_CARD_FILE).is_file() else []
        files = package_stage(fetched / "model", out, name, version, extra_files=card)
    for relpath in files:
        print(f"{out / relpath}")
    print(f"serve it with KServe: storageUri = the folder {out} (config/ and model-store/)")
    return {"model": name, "version": version, "out": str(out), "files": [str(out / rel) for rel in files]}
