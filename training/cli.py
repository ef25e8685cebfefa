"""`neurovit`: the one command line, from a dataset to a served, monitored version (docs/cli.md).

``main`` parses the command line and maps every error to an exit status in one place (``exit_code``):
0 ok, 1 failure, 2 usage, 3 data or store error. Errors print ``error: <message>`` on stderr, with the
traceback only under ``--debug`` (or ``NEUROVIT_DEBUG=1``). A command that prints a result takes ``--json``:
the result goes to stdout as JSON and the human-readable lines to stderr.

This module holds the dispatcher and the training commands (data, train, evaluate, versions, pipeline, ...);
``handlers.cli`` adds the serving ones, ``monitoring.cli`` the monitoring ones. Parsing imports nothing
heavy: each command imports what it runs, so ``neurovit --help`` is quick and ``neurovit deploy`` runs in
.venv-tools, where torch is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import neurovit
from handlers import cli as serving_cli
from monitoring import cli as monitoring_cli
from neurovit.config import DEFAULT_STORE, MODEL_NAME, OUTPUT_DIR
from neurovit.errors import CheckFailedError, DataError, NeuroVitError, StoreError, UsageError

log = logging.getLogger("neurovit")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DATA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEBUG_ENV = "NEUROVIT_DEBUG"
RESUME_HINT = "`neurovit train` with the same --run-dir resumes training"


def exit_code(error: BaseException) -> int:
    """The exit status for an error a command raised: the one mapping (docs/cli.md, "Exit codes")."""
    if isinstance(error, UsageError):
        return EXIT_USAGE
    if isinstance(error, (DataError, StoreError)):
        return EXIT_DATA
    return EXIT_FAILURE


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def result_parent() -> argparse.ArgumentParser:
    """``--json``, for every command that prints a result."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json", action="store_true", help="print the result as JSON on stdout (progress goes to stderr)"
    )
    return parent


def add_group(sub, name: str, help_text: str):
    """A command with subcommands of its own (``neurovit versions list``)."""
    group = sub.add_parser(name, help=help_text, description=help_text)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


# ---- training commands -------------------------------------------------------------------------------------


def train_config(args: argparse.Namespace, defaults: dict | None = None):
    from neurovit.model import ModelConfig
    from training.recipes import learning_rate_for
    from training.train import TrainConfig

    values = dict(defaults or {})
    names = ("epochs", "batch_size", "seed", "patience", "patience_start", "device", "amp", "base_model")
    for name in names:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if getattr(args, "time_budget", None):
        values["time_budget_s"] = args.time_budget
    base_model = values.get("base_model")
    values["learning_rate"] = learning_rate_for(base_model, getattr(args, "learning_rate", None))
    if base_model:
        from neurovit.base_model import checkpoint_config

        if args.image_size is not None:
            raise UsageError("--image-size does not go with --base-model: the checkpoint's own size is used")
        checkpoint_config(base_model)  # an unusable checkpoint fails now, not after the analysis
    model = ModelConfig(image_size=args.image_size) if args.image_size else ModelConfig()
    return TrainConfig(**values, model=model)


def _job_result(summary: dict) -> dict:
    return {"version": summary["version"], "metrics": summary["metrics"], "run_dir": summary["run_dir"]}


def cmd_data_demo(args: argparse.Namespace) -> dict:
    from neurovit.data.demo import generate_demo_dataset

    out = generate_demo_dataset(args.out, n_per_class=args.n_per_class, seed=args.seed)
    print(f"demo dataset written to {out}")
    return {"dataset": str(out)}


def cmd_data_analyze(args: argparse.Namespace) -> dict:
    from training import stages

    out = Path(args.out or OUTPUT_DIR / "analysis" / timestamp())
    report = stages.analyze_stage(args.data_dir, out, workers=args.workers)
    summary = {
        "dataset": report["dataset"],
        "counts": report["counts"]["per_split_class"] or report["counts"]["per_class"],
    }
    print(json.dumps(summary, indent=2))
    print(stages.report_line(report))
    for group in report["leaks"]["cross_split_groups"][:20]:
        print(f"  leak ({group['kind']}): {', '.join(group['members'])}")
    print(f"report: {out / 'report.json'}\n        {out / 'report.html'}")
    return {**summary, "report": str(out / "report.json"), "report_html": str(out / "report.html")}


def cmd_train(args: argparse.Namespace) -> dict:
    from training.stages import run_main_job

    run_dir = Path(args.run_dir or OUTPUT_DIR / "runs" / timestamp())
    summary = run_main_job(Path(args.data_dir), args.store, train_config(args), run_dir, seed=args.seed or 0)
    print(f"run folder: {run_dir}")
    return _job_result(summary)


def cmd_demo(args: argparse.Namespace) -> dict:
    from neurovit import RESEARCH_DISCLAIMER
    from neurovit.data.demo import generate_demo_dataset
    from neurovit.store import resolve
    from training.stages import run_main_job
    from training.train import DEMO_TRAINING

    if args.serve:
        from handlers.torchserve_launcher import check_java

        check_java()  # before minutes of training, not after
    data_dir = OUTPUT_DIR / "demo-data"
    if not (data_dir / "demo.json").is_file():
        generate_demo_dataset(data_dir, seed=0)
    print(f"demo dataset: {data_dir}")
    run_dir = Path(args.run_dir or OUTPUT_DIR / "runs" / f"demo-{timestamp()}")
    summary = run_main_job(data_dir, args.store, train_config(args, DEMO_TRAINING), run_dir)
    store, model, version = resolve(summary["version"])
    store.verify(model, version)
    print(f"manifest verified: every file of {summary['version']} matches its sha256")
    print(RESEARCH_DISCLAIMER)
    if args.serve:
        from handlers.local_service import demo

        demo(args.store, data_dir, port=args.port)
    return _job_result(summary)


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from neurovit.data.split import load_split
    from neurovit.store import resolve_version
    from training import stages
    from training.evaluation_report import PREDICTIONS_FILE

    store, model, version = resolve_version(args.model, args.store, model=MODEL_NAME)
    out = Path(args.out or OUTPUT_DIR / "evaluations" / f"{version}-{timestamp()}")
    local = store.fetch(model, version, out / "fetched")
    only = load_split(local / stages.SPLIT_FILE) if args.held_out else None
    metrics = stages.evaluate_model_stage(local / "model", args.data_dir, out, only=only)
    print(f"model {model}/{version} on {metrics['n']} images of {args.data_dir} ({metrics['images']})")
    headline = {k: metrics[k] for k in ("accuracy", "macro_f1", "ece", "ece_before_calibration")}
    print(json.dumps(headline, indent=2))
    if "ood" in metrics:
        ood = metrics["ood"]
        print(f"out of distribution: {ood['flagged_rate']:.1%} flagged (threshold {ood['threshold']:.3f})")
    print(f"metrics: {out / 'metrics.json'}\nplots:   {out}/{{confusion_matrix,roc_curves,reliability}}.png")
    print(f"per image: {out / PREDICTIONS_FILE}")
    return {"model": model, "version": version, "metrics": metrics, "out": str(out)}


def cmd_explain_eval(args: argparse.Namespace) -> dict:
    from training.evaluations.explanations import ExplainEvalOptions, run

    names = ExplainEvalOptions.__dataclass_fields__
    options = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return run(ExplainEvalOptions(**options))


def cmd_ood_eval(args: argparse.Namespace) -> dict:
    from training.evaluations.ood import run

    return run(args.model, args.data_dir, args.store, args.out, args.non_mri_dir)


def cmd_versions_list(args: argparse.Namespace) -> list:
    from neurovit.store import open_store

    versions = open_store(args.store).list_versions(args.model_name)
    if not versions:
        print(f"no complete versions of {args.model_name} in {args.store}")
    for entry in versions:
        print(json.dumps(entry))
    return versions


def cmd_versions_show(args: argparse.Namespace) -> dict:
    from neurovit.store import resolve_version

    store, model, version = resolve_version(args.version, args.store, model=args.model_name)
    manifest = store.manifest(model, version)
    print(json.dumps(manifest, indent=2))
    return manifest


def cmd_versions_verify(args: argparse.Namespace) -> dict:
    from neurovit.store import resolve_version

    store, model, version = resolve_version(args.version, args.store, model=args.model_name)
    store.verify(model, version)
    print(f"{model}/{version}: every file matches its sha256")
    return {"model": model, "version": version, "verified": True}


def cmd_versions_prune(args: argparse.Namespace) -> dict:
    from neurovit.store import open_store

    protect = _protected_versions(args.model_name, args.protect)
    removed = open_store(args.store).prune(args.model_name, keep=args.keep, protect=protect)
    print(f"removed {len(removed)} versions: {removed}" if removed else "nothing to prune")
    if protect:
        print(f"kept as protected (--protect, and what `make deploy` recorded): {sorted(protect)}")
    return {"removed": removed, "protected": sorted(protect)}


def _protected_versions(model: str, named: list[str]) -> set[str]:
    """--protect versions plus those `make deploy` recorded as serving or rollback (kserve_rollout)."""
    from handlers.kserve_rollout import recorded_versions, records_dir

    try:
        recorded = recorded_versions(model)
    except (OSError, ValueError) as error:  # pruning blind to a serving version is worse than not pruning
        raise StoreError(f"cannot read the deployment records in {records_dir()}: {error}") from error
    return set(named) | recorded


def cmd_pipeline_compile(args: argparse.Namespace) -> dict:
    from training.pipeline import PIPELINE_NAME, TRAINING_IMAGE, compile_pipeline

    path = compile_pipeline(**_given(args, "output"))
    print(f"pipeline {PIPELINE_NAME} written to {path} (image {TRAINING_IMAGE})")
    return {"pipeline": str(path), "image": TRAINING_IMAGE}


def cmd_pipeline_run(args: argparse.Namespace) -> dict:
    from neurovit import RESEARCH_DISCLAIMER
    from neurovit.preprocessing import INTENSITY_WINDOWS
    from training import pipeline
    from training.train import DEMO_TRAINING

    # Checked here, not minutes later when the train task builds its PreprocessConfig.
    if args.intensity_window is not None and args.intensity_window not in INTENSITY_WINDOWS:
        raise UsageError(f"--intensity-window must be one of {', '.join(INTENSITY_WINDOWS)}")
    arguments = {
        "model_name": args.model_name or MODEL_NAME,
        # A CPU-sized schedule by default: the local runner has no GPU to give the train task.
        "epochs": args.epochs or DEMO_TRAINING["epochs"],
        "batch_size": args.batch_size or DEMO_TRAINING["batch_size"],
        "patience": args.patience or DEMO_TRAINING["patience"],
        **pipeline.data_parameters(args.data_uri),
    }
    optional = {
        "learning_rate": args.learning_rate,
        "intensity_window": args.intensity_window,
        "time_budget_s": args.time_budget,
        "seed": args.seed,
        "demo_images_per_class": args.demo_images_per_class,
        "base_model": args.base_model,
    }
    arguments.update({name: value for name, value in optional.items() if value is not None})
    version_uri = pipeline.run_local(
        args.store, data_uri=args.data_uri, pipeline_root=args.pipeline_root, **arguments
    )
    print(f"published {version_uri}")
    print(f"manifest verified: every file of {version_uri} matches its sha256")
    print(RESEARCH_DISCLAIMER)
    return {"version": version_uri}


def cmd_pipeline_submit(args: argparse.Namespace) -> dict:
    from training.pipeline_submit import submit_from_env

    return submit_from_env(args.param, **({"pipeline_file": args.pipeline} if args.pipeline else {}))


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The options among ``names`` given on the command line (None: the function's own default)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_bench_train(args: argparse.Namespace) -> dict:
    from training.benchmarks.recipe import run
    from training.recipes import gpu_bench_options, learning_rate_for, require_cuda

    names = ("time_budget", "epochs", "image_size", "stem_channels", "batch_size", "patience", "run_dir")
    names += ("device", "seed", "guide_dir", "guide_weight", "amp", "base_model", "erase_prob")
    names += ("teacher_fraction", "distill_weight", "counterfactual_class", "acquisition_prob", "dropout")
    names += ("geometry", "compile", "label_smoothing", "erase_max_fraction", "erase_spares_tumours")
    names += ("weight_decay", "saliency_guided_weight", "black_counterfactuals")
    options = _given(args, *names)
    if options.get("counterfactual_class") == "none":
        options["counterfactual_class"] = None
    if args.recipe == "gpu":
        require_cuda("--recipe gpu")
        options = {**gpu_bench_options(), **options}  # options given on the command line still win
    if args.base_model or args.learning_rate is not None:
        options["learning_rate"] = learning_rate_for(args.base_model, args.learning_rate)
    return run(args.data_dir, args.store, **options)


def cmd_bench_analyze(args: argparse.Namespace) -> dict:
    from training.benchmarks.analysis_speed import run

    return run(args.images, args.workers, args.source)


def cmd_duplicate_threshold(args: argparse.Namespace) -> dict:
    from training.experiments.duplicate_threshold import run

    names = ("sample", "seed", "max_threshold", "hash_size", "same_correlation", "pairs_out")
    return run(args.data_dir, **_given(args, *names))


# ---- the parser ------------------------------------------------------------------------------------------


def _lazy_type(module: str, name: str) -> Callable[[str], object]:
    """An argparse type from a module imported only when the option is given; its ValueError a usage error."""

    def convert(text: str) -> object:
        import importlib

        try:
            return getattr(importlib.import_module(module), name)(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    convert.__name__ = name
    return convert


def _share(text: str) -> float:
    """A number in [0, 1]: a probability, a fraction of a slice, a weight decay."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _training_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--image-size", type=int, help="model input side in px (default 128)")
    p.add_argument("--device", help="cpu, cuda or auto (default)")
    _precision_and_base_model_options(p)


def _precision_and_base_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "none"),
        help="mixed precision (default auto: bf16 on a GPU that has it, fp16 on older GPUs; on the CPU fp32, "
        "except bench train on a CPU with native bf16)",
    )
    p.add_argument(
        "--base-model",
        metavar="FOLDER_OR_HUB_ID",
        help="fine-tune this pretrained HF ViT (a save_pretrained folder, or a hub id where the hub is "
        "reachable) instead of training from scratch; its image size replaces --image-size, and the "
        "learning rate defaults to 1e-4 (docs/training.md)",
    )


def add_training_commands(sub, result: list[argparse.ArgumentParser]) -> None:
    default_port = int(os.environ.get("NEUROVIT_SERVE_PORT", "8080"))
    p = sub.add_parser(
        "demo",
        parents=result,
        help="the whole demo: demo data -> train, evaluate, publish; then serve it and explain one slice",
    )
    _training_options(p)
    p.add_argument("--port", type=int, default=default_port, help="the serving step's inference port")
    p.add_argument(
        "--no-serve", dest="serve", action="store_false", help="stop after publishing (no Java needed)"
    )
    p.set_defaults(func=cmd_demo, interrupt_hint=RESUME_HINT)

    data = add_group(sub, "data", "generate the demo dataset or analyse a dataset folder")
    p = data.add_parser("demo", parents=result, help="generate the built-in demo dataset")
    p.add_argument("--out", type=Path, default=OUTPUT_DIR / "demo-data")
    p.add_argument("--n-per-class", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_demo)
    p = data.add_parser(
        "analyze", parents=result, help="analyse a dataset folder (report.json + report.html)"
    )
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", type=Path)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_data_analyze)

    p = sub.add_parser("train", parents=result, help="analyse, split, train, evaluate and publish")
    p.add_argument("--data-dir", required=True, type=Path)
    _training_options(p)
    p.set_defaults(func=cmd_train, interrupt_hint=RESUME_HINT)

    p = sub.add_parser("evaluate", parents=result, help="evaluate a published version on a data folder")
    serving_cli.model_options(p)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--held-out",
        action="store_true",
        help="only the version's own test images (DATA_DIR must be the folder it was trained from)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "explain-eval",
        parents=result,
        help="score a version's explanation maps against lesion masks (pointing game, deletion AUC)",
    )
    serving_cli.model_options(p)
    p.add_argument("--data-dir", type=Path, default=OUTPUT_DIR / "demo-data")
    p.add_argument("--out", type=Path, help="default outputs/explain-eval/<version>")
    p.add_argument(
        "--tolerance",
        type=float,
        help="pointing game, pixels at 224 px, scaled to each slice's size (default 15)",
    )
    p.add_argument("--steps", type=int, help="deletion steps (default: one patch-grid cell per step)")
    p.add_argument(
        "--substrate",
        type=_lazy_type("training.evaluations.explanations", "substrates_arg"),
        help="what removed cells become, comma-separated to score several: black (the scan's background, "
        "default), mean, blur, road (ROAD's noisy linear imputation, 16 steps unless --steps), "
        "healthy (demo set, lesion slices only: the slice's healthy twin)",
    )
    p.add_argument(
        "--explained-class",
        type=_lazy_type("training.evaluations.explanations", "explained_arg"),
        help="the class the maps explain and deletion follows: predicted, true, or both (default)",
    )
    p.add_argument("--seed", type=int, default=0, help="random baseline and bootstrap")
    p.add_argument("--batch-size", type=int, default=32, help="images per explain() call")
    p.add_argument("--deletion-batch-size", type=int, default=130, help="perturbed inputs per forward")
    p.add_argument("--gallery-per-class", type=int, default=2)
    p.add_argument("--max-per-class", type=int, help="evaluate at most this many slices per class")
    p.add_argument(
        "--split",
        choices=("test", "val"),
        help="the part of the version's split scored when --data-dir is its data (default test; val to "
        "choose settings without reading the test slices)",
    )
    p.add_argument(
        "--without-masks",
        action="store_true",
        default=None,
        help="score deletion on slices without lesion masks (pointing game and lesion references left out)",
    )
    p.set_defaults(func=cmd_explain_eval)

    p = sub.add_parser(
        "ood-eval", parents=result, help="flag rate of a version's OOD score: held-out MRI vs non-MRI images"
    )
    serving_cli.model_options(p)
    p.add_argument("--data-dir", type=Path, default=OUTPUT_DIR / "demo-data", help="MRI slices")
    p.add_argument("--non-mri-dir", type=Path, help="a folder of further images that are not brain MRI")
    p.add_argument("--out", type=Path, help="default outputs/ood-eval/<version>")
    p.set_defaults(func=cmd_ood_eval)

    versions = add_group(sub, "versions", "list, show, verify or prune published versions")
    for name, func, help_text in (
        ("list", cmd_versions_list, "the complete versions in the store, oldest first"),
        ("show", cmd_versions_show, "a version's manifest"),
        ("verify", cmd_versions_verify, "check every file of a version against its sha256"),
        ("prune", cmd_versions_prune, "remove old versions (never the deployed ones)"),
    ):
        p = versions.add_parser(name, parents=result, help=help_text)
        p.add_argument("--store", default=DEFAULT_STORE)
        p.add_argument("--model-name", default=MODEL_NAME)
        if name in ("show", "verify"):
            p.add_argument("--version", default="latest", help=serving_cli.MODEL_HELP)
        if name == "prune":
            p.add_argument("--keep", type=int, default=5, help="complete versions to keep")
            p.add_argument(
                "--protect",
                action="append",
                default=[],
                metavar="VERSION",
                help="never remove this version (repeatable); what `make deploy` recorded is kept too",
            )
        p.set_defaults(func=func)

    pipeline = add_group(sub, "pipeline", "the Kubeflow pipeline: compile, run locally, submit")
    p = pipeline.add_parser("compile", parents=result, help="write the pipeline spec (YAML)")
    p.add_argument("--output", type=Path, help="default training/pipeline.yaml")
    p.set_defaults(func=cmd_pipeline_compile)
    p = pipeline.add_parser(
        "run", parents=result, help="run the pipeline on this machine with kfp's subprocess runner"
    )
    p.add_argument("--store", required=True, help="local folder or s3://bucket[/prefix]")
    p.add_argument("--data-uri", default="demo", help="'demo', a local folder or s3://bucket/prefix")
    p.add_argument("--model-name", default=None, help="default: NEUROVIT_MODEL_NAME or 'neurovit'")
    p.add_argument("--epochs", type=int, help="default: the demo schedule's (training.train.DEMO_TRAINING)")
    p.add_argument("--batch-size", type=int, help="default: the demo schedule's")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--patience", type=int, help="default: the demo schedule's")
    p.add_argument(
        "--intensity-window",
        help="percentile or foreground_median; default: the demo recipe's on the demo data, else percentile",
    )
    p.add_argument("--time-budget", type=float, help="training budget in seconds")
    p.add_argument("--seed", type=int)
    p.add_argument("--demo-images-per-class", type=int)
    p.add_argument("--base-model", help="a pretrained HF ViT to fine-tune (a save_pretrained folder)")
    p.add_argument("--pipeline-root", type=Path, help="where task outputs go (default outputs/kfp-local)")
    p.set_defaults(func=cmd_pipeline_run)
    p = pipeline.add_parser(
        "submit",
        parents=result,
        help="submit the compiled pipeline to Kubeflow Pipelines (KFP_HOST, NEUROVIT_STORE_URI, ...)",
    )
    p.add_argument("--param", action="append", default=[], help="pipeline parameter name=value")
    p.add_argument("--pipeline", type=Path, help="compiled pipeline spec (default training/pipeline.yaml)")
    p.set_defaults(func=cmd_pipeline_submit)

    experiment = add_group(sub, "experiment", "one-off experiments behind a design choice")
    p = experiment.add_parser(
        "duplicate-threshold",
        parents=result,
        help="recall of planted copies and real near-duplicate pairs per perceptual-hash threshold",
    )
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--sample", type=int, default=400, help="slices that get planted copies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-threshold", type=int, default=16)
    p.add_argument("--hash-size", type=int, help="perceptual hash size (default the analysis')")
    p.add_argument("--same-correlation", type=float, default=0.965)
    p.add_argument("--pairs-out", type=Path, help="folder for pictures of candidate real pairs")
    p.set_defaults(func=cmd_duplicate_threshold)


def add_training_benchmarks(bench, result: list[argparse.ArgumentParser]) -> None:
    p = bench.add_parser(
        "train", parents=result, help="train the default recipe on real slices within a time budget"
    )
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--time-budget", type=float, help="training seconds (default 1800: 30 min)")
    p.add_argument("--epochs", type=int, help="at most this many (default: as many as the time budget fits)")
    p.add_argument("--image-size", type=int, help="model input side (px; default the CPU recipe's, 96)")
    p.add_argument(
        "--stem-channels",
        type=lambda text: tuple(_ints(text)),
        help="channels of the stem's stride-2 stages, comma-separated (their count sets the patch size; "
        "default the CPU recipe's 24,48,96,192)",
    )
    p.add_argument("--batch-size", type=int, help="default TrainConfig's")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (default TrainConfig's)")
    p.add_argument("--run-dir", type=Path)
    p.add_argument("--device", help="cpu, cuda or auto (default)")
    p.add_argument("--seed", type=int, help="training seed (a second run)")
    p.add_argument(
        "--guide-dir",
        type=Path,
        help="masked slices (<class>/<id>.png + <id>.mask.png) whose guide half steers the rollout map "
        "towards the tumour during training (training.guide); the other half is left for eval-explain",
    )
    p.add_argument("--guide-weight", type=float, help="weight of the guidance loss")
    p.add_argument(
        "--counterfactual-class",
        help="with --guide-dir: the guide slices also train with their tumour imputed from the tissue "
        "around it, towards no class at all ('uniform', the default) or labelled as a class (e.g. "
        "notumor), so the answer has to rest on the tumour; 'none' adds no such slices",
    )
    p.add_argument(
        "--black-counterfactuals",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with the counterfactual slices: also each guide slice with the token cells its tumour touches "
        "black (same target) and as many cells black elsewhere in the head (label kept); on by default "
        "wherever there are counterfactual slices (docs/explainability.md)",
    )
    p.add_argument(
        "--erase-prob",
        type=_share,
        help="share of training slices that lose random token cells to black (default 0: none)",
    )
    p.add_argument(
        "--erase-max-fraction",
        type=_share,
        help="with --erase-prob: the most of a slice's token cells one draw erases (default 0.5); small "
        "holes teach that a missing cell is no evidence without often erasing the tumour itself",
    )
    p.add_argument(
        "--erase-spares-tumours",
        action="store_true",
        default=None,
        help="with --erase-prob: erase only no-tumour slices and masked slices outside their tumour, so a "
        "hole never removes evidence under a kept label",
    )
    p.add_argument(
        "--saliency-guided-weight",
        type=float,
        help="weight of saliency-guided training (training.saliency_guided): each step also answers the "
        "batch with its lowest-rollout cells black and adds the KL from the plain answer (default 0: off; "
        "a step then costs twice as much)",
    )
    p.add_argument(
        "--acquisition-prob",
        type=_share,
        help="share of training slices given each MRI acquisition change: a gamma curve, a bias field, "
        "noise (training.augment; default 0: none)",
    )
    p.add_argument("--dropout", type=float, help="dropout on the transformer's hidden states (default 0)")
    p.add_argument(
        "--label-smoothing",
        type=float,
        help="label smoothing of the training loss (default TrainConfig's, 0.1); it shapes how far "
        "temperature scaling can calibrate",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="run the training forward under torch.compile (default on: about 1.3 times the epochs on a "
        "CPU, after ~100 s of compiling; needs a C++ compiler, else it trains eagerly)",
    )
    p.add_argument(
        "--geometry",
        type=float,
        help="multiply the training rotation, scale and shift ranges (default 1: 10 degrees, 0.9-1.1, 6 %%)",
    )
    p.add_argument(
        "--weight-decay",
        type=_share,
        help="AdamW's decoupled weight decay on the weight matrices, in [0, 1] (default 0.2 for the CPU "
        "recipe, 0.05 for --recipe gpu)",
    )
    p.add_argument(
        "--teacher-fraction",
        type=float,
        help="share of the time budget that first trains a small CNN teacher for hard distillation "
        "(training.teacher; default 0: no teacher)",
    )
    p.add_argument("--distill-weight", type=float, help="weight of the teacher's labels (default 0.5)")
    p.add_argument(
        "--recipe",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu (default): the 30-minute CPU recipe; gpu: 128 px, the wide stem, 230 epochs, mixed "
        "precision, no time budget (needs CUDA; training.recipes). Options given here override either",
    )
    p.add_argument("--learning-rate", type=float, help="default 1e-3, or 1e-4 with --base-model")
    _precision_and_base_model_options(p)
    p.set_defaults(func=cmd_bench_train, interrupt_hint=RESUME_HINT)

    p = bench.add_parser("analyze", parents=result, help="time the analysis of 10,000 images")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--source", type=Path, default=Path("../shared/data/brain-tumor-mri"))
    p.set_defaults(func=cmd_bench_analyze)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurovit",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"neurovit {neurovit.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument(
        "--debug", action="store_true", help=f"print the traceback of an error (or {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    result = [result_parent()]
    add_training_commands(sub, result)
    serving_cli.add_commands(sub, result)
    monitoring_cli.add_commands(sub, result)
    bench = add_group(sub, "bench", "benchmarks: training, analysis, serving latency, capacity under load")
    add_training_benchmarks(bench, result)
    serving_cli.add_benchmarks(bench, result)
    parser.epilog = "every command (`neurovit COMMAND --help` for its options):\n" + "\n".join(
        f"  {name:<31} {help_text}" for name, help_text in command_tree(sub)
    )
    return parser


def command_tree(sub, prefix: str = "") -> list[tuple[str, str]]:
    """``[(full command, one-line help)]`` of every leaf command under the subparsers ``sub``."""
    helps = {action.dest: action.help for action in sub._choices_actions}
    tree = []
    for name, parser in sub.choices.items():
        nested = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        if nested:
            tree += command_tree(nested[0], f"{prefix}{name} ")
        else:
            tree.append((f"{prefix}{name}", helps.get(name) or ""))
    return tree


def report(error: BaseException, debug: bool) -> None:
    """``error: <message>`` on stderr; the traceback too under --debug."""
    if debug:
        traceback.print_exception(error)
    message = str(error).strip() or type(error).__name__
    if not isinstance(error, NeuroVitError):
        message = f"{type(error).__name__}: {message}"
        if not debug:
            message += f" (--debug or {DEBUG_ENV}=1 shows the traceback)"
    print(f"error: {message}", file=sys.stderr)


def configure_logging(verbose: bool) -> None:
    """-v: INFO. Otherwise WARNING, without urllib3's retry warnings (kfp's client, the S3 store): they would
    bury the one ``error:`` line that says the endpoint cannot be reached."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_no_urllib3_warnings)


def _no_urllib3_warnings(record: logging.LogRecord) -> bool:
    return not (record.name.startswith("urllib3") and record.levelno < logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Run one ``neurovit`` command; returns its exit status (docs/cli.md)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or a usage error (2), already printed
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    configure_logging(args.verbose)
    as_json = getattr(args, "json", False)
    stdout, code, result = sys.stdout, EXIT_OK, None
    try:
        # Under --json every human-readable line goes to stderr, so stdout holds the JSON alone.
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            result = args.func(args)
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", None)
        print(f"interrupted: {hint}" if hint else "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the one place errors become exit statuses
        report(error, debug)
        code = exit_code(error)
        result = error.result if isinstance(error, CheckFailedError) else None
    if as_json and result is not None:
        print(json.dumps(result, indent=2, default=str), file=stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
