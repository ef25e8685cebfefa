"""Time the service against the in-process predict, on both runtimes: ``neurovit bench serve``.

Starts each runtime in turn (``--runtimes``, default TorchServe then KServe's model server) on a published
version (``--model``, default the latest), and measures, in one run:
- the in-process predict: the serving core (``neurovit.serving.Predictor``, loaded as the runtimes load it)
  answering the same image bytes in this process, no explanation: parse, decode, preprocess, forward, OOD
  score, the answer and its JSON; p50 and p95 over the same requests. A served predict minus this is what
  the server adds (HTTP, envelope, hops, telemetry);
- the bare in-process forward of the same model on the same image (batch of one, no explanation);
- predict p50 and p95 (one image per request, no explanation) / the in-process predict (goal <= 1.5: the
  issue's "within 1.5x of the in-process predict"), and / the bare forward (the floor, for reference);
- p50 with rollout / predict p50 (goal <= 1.2: rollout reuses the forward's attentions);
- p50 with the heatmap (gradient rollout) / predict p50 (goal <= 3);
- requests/s under concurrent clients; on TorchServe with its batching off (batch_size 1) and on
  (batch_size 4); the KServe runtime has no batching of its own (one forward per request).
TorchServe gets the raw image bytes (its own route), the KServe runtime a v1 ``:predict`` body (base64
JSON). Prints one JSON line per measurement and a final summary line: per runtime, predict p50 / the
in-process predict p50 and whether it meets the 1.5 goal (``in_process_goal_met``), beside the other ratios.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from handlers import local_service as local_server
from handlers.package import archived_options
from handlers.torchserve_launcher import api_key
from neurovit.config import DEFAULT_STORE, OUTPUT_DIR
from neurovit.data.imageio import read_image
from neurovit.model import load_model
from neurovit.preprocessing import preprocess
from neurovit.serving import Predictor, RequestError

REAL_SLICES = Path("../shared/data/brain-tumor-mri/validation")
IN_PROCESS_GOAL = 1.5  # a served predict p50 within 1.5x of the in-process predict p50 (issue 21)


def _images(data_dir: Path, count: int) -> list[Path]:
    paths = sorted(p for p in data_dir.rglob("*.png") if not p.name.endswith(".mask.png"))
    if not paths:
        raise SystemExit(f"no PNG images under {data_dir}")
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def timed_request(url: str, key: str | None, body: bytes, explain: str, runtime: str = "torchserve") -> float:
    """One request's round trip in seconds: TorchServe's raw-bytes route, or the KServe runtime's v1 body."""
    if runtime == "kserve":
        instance = {"data": base64.b64encode(body).decode("ascii"), "explain": explain}
        body, headers = json.dumps({"instances": [instance]}).encode(), {"Content-Type": "application/json"}
    else:
        headers = {"Content-Type": "application/octet-stream", "X-NeuroViT-Explain": explain}
    headers.update({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return time.perf_counter() - started


def _percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
    }


def bare_forward_ms(model_dir: Path, image: Path, repeats: int) -> float:
    """Median in-process forward (batch of one, no explanation) of the served model on one image."""
    loaded = load_model(model_dir)
    pixels = preprocess(read_image(image).pixels, loaded.preprocessing)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 3):
            started = time.perf_counter()
            loaded.model(pixels)
            times.append(time.perf_counter() - started)
    return statistics.median(times[3:]) * 1000


def in_process_predict(version_dir: Path, name: str, bodies: list[bytes], requests: int) -> dict:
    """p50/p95 of the serving core answering ``requests`` raw image bodies in this process, no explanation:
    the work every served predict pays (parse, decode, preprocess, forward, OOD score, the answer as JSON)
    without the server. The predictor is loaded as the KServe runtime loads it (the version's limits)."""
    options = archived_options(version_dir, name)
    predictor = Predictor.load(version_dir / "model", name, version_dir.name, options=options)

    def answer(body: bytes) -> float:
        started = time.perf_counter()
        prepared = predictor.prepare_item({"body": body}, "none")
        if isinstance(prepared, RequestError):
            raise SystemExit(f"the benchmark's own image was refused: {prepared}")
        json.dumps(predictor.predict([prepared])[0])
        return time.perf_counter() - started

    for body in bodies[:3]:  # warm-up, as for the servers
        answer(body)
    return _percentiles([answer(bodies[i % len(bodies)]) for i in range(requests)])


def throughput(
    url: str, key: str | None, bodies: list[bytes], clients: int, seconds: float, runtime: str = "torchserve"
) -> float:
    deadline = time.perf_counter() + seconds

    def client(index: int) -> int:
        done = 0
        while time.perf_counter() < deadline:
            timed_request(url, key, bodies[(index + done) % len(bodies)], "none", runtime)
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client, range(clients)))
    return total / (time.perf_counter() - started)


def _start(runtime: str, model: str, store: str, serve_dir: Path, port: int, batch_size: int = 1):
    """Start ``runtime`` on the version; its predict URL and key (None on the KServe runtime: no token)."""
    state = local_server.serve(
        model, store, serve_dir=serve_dir, port=port, batch_size=batch_size, runtime=runtime
    )
    if runtime == "kserve":
        return state, f"{state['url']}/v1/models/{state['model']}:predict", None
    return state, f"{state['url']}/predictions/{state['model']}", api_key(Path(state["key_file"]))


def measure_runtime(
    runtime: str,
    model: str,
    store: str,
    bodies: list[bytes],
    requests: int,
    clients: int,
    seconds: float,
    serve_dir: Path,
    port: int,
) -> dict:
    """Latency per explanation choice and requests/s of one runtime (module docstring)."""
    results: dict = {}
    try:
        state, url, key = _start(runtime, model, store, serve_dir, port)
        results["version"], results["model"] = state["version"], state["model"]
        for explain in ("none", "rollout", "heatmap", "all"):
            for body in bodies[:3]:  # warm-up
                timed_request(url, key, body, explain, runtime)
            latencies = [
                timed_request(url, key, bodies[i % len(bodies)], explain, runtime) for i in range(requests)
            ]
            results[explain] = _percentiles(latencies)
            print(json.dumps({"runtime": runtime, "explain": explain, **results[explain]}), flush=True)
        results["rps"] = round(throughput(url, key, bodies, clients, seconds, runtime), 2)
        print(json.dumps({"runtime": runtime, "batch_size": 1, "requests_per_s": results["rps"]}), flush=True)
        if runtime == "torchserve":
            local_server.stop(serve_dir, quiet=True)
            state, url, key = _start(runtime, model, store, serve_dir, port, batch_size=4)
            for body in bodies[:4]:
                timed_request(url, key, body, "none", runtime)
            rps = round(throughput(url, key, bodies, clients, seconds, runtime), 2)
            results["rps_batching_on"] = rps
            print(json.dumps({"runtime": runtime, "batch_size": 4, "requests_per_s": rps}), flush=True)
    finally:
        local_server.stop(serve_dir, quiet=True)
    return results


def ratios(results: dict, bare: float, in_process: dict) -> dict:
    predict = results["none"]["p50_ms"]
    over_in_process = round(predict / in_process["p50_ms"], 2)
    return {
        "predict_p50_ms": predict,
        "predict_p95_ms": results["none"]["p95_ms"],
        "predict_p50_over_in_process": over_in_process,
        "predict_p95_over_in_process": round(results["none"]["p95_ms"] / in_process["p95_ms"], 2),
        "in_process_goal_met": over_in_process <= IN_PROCESS_GOAL,
        "predict_p50_over_bare": round(predict / bare, 2),
        "predict_p95_over_bare": round(results["none"]["p95_ms"] / bare, 2),
        "rollout_p50_over_predict": round(results["rollout"]["p50_ms"] / predict, 2),
        "heatmap_p50_over_predict": round(results["heatmap"]["p50_ms"] / predict, 2),
        "all_p50_over_predict": round(results["all"]["p50_ms"] / predict, 2),
        "requests_per_s": results["rps"],
    } | ({"requests_per_s_batching_on": results["rps_batching_on"]} if "rps_batching_on" in results else {})


def run(
    model: str = "latest",
    store: str = DEFAULT_STORE,
    data_dir: Path | None = None,
    requests: int = 40,
    clients: int = 8,
    seconds: float = 15.0,
    port: int = 8090,
    runtimes: tuple[str, ...] = ("torchserve", "kserve"),
) -> dict:
    """The benchmark (module docstring). ``data_dir``: images to send (default real slices, else demo);
    ``requests``: sequential requests per measurement; ``clients``: concurrent clients for requests/s;
    ``seconds``: duration of each throughput run. Returns the summary it prints last."""
    data_dir = data_dir or (REAL_SLICES if REAL_SLICES.is_dir() else OUTPUT_DIR / "demo-data")
    images = _images(data_dir, 32)
    bodies = [path.read_bytes() for path in images]
    serve_dir = OUTPUT_DIR / "bench-serve"
    per_runtime = {
        runtime: measure_runtime(runtime, model, store, bodies, requests, clients, seconds, serve_dir, port)
        for runtime in runtimes
    }
    first = next(iter(per_runtime.values()))
    version, name = first["version"], first["model"]
    version_dir = serve_dir / "models" / version  # what both runtimes served, fetched and verified
    # measured after the servers stopped, so nothing else competes for the cores
    in_process = in_process_predict(version_dir, name, bodies, requests)
    print(json.dumps({"runtime": "in-process", "explain": "none", **in_process}), flush=True)
    bare = round(bare_forward_ms(version_dir / "model", images[0], requests), 2)
    summary = {
        "version": version,
        "images": str(data_dir),
        "in_process_predict_p50_ms": in_process["p50_ms"],
        "in_process_predict_p95_ms": in_process["p95_ms"],
        "bare_forward_ms": bare,
        "clients": clients,
    }
    summary.update({runtime: ratios(results, bare, in_process) for runtime, results in per_runtime.items()})
    print(json.dumps(summary), flush=True)
    return summary
