"""Run the KServe runtime: ``handlers.kserve_server`` from .venv-kserve on a version folder, ready, stopped.

What `neurovit serve --runtime kserve` (``start``/``stop``: a server that outlives the command) and the
integration tests (``running``: stopped when the block ends) use. The server runs in its own process group
from the repository's own code (``PYTHONPATH``), with its log and pid file in its working folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from handlers.torchserve_launcher import ServeError, live_pid

ROOT = Path(__file__).resolve().parents[1]
KSERVE_VENV = ROOT / ".venv-kserve"
LOG_FILE = "kserve.log"
PID_FILE = "kserve.pid"
KSERVE_HINT = "the KServe runtime runs from .venv-kserve: create it with `make kserve-venv`"


@dataclass(frozen=True)
class KServeServer:
    """A KServe runtime that answered ready: its base URL, model name and working folder."""

    url: str
    model: str
    workdir: Path


def kserve_python() -> Path:
    """.venv-kserve's Python; ServeError when the venv is missing."""
    python = KSERVE_VENV / "bin" / "python"
    if not python.is_file():
        raise ServeError(f"{python} is missing: {KSERVE_HINT}")
    return python


def _command(version_dir: Path, model: str, port: int) -> tuple[list[str], dict[str, str]]:
    command = [str(kserve_python()), "-m", "handlers.kserve_server", "--model_dir", str(version_dir)]
    command += ["--model_name", model, "--http_port", str(port)]
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONHOME", "VIRTUAL_ENV"}}
    # this tree's code, whatever the venv was built from; unbuffered, so the log shows how far loading got
    env.update(PYTHONPATH=str(ROOT), MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return command, env


def wait_until_ready(
    url: str, model: str, process_alive: Callable[[], bool], timeout_s: float = 180.0, log: Path | None = None
) -> None:
    """Poll ``/v2/models/<model>/ready`` until it answers 200 (the model has loaded and verified)."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{model}/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        if not process_alive():
            last = "the server exited"
            break
        time.sleep(1.0)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log and log.is_file() else ""
    raise ServeError(f"the KServe runtime's {model} at {url} did not become ready ({last}); log:\n{tail}")


def _spawn(workdir: Path, version_dir: Path, model: str, port: int) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    command, env = _command(Path(version_dir).resolve(), model, port)
    with (workdir / LOG_FILE).open("w") as output:
        return subprocess.Popen(
            command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def running_pid(workdir: Path) -> int | None:
    """The pid of the server ``start`` left running in ``workdir``; None when none runs."""
    return live_pid(Path(workdir) / PID_FILE)


def start(workdir: Path, version_dir: Path, model: str, port: int, timeout_s: float = 180.0) -> KServeServer:
    """Start the runtime in the background (``stop`` ends it) and wait until ``model`` is ready; stopped
    again when it does not become ready."""
    workdir = Path(workdir).resolve()
    process = _spawn(workdir, version_dir, model, port)
    (workdir / PID_FILE).write_text(f"{process.pid}\n")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, model, lambda: process.poll() is None, timeout_s, workdir / LOG_FILE)
    except ServeError:
        _stop_group(process.pid, lambda: process.poll() is None)
        (workdir / PID_FILE).unlink(missing_ok=True)
        raise
    return KServeServer(url, model, workdir)


def stop(workdir: Path) -> bool:
    """Stop the server ``start`` left running in ``workdir``; False when none was running."""
    pid = running_pid(workdir)
    (Path(workdir) / PID_FILE).unlink(missing_ok=True)
    if pid is None:
        return False
    _stop_group(pid, lambda: _alive(pid))
    return True


@contextmanager
def running(
    workdir: Path, version_dir: Path, model: str, port: int, timeout_s: float = 180.0
) -> Iterator[KServeServer]:
    """The runtime in its own process group, ready; stopped when the block ends."""
    process = _spawn(Path(workdir), version_dir, model, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, model, lambda: process.poll() is None, timeout_s, Path(workdir) / LOG_FILE)
        yield KServeServer(url, model, Path(workdir))
    finally:
        _stop_group(process.pid, lambda: process.poll() is None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _stop_group(pgid: int, alive: Callable[[], bool], grace_s: float = 30.0) -> None:
    """SIGTERM the group (KServe's server shuts down gracefully), SIGKILL whatever is left after grace_s."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not alive():
            return


__all__ = ["KSERVE_HINT", "KServeServer", "kserve_python", "running", "running_pid", "start", "stop"]
