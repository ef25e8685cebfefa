"""Start TorchServe on a model store and a config, wait until the model's worker is ready, stop it.

The one launcher `neurovit serve` (``start``/``stop``: a server that outlives the command),
`neurovit bench load` and the integration tests (``running``: a server in its own process group, always
stopped when the block ends) use. Each server gets a working folder of its own: its config.properties, log,
``key_file.json`` (token authorisation) and a private temp folder, where TorchServe's launcher keeps its pid
file, so two servers never share one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from neurovit.errors import NeuroVitError
from neurovit.integrity import VERSION_DIR_ENV

if TYPE_CHECKING:  # handlers.package imports torch: not for `neurovit predict` and `stop`
    from handlers.package import ServerSettings

KEY_FILE = "key_file.json"
CONFIG_FILE = "config.properties"
LOG_FILE = "torchserve.log"
PID_FILE = "tmp/.model_server.pid"  # where TorchServe's launcher writes it, under TMPDIR
JAVA_HINT = "TorchServe needs Java 17: apt-get install -y openjdk-17-jre-headless (or set JAVA_HOME)"
# TorchServe's worker takes the first queued request, then waits up to maxBatchDelay for the rest of the
# batch, so a lone request waits all of it; requests that queued while the worker was busy join at once.
# 5 ms served the most requests/s with 2 and with 8 clients of all delays measured (0, 5, 10, 50), while a
# lone request waits 5 ms, not 50 (docs/serving-api.md, "Batching").
LOCAL_BATCH_DELAY_MS = 5


class ServeError(NeuroVitError, RuntimeError):
    """A TorchServe cannot be started, reached or stopped."""


@dataclass(frozen=True)
class Launched:
    """A TorchServe that answered ready: its settings and working folder."""

    settings: ServerSettings
    workdir: Path

    @property
    def url(self) -> str:
        return self.settings.inference_address

    @property
    def key_file(self) -> Path:
        return self.workdir / KEY_FILE

    def key(self, api: str = "inference") -> str | None:
        return api_key(self.key_file, api)


def torchserve_executable() -> str:
    """The ``torchserve`` launcher beside this Python, else on PATH; ServeError when there is none."""
    local = Path(sys.executable).parent / "torchserve"
    found = str(local) if local.is_file() else shutil.which("torchserve")
    if not found:
        raise ServeError("torchserve is not installed in this environment (pip install torchserve)")
    return found


def check_java() -> None:
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise ServeError(JAVA_HINT)


def local_settings(
    model_store: Path,
    metrics_config: Path,
    port: int,
    batch_size: int = 4,
    max_batch_delay_ms: int = LOCAL_BATCH_DELAY_MS,
    **other_settings: object,
) -> ServerSettings:
    """Loopback addresses from ``port`` (inference), ``port+1`` (management), ``port+2`` (metrics), ``port+3``
    and ``port+4`` (gRPC); token authorisation on; batches of up to ``batch_size`` requests, waiting at most
    ``max_batch_delay_ms`` for them. ``other_settings``: further ServerSettings fields."""
    from handlers.package import ServerSettings

    values: dict = {
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{port + 1}",
        "metrics_address": f"http://127.0.0.1:{port + 2}",
        "grpc_inference_port": port + 3,
        "grpc_management_port": port + 4,
        "model_store": str(model_store),
        "metrics_config": str(metrics_config),
        "batch_size": batch_size,
        "max_batch_delay_ms": max_batch_delay_ms,
        "token_authorization": True,
        "envvars_config": False,  # a stray TS_SERVICE_ENVELOPE in a shell must not change local answers
    }
    return ServerSettings(**{**values, **other_settings})


def free_port_block(count: int = 5) -> int:
    """A port p with p .. p+count-1 all free (inference, management, metrics, two gRPC)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise ServeError(f"no block of {count} free ports found")


def api_key(key_file: Path, api: str = "inference") -> str | None:
    """A key TorchServe wrote for token authorisation ("inference" or "management"); None without one."""
    try:
        return json.loads(Path(key_file).read_text())[api]["key"]
    except (OSError, ValueError, KeyError):
        return None


def wait_until_ready(
    management_url: str,
    model: str,
    process_alive: Callable[[], bool],
    timeout_s: float = 180.0,
    log: Path | None = None,
    key_file: Path | None = None,
) -> None:
    """Poll the management API's description of ``model`` until one of its workers is READY.

    TorchServe's /ping says Healthy as soon as the frontend is up, while the worker may still be loading the
    model for many seconds. With token authorisation every call needs a key (0.12 answers 400 without it).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        key = api_key(key_file, "management") if key_file else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        request = urllib.request.Request(f"{management_url}/models/{model}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                workers = json.loads(response.read())[0].get("workers", [])
            last = ", ".join(worker.get("status", "?") for worker in workers) or "no workers"
            if any(worker.get("status") == "READY" for worker in workers):
                return
        except (urllib.error.URLError, OSError, ValueError, IndexError) as error:
            last = str(error)
        if not process_alive():
            break
        time.sleep(1.0)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log and log.is_file() else ""
    raise ServeError(f"TorchServe's {model} at {management_url} did not become ready ({last}); log:\n{tail}")


def _prepare(
    workdir: Path, model: str, version: str, settings: ServerSettings, version_dir: Path, envelope: str | None
) -> tuple[list[str], dict[str, str]]:
    """config.properties in ``workdir``; the command (without --start/--foreground) and its environment."""
    from handlers.package import config_properties

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    config = workdir / CONFIG_FILE
    config.write_text(config_properties(model, version, settings))
    env = {key: value for key, value in os.environ.items() if not key.startswith("TS_")}
    # TorchServe's launcher keeps its pid file in the temp folder: a private one per working folder.
    env.update(TMPDIR=str(workdir / "tmp"), TEMP=str(workdir / "tmp"))
    env[VERSION_DIR_ENV] = str(version_dir)  # the handler verifies it against its manifest before loading
    if envelope:
        env["TS_SERVICE_ENVELOPE"] = envelope  # read only with enable_envvars_config=true, as under KServe
    command = [torchserve_executable(), "--ncs", "--ts-config", str(config)]
    command += ["--model-store", settings.model_store]
    return command, env


def live_pid(pid_file: Path) -> int | None:
    """The pid written in ``pid_file`` while that process runs; None when the file or the process is gone."""
    try:
        pid = int(Path(pid_file).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def running_pid(workdir: Path) -> int | None:
    """The pid of the TorchServe ``start`` left running in ``workdir``; None when none runs."""
    return live_pid(Path(workdir) / PID_FILE)


def start(
    workdir: Path,
    model: str,
    version: str,
    settings: ServerSettings,
    version_dir: Path,
    timeout_s: float = 180.0,
) -> Launched:
    """Start TorchServe in the background (it outlives this process; ``stop`` ends it) and wait until
    ``model`` is ready; stopped again when it does not become ready. ``version_dir``: the fetched version
    the handler verifies before it loads."""
    check_java()
    workdir = Path(workdir).resolve()
    command, env = _prepare(workdir, model, version, settings, version_dir, None)
    log = workdir / LOG_FILE
    with log.open("w") as output:
        subprocess.run(
            [command[0], "--start", *command[1:]],
            cwd=workdir,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            check=True,
        )
    try:
        alive = lambda: running_pid(workdir) is not None  # noqa: E731
        wait_until_ready(
            settings.management_address, model, alive, timeout_s, log=log, key_file=workdir / KEY_FILE
        )
    except ServeError:
        stop(workdir)
        raise
    return Launched(settings, workdir)


def stop(workdir: Path) -> bool:
    """Stop the TorchServe ``start`` left running in ``workdir``; False when none was running."""
    workdir = Path(workdir).resolve()
    if running_pid(workdir) is None:
        return False
    env = {**os.environ, "TMPDIR": str(workdir / "tmp"), "TEMP": str(workdir / "tmp")}
    command = [torchserve_executable(), "--stop", "--foreground"]
    subprocess.run(command, cwd=workdir, env=env, capture_output=True, check=False)
    return True


@contextmanager
def running(
    workdir: Path,
    model: str,
    version: str,
    settings: ServerSettings,
    version_dir: Path,
    envelope: str | None = None,
    timeout_s: float = 180.0,
) -> Iterator[Launched]:
    """TorchServe in the foreground in its own process group, ready; stopped (the launcher, Java and the
    Python workers) when the block ends. ``envelope``: TS_SERVICE_ENVELOPE, as KServe sets it."""
    check_java()
    workdir = Path(workdir)
    command, env = _prepare(workdir, model, version, settings, version_dir, envelope)
    log = workdir / LOG_FILE
    with log.open("w") as output:
        process = subprocess.Popen(
            [command[0], "--start", "--foreground", *command[1:]],
            cwd=workdir,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        alive = lambda: process.poll() is None  # noqa: E731
        wait_until_ready(
            settings.management_address, model, alive, timeout_s, log=log, key_file=workdir / KEY_FILE
        )
        yield Launched(settings, workdir)
    finally:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process.pid, signal.SIGKILL)  # whatever of the group outlived the shutdown
        process.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


__all__ = [
    "JAVA_HINT",
    "KEY_FILE",
    "LOCAL_BATCH_DELAY_MS",
    "Launched",
    "ServeError",
    "api_key",
    "free_port_block",
    "live_pid",
    "local_settings",
    "running",
    "running_pid",
    "start",
    "stop",
    "torchserve_executable",
    "wait_until_ready",
]
