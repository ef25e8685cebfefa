"""A local TorchServe for a published version: ``neurovit serve``, ``predict``, ``stop``, ``serve --demo``.

``serve`` fetches the version from the store (every checksum verified), writes a local config.properties
(token authorisation on, model API off, batching on, loopback addresses) and starts TorchServe in
``outputs/serve/``, where TorchServe writes ``key_file.json``; it waits until the model's worker is ready.
``serve(runtime="kserve")`` serves the fetched version with the KServe runtime instead (KServe's model
server from .venv-kserve, ``handlers.kserve_launcher``: no token, v1 and v2 on one port, /metrics beside).
``predict`` sends one image (with the inference key on TorchServe, to KServe's v1 route on the KServe
runtime) and prints the answer with the maps summarised; the overlays and the full answer go to
``outputs/predictions/`` (never beside the image: a dataset folder would read them back as images).
``stop`` stops whichever runs. ``demo`` (``neurovit serve --demo``) serves the latest version, predicts one
demo slice with both maps and stops. TorchServe itself is started and stopped by
``handlers.torchserve_launcher``.
"""

from __future__ import annotations

import base64
import json
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from handlers import kserve_launcher
from handlers import torchserve_launcher as launcher
from handlers.torchserve_launcher import KEY_FILE, ServeError, api_key
from neurovit.config import DEFAULT_STORE, MODEL_NAME, OUTPUT_DIR
from neurovit.data.masks import read_mask
from neurovit.data.split import load_split
from neurovit.explain_metrics import DEFAULT_TOLERANCE_PX, TOLERANCE_SIDE_PX, lesion_hit
from neurovit.store import resolve_version

SERVE_DIR = OUTPUT_DIR / "serve"
PREDICTIONS_DIR = OUTPUT_DIR / "predictions"
STATE_FILE = "serve.json"
RUNTIMES = ("torchserve", "kserve")


def serve(
    model: str = "latest",
    store: str = DEFAULT_STORE,
    serve_dir: Path = SERVE_DIR,
    port: int = 8080,
    batch_size: int = 4,
    runtime: str = "torchserve",
    batch_delay_ms: int = launcher.LOCAL_BATCH_DELAY_MS,
) -> dict:
    """Fetch ``model`` (a version folder, s3:// URI or "latest"), start ``runtime`` (torchserve or kserve) on
    it, wait for it. ``batch_size``, ``batch_delay_ms``: TorchServe's batching (the KServe runtime has
    none)."""
    from handlers.package import METRICS_CONFIG, MODEL_STORE, package_stage

    if runtime not in RUNTIMES:
        raise ServeError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "torchserve":
        launcher.check_java()
    else:
        kserve_launcher.kserve_python()
    serve_dir = Path(serve_dir).resolve()
    if (serve_dir / STATE_FILE).is_file():
        stop(serve_dir, quiet=True)
    store_, name, version = resolve_version(model, store, model=MODEL_NAME)
    local = store_.fetch(name, version, serve_dir / "models" / version)
    if runtime == "kserve":
        return _serve_kserve(serve_dir, local, name, version, port)
    version_dir = local  # what the handler verifies before it loads (neurovit.integrity)
    if not (local / MODEL_STORE / f"{name}.mar").is_file():  # published before packaging existed
        package_stage(local / "model", serve_dir / "package" / version, name, version)
        local = serve_dir / "package" / version
    metrics = local / METRICS_CONFIG
    settings = launcher.local_settings(local / MODEL_STORE, metrics, port, batch_size, batch_delay_ms)
    url = settings.inference_address
    state = {"url": url, "model": name, "version": version, "key_file": str(serve_dir / KEY_FILE)}
    state["runtime"] = "torchserve"
    launched = launcher.start(serve_dir, name, version, settings, version_dir)
    (serve_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    log = launched.workdir / launcher.LOG_FILE
    print(
        f"serving {name} {version} at {url}/predictions/{name} (metrics {settings.metrics_address}/metrics)"
    )
    print(f"batches of up to {batch_size} requests, waiting at most {batch_delay_ms} ms for them")
    print(f'token authorisation is on: the inference key is in {state["key_file"]} ("inference" -> "key")')
    print(f"log: {log}; stop it with `make stop`")
    return state


def _serve_kserve(serve_dir: Path, version_dir: Path, name: str, version: str, port: int) -> dict:
    """The KServe runtime on the fetched version (it verifies the folder against its manifest itself)."""
    server = kserve_launcher.start(serve_dir, version_dir, name, port)
    state = {"url": server.url, "model": name, "version": version, "key_file": None, "runtime": "kserve"}
    (serve_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    print(f"serving {name} {version} with KServe's model server at {server.url}")
    print(f"  v1 {server.url}/v1/models/{name}:predict and :explain; v2 {server.url}/v2/models/{name}/infer")
    print(f"  metrics {server.url}/metrics; no token, and KServe's server listens on every interface")
    print(f"log: {serve_dir / kserve_launcher.LOG_FILE}; stop it with `make stop`")
    return state


def is_running(serve_dir: Path = SERVE_DIR) -> bool:
    """Whether the server (TorchServe or the KServe runtime) that ``serve`` started in ``serve_dir`` runs."""
    serve_dir = Path(serve_dir).resolve()
    return launcher.running_pid(serve_dir) is not None or kserve_launcher.running_pid(serve_dir) is not None


def server_state(serve_dir: Path = SERVE_DIR) -> dict:
    """What ``serve`` recorded of the local server (url, model, version, key_file); ServeError without one."""
    path = Path(serve_dir) / STATE_FILE
    if not path.is_file():
        raise ServeError(f"no local server: {path} is missing (start one with `make serve`)")
    return json.loads(path.read_text())


def request_answer(
    url: str, model: str, key: str | None, image: bytes, explain: str, runtime: str = "torchserve"
) -> dict:
    """POST one image as JSON to TorchServe's ``/predictions/<model>`` (or, on the KServe runtime, as the one
    instance of a v1 ``:predict``); the answer, or ServeError with the server's."""
    instance = {"data": base64.b64encode(image).decode("ascii"), "explain": explain}
    path, payload = f"/predictions/{model}", instance
    if runtime == "kserve":
        path, payload = f"/v1/models/{model}:predict", {"instances": [instance]}
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url + path, data=json.dumps(payload).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        return answer["predictions"][0] if runtime == "kserve" else answer
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace").strip()
        try:
            message = json.loads(body).get("error") or json.loads(body).get("message") or body
        except (ValueError, AttributeError):
            message = body
        raise ServeError(f"HTTP {error.code}: {message}") from error
    except urllib.error.URLError as error:
        raise ServeError(f"cannot reach {url}: {error.reason} (is `make serve` running?)") from error


def predict(
    image: str | Path, explain: str = "all", serve_dir: Path = SERVE_DIR, out_dir: Path = PREDICTIONS_DIR
) -> dict:
    """Send ``image`` to the local server, print the answer (maps summarised), write the overlays."""
    state, image = server_state(serve_dir), Path(image)
    if not image.is_file():
        raise ServeError(f"no image at {image}")
    runtime = state.get("runtime", "torchserve")
    key = api_key(Path(state["key_file"])) if state.get("key_file") else None
    answer = request_answer(state["url"], state["model"], key, image.read_bytes(), explain, runtime)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{image}: {answer['label']} (confidence {answer['confidence']:.3f})")
    for name, probability in sorted(answer["probabilities"].items(), key=lambda item: -item[1]):
        print(f"  {name:<12} {probability:.3f}")
    for name, explanation in answer["explanations"].items():
        path = out_dir / f"{image.stem}.{name}.png"
        path.write_bytes(base64.b64decode(explanation["overlay_png"]))
        side = explanation["grid_size"]
        values = [value for row in explanation["grid"] for value in row]
        row, column = divmod(values.index(max(values)), side)
        print(f"  {name}: {side}x{side} map, peak at row {row}, column {column}; overlay {path}")
    (out_dir / f"{image.stem}.json").write_text(json.dumps(answer, indent=2) + "\n")
    model = answer["model"]
    print(f"model {model['name']} {model['version']}; full answer: {out_dir / (image.stem + '.json')}")
    print(answer["disclaimer"])
    return answer


def stop(serve_dir: Path = SERVE_DIR, quiet: bool = False) -> bool:
    """Stop the local server started by ``serve``, whichever runtime (TorchServe removes the key file);
    False when none ran."""
    serve_dir = Path(serve_dir).resolve()
    stopped = [
        name
        for name, stop_one in (("TorchServe", launcher.stop), ("the KServe runtime", kserve_launcher.stop))
        if stop_one(serve_dir)
    ]
    if not quiet:
        print(" and ".join(stopped) + " stopped" if stopped else "no local server is running")
    (serve_dir / STATE_FILE).unlink(missing_ok=True)
    return bool(stopped)


def demo_slices(store: str, data_dir: Path) -> list[tuple[Path, str]]:
    """``[(image, true class)]``: the first held-out test slice of each class in the latest version's
    split (sorted by path), chosen before the service answers anything."""
    resolved, model, version = resolve_version("latest", store, model=MODEL_NAME)
    with tempfile.TemporaryDirectory(prefix="neurovit-demo-") as scratch:
        split_path = resolved.fetch(model, version, Path(scratch) / "version") / "split.json"
        if not split_path.is_file():
            raise ServeError(f"version {version} has no split.json: no held-out slices to show")
        plan = load_split(split_path)
    chosen = {}
    for entry in sorted(plan.entries, key=lambda entry: entry.relpath):
        if entry.split == "test" and entry.label not in chosen and (Path(data_dir) / entry.relpath).is_file():
            chosen[entry.label] = Path(data_dir) / entry.relpath
    if not chosen:
        raise ServeError(f"none of version {version}'s test slices is in {data_dir} (run `make demo-data`)")
    return [(chosen[label], label) for label in plan.classes if label in chosen]


def lesion_verdict(image: Path, explanation: dict) -> str:
    """Does the served map's peak fall on the lesion outlined beside ``image``? Scored as eval-explain
    scores it (``neurovit.explain_metrics.lesion_hit``)."""
    mask = read_mask(image)
    if mask is None:
        return "no mask"
    if not mask.any():
        return "no lesion"
    return "on lesion" if lesion_hit(np.asarray(explanation["grid"]), mask) >= 0.5 else "off lesion"


def demo(store: str = DEFAULT_STORE, data_dir: Path = OUTPUT_DIR / "demo-data", port: int = 8080) -> None:
    """Serve the latest version, ask it about one held-out test slice of each class, stop; then a table of
    truth, answer and, for each served map, whether its peak falls on the lesion. Wrong answers stay."""
    chosen = demo_slices(store, data_dir)
    rows = []
    serve(store=store, port=port)
    try:
        for image, label in chosen:
            answer = predict(image, explain="all")
            verdicts = {name: lesion_verdict(image, value) for name, value in answer["explanations"].items()}
            rows.append((image, label, answer, verdicts))
        print(f"overlays written to {PREDICTIONS_DIR}")
    finally:
        stop()
    names = list(rows[0][3])
    print(
        "\nheld-out test slices, the first of each class in the version's split (chosen before any answer):"
    )
    print(
        f"  {'slice':<22} {'true':<11} {'answer (confidence)':<24} {'right':<6} "
        + " ".join(f"{n:<11}" for n in names)
    )
    for image, label, answer, verdicts in rows:
        said = f"{answer['label']} ({answer['confidence']:.2f})"
        right = "yes" if answer["label"] == label else "WRONG"
        print(
            f"  {image.name:<22} {label:<11} {said:<24} {right:<6} "
            + " ".join(f"{verdicts[n]:<11}" for n in names)
        )
    print(
        f"a peak 'on lesion' lies within {DEFAULT_TOLERANCE_PX:g} px at {TOLERANCE_SIDE_PX} px of the "
        "lesion mask, as `make eval-explain` scores it"
    )
