"""Capacity of one replica under locust: ``neurovit bench load`` (``make bench-load``).

Serves a published version (``--model``, default the latest) with TorchServe on free local ports, packaged
afresh with the handler in this tree (what the next deployment ships), and steps the number of locust users
up (each keeps one request in flight, so users = concurrency) until the p95 latency breaks the objective or
a request fails. It does that for the plain-prediction and the mixed scenario
(``handlers/benchmarks/load/locustfile.py``), with TorchServe batching on (batch 4) and off (batch 1, what
KServe's envelopes need), restarting TorchServe with the changed config.

Prints one JSON line per step and a final JSON line with the capacity per replica (requests/s at
p95 <= objective) and the KServe sizing it implies; writes ``capacity.png`` (throughput and p95 against
users) and ``sizing.md`` / ``sizing.json`` to ``outputs/bench-load/<time>/``.

The load generator runs on the same 2 cores as the server, so the figures are a floor for a replica that
has its cores to itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from handlers import torchserve_launcher as launcher
from handlers.package import METRICS_CONFIG, MODEL_STORE, ServerSettings, package_stage
from neurovit.config import DEFAULT_STORE, MODEL_NAME, OUTPUT_DIR
from neurovit.store import resolve_version

LOCUSTFILE = Path(__file__).resolve().parent / "load" / "locustfile.py"
SCENARIOS = {"predict": "PredictUser", "mixed": "MixedUser"}
BATCH_SIZES = {"on": 4, "off": 1}
USER_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
DRAIN_S = 3.0
# Knative's default target utilisation: the autoscaler adds replicas when the average concurrency per
# replica passes this share of scaleTarget, so scaling starts before a replica reaches its capacity.
KNATIVE_TARGET_UTILISATION = 0.7


@dataclass(frozen=True)
class Step:
    """One load level: users held for the step's seconds, what they got."""

    scenario: str
    batching: str
    users: int
    requests: int
    failures: int
    rps: float
    answered_rps: float  # requests/s that got their right answer (rps counts quick refusals too)
    p50_ms: float
    p95_ms: float
    within_objective: bool
    loadavg_1m: float  # of the whole machine at the step's end: other jobs on the 2 cores skew a step


@dataclass(frozen=True)
class Options:
    """What ``climb`` reads: the images to send, the p95 objective, seconds per step, the user steps."""

    images: Path
    objective_ms: float
    step_seconds: int
    users: list[int]


@dataclass(frozen=True)
class Server:
    url: str
    key: str | None
    settings: ServerSettings


@contextmanager
def torchserve(
    package: Path, version_dir: Path, name: str, version: str, workdir: Path, batch_size: int
) -> Iterator[Server]:
    """TorchServe on ``package`` in its own process group, with local_settings() (as ``make serve``);
    ``version_dir``: the fetched version the handler verifies before it loads."""
    port = launcher.free_port_block()
    settings = launcher.local_settings(package / MODEL_STORE, package / METRICS_CONFIG, port, batch_size)
    with launcher.running(workdir, name, version, settings, version_dir, timeout_s=300) as server:
        yield Server(server.url, server.key(), settings)


def run_locust(
    server: Server, user_class: str, users: int, seconds: int, images: Path, out: Path, objective_ms: float
) -> dict:
    """One headless locust run; its summary (statistics reset once all users are running)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--reset-stats",
        "--host", server.url, "--images", str(images), "--p95-objective-ms", str(objective_ms),
        "--request-timeout-s", "30", "--csv", str(out / "load"), "--summary-file", str(out / "summary.json"),
        "--only-summary", user_class,
    ]  # fmt: skip
    env = {**os.environ, "NEUROVIT_TOKEN": server.key or ""}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 120)
    (out / "locust.log").write_text(result.stdout + result.stderr)
    summary_file = out / "summary.json"
    if not summary_file.is_file():
        raise RuntimeError(f"locust wrote no summary ({out / 'locust.log'}): {result.stderr[-1000:]}")
    return json.loads(summary_file.read_text())


def climb(server: Server, scenario: str, batching: str, args, out: Path) -> list[Step]:
    """Users up the ladder until the objective breaks or a request fails; one JSON line per step."""
    steps = []
    for users in args.users:
        summary = run_locust(
            server,
            SCENARIOS[scenario],
            users,
            args.step_seconds,
            args.images,
            out / f"{users}",
            args.objective_ms,
        )
        ok = summary["failures"] == 0 and summary["p95_ms"] <= args.objective_ms
        step = Step(
            scenario, batching, users, summary["requests"], summary["failures"], summary["rps"],
            round(summary["rps"] * (1 - summary["failures"] / max(1, summary["requests"])), 2),
            summary["p50_ms"], summary["p95_ms"], ok, round(os.getloadavg()[0], 2),
        )  # fmt: skip
        time.sleep(DRAIN_S)  # requests the stopped users left queued must not land in the next step
        steps.append(step)
        print(json.dumps(asdict(step)), flush=True)
        if not ok:
            break
    return steps


def capacity(steps: list[Step]) -> dict | None:
    """From the steps within the objective: the most requests/s (the capacity) and the users it took, and
    the most users (requests in flight) still within the objective."""
    passing = [step for step in steps if step.within_objective]
    if not passing:
        return None
    best = max(passing, key=lambda step: step.rps)
    breached = next((step for step in steps if not step.within_objective), None)
    return {
        "rps": best.rps,
        "users": best.users,
        "p95_ms": best.p95_ms,
        "max_users_within_objective": max(step.users for step in passing),
        "breached_at_users": breached.users if breached else None,
    }


def sizing(capacities: dict, objective_ms: float, queue: int) -> dict:
    """KServe settings from the mixed scenario with batching off: what a KServe replica runs (batch size 1,
    see handlers/package.py) under the realistic traffic mix.

    scaleTarget is the concurrency at which the replica reached its capacity: more in flight adds waiting,
    not throughput, so the autoscaler should add replicas around there (Knative starts at 70 % of it).
    containerConcurrency is the most in flight that still met the objective: past it, Knative's queue-proxy
    holds requests back rather than letting the replica's p95 go over the objective."""
    deployed = capacities.get("mixed", {}).get("off")
    if not deployed:
        return {"note": "no step met the objective: no sizing"}
    target, limit = deployed["users"], deployed["max_users_within_objective"]
    return {
        "from": "mixed scenario, batching off (KServe's config: batch size 1)",
        "p95_objective_ms": objective_ms,
        "capacity_rps": deployed["rps"],
        "scaleMetric": "concurrency",
        "scaleTarget": target,
        "containerConcurrency": limit,
        "scale_out_starts_at_concurrency": round(target * KNATIVE_TARGET_UTILISATION, 1),
        "replicas_for_rps": f"ceil(peak_rps / ({deployed['rps']} * {KNATIVE_TARGET_UTILISATION}))",
        "job_queue_size": queue,
        "job_queue_size_ok": queue >= limit,
    }


def sizing_markdown(result: dict) -> str:
    size, caps = result["sizing"], result["capacity"]
    lines = [
        "# NeuroViT capacity per replica",
        "",
        f"Version {result['version']}; p95 objective {result['p95_objective_ms']:g} ms; "
        f"{result['step_seconds']} s per step; measured {result['measured_at']} on {os.cpu_count()} CPU "
        "cores shared with the load generator.",
        "",
        "| scenario | batching | capacity (req/s) | at users | p95 (ms) | most users within | breached at |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, per_batching in caps.items():
        for batching, cap in per_batching.items():
            cap = cap or {}
            keys = ("rps", "users", "p95_ms", "max_users_within_objective", "breached_at_users")
            cells = [cap.get(key) or "-" for key in keys]
            lines.append(f"| {scenario} | {batching} | " + " | ".join(str(cell) for cell in cells) + " |")
    lines += ["", f"## KServe sizing ({size.get('from', 'none')})", ""]
    if "containerConcurrency" not in size:
        return "\n".join([*lines, size["note"], ""])
    target, limit, queue = size["scaleTarget"], size["containerConcurrency"], size["job_queue_size"]
    lines += [
        f"- `scaleMetric: concurrency`, `scaleTarget: {target}`: a replica reached its capacity "
        f"({size['capacity_rps']} req/s) with {target} requests in flight; more in flight only waits longer. "
        f"With Knative's default 70 % target utilisation, replicas are added once the average passes "
        f"{size['scale_out_starts_at_concurrency']} in flight.",
        f"- `containerConcurrency: {limit}`: the most requests in flight that still met the p95 objective; "
        "past it, Knative's queue-proxy holds requests back rather than push the replica over the objective.",
        f"- replicas for a peak load: {size['replicas_for_rps']}.",
        f"- TorchServe `job_queue_size` {queue} "
        + ("≥ containerConcurrency: " if size["job_queue_size_ok"] else "< containerConcurrency, raise it: ")
        + "what KServe admits never bounces off the queue; direct traffic past it gets a quick 503.",
        "",
    ]
    return "\n".join(lines)


def plot(steps: list[Step], objective_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for scenario in SCENARIOS:
        for batching, marker in (("on", "o"), ("off", "s")):
            series = [step for step in steps if step.scenario == scenario and step.batching == batching]
            if not series:
                continue
            label = f"{scenario}, batching {batching}"
            users = [step.users for step in series]
            top.plot(users, [step.answered_rps for step in series], marker=marker, label=label)
            bottom.plot(users, [step.p95_ms for step in series], marker=marker, label=label)
            failed = [step for step in series if step.failures]
            bottom.scatter(
                [s.users for s in failed], [s.p95_ms for s in failed], marker="x", color="black", s=60
            )
    bottom.axhline(objective_ms, color="red", linestyle="--", label=f"p95 objective {objective_ms:g} ms")
    bottom.scatter([], [], marker="x", color="black", label="step with failed requests (e.g. 503 queue full)")
    top.set_ylabel("answered requests/s")
    bottom.set_ylabel("p95 latency (ms)")
    bottom.set_xlabel("users (requests in flight)")
    bottom.set_yscale("log")
    top.legend(fontsize=8)
    bottom.legend(fontsize=8)
    top.set_title("NeuroViT: one replica (1 worker, 2 CPU cores)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(
    model: str = "latest",
    store: str = DEFAULT_STORE,
    images: Path = OUTPUT_DIR / "demo-data",
    objective_ms: float = 500.0,
    step_seconds: int = 10,
    users: list[int] | tuple[int, ...] = USER_STEPS,
    scenarios: str = "predict,mixed",
    batching: str = "on,off",
    out: Path | None = None,
) -> dict:
    """The benchmark (module docstring); returns the final result it also prints as the last JSON line."""
    args = Options(images, objective_ms, step_seconds, list(users))
    measured_at = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = out or OUTPUT_DIR / "bench-load" / measured_at
    store_, name, version = resolve_version(model, store, model=MODEL_NAME)
    fetched = store_.fetch(name, version, out / "version", overwrite=True)
    package_stage(fetched / "model", out / "package", name, version)  # the handler in this tree
    steps: list[Step] = []
    capacities: dict = {scenario: {} for scenario in scenarios.split(",")}
    for mode in batching.split(","):
        with torchserve(
            out / "package", fetched, name, version, out / f"serve-{mode}", BATCH_SIZES[mode]
        ) as server:
            run_locust(server, "MixedUser", 2, 5, args.images, out / "warm-up" / mode, args.objective_ms)
            for scenario in capacities:
                series = climb(server, scenario, mode, args, out / "locust" / f"{scenario}-{mode}")
                steps += series
                capacities[scenario][mode] = capacity(series)
    queue = ServerSettings().job_queue_size  # local_settings() keeps the default
    result = {
        "version": version,
        "p95_objective_ms": args.objective_ms,
        "step_seconds": args.step_seconds,
        "measured_at": measured_at,
        "capacity": capacities,
        "sizing": sizing(capacities, args.objective_ms, queue),
    }
    result["capacity_per_replica_rps"] = result["sizing"].get("capacity_rps")
    (out / "steps.jsonl").write_text("".join(json.dumps(asdict(step)) + "\n" for step in steps))
    plot(steps, args.objective_ms, out / "capacity.png")
    (out / "sizing.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sizing.md").write_text(sizing_markdown(result))
    result.update(plot=str(out / "capacity.png"), sizing_note=str(out / "sizing.md"))
    print(json.dumps(result), flush=True)
    return result
