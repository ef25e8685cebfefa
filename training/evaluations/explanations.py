"""Score NeuroViT's explanation maps against lesion masks: pointing game and deletion AUC vs three baselines.

``neurovit explain-eval [--model latest|<version>|<version URI>] [--data-dir outputs/demo-data]``
(``make eval-explain``) fetches a published version and takes the images of its test split (from the
version's ``split.json``), or every image of ``--data-dir`` when that folder is not the data the version
was trained on (a folder of masked slices such as real tumours outlined by radiologists: ``<class>/<id>.png``
beside ``<class>/<id>.mask.png``; the class comes from the folder). It computes the explainers' maps
(the served ``rollout`` and ``gradient_rollout``, the "heatmap"; ``gradcam``, ``hirescam`` and ``lrp``,
scored for comparison) and three baselines (a seeded uniform random map, a centred Gaussian on the patch
grid, and the centre peak: a map whose maximum is the centre pixel), and scores every map with the
measures of ``neurovit.explain_metrics``:

- pointing game (Zhang et al. 2018): does the map's maximum fall on the lesion? Played at the image's own
  resolution: the map is upsampled bilinearly onto the image (what the overlays show) and its maximum must
  lie within ``--tolerance`` pixels at 224 px (default 15, TorchRay's), scaled to the image's longer side,
  of the mask as drawn. Slices without a lesion (no mask file, or an empty one) are left out. The score is
  the mean of the per-class hit rates (as TorchRay), each class reported too; the strict variant
  (tolerance 0) is in the JSON.
- deletion AUC (Petsiuk et al. 2018, RISE): the temperature-calibrated probability of the explained class
  (without the version's confidence map: it recalibrates the top label only, and the class a deletion curve
  follows is not always the top one) as the map's most relevant part of the input is replaced, the same
  fraction at each step for every map (one patch-grid cell per step by default), by what ``--substrate`` names
  (comma-separated to score several in one run): black (the scan's background, default), ``mean`` or ``blur``,
  ``road`` (ROAD's noisy linear imputation of the removed cells from their surroundings), or ``healthy`` on
  the demo set (the healthy tissue of the slice's lesion-free twin, put back in the scan before the intensity
  scaling, see ``Deletion``; lesion slices only); the trapezoid area over the fraction removed, in [0, 1].
  Lower is better. Every slice counts, with or without a lesion.

The maps explain the predicted class and, separately, the true class (``--explained-class``: a wrong
answer's map, explained as the truth, still shows whether the model saw the lesion). Each explainer is
compared with each baseline on the same images (paired bootstrap 95% intervals of the difference), which is
what "better than the baseline" means here. A reference line gives the deletion AUC with the lesion mask
itself as the map (lesion slices only). A slice whose image or mask cannot be read, or whose mask is not
the image's size, is left out and counted; a folder without any lesion mask is refused, unless
``--without-masks`` asks for deletion alone (real scans without outlines). ``--split val`` takes the
version's validation split instead of its test split, so that an explainer's settings can be chosen
without reading the test slices (with ``--without-masks`` on brain-tumor-mri, which has no outlines).

Writes ``outputs/explain-eval/<version>/``: ``explain_eval.json`` (accuracy on the slices, per class; per
explained class and method: pointing game overall and per class, deletion per fill; the comparisons),
``per_image.csv``, ``gallery.png`` (the first slices of each class: the input with the lesion outline,
then each map's overlay with its maximum marked; ``gallery-true.png`` for the true class) and
``deletion_curves[-true][-<fill>].png``; and prints the tables.

A last line asks whether the model needs the lesion at all (``lesion_imputation``, any masked data): per
class, the explained class' probability on the slice, with its lesion imputed from the surrounding tissue
(ROAD's imputation), and with the same area imputed elsewhere in the head as a control. Where it barely
drops, the model reads that class from elsewhere, and a map cannot be both on the lesion and faithful. On
the demo set, whose generator can redraw every lesion slice without its lesion (same slice, pose and
scanner noise: ``neurovit.data.demo.healthy_twin``), another line does the same with that healthy twin.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from neurovit.calibration import apply_temperature
from neurovit.config import DEFAULT_STORE, MODEL_NAME, OUTPUT_DIR
from neurovit.data.demo import healthy_twin
from neurovit.data.imageio import read_image
from neurovit.data.masks import mask_on_input, read_mask
from neurovit.data.split import select_eval_images
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
    DEFAULT_TOLERANCE_PX,
    LESION_MARGIN,
    TOLERANCE_SIDE_PX,
    centre_map,
    control_region,
    deletion_auc,
    deletion_curves,
    gaussian_map,
    grown_lesion,
    lesion_hit,
    lesion_map,
    max_point,
    noisy_linear_imputation,
    paired_bootstrap,
    random_map,
    scaled_tolerance,
)
from neurovit.model import LoadedModel, load_model
from neurovit.preprocessing import (
    PreprocessConfig,
    black_input,
    canonicalise,
    resize_keep_aspect,
    to_tensor,
)
from neurovit.serving import EXPLANATIONS
from neurovit.store import resolve_version
from training.guide import GUIDE_FILE

log = logging.getLogger(__name__)

BASELINES = ("random", "gaussian", "centre")
ALL_METHODS = (*METHODS, *BASELINES)
SERVED_AS = {method: name for name, method in EXPLANATIONS.items()}  # what the service calls each map
LABELS = {
    **{method: f"{method} ({SERVED_AS.get(method, 'comparison')})" for method in METHODS},
    "random": "random map (baseline)",
    "gaussian": "centred Gaussian (baseline)",
    "centre": "centre peak (baseline)",
}
# Which class the maps explain and deletion follows: the model's answer, and separately the truth (a wrong
# answer's map, explained as the true class, still shows whether the model saw the lesion).
EXPLAINED_CLASSES = ("predicted", "true")
RESULTS_FILE = "explain_eval.json"
PER_IMAGE_FILE = "per_image.csv"
GALLERY_FILE = "gallery.png"
CURVES_FILE = "deletion_curves.png"
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
    mask: np.ndarray | None  # (H, W) bool in the model input's geometry; None without a mask file
    # Lesion slices of the demo set (None for other data): the slice's and its lesion-free twin's grey
    # levels at the input size before intensity scaling (float); the healthy deletion mixes them and scales
    # each result, the reliance line scales the twin alone, as any input.
    scan: np.ndarray | None = None
    healthy_scan: np.ndarray | None = None
    # The mask at the image's own resolution, where the pointing game is played (a small lesion can thin
    # out when the mask is shrunk to the model input).
    native_mask: np.ndarray | None = None

    @property
    def lesion_mask(self) -> np.ndarray | None:
        """The mask the pointing game uses: the image's own when known, else the model input's."""
        return self.native_mask if self.native_mask is not None else self.mask

    @property
    def has_lesion(self) -> bool:
        mask = self.lesion_mask
        return mask is not None and bool(mask.any())


# ------------------------------------------------------------------------------------------------------------
# Inputs.


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_mask(image_path: Path, size: int) -> np.ndarray | None:
    """The lesion mask beside ``image_path``, resized and padded as ``canonicalise`` does the image."""
    native = read_mask(image_path)
    return None if native is None else mask_on_input(native, size)


def load_slices(
    chosen: list[tuple[Path, str, str]],
    loaded: LoadedModel,
    per_class: int | None,
    data_dir: Path | None = None,
    skipped: dict[str, list[str]] | None = None,
) -> list[Slice]:
    """The chosen images as ``Slice``s, at most ``per_class`` per class; lesion slices of a demo dataset in
    ``data_dir`` also get their healthy twin (``neurovit.data.demo.healthy_twin``).

    A slice whose image or mask cannot be read, or whose mask is not the image's size, is left out and its
    path listed under the reason in ``skipped`` (when given): one bad file never ends the evaluation.
    """
    unknown = sorted({label for _, _, label in chosen} - set(loaded.class_names))
    if unknown:
        raise DataError(f"classes {unknown} are unknown to the model ({loaded.class_names})")
    size = loaded.preprocessing.image_size
    skipped = {} if skipped is None else skipped
    slices, taken = [], dict.fromkeys(loaded.class_names, 0)
    for path, relpath, label in sorted(chosen, key=lambda item: item[1]):
        if per_class is not None and taken[label] >= per_class:
            continue
        try:
            pixels = read_image(path).pixels
            native = read_mask(path)
        except NeuroVitError as error:
            log.warning("left out %s: %s", relpath, error)
            skipped.setdefault("unreadable image or mask", []).append(relpath)
            continue
        if native is not None and native.shape != pixels.shape:
            log.warning("left out %s: mask %s, image %s", relpath, native.shape, pixels.shape)
            skipped.setdefault("mask size differs from the image's", []).append(relpath)
            continue
        image = canonicalise(pixels, loaded.preprocessing)
        mask = None if native is None else mask_on_input(native, size)
        twin = None
        if data_dir is not None and native is not None and native.any():
            twin = healthy_twin(data_dir, relpath)
        scans = (None, None)
        if twin is not None:
            twin = twin / np.float32(255.0)  # the grey levels read_image gives the slice
            scans = (resize_keep_aspect(pixels, size), resize_keep_aspect(twin, size))
        slices.append(Slice(relpath, label, image, mask, *scans, native_mask=native))
        taken[label] += 1
    if not slices:
        raise DataError(
            "no images to evaluate" + (f" (left out: {_skip_counts(skipped)})" if skipped else "")
        )
    return slices


def guide_hashes(path: Path) -> set[str]:
    """Content hashes of the masked slices a version was guided with (``training.guide``); none without."""
    if not path.is_file():
        return set()
    return {entry["sha256"] for entry in json.loads(path.read_text())["slices"]}


def leave_out_guides(
    chosen: list[tuple[Path, str, str]], guided: set[str], skipped: dict[str, list[str]]
) -> list[tuple[Path, str, str]]:
    """``chosen`` without the slices the version was trained on with their masks (listed in ``skipped``):
    a map is only scored on slices whose mask it never saw."""
    if not guided:
        return chosen
    kept = []
    for item in chosen:
        if _sha256(item[0]) in guided:
            skipped.setdefault("used to guide training (guide.json)", []).append(item[1])
        else:
            kept.append(item)
    return kept


def _skip_counts(skipped: dict[str, list[str]]) -> str:
    return ", ".join(f"{len(paths)} {reason}" for reason, paths in skipped.items())


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
    # At the input's resolution, so its maximum is the centre pixel itself, whatever the grid.
    maps["centre"] = np.repeat(centre_map(inputs.shape[-1])[None], count, axis=0)
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
            return cls(inputs, black_input(loaded.preprocessing))
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


def pointing_scores(
    slices: list[Slice], maps: dict[str, np.ndarray], tolerance: float
) -> dict[str, dict[str, np.ndarray]]:
    """Per method, per slice: ``hit`` and ``hit_strict`` (tolerance 0), NaN for a slice without a lesion.

    Played at the image's own resolution: each map goes back onto the image (``on_image``) and its
    maximum is compared with the mask as drawn, ``tolerance`` (px at 224 px) scaled to the image's size
    (``neurovit.explain_metrics.lesion_hit``).
    """
    count = len(slices)
    scores = {
        method: {"hit": np.full(count, np.nan), "hit_strict": np.full(count, np.nan)} for method in maps
    }
    for i, item in enumerate(slices):
        if not item.has_lesion:
            continue
        mask = item.lesion_mask
        for method, method_maps in maps.items():
            scores[method]["hit"][i] = lesion_hit(method_maps[i], mask, tolerance)
            scores[method]["hit_strict"][i] = lesion_hit(method_maps[i], mask, 0.0)
    return scores


def deletion_scores(
    slices: list[Slice],
    deletion: Deletion,
    maps: dict[str, np.ndarray],
    targets: np.ndarray,
    loaded: LoadedModel,
    *,
    steps: int,
    batch_size: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Per method: ``curve`` ``(N, steps + 1)`` and ``auc`` ``(N,)``. Every map removes the same fractions
    of the input at each step (``steps``), whatever its own resolution: a token-grid map whole cells, a
    pixel map its most relevant pixels."""
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for method, method_maps in maps.items():
        by_shape.setdefault(method_maps.shape[1:], []).append(method)
    curves: dict[str, list[np.ndarray]] = {method: [] for method in maps}
    count = len(slices)
    with torch.inference_mode():
        for i in range(count):
            model_fn = deletion.model_fn(loaded, int(targets[i]))
            for methods in by_shape.values():
                stacked = np.stack([maps[method][i] for method in methods])
                found = deletion_curves(
                    model_fn, deletion.sources[i], stacked, steps, deletion.fill(i), batch_size
                )
                for method, curve in zip(methods, found, strict=True):
                    curves[method].append(curve)
            if (i + 1) % 25 == 0 or i + 1 == count:
                print(f"      deletion: {i + 1}/{count} slices", flush=True)
    result = {}
    for method, rows in curves.items():
        stacked_curves = np.stack(rows)
        result[method] = {"curve": stacked_curves, "auc": np.asarray(deletion_auc(stacked_curves))}
    return result


def lesion_reference(
    slices: list[Slice],
    deletion: Deletion,
    targets: np.ndarray,
    loaded: LoadedModel,
    grid: int,
    *,
    steps: int | None,
    batch_size: int,
    scored: dict[str, np.ndarray],
    seed: int,
) -> dict:
    """Mean deletion AUC over the lesion slices with the lesion mask as the map (then the cells around it,
    ``lesion_map``), their count, its paired gain over each baseline's AUC on the same slices, and each
    map's paired gain over it (``scored``: every scored method's AUCs, per slice).

    Not an explainer: it says how far deletion can fall on this model when the lesion goes first, so the
    explainers' deletion scores can be read against it as well as against the baselines. Where the mask
    itself does not beat a baseline, finding the lesion is not enough to win deletion there: the model also
    reads its answer from elsewhere, or the fill's own artefact decides, and a map that wins does so by how
    it orders what lies beyond the lesion. A map level with the mask (its gain's interval across zero) does
    about as well on deletion as the lesion's own outline.
    """
    chosen, aucs = [], []
    with torch.inference_mode():
        for i, item in enumerate(slices):
            if item.mask is not None and item.mask.any():  # the lesion as the model input holds it
                model_fn = deletion.model_fn(loaded, int(targets[i]))
                reference = lesion_map(item.mask, grid)[None]
                source, fill = deletion.sources[i], deletion.fill(i)
                curve = deletion_curves(model_fn, source, reference, steps, fill, batch_size)[0]
                chosen.append(i)
                aucs.append(deletion_auc(curve))
    over_baselines, maps_over_it = {}, {}
    if aucs:
        outline = np.asarray(aucs)
        for name, method_aucs in scored.items():
            on_lesions = np.asarray(method_aucs)[chosen]
            if name in BASELINES:
                over_baselines[name] = deletion_verdict(on_lesions, outline, seed)
            else:
                maps_over_it[name] = deletion_verdict(outline, on_lesions, seed)
    return {
        "deletion_auc_lesion_slices": float(np.mean(aucs)) if aucs else float("nan"),
        "n": len(aucs),
        "deletion_vs_baseline": over_baselines,
        "maps_vs_lesion_mask": maps_over_it,
    }


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
    twin_probabilities = apply_temperature(logits.numpy(), loaded.info.temperature)
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


@dataclass(frozen=True)
class ImputedLesions:
    """Every lesion slice's calibrated probabilities with its lesion imputed and with the control region
    imputed instead (``impute_lesions``): computed once, whichever classes the maps explain."""

    chosen: list[int]  # indices of the lesion slices in the evaluated slices
    without_lesion: np.ndarray  # (n, C)
    without_control: np.ndarray  # (n, C); the slice's own where it has no control
    has_control: np.ndarray  # (n,) bool


def impute_lesions(slices: list[Slice], loaded: LoadedModel, seed: int = 0) -> ImputedLesions:
    """Per lesion slice, the lesion (``grown_lesion``) imputed from its surroundings as ROAD imputes
    (``noisy_linear_imputation``), and, as a control, a region of the same shape moved elsewhere in the
    head (``control_region``); the model's calibrated probabilities on both. Slices whose head leaves no
    room for the control have none (``has_control``)."""
    chosen = [i for i, item in enumerate(slices) if item.mask is not None and item.mask.any()]
    if not chosen:
        empty = np.zeros((0, len(loaded.class_names)))
        return ImputedLesions([], empty, empty, np.zeros(0, dtype=bool))
    inputs = to_tensor(np.stack([slices[i].image for i in chosen]), loaded.preprocessing)
    rng = np.random.default_rng(seed)
    without_lesion, without_control, has_control = [], [], []
    for k, i in enumerate(chosen):
        lesion = grown_lesion(slices[i].mask)
        control = control_region(lesion, slices[i].image, rng)
        has_control.append(control is not None)
        without_lesion.append(noisy_linear_imputation(inputs[k], lesion, rng=seed))
        without_control.append(
            inputs[k] if control is None else noisy_linear_imputation(inputs[k], control, rng=seed)
        )

    def calibrated(batch: list[torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            parts = [loaded.model(part).logits.float() for part in torch.stack(batch).split(64)]
        return apply_temperature(torch.cat(parts).numpy(), loaded.info.temperature)

    return ImputedLesions(
        chosen, calibrated(without_lesion), calibrated(without_control), np.array(has_control)
    )


def lesion_imputation(
    imputed: ImputedLesions,
    slices: list[Slice],
    targets: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
) -> dict:
    """Does the answer need the lesion, on any masked data? Per class over the lesion slices
    (``impute_lesions``): the explained class' calibrated probability on the slice, without its lesion and
    without the control region, and the share still answered as the true class. A probability that stays
    up without the lesion while the same area elsewhere costs as much says the class is read from
    something other than the lesion; then no map can be both on the lesion and faithful, and deletion
    against the centred Gaussian is lost on the model's reliance, not on the map. Slices whose head leaves
    no room for the control are counted apart.
    """
    chosen, has_control = imputed.chosen, imputed.has_control
    if not chosen:
        return {"n": 0, "n_without_control": 0, "per_class": {}}
    rows = np.arange(len(chosen))
    explained = targets[chosen]
    truth = np.array([class_names.index(slices[i].label) for i in chosen])
    labels = np.array([slices[i].label for i in chosen])
    per_class = {}
    for name in class_names:
        picked = labels == name
        if not picked.any():
            continue
        controlled = picked & has_control
        control = imputed.without_control[rows, explained][controlled]
        per_class[name] = {
            "n": int(picked.sum()),
            "probability_on_slice": float(probabilities[chosen, explained][picked].mean()),
            "probability_lesion_imputed": float(imputed.without_lesion[rows, explained][picked].mean()),
            "probability_control_imputed": float(control.mean()) if controlled.any() else float("nan"),
            "n_with_control": int(controlled.sum()),
            "accuracy_on_slice": float((probabilities[chosen].argmax(1) == truth)[picked].mean()),
            "accuracy_lesion_imputed": float((imputed.without_lesion.argmax(1) == truth)[picked].mean()),
        }
    return {"n": len(chosen), "n_without_control": int((~has_control).sum()), "per_class": per_class}


def _macro(values: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[float, dict[str, float]]:
    """Mean of the per-class means over the classes that have values (NaNs left out)."""
    per_class = {}
    for name in classes:
        chosen = values[(labels == name) & ~np.isnan(values)]
        if chosen.size:
            per_class[name] = float(chosen.mean())
    return (float(np.mean(list(per_class.values()))) if per_class else float("nan")), per_class


def deletion_verdict(baseline_aucs: np.ndarray, aucs: np.ndarray, seed: int) -> dict:
    """The paired gain of a map's deletion AUCs over a baseline's on the same slices (lower AUC is better, so
    a positive gain favours the map) and whether it beats the baseline: the whole interval above zero."""
    gain = paired_bootstrap(baseline_aucs, aucs, seed=seed)
    return {"gain": gain, "beats_baseline": gain["ci_low"] > 0}


def summarise(
    slices: list[Slice],
    pointing: dict[str, dict[str, np.ndarray]],
    deletions: dict[str, dict[str, dict[str, np.ndarray]]],
    predicted_classes: np.ndarray,
    class_names: list[str],
    seed: int,
) -> tuple[dict, dict]:
    """Per-method summary and the explainer-vs-baseline comparisons; ``deletions`` per substrate."""
    labels = np.array([item.label for item in slices])
    predicted = np.array([class_names[c] for c in predicted_classes])
    correct = labels == predicted
    lesion = np.array([item.has_lesion for item in slices])
    lesion_classes = [name for name in class_names if (lesion & (labels == name)).any()]
    summary = {}
    for method, hits in pointing.items():
        macro, per_class = _macro(hits["hit"], labels, lesion_classes)
        strict, _ = _macro(hits["hit_strict"], labels, lesion_classes)
        on_correct, _ = _macro(np.where(correct, hits["hit"], np.nan), labels, lesion_classes)
        summary[method] = {
            "pointing_game": macro,
            "n": len(slices),
            "n_pointing_game": int(lesion.sum()),
            "pointing_game_micro": float(np.nanmean(hits["hit"])) if lesion.any() else float("nan"),
            "pointing_game_strict": strict,
            "pointing_game_correct_predictions": on_correct,
            "n_pointing_game_correct_predictions": int((lesion & correct).sum()),
            "pointing_game_per_class": per_class,
            "deletion": {},
        }
        for substrate, scores in deletions.items():
            auc = scores[method]["auc"]
            summary[method]["deletion"][substrate] = {
                "auc": float(auc.mean()),
                "auc_per_class": {
                    name: float(auc[labels == name].mean()) for name in class_names if (labels == name).any()
                },
                "auc_lesion_slices": float(auc[lesion].mean()) if lesion.any() else float("nan"),
                "mean_curve": [round(float(v), 5) for v in scores[method]["curve"].mean(axis=0)],
            }
    comparisons: dict[str, dict] = {}
    for method in METHODS:
        comparisons[method] = {}
        for baseline in BASELINES:
            # Pointing: hit(method) - hit(baseline) per lesion slice (micro); deletion:
            # auc(baseline) - auc(method) per slice. Positive = the explainer is better; "beats" needs
            # the whole interval above zero.
            gain = (
                paired_bootstrap(
                    pointing[method]["hit"][lesion], pointing[baseline]["hit"][lesion], seed=seed
                )
                if lesion.any()
                else None
            )
            deletion = {
                substrate: deletion_verdict(scores[baseline]["auc"], scores[method]["auc"], seed)
                for substrate, scores in deletions.items()
            }
            comparisons[method][baseline] = {
                "pointing_game_gain": gain,
                "pointing_game_beats_baseline": gain is not None and gain["ci_low"] > 0,
                "deletion": deletion,
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
    hits: dict[str, np.ndarray],
    aucs: dict[str, np.ndarray],
    predicted_classes: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    per_class: int,
    explained: str,
) -> None:
    """Rows of slices (input with the mask outline, then each map's overlay with its maximum marked and
    its hit or miss), ``hits`` and ``aucs`` per method as scored."""
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
            hit = hits[method][i]
            verdict = "no lesion" if np.isnan(hit) else ("hit" if hit >= 0.5 else "miss")
            auc = aucs[method][i]
            title = f"{LABELS[method]}\n{verdict}, del AUC {auc:.2f}" if row == 0 else f"{verdict}, {auc:.2f}"
            axes[row, column].set_title(title, fontsize=7)
        for column in range(1 + len(methods)):
            if item.mask is not None and item.mask.any():
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


def write_curves(path: Path, summary: dict, substrate: str, explained: str = "predicted") -> None:
    figure = Figure(figsize=(6, 4.2))
    axes = figure.subplots()
    for method, values in summary.items():
        deletion = values["deletion"][substrate]
        curve = deletion["mean_curve"]
        style = "--" if method in BASELINES else "-"
        axes.plot(
            np.linspace(0, 1, len(curve)), curve, style, label=f"{LABELS[method]} (AUC {deletion['auc']:.3f})"
        )
    axes.set_xlabel("fraction of the input removed (most relevant first)")
    axes.set_ylabel(f"calibrated probability of the {explained} class")
    axes.set_title(f"Deletion curves, {substrate} fill (mean over slices; lower is better)")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path, dpi=120)


def _interval(result: dict | None) -> str:
    if result is None:
        return "(no lesion slices)"
    return f"{result['mean_difference']:+.3f} [{result['ci_low']:+.3f}, {result['ci_high']:+.3f}]"


def _deletion_cell(substrate: str, verdict: dict) -> str:
    beats = "yes" if verdict["beats_baseline"] else "NO "
    return f"   deletion {substrate} {beats} {_interval(verdict['gain'])}"


def format_table(
    summary: dict,
    comparisons: dict,
    explained: str,
    tolerance: str,
    lesion_reference: dict | None = None,
    reliance: dict | None = None,
    imputation: dict | None = None,
) -> str:
    """The table of one explained class: pointing game overall and per lesion class (when any slice has a
    lesion mask), deletion per fill."""
    first = next(iter(summary.values()))
    pointing = first["n_pointing_game"] > 0
    classes = list(first["pointing_game_per_class"])
    substrates = list(first["deletion"])
    head = f"{'map':<28}"
    if pointing:
        head += f" | {'pointing ↑':>10} | " + " | ".join(f"{name[:10]:>10}" for name in classes)
    head += "".join(f" | {'del ' + substrate + ' ↓':>12}" for substrate in substrates)
    lines = [f"explained class: {explained}", head, "-" * len(head)]
    for method, values in summary.items():
        per_class = values["pointing_game_per_class"]
        row = f"{LABELS[method]:<28}"
        if pointing:
            row += f" | {values['pointing_game']:>10.3f} | "
            row += " | ".join(f"{per_class.get(name, float('nan')):>10.3f}" for name in classes)
        row += "".join(f" | {values['deletion'][substrate]['auc']:>12.3f}" for substrate in substrates)
        lines.append(row)
    if pointing:
        lines.append(
            f"(pointing game: {first['n_pointing_game']} lesion slices, mean of per-class hit rates, "
            f"tolerance {tolerance}; deletion AUC: {first['n']} slices)"
        )
    else:
        lines.append(f"(no lesion masks: no pointing game; deletion AUC: {first['n']} slices)")
    for substrate, reference in (lesion_reference or {}).items():
        if reference["n"]:
            same_slices = ", ".join(
                f"{method} {values['deletion'][substrate]['auc_lesion_slices']:.3f}"
                for method, values in summary.items()
            )
            lines.append(
                f"reference, the lesion mask as the map, then outward ({reference['n']} lesion slices, "
                f"{substrate} fill): "
                f"deletion AUC {reference['deletion_auc_lesion_slices']:.3f}; "
                f"on the same slices: {same_slices}"
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
    if imputation and imputation["n"]:
        per_class = ", ".join(
            f"{name} {values['probability_on_slice']:.2f} -> {values['probability_lesion_imputed']:.2f} "
            f"(control {values['probability_control_imputed']:.2f}; "
            f"accuracy {values['accuracy_on_slice']:.2f} -> {values['accuracy_lesion_imputed']:.2f})"
            for name, values in imputation["per_class"].items()
        )
        lines.append(
            f"does the answer need the lesion? explained class' probability, slice -> lesion imputed "
            f"({imputation['n']} lesion slices; the same area imputed elsewhere as control): {per_class}"
        )
    lines.append("gain over each baseline, paired bootstrap 95% interval; 'yes' when it lies above 0:")
    for method, against in comparisons.items():
        for baseline, result in against.items():
            pointing_ok = "yes" if result["pointing_game_beats_baseline"] else "NO "
            deletion = "".join(
                _deletion_cell(substrate, verdict) for substrate, verdict in result["deletion"].items()
            )
            played = f"  pointing {pointing_ok} {_interval(result['pointing_game_gain'])}" if pointing else ""
            lines.append(f"  {method:<16} vs {baseline:<8}{played}{deletion}")
    # The same gains for the lesion mask as the map (does removing the lesion first win deletion at all?),
    # then each map's over the mask (as good as knowing where the lesion is? 'yes': the map is faster).
    against_mask = [("lesion mask", baseline, "deletion_vs_baseline", baseline) for baseline in BASELINES]
    against_mask += [(method, "mask", "maps_vs_lesion_mask", method) for method in comparisons]
    for label, against, key, name in against_mask:
        deletion = "".join(
            _deletion_cell(substrate, reference[key][name])
            for substrate, reference in (lesion_reference or {}).items()
            if reference["n"]
        )
        if deletion:
            lines.append(f"  {label:<16} vs {against:<8}{deletion}")
    return "\n".join(lines)


def _write_per_image(path: Path, slices, results, predicted, probabilities, class_names) -> None:
    """One row per slice, explained class and method: hit, strict hit and each fill's deletion AUC."""
    substrates = list(next(iter(results.values()))["deletions"])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "relpath",
                "label",
                "predicted",
                "probability",
                "explained_as",
                "explained",
                "method",
                "hit",
                "hit_strict",
                *(f"deletion_auc_{substrate}" for substrate in substrates),
            ]
        )
        for explained_as, result in results.items():
            for i, item in enumerate(slices):
                for method, hits in result["pointing"].items():
                    hit, strict = hits["hit"][i], hits["hit_strict"][i]
                    writer.writerow(
                        [
                            item.relpath,
                            item.label,
                            class_names[int(predicted[i])],
                            f"{probabilities[i]:.4f}",
                            explained_as,
                            class_names[int(result["targets"][i])],
                            method,
                            "" if np.isnan(hit) else f"{hit:.3f}",
                            "" if np.isnan(strict) else f"{strict:.3f}",
                            *(
                                f"{result['deletions'][substrate][method]['auc'][i]:.4f}"
                                for substrate in substrates
                            ),
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


def output_name(stem: str, explained: str, substrate: str | None = None, suffix: str = ".png") -> str:
    """``gallery.png`` / ``deletion_curves.png`` for the predicted class and black cells, the others named
    after what differs: ``gallery-true.png``, ``deletion_curves-road.png``, ``deletion_curves-true-road.png``.
    """
    parts = [stem]
    if explained != "predicted":
        parts.append(explained)
    if substrate is not None and substrate != "black":
        parts.append(substrate)
    return "-".join(parts) + suffix


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated list of ``allowed`` names, in the given order, each once."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in allowed]
    if unknown or not chosen:
        raise ValueError(f"{what} must be a comma-separated list of {allowed}, got {text!r}")
    return list(dict.fromkeys(chosen))


def substrates_arg(text: str) -> list[str]:
    return _choices(text, SUBSTRATE_CHOICES, "--substrate")


def explained_arg(text: str) -> list[str]:
    return _choices(text, EXPLAINED_CLASSES, "--explained-class")


# ------------------------------------------------------------------------------------------------------------
# The command.


def _steps_for(substrate: str, steps: int | None, cells: int) -> int:
    """Deletion steps: as asked; else one token-grid cell per step, or ``ROAD_STEPS`` for ROAD (a solve
    per step)."""
    if steps is not None:
        return steps
    return ROAD_STEPS if substrate == "road" else cells


def _lesion_slices_with_twins(slices: list[Slice]) -> list[Slice]:
    """The healthy fill's slices: a slice without a lesion has nothing to restore (its curve would be flat
    for every map); planted copies and other data have no twin."""
    lesion_slices = [item for item in slices if item.has_lesion]
    chosen = [item for item in lesion_slices if item.healthy_scan is not None]
    if not chosen:
        raise DataError(
            "the healthy substrate needs the demo generator's lesion-free twin of each lesion slice; "
            f"none of the {len(lesion_slices)} lesion slices has one: not an unchanged demo dataset"
        )
    return chosen


def _accuracy_per_class(labels: list[str], predicted: np.ndarray, class_names: list[str]) -> dict:
    labels_array = np.array(labels)
    return {
        name: {
            "n": int((labels_array == name).sum()),
            "accuracy": float((predicted == i)[labels_array == name].mean()),
        }
        for i, name in enumerate(class_names)
        if (labels_array == name).any()
    }


@dataclass(frozen=True)
class ExplainEvalOptions:
    """What ``run`` scores and how (the command line's options, module docstring).

    Args:
        model: ``latest``, a version id, or a version folder / URI (``neurovit.store.resolve_version``).
        data_dir: the version's data (its test split is scored) or a folder of masked slices.
        store: the store ``latest`` and a version id refer to.
        out: default ``outputs/explain-eval/<version>``.
        tolerance: pointing game, pixels at ``TOLERANCE_SIDE_PX``, scaled to each slice's size.
        steps: deletion steps (default: one patch-grid cell per step; ``ROAD_STEPS`` for road).
        substrate: what removed cells become, one or more of ``SUBSTRATE_CHOICES``.
        explained_class: the classes the maps explain, some of ``EXPLAINED_CLASSES``.
        seed: random baseline and bootstrap.
        batch_size: images per explain() call; deletion_batch_size: perturbed inputs per forward.
        gallery_per_class: slices per class in the gallery; max_per_class: at most this many scored per class.
        split: the part of the version's split.json scored when data_dir is the version's data: ``test``,
            or ``val`` to choose an explainer's settings without reading the test slices.
        without_masks: score deletion on slices that have no lesion masks (a split of real scans without
            outlines); the pointing game and the lesion references then have nothing to score. Without it
            such a folder is an error.
    """

    model: str = "latest"
    data_dir: Path = OUTPUT_DIR / "demo-data"
    store: str = DEFAULT_STORE
    out: Path | None = None
    tolerance: float = DEFAULT_TOLERANCE_PX
    steps: int | None = None
    substrate: list[str] = field(default_factory=lambda: ["black"])
    explained_class: list[str] = field(default_factory=lambda: list(EXPLAINED_CLASSES))
    seed: int = 0
    batch_size: int = 32
    deletion_batch_size: int = 130
    gallery_per_class: int = 2
    max_per_class: int | None = None
    split: str = "test"
    without_masks: bool = False


def run(args: ExplainEvalOptions) -> dict:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    store, model_name, version = resolve_version(args.model, args.store, model=MODEL_NAME)
    out = Path(args.out or OUTPUT_DIR / "explain-eval" / version)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="neurovit-explain-eval-") as scratch:
        local = store.fetch(model_name, version, Path(scratch) / "version")
        loaded = load_model(local / "model")
        chosen, source = select_eval_images(Path(args.data_dir), local / "split.json", args.split)
        guided = guide_hashes(local / GUIDE_FILE)
    skipped: dict[str, list[str]] = {}
    chosen = leave_out_guides(chosen, guided, skipped)
    slices = load_slices(chosen, loaded, args.max_per_class, Path(args.data_dir), skipped)
    if "healthy" in args.substrate:
        slices = _lesion_slices_with_twins(slices)
        source += f"; healthy substrate: the {len(slices)} lesion slices with a twin"
    if not any(item.has_lesion for item in slices):
        if not args.without_masks:
            raise DataError(
                f"none of the {len(slices)} slices of {args.data_dir} has a lesion mask (<id>.mask.png "
                "beside <id>.png, not empty): the pointing game has nothing to score (--without-masks "
                "scores deletion alone)"
            )
        source += "; no lesion masks: deletion alone"
    class_names = loaded.class_names
    grid = loaded.preprocessing.image_size // loaded.model.config.patch_size
    sides = sorted({max(item.lesion_mask.shape) for item in slices if item.has_lesion})
    scaled = ", ".join(
        f"{scaled_tolerance((side, side), args.tolerance):.1f} px at {side} px" for side in sides
    )
    tolerance = f"{args.tolerance:g} px at {TOLERANCE_SIDE_PX} px, scaled to each slice's own size ({scaled})"
    print(f"model {model_name}/{version} (T={loaded.info.temperature:.2f}); {source}")
    if skipped:
        print(f"      left out: {_skip_counts(skipped)} (e.g. {next(iter(skipped.values()))[0]})")
    print(
        f"      {len(slices)} slices, {sum(s.has_lesion for s in slices)} with a lesion; "
        f"{grid}x{grid} patch grid; {torch.get_num_threads()} CPU threads",
        flush=True,
    )
    timings["load_s"] = time.perf_counter() - started

    inputs = to_tensor(np.stack([item.image for item in slices]), loaded.preprocessing)
    true_classes = np.array([class_names.index(item.label) for item in slices])
    results: dict[str, dict] = {}
    probabilities = None
    imputed = impute_lesions(slices, loaded, args.seed)  # the same for every explained class
    for explained in args.explained_class:
        phase = time.perf_counter()
        maps, targets, logits = compute_maps(
            loaded, inputs, args.batch_size, args.seed, true_classes if explained == "true" else None
        )
        timings[f"maps_{explained}_s"] = time.perf_counter() - phase
        if probabilities is None:
            probabilities = apply_temperature(logits, loaded.info.temperature)
            predicted = probabilities.argmax(axis=1)
            served = loaded.info.probabilities(logits)  # what the service says: the temperature, then the map
            predicted_probability = served[np.arange(len(slices)), predicted]
            accuracy = float(np.mean(predicted == true_classes))
            print(f"      accuracy on these slices {accuracy:.3f}", flush=True)
        phase = time.perf_counter()
        pointing = pointing_scores(slices, maps, args.tolerance)
        deletions, references = {}, {}
        for substrate in args.substrate:
            steps = _steps_for(substrate, args.steps, grid * grid)
            print(
                f"      explained as {explained}: deletion with {substrate} fill, {steps} steps", flush=True
            )
            deletion = Deletion.build(substrate, loaded, slices, inputs)
            settings = {"steps": steps, "batch_size": args.deletion_batch_size}
            deletions[substrate] = deletion_scores(slices, deletion, maps, targets, loaded, **settings)
            scored = {name: scores["auc"] for name, scores in deletions[substrate].items()}
            references[substrate] = lesion_reference(
                slices, deletion, targets, loaded, grid, **settings, scored=scored, seed=args.seed
            )
        reliance = lesion_reliance(slices, targets, probabilities, loaded)
        imputation = lesion_imputation(imputed, slices, targets, probabilities, class_names)
        timings[f"scores_{explained}_s"] = time.perf_counter() - phase
        summary, comparisons = summarise(slices, pointing, deletions, predicted, class_names, args.seed)
        results[explained] = {
            "maps": maps,
            "targets": targets,
            "pointing": pointing,
            "deletions": deletions,
            "summary": summary,
            "comparisons": comparisons,
            "references": references,
            "reliance": reliance,
            "imputation": imputation,
        }

    phase = time.perf_counter()
    for explained, result in results.items():
        hits = {method: values["hit"] for method, values in result["pointing"].items()}
        first = next(iter(result["deletions"].values()))
        aucs = {method: values["auc"] for method, values in first.items()}
        write_gallery(
            out / output_name("gallery", explained),
            slices,
            result["maps"],
            hits,
            aucs,
            predicted,
            predicted_probability,
            class_names,
            args.gallery_per_class,
            explained,
        )
        for substrate in result["deletions"]:
            write_curves(
                out / output_name("deletion_curves", explained, substrate),
                result["summary"],
                substrate,
                explained,
            )
    _write_per_image(out / PER_IMAGE_FILE, slices, results, predicted, predicted_probability, class_names)
    timings["figures_s"] = time.perf_counter() - phase
    timings["total_s"] = time.perf_counter() - started
    document = {
        "model": model_name,
        "version": version,
        "store": str(args.store),
        "data_dir": str(Path(args.data_dir).resolve()),
        "images": source,
        "n_slices": len(slices),
        "left_out": {reason: {"n": len(paths), "relpaths": paths} for reason, paths in skipped.items()},
        "accuracy_on_slices": accuracy,
        "accuracy_per_class": _accuracy_per_class([item.label for item in slices], predicted, class_names),
        "explained": {
            explained: {
                "methods": result["summary"],
                "comparisons": result["comparisons"],
                "lesion_mask_reference": result["references"],
                "lesion_reliance": result["reliance"],
                "lesion_imputation": result["imputation"],
            }
            for explained, result in results.items()
        },
        "settings": {
            "explained_classes": list(results),
            "rollout": {
                "head_fusion": ROLLOUT_HEAD_FUSION,
                "discard_ratio": ROLLOUT_DISCARD_RATIO,
                "start_layer": ROLLOUT_START_LAYER,
            },
            "gradient_rollout": {"start_layer": GRADIENT_ROLLOUT_START_LAYER},
            "temperature": loaded.info.temperature,
            "grid": grid,
            "pointing_game": {
                "resolution": "the image's own: each map upsampled bilinearly onto the image (the model "
                "input's padding cropped off), the mask as drawn",
                "tolerance_px_at_224": args.tolerance,
                "tolerance": tolerance,
                "aggregate": "mean of per-class hit rates over lesion slices (true class)",
                "ties": "scored in expectation (share of tied maxima that hit)",
            },
            "deletion": {
                substrate: {"steps": _steps_for(substrate, args.steps, grid * grid)}
                for substrate in args.substrate
            }
            | {
                "cells": grid * grid,
                "order": "most relevant first (cells of the map's own grid, pixels of a pixel map), ties in "
                "raster order; the same fraction of the input removed at each step for every map",
                "auc": "(sum - first/2 - last/2) / steps, as eclique/RISE",
                "lesion_mask_reference": "the lesion's share of each grid cell as the map, then the cells "
                "nearest to it; lesion slices, with its paired gain over each baseline on them and each "
                "map's paired gain over it (maps_vs_lesion_mask)",
            },
            "lesion_reliance": "explained class' calibrated probability on each lesion slice and on the demo "
            "generator's lesion-free twin of it (same slice, pose and scanner draws), scaled as any input; "
            "mean per class",
            "lesion_imputation": f"every lesion slice with its lesion grown by {LESION_MARGIN:.0%} of "
            "the side imputed as ROAD does, and with the same shape moved elsewhere in the head (control): "
            "the explained class' calibrated probability and the share answered as the true class; mean per "
            "class",
            "baselines": {
                "random": f"uniform random per slice, seed {args.seed}",
                "gaussian": f"centred isotropic Gaussian, sigma {grid / 4:g} cells",
                "centre": "peaks at the centre pixel of the input, falling with the distance to it",
            },
            "bootstrap": "paired, 2000 resamples of slices, 95% percentile interval",
        },
        "timings_s": {name: round(value, 2) for name, value in timings.items()},
    }
    (out / RESULTS_FILE).write_text(json.dumps(_json_safe(document), indent=2) + "\n")
    per_class = ", ".join(
        f"{name} {v['accuracy']:.3f} ({v['n']})" for name, v in document["accuracy_per_class"].items()
    )
    print(f"accuracy on these slices: {accuracy:.3f} ({per_class})")
    for explained, result in results.items():
        print(
            format_table(
                result["summary"],
                result["comparisons"],
                explained,
                tolerance,
                result["references"],
                result["reliance"],
                result["imputation"],
            )
        )
    print("timings: " + ", ".join(f"{name} {value:.1f}" for name, value in timings.items()))
    print(f"results: {out / RESULTS_FILE}\ngalleries and curves: {out}")
    return document
