"""Benchmark the live service against the bare model: ``neurovit bench serve``.

Starts TorchServe on a published version (``--model``, default the latest), then measures, in one run:
- predict p50 and p95 (one image per request, no explanation) / the bare in-process forward of the same
  model on the same image (goal <= 1.5);
- p50 with rollout / predict p50 (goal <= 1.2: rollout reuses the forward's attentions);
- p50 with the heatmap (gradient rollout) / predict p50 (goal <= 3);
- requests/s under concurrent clients with TorchServe batching on (batch_size 4) and off (batch_size 1).
Prints one JSON line per measurement and a final summary line.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from handlers import local_service as local_server
from handlers.torchserve_launcher import api_key
from neurovit.config import DEFAULT_STORE, OUTPUT_DIR
from neurovit.data.imageio import read_image
from neurovit.model import load_model
from neurovit.preprocessing import preprocess

REAL_SLICES = Path("../shared/data/brain-tumor-mri/validation")


def _images(data_dir: Path, count: int) -> list[Path]:
    paths = sorted(p for p in data_dir.rglob("*.png") if not p.name.endswith(".mask.png"))
    if not paths:
        raise SystemExit(f"no PNG images under {data_dir}")
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def _post(url: str, key: str | None, body: bytes, explain: str) -> float:
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


def throughput(url: str, key: str | None, bodies: list[bytes], clients: int, seconds: float) -> float:
    deadline = time.perf_counter() + seconds

    def client(index: int) -> int:
        done = 0
        while time.perf_counter() < deadline:
            _post(url, key, bodies[(index + done) % len(bodies)], "none")
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client, range(clients)))
    return total / (time.perf_counter() - started)


def run(
    model: str = "latest",
    store: str = DEFAULT_STORE,
    data_dir: Path | None = None,
    requests: int = 40,
    clients: int = 8,
    seconds: float = 15.0,
    port: int = 8090,
) -> dict:
    """The benchmark (module docstring). ``data_dir``: images to send (default real slices, else demo);
    ``requests``: sequential requests per measurement; ``clients``: concurrent clients for requests/s;
    ``seconds``: duration of each throughput run. Returns the summary it prints last."""
    data_dir = data_dir or (REAL_SLICES if REAL_SLICES.is_dir() else OUTPUT_DIR / "demo-data")
    images = _images(data_dir, 32)
    bodies = [path.read_bytes() for path in images]
    serve_dir = OUTPUT_DIR / "bench-serve"
    results: dict = {"images": str(data_dir)}
    try:
        state = local_server.serve(model, store, serve_dir=serve_dir, port=port, batch_size=1)
        key = api_key(Path(state["key_file"]))
        url = f"{state['url']}/predictions/{state['model']}"
        model_dir = serve_dir / "models" / state["version"] / "model"
        results["version"] = state["version"]
        results["bare_forward_ms"] = round(bare_forward_ms(model_dir, images[0], requests), 2)
        print(json.dumps({"bare_forward_ms": results["bare_forward_ms"]}), flush=True)
        for explain in ("none", "rollout", "heatmap", "all"):
            for body in bodies[:3]:  # warm-up
                _post(url, key, body, explain)
            latencies = [_post(url, key, bodies[i % len(bodies)], explain) for i in range(requests)]
            results[explain] = _percentiles(latencies)
            print(json.dumps({"explain": explain, **results[explain]}), flush=True)
        results["rps_batching_off"] = round(throughput(url, key, bodies, clients, seconds), 2)
        print(json.dumps({"batch_size": 1, "requests_per_s": results["rps_batching_off"]}), flush=True)
        local_server.stop(serve_dir, quiet=True)
        state = local_server.serve(model, store, serve_dir=serve_dir, port=port, batch_size=4)
        key = api_key(Path(state["key_file"]))
        for body in bodies[:4]:
            _post(url, key, body, "none")
        results["rps_batching_on"] = round(throughput(url, key, bodies, clients, seconds), 2)
        print(json.dumps({"batch_size": 4, "requests_per_s": results["rps_batching_on"]}), flush=True)
    finally:
        local_server.stop(serve_dir, quiet=True)

    bare = results["bare_forward_ms"]
    summary = {
        "version": results["version"],
        "bare_forward_ms": bare,
        "predict_p50_ms": results["none"]["p50_ms"],
        "predict_p95_ms": results["none"]["p95_ms"],
        "predict_p50_over_bare": round(results["none"]["p50_ms"] / bare, 2),
        "predict_p95_over_bare": round(results["none"]["p95_ms"] / bare, 2),
        "rollout_p50_over_predict": round(results["rollout"]["p50_ms"] / results["none"]["p50_ms"], 2),
        "heatmap_p50_over_predict": round(results["heatmap"]["p50_ms"] / results["none"]["p50_ms"], 2),
        "all_p50_over_predict": round(results["all"]["p50_ms"] / results["none"]["p50_ms"], 2),
        "requests_per_s_batching_off": results["rps_batching_off"],
        "requests_per_s_batching_on": results["rps_batching_on"],
        "clients": clients,
    }
    print(json.dumps(summary), flush=True)
    return summary
