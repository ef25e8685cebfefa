"""The stages of the main job, each a function from files to files.

The CLI, the Make targets and the Kubeflow components all call these, so a local run and a pipeline run
execute the same code. Each stage reads its inputs from paths and writes its outputs under one folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

import neurovit
from neurovit.confidence_map import ConfidenceMap
from neurovit.config import MODEL_NAME
from neurovit.data import analysis, split
from neurovit.data.arrays import load_arrays_kept
from neurovit.data.layout import discover
from neurovit.drift import MonitoringReference
from neurovit.errors import DataError, OutputError
from neurovit.model import ModelInfo, load_model, save_model
from neurovit.ood import OODScorer, capture_features, stack_features
from neurovit.preprocessing import PreprocessConfig
from neurovit.serving import MODEL_CARD_FILE
from neurovit.store import new_version_id, open_store
from training.evaluation_report import write_evaluation, write_predictions
from training.guide import GUIDE_FILE, GuideSet, load_guide_set
from training.model_card import MODEL_CARD_MARKDOWN, build_card, write_card
from training.monitoring_reference import write_monitoring_reference
from training.train import BatchLoader, TrainConfig, TrainResult, pick_device, predict_logits, train

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"


FINGERPRINTS_FILE = "fingerprints.json"


@contextmanager
def built_in_place(dest: str | Path, what: str) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``dest``; renamed to ``dest`` once the block succeeds.

    On any failure the folder is removed, so ``dest`` never holds half a copy; an OSError (disk full, no
    permission) becomes an ``OutputError`` that says what could not be written and why.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    except OSError as error:
        raise OutputError(_output_failure(what, dest, error)) from error
    try:
        yield building
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(building, dest)
    except OSError as error:
        shutil.rmtree(building, ignore_errors=True)
        raise OutputError(_output_failure(what, dest, error)) from error
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _output_failure(what: str, dest: Path, error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        reason = f"no space left on the device of {dest.parent}: free some space and run it again"
    else:
        reason = f"{error.strerror or error}"
    return f"cannot write the {what} at {dest}: {reason} (nothing half-written was left)"


def analyze_stage(data_dir: str | Path, out_dir: str | Path, workers: int = 2) -> dict:
    """Dataset report (report.json, report.html) in ``out_dir``, plus the per-file fingerprints.

    The fingerprints (hashes, sizes, intensities) let the split stage group duplicates without decoding
    every image a second time.
    """
    index = discover(data_dir)
    fingerprints = analysis.scan(index, workers=workers)
    report = analysis.write_report(index, fingerprints, out_dir)
    payload = [asdict(fingerprint) for fingerprint in fingerprints]
    (Path(out_dir) / FINGERPRINTS_FILE).write_text(json.dumps(payload) + "\n")
    return report


def split_stage(
    data_dir: str | Path,
    analysis_dir: str | Path | None,
    out_path: str | Path,
    *,
    seed: int = 0,
    leak_policy: str = "drop",
    val_fraction: float = 0.15,
    given_val_as_test: bool = False,
    keep_suspect: bool = False,
) -> split.SplitPlan:
    """Leak-free split written to ``out_path``; reuses an analysis' fingerprints when they match.

    ``given_val_as_test`` treats a pre-split input's val folder as the held-out test set and carves a
    new val (for checkpoint selection and calibration) out of train, so the given folder is never seen
    before the final evaluation. Public collections often ship only train + validation.

    Images the analysis flags as not being MRI at all (pure noise, flat) are left out unless
    ``keep_suspect``: trained on, they teach a shortcut ("noise means no tumour"); evaluated on, they
    inflate accuracy. How many were left out is recorded in the plan's params.
    """
    index = discover(data_dir)
    if given_val_as_test:
        if "test" in index.splits:
            raise DataError("given_val_as_test needs pre-split data without a test split")
        index.records = [replace(r, split="test") if r.split == "val" else r for r in index.records]
    fingerprints = None
    stored = Path(analysis_dir) / FINGERPRINTS_FILE if analysis_dir else None
    if stored and stored.is_file():
        fingerprints = [analysis.ImageFingerprint(**f) for f in json.loads(stored.read_text())]
        if [f.relpath for f in fingerprints] != [r.relpath for r in index.records]:
            log.warning("analysis in %s is of other files: scanning again", analysis_dir)
            fingerprints = None
        else:
            fingerprints = [
                replace(f, split=r.split) for f, r in zip(fingerprints, index.records, strict=True)
            ]
    if fingerprints is None:
        fingerprints = analysis.scan(index)
    suspect = [] if keep_suspect else [f.relpath for f in fingerprints if analysis.suspect_reason(f)]
    if suspect:
        log.warning("leaving out %d images that are not MRI slices (noise-like or flat)", len(suspect))
        left_out = set(suspect)
        fingerprints = [f for f in fingerprints if f.relpath not in left_out]
        index.records = [r for r in index.records if r.relpath not in left_out]
    plan = split.plan_split(
        index, fingerprints, seed=seed, leak_policy=leak_policy, val_fraction=val_fraction
    )
    plan.params["excluded_suspect"] = len(suspect)
    plan.write(out_path)
    return plan


def split_arrays(
    data_dir: str | Path,
    plan: split.SplitPlan,
    split_name: str,
    preprocessing: PreprocessConfig,
    cache_dir=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical uint8 images and label indices of one split."""
    images, labels, _ = named_split_arrays(data_dir, plan, split_name, preprocessing, cache_dir)
    return images, labels


def named_split_arrays(
    data_dir: str | Path,
    plan: split.SplitPlan,
    split_name: str,
    preprocessing: PreprocessConfig,
    cache_dir=None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``split_arrays`` plus each image's path relative to the data folder."""
    root = Path(data_dir).resolve()
    entries = [e for e in plan.entries if e.split == split_name]
    if not entries:
        raise DataError(f"split {split_name!r} is empty")
    images, labels, kept = load_arrays_kept(
        [root / e.relpath for e in entries],
        [plan.classes.index(e.label) for e in entries],
        [e.sha256 for e in entries],
        preprocessing,
        cache_dir=cache_dir,
    )
    return images, labels, [entries[i].relpath for i in kept]


def train_stage(
    data_dir: str | Path,
    split_path: str | Path,
    run_dir: str | Path,
    config: TrainConfig,
    preprocessing: PreprocessConfig | None = None,
    progress: bool = True,
    guide: GuideSet | None = None,
) -> TrainResult:
    """Train on the split's train part (plus the ``guide`` slices, when given), select on its val part; the
    best model lands in run_dir/best."""
    preprocessing = preprocessing or config.preprocessing()
    plan = split.load_split(split_path)
    cache = Path(run_dir).parent / "cache"
    train_data = split_arrays(data_dir, plan, "train", preprocessing, cache)
    val_data = split_arrays(data_dir, plan, "val", preprocessing, cache)
    return train(
        train_data, val_data, plan.classes, preprocessing, config, run_dir, progress=progress, guide=guide
    )


def _logits(
    model_dir: Path, images: np.ndarray, labels: np.ndarray, progress: str | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Logits, labels and the OOD features (``neurovit.ood.FEATURES``) of the images, in one pass."""
    loaded = load_model(model_dir, device=pick_device("auto"))
    loader = BatchLoader(
        images,
        labels,
        256,
        loaded.preprocessing,
        next(loaded.model.parameters()).device,
        shuffle=False,
        drop_last=False,
    )
    with capture_features(loaded.model) as captured:  # read-only hooks: the logits are the same
        logits, labels = predict_logits(loaded.model, loader, progress)
    return logits, labels, stack_features(captured)


def _ood_scores(model_dir: Path, features: dict[str, np.ndarray]) -> tuple[np.ndarray, float] | None:
    """OOD scores of the features by the model folder's scorer (the one served) and its threshold; None for
    a model published without them."""
    scorer, reference = OODScorer.load(model_dir), MonitoringReference.load(model_dir)
    if scorer is None or reference is None or reference.ood_threshold is None:
        return None
    return scorer.score(features), float(reference.ood_threshold)


def calibrate_and_evaluate_stage(
    data_dir: str | Path,
    split_path: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    model_out: str | Path,
) -> dict:
    """Fit the temperature and the confidence map on val, evaluate on test (val when there is no test), save
    the calibrated model.

    ``model_out`` receives a copy of the model whose neurovit.json carries the fitted calibration, plus the
    monitoring reference (drift bins, class mix, OOD scorer and threshold: ``training.monitoring_reference``).
    ``out_dir`` gets the report (``training.evaluation_report``) and ``predictions.csv`` of the evaluated
    images, whose OOD flag rate (real MRI the threshold never saw, when there is a test split) joins the
    metrics.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    plan = split.load_split(split_path)
    loaded = load_model(model_dir)
    cache = out_dir.parent / "cache"  # shared with the train stage of the same run
    val_images, val_labels, val_paths = named_split_arrays(data_dir, plan, "val", loaded.preprocessing, cache)
    val_logits, val_labels, val_features = _logits(model_dir, val_images, val_labels)
    has_test = any(e.split == "test" for e in plan.entries)
    if has_test:
        test_images, test_labels, test_paths = named_split_arrays(
            data_dir, plan, "test", loaded.preprocessing, cache
        )
        test_logits, test_labels, test_features = _logits(model_dir, test_images, test_labels, "evaluating")
    else:
        log.warning("no test split: reporting on val, which also chose the checkpoint (optimistic)")
        test_logits, test_labels, test_paths, test_features = val_logits, val_labels, val_paths, val_features
    metrics = write_evaluation(
        out_dir, test_labels, test_logits, plan.classes, fit_on=(val_logits, val_labels)
    )
    metrics["evaluated_on"] = "test" if has_test else "val"
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    info = loaded.info
    info.temperature = float(metrics["temperature"])
    saved_map = metrics["confidence_map"]
    info.confidence_map = None if saved_map is None else ConfidenceMap.from_dict(saved_map)
    info.extra["data_fingerprint"] = plan.fingerprint
    model_out = Path(model_out)
    shutil.rmtree(model_out, ignore_errors=True)
    save_model(loaded.model, model_out, loaded.preprocessing, info)
    train_data = split_arrays(data_dir, plan, "train", loaded.preprocessing, cache)
    metrics["monitoring"] = write_monitoring_reference(model_out, train_data, (val_images, val_labels))
    scores, threshold = _ood_scores(model_out, test_features)
    metrics["monitoring"]["ood_evaluated_flagged_rate"] = float(np.mean(scores > threshold))
    write_predictions(
        out_dir,
        test_paths,
        test_labels,
        test_logits,
        plan.classes,
        info.temperature,
        scores,
        threshold,
        info.confidence_map,
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_model_stage(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    only: split.SplitPlan | None = None,
) -> dict:
    """Evaluate a saved model on the readable images of ``data_dir`` with its stored temperature: the report
    and ``predictions.csv`` (one row per image, with its OOD score and flag when the model has a scorer).

    ``only``: restrict to the test entries of this split plan (the version's own held-out images), so
    images seen in training, leaked duplicates and non-MRI files stay out of the figures.
    """
    loaded = load_model(model_dir)
    index = discover(data_dir)
    if only is not None:
        held_out = {entry.relpath for entry in only.entries_in("test")}
        index.records = [record for record in index.records if record.relpath in held_out]
        if not index.records:
            raise DataError(f"none of the version's held-out test images is under {data_dir}")
    unknown = sorted(set(index.classes) - set(loaded.class_names))
    if unknown:
        raise DataError(f"classes {unknown} in {data_dir} are unknown to the model ({loaded.class_names})")
    images, labels, kept = load_arrays_kept(
        [r.path for r in index.records],
        [loaded.class_names.index(r.label) for r in index.records],
        [r.relpath for r in index.records],  # no cache, so the key need not be a content hash
        loaded.preprocessing,
    )
    logits, labels, features = _logits(Path(model_dir), images, labels, "evaluating")
    metrics = write_evaluation(
        out_dir,
        labels,
        logits,
        loaded.class_names,
        temperature=loaded.info.temperature,
        confidence_map=loaded.info.confidence_map,
    )
    metrics["data_dir"] = str(Path(data_dir).resolve())
    metrics["images"] = "held-out test split of the version" if only is not None else "all readable"
    ood = _ood_scores(Path(model_dir), features)
    scores, threshold = ood if ood is not None else (None, None)
    if ood is not None:
        metrics["ood"] = {"threshold": threshold, "flagged_rate": float(np.mean(scores > threshold))}
    relpaths = [index.records[i].relpath for i in kept]
    write_predictions(
        out_dir,
        relpaths,
        labels,
        logits,
        loaded.class_names,
        loaded.info.temperature,
        scores,
        threshold,
        loaded.info.confidence_map,
    )
    (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def code_version() -> str:
    """Package version plus the git commit: from NEUROVIT_CODE_VERSION (set when an image is built) or git."""
    if os.environ.get("NEUROVIT_CODE_VERSION"):
        return os.environ["NEUROVIT_CODE_VERSION"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"{neurovit.__version__}+{commit}"


def _stage_version_files(
    staging: Path,
    model_dir: str | Path,
    eval_dir: str | Path,
    split_path: str | Path,
    analysis_dir: str | Path,
    extra_files: dict[str, Path],
) -> None:
    """Copy what one version holds into ``staging``: model, evaluation, split, analysis, extra files."""
    _copy_tree(Path(model_dir), staging / "model")
    _copy_tree(Path(eval_dir), staging / "evaluation", skip="cache")
    shutil.copy2(split_path, staging / SPLIT_FILE)
    (staging / "analysis").mkdir(parents=True)
    for name in ("report.json", "report.html"):
        if (Path(analysis_dir) / name).is_file():
            shutil.copy2(Path(analysis_dir) / name, staging / "analysis" / name)
    for relpath, source in extra_files.items():
        (staging / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, staging / relpath)


def _copy_tree(source: Path, target: Path, skip: str | None = None) -> None:
    """copytree that stops at the first failure with its own OSError (copytree gathers them into one
    shutil.Error and goes on copying onto a full disk)."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if skip is not None and skip in relative.parts:
            continue
        if path.is_dir():
            (target / relative).mkdir(parents=True, exist_ok=True)
        else:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)


def publish_stage(
    store_uri: str,
    model_name: str,
    model_dir: str | Path,
    eval_dir: str | Path,
    split_path: str | Path,
    analysis_dir: str | Path,
    staging_dir: str | Path,
    extra_files: dict[str, Path] | None = None,
    version: str | None = None,
    package: bool = True,
) -> str:
    """Write the model card, package for TorchServe/KServe, then publish model, evaluation, split,
    analysis, the card and the package as one version; returns the version's URI.

    The card (``training.model_card``: ``MODEL_CARD.md`` and ``model_card.json`` at the version's root) is
    built from these same files. With ``package`` the archive (which carries ``model_card.json``) and
    config.properties (KServe's layout) are built next under the new version id, which they record.
    ``extra_files`` (``{relpath: file}``) join the version too.
    """
    from handlers.package import package_stage  # packaging needs torch-model-archiver only here

    version = version or new_version_id()
    staging = Path(staging_dir)
    shutil.rmtree(staging, ignore_errors=True)
    card = build_card(
        model_name, version, model_dir, eval_dir, split_path, analysis_dir, code_version=code_version()
    )
    with tempfile.TemporaryDirectory(prefix="neurovit-card-") as card_dir:
        card_files = write_card(card, card_dir)
        extra_files = {**card_files, **(extra_files or {})}
        if package:
            packaged = package_stage(
                model_dir,
                staging.with_name(staging.name + "-package"),
                model_name,
                version,
                extra_files=[card_files[MODEL_CARD_FILE]],
            )
            extra_files = {**packaged, **extra_files}
        with built_in_place(staging, "publish staging folder") as building:
            _stage_version_files(building, model_dir, eval_dir, split_path, analysis_dir, extra_files)

    metrics = json.loads((Path(eval_dir) / "metrics.json").read_text())
    info = ModelInfo.load(model_dir)
    metadata = {
        "metrics": {
            k: metrics[k]
            for k in (
                "accuracy",
                "macro_f1",
                "ece",
                "ece_before_calibration",
                "ece_temperature_only",
                "ece_after_calibration",
                "ece_if_calibrated",
                "temperature",
                "evaluated_on",
                "n",
            )
            if k in metrics
        },
        "data_fingerprint": split.load_split(split_path).fingerprint,
        "preprocessing": json.loads((Path(model_dir) / "preprocessing.json").read_text()),
        "class_names": info.class_names,
        "base_model": info.extra.get("base_model"),  # None: trained from scratch
        "code_version": card["code_version"],
        "torch_version": torch.__version__,
        "disclaimer": neurovit.RESEARCH_DISCLAIMER,
        "model_card": sorted(card_files),  # the card's files, at the version's root
    }
    store = open_store(store_uri)
    version = store.publish(model_name, staging, metadata=metadata, version=version)
    return store.version_uri(model_name, version)


# ---- the main job: every stage in order (`neurovit train`, `neurovit demo`, `neurovit bench train`) ----


def report_line(report: dict) -> str:
    """The analysis report in one line (files, corrupt, duplicate groups, leaks)."""
    dataset, duplicates = report["dataset"], report["duplicates"]
    return (
        f"{dataset['files']} files, {dataset['corrupt']} corrupt, {duplicates['exact_groups']} exact and "
        f"{duplicates['near_groups']} near duplicate groups, {report['leaks']['groups']} cross-split leaks"
    )


def split_line(plan) -> str:
    """The split in one line (sizes, leaking images dropped or moved, fingerprint)."""
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

    ``split_options`` go to ``split_stage`` (e.g. ``given_val_as_test`` for the benchmark).
    ``guide_dir``: a folder of masked slices whose guide half joins training (``training.guide``); the
    version then lists them in ``guide.json``.
    """
    open_store(store_uri).check_writable()  # fail now, not after training
    print(f"[1/5] analysing {data_dir}", flush=True)
    report = analyze_stage(data_dir, run_dir / "analysis")
    print(f"      report: {run_dir / 'analysis' / 'report.html'}  ({report_line(report)})")
    print("[2/5] splitting without leakage", flush=True)
    plan = split_stage(data_dir, run_dir / "analysis", run_dir / SPLIT_FILE, seed=seed, **split_options)
    print(f"      {split_line(plan)}")
    print(
        f"[3/5] training on {torch.get_num_threads()} CPU threads"
        if not torch.cuda.is_available()
        else "[3/5] training on CUDA",
        flush=True,
    )
    guide, extra_files = None, {}
    if guide_dir is not None:
        guide = load_guide_set(guide_dir, plan.classes, config.preprocessing())
        settings = {
            "guide_weight": config.guide_weight,
            "counterfactual_class": config.counterfactual_class,
            "black_counterfactuals": config.black_counterfactuals,
        }
        guide.write(run_dir / GUIDE_FILE, settings)
        extra_files[GUIDE_FILE] = run_dir / GUIDE_FILE
        print(f"      guiding the rollout map with {len(guide.entries)} masked slices of {guide_dir}")
    result = train_stage(data_dir, run_dir / SPLIT_FILE, run_dir / "train", config, guide=guide)
    print(
        f"      best val accuracy {result.best_val_accuracy:.3f} at epoch {result.best_epoch} "
        f"({result.train_seconds:.0f}s, {result.images_per_second:.0f} images/s)"
    )
    print("[4/5] calibrating and evaluating", flush=True)
    metrics = calibrate_and_evaluate_stage(
        data_dir, run_dir / SPLIT_FILE, result.best_dir, run_dir / "evaluation", run_dir / "model"
    )
    print(
        f"      {metrics['evaluated_on']}: accuracy {metrics['accuracy']:.3f}, "
        f"macro F1 {metrics['macro_f1']:.3f}, "
        f"ECE {metrics['ece_before_calibration']:.3f} -> {metrics['ece_temperature_only']:.3f} "
        f"(T={metrics['temperature']:.2f}) -> {metrics['ece_after_calibration']:.3f} "
        f"({metrics['confidence_map_source']}; a calibrated model shows up to "
        f"{metrics['ece_if_calibrated']['p95']:.3f} on {metrics['n']} images); "
        f"plots in {run_dir / 'evaluation'}"
    )
    print(f"[5/5] packaging for TorchServe and publishing to {store_uri}", flush=True)
    version_uri = publish_stage(
        store_uri,
        MODEL_NAME,
        run_dir / "model",
        run_dir / "evaluation",
        run_dir / SPLIT_FILE,
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
