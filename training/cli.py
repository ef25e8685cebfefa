"""`neurovit` command line: the main job and each of its stages.

Every command prints where it wrote its outputs. Errors NeuroViT raises on purpose (bad data, store
problems) end the command with a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from neurovit import RESEARCH_DISCLAIMER
from neurovit.config import DEFAULT_STORE, MODEL_NAME, OUTPUT_DIR
from neurovit.data.demo import generate_demo_dataset
from neurovit.data.split import load_split
from neurovit.errors import NeuroVitError, StoreError
from neurovit.model import ModelConfig
from neurovit.store import open_store, resolve
from training import flow
from training.evaluate import PREDICTIONS_FILE
from training.guide import GUIDE_FILE, load_guide_set
from training.model_card import MODEL_CARD_MARKDOWN
from training.train import TrainConfig

log = logging.getLogger("neurovit")

# The demo set is small and synthetic: 30 epochs train it in about 4 CPU minutes to 0.76 test accuracy,
# where the explanation maps find the lesions (12 epochs stopped near 0.6, where they did not).
# The head-median intensity window: in the demo's skull-stripped slices the lesion is the brightest thing,
# and a whole-image percentile window let it darken the slice (README, "Preprocessing").
DEMO_TRAINING = {
    "epochs": 30,
    "batch_size": 64,
    "patience": 10,
    "warmup_epochs": 1.0,
    "intensity_window": "foreground_median",
}


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def _train_config(args: argparse.Namespace, defaults: dict | None = None) -> TrainConfig:
    values = dict(defaults or {})
    for name in ("epochs", "batch_size", "learning_rate", "seed", "patience", "patience_start", "device"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if getattr(args, "time_budget", None):
        values["time_budget_s"] = args.time_budget
    return TrainConfig(**values, model=ModelConfig(image_size=args.image_size))


def _report_line(report: dict) -> str:
    dataset, duplicates = report["dataset"], report["duplicates"]
    return (
        f"{dataset['files']} files, {dataset['corrupt']} corrupt, {duplicates['exact_groups']} exact and "
        f"{duplicates['near_groups']} near duplicate groups, {report['leaks']['groups']} cross-split leaks"
    )


def _split_line(plan) -> str:
    sizes = ", ".join(f"{name} {sum(by_class.values())}" for name, by_class in plan.counts.items())
    return (
        f"{sizes}; {plan.dropped} leaking images dropped, {plan.moved} moved, "
        f"{plan.excluded_corrupt} corrupt left out; fingerprint {plan.fingerprint[:12]}"
    )


def run_main_job(
    data_dir: Path,
    store_uri: str,
    config: TrainConfig,
    run_dir: Path,
    seed: int = 0,
    guide_dir: Path | None = None,
    **split_options,
) -> dict:
    """Analyse -> split -> train -> calibrate and evaluate -> publish. Returns a summary dict.

    ``split_options`` go to ``flow.split_stage`` (e.g. ``given_val_as_test`` for the benchmark).
    ``guide_dir``: a folder of masked slices whose guide half joins training (``training.guide``); the
    version then lists them in ``guide.json``.
    """
    open_store(store_uri).check_writable()  # fail now, not after training
    print(f"[1/5] analysing {data_dir}", flush=True)
    report = flow.analyze_stage(data_dir, run_dir / "analysis")
    print(f"      report: {run_dir / 'analysis' / 'report.html'}  ({_report_line(report)})")
    print("[2/5] splitting without leakage", flush=True)
    plan = flow.split_stage(
        data_dir, run_dir / "analysis", run_dir / flow.SPLIT_FILE, seed=seed, **split_options
    )
    print(f"      {_split_line(plan)}")
    print(
        f"[3/5] training on {torch.get_num_threads()} CPU threads"
        if not torch.cuda.is_available()
        else "[3/5] training on CUDA",
        flush=True,
    )
    guide, extra_files = None, {}
    if guide_dir is not None:
        guide = load_guide_set(guide_dir, plan.classes, config.preprocessing())
        guide.write(run_dir / GUIDE_FILE, {"guide_weight": config.guide_weight})
        extra_files[GUIDE_FILE] = run_dir / GUIDE_FILE
        print(f"      guiding the rollout map with {len(guide.entries)} masked slices of {guide_dir}")
    result = flow.train_stage(data_dir, run_dir / flow.SPLIT_FILE, run_dir / "train", config, guide=guide)
    print(
        f"      best val accuracy {result.best_val_accuracy:.3f} at epoch {result.best_epoch} "
        f"({result.train_seconds:.0f}s, {result.images_per_second:.0f} images/s)"
    )
    print("[4/5] calibrating and evaluating", flush=True)
    metrics = flow.calibrate_and_evaluate_stage(
        data_dir, run_dir / flow.SPLIT_FILE, result.best_dir, run_dir / "evaluation", run_dir / "model"
    )
    print(
        f"      {metrics['evaluated_on']}: accuracy {metrics['accuracy']:.3f}, "
        f"macro F1 {metrics['macro_f1']:.3f}, "
        f"ECE {metrics['ece_before_calibration']:.3f} -> {metrics['ece_after_calibration']:.3f} "
        f"(T={metrics['temperature']:.2f}); plots in {run_dir / 'evaluation'}"
    )
    print(f"[5/5] packaging for TorchServe and publishing to {store_uri}", flush=True)
    version_uri = flow.publish_stage(
        store_uri,
        MODEL_NAME,
        run_dir / "model",
        run_dir / "evaluation",
        run_dir / flow.SPLIT_FILE,
        run_dir / "analysis",
        run_dir / "publish",
        extra_files=extra_files,
    )
    print(f"      published {version_uri} (model card: {MODEL_CARD_MARKDOWN} in the version)")
    return {
        "version": version_uri,
        "metrics": metrics,
        "train": result,
        "report": report,
        "plan": plan,
        "run_dir": str(run_dir),
    }


def cmd_demo_data(args: argparse.Namespace) -> None:
    out = generate_demo_dataset(args.out, n_per_class=args.n_per_class, seed=args.seed)
    print(f"demo dataset written to {out}")


def cmd_analyze(args: argparse.Namespace) -> None:
    out = Path(args.out or OUTPUT_DIR / "analysis" / _timestamp())
    report = flow.analyze_stage(args.data_dir, out, workers=args.workers)
    print(
        json.dumps(
            {
                "dataset": report["dataset"],
                "counts": report["counts"]["per_split_class"] or report["counts"]["per_class"],
            },
            indent=2,
        )
    )
    print(_report_line(report))
    for group in report["leaks"]["cross_split_groups"][:20]:
        print(f"  leak ({group['kind']}): {', '.join(group['members'])}")
    print(f"report: {out / 'report.json'}\n        {out / 'report.html'}")


def cmd_run(args: argparse.Namespace) -> None:
    run_dir = Path(args.run_dir or OUTPUT_DIR / "runs" / _timestamp())
    run_main_job(Path(args.data_dir), args.store, _train_config(args), run_dir, seed=args.seed or 0)
    print(f"run folder: {run_dir}")


def cmd_demo(args: argparse.Namespace) -> None:
    data_dir = OUTPUT_DIR / "demo-data"
    if not (data_dir / "demo.json").is_file():
        generate_demo_dataset(data_dir, seed=0)
    print(f"demo dataset: {data_dir}")
    run_dir = Path(args.run_dir or OUTPUT_DIR / "runs" / f"demo-{_timestamp()}")
    summary = run_main_job(data_dir, args.store, _train_config(args, DEMO_TRAINING), run_dir)
    store, model, version = resolve(summary["version"])
    store.verify(model, version)
    print(f"manifest verified: every file of {summary['version']} matches its sha256")
    print(RESEARCH_DISCLAIMER)


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.model == "latest":
        store, model, version = resolve(args.store, model=MODEL_NAME)
    else:
        store, model, version = resolve(args.model)
    out = Path(args.out or OUTPUT_DIR / "evaluations" / f"{version}-{_timestamp()}")
    local = store.fetch(model, version, out / "fetched")
    only = load_split(local / flow.SPLIT_FILE) if args.held_out else None
    metrics = flow.evaluate_model_stage(local / "model", args.data_dir, out, only=only)
    print(f"model {model}/{version} on {metrics['n']} images of {args.data_dir} ({metrics['images']})")
    print(
        json.dumps(
            {k: metrics[k] for k in ("accuracy", "macro_f1", "ece", "ece_before_calibration")}, indent=2
        )
    )
    if "ood" in metrics:
        ood = metrics["ood"]
        print(f"out of distribution: {ood['flagged_rate']:.1%} flagged (threshold {ood['threshold']:.3f})")
    print(f"metrics: {out / 'metrics.json'}\nplots:   {out}/{{confusion_matrix,roc_curves,reliability}}.png")
    print(f"per image: {out / PREDICTIONS_FILE}")


def cmd_versions(args: argparse.Namespace) -> None:
    store = open_store(args.store)
    if args.action == "list":
        versions = store.list_versions(args.model_name)
        if not versions:
            print(f"no complete versions of {args.model_name} in {args.store}")
        for entry in versions:
            print(json.dumps(entry))
    elif args.action == "show":
        print(
            json.dumps(
                store.manifest(args.model_name, args.version or store.latest(args.model_name)), indent=2
            )
        )
    elif args.action == "verify":
        version = args.version or store.latest(args.model_name)
        store.verify(args.model_name, version)
        print(f"{args.model_name}/{version}: every file matches its sha256")
    elif args.action == "prune":
        protect = _protected_versions(args.model_name, args.protect)
        removed = store.prune(args.model_name, keep=args.keep, protect=protect)
        print(f"removed {len(removed)} versions: {removed}" if removed else "nothing to prune")
        if protect:
            print(f"kept as protected (--protect, and what `make deploy` recorded): {sorted(protect)}")


def _protected_versions(model: str, named: list[str]) -> set[str]:
    """--protect versions plus those `make deploy` recorded as serving or rollback (training/deploy.py)."""
    from training.deploy import recorded_versions, records_dir

    try:
        recorded = recorded_versions(model)
    except (OSError, ValueError) as error:  # pruning blind to a serving version is worse than not pruning
        raise StoreError(f"cannot read the deployment records in {records_dir()}: {error}") from error
    return set(named) | recorded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurovit", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    def training_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", default=DEFAULT_STORE, help="local folder or s3://bucket[/prefix]")
        p.add_argument("--run-dir", help="where the run's files go (default outputs/runs/<time>)")
        p.add_argument("--epochs", type=int)
        p.add_argument("--batch-size", type=int)
        p.add_argument("--learning-rate", type=float)
        p.add_argument("--patience", type=int, help="epochs without improvement before early stopping")
        p.add_argument(
            "--patience-start", type=float, help="fraction of the schedule before early stopping watches"
        )
        p.add_argument("--time-budget", type=float, help="training budget in seconds; the schedule fits it")
        p.add_argument("--seed", type=int)
        p.add_argument("--image-size", type=int, default=128)
        p.add_argument("--device", help="cpu, cuda or auto (default)")

    p = sub.add_parser("demo-data", help="generate the built-in demo dataset")
    p.add_argument("--out", type=Path, default=OUTPUT_DIR / "demo-data")
    p.add_argument("--n-per-class", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("analyze", help="analyse a dataset folder (report.json + report.html)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", type=Path)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("run", help="analyse, split, train, evaluate and publish")
    p.add_argument("--data-dir", required=True, type=Path)
    training_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the main job on the built-in demo data")
    training_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="evaluate a published version on a data folder")
    p.add_argument("--model", default="latest", help="version folder, s3:// URI, or 'latest'")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--held-out",
        action="store_true",
        help="only the version's own test images (DATA_DIR must be the folder it was trained from)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("versions", help="list, show, verify or prune published versions")
    p.add_argument("action", choices=["list", "show", "verify", "prune"])
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--model-name", default=MODEL_NAME)
    p.add_argument("--version")
    p.add_argument("--keep", type=int, default=5, help="with prune: complete versions to keep")
    p.add_argument(
        "--protect",
        action="append",
        default=[],
        metavar="VERSION",
        help="with prune: never remove this version (repeatable); what `make deploy` recorded is kept too",
    )
    p.set_defaults(func=cmd_versions)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except NeuroVitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: `neurovit run` with the same --run-dir resumes training", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
