"""Score NeuroViT's explanation maps against lesion masks: pointing game and deletion AUC vs two baselines.

``python -m training.eval_explain [--model latest|<version>|<version URI>] [--data-dir outputs/demo-data]``
(``make eval-explain``) fetches a published version, takes the images of its test split (from the
version's ``split.json``; every image of ``--data-dir`` when the version has none or the data no longer
matches it), computes the explainers' maps (``rollout``, ``gradcam`` (the served "heatmap"),
``gradient_rollout``, and ``hirescam``, the CAM variant scored for comparison) and two baselines (a seeded
uniform random map, a centred Gaussian) on the ViT's patch grid, and scores every map with the two
measures of ``neurovit.explain_metrics``:

- pointing game (Zhang et al. 2018): does the map's maximum fall on the lesion? The grid map is upsampled
  bilinearly to the model input's resolution (what the overlays show) and its maximum must lie within
  ``--tolerance`` pixels (default 8 px, i.e. Zhang et al.'s 15 px at 224 px scaled to our 128 px, about half
  a 16 px patch) of the lesion mask, which went through the same resize-and-pad as the image. Slices
  without a lesion (``notumor``, or no mask file) are left out. The score is the mean of the per-class hit
  rates (as TorchRay); the strict variant (tolerance 0) is reported too.
- deletion AUC (Petsiuk et al. 2018, RISE): the temperature-calibrated probability of the PREDICTED class
  (the class the maps explain; ``--explain true`` explains and follows the true class instead) as the map's
  most relevant patch-grid cells are replaced, one cell per step by default, by black (the scan's background;
  ``--substrate mean|blur`` for the image mean or a blur; ``--substrate road`` for ROAD's noisy linear
  imputation of the removed cells from their surroundings; ``--substrate healthy`` on the demo set for the
  healthy tissue of the slice's lesion-free twin, put back in the scan before the intensity scaling, see
  ``Deletion``; lesion slices only);
  the trapezoid area over the fraction removed, in [0, 1]. Lower is better. Every slice counts, with or
  without a lesion.

Writes ``outputs/explain-eval/<version>/``: ``explain_eval.json`` (per method: pointing_game, deletion_auc,
n, and the details), ``per_image.csv``, ``gallery.png`` (a few slices per class: the input with the lesion
outline, then each method's overlay with its maximum marked) and ``deletion_curves.png``; and prints the
table. Each explainer is also compared with each baseline on the same images (paired bootstrap 95%
intervals of the difference), which is what "better than the baseline" means here. A reference line gives
the deletion AUC with the lesion mask itself as the map (lesion slices only): how far deletion falls on
this model when the lesion goes first, which the explainers' scores can be read against.

On the demo set, whose generator can redraw every lesion slice without its lesion (same slice, pose and
scanner noise: ``neurovit.data.demo.healthy_twin``), a last line asks whether the model needs the lesion at
all: per class, the explained class' probability on the slice and on its healthy twin. Where it barely
drops, the model reads that class from elsewhere, and a map cannot be both on the lesion and faithful.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from neurovit.config import DEFAULT_STORE, MODEL_NAME, OUTPUT_DIR
from neurovit.data.demo import healthy_twin
from neurovit.data.imageio import read_image
from neurovit.data.layout import MASK_SUFFIX, discover
from neurovit.data.split import load_split
from neurovit.errors import DataError, NeuroVitError
from neurovit.explain import (
    GRADIENT_ROLLOUT_START_LAYER,
    METHODS,
    ROLLOUT_DISCARD_RATIO,
    ROLLOUT_HEAD_FUSION,
    ROLLOUT_START_LAYER,
    explain,
    overlay_png,
)
from neurovit.explain_metrics import (
    deletion_auc,
    deletion_curves,
    gaussian_map,
    lesion_map,
    max_point,
    paired_bootstrap,
    pointing_game_hit,
    random_map,
)
from neurovit.model import LoadedModel, load_model
from neurovit.preprocessing import (
    PreprocessConfig,
    canonicalise,
    resize_keep_aspect,
    standardise,
    to_tensor,
)
from neurovit.store import VERSION_PATTERN, resolve

log = logging.getLogger(__name__)

BASELINES = ("random", "gaussian")
ALL_METHODS = (*METHODS, *BASELINES)
LABELS = {
    "rollout": "rollout",
    "gradcam": "gradcam (heatmap)",
    "hirescam": "hirescam (comparison)",  # scored beside Grad-CAM, not served
    "gradient_rollout": "gradient_rollout",
    "random": "random map (baseline)",
    "gaussian": "centred Gaussian (baseline)",
}
RESULTS_FILE = "explain_eval.json"
PER_IMAGE_FILE = "per_image.csv"
GALLERY_FILE = "gallery.png"
CURVES_FILE = "deletion_curves.png"
DEFAULT_TOLERANCE_PX = 8.0
# Deleted cells become black by default: zero is an MRI slice's background, "no tissue here", which the model
# has seen everywhere outside the head (EXPLAINABILITY-NOTES). A flat grey (the image mean) is a pattern no
# slice contains, and a blur keeps a bright lesion bright. "road" (any data): ROAD's imputation continues the
# surrounding tissue into the removed cells, so no square outline is left. "healthy" (the demo set only):
# each lesion slice's lesion-free twin, the tissue that was there, so a removed cell looks like a healthy
# brain rather than like a black or grey square (lesion slices only; see ``Deletion``). The README reports
# black, road and healthy.
SUBSTRATE_CHOICES = ("black", "mean", "blur", "road", "healthy")
# ROAD solves a sparse system per perturbed input: fewer steps than cells keep it to minutes on a CPU (the
# ROAD paper scores 9 removal fractions).
ROAD_STEPS = 16


@dataclass
class Slice:
    """One evaluated image: canonical uint8 pixels and its lesion mask in the same geometry."""

    relpath: str
    label: str
    image: np.ndarray  # (H, W) uint8, as the model sees it before standardisation
    mask: np.ndarray | None  # (H, W) bool; None when no mask file sits beside the image
    # Lesion slices of the demo set (None for other data): the slice's and its lesion-free twin's grey
    # levels at the input size before intensity scaling (float); the healthy deletion mixes them and scales
    # each result, the reliance line scales the twin alone, as any input.
    scan: np.ndarray | None = None
    healthy_scan: np.ndarray | None = None

    @property
    def has_lesion(self) -> bool:
        return self.mask is not None and bool(self.mask.any())


# ------------------------------------------------------------------------------------------------------------
# Inputs.


def resolve_version(model_arg: str, store_uri: str):
    """``latest``, a bare version id, or a version URI/folder -> ``(store, model, version)``."""
    if model_arg == "latest":
        return resolve(store_uri, model=MODEL_NAME)
    if VERSION_PATTERN.match(model_arg):
        return resolve(f"{store_uri.rstrip('/')}/{MODEL_NAME}/{model_arg}")
    return resolve(model_arg)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def select_images(data_dir: Path, split_path: Path | None) -> tuple[list[tuple[Path, str, str]], str]:
    """``[(path, relpath, label)]`` to evaluate and a line saying which: the split's test images when the
    version's split file is there and the data still matches it, else every image of ``data_dir``."""
    root = data_dir.resolve()
    if split_path is not None and split_path.is_file():
        plan = load_split(split_path)
        test = [entry for entry in plan.entries if entry.split == "test"]
        if not test:
            log.warning("the version's split has no test part: evaluating every image of %s", root)
        else:
            changed = [
                e.relpath
                for e in test
                if not (root / e.relpath).is_file() or _sha256(root / e.relpath) != e.sha256
            ]
            if not changed:
                chosen = [(root / e.relpath, e.relpath, e.label) for e in test]
                return chosen, f"test split of the version's split.json ({len(chosen)} images)"
            log.warning(
                "%d of the %d test images of the version's split are missing or changed in %s (e.g. %s): "
                "evaluating every image instead",
                len(changed),
                len(test),
                root,
                changed[0],
            )
    index = discover(root)
    chosen = [(record.path, record.relpath, record.label) for record in index.records]
    return chosen, f"every image of {root} ({len(chosen)} images; no usable test split)"


def load_mask(image_path: Path, size: int) -> np.ndarray | None:
    """The lesion mask beside ``image_path``, resized and padded as ``canonicalise`` does the image."""
    mask_path = image_path.with_name(image_path.stem + MASK_SUFFIX)
    if not mask_path.is_file():
        return None
    pixels = read_image(mask_path).pixels  # 0 / 1 after decoding a 0 / 255 PNG
    return resize_keep_aspect(pixels, size) >= 0.5


def load_slices(
    chosen: list[tuple[Path, str, str]],
    loaded: LoadedModel,
    per_class: int | None,
    data_dir: Path | None = None,
) -> list[Slice]:
    """The chosen images as ``Slice``s, at most ``per_class`` per class; lesion slices of a demo dataset in
    ``data_dir`` also get their healthy twin (``neurovit.data.demo.healthy_twin``)."""
    unknown = sorted({label for _, _, label in chosen} - set(loaded.class_names))
    if unknown:
        raise DataError(f"classes {unknown} are unknown to the model ({loaded.class_names})")
    size = loaded.preprocessing.image_size
    slices, taken = [], dict.fromkeys(loaded.class_names, 0)
    for path, relpath, label in sorted(chosen, key=lambda item: item[1]):
        if per_class is not None and taken[label] >= per_class:
            continue
        pixels = read_image(path).pixels
        image = canonicalise(pixels, loaded.preprocessing)
        mask = load_mask(path, size)
        twin = None
        if data_dir is not None and mask is not None and mask.any():
            twin = healthy_twin(data_dir, relpath)
        if twin is None:
            slices.append(Slice(relpath, label, image, mask))
        else:
            twin = twin / np.float32(255.0)  # the grey levels read_image gives the slice
            scans = (resize_keep_aspect(pixels, size), resize_keep_aspect(twin, size))
            slices.append(Slice(relpath, label, image, mask, *scans))
        taken[label] += 1
    if not slices:
        raise DataError("no images to evaluate")
    return slices


# ------------------------------------------------------------------------------------------------------------
# Maps and scores.


def compute_maps(
    loaded: LoadedModel,
    inputs: torch.Tensor,
    batch_size: int,
    seed: int,
    true_classes: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every method's ``(N, g, g)`` maps (the explainers, then the baselines), the explained classes
    ``(N,)`` and the raw logits ``(N, C)``. The explainers explain the predicted class, or
    ``true_classes`` when given."""
    parts: dict[str, list[np.ndarray]] = {method: [] for method in METHODS}
    targets, logits = [], []
    for start in range(0, len(inputs), batch_size):
        wanted = None if true_classes is None else true_classes[start : start + batch_size]
        result = explain(loaded.model, inputs[start : start + batch_size], METHODS, target=wanted)
        for method in METHODS:
            parts[method].append(result[method])
        targets.append(result["target"])
        logits.append(result["logits"])
    maps = {method: np.concatenate(chunks) for method, chunks in parts.items()}
    count, grid = maps[METHODS[0]].shape[:2]
    maps["random"] = random_map(grid, seed=seed, count=count)
    maps["gaussian"] = np.repeat(gaussian_map(grid)[None], count, axis=0)
    return maps, np.concatenate(targets), np.concatenate(logits)


@dataclass(frozen=True)
class Deletion:
    """What deletion removes cells from, what it puts there, and what the model sees, per slice.

    ``black``/``mean``/``blur``/``road``: cells of the model inputs are replaced. ``healthy``: cells of
    the scan (grey levels before intensity scaling) are replaced by the twin's, and every perturbed scan is
    then scaled like any input (``scale_with``). Perturbing before the scaling matters wherever the lesion
    moves the intensity window: under the percentile window of older models a bright lesion sets the top
    and darkens the whole slice, evidence a model can read away from the lesion, which only goes when the
    lesion leaves the scan itself (the median window of current models barely moves).
    """

    sources: torch.Tensor  # (N, 1, H, W): model inputs, or scans when scale_with is set
    substrate: str | float | torch.Tensor  # a name or number for make_substrate, or one fill per slice
    scale_with: PreprocessConfig | None = None

    @classmethod
    def build(cls, name: str, loaded: LoadedModel, slices: list[Slice], inputs: torch.Tensor) -> Deletion:
        if name == "black":  # the model input of intensity 0
            return cls(inputs, float(standardise(torch.zeros(()), loaded.preprocessing)))
        if name != "healthy":
            return cls(inputs, name)
        missing = [item.relpath for item in slices if item.healthy_scan is None]
        if missing:
            raise DataError(
                f"the healthy substrate needs the demo generator's lesion-free twin of every slice; "
                f"{len(missing)} have none (e.g. {missing[0]}): not an unchanged demo dataset"
            )
        scans = torch.as_tensor(np.stack([item.scan for item in slices]))[:, None]
        twins = torch.as_tensor(np.stack([item.healthy_scan for item in slices]))[:, None]
        return cls(scans, twins, loaded.preprocessing)

    def fill(self, index: int) -> str | float | torch.Tensor:
        return self.substrate[index] if isinstance(self.substrate, torch.Tensor) else self.substrate

    def model_fn(self, loaded: LoadedModel, target: int):
        """``batch of sources -> calibrated probability of target``, scaling scans first when they are."""
        probability = class_probability(loaded.model, target, loaded.info.temperature)
        if self.scale_with is None:
            return probability
        config = self.scale_with

        def from_scans(batch: torch.Tensor) -> torch.Tensor:
            scaled = np.stack([canonicalise(scan[0].cpu().numpy(), config) for scan in batch])
            return probability(to_tensor(scaled, config))

        return from_scans


def class_probability(model: torch.nn.Module, target: int, temperature: float):
    """``batch -> softmax(logits / T)[:, target]``: the calibrated probability that deletion follows."""

    def probability(batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch).logits.float()
        return torch.softmax(logits / temperature, dim=-1)[:, target]

    return probability


def score(
    slices: list[Slice],
    deletion: Deletion,
    maps: dict[str, np.ndarray],
    targets: np.ndarray,
    loaded: LoadedModel,
    *,
    tolerance: float,
    steps: int | None,
    batch_size: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Per method, per image: ``hit`` and ``hit_strict`` (NaN without a lesion), ``curve`` and ``auc``."""
    methods = list(maps)
    count = len(slices)
    scores = {
        method: {
            "hit": np.full(count, np.nan),
            "hit_strict": np.full(count, np.nan),
            "curve": [],
            "auc": None,
        }
        for method in methods
    }
    stacked = np.stack([maps[method] for method in methods], axis=1)  # (N, M, g, g)
    with torch.inference_mode():
        for i, item in enumerate(slices):
            if item.has_lesion:
                for method in methods:
                    scores[method]["hit"][i] = pointing_game_hit(maps[method][i], item.mask, tolerance)
                    scores[method]["hit_strict"][i] = pointing_game_hit(maps[method][i], item.mask, 0.0)
            model_fn = deletion.model_fn(loaded, int(targets[i]))
            curves = deletion_curves(
                model_fn, deletion.sources[i], stacked[i], steps, deletion.fill(i), batch_size
            )
            for method, curve in zip(methods, curves, strict=True):
                scores[method]["curve"].append(curve)
            if (i + 1) % 10 == 0 or i + 1 == count:
                print(f"      scored {i + 1}/{count} slices", flush=True)
    for method in methods:
        scores[method]["curve"] = np.stack(scores[method]["curve"])
        scores[method]["auc"] = np.asarray(deletion_auc(scores[method]["curve"]))
    return scores


def lesion_reference(
    slices: list[Slice],
    deletion: Deletion,
    targets: np.ndarray,
    loaded: LoadedModel,
    grid: int,
    *,
    steps: int | None,
    batch_size: int,
) -> dict:
    """Mean deletion AUC over the lesion slices with the lesion mask itself as the map, and their count.

    Not an explainer: it says how far deletion can fall on this model when the lesion goes first, so the
    explainers' deletion scores can be read against it as well as against the baselines.
    """
    aucs = []
    with torch.inference_mode():
        for i, item in enumerate(slices):
            if item.has_lesion:
                model_fn = deletion.model_fn(loaded, int(targets[i]))
                reference = lesion_map(item.mask, grid)[None]
                source, fill = deletion.sources[i], deletion.fill(i)
                curve = deletion_curves(model_fn, source, reference, steps, fill, batch_size)[0]
                aucs.append(deletion_auc(curve))
    return {"deletion_auc_lesion_slices": float(np.mean(aucs)) if aucs else float("nan"), "n": len(aucs)}


def lesion_reliance(
    slices: list[Slice], targets: np.ndarray, probabilities: np.ndarray, loaded: LoadedModel
) -> dict:
    """Does the prediction need the lesion? Per class, over the lesion slices with a healthy twin: the mean
    calibrated probability of the explained class on the slice and on its twin (the same scan without the
    lesion, scaled in its own intensity window as any input is). A probability that stays up without the
    lesion means the model reads that class from something else, and then no map can be both on the lesion
    and faithful (deletion)."""
    chosen = [i for i, item in enumerate(slices) if item.has_lesion and item.healthy_scan is not None]
    if not chosen:
        return {"n": 0, "per_class": {}}
    config = loaded.preprocessing
    twins = to_tensor(np.stack([canonicalise(slices[i].healthy_scan, config) for i in chosen]), config)
    with torch.inference_mode():
        logits = loaded.model(twins).logits.float()
    twin_probabilities = torch.softmax(logits / loaded.info.temperature, dim=-1).numpy()
    explained = targets[chosen]
    on_slice = probabilities[chosen, explained]
    on_twin = twin_probabilities[np.arange(len(chosen)), explained]
    labels = np.array([slices[i].label for i in chosen])
    per_class = {
        name: {
            "n": int((labels == name).sum()),
            "probability_on_slice": float(on_slice[labels == name].mean()),
            "probability_on_healthy_twin": float(on_twin[labels == name].mean()),
        }
        for name in loaded.class_names
        if (labels == name).any()
    }
    return {"n": len(chosen), "per_class": per_class}


def _macro(values: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[float, dict[str, float]]:
    """Mean of the per-class means over the classes that have values (NaNs left out)."""
    per_class = {}
    for name in classes:
        chosen = values[(labels == name) & ~np.isnan(values)]
        if chosen.size:
            per_class[name] = float(chosen.mean())
    return (float(np.mean(list(per_class.values()))) if per_class else float("nan")), per_class


def summarise(
    slices: list[Slice],
    scores: dict[str, dict[str, np.ndarray]],
    predicted_classes: np.ndarray,
    class_names: list[str],
    seed: int,
) -> tuple[dict, dict]:
    """Per-method summary and the explainer-vs-baseline comparisons."""
    labels = np.array([item.label for item in slices])
    predicted = np.array([class_names[c] for c in predicted_classes])
    correct = labels == predicted
    lesion = np.array([item.has_lesion for item in slices])
    lesion_classes = [name for name in class_names if (lesion & (labels == name)).any()]
    summary = {}
    for method, values in scores.items():
        pointing, pointing_per_class = _macro(values["hit"], labels, lesion_classes)
        strict, _ = _macro(values["hit_strict"], labels, lesion_classes)
        on_correct, _ = _macro(np.where(correct, values["hit"], np.nan), labels, lesion_classes)
        auc = values["auc"]
        summary[method] = {
            "pointing_game": pointing,
            "deletion_auc": float(auc.mean()),
            "n": len(slices),
            "n_pointing_game": int(lesion.sum()),
            "pointing_game_micro": float(np.nanmean(values["hit"])) if lesion.any() else float("nan"),
            "pointing_game_strict": strict,
            "pointing_game_correct_predictions": on_correct,
            "n_pointing_game_correct_predictions": int((lesion & correct).sum()),
            "pointing_game_per_class": pointing_per_class,
            "deletion_auc_per_class": {
                name: float(auc[labels == name].mean()) for name in class_names if (labels == name).any()
            },
            "deletion_auc_lesion_slices": float(auc[lesion].mean()) if lesion.any() else float("nan"),
            "mean_deletion_curve": [round(float(v), 5) for v in values["curve"].mean(axis=0)],
        }
    comparisons: dict[str, dict] = {}
    for method in METHODS:
        comparisons[method] = {}
        for baseline in BASELINES:
            # Pointing: hit(method) - hit(baseline) per lesion slice (micro); deletion:
            # auc(baseline) - auc(method) per slice. Positive = the explainer is better; "beats" needs
            # the whole interval above zero.
            pointing = (
                paired_bootstrap(scores[method]["hit"][lesion], scores[baseline]["hit"][lesion], seed=seed)
                if lesion.any()
                else None
            )
            deletion = paired_bootstrap(scores[baseline]["auc"], scores[method]["auc"], seed=seed)
            comparisons[method][baseline] = {
                "pointing_game_gain": pointing,
                "pointing_game_beats_baseline": pointing is not None and pointing["ci_low"] > 0,
                "deletion_auc_gain": deletion,
                "deletion_auc_beats_baseline": deletion["ci_low"] > 0,
            }
    return summary, comparisons


# ------------------------------------------------------------------------------------------------------------
# Figures and table.


def _save(figure: Figure, path: Path, dpi: int = 100) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi)


def gallery_indices(slices: list[Slice], class_names: list[str], per_class: int) -> list[int]:
    """The first ``per_class`` slices of each class (sorted by path), lesion classes with a visible lesion."""
    chosen = []
    for name in class_names:
        members = [i for i, item in enumerate(slices) if item.label == name]
        with_lesion = [i for i in members if slices[i].has_lesion]
        chosen += (with_lesion or members)[:per_class]
    return chosen


def write_gallery(
    path: Path,
    slices: list[Slice],
    maps: dict[str, np.ndarray],
    scores: dict[str, dict[str, np.ndarray]],
    predicted_classes: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    per_class: int,
    explained: str,
) -> None:
    rows = gallery_indices(slices, class_names, per_class)
    methods = list(maps)
    figure = Figure(figsize=(2.1 * (1 + len(methods)), 2.3 * len(rows)))
    axes = figure.subplots(len(rows), 1 + len(methods), squeeze=False)
    for row, i in enumerate(rows):
        item = slices[i]
        shape = item.image.shape
        predicted = class_names[int(predicted_classes[i])]
        axes[row, 0].imshow(item.image, cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_title(
            f"{item.relpath.rsplit('/', 1)[-1]}\ntrue {item.label}, pred {predicted} {probabilities[i]:.2f}",
            fontsize=7,
        )
        for column, method in enumerate(methods, start=1):
            overlay = np.asarray(Image.open(io.BytesIO(overlay_png(item.image, maps[method][i]))))
            axes[row, column].imshow(overlay)
            point_row, point_col = max_point(maps[method][i], shape)
            axes[row, column].plot(point_col, point_row, marker="x", color="white", markersize=7, mew=2)
            hit = scores[method]["hit"][i]
            verdict = "no lesion" if np.isnan(hit) else ("hit" if hit >= 0.5 else "miss")
            auc = scores[method]["auc"][i]
            title = f"{LABELS[method]}\n{verdict}, del AUC {auc:.2f}" if row == 0 else f"{verdict}, {auc:.2f}"
            axes[row, column].set_title(title, fontsize=7)
        for column in range(1 + len(methods)):
            if item.has_lesion:
                axes[row, column].contour(item.mask, levels=[0.5], colors="lime", linewidths=0.8)
            axes[row, column].set_axis_off()
    figure.suptitle(
        f"Explanations of the {explained} class; green: lesion mask; x: the map's maximum (pointing game);\n"
        "del AUC: deletion area (lower is better)",
        fontsize=9,
    )
    # Room for the two-line title above the first row's three-line titles.
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.6 / figure.get_figheight()))
    _save(figure, path)


def write_curves(path: Path, summary: dict, explained: str = "predicted") -> None:
    figure = Figure(figsize=(6, 4.2))
    axes = figure.subplots()
    for method, values in summary.items():
        curve = values["mean_deletion_curve"]
        style = "--" if method in BASELINES else "-"
        axes.plot(
            np.linspace(0, 1, len(curve)),
            curve,
            style,
            label=f"{LABELS[method]} (AUC {values['deletion_auc']:.3f})",
        )
    axes.set_xlabel("fraction of patch-grid cells removed (most relevant first)")
    axes.set_ylabel(f"calibrated probability of the {explained} class")
    axes.set_title("Deletion curves (mean over slices; lower is better)")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path, dpi=120)


def _interval(result: dict | None) -> str:
    if result is None:
        return "(no lesion slices)"
    return f"{result['mean_difference']:+.3f} [{result['ci_low']:+.3f}, {result['ci_high']:+.3f}]"


def format_table(
    summary: dict, comparisons: dict, lesion_reference: dict | None = None, reliance: dict | None = None
) -> str:
    lines = [
        f"{'method':<28} | {'pointing game ↑':>15} | {'deletion AUC ↓':>14}",
        f"{'-' * 28}-+-{'-' * 15}-+-{'-' * 14}",
    ]
    for method, values in summary.items():
        lines.append(
            f"{LABELS[method]:<28} | {values['pointing_game']:>15.3f} | {values['deletion_auc']:>14.3f}"
        )
    first = next(iter(summary.values()))
    lines.append(
        f"(pointing game: {first['n_pointing_game']} lesion slices, mean of per-class hit rates; "
        f"deletion AUC: {first['n']} slices)"
    )
    if lesion_reference and lesion_reference["n"]:
        same_slices = ", ".join(
            f"{method} {values['deletion_auc_lesion_slices']:.3f}" for method, values in summary.items()
        )
        lines.append(
            f"reference, the lesion mask as the map ({lesion_reference['n']} lesion slices): deletion AUC "
            f"{lesion_reference['deletion_auc_lesion_slices']:.3f}; on the same slices: {same_slices}"
        )
    if reliance and reliance["n"]:
        per_class = ", ".join(
            f"{name} {values['probability_on_slice']:.2f} -> {values['probability_on_healthy_twin']:.2f}"
            for name, values in reliance["per_class"].items()
        )
        lines.append(
            f"does the prediction need the lesion? explained class' probability, slice -> its healthy twin "
            f"({reliance['n']} lesion slices): {per_class}"
        )
    lines.append("gain over each baseline, paired bootstrap 95% interval; 'yes' when it lies above 0:")
    for method, against in comparisons.items():
        for baseline, result in against.items():
            pointing_ok = "yes" if result["pointing_game_beats_baseline"] else "NO "
            deletion_ok = "yes" if result["deletion_auc_beats_baseline"] else "NO "
            pointing, deletion = result["pointing_game_gain"], result["deletion_auc_gain"]
            lines.append(
                f"  {method:<16} vs {baseline:<8}  pointing {pointing_ok} {_interval(pointing)}"
                f"   deletion {deletion_ok} {_interval(deletion)}"
            )
    return "\n".join(lines)


def _write_per_image(path: Path, slices, scores, targets, predicted, probabilities, class_names) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "relpath",
                "label",
                "predicted",
                "probability",
                "explained",
                "method",
                "hit",
                "hit_strict",
                "deletion_auc",
            ]
        )
        for i, item in enumerate(slices):
            for method, values in scores.items():
                hit, strict = values["hit"][i], values["hit_strict"][i]
                writer.writerow(
                    [
                        item.relpath,
                        item.label,
                        class_names[int(predicted[i])],
                        f"{probabilities[i]:.4f}",
                        class_names[int(targets[i])],
                        method,
                        "" if np.isnan(hit) else f"{hit:.3f}",
                        "" if np.isnan(strict) else f"{strict:.3f}",
                        f"{values['auc'][i]:.4f}",
                    ]
                )


def _json_safe(value):
    """NaN (a score with no slices to average) becomes null: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------------------------------------
# The command.


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    deletion_steps = ROAD_STEPS if args.steps is None and args.substrate == "road" else args.steps
    store, model_name, version = resolve_version(args.model, args.store)
    out = Path(args.out or OUTPUT_DIR / "explain-eval" / version)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="neurovit-explain-eval-") as scratch:
        local = store.fetch(model_name, version, Path(scratch) / "version")
        loaded = load_model(local / "model")
        split_path = local / "split.json"
        chosen, source = select_images(Path(args.data_dir), split_path if split_path.is_file() else None)
    slices = load_slices(chosen, loaded, args.max_per_class, Path(args.data_dir))
    if args.substrate == "healthy":
        # A slice without a lesion has nothing to restore (its curve would be flat for every map); planted
        # copies and other data have no twin.
        lesion_slices = [item for item in slices if item.has_lesion]
        slices = [item for item in lesion_slices if item.healthy_scan is not None]
        if not slices:
            raise DataError(
                "the healthy substrate needs the demo generator's lesion-free twin of each lesion slice; "
                f"none of the {len(lesion_slices)} lesion slices has one: not an unchanged demo dataset"
            )
        source += f"; healthy substrate: the {len(slices)} lesion slices with a twin"
    class_names = loaded.class_names
    grid = loaded.preprocessing.image_size // loaded.model.config.patch_size
    print(f"model {model_name}/{version} (T={loaded.info.temperature:.2f}); {source}")
    print(
        f"      {len(slices)} slices, {sum(s.has_lesion for s in slices)} with a lesion; "
        f"{grid}x{grid} patch grid; {torch.get_num_threads()} CPU threads",
        flush=True,
    )
    timings["load_s"] = time.perf_counter() - started

    inputs = to_tensor(np.stack([item.image for item in slices]), loaded.preprocessing)
    phase = time.perf_counter()
    true_classes = np.array([class_names.index(item.label) for item in slices])
    maps, targets, logits = compute_maps(
        loaded, inputs, args.batch_size, args.seed, true_classes if args.explain == "true" else None
    )
    timings["explain_s"] = time.perf_counter() - phase
    probabilities = torch.softmax(torch.as_tensor(logits) / loaded.info.temperature, dim=-1).numpy()
    predicted = probabilities.argmax(axis=1)
    predicted_probability = probabilities[np.arange(len(slices)), predicted]
    accuracy = float(np.mean(predicted == true_classes))
    print(
        f"      maps computed in {timings['explain_s']:.1f}s; accuracy on these slices {accuracy:.3f}",
        flush=True,
    )

    phase = time.perf_counter()
    deletion = Deletion.build(args.substrate, loaded, slices, inputs)
    scores = score(
        slices,
        deletion,
        maps,
        targets,
        loaded,
        tolerance=args.tolerance,
        steps=deletion_steps,
        batch_size=args.deletion_batch_size,
    )
    lesion_mask_reference = lesion_reference(
        slices,
        deletion,
        targets,
        loaded,
        grid,
        steps=deletion_steps,
        batch_size=args.deletion_batch_size,
    )
    reliance = lesion_reliance(slices, targets, probabilities, loaded)
    timings["score_s"] = time.perf_counter() - phase
    summary, comparisons = summarise(slices, scores, predicted, class_names, args.seed)

    phase = time.perf_counter()
    write_gallery(
        out / GALLERY_FILE,
        slices,
        maps,
        scores,
        predicted,
        predicted_probability,
        class_names,
        args.gallery_per_class,
        args.explain,
    )
    write_curves(out / CURVES_FILE, summary, args.explain)
    _write_per_image(
        out / PER_IMAGE_FILE, slices, scores, targets, predicted, predicted_probability, class_names
    )
    timings["figures_s"] = time.perf_counter() - phase
    timings["total_s"] = time.perf_counter() - started
    cells = grid * grid
    steps = cells if deletion_steps is None else deletion_steps
    document = {
        "model": model_name,
        "version": version,
        "store": str(args.store),
        "data_dir": str(Path(args.data_dir).resolve()),
        "images": source,
        "n_slices": len(slices),
        "accuracy_on_slices": accuracy,
        "methods": summary,
        "comparisons": comparisons,
        "lesion_mask_reference": lesion_mask_reference,
        "lesion_reliance": reliance,
        "settings": {
            "explained_class": args.explain,
            "rollout": {
                "head_fusion": ROLLOUT_HEAD_FUSION,
                "discard_ratio": ROLLOUT_DISCARD_RATIO,
                "start_layer": ROLLOUT_START_LAYER,
            },
            "gradient_rollout": {"start_layer": GRADIENT_ROLLOUT_START_LAYER},
            "temperature": loaded.info.temperature,
            "grid": grid,
            "pointing_game": {
                "resolution": "map upsampled bilinearly to the model input "
                f"({loaded.preprocessing.image_size} px); mask resized and padded like the image",
                "tolerance_px": args.tolerance,
                "aggregate": "mean of per-class hit rates over lesion slices (true class)",
                "ties": "scored in expectation (share of tied maxima that hit)",
            },
            "deletion": {
                "cells": cells,
                "steps": steps,
                "cells_per_step": cells / steps,
                "substrate": args.substrate,
                "order": "most relevant cell first, ties in raster order",
                "auc": "(sum - first/2 - last/2) / steps, as eclique/RISE",
                "lesion_mask_reference": "the lesion's share of each grid cell as the map; lesion slices",
            },
            "lesion_reliance": "explained class' calibrated probability on each lesion slice and on the demo "
            "generator's lesion-free twin of it (same slice, pose and scanner draws), scaled as any input; "
            "mean per class",
            "baselines": {
                "random": f"uniform random per slice, seed {args.seed}",
                "gaussian": f"centred isotropic Gaussian, sigma {grid / 4:g} cells",
            },
            "bootstrap": "paired, 2000 resamples of slices, 95% percentile interval",
        },
        "timings_s": {name: round(value, 2) for name, value in timings.items()},
    }
    (out / RESULTS_FILE).write_text(json.dumps(_json_safe(document), indent=2) + "\n")
    print(format_table(summary, comparisons, lesion_mask_reference, reliance))
    forwards = (len(slices) * len(maps) + lesion_mask_reference["n"]) * (steps + 1)
    print(
        f"timings: load {timings['load_s']:.1f}s, maps {timings['explain_s']:.1f}s, "
        f"scores {timings['score_s']:.1f}s ({forwards} deletion forwards), "
        f"figures {timings['figures_s']:.1f}s, total {timings['total_s']:.1f}s"
    )
    print(f"results: {out / RESULTS_FILE}\ngallery: {out / GALLERY_FILE}\ncurves:  {out / CURVES_FILE}")
    return document


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.eval_explain", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="latest", help="'latest', a version id, or a version folder / URI")
    parser.add_argument("--data-dir", type=Path, default=OUTPUT_DIR / "demo-data")
    parser.add_argument("--store", default=DEFAULT_STORE)
    parser.add_argument("--out", type=Path, help="default outputs/explain-eval/<version>")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_PX, help="pointing game, pixels")
    parser.add_argument("--steps", type=int, help="deletion steps (default: one patch-grid cell per step)")
    parser.add_argument(
        "--substrate",
        choices=SUBSTRATE_CHOICES,
        default="black",
        help="what removed cells become: black (the scan's background, default), the image mean, a blur, "
        f"ROAD's noisy linear imputation ({ROAD_STEPS} steps unless --steps), or (demo set, lesion slices "
        "only) the slice's healthy twin",
    )
    parser.add_argument(
        "--explain",
        choices=("predicted", "true"),
        default="predicted",
        help="the class the maps explain and deletion follows (default: the predicted one)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random baseline and bootstrap")
    parser.add_argument("--batch-size", type=int, default=32, help="images per explain() call")
    parser.add_argument("--deletion-batch-size", type=int, default=130, help="perturbed inputs per forward")
    parser.add_argument("--gallery-per-class", type=int, default=2)
    parser.add_argument("--max-per-class", type=int, help="evaluate at most this many slices per class")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run(args)
    except NeuroVitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
