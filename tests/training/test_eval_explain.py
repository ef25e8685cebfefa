"""`neurovit explain-eval` (training/evaluations/explanations.py) end to end on a tiny random model: masks
through the image geometry, bad masks left out and counted, every method scored and written, lesion
reliance against the healthy twins and against the lesion imputed (any masked data)."""

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from neurovit.confidence_map import ConfidenceMap
from neurovit.data.demo import DEMO_CLASSES, generate_demo_dataset
from neurovit.data.split import SplitEntry, SplitPlan
from neurovit.model import LoadedModel, ModelConfig, ModelInfo, build_model, save_model
from neurovit.preprocessing import PreprocessConfig, canonicalise, to_tensor
from neurovit.store import LocalStore
from training.cli import main as neurovit
from training.evaluations.explanations import (
    ROAD_STEPS,
    Slice,
    impute_lesions,
    lesion_imputation,
    lesion_reliance,
    load_mask,
    load_slices,
)

# ---- the evaluation command, end to end on a tiny random model -------------------------------------------


def main(argv: list[str]) -> int:
    """``neurovit explain-eval ARGV``: its exit status (2 usage, 3 data)."""
    return neurovit(["explain-eval", *argv])


TINY = ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2)


def _publish_tiny_version(tmp_path, classes, info=None, entries=None):
    """A seeded tiny random model, with the split of ``entries`` when given, published to a local store
    under ``tmp_path``: the store's path and the version id."""
    torch.manual_seed(0)
    version_dir = tmp_path / "version"
    info = info or ModelInfo(class_names=classes)
    save_model(build_model(TINY, classes), version_dir / "model", PreprocessConfig(image_size=32), info)
    if entries is not None:
        SplitPlan(entries, classes, {}).write(version_dir / "split.json")
    store = tmp_path / "store"
    return store, LocalStore(store).publish("neurovit", version_dir, metadata={})


def test_masks_go_through_the_image_geometry(tmp_path):
    # A 48x30 image (not square: resized and padded) with a bright block and its mask.
    image = np.zeros((48, 30), dtype=np.uint8)
    image[10:20, 5:15] = 255
    Image.fromarray(image).save(tmp_path / "slice.png")
    Image.fromarray(image).save(tmp_path / "slice.mask.png")
    # the percentile window maps the block to 255, so >= 128 is the resized block's half-way contour
    canonical = canonicalise(image / 255.0, PreprocessConfig(image_size=32, intensity_window="percentile"))
    mask = load_mask(tmp_path / "slice.png", 32)
    assert mask.shape == (32, 32)
    np.testing.assert_array_equal(mask, canonical >= 128)
    assert load_mask(tmp_path / "other.png", 32) is None


def _masked_folder(root, sizes):
    """Slices ``<class>/g<i>.png`` (32 x 32), glioma then notumor alternating, with a mask of ``sizes[i]``
    each (None: no mask file, 0: an unreadable one, "empty": an all-zero one)."""
    for i, size in enumerate(sizes):
        folder = root / ("glioma", "notumor")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        image = np.full((32, 32), 40, dtype=np.uint8)
        image[8:16, 8:16] = 250
        Image.fromarray(image).save(folder / f"g{i}.png")
        mask_path = folder / f"g{i}.mask.png"
        if size == 0:
            mask_path.write_bytes(b"not a png")
        elif size == "empty":
            Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(mask_path)
        elif size is not None:
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[: size // 2, : size // 2] = 255
            Image.fromarray(mask).save(mask_path)


def test_bad_masks_are_left_out_and_counted_and_a_folder_without_masks_is_refused(tmp_path, capsys):
    store, _ = _publish_tiny_version(tmp_path, ["glioma", "notumor"])
    data = tmp_path / "masked"
    _masked_folder(data, [32, 32, 64, 0, "empty", None])
    out = tmp_path / "out"
    argv = ["--store", str(store), "--data-dir", str(data), "--out", str(out), "--steps", "2"]
    assert main([*argv, "--explained-class", "predicted"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "explain_eval.json").read_text())
    assert result["n_slices"] == 4  # g0, g1, the empty mask's g4 and the unmasked g5
    assert result["left_out"] == {
        "mask size differs from the image's": {"n": 1, "relpaths": ["glioma/g2.png"]},
        "unreadable image or mask": {"n": 1, "relpaths": ["notumor/g3.png"]},
    }
    assert "left out: 1 mask size differs" in printed
    rollout = result["explained"]["predicted"]["methods"]["rollout"]
    assert rollout["n_pointing_game"] == 2 and set(rollout["pointing_game_per_class"]) == {
        "glioma",
        "notumor",
    }
    # every image of a folder the version was not trained on, quietly: no split to match
    assert "every image of" in result["images"]

    bare = tmp_path / "bare"
    _masked_folder(bare, [None, "empty"])
    assert main([*argv, "--data-dir", str(bare), "--out", str(tmp_path / "out2")]) == 3
    assert "has a lesion mask" in capsys.readouterr().err


def test_a_split_without_masks_is_scored_on_deletion_alone_and_its_val_part_on_request(tmp_path, capsys):
    # Real scans without outlines (a version's own brain-tumor-mri split): deletion needs no mask, so an
    # explainer's settings can be chosen on the validation slices and the test slices left unread.
    classes = ["glioma", "notumor"]
    data, entries = tmp_path / "data", []
    rng = np.random.default_rng(0)
    parts = ("train", "val", "val", "val", "test", "test")
    for label in classes:
        (data / label).mkdir(parents=True)
        for number, part in enumerate(parts):
            image = (rng.random((32, 32)) * 120).astype(np.uint8)
            image[8:16, 16:24] = 250 if label == "glioma" else 60
            name = f"{label}/{label}_{number}.png"
            Image.fromarray(image).save(data / name)
            entries.append(
                SplitEntry(name, label, part, hashlib.sha256((data / name).read_bytes()).hexdigest())
            )
    store, _ = _publish_tiny_version(tmp_path, classes, entries=entries)
    argv = ["--store", str(store), "--data-dir", str(data), "--steps", "4", "--explained-class", "predicted"]

    assert main([*argv, "--out", str(tmp_path / "refused")]) == 3  # the test split, no masks, not asked
    assert "--without-masks" in capsys.readouterr().err

    out = tmp_path / "val"
    assert (
        main([*argv, "--split", "val", "--without-masks", "--substrate", "black,road", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "val split of the version's split.json (6 images); no lesion masks: deletion alone" in printed
    assert (
        "no lesion masks: no pointing game; deletion AUC: 6 slices" in printed and "pointing ↑" not in printed
    )
    result = json.loads((out / "explain_eval.json").read_text())
    assert result["n_slices"] == 6
    with (out / "per_image.csv").open() as handle:
        scored = {row["relpath"] for row in csv.DictReader(handle)}
    assert scored == {entry.relpath for entry in entries if entry.split == "val"}
    explained = result["explained"]["predicted"]
    for method, values in explained["methods"].items():
        assert values["n_pointing_game"] == 0, method
        assert set(values["deletion"]) == {"black", "road"}
        for fill in ("black", "road"):
            assert 0.0 <= values["deletion"][fill]["auc"] <= 1.0, (method, fill)
    gain = explained["comparisons"]["rollout"]["gaussian"]
    assert gain["pointing_game_gain"] is None and set(gain["deletion"]) == {"black", "road"}
    assert explained["lesion_mask_reference"]["black"]["n"] == 0

    out = tmp_path / "test"
    assert main([*argv, "--without-masks", "--out", str(out)]) == 0  # the default part: test
    assert "test split of the version's split.json (4 images)" in capsys.readouterr().out
    assert json.loads((out / "explain_eval.json").read_text())["n_slices"] == 4


@pytest.mark.slow  # about 14 s: seven methods, both explained classes, every substrate
def test_the_command_scores_every_method_and_writes_its_outputs(tmp_path, capsys):
    classes = ["glioma", "notumor"]
    data, entries = tmp_path / "data", []
    rng = np.random.default_rng(0)
    for label in classes:
        (data / label).mkdir(parents=True)
        for number in range(3):
            image = (rng.random((32, 32)) * 120).astype(np.uint8)
            mask = np.zeros((32, 32), dtype=np.uint8)
            if label == "glioma":
                image[8:16, 16:24] = 250
                mask[8:16, 16:24] = 255
            name = f"{label}/{label}_{number}"
            Image.fromarray(image).save(data / f"{name}.png")
            Image.fromarray(mask).save(data / f"{name}.mask.png")
            digest = hashlib.sha256((data / f"{name}.png").read_bytes()).hexdigest()
            entries.append(SplitEntry(f"{name}.png", label, "test" if number < 2 else "train", digest))
    # The map lifts every confidence to 0.9 or more: the per-image file must show it, as the service does.
    info = ModelInfo(classes, temperature=1.5, confidence_map=ConfidenceMap((0.5, 1.0), (0.9, 0.95)))
    store, version = _publish_tiny_version(tmp_path, classes, info, entries)

    out = tmp_path / "out"
    argv = ["--store", str(store), "--data-dir", str(data), "--out", str(out), "--steps", "4"]
    assert main([*argv, "--model", "latest"]) == 0
    printed = capsys.readouterr().out
    assert "test split" in printed and "pointing game" in printed
    assert "explained class: predicted" in printed and "explained class: true" in printed
    result = json.loads((out / "explain_eval.json").read_text())
    assert result["version"] == version and result["n_slices"] == 4
    assert set(result["explained"]) == {"predicted", "true"}
    assert set(result["accuracy_per_class"]) == {"glioma", "notumor"}
    for explained in result["explained"].values():
        assert set(explained["methods"]) == {
            "rollout",
            "gradcam",
            "hirescam",
            "gradient_rollout",
            "lrp",
            "random",
            "gaussian",
            "centre",
        }
        for values in explained["methods"].values():
            assert values["n"] == 4 and values["n_pointing_game"] == 2
            assert set(values["pointing_game_per_class"]) == {"glioma"}
            deletion = values["deletion"]["black"]
            assert 0.0 <= values["pointing_game"] <= 1.0 and 0.0 <= deletion["auc"] <= 1.0
            assert len(deletion["mean_curve"]) == 5  # --steps 4, for token maps and pixel maps alike
        assert set(explained["comparisons"]["rollout"]) == {"random", "gaussian", "centre"}
        reference = explained["lesion_mask_reference"]["black"]
        assert reference["n"] == 2 and 0.0 <= reference["deletion_auc_lesion_slices"] <= 1.0
        # not the demo generator's data: no healthy twins, so no lesion-reliance line
        assert explained["lesion_reliance"] == {"n": 0, "per_class": {}}
        # but the imputation line works on any masked data: the two glioma lesion slices
        imputation = explained["lesion_imputation"]
        assert imputation["n"] == 2 and set(imputation["per_class"]) == {"glioma"}
    # the centre peak hits exactly when the lesion lies within the tolerance of the centre: 15 px at 224 px
    # is 2.1 px on these 32 px slices, and the lesion block [8, 16) x [16, 24) touches the centre 15.5
    assert result["explained"]["predicted"]["methods"]["centre"]["pointing_game"] == 1.0
    assert "2.1 px at 32 px" in result["settings"]["pointing_game"]["tolerance"]
    assert result["settings"]["rollout"] == {"head_fusion": "mean", "discard_ratio": 0.0, "start_layer": 2}
    assert result["settings"]["gradient_rollout"] == {"start_layer": 2}
    assert "the lesion mask as the map, then outward (2 lesion slices, black fill)" in printed
    assert "healthy twin" not in printed
    assert "does the answer need the lesion? explained class' probability, slice -> lesion imputed" in printed
    road = tmp_path / "road"
    road_argv = ["--store", str(store), "--data-dir", str(data), "--out", str(road)]
    assert main([*road_argv, "--substrate", "black,road", "--explained-class", "true"]) == 0
    road_result = json.loads((road / "explain_eval.json").read_text())
    assert set(road_result["explained"]) == {"true"}
    assert road_result["settings"]["deletion"]["road"]["steps"] == ROAD_STEPS  # not one step per cell
    assert road_result["settings"]["deletion"]["black"]["steps"] == 64  # one step per cell of the 8x8 grid
    rollout = road_result["explained"]["true"]["methods"]["rollout"]["deletion"]
    assert len(rollout["road"]["mean_curve"]) == ROAD_STEPS + 1 and len(rollout["black"]["mean_curve"]) == 65
    for name in ("gallery-true.png", "deletion_curves-true.png", "deletion_curves-true-road.png"):
        assert (road / name).stat().st_size > 0
    assert main([*argv, "--substrate", "healthy", "--out", str(tmp_path / "healthy")]) == 3
    assert "healthy substrate needs the demo generator's lesion-free twin" in capsys.readouterr().err
    for name in ("gallery.png", "gallery-true.png", "deletion_curves.png", "per_image.csv"):
        assert (out / name).stat().st_size > 0
    with (out / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert min(float(row["probability"]) for row in rows) >= 0.9

    def glioma_aucs(explained_as: str, method: str) -> list[float]:
        """A method's black-cell deletion AUCs on the lesion slices (the two gliomas), from the CSV."""
        return [
            float(row["deletion_auc_black"])
            for row in rows
            if (row["explained_as"], row["method"], row["label"]) == (explained_as, method, "glioma")
        ]

    # The mask as the map against each baseline, paired on the lesion slices only (the two gliomas):
    # the gain is the baseline's AUC there minus the mask's, so a positive one means the lesion-first
    # order removes the answer faster.
    for explained_as, explained in result["explained"].items():
        reference = explained["lesion_mask_reference"]["black"]
        assert set(reference["deletion_vs_baseline"]) == {"random", "gaussian", "centre"}
        for baseline, compared in reference["deletion_vs_baseline"].items():
            on_lesions = glioma_aucs(explained_as, baseline)
            gain = compared["gain"]
            assert len(on_lesions) == 2
            expected = np.mean(on_lesions) - reference["deletion_auc_lesion_slices"]
            assert gain["mean_difference"] == pytest.approx(expected, abs=1e-4)  # the CSV keeps 4 decimals
            assert gain["ci_low"] <= gain["mean_difference"] <= gain["ci_high"]
            assert compared["beats_baseline"] == (gain["ci_low"] > 0)
        # and each map against the mask: the mask's AUC minus the map's, so positive favours the map
        assert set(reference["maps_vs_lesion_mask"]) == set(explained["comparisons"])
        for method, compared in reference["maps_vs_lesion_mask"].items():
            expected = reference["deletion_auc_lesion_slices"] - np.mean(glioma_aucs(explained_as, method))
            assert compared["gain"]["mean_difference"] == pytest.approx(expected, abs=1e-4)
            assert compared["beats_baseline"] == (compared["gain"]["ci_low"] > 0)
    assert "  lesion mask      vs gaussian   deletion black " in printed
    assert "  gradient_rollout vs mask       deletion black " in printed
    # an unknown fill is a usage error (exit 2) before anything runs
    assert main([*argv, "--substrate", "black,grey"]) == 2

    # A changed test image: the split no longer describes the data, so every image is evaluated.
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(data / "notumor" / "notumor_0.png")
    assert main([*argv, "--model", version, "--out", str(tmp_path / "out2")]) == 0
    assert json.loads((tmp_path / "out2" / "explain_eval.json").read_text())["n_slices"] == 6


def test_lesion_reliance_compares_each_lesion_slice_with_its_healthy_twin(tmp_path, capsys):
    data = generate_demo_dataset(tmp_path / "demo", n_per_class=2, image_size=32, seed=0)
    chosen = [
        (data / label / f"{label}_{n:04d}.png", f"{label}/{label}_{n:04d}.png", label)
        for label in DEMO_CLASSES
        for n in range(2)
    ]
    torch.manual_seed(0)
    model = build_model(TINY, list(DEMO_CLASSES)).eval()
    preprocessing = PreprocessConfig(image_size=32)
    loaded = LoadedModel(model, preprocessing, ModelInfo(class_names=list(DEMO_CLASSES), temperature=2.0))
    slices = load_slices(chosen, loaded, None, data)
    lesion = [item for item in slices if item.has_lesion]
    assert len(lesion) == 6 and all(item.healthy_scan is not None for item in lesion)
    assert all(item.healthy_scan is None for item in slices if item.label == "notumor")
    assert all(
        not np.array_equal(canonicalise(item.healthy_scan, preprocessing), item.image) for item in lesion
    )
    for item in lesion:  # the twin's scan equals the slice's away from the lesion and its oedema
        far = ndimage.distance_transform_edt(~item.mask) > 6
        np.testing.assert_array_equal(item.healthy_scan[far], item.scan[far])
        assert not np.array_equal(item.healthy_scan, item.scan)
    assert load_slices(chosen, loaded, None)[0].healthy_scan is None  # no data folder given: no twins

    targets = np.array([3, 0, 1, 2, 0, 0, 1, 2])  # any explained class per slice
    with torch.no_grad():
        logits = model(to_tensor(np.stack([item.image for item in slices]), preprocessing)).logits
    probabilities = torch.softmax(logits / 2.0, dim=-1).numpy()
    reliance = lesion_reliance(slices, targets, probabilities, loaded)
    assert reliance["n"] == 6 and set(reliance["per_class"]) == {"glioma", "meningioma", "pituitary"}
    glioma = [i for i, item in enumerate(slices) if item.label == "glioma"]
    twins = to_tensor(
        np.stack([canonicalise(slices[i].healthy_scan, preprocessing) for i in glioma]), preprocessing
    )
    with torch.no_grad():
        on_twins = torch.softmax(model(twins).logits / 2.0, dim=-1).numpy()
    expected_twin = np.mean([on_twins[k, targets[i]] for k, i in enumerate(glioma)])
    expected_slice = np.mean([probabilities[i, targets[i]] for i in glioma])
    values = reliance["per_class"]["glioma"]
    assert values["n"] == 2
    assert values["probability_on_healthy_twin"] == pytest.approx(expected_twin, abs=1e-6)
    assert values["probability_on_slice"] == pytest.approx(expected_slice, abs=1e-6)

    # The command on the demo data, deletion with the healthy twins as the substrate: lesion slices only.
    save_model(model, tmp_path / "version" / "model", preprocessing, loaded.info)
    store = tmp_path / "store"
    LocalStore(store).publish("neurovit", tmp_path / "version", metadata={})
    out = tmp_path / "out"
    argv = ["--store", str(store), "--data-dir", str(data), "--out", str(out), "--steps", "4"]
    assert main([*argv, "--substrate", "healthy", "--explained-class", "predicted"]) == 0
    printed = capsys.readouterr().out
    document = json.loads((out / "explain_eval.json").read_text())
    result = document["explained"]["predicted"]
    assert document["n_slices"] == 6 and set(document["settings"]["deletion"]) >= {"healthy"}
    assert result["lesion_reliance"]["n"] == 6
    assert "slice -> its healthy twin (6 lesion slices)" in printed
    # every cell restored = the healthy twin, scaled as any input: each map's curve ends at the probability
    # the lesion-reliance line gives the twin
    per_class = result["lesion_reliance"]["per_class"].values()
    on_twins = sum(v["probability_on_healthy_twin"] * v["n"] for v in per_class) / 6
    for values in result["methods"].values():
        assert values["deletion"]["healthy"]["mean_curve"][-1] == pytest.approx(on_twins, abs=1e-4)


# ---- does the answer need the lesion? (lesion imputed, any masked data) ----------------------------------


class _BrightSpotModel(torch.nn.Module):
    """Answers class 0 when the input holds anything brighter than ``level`` (standardised), else class 1;
    with ``blind`` it answers the same whatever it is shown."""

    def __init__(self, level: float, blind: bool = False) -> None:
        super().__init__()
        self.level, self.blind = level, blind

    def forward(self, pixels):
        bright = pixels.amax(dim=(1, 2, 3)) - self.level
        if self.blind:
            bright = torch.ones_like(bright)
        logits = torch.stack([20.0 * bright, torch.zeros_like(bright)], dim=1)
        return type("Output", (), {"logits": logits})()


def _head_with_lesion(lesion_side: int = 6) -> Slice:
    """A 48 px slice: a grey disc (the head) with a bright square (the lesion) and the square's mask."""
    yy, xx = np.mgrid[:48, :48]
    head = (yy - 24) ** 2 + (xx - 24) ** 2 <= 20**2
    image = np.where(head, 120, 0).astype(np.uint8)
    mask = np.zeros((48, 48), dtype=bool)
    mask[14 : 14 + lesion_side, 14 : 14 + lesion_side] = True
    image[mask] = 250
    return Slice("glioma/a.png", "glioma", image, mask)


def _imputation(model, slices):
    preprocessing = PreprocessConfig(image_size=48)
    loaded = LoadedModel(model, preprocessing, ModelInfo(class_names=["glioma", "notumor"], temperature=1.0))
    inputs = to_tensor(np.stack([item.image for item in slices]), preprocessing)
    with torch.no_grad():
        probabilities = torch.softmax(model(inputs).logits, dim=-1).numpy()
    targets = probabilities.argmax(axis=1)
    imputed = impute_lesions(slices, loaded, seed=0)
    return lesion_imputation(imputed, slices, targets, probabilities, loaded.class_names)


def test_a_model_that_reads_the_lesion_loses_its_answer_when_the_lesion_is_imputed():
    preprocessing = PreprocessConfig(image_size=48)
    level = float(to_tensor(np.full((1, 1), 185, dtype=np.uint8), preprocessing).max())
    slices = [_head_with_lesion(), _head_with_lesion(4)]
    result = _imputation(_BrightSpotModel(level), slices)
    glioma = result["per_class"]["glioma"]
    assert result["n"] == 2 and result["n_without_control"] == 0 and glioma["n_with_control"] == 2
    assert glioma["probability_on_slice"] > 0.99 and glioma["accuracy_on_slice"] == 1.0
    # the lesion imputed from the grey head around it: nothing bright is left
    assert glioma["probability_lesion_imputed"] < 0.01 and glioma["accuracy_lesion_imputed"] == 0.0
    # the same area imputed elsewhere in the head leaves the lesion, and the answer
    assert glioma["probability_control_imputed"] > 0.99


def test_a_model_that_ignores_the_lesion_keeps_its_answer_and_a_slice_without_room_has_no_control():
    blind = _BrightSpotModel(0.0, blind=True)
    result = _imputation(blind, [_head_with_lesion()])
    glioma = result["per_class"]["glioma"]
    assert glioma["probability_lesion_imputed"] == pytest.approx(glioma["probability_on_slice"])
    assert glioma["probability_control_imputed"] == pytest.approx(glioma["probability_on_slice"])
    # a lesion over most of the head leaves no place for the control: counted, never a crash
    result = _imputation(blind, [_head_with_lesion(30)])
    assert result["n_without_control"] == 1 and result["per_class"]["glioma"]["n_with_control"] == 0
    assert np.isnan(result["per_class"]["glioma"]["probability_control_imputed"])
    no_lesion = Slice("notumor/b.png", "notumor", np.zeros((48, 48), dtype=np.uint8), None)
    assert _imputation(blind, [no_lesion]) == {"n": 0, "n_without_control": 0, "per_class": {}}
