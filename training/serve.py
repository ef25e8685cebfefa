"""A local TorchServe for a published version: ``python -m training.serve serve|predict|stop|demo``.

``serve`` fetches the version from the store (every checksum verified), writes a local config.properties
(token authorisation on, model API off, batching on, loopback addresses) and starts TorchServe in
``outputs/serve/``, where TorchServe writes ``key_file.json``; it waits until the model's worker is ready.
``predict`` sends one image with the inference key and prints the answer with the maps summarised; the
overlays and the full answer go to ``outputs/predictions/`` (never beside the image: a dataset folder would
read them back as images). ``stop`` stops it. ``demo`` serves the latest version, predicts one demo slice
with both maps and stops.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from neurovit.config import DEFAULT_STORE, MODEL_NAME, OUTPUT_DIR
from neurovit.data.masks import read_mask
from neurovit.data.split import load_split
from neurovit.errors import NeuroVitError
from neurovit.explain_metrics import DEFAULT_TOLERANCE_PX, TOLERANCE_SIDE_PX, lesion_hit
from neurovit.integrity import VERSION_DIR_ENV
from neurovit.store import resolve

if TYPE_CHECKING:
    from training.package import ServerSettings

SERVE_DIR = OUTPUT_DIR / "serve"
PREDICTIONS_DIR = OUTPUT_DIR / "predictions"
STATE_FILE = "serve.json"
KEY_FILE = "key_file.json"
JAVA_HINT = "TorchServe needs Java 17: apt-get install -y openjdk-17-jre-headless (or set JAVA_HOME)"


class ServeError(NeuroVitError, RuntimeError):
    """The local server cannot be started, reached or stopped."""


def _torchserve() -> str:
    local = Path(sys.executable).parent / "torchserve"
    found = str(local) if local.is_file() else shutil.which("torchserve")
    if not found:
        raise ServeError("torchserve is not installed in this environment (pip install torchserve)")
    return found


def _environment(serve_dir: Path) -> dict[str, str]:
    """TorchServe's launcher keeps its pid file in the temp folder: a private one per serve folder."""
    tmp = serve_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp)}


def local_settings(model_store: Path, metrics_config: Path, port: int, batch_size: int = 4) -> ServerSettings:
    """Loopback addresses from ``port`` (inference), ``port+1`` (management), ``port+2`` (metrics)."""
    from training.package import ServerSettings  # torch and transformers: not for predict and stop

    return ServerSettings(
        inference_address=f"http://127.0.0.1:{port}",
        management_address=f"http://127.0.0.1:{port + 1}",
        metrics_address=f"http://127.0.0.1:{port + 2}",
        grpc_inference_port=port + 3,
        grpc_management_port=port + 4,
        model_store=str(model_store),
        metrics_config=str(metrics_config),
        batch_size=batch_size,
        max_batch_delay_ms=50,
        token_authorization=True,
        envvars_config=False,  # a stray TS_SERVICE_ENVELOPE in a shell must not change local answers
    )


def api_key(key_file: Path, api: str = "inference") -> str | None:
    """A key TorchServe wrote for token authorisation ("inference" or "management"); None without one."""
    try:
        return json.loads(Path(key_file).read_text())[api]["key"]
    except (OSError, ValueError, KeyError):
        return None


def wait_until_ready(
    management_url: str,
    model: str,
    process_alive,
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


def serve(
    model: str = "latest",
    store: str = DEFAULT_STORE,
    serve_dir: Path = SERVE_DIR,
    port: int = 8080,
    batch_size: int = 4,
) -> dict:
    """Fetch ``model`` (a version folder, s3:// URI or "latest"), start TorchServe on it, wait for it."""
    from training.package import METRICS_CONFIG, MODEL_STORE, config_properties, package_stage

    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise ServeError(JAVA_HINT)
    serve_dir = Path(serve_dir).resolve()
    if (serve_dir / STATE_FILE).is_file():
        stop(serve_dir, quiet=True)
    store_, name, version = resolve(store, model=MODEL_NAME) if model == "latest" else resolve(model)
    local = store_.fetch(name, version, serve_dir / "models" / version)
    version_dir = local  # what the handler verifies before it loads (neurovit.integrity)
    if not (local / MODEL_STORE / f"{name}.mar").is_file():  # published before packaging existed
        package_stage(local / "model", serve_dir / "package" / version, name, version)
        local = serve_dir / "package" / version
    metrics = local / METRICS_CONFIG
    settings = local_settings(local / MODEL_STORE, metrics, port, batch_size=batch_size)
    config = serve_dir / "config.properties"
    config.write_text(config_properties(name, version, settings))
    log = serve_dir / "torchserve.log"
    with log.open("w") as output:
        command = [_torchserve(), "--start", "--ncs", "--ts-config", str(config)]
        command += ["--model-store", str(local / MODEL_STORE)]
        env = {**_environment(serve_dir), VERSION_DIR_ENV: str(version_dir)}
        subprocess.run(command, cwd=serve_dir, env=env, stdout=output, stderr=subprocess.STDOUT, check=True)
    url = settings.inference_address
    state = {"url": url, "model": name, "version": version, "key_file": str(serve_dir / KEY_FILE)}
    (serve_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    try:
        alive = lambda: _pid(serve_dir) is not None  # noqa: E731
        key_file = serve_dir / KEY_FILE
        wait_until_ready(settings.management_address, name, alive, log=log, key_file=key_file)
    except ServeError:
        stop(serve_dir, quiet=True)
        raise
    print(
        f"serving {name} {version} at {url}/predictions/{name} (metrics {settings.metrics_address}/metrics)"
    )
    print(f'token authorisation is on: the inference key is in {state["key_file"]} ("inference" -> "key")')
    print(f"log: {log}; stop it with `make stop`")
    return state


def _pid(serve_dir: Path) -> int | None:
    pid_file = serve_dir / "tmp" / ".model_server.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _state(serve_dir: Path) -> dict:
    path = Path(serve_dir) / STATE_FILE
    if not path.is_file():
        raise ServeError(f"no local server: {path} is missing (start one with `make serve`)")
    return json.loads(path.read_text())


def request_answer(url: str, model: str, key: str | None, image: bytes, explain: str) -> dict:
    """POST one image as JSON to ``/predictions/<model>``; the answer, or ServeError with the server's."""
    body = json.dumps({"data": base64.b64encode(image).decode("ascii"), "explain": explain}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{url}/predictions/{model}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())
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
    state, image = _state(serve_dir), Path(image)
    if not image.is_file():
        raise ServeError(f"no image at {image}")
    key = api_key(Path(state["key_file"]))
    answer = request_answer(state["url"], state["model"], key, image.read_bytes(), explain)
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


def stop(serve_dir: Path = SERVE_DIR, quiet: bool = False) -> None:
    """Stop the local server started by ``serve`` (TorchServe removes the key file)."""
    serve_dir = Path(serve_dir).resolve()
    if _pid(serve_dir) is None:
        if not quiet:
            print("no local TorchServe is running")
    else:
        command = [_torchserve(), "--stop", "--foreground"]
        subprocess.run(command, cwd=serve_dir, env=_environment(serve_dir), capture_output=True, check=False)
        if not quiet:
            print("TorchServe stopped")
    (serve_dir / STATE_FILE).unlink(missing_ok=True)


def demo_slices(store: str, data_dir: Path) -> list[tuple[Path, str]]:
    """``[(image, true class)]``: the first held-out test slice of each class in the latest version's
    split (sorted by path), chosen before the service answers anything."""
    resolved, model, version = resolve(store, model=MODEL_NAME)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.serve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    default_port = int(os.environ.get("NEUROVIT_SERVE_PORT", "8080"))
    p = sub.add_parser("serve", help="start TorchServe on a published version")
    p.add_argument("--model", default="latest", help="version folder, s3:// URI, or 'latest'")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--port", type=int, default=default_port, help="inference; management +1, metrics +2")
    p = sub.add_parser("predict", help="send one image to the local server")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--explain", default="all", help="none, rollout, heatmap or all")
    p.add_argument("--out", type=Path, default=PREDICTIONS_DIR)
    sub.add_parser("stop", help="stop the local server")
    p = sub.add_parser("demo", help="serve the latest version, explain one test slice per class, stop")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            serve(args.model, args.store, port=args.port)
        elif args.command == "predict":
            predict(args.image, args.explain, out_dir=args.out)
        elif args.command == "stop":
            stop()
        else:
            demo(args.store, port=args.port)
    except NeuroVitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
