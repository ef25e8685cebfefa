"""The dataset report: both files written, corrupt files listed, duplicates and cross-split leaks named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neurovit.data.analysis import REPORT_HTML, REPORT_JSON, analyze, neighbour_correlation, scan
from neurovit.data.layout import discover


@pytest.fixture(scope="module")
def leaky_dataset(tmp_path_factory, write_slice) -> Path:
    """Pre-split data with one exact and one near leak, two corrupt files and one pure-noise image."""
    root = tmp_path_factory.mktemp("leaky") / "data"
    seed = 100
    for split, count in (("Training", 4), ("Testing", 2)):
        for label in ("glioma", "notumor"):
            for number in range(count):
                write_slice(root / split / label / f"{number}.png", seed=seed, size=64)
                seed += 1
    write_slice(root / "Testing" / "glioma" / "leak.jpg", seed=100, size=64, fmt="JPEG", quality=70)
    shutil.copyfile(root / "Training" / "notumor" / "0.png", root / "Testing" / "notumor" / "copy.png")
    (root / "Training" / "glioma" / "broken.png").write_text("this is not an image")
    truncated = (root / "Training" / "notumor" / "1.png").read_bytes()
    (root / "Training" / "notumor" / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    noise = (np.random.default_rng(0).random((64, 64)) > 0.5).astype(np.uint8) * 255
    Image.fromarray(noise).save(root / "Training" / "notumor" / "noise.png")
    return root


@pytest.fixture(scope="module")
def analysed(leaky_dataset) -> tuple[dict, Path]:
    """The report of ``leaky_dataset`` and the folder it was written to (analysed once per module)."""
    out = leaky_dataset.parent / "report"
    return analyze(leaky_dataset, out, workers=1), out


def test_analyze_writes_both_reports(analysed):
    report, out = analysed

    assert json.loads((out / REPORT_JSON).read_text()) == report
    page = (out / REPORT_HTML).read_text()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 3
    assert "<script" not in page and "http" not in page  # self-contained

    assert report["dataset"]["layout"] == "pre-split"
    assert report["dataset"]["files"] == 17 and report["dataset"]["corrupt"] == 2
    assert report["counts"]["per_split"] == {"train": 11, "test": 6}
    assert report["counts"]["per_split_class"]["test"] == {"glioma": 3, "notumor": 3}
    assert report["image_sizes"] == {"64x64": 15}
    assert report["modes"] == {"L": 15}
    assert set(report["intensity"]) == {"glioma", "notumor"}
    assert report["intensity"]["glioma"]["images"] == 7
    assert 0.0 < report["intensity"]["glioma"]["percentiles"]["p50"] < 1.0


def test_corrupt_files_are_listed_with_reasons(analysed):
    report, out = analysed
    reasons = {entry["relpath"]: entry["reason"] for entry in report["corrupt"]}
    assert set(reasons) == {"Training/glioma/broken.png", "Training/notumor/cut.png"}
    assert "text" in reasons["Training/glioma/broken.png"]
    assert "truncated" in reasons["Training/notumor/cut.png"]
    page = (out / REPORT_HTML).read_text()
    assert "Training/notumor/cut.png" in page


def test_cross_split_leaks_are_named(analysed):
    report, out = analysed
    leaks = {tuple(group["members"]): group["kind"] for group in report["leaks"]["cross_split_groups"]}
    assert leaks == {
        ("Testing/glioma/leak.jpg", "Training/glioma/0.png"): "near",
        ("Testing/notumor/copy.png", "Training/notumor/0.png"): "exact",
    }
    assert report["leaks"]["groups"] == 2 and report["leaks"]["images"] == 4
    assert report["leaks"]["by_splits"] == {"test+train": 2}
    assert all(group["is_leak"] for group in report["duplicates"]["groups"])
    assert report["near_duplicate_threshold"] == report["duplicates"]["near_threshold"]
    page = (out / REPORT_HTML).read_text()
    assert page.count("<tr class='leak'>") == 2 and "Testing/glioma/leak.jpg" in page


def test_noise_images_are_flagged_as_suspect(analysed):
    report, out = analysed
    assert report["suspect"]["noise_like"] == ["Training/notumor/noise.png"]
    assert report["suspect"]["noise_like_per_class"] == {"notumor": 1}


def test_neighbour_correlation_separates_slices_from_noise(make_slice):
    noise = np.random.default_rng(1).random((64, 64))
    assert neighbour_correlation(make_slice(1) / 255.0) > 0.5
    assert abs(neighbour_correlation(noise)) < 0.1
    assert neighbour_correlation(np.zeros((8, 8))) is None


def test_class_folders_have_no_leaks(class_folders, tmp_path):
    report = analyze(class_folders(per_class=3), tmp_path / "report", workers=1)
    assert report["dataset"]["splits"] == [] and report["counts"]["per_split"] == {}
    assert report["leaks"]["groups"] == 0 and report["corrupt"] == []
    assert report["counts"]["per_class"] == {"glioma": 3, "notumor": 3}


def test_process_pool_gives_the_same_fingerprints(class_folders):
    index = discover(class_folders(per_class=6))
    assert scan(index, workers=2) == scan(index, workers=1)


def test_a_file_name_that_is_not_utf8_is_analysed_reported_and_split(class_folders, tmp_path):
    import os

    from neurovit.data.split import load_split, split_dataset

    root = class_folders(per_class=8)
    odd = root / "glioma" / os.fsdecode(b"\xff-scan.png")  # Latin-1 era name: not UTF-8
    shutil.copyfile(root / "glioma" / "img_000.png", odd)
    (root / "notumor" / os.fsdecode(b"broken-\xe9.png")).write_bytes(b"not an image")
    report = analyze(root, tmp_path / "report", workers=1)
    assert [entry["relpath"] for entry in report["corrupt"]] == [os.fsdecode(b"notumor/broken-\xe9.png")]
    page = (tmp_path / "report" / REPORT_HTML).read_text(encoding="utf-8")
    assert "broken-\ufffd.png" in page  # shown with a replacement character, not dropped
    json.loads((tmp_path / "report" / REPORT_JSON).read_text())

    plan = split_dataset(root, workers=1)
    assert odd.relative_to(root).as_posix() in {entry.relpath for entry in plan.entries} or plan.dropped
    loaded = load_split(plan.write(tmp_path / "split.json"))
    assert loaded.fingerprint == plan.fingerprint
