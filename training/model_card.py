"""The model card of a published version: ``model_card.json`` for machines, ``MODEL_CARD.md`` for people.

``build_card`` reads what the run itself wrote (the calibrated model folder, the evaluation, the split and
the dataset analysis) into one dict, in the spirit of a MONAI bundle's ``metadata.json`` (version, input
contract, metrics, intended use, disclaimer); ``render_markdown`` turns that same dict into the page, so the
two never disagree. Nothing is hard-coded that the run records: the input size and intensity window come
from the model's preprocessing config, the figures from ``metrics.json``. The publish stage
(``training.stages.publish_stage``) writes both files at the version's root and packs the JSON into the
TorchServe archive, where ``GET /models/<name>?customized=true`` returns it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from neurovit import RESEARCH_DISCLAIMER
from neurovit.data.imageio import PILLOW_FORMATS
from neurovit.drift import MonitoringReference
from neurovit.metrics import DEFAULT_ECE_BINS
from neurovit.model import ModelInfo
from neurovit.preprocessing import PreprocessConfig
from neurovit.serving import MODEL_CARD_FILE

MODEL_CARD_MARKDOWN = "MODEL_CARD.md"
SCHEMA_VERSION = 1
EXPLAIN_RESULTS = "explain_eval.json"  # what `make eval-explain` writes (training.evaluations.explanations)
# Fewer training slices than this is small data for a ViT, and the card says so.
_SMALL_DATA = 10_000
_REMOVED = {
    "corrupt_files": "corrupt files",
    "not_mri_files": "files that are not MRI (noise-like or flat)",
    "leaking_images_dropped": "images leaking across splits dropped",
    "leaking_images_moved_to_train": "leaking images moved to train",
}

INTENDED_USE = (
    "Research on classifying single 2-D brain MRI slices into the classes below, and on explaining those "
    "answers with attention maps. It is not a medical device: not for diagnosis, triage or any clinical "
    "decision."
)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _interval(value: float | None, bounds: dict | None) -> dict:
    return {"value": value, **(bounds or {"ci_low": None, "ci_high": None})}


def _input_contract(preprocessing: PreprocessConfig) -> dict:
    window = {
        "percentile": (
            f"per image, the {preprocessing.low_percentile} and {preprocessing.high_percentile} "
            "percentiles of the resized slice map to 0 and 1"
        ),
        "foreground_median": (
            f"per image, the {preprocessing.low_percentile} percentile maps to 0 and the median of the "
            f"head's pixels to {preprocessing.foreground_median_level}"
        ),
    }[preprocessing.intensity_window]
    return {
        "type": "image",
        "modality": "MR",
        "description": "one 2-D brain MRI slice per image, in any view the training data held",
        "formats": ["DICOM", *PILLOW_FORMATS],
        "num_channels": 1,
        "colour": "converted to grey (luma); the model reads one channel",
        "spatial_shape": [preprocessing.image_size, preprocessing.image_size],
        "resize": f"longer side to {preprocessing.image_size} pixels, aspect kept, centred on a zero square",
        "intensity": f"{preprocessing.intensity_window} window: {window}; then (x - {preprocessing.mean}) / "
        f"{preprocessing.std}",
        "preprocessing": asdict(preprocessing),
    }


def _origin(info: ModelInfo) -> dict:
    """Where the weights started: from scratch, or the pretrained checkpoint (``neurovit.base_model``)."""
    base = info.extra.get("base_model")
    if base is None:
        return {"kind": "from scratch", "base_model": None}
    return {"kind": "fine-tuned from a pretrained checkpoint", "base_model": base}


def _origin_line(origin: dict) -> str:
    base = origin["base_model"]
    if base is None:
        return "- Weights: trained from scratch on the training data below."
    normalisation = base["input_normalisation"]
    where = "its image processor's" if normalisation["source"] != "neurovit" else "NeuroViT's"
    return (
        f"- Weights: fine-tuned from `{base['source']}` ({base['model_type']}, {base['layers']} layers, "
        f"width {base['hidden_size']}, {base['patch_size']} px patches at {base['image_size']} px; grey "
        f"input {base['grey_input']}, normalised with {where} mean {normalisation['mean']} and std "
        f"{normalisation['std']})."
    )


def _training_data(split: dict, report: dict | None) -> dict:
    params, counts = split.get("params", {}), split.get("counts", {})
    data = {
        "fingerprint": split.get("fingerprint"),
        "classes": split.get("classes", []),
        "images_per_split": {name: sum(by_class.values()) for name, by_class in counts.items()},
        "images_per_split_and_class": counts,
        "split": {"seed": params.get("seed"), "leak_policy": params.get("leak_policy")},
        "removed": {
            "corrupt_files": split.get("excluded_corrupt", 0),
            "not_mri_files": params.get("excluded_suspect", 0),
            "leaking_images_dropped": split.get("dropped", 0),
            "leaking_images_moved_to_train": split.get("moved", 0),
        },
        "analysis": None,
    }
    if report is not None:
        suspect, duplicates, leaks = report["suspect"], report["duplicates"], report["leaks"]
        data["analysis"] = {
            "files": report["dataset"]["files"],
            "corrupt": report["dataset"]["corrupt"],
            "noise_like": len(suspect["noise_like"]),
            "flat": len(suspect["flat"]),
            "exact_duplicate_groups": duplicates["exact_groups"],
            "near_duplicate_groups": duplicates["near_groups"],
            "cross_split_leak_groups": leaks["groups"],
            "cross_split_leak_images": leaks["images"],
            "formats": report["formats"],
            "image_sizes": dict(list(report["image_sizes"].items())[:5]),
        }
    return data


def _performance(metrics: dict) -> dict:
    intervals = metrics.get("per_class_intervals", {})
    bounds = intervals.get("per_class", {})
    per_class = {}
    for name, values in metrics["per_class"].items():
        per_class[name] = {
            "support": values["support"],
            **{
                statistic: _interval(values[statistic], bounds.get(name, {}).get(statistic))
                for statistic in ("sensitivity", "specificity", "auc")
            },
        }
    return {
        "evaluated_on": metrics.get("evaluated_on", "test"),
        "n": metrics["n"],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "per_class": per_class,
        "intervals": intervals.get("method", "not computed"),
        "confidence": intervals.get("confidence"),
    }


def _ood(metrics: dict, reference: MonitoringReference | None) -> dict | None:
    monitoring = metrics.get("monitoring") or {}
    if reference is None or reference.ood_threshold is None:
        return None
    return {
        "score": "normalised Mahalanobis distance of the model's own features to the training classes",
        "threshold": reference.ood_threshold,
        "target_false_positive_rate": reference.ood_target_fpr,
        "false_positive_rate_validation": monitoring.get("ood_val_flagged_rate"),
        "false_positive_rate_held_out": monitoring.get("ood_evaluated_flagged_rate"),
        "held_out_split": metrics.get("evaluated_on", "test"),
    }


def _explanations(results: dict | None) -> dict:
    if results is None:
        return {
            "measured": False,
            "note": "not measured in this version",
            "how_to_measure": "make eval-explain MODEL=<this version> DATA_DIR=<its data, or masked slices>",
        }
    explained = results["explained"]
    target = "predicted" if "predicted" in explained else next(iter(explained))
    methods = {
        method: {
            "pointing_game": values["pointing_game"],
            "deletion_auc": {substrate: row["auc"] for substrate, row in values["deletion"].items()},
        }
        for method, values in explained[target]["methods"].items()
    }
    return {
        "measured": True,
        "explained_class": target,
        "images": results.get("images"),
        "n_slices": results.get("n_slices"),
        "methods": methods,
    }


def _limitations(card: dict) -> list[str]:
    data, performance = card["training_data"], card["performance"]
    train_images = data["images_per_split"].get("train", 0)
    limits = [
        "2-D slices only: each image is classified on its own, without its neighbouring slices or volume.",
        "The MRI sequence (T1, T2, FLAIR, contrast) and the view are not recorded with the training data; "
        "check the model on the sequence and view you use before reading anything into its answers.",
        "Evaluated on a held-out part of the same collection (same scanners and sites); performance on "
        "other sites, scanners or populations is unknown.",
        "Labels are those of the source collection's folders; their quality was not reviewed here.",
        "Not validated clinically.",
    ]
    if train_images < _SMALL_DATA:
        limits.insert(1, f"Small data: {train_images} training slices; read the intervals, not the points.")
    if performance["evaluated_on"] != "test":
        limits.insert(
            0,
            "No test split: the figures are on the validation split, which also chose the "
            "checkpoint and fitted the temperature (optimistic).",
        )
    if card["out_of_distribution"] is not None:
        limits.append(
            "The out-of-distribution flag is tuned on real slices; an unusual image it was never checked "
            "against can still pass unflagged."
        )
    return limits


def build_card(
    model_name: str,
    version: str,
    model_dir: str | Path,
    eval_dir: str | Path,
    split_path: str | Path,
    analysis_dir: str | Path,
    code_version: str = "unknown",
) -> dict:
    """The card of one version from the run's own files (``eval_dir`` may hold ``explain_eval.json``)."""
    model_dir, eval_dir = Path(model_dir), Path(eval_dir)
    info = ModelInfo.load(model_dir)
    preprocessing = PreprocessConfig.load(model_dir)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    split = json.loads(Path(split_path).read_text())
    report = _read_json(Path(analysis_dir) / "report.json")
    card = {
        "schema_version": SCHEMA_VERSION,
        "name": model_name,
        "version": version,
        "code_version": code_version,
        "task": "classification of 2-D brain MRI slices, with explanation maps",
        "intended_use": INTENDED_USE,
        "research_use_only": True,
        "disclaimer": RESEARCH_DISCLAIMER,
        "network_data_format": {
            "inputs": {"image": _input_contract(preprocessing)},
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "classes": info.class_names,
                    "calibration": "softmax of the logits divided by the temperature"
                    + ("" if info.confidence_map is None else ", then the top label's confidence map"),
                }
            },
        },
        "model": _origin(info),
        "training_data": _training_data(split, report),
        "performance": _performance(metrics),
        "calibration": {
            "method": "temperature scaling"
            + ("" if info.confidence_map is None else ", then a top-label confidence map (isotonic)")
            + ", fitted on the validation split",
            "temperature": info.temperature,
            "confidence_map": None if info.confidence_map is None else info.confidence_map.to_dict(),
            "ece_bins": DEFAULT_ECE_BINS,
            "ece_before": metrics.get("ece_before_calibration"),
            "ece_temperature_only": metrics.get("ece_temperature_only"),
            "ece_after": metrics.get("ece_after_calibration"),
            # 95th percentile of the ECE a calibrated model would show on the evaluated images
            "ece_if_calibrated_p95": (metrics.get("ece_if_calibrated") or {}).get("p95"),
        },
        "out_of_distribution": _ood(metrics, MonitoringReference.load(model_dir)),
        "explanations": _explanations(_read_json(eval_dir / EXPLAIN_RESULTS)),
    }
    card["limitations"] = _limitations(card)
    return card


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _with_interval(entry: dict) -> str:
    if entry["value"] is None:
        return "n/a"
    if entry["ci_low"] is None:
        return _number(entry["value"])
    return f"{entry['value']:.3f} ({entry['ci_low']:.3f}-{entry['ci_high']:.3f})"


def render_markdown(card: dict) -> str:
    """``MODEL_CARD.md`` from the card dict (the same dict ``model_card.json`` holds)."""
    image = card["network_data_format"]["inputs"]["image"]
    data, performance, calibration = card["training_data"], card["performance"], card["calibration"]
    size = "x".join(str(side) for side in image["spatial_shape"])
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        f"> {card['disclaimer']}",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Input",
        "",
        f"- Modality: {image['modality']} ({image['description']}).",
        f"- Formats: {', '.join(image['formats'])}; {image['colour']}.",
        f"- Size: any; the model sees {size} pixels ({image['resize']}).",
        f"- Intensity: {image['intensity']}.",
        f"- Output: probabilities of {', '.join(card['network_data_format']['outputs']['pred']['classes'])}.",
        "",
        "## Training data",
        "",
        _origin_line(card["model"]),
        f"- Fingerprint: `{data['fingerprint']}`",
        "- Images: " + ", ".join(f"{name} {n}" for name, n in data["images_per_split"].items()),
        "- Left out or moved by the split: "
        + ", ".join(f"{_REMOVED[name]} {n}" for name, n in data["removed"].items()),
    ]
    analysis = data["analysis"]
    if analysis is not None:
        lines.append(
            f"- Analysis of the {analysis['files']} files: {analysis['corrupt']} corrupt, "
            f"{analysis['noise_like']} noise-like, {analysis['flat']} flat, "
            f"{analysis['exact_duplicate_groups']} exact and {analysis['near_duplicate_groups']} near "
            f"duplicate groups, {analysis['cross_split_leak_groups']} groups leaking across splits "
            f"({analysis['cross_split_leak_images']} images)"
        )
    confidence = performance["confidence"]
    share = f"{confidence:.0%} " if confidence else ""
    lines += [
        "",
        f"## Performance on the {performance['evaluated_on']} split ({performance['n']} images)",
        "",
        f"Accuracy {performance['accuracy']:.3f}, macro F1 {performance['macro_f1']:.3f}. Per class, with "
        f"{share}intervals ({performance['intervals']}):",
        "",
        "| class | images | sensitivity | specificity | AUC (one vs rest) |",
        "|---|---:|---|---|---|",
    ]
    for name, row in performance["per_class"].items():
        lines.append(
            f"| {name} | {row['support']} | {_with_interval(row['sensitivity'])} | "
            f"{_with_interval(row['specificity'])} | {_with_interval(row['auc'])} |"
        )
    lines += [
        "",
        "## Calibration",
        "",
        f"{calibration['method'].capitalize()}: T = {calibration['temperature']:.3f}. Expected calibration "
        f"error ({calibration['ece_bins']} bins) {_number(calibration['ece_before'], 4)} before, "
        + (
            f"{_number(calibration['ece_temperature_only'], 4)} after the temperature, "
            if calibration.get("confidence_map") is not None
            else ""
        )
        + f"{_number(calibration['ece_after'], 4)} after"
        + (
            " (a perfectly calibrated model would show up to "
            f"{_number(calibration['ece_if_calibrated_p95'], 4)} on as many images, 95th percentile: small "
            "test sets inflate ECE)."
            if calibration.get("ece_if_calibrated_p95") is not None
            else "."
        ),
        "",
        "## Out of distribution",
        "",
    ]
    ood = card["out_of_distribution"]
    if ood is None:
        lines.append("This version has no OOD score.")
    else:
        lines.append(
            f"Score: {ood['score']}. An answer is flagged above {ood['threshold']:.3f}, set to flag "
            f"{ood['target_false_positive_rate']:.0%} of validation slices; real slices of the "
            f"{ood['held_out_split']} split flagged: {_percent(ood['false_positive_rate_held_out'])}."
        )
    lines += ["", "## Explanations", ""]
    explanations = card["explanations"]
    if not explanations["measured"]:
        lines.append(f"{explanations['note'].capitalize()}. Measure with `{explanations['how_to_measure']}`.")
    else:
        lines += [
            f"Maps of the {explanations['explained_class']} class on {explanations['n_slices']} slices "
            f"({explanations['images']}):",
            "",
            "| method | pointing game | deletion AUC |",
            "|---|---|---|",
        ]
        for method, row in explanations["methods"].items():
            deletion = ", ".join(f"{fill} {auc:.3f}" for fill, auc in row["deletion_auc"].items())
            lines.append(f"| {method} | {_number(row['pointing_game'])} | {deletion} |")
    lines += ["", "## Known limits", "", *(f"- {limit}" for limit in card["limitations"]), ""]
    lines.append(f"Code {card['code_version']}; machine-readable card: `{MODEL_CARD_FILE}`.")
    return "\n".join(lines) + "\n"


def write_card(card: dict, folder: str | Path) -> dict[str, Path]:
    """Write ``model_card.json`` and ``MODEL_CARD.md`` into ``folder``; ``{file name: path}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {MODEL_CARD_FILE: folder / MODEL_CARD_FILE, MODEL_CARD_MARKDOWN: folder / MODEL_CARD_MARKDOWN}
    # allow_nan=False: an undefined figure is None by construction; a NaN here would be a bug.
    paths[MODEL_CARD_FILE].write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    paths[MODEL_CARD_MARKDOWN].write_text(render_markdown(card))
    return paths


__all__ = ["MODEL_CARD_MARKDOWN", "SCHEMA_VERSION", "build_card", "render_markdown", "write_card"]
