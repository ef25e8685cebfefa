"""Monitoring on this machine: ``neurovit monitor start|drift-demo|stop``.

``monitor`` (``neurovit monitor start``, ``make monitor``) starts the server on a published version
(TorchServe, or the KServe runtime with ``runtime="kserve"``; unless ``make serve`` already runs one) and a
Prometheus with the rules of ``monitoring/rules``, sends a little traffic
(slices, explanations, a few bad inputs) and prints the Prometheus URL and queries to try.

``drift-demo`` (``make drift-demo``) does the same with the rules time-compressed (every window 2 minutes,
every ``for`` 10 seconds: ``monitoring.local_prometheus.compress_rules``), then sends in-distribution
traffic (the
served version's held-out slices as they are) followed by a shifted stream (slices of one class with a
different contrast curve), samples each feature's PSI and the class-mix PSI every few seconds, writes
``outputs/drift-demo/psi.png`` (PSI over time with the 0.1 and 0.25 thresholds and the moment the stream
shifted) and ``timeline.json``, and shows the drift alerts going from inactive to pending to firing.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from handlers.local_service import SERVE_DIR, is_running, serve, server_state
from handlers.torchserve_launcher import api_key
from monitoring import local_prometheus
from monitoring.contract import load_contract
from monitoring.queries import EVENT_ONLY_METRICS, metrics_used
from neurovit.config import DEFAULT_STORE, OUTPUT_DIR
from neurovit.data.split import load_split
from neurovit.errors import CheckFailedError, NeuroVitError
from training.evaluations.ood_samples import noise

MONITOR_DIR = OUTPUT_DIR / "monitor"
DRIFT_DIR = OUTPUT_DIR / "drift-demo"
FEATURE_PSI = "neurovit:drift_bin:psi_1h"
CLASS_PSI = "neurovit:predictions:psi_1h"
DRIFT_ALERTS = ("NeuroViTDriftWatch", "NeuroViTDriftAct", "NeuroViTClassMixDrift")
WATCH, ACT = 0.1, 0.25
QUERIES_TO_TRY = (
    ("requests per second by route", "sum by (route) (rate(neurovit_request_duration_seconds_count[1m]))"),
    ("p95 latency by route", "neurovit:request_duration_seconds:p95_5m"),
    ("answers by predicted class", "sum by (label) (neurovit_predictions_total)"),
    ("errors by reason", "sum by (reason, status) (neurovit_errors_total)"),
    ("PSI per feature", FEATURE_PSI),
    ("class-mix PSI", CLASS_PSI),
    ("OOD flag rate", "neurovit:ood_flagged:ratio_15m"),
)


def demo_slices(data_dir: Path) -> dict[str, list[Path]]:
    """Demo slices per class (masks left out)."""
    classes = {}
    for folder in sorted(path for path in Path(data_dir).iterdir() if path.is_dir()):
        files = sorted(p for p in folder.glob("*.png") if not p.name.endswith(".mask.png"))
        if files:
            classes[folder.name] = files
    if not classes:
        raise NeuroVitError(f"no slices under {data_dir}: run `make demo-data` first")
    return classes


def held_out_slices(state: dict, data_dir: Path) -> dict[str, list[Path]]:
    """The served version's validation and test slices under ``data_dir``, per class: images the model never
    trained on, i.e. what new in-distribution traffic looks like. (Its own training images would score
    lower OOD and higher confidence than the reference, which comes from validation, and read as drift.)"""
    split_file = SERVE_DIR / "models" / state["version"] / "split.json"
    if not split_file.is_file():
        print(f"warning: {split_file} is missing: sending every demo slice as in-distribution traffic")
        return demo_slices(data_dir)
    slices: dict[str, list[Path]] = {}
    for entry in load_split(split_file).entries:
        path = Path(data_dir) / entry.relpath
        if entry.split in ("val", "test") and path.is_file():
            slices.setdefault(entry.label, []).append(path)
    if not slices:
        raise NeuroVitError(f"none of the served version's held-out slices is under {data_dir}")
    return dict(sorted(slices.items()))


def ensure_served(store: str, model: str, port: int, runtime: str = "torchserve") -> dict:
    """The running `make serve` server (whichever runtime it is), or a new one of ``runtime``."""
    try:
        state = server_state(SERVE_DIR)
        if is_running(SERVE_DIR):
            return state
    except NeuroVitError:
        pass
    return serve(model, store, port=port, runtime=runtime)


def runtime_of(state: dict) -> str:
    return state.get("runtime", "torchserve")


def metrics_target(state: dict) -> str:
    """host:port of the server's metrics: TorchServe's metrics API (inference port + 2:
    handlers.local_service.local_settings), the KServe runtime's own port."""
    host, port = state["url"].rsplit(":", 1)
    offset = 0 if runtime_of(state) == "kserve" else 2
    return f"{host.split('//')[-1]}:{int(port) + offset}"


class Client:
    """Sends images to the local server the way a user would (JSON with base64; raw bytes for bad ones):
    TorchServe's ``/predictions`` route with its key, or the KServe runtime's v1 ``:predict``."""

    def __init__(self, state: dict) -> None:
        self.kserve = runtime_of(state) == "kserve"
        route = f"/v1/models/{state['model']}:predict" if self.kserve else f"/predictions/{state['model']}"
        self.url = state["url"] + route
        key = api_key(Path(state["key_file"])) if state.get("key_file") else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def send(self, body: bytes, content_type: str = "application/octet-stream") -> int:
        request = urllib.request.Request(
            self.url, data=body, headers={**self.headers, "Content-Type": content_type}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def image(self, data: bytes, explain: str = "none") -> int:
        instance = {"data": base64.b64encode(data).decode("ascii"), "explain": explain}
        body = json.dumps({"instances": [instance]} if self.kserve else instance).encode()
        return self.send(body, "application/json")


def shifted(path: Path, gamma: float = 0.35) -> bytes:
    """The slice with a different contrast curve (as from another scanner or protocol)."""
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
    buffer = io.BytesIO()
    Image.fromarray((pixels**gamma * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def monitor(
    model: str = "latest",
    store: str = DEFAULT_STORE,
    data_dir: Path = OUTPUT_DIR / "demo-data",
    port: int = 8080,
    prometheus_port: int = 9090,
    requests: int = 60,
    runtime: str = "torchserve",
) -> dict:
    """The server (``make serve``'s, or a new one of ``runtime``) and Prometheus with monitoring/rules, a
    little traffic; prints the URLs and queries to try. Returns the URLs, the answers' statuses and the
    metrics missing."""
    state = ensure_served(store, model, port, runtime)
    server = "the KServe runtime" if runtime_of(state) == "kserve" else "TorchServe"
    url = local_prometheus.start(MONITOR_DIR, metrics_target(state), port=prometheus_port)
    client, slices = Client(state), demo_slices(data_dir)
    # Traffic before the first scrape would be invisible to rate() and increase(), which count only what a
    # series gains after Prometheus first saw it.
    local_prometheus.wait_for_scrape(url, "up == 1")
    statuses = []
    for i, path in enumerate(itertools.islice(itertools.cycle(_interleave(slices)), requests)):
        statuses.append(client.image(path.read_bytes(), ("none", "none", "rollout", "heatmap")[i % 4]))
    statuses += [client.send(b""), client.send(b"not an image", "text/plain")]
    statuses += [client.send(sample.png, "image/png") for sample in list(noise(count_per_kind=1))[:2]]
    statuses.append(client.image(next(iter(slices.values()))[0].read_bytes(), "all"))
    local_prometheus.wait_for_scrape(url, "neurovit_predictions_total")
    missing = missing_from_scrape(f"http://{metrics_target(state)}/metrics", runtime_of(state))
    print(
        f"sent {len(statuses)} requests: "
        + ", ".join(f"{s}: {statuses.count(s)}" for s in sorted(set(statuses)))
    )
    print(f"Prometheus: {url} (rules from monitoring/rules; alerts at {url}/alerts)")
    print(f"{server}: {state['url']} (metrics at http://{metrics_target(state)}/metrics)")
    print("queries to try (Prometheus > Graph):")
    for title, expr in QUERIES_TO_TRY:
        print(f"  {title:<30} {expr}")
    if missing:
        print(f"metrics that rules or dashboards name but {server} does not export yet: {', '.join(missing)}")
    else:
        print(f"every metric that a rule, an alert or a dashboard names is in {server}'s scrape")
    print("stop both with `make stop`")
    return {
        "prometheus": url,
        "server": state["url"],
        "runtime": runtime_of(state),
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "missing_metrics": missing,
    }


class TrafficStream:
    """Background senders: demo slices in class rotation until ``shift()``, then one class with another
    contrast curve. Several senders, because the drift alerts need at least 300 answers per window."""

    def __init__(self, client: Client, slices: dict[str, list[Path]], senders: int = 3) -> None:
        self.client, self.senders = client, senders
        self.normal = itertools.cycle(_interleave(slices))
        self.one_class = itertools.cycle(slices[sorted(slices)[0]])
        self.shifted, self.sent = False, 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._threads: list[threading.Thread] = []

    def _next(self) -> bytes:
        with self._lock:
            self.sent += 1
            return shifted(next(self.one_class)) if self.shifted else next(self.normal).read_bytes()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.client.image(self._next())

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.senders)]
        for thread in self._threads:
            thread.start()

    def shift(self) -> None:
        with self._lock:
            self.shifted = True

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=70)


def missing_from_scrape(metrics_url: str, runtime: str = "torchserve") -> list[str]:
    """Metric names that a rule, alert or dashboard of monitoring/ uses but the scrape of ``runtime``
    (torchserve or kserve) lacks: Prometheus' own ``up``, the metrics TorchServe creates only on a rare event,
    and the other runtime's own series (read with ``or``) aside."""
    with urllib.request.urlopen(metrics_url, timeout=15) as response:
        text = response.read().decode()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
    exported |= {name.rsplit("_", 1)[0] for name in exported if name.endswith(("_bucket", "_sum", "_count"))}
    contract = load_contract()
    other = contract.own_series("kserve" if runtime == "torchserve" else "torchserve")
    ignored = {"up", *EVENT_ONLY_METRICS, *(other - contract.own_series(runtime))}
    return sorted(name for name in metrics_used() if name not in exported and name not in ignored)


def _interleave(slices: dict[str, list[Path]]) -> list[Path]:
    """Slices in class rotation, so any stretch of traffic has the dataset's class mix."""
    return [path for group in itertools.zip_longest(*slices.values()) for path in group if path is not None]


def _sample(url: str) -> dict[str, float]:
    values = {r["metric"]["feature"]: float(r["value"][1]) for r in local_prometheus.query(url, FEATURE_PSI)}
    for result in local_prometheus.query(url, CLASS_PSI):  # one series per model version; the demo serves one
        values["class mix"] = float(result["value"][1])
    return values


def _alert_states(url: str) -> dict[str, str]:
    states: dict[str, str] = {}
    for alert in local_prometheus.alerts(url):
        name = alert["labels"]["alertname"]
        if name in DRIFT_ALERTS:
            key = f"{name}{{{alert['labels'].get('feature', 'class mix')}}}"
            states[key] = alert["state"]
    return states


def drift_demo(
    model: str = "latest",
    store: str = DEFAULT_STORE,
    data_dir: Path = OUTPUT_DIR / "demo-data",
    port: int = 8080,
    prometheus_port: int = 9090,
    out: Path = DRIFT_DIR,
    normal_s: float = 150,
    shifted_s: float = 240,
    sample_s: float = 5,
    senders: int = 3,
    runtime: str = "torchserve",
) -> dict:
    """In-distribution then shifted traffic (module docstring); returns what it wrote and the alerts firing
    at the end. CheckFailedError (with that result) when no drift alert fired."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = ensure_served(store, model, port, runtime)
    rules = local_prometheus.compress_rules(out / "rules", window="2m", hold="10s")
    url = local_prometheus.start(out / "prometheus", metrics_target(state), port=prometheus_port, rules=rules)
    client, slices = Client(state), held_out_slices(state, data_dir)
    print(f"Prometheus {url}; rules time-compressed (windows 2m, for 10s) in {out / 'rules'}")
    print(f"in-distribution traffic: the version's {sum(map(len, slices.values()))} held-out slices")
    stream = TrafficStream(client, slices, senders=senders)
    stream.start()
    timeline, started = [], time.monotonic()
    shift_at, fired_at = None, None
    try:
        while True:
            time.sleep(sample_s)
            elapsed = time.monotonic() - started
            if shift_at is None and elapsed >= normal_s:
                shift_at = elapsed
                stream.shift()
                print(
                    f"[{elapsed:5.0f}s] shifting the stream: contrast curve changed, one class only",
                    flush=True,
                )
            phase = "shifted" if shift_at is not None else "in-distribution"
            psi, alerts = _sample(url), _alert_states(url)
            timeline.append(
                {"t": round(elapsed, 1), "phase": phase, "sent": stream.sent, "psi": psi, "alerts": alerts}
            )
            shown = " ".join(f"{k}={v:.3f}" for k, v in sorted(psi.items()))
            print(
                f"[{elapsed:5.0f}s] {phase:<15} {stream.sent:>5} sent  PSI {shown or '(waiting)'}", flush=True
            )
            if alerts:
                print(
                    f"        alerts: {', '.join(f'{k} {v}' for k, v in sorted(alerts.items()))}", flush=True
                )
            if shift_at is not None and fired_at is None and any(v == "firing" for v in alerts.values()):
                fired_at = elapsed
            if shift_at is not None and (
                elapsed - shift_at >= shifted_s or (fired_at and elapsed - fired_at > 15)
            ):
                break
    finally:
        stream.stop()
    (out / "timeline.json").write_text(json.dumps(timeline, indent=2) + "\n")
    plot_timeline(timeline, shift_at, out / "psi.png")
    print(f"plot: {out / 'psi.png'}\ntimeline: {out / 'timeline.json'}")
    final = timeline[-1]["alerts"] if timeline else {}
    firing = sorted(k for k, v in final.items() if v == "firing")
    print(f"drift alerts firing at the end: {', '.join(firing) or 'none'}")
    print(
        f"Prometheus keeps running at {url} (alerts page: {url}/alerts); `make stop` stops it and the server"
    )
    result = {"plot": str(out / "psi.png"), "timeline": str(out / "timeline.json"), "firing": firing}
    if not firing:
        raise CheckFailedError("no drift alert fired during the shifted traffic", result=result)
    return result


def plot_timeline(timeline: list[dict], shift_at: float | None, path: Path) -> None:
    figure = Figure(figsize=(9, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    names = sorted({name for point in timeline for name in point["psi"]})
    for name in names:
        points = [(p["t"], p["psi"][name]) for p in timeline if name in p["psi"]]
        times, values = zip(*points, strict=True)
        axes.plot(times, np.maximum(values, 1e-3), label=name, marker=".")
    axes.axhline(WATCH, color="orange", linestyle="--", label="watch (0.1)")
    axes.axhline(ACT, color="red", linestyle="--", label="act (0.25)")
    if shift_at is not None:
        axes.axvline(shift_at, color="grey", linestyle=":", label="stream shifted")
    fired = [
        p["t"]
        for p in timeline
        if p["phase"] == "shifted" and any(v == "firing" for v in p["alerts"].values())
    ]
    if fired:
        axes.axvspan(fired[0], timeline[-1]["t"], color="red", alpha=0.08, label="drift alert firing")
    axes.set_xlabel("seconds")
    axes.set_ylabel("PSI (window 2 min, compressed from 1 h)")
    axes.set_yscale("log")
    axes.legend(fontsize=8, loc="upper left")
    axes.set_title("NeuroViT drift demo: PSI per feature, from Prometheus recording rules")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def stop_all() -> None:
    """Stop the Prometheus of ``monitor`` and ``drift_demo`` and the local server (either runtime)."""
    from handlers.local_service import stop

    for folder in (MONITOR_DIR, DRIFT_DIR / "prometheus"):
        if local_prometheus.stop(folder):
            print(f"Prometheus stopped ({folder})")
    stop(SERVE_DIR)
