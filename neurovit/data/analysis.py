"""The dataset report: decode every image once, then describe the collection and its problems.

``scan`` decodes each file in a process pool and keeps a small fingerprint per image (size, mode,
intensity, hashes, file checksum, or the reason it failed); the split step reuses these fingerprints.
``write_report`` turns them into ``report.json`` (for machines and the pipeline) and a self-contained
``report.html`` (for people: plots embedded as PNG, corrupt files and duplicate groups listed, leaks
across splits highlighted). ``analyze`` does all three from a data folder.

Nothing from an image's content goes to the logs: counts only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import multiprocessing
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from neurovit import __version__
from neurovit.data.duplicates import (
    NEAR_THRESHOLD,
    PHASH_SIZE,
    DuplicateGroup,
    find_duplicates,
    image_hashes,
)
from neurovit.data.imageio import decode_image, read_image
from neurovit.data.layout import SPLIT_ORDER, DatasetIndex, ImageRecord, discover
from neurovit.errors import UnreadableImageError
from neurovit.progress import progress_bar

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

_PERCENTILES = (5, 25, 50, 75, 95)

# Suspect images. A slice's neighbouring pixels correlate strongly (>= 0.5 on every real slice we have);
# pure noise images, which some public collections contain (hundreds of them in one class of the shared
# brain-tumor-mri set), correlate near 0: the gap between 0.1 and 0.3 is empty there.
NOISE_CORRELATION = 0.2
FLAT_STD = 1.0 / 255.0
_SAMPLES_PER_CLASS = 6
_HTML_MAX_ROWS = 500  # the JSON lists everything; the page stays readable


@dataclass
class ImageFingerprint:
    """What the analysis and the split need to know about one file, computed by one decode.

    ``error`` is the reason the file could not be decoded; the image fields are then None.
    ``file_sha256`` is the checksum of the file's bytes (the split records it for every entry).
    """

    relpath: str
    label: str
    split: str | None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    bit_depth: int | None = None
    is_colour: bool | None = None
    mean: float | None = None
    std: float | None = None
    neighbour_correlation: float | None = None
    exact_hash: str | None = None
    phash: str | None = None
    file_sha256: str | None = None
    file_size: int | None = None

    @property
    def readable(self) -> bool:
        return self.error is None


def fingerprint_file(record: ImageRecord) -> ImageFingerprint:
    """Decode one file and summarise it; a failure becomes ``error``, never an exception."""
    fingerprint = ImageFingerprint(record.relpath, record.label, record.split)
    try:
        data = record.path.read_bytes()
    except OSError as error:
        fingerprint.error = f"cannot read the file: {error.strerror or error}"
        return fingerprint
    fingerprint.file_sha256 = hashlib.sha256(data).hexdigest()
    fingerprint.file_size = len(data)
    try:
        image = decode_image(data)
    except UnreadableImageError as error:
        fingerprint.error = str(error)
        return fingerprint
    except Exception as error:  # a decoder bug must not stop a 10,000-file scan; it is reported instead
        fingerprint.error = f"unexpected decoder failure: {type(error).__name__}"
        return fingerprint
    pixels = image.pixels
    fingerprint.width, fingerprint.height = image.width, image.height
    fingerprint.mode, fingerprint.format = image.mode, image.format
    fingerprint.bit_depth, fingerprint.is_colour = image.bit_depth, image.is_colour
    fingerprint.mean, fingerprint.std = float(pixels.mean()), float(pixels.std())
    fingerprint.neighbour_correlation = neighbour_correlation(pixels)
    fingerprint.exact_hash, fingerprint.phash = image_hashes(pixels)
    return fingerprint


def neighbour_correlation(pixels: np.ndarray) -> float | None:
    """Mean Pearson correlation of horizontally and vertically adjacent pixels; None if undefined."""
    values = []
    for first, second in ((pixels[:, :-1], pixels[:, 1:]), (pixels[:-1, :], pixels[1:, :])):
        if first.size < 2:
            continue
        first = first.astype(np.float64) - first.mean()
        second = second.astype(np.float64) - second.mean()
        denominator = np.sqrt(np.sum(first * first) * np.sum(second * second))
        if denominator > 0:
            values.append(float(np.sum(first * second) / denominator))
    return round(float(np.mean(values)), 4) if values else None


def scan(index: DatasetIndex, *, workers: int = 2) -> list[ImageFingerprint]:
    """Fingerprint every record of ``index`` (same order), decoding each file once.

    ``workers`` > 1 uses a process pool. It starts through a fork server, so a caller that already
    runs threads (torch does) cannot deadlock the workers. A bar counts the files on a terminal
    (``neurovit.progress``); the summary is the caller's line.
    """
    records = index.records
    bar = {"total": len(records), "desc": "analysing", "unit": "file", "leave": False, "mininterval": 1.0}
    if workers <= 1 or len(records) < 2 * workers:
        fingerprints = [fingerprint_file(record) for record in progress_bar(records, **bar)]
    else:
        chunksize = max(1, min(64, len(records) // (workers * 8)))
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = pool.map(fingerprint_file, records, chunksize=chunksize)
            fingerprints = list(progress_bar(results, **bar))
    corrupt = sum(not fingerprint.readable for fingerprint in fingerprints)
    logger.info(
        "scanned %d files: %d readable, %d corrupt", len(fingerprints), len(fingerprints) - corrupt, corrupt
    )
    return fingerprints


def analyze(
    data_dir: str | Path, out_dir: str | Path, *, workers: int = 2, near_threshold: int = NEAR_THRESHOLD
) -> dict:
    """Discover, scan and report on ``data_dir``; writes report.json and report.html to ``out_dir``."""
    index = discover(data_dir)
    fingerprints = scan(index, workers=workers)
    return write_report(index, fingerprints, out_dir, near_threshold=near_threshold)


def write_report(
    index: DatasetIndex,
    fingerprints: Sequence[ImageFingerprint],
    out_dir: str | Path,
    *,
    near_threshold: int = NEAR_THRESHOLD,
) -> dict:
    """Build the report from fingerprints, write both files and return the report dict."""
    groups = find_duplicates(fingerprints, threshold=near_threshold)
    report = build_report(index, fingerprints, groups, near_threshold=near_threshold)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out / REPORT_HTML).write_text(displayable(render_html(report, index, fingerprints)), encoding="utf-8")
    logger.info("wrote %s and %s to %s", REPORT_JSON, REPORT_HTML, out)
    return report


# --- the report dict ----------------------------------------------------------------------------------


def displayable(text: str) -> str:
    """``text`` with the undecodable bytes of non-UTF-8 file names (Python keeps them as lone surrogates)
    shown as U+FFFD, so it can be written as UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def build_report(
    index: DatasetIndex,
    fingerprints: Sequence[ImageFingerprint],
    groups: Sequence[DuplicateGroup],
    *,
    near_threshold: int = NEAR_THRESHOLD,
) -> dict:
    """The JSON-ready report: counts, sizes, intensities, corrupt files, duplicates and leaks."""
    readable = [fingerprint for fingerprint in fingerprints if fingerprint.readable]
    label_of = {fingerprint.relpath: fingerprint.label for fingerprint in fingerprints}
    group_dicts = []
    for group in groups:
        entry = asdict(group)
        entry["labels"] = sorted({label_of[member] for member in group.members})
        group_dicts.append(entry)
    leaks = [entry for entry in group_dicts if entry["is_leak"]]
    leak_kinds = Counter("+".join(entry["splits"]) for entry in leaks)

    per_split_class: dict[str, Counter] = defaultdict(Counter)
    for fingerprint in fingerprints:
        if fingerprint.split is not None:
            per_split_class[fingerprint.split][fingerprint.label] += 1

    return {
        "neurovit_version": __version__,
        "dataset": {
            "root": str(index.root),
            "layout": index.layout,
            "classes": index.classes,
            "splits": index.splits,
            "files": len(fingerprints),
            "readable": len(readable),
            "corrupt": len(fingerprints) - len(readable),
        },
        "counts": {
            "per_class": _ordered_counts(Counter(f.label for f in fingerprints), index.classes),
            "per_split": _ordered_counts(
                Counter(f.split for f in fingerprints if f.split), list(SPLIT_ORDER)
            ),
            "per_split_class": {
                split: _ordered_counts(per_split_class[split], index.classes)
                for split in SPLIT_ORDER
                if split in per_split_class
            },
            "readable_per_class": _ordered_counts(Counter(f.label for f in readable), index.classes),
        },
        "image_sizes": dict(Counter(f"{f.width}x{f.height}" for f in readable).most_common()),
        "modes": dict(Counter(str(f.mode) for f in readable).most_common()),
        "formats": dict(Counter(str(f.format) for f in readable).most_common()),
        "bit_depths": {str(depth): n for depth, n in Counter(f.bit_depth for f in readable).most_common()},
        "colour_images": sum(bool(f.is_colour) for f in readable),
        "intensity": {
            label: _intensity_stats([f for f in readable if f.label == label]) for label in index.classes
        },
        "suspect": {
            "noise_like": [f.relpath for f in readable if _is_noise(f)],
            "flat": [f.relpath for f in readable if f.std is not None and f.std < FLAT_STD],
            "noise_like_per_class": _ordered_counts(
                Counter(f.label for f in readable if _is_noise(f)), index.classes
            ),
            "rule": f"noise_like: neighbour pixel correlation < {NOISE_CORRELATION}; flat: std < 1/255",
        },
        "corrupt": [
            {"relpath": f.relpath, "label": f.label, "split": f.split, "reason": f.error}
            for f in fingerprints
            if not f.readable
        ],
        "duplicates": {
            "method": "exact: sha256 of the uint8 image; near: ImageHash phash, Hamming distance",
            "hash_size": PHASH_SIZE,
            "near_threshold": near_threshold,
            "exact_groups": sum(group.kind == "exact" for group in groups),
            "near_groups": sum(group.kind == "near" for group in groups),
            "label_conflicts": sum(len(entry["labels"]) > 1 for entry in group_dicts),
            "groups": group_dicts,
        },
        "leaks": {
            "groups": len(leaks),
            "images": len({member for entry in leaks for member in entry["members"]}),
            "by_splits": dict(sorted(leak_kinds.items())),
            "cross_split_groups": leaks,
        },
        "near_duplicate_threshold": near_threshold,
    }


def _is_noise(fingerprint: ImageFingerprint) -> bool:
    correlation = fingerprint.neighbour_correlation
    return correlation is not None and correlation < NOISE_CORRELATION and (fingerprint.std or 0) >= FLAT_STD


def suspect_reason(fingerprint: ImageFingerprint) -> str | None:
    """Why a readable image cannot be an MRI slice (pure noise, or one flat value); None when it can be."""
    if not fingerprint.readable:
        return None
    if _is_noise(fingerprint):
        correlation = fingerprint.neighbour_correlation
        return f"noise-like: neighbour pixel correlation {correlation} < {NOISE_CORRELATION}"
    if fingerprint.std is not None and fingerprint.std < FLAT_STD:
        return "flat: a single intensity"
    return None


def _ordered_counts(counts: Counter, order: Sequence[str]) -> dict[str, int]:
    return {key: counts[key] for key in order if counts[key]}


def _intensity_stats(fingerprints: Sequence[ImageFingerprint]) -> dict:
    """Statistics of per-image mean intensity (in [0, 1]) over one class."""
    if not fingerprints:
        return {"images": 0}
    means = np.array([f.mean for f in fingerprints], dtype=np.float64)
    stds = np.array([f.std for f in fingerprints], dtype=np.float64)
    return {
        "images": len(fingerprints),
        "mean": round(float(means.mean()), 4),
        "std": round(float(means.std()), 4),
        "mean_image_std": round(float(stds.mean()), 4),
        "percentiles": {
            f"p{p}": round(float(v), 4)
            for p, v in zip(_PERCENTILES, np.percentile(means, _PERCENTILES), strict=True)
        },
    }


# --- the HTML page ------------------------------------------------------------------------------------


def render_html(report: dict, index: DatasetIndex, fingerprints: Sequence[ImageFingerprint]) -> str:
    """A self-contained page: summary, plots as embedded PNGs, tables of corrupt files and duplicates."""
    dataset, duplicates, leaks = report["dataset"], report["duplicates"], report["leaks"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>NeuroViT dataset report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>NeuroViT dataset report</h1>",
        "<p class='note'>Research tool only: not for diagnosis.</p>",
        _table(
            ["root", "layout", "classes", "splits", "files", "readable", "corrupt", "near threshold"],
            [
                [
                    dataset["root"],
                    dataset["layout"],
                    ", ".join(dataset["classes"]),
                    ", ".join(dataset["splits"]) or "none",
                    dataset["files"],
                    dataset["readable"],
                    dataset["corrupt"],
                    f"{duplicates['near_threshold']} of {duplicates['hash_size'] ** 2} bits",
                ]
            ],
        ),
        "<h2>Images per class and split</h2>",
        _img(_counts_figure(report)),
        "<h2>Intensity per class</h2>",
        "<p>Distribution of each image's mean intensity (decoded to [0, 1]).</p>",
        _img(_intensity_figure(index.classes, fingerprints)),
        _table(
            ["class", "images", "mean", "std", "p5", "p50", "p95"],
            [
                [label, s.get("images", 0), s.get("mean", ""), s.get("std", "")]
                + [s.get("percentiles", {}).get(p, "") for p in ("p5", "p50", "p95")]
                for label, s in report["intensity"].items()
            ],
        ),
        "<h2>Image sizes and modes</h2>",
        _table(["size", "images"], list(report["image_sizes"].items())[:20]),
        _table(["mode", "images"], list(report["modes"].items())),
        "<h2>Samples per class</h2>",
        _img(_samples_figure(index, fingerprints)),
        _suspect_section(report["suspect"]),
        f"<h2>Corrupt files ({dataset['corrupt']})</h2>",
        _table(
            ["file", "class", "split", "reason"],
            [
                [c["relpath"], c["label"], c["split"] or "", c["reason"]]
                for c in report["corrupt"][:_HTML_MAX_ROWS]
            ],
        )
        if report["corrupt"]
        else "<p>None.</p>",
        _more(len(report["corrupt"])),
        f"<h2>Leaks across splits ({leaks['groups']} groups, {leaks['images']} images)</h2>",
        "<p class='leak'>These images are the same picture in more than one split: evaluation on them "
        "measures memory, not generalisation.</p>"
        if leaks["groups"]
        else "<p>None.</p>",
        f"<h2>Duplicate groups ({duplicates['exact_groups']} exact, {duplicates['near_groups']} near)</h2>",
        _duplicates_table(duplicates["groups"]),
        _more(len(duplicates["groups"])),
        "</body></html>",
    ]
    return "\n".join(parts)


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px;vertical-align:top}"
    "th{background:#eee}tr.leak td{background:#fdd}.leak{color:#a00;font-weight:bold}.note{color:#666}"
    "img{max-width:100%}"
)


def _suspect_section(suspect: dict) -> str:
    noise, flat = suspect["noise_like"], suspect["flat"]
    if not noise and not flat:
        return "<h2>Suspect images</h2><p>None (no noise-like or flat images).</p>"
    per_class = ", ".join(f"{label}: {count}" for label, count in suspect["noise_like_per_class"].items())
    return (
        f"<h2>Suspect images ({len(noise)} noise-like, {len(flat)} flat)</h2>"
        f"<p class='leak'>Noise-like images per class: {html.escape(per_class) or 'none'}. "
        "If one class holds most of them, a model can learn 'noise means this class': "
        "remove them before training.</p>"
        f"<p class='note'>{html.escape(suspect['rule'])}</p>"
        + _table(
            ["file", "kind"],
            [[name, "noise-like"] for name in noise[:50]] + [[name, "flat"] for name in flat[:50]],
        )
        + _more(len(noise) + len(flat), shown=100)
    )


def _duplicates_table(groups: list[dict]) -> str:
    if not groups:
        return "<p>None.</p>"
    ordered = sorted(groups, key=lambda group: not group["is_leak"])  # leaks first
    rows = []
    for group in ordered[:_HTML_MAX_ROWS]:
        cells = [
            group["kind"],
            "LEAK" if group["is_leak"] else "",
            ", ".join(group["splits"]),
            ", ".join(group["labels"]),
            "<br>".join(html.escape(member) for member in group["members"]),
        ]
        row_class = " class='leak'" if group["is_leak"] else ""
        rows.append(
            f"<tr{row_class}>"
            + "".join(f"<td>{c if i == 4 else html.escape(str(c))}</td>" for i, c in enumerate(cells))
            + "</tr>"
        )
    header = "".join(f"<th>{name}</th>" for name in ("kind", "leak", "splits", "classes", "files"))
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(name))}</th>" for name in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _more(count: int, shown: int = _HTML_MAX_ROWS) -> str:
    return f"<p class='note'>Showing {shown} of {count}; report.json lists all.</p>" if count > shown else ""


def _img(png: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def _figure(width: float, height: float):
    # The object-oriented Agg API: no pyplot, so the caller's matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _counts_figure(report: dict) -> bytes:
    classes = report["dataset"]["classes"]
    per_split = report["counts"]["per_split_class"] or {"all": report["counts"]["per_class"]}
    figure = _figure(max(5.0, 1.2 * len(classes) + 2), 3.2)
    axes = figure.add_subplot()
    width = 0.8 / len(per_split)
    positions = np.arange(len(classes))
    for offset, (split, counts) in enumerate(per_split.items()):
        axes.bar(positions + offset * width, [counts.get(label, 0) for label in classes], width, label=split)
    axes.set_xticks(positions + width * (len(per_split) - 1) / 2, classes)
    axes.set_ylabel("files")
    axes.legend()
    return _png(figure)


def _intensity_figure(classes: list[str], fingerprints: Sequence[ImageFingerprint]) -> bytes:
    figure = _figure(6.5, 3.2)
    axes = figure.add_subplot()
    bins = np.linspace(0.0, 1.0, 51)
    for label in classes:
        means = [f.mean for f in fingerprints if f.readable and f.label == label]
        if means:
            axes.hist(means, bins=bins, histtype="step", density=True, label=label, linewidth=1.5)
    axes.set_xlabel("mean intensity of an image")
    axes.set_ylabel("density")
    axes.legend()
    return _png(figure)


def _samples_figure(index: DatasetIndex, fingerprints: Sequence[ImageFingerprint]) -> bytes:
    """A few readable images per class (seeded choice), decoded again: a handful, not the dataset."""
    rng = np.random.default_rng(0)
    path_of = {record.relpath: record.path for record in index.records}
    figure = _figure(1.6 * _SAMPLES_PER_CLASS, 1.7 * len(index.classes))
    for row, label in enumerate(index.classes):
        candidates = [f.relpath for f in fingerprints if f.readable and f.label == label]
        chosen = sorted(
            rng.choice(len(candidates), size=min(_SAMPLES_PER_CLASS, len(candidates)), replace=False)
        )
        for column, choice in enumerate(chosen):
            axes = figure.add_subplot(
                len(index.classes), _SAMPLES_PER_CLASS, row * _SAMPLES_PER_CLASS + column + 1
            )
            try:
                axes.imshow(read_image(path_of[candidates[choice]]).pixels, cmap="gray", vmin=0.0, vmax=1.0)
            except UnreadableImageError:  # changed on disk since the scan
                pass
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(label)
    return _png(figure)


__all__ = [
    "REPORT_HTML",
    "REPORT_JSON",
    "ImageFingerprint",
    "analyze",
    "build_report",
    "fingerprint_file",
    "render_html",
    "scan",
    "write_report",
]
