"""The monitoring commands of `neurovit`: ``monitor start|drift-demo|stop|sync-k8s|dashboards``.

``training.cli`` dispatches them and maps their errors to exit statuses; each command imports what it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neurovit.config import DEFAULT_STORE, OUTPUT_DIR


def cmd_start(args: argparse.Namespace) -> dict:
    from monitoring.local_stack import monitor

    return monitor(
        args.model,
        args.store,
        args.data_dir,
        args.port,
        args.prometheus_port,
        requests=args.requests,
        runtime=args.runtime,
    )


def cmd_drift_demo(args: argparse.Namespace) -> dict:
    from monitoring.local_stack import drift_demo

    return drift_demo(
        args.model,
        args.store,
        args.data_dir,
        args.port,
        args.prometheus_port,
        out=args.out,
        normal_s=args.normal_s,
        shifted_s=args.shifted_s,
        sample_s=args.sample_s,
        senders=args.senders,
        runtime=args.runtime,
    )


def cmd_stop(args: argparse.Namespace) -> None:
    from monitoring.local_stack import stop_all

    stop_all()


def cmd_sync_k8s(args: argparse.Namespace) -> dict:
    from monitoring.k8s_sync import sync

    return sync(check=args.check)


def cmd_dashboards(args: argparse.Namespace) -> dict:
    from monitoring.dashboard_builder import build_all

    written = build_all(args.out) if args.out else build_all()
    for path in written:
        print(path)
    return {"written": [str(path) for path in written]}


def add_commands(sub, result: list[argparse.ArgumentParser]) -> None:
    monitor = sub.add_parser(
        "monitor",
        help="local Prometheus with the rules, the drift demo, the Kubernetes copies, the dashboards",
    )
    commands = monitor.add_subparsers(dest="monitor_command", required=True, metavar="COMMAND")
    start = commands.add_parser(
        "start",
        parents=result,
        help="a server + Prometheus with monitoring/rules and a little traffic; prints the URL and queries",
    )
    drift = commands.add_parser(
        "drift-demo",
        parents=result,
        help="in-distribution then shifted traffic: PSI plot and a firing drift alert (outputs/drift-demo)",
    )
    for p in (start, drift):
        p.add_argument("--model", default="latest", help="'latest', a version id, a version folder or URI")
        p.add_argument("--store", default=DEFAULT_STORE)
        p.add_argument("--data-dir", type=Path, default=OUTPUT_DIR / "demo-data")
        p.add_argument(
            "--port", type=int, default=8080, help="inference port (TorchServe's metrics on port + 2)"
        )
        p.add_argument(
            "--runtime",
            choices=("torchserve", "kserve"),
            default="torchserve",
            help="the server to start when `make serve` runs none (a running one is used as it is)",
        )
        p.add_argument("--prometheus-port", type=int, default=9090)
    start.add_argument("--requests", type=int, default=60)
    start.set_defaults(func=cmd_start)
    drift.add_argument("--out", type=Path, default=OUTPUT_DIR / "drift-demo")
    drift.add_argument("--normal-s", type=float, default=150, help="seconds of in-distribution traffic")
    drift.add_argument("--shifted-s", type=float, default=240, help="at most this long of shifted traffic")
    drift.add_argument("--sample-s", type=float, default=5, help="seconds between PSI samples")
    drift.add_argument("--senders", type=int, default=3, help="concurrent clients sending the stream")
    drift.set_defaults(func=cmd_drift_demo)

    p = commands.add_parser("stop", help="stop the local Prometheus and the server (either runtime)")
    p.set_defaults(func=cmd_stop)

    p = commands.add_parser(
        "sync-k8s",
        parents=result,
        help="copy monitoring/rules and dashboards into the chart and the kustomize base",
    )
    p.add_argument("--check", action="store_true", help="only report stale copies (exit 1 if any)")
    p.set_defaults(func=cmd_sync_k8s)

    p = commands.add_parser(
        "dashboards", parents=result, help="rebuild monitoring/dashboards/*.json from their description"
    )
    p.add_argument("--out", type=Path, help="default monitoring/dashboards")
    p.set_defaults(func=cmd_dashboards)
