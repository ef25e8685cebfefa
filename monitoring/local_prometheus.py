"""A local Prometheus for NeuroViT: start it on TorchServe's metrics port with the rules of ``monitoring/``,
query it, stop it. Used by ``make monitor``, ``make drift-demo`` and the live tests.

The configuration is ``monitoring/prometheus.yml`` with two things replaced: the scrape target (the local
TorchServe's metrics address) and the rule files (absolute paths, or a time-compressed copy for demos, see
``compress_rules``). Prometheus comes from Debian's ``prometheus`` package (``make prometheus``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from neurovit.errors import NeuroVitError

ROOT = Path(__file__).resolve().parents[1]
MONITORING_DIR = ROOT / "monitoring"
BASE_CONFIG = MONITORING_DIR / "prometheus.yml"
RULES_DIR = MONITORING_DIR / "rules"
PID_FILE = "prometheus.pid"
INSTALL_HINT = "Prometheus is not installed: `make prometheus` (apt-get install -y prometheus)"


class PrometheusError(NeuroVitError, RuntimeError):
    """Prometheus is missing, did not start, or answered a query with an error."""


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yaml")) + sorted(RULES_DIR.glob("*.yml"))


def compress_rules(out_dir: Path, window: str = "1m", hold: str = "10s") -> list[Path]:
    """Copies of the rule files with every range window and every ``for:`` shortened, so that a demo
    shows in minutes what takes an hour in production. Never used by the tests or a deployment."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in rule_files():
        document = yaml.safe_load(path.read_text())
        for group in document.get("groups", []):
            for rule in group.get("rules", []):
                rule["expr"] = re.sub(r"\[(\d+[smhd])(:\d*[smhd]?)?\]", f"[{window}]", str(rule["expr"]))
                if "for" in rule:
                    rule["for"] = hold
                if "keep_firing_for" in rule:
                    rule["keep_firing_for"] = hold
        copy = out_dir / path.name
        copy.write_text(yaml.safe_dump(document, sort_keys=False))
        copies.append(copy)
    return copies


def write_config(out_dir: Path, target: str, rules: list[Path] | None = None, interval: str = "2s") -> Path:
    """``prometheus.yml`` for scraping ``target`` (host:port of TorchServe's metrics API)."""
    config = yaml.safe_load(BASE_CONFIG.read_text())
    config.setdefault("global", {}).update({"scrape_interval": interval, "evaluation_interval": interval})
    config["rule_files"] = [str(path) for path in (rule_files() if rules is None else rules)]
    jobs = config.get("scrape_configs") or []
    if not jobs:
        raise PrometheusError(f"{BASE_CONFIG} has no scrape_configs")
    for job in jobs:
        job["static_configs"] = [{"targets": [target], **_labels(job)}]
        job.pop("scrape_interval", None)
    path = out_dir / "prometheus.yml"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _labels(job: dict) -> dict:
    labels = {}
    for static in job.get("static_configs") or []:
        labels.update(static.get("labels") or {})
    return {"labels": labels} if labels else {}


def start(
    out_dir: Path,
    target: str,
    port: int = 9090,
    rules: list[Path] | None = None,
    interval: str = "2s",
    timeout_s: float = 60,
) -> str:
    """Start Prometheus in the background (data and log in ``out_dir``); returns its URL once ready."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusError(INSTALL_HINT)
    out_dir = Path(out_dir).resolve()
    stop(out_dir)
    shutil.rmtree(out_dir / "data", ignore_errors=True)  # a fresh TSDB: no series from an earlier run
    config = write_config(out_dir, target, rules, interval)
    log = (out_dir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={out_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (out_dir / PID_FILE).write_text(str(process.pid))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrometheusError(
                f"Prometheus exited with {process.returncode}; see {out_dir / 'prometheus.log'}"
            )
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                return url
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    stop(out_dir)
    raise PrometheusError(
        f"Prometheus was not ready after {timeout_s:.0f}s; see {out_dir / 'prometheus.log'}"
    )


def stop(out_dir: Path) -> bool:
    """Stop the Prometheus started in ``out_dir``; False when none was running."""
    pid_file = Path(out_dir) / PID_FILE
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    pid_file.unlink(missing_ok=True)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    for _ in range(50):
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            return True
    os.kill(pid, signal.SIGKILL)
    return True


def api(url: str, path: str, **params: str) -> dict | list:
    """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=15) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = json.loads(error.read() or b"{}")
        raise PrometheusError(f"{path} {params}: {body.get('error', error)}") from error
    if body.get("status") != "success":
        raise PrometheusError(f"{path} {params}: {body.get('error')}")
    return body["data"]


def query(url: str, expr: str) -> list[dict]:
    """Instant query; the result vector (``[{"metric": {...}, "value": [t, "v"]}]``)."""
    data = api(url, "query", query=expr)
    return data["result"] if isinstance(data["result"], list) else [data["result"]]


def alerts(url: str) -> list[dict]:
    return api(url, "alerts")["alerts"]


def wait_for_scrape(url: str, metric: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if query(url, metric):
            return
        time.sleep(0.5)
    raise PrometheusError(
        f"no {metric} scraped after {timeout_s:.0f}s: is TorchServe's metrics API reachable?"
    )


__all__ = [
    "PrometheusError",
    "alerts",
    "compress_rules",
    "query",
    "rule_files",
    "start",
    "stop",
    "wait_for_scrape",
    "write_config",
]
