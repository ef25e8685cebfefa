"""How well the OOD flag separates brain MRI from everything else (``make eval-ood``).

``neurovit ood-eval [--model latest|<version>|<URI>] [--data-dir outputs/demo-data]`` fetches a
published version (checksums verified) and sends two sets through the same path the service uses
(``Predictor.prepare`` then ``predict``; the images as encoded bytes):
- MRI: the version's held-out test slices under ``--data-dir`` (every image there when the data no longer
  matches the version's split), which the threshold never saw;
- not MRI: photographs, noise and other pictures (``training.evaluations.ood_samples``), the files of
  ``--data-dir`` that the version's analysis found not to be MRI (the split left them out), and every image of
  ``--non-mri-dir`` if given.
Goals: MRI flagged at most 5%, each non-MRI group flagged at least 95%. Writes ``ood_eval.json`` and
``ood_scores.png`` (score histograms per group, with the threshold) to ``outputs/ood-eval/<version>/`` and
prints the table.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neurovit.config import DEFAULT_STORE, MODEL_NAME, OUTPUT_DIR
from neurovit.data.split import select_eval_images
from neurovit.errors import DataError
from neurovit.serving import ImageRequest, InvalidInput, Predictor
from neurovit.store import resolve_version
from training.evaluations.ood_samples import non_mri_samples

MRI_GOAL, NON_MRI_GOAL = 0.05, 0.95
RESULTS_FILE, PLOT_FILE = "ood_eval.json", "ood_scores.png"


def scores(predictor: Predictor, images: list[bytes], batch_size: int = 32) -> np.ndarray:
    """OOD score of each encoded image, through the serving path; NaN for an image the service refuses."""
    result = np.full(len(images), np.nan)
    for start in range(0, len(images), batch_size):
        prepared, places = [], []
        for i, data in enumerate(images[start : start + batch_size], start):
            try:
                prepared.append(predictor.prepare(ImageRequest(data)))
                places.append(i)
            except InvalidInput:
                continue
        for i, answer in zip(places, predictor.predict(prepared), strict=True):
            result[i] = answer["ood"]["score"]
    return result


def flagged_by_analysis(report_path: Path, data_dir: Path) -> list[Path]:
    """Files of ``data_dir`` that the version's analysis found not to be MRI (pure noise, flat)."""
    if not report_path.is_file():
        return []
    suspect = json.loads(report_path.read_text()).get("suspect", {})
    relpaths = [*suspect.get("noise_like", []), *suspect.get("flat", [])]
    return [data_dir / relpath for relpath in relpaths if (data_dir / relpath).is_file()]


def summarise(group_scores: dict[str, np.ndarray], threshold: float) -> dict[str, dict]:
    summary = {}
    for group, values in group_scores.items():
        answered = values[~np.isnan(values)]
        mri = group.startswith("mri")
        flagged = float(np.mean(answered > threshold)) if answered.size else float("nan")
        summary[group] = {
            "images": int(values.size),
            "refused": int(np.isnan(values).sum()),
            "flagged_rate": round(flagged, 4),
            "median_score": round(float(np.median(answered)), 3) if answered.size else None,
            "goal": f"<= {MRI_GOAL:.0%}" if mri else f">= {NON_MRI_GOAL:.0%}",
            "meets_goal": bool(flagged <= MRI_GOAL) if mri else bool(flagged >= NON_MRI_GOAL),
        }
    return summary


def plot(group_scores: dict[str, np.ndarray], threshold: float, path: Path) -> None:
    figure = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    finite = np.concatenate([v[~np.isnan(v)] for v in group_scores.values()])
    bins = np.linspace(0, np.quantile(finite, 0.99) * 1.05, 50)
    for group, values in group_scores.items():
        axes.hist(
            np.clip(values[~np.isnan(values)], 0, bins[-1]), bins=bins, alpha=0.5, label=group, density=True
        )
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    axes.set_xlabel("OOD score (normalised Mahalanobis distance, max over two layers)")
    axes.set_ylabel("density")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def format_table(summary: dict[str, dict], threshold: float) -> str:
    lines = [
        f"OOD flag (threshold {threshold:.3f})",
        f"{'set':<24}{'images':>8}{'flagged':>10}{'median':>9}  goal",
    ]
    for group, row in summary.items():
        mark = "ok" if row["meets_goal"] else "MISSED"
        lines.append(
            f"{group:<24}{row['images']:>8}{row['flagged_rate']:>10.1%}{row['median_score'] or 0:>9.2f}  "
            f"{row['goal']} {mark}"
        )
    return "\n".join(lines)


def run(
    model: str = "latest",
    data_dir: Path = OUTPUT_DIR / "demo-data",
    store: str = DEFAULT_STORE,
    out: Path | None = None,
    non_mri_dir: Path | None = None,
) -> dict:
    """Score ``model``'s held-out MRI in ``data_dir`` and the non-MRI sets (module docstring); prints the
    table, writes the JSON and the plot to ``out`` (default ``outputs/ood-eval/<version>``)."""
    store_, model_name, version = resolve_version(model, store, model=MODEL_NAME)
    out = Path(out or OUTPUT_DIR / "ood-eval" / version)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="neurovit-ood-eval-") as scratch:
        local = store_.fetch(model_name, version, Path(scratch) / "version")
        predictor = Predictor.load(local / "model", model_name, version)
        chosen, source = select_eval_images(Path(data_dir), local / "split.json")  # no split file: all images
        suspects = flagged_by_analysis(local / "analysis" / "report.json", Path(data_dir))
    if predictor.ood_scorer is None:
        raise DataError(f"{model_name}/{version} was published without an OOD scorer: retrain to get one")
    threshold = float(predictor.reference.ood_threshold)
    print(f"model {model_name}/{version}; MRI: {source}", flush=True)

    group_scores = {"mri (held-out)": scores(predictor, [path.read_bytes() for path, _, _ in chosen])}
    samples = non_mri_samples()
    for group in dict.fromkeys(sample.group for sample in samples):
        group_scores[group] = scores(predictor, [s.png for s in samples if s.group == group])
    if suspects:  # the dataset's own non-MRI files, which the split left out of training
        group_scores["dataset noise (analysis)"] = scores(predictor, [path.read_bytes() for path in suspects])
    if non_mri_dir:
        files = sorted(path for path in Path(non_mri_dir).rglob("*") if path.is_file())
        if not files:
            raise DataError(f"--non-mri-dir {non_mri_dir} holds no files")
        group_scores["--non-mri-dir"] = scores(predictor, [path.read_bytes() for path in files])
    non_mri = np.concatenate([v for k, v in group_scores.items() if not k.startswith("mri")])
    group_scores_all = {**group_scores, "all non-MRI": non_mri}

    summary = summarise(group_scores_all, threshold)
    document = {
        "model": {"name": model_name, "version": version},
        "threshold": threshold,
        "target_fpr": predictor.reference.ood_target_fpr,
        "mri_source": source,
        "summary": summary,
    }
    (out / RESULTS_FILE).write_text(json.dumps(document, indent=2) + "\n")
    plot(group_scores, threshold, out / PLOT_FILE)
    print(format_table(summary, threshold))
    print(f"results: {out / RESULTS_FILE}\nplot:    {out / PLOT_FILE}")
    return document
