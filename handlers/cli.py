"""The serving commands of `neurovit`: serve, predict, stop, package, deploy, bench serve|load.

``training.cli`` dispatches them and maps their errors to exit statuses; each command imports what it runs
(``deploy`` runs in .venv-tools, without torch).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from handlers.torchserve_launcher import LOCAL_BATCH_DELAY_MS
from neurovit.config import DEFAULT_STORE, OUTPUT_DIR
from neurovit.errors import UsageError

MODEL_HELP = "'latest' (default), a version id, a version folder or an s3:// URI (docs/cli.md)"


def cmd_serve(args: argparse.Namespace) -> dict | None:
    from handlers import local_service

    delay = args.batch_delay_ms
    if delay is not None and delay < 0:
        raise UsageError(f"--batch-delay-ms: 0 or more milliseconds, got {delay}")
    if delay is not None and (args.runtime != "torchserve" or args.demo):
        raise UsageError(
            "--batch-delay-ms sets `neurovit serve`'s TorchServe batching: not with --runtime kserve "
            "(no batching) or --demo"
        )
    if args.demo:
        local_service.demo(args.store, port=args.port)
        return None
    batching = {} if delay is None else {"batch_delay_ms": delay}
    return local_service.serve(args.model, args.store, port=args.port, runtime=args.runtime, **batching)


def cmd_predict(args: argparse.Namespace) -> dict:
    from handlers.local_service import predict

    return predict(args.image, args.explain, out_dir=args.out)


def cmd_stop(args: argparse.Namespace) -> None:
    from monitoring.local_stack import stop_all

    stop_all()


def cmd_package(args: argparse.Namespace) -> dict:
    from handlers.package import package_version

    return package_version(args.model, args.store, args.out)


def cmd_deploy(args: argparse.Namespace) -> dict:
    from handlers.kserve_rollout import rollout

    storage_uri = getattr(args, "storage_uri", "")
    percent = getattr(args, "percent", 10)
    return rollout(args.deploy_command, storage_uri, percent, args.name, args.namespace)


def cmd_bench_serve(args: argparse.Namespace) -> dict:
    from handlers.benchmarks.latency import run

    runtimes = tuple(name.strip() for name in args.runtimes.split(",") if name.strip())
    unknown = sorted(set(runtimes) - {"torchserve", "kserve"})
    if unknown or not runtimes:
        raise UsageError(f"--runtimes: torchserve and/or kserve, comma-separated; got {args.runtimes!r}")
    return run(
        args.model, args.store, args.data_dir, args.requests, args.clients, args.seconds, args.port, runtimes
    )


def cmd_bench_load(args: argparse.Namespace) -> dict:
    from handlers.benchmarks.capacity import run

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop TorchServe (finally) when killed
    return run(
        args.model,
        args.store,
        images=args.images,
        objective_ms=args.objective_ms,
        step_seconds=args.step_seconds,
        users=args.users,
        scenarios=args.scenarios,
        batching=args.batching,
        out=args.out,
    )


def model_options(p: argparse.ArgumentParser) -> None:
    """--model and --store: which published version (``neurovit.store.resolve_version``)."""
    p.add_argument("--model", default="latest", help=MODEL_HELP)
    p.add_argument("--store", default=DEFAULT_STORE, help="the store 'latest' and a version id refer to")


def add_commands(sub, result: list[argparse.ArgumentParser]) -> None:
    """serve, predict, stop, package, deploy."""
    default_port = int(os.environ.get("NEUROVIT_SERVE_PORT", "8080"))
    p = sub.add_parser(
        "serve",
        parents=result,
        help="serve a published version: TorchServe (token auth; key file in outputs/serve/) or KServe",
    )
    model_options(p)
    p.add_argument(
        "--port", type=int, default=default_port, help="inference (TorchServe: management +1, metrics +2)"
    )
    p.add_argument(
        "--runtime",
        choices=("torchserve", "kserve"),
        default="torchserve",
        help="torchserve (default), or kserve: KServe's model server from .venv-kserve (v1, v2, /metrics)",
    )
    p.add_argument(
        "--batch-delay-ms",
        type=int,
        help="TorchServe batches up to 4 requests: how long its worker waits for more once one is queued; "
        f"a lone request waits all of it (default {LOCAL_BATCH_DELAY_MS}; docs/serving-api.md)",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="the demo's serving step: serve the latest version, explain one test slice per class, stop",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", parents=result, help="send one image to the local server")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--explain", default="all", help="none, rollout, heatmap or all")
    p.add_argument("--out", type=Path, default=OUTPUT_DIR / "predictions")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("stop", help="stop the local server (and the Prometheus of `neurovit monitor`)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser(
        "package", parents=result, help="build a version's TorchServe archive and KServe config"
    )
    model_options(p)
    p.add_argument("--out", type=Path, help="default outputs/package/<version>")
    p.set_defaults(func=cmd_package)

    deploy = sub.add_parser(
        "deploy",
        help="roll a version out to the KServe InferenceService: canary, promote, rollback",
        description="Runs where the kserve SDK is (make tools-venv); the Kubernetes connection is the usual "
        "one (KUBECONFIG, ~/.kube/config, or the pod's ServiceAccount).",
    )
    actions = deploy.add_subparsers(dest="deploy_command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("canary", "serve a verified version to a share of the traffic (--percent 100: a plain rollout)"),
        ("promote", "send all the traffic to the canary"),
        ("rollback", "serve the version served before the last canary, with all the traffic"),
    ):
        p = actions.add_parser(name, parents=result, help=help_text)
        p.add_argument("--name", default="neurovit", help="InferenceService name (default neurovit)")
        p.add_argument("--namespace", default="neurovit", help="its namespace (default neurovit)")
        if name == "canary":
            p.add_argument("--storage-uri", default="", help="s3:// URI of the published version")
            p.add_argument("--percent", type=int, default=10, help="traffic share of the new version")
        p.set_defaults(func=cmd_deploy)


def add_benchmarks(bench, result: list[argparse.ArgumentParser]) -> None:
    """bench serve, bench load."""
    p = bench.add_parser(
        "serve",
        parents=result,
        help="latency of predict/rollout/heatmap against the in-process predict and the bare forward, "
        "requests/s; TorchServe and the KServe runtime side by side",
    )
    model_options(p)
    p.add_argument(
        "--runtimes",
        default="torchserve,kserve",
        help="comma-separated, measured in this order in one run (default torchserve,kserve)",
    )
    p.add_argument("--data-dir", type=Path, help="images to send (default: real slices, else demo)")
    p.add_argument("--requests", type=int, default=40, help="sequential requests per measurement")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients for requests/s")
    p.add_argument("--seconds", type=float, default=15.0, help="duration of each throughput run")
    p.add_argument("--port", type=int, default=8090)
    p.set_defaults(func=cmd_bench_serve)

    p = bench.add_parser(
        "load", parents=result, help="capacity per replica: locust users stepped up to the p95 objective"
    )
    model_options(p)
    p.add_argument("--images", type=Path, default=OUTPUT_DIR / "demo-data", help="images to send")
    p.add_argument("--objective-ms", type=float, default=500.0, help="p95 latency objective")
    p.add_argument("--step-seconds", type=int, default=10, help="seconds per load level")
    p.add_argument(
        "--users",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 4, 8, 12, 16, 24, 32, 48, 64],
        help="user steps, comma-separated",
    )
    p.add_argument("--scenarios", default="predict,mixed", help="some of predict,mixed")
    p.add_argument("--batching", default="on,off", help="on (batch 4), off (batch 1), or both")
    p.add_argument("--out", type=Path, help="default outputs/bench-load/<time>")
    p.set_defaults(func=cmd_bench_load)
