"""The training loop: it learns, it resumes exactly, it respects a time budget, it stops early."""

import copy
import io
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import training.train as train_module
from neurovit.model import ModelConfig, ModelInfo, build_model, load_model, save_model
from neurovit.preprocessing import PreprocessConfig, standardise
from neurovit.progress import on_terminal
from training.augment import AugmentConfig, augment_batch
from training.guide import NO_EVIDENCE
from training.teacher import TEACHER_FILE, TeacherCNN, distillation_loss
from training.train import (
    TrainConfig,
    compiled_forward,
    ema_for,
    measure_step_ratio,
    place_for_training,
    train,
    tumour_free_slices,
)

CLASSES = ["vertical", "horizontal"]
PREPROCESSING = PreprocessConfig(image_size=32)


def stripe_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: vertical stripes; class 1: horizontal stripes; random phase, period and noise.

    A texture the conv stem sees at once, so a few dozen steps must learn it: if they do not, the loop
    (labels, loss, optimiser, schedule, EMA) is broken.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    grid = np.arange(32)
    images = np.empty((n, 32, 32), dtype=np.uint8)
    for image, label in zip(images, labels, strict=True):
        period, phase = rng.integers(4, 8), rng.integers(0, 8)
        stripes = ((grid + phase) // (period // 2)) % 2 * 200
        pattern = np.tile(stripes, (32, 1)) if label == 0 else np.tile(stripes[:, None], (1, 32))
        image[:] = np.clip(pattern + rng.integers(0, 50, (32, 32)), 0, 255)
    return images, labels


def tiny_config(**overrides) -> TrainConfig:
    values = dict(
        epochs=4,
        batch_size=16,
        learning_rate=2e-3,
        warmup_epochs=0.5,
        ema_decay=0.9,
        augment=AugmentConfig(max_rotation_deg=5),
        model=ModelConfig(image_size=32, stem_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2),
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def data():
    return stripe_images(160, seed=0), stripe_images(48, seed=1)


def test_training_learns_a_separable_task_and_saves_the_best_model(data, tmp_path):
    train_data, val_data = data
    result = train(train_data, val_data, CLASSES, PREPROCESSING, tiny_config(), tmp_path, progress=False)
    assert result.best_val_accuracy >= 0.9
    assert result.epochs_run == 4 and len(result.history) == 4
    assert result.images_per_second > 0
    loaded = load_model(result.best_dir)
    assert loaded.class_names == CLASSES and loaded.preprocessing == PREPROCESSING
    assert (tmp_path / "history.json").is_file()


def test_interrupted_training_resumes_to_the_same_weights(data, tmp_path, monkeypatch):
    torch.use_deterministic_algorithms(True)
    try:
        train_data, val_data = data
        config = tiny_config(epochs=3)
        straight = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path / "a", progress=False)

        calls = {"n": 0}
        real_predict = train_module.predict_logits

        def crash_in_third_validation(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return real_predict(*args, **kwargs)

        monkeypatch.setattr(train_module, "predict_logits", crash_in_third_validation)
        with pytest.raises(KeyboardInterrupt):
            train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path / "b", progress=False)
        monkeypatch.setattr(train_module, "predict_logits", real_predict)
        resumed = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path / "b", progress=False)

        assert [h["val_accuracy"] for h in resumed.history] == [h["val_accuracy"] for h in straight.history]
        a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["ema"]
        b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["ema"]
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    finally:
        torch.use_deterministic_algorithms(False)


def test_time_budget_shrinks_the_schedule_to_what_fits(data, tmp_path):
    train_data, val_data = data
    config = tiny_config(epochs=50, time_budget_s=1e-3)  # one epoch already exceeds the budget
    result = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path, progress=False)
    assert result.epochs_run == 1


def test_early_stopping_ends_when_validation_stops_improving(data, tmp_path):
    train_data, _ = data
    # validation labels are noise: accuracy cannot keep improving, so patience runs out
    noise_val = (train_data[0][:32], np.random.default_rng(3).integers(0, 2, 32))
    config = tiny_config(epochs=30, patience=2, patience_start=0.0)
    result = train(train_data, noise_val, CLASSES, PREPROCESSING, config, tmp_path, progress=False)
    assert result.epochs_run < 30
    assert result.epochs_run - result.best_epoch == 2


def test_early_stopping_waits_for_the_late_part_of_the_schedule(data, tmp_path):
    train_data, _ = data
    noise_val = (train_data[0][:32], np.random.default_rng(3).integers(0, 2, 32))
    config = tiny_config(epochs=12, patience=2, patience_start=0.75)  # watched from epoch 9 on
    result = train(train_data, noise_val, CLASSES, PREPROCESSING, config, tmp_path, progress=False)
    # without the wait it would stop at best_epoch + 2, early (see the test above)
    assert result.epochs_run == min(12, max(result.best_epoch, 9) + 2)
    assert result.epochs_run >= 11


def test_a_class_without_training_images_is_refused(data, tmp_path):
    (images, labels), val_data = data
    with pytest.raises(ValueError, match="classes without training images"):
        train((images, np.zeros_like(labels)), val_data, CLASSES, PREPROCESSING, tiny_config(), tmp_path)


def test_augmentation_keeps_range_and_shape_and_is_seeded():
    images = torch.rand(4, 1, 32, 32)
    a = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(0))
    b = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(0))
    assert a.shape == images.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, images)


def test_step_ratio_is_measured_on_the_real_loader(data):
    train_data, _ = data
    ratio = measure_step_ratio(train_data, CLASSES, PREPROCESSING, tiny_config(), steps=3)
    assert ratio["loader_step_s"] > 0 and ratio["bare_step_s"] > 0
    assert ratio["step_ratio"] == pytest.approx(ratio["loader_step_s"] / ratio["bare_step_s"])


def test_saved_model_has_batchnorm_statistics_of_its_own_weights(data, tmp_path):
    # The EMA weights get their BatchNorm statistics re-estimated on un-augmented training images before
    # each validation: the first BatchNorm's running mean must be the mean of the first conv's output over
    # the training images (all 160 are used: 10 batches of 16, fewer than BN_BATCHES), not an average of
    # the live model's statistics taken on augmented batches.
    train_data, val_data = data
    assert len(train_data[0]) // 16 <= train_module.BN_BATCHES
    result = train(
        train_data, val_data, CLASSES, PREPROCESSING, tiny_config(epochs=1), tmp_path, progress=False
    )
    stem = load_model(result.best_dir).model.vit.embeddings.patch_embeddings.projection.layers
    conv, norm = stem[0], stem[1]
    pixels = standardise(torch.as_tensor(train_data[0]).unsqueeze(1).float() / 255.0, PREPROCESSING)
    with torch.no_grad():
        expected = conv(pixels).mean(dim=(0, 2, 3))
    np.testing.assert_allclose(norm.running_mean.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_cpu_training_layout_changes_memory_not_values(tmp_path):
    # With channels_last (bench-train, faster convs on the CPU) the same weights must compute the same
    # logits, and the saved model must load back (in the default layout) with those logits.
    model = build_model(tiny_config().model, CLASSES).eval()
    placed = place_for_training(copy.deepcopy(model), torch.device("cpu"), channels_last=True).eval()
    second_conv = placed.vit.embeddings.patch_embeddings.projection.layers[3]
    assert isinstance(second_conv, torch.nn.Conv2d) and second_conv.in_channels > 1
    assert second_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not second_conv.weight.is_contiguous()
    kept = place_for_training(copy.deepcopy(model), torch.device("cpu"), channels_last=False)
    assert kept.vit.embeddings.patch_embeddings.projection.layers[3].weight.is_contiguous()
    images = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        expected = model(images).logits
        torch.testing.assert_close(placed(images).logits, expected, rtol=1e-4, atol=1e-5)
    save_model(placed, tmp_path, PREPROCESSING, ModelInfo(class_names=CLASSES))
    with torch.no_grad():
        reloaded = load_model(tmp_path).model(images).logits
    torch.testing.assert_close(reloaded, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_training_learns_and_saves_the_plain_model(data, tmp_path):
    # torch.compile wraps the forward only: the saved weights must be the trained ones, under their own names
    # (no "_orig_mod." prefix), and load back into an ordinary model.
    train_data, val_data = data
    config = tiny_config(compile=True, amp="bf16", channels_last=True)
    result = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path, progress=False)
    assert result.compiled and result.best_val_accuracy >= 0.9
    loaded = load_model(result.best_dir)
    assert not any("_orig_mod" in name for name in loaded.model.state_dict())
    assert not any(
        "_orig_mod" in name for name in torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    )


def test_without_a_cxx_compiler_training_runs_eagerly(monkeypatch, caplog):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(train_module.shutil, "which", lambda name: None)
    model = build_model(tiny_config().model, CLASSES)
    forward, compiled = compiled_forward(model, torch.device("cpu"))
    assert forward is model and not compiled
    assert "no C++ compiler" in caplog.text


def test_the_foreach_ema_averages_as_the_per_tensor_one_warm_up_included():
    torch.manual_seed(0)
    model = build_model(tiny_config().model, CLASSES)
    per_tensor, foreach = ema_for(model, 0.99), ema_for(model, 0.99, foreach=True)
    for _ in range(6):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param))
        per_tensor.update_parameters(model)
        foreach.update_parameters(model)
    averaged = foreach.module.state_dict()
    for name, value in per_tensor.module.state_dict().items():
        torch.testing.assert_close(averaged[name].float(), value.float())
    # An average, not a copy of the last weights.
    name, last = next(iter(model.named_parameters()))
    assert not torch.equal(averaged[name], last.detach())


def test_training_with_fused_updates_learns(data, tmp_path):
    train_data, val_data = data
    config = tiny_config(fused_updates=True)
    result = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path, progress=False)
    assert result.best_val_accuracy >= 0.9


# ---- progress output ---------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal, as a developer's shell would."""

    def isatty(self) -> bool:
        return True


def train_with_output(data, tmp_path, monkeypatch, epochs: int = 3) -> str:
    """Stdout and stderr of a progress-reporting training run whose stderr is a terminal."""
    stdout, stderr = io.StringIO(), Terminal()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    train(*data, CLASSES, PREPROCESSING, tiny_config(epochs=epochs), tmp_path, progress=True)
    return stdout.getvalue() + stderr.getvalue()


def test_under_ci_training_writes_one_line_per_epoch_and_no_bar(data, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    output = train_with_output(data, tmp_path, monkeypatch)
    assert "\r" not in output
    lines = output.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "epoch 3"]
    shape = re.compile(r"epoch \d: loss [\d.]+ train acc [\d.]+ val acc [\d.]+ \(\d+s\)")
    assert all(shape.fullmatch(text) for text in lines)


def test_on_a_terminal_the_bar_is_drawn(data, tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    output = train_with_output(data, tmp_path, monkeypatch, epochs=1)
    assert "\r" in output and "epoch 1/1" in output  # tqdm's bar, then the epoch's line
    assert output.count("epoch 1: loss") == 1


@pytest.mark.parametrize(
    ("ci", "tty", "drawn"), [("", True, True), ("true", True, False), ("1", True, False), ("", False, False)]
)
def test_bars_are_drawn_on_a_terminal_outside_ci_only(monkeypatch, ci, tty, drawn):
    monkeypatch.setenv("CI", ci)
    stream = Terminal() if tty else io.StringIO()
    assert on_terminal(stream) is drawn


def test_without_an_epoch_count_the_budget_plans_the_epochs_and_the_last_weights_are_kept(
    data, tmp_path, ticking_clock
):
    train_data, val_data = data
    # Each epoch and each validation takes one tick (a second). After epoch 1 (1 s) the 4.5 s fit 1 + 3
    # epochs; after epoch 2 the clock has read 3 s (epoch 1's validation counts): 1.5 s an epoch, one more.
    config = tiny_config(epochs=None, time_budget_s=4.5, keep="last")
    result = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path / "run", progress=False)
    assert result.epochs_run == result.epochs_planned == 3
    assert [record["seconds"] for record in result.history] == [1.0, 1.0, 1.0]
    assert result.best_epoch == result.epochs_run  # the last EMA weights, whatever validation said
    assert result.best_val_accuracy == result.history[-1]["val_accuracy"]
    assert load_model(result.best_dir).class_names == CLASSES


def test_keeping_the_last_weights_validates_only_every_nth_epoch_and_always_the_last(data, tmp_path):
    train_data, val_data = data
    config = tiny_config(epochs=5, keep="last", validate_every=2)
    result = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path, progress=False)
    validated = [record["epoch"] for record in result.history if record["val_accuracy"] is not None]
    assert validated == [2, 4, 5]
    assert result.best_epoch == 5 and result.best_val_accuracy == result.history[-1]["val_accuracy"]
    # The kept weights are the ones validated last: they answer the val split as the loop scored it.
    model = load_model(result.best_dir).model
    pixels = standardise(torch.as_tensor(val_data[0]).unsqueeze(1).float() / 255.0, PREPROCESSING)
    with torch.no_grad():
        logits = model(pixels).logits
    assert float((logits.argmax(1).numpy() == val_data[1]).mean()) == pytest.approx(result.best_val_accuracy)


def test_an_open_schedule_needs_a_budget_and_keep_is_checked():
    with pytest.raises(ValueError, match="time budget"):
        tiny_config(epochs=None)
    with pytest.raises(ValueError, match="keep"):
        tiny_config(keep="median")
    with pytest.raises(ValueError, match="validate_every"):
        tiny_config(keep="best", validate_every=2)
    with pytest.raises(ValueError, match="validate_every"):
        tiny_config(keep="last", validate_every=0)
    for smoothing in (-0.1, 1.0):  # torch would only refuse it at the first step, minutes in
        with pytest.raises(ValueError, match="label_smoothing"):
            tiny_config(label_smoothing=smoothing)


def test_cpu_bf16_training_learns_and_saves_fp32_weights(data, tmp_path):
    train_data, val_data = data
    config = tiny_config(amp="bf16", augment=AugmentConfig(max_rotation_deg=5, erase_prob=0.5))
    result = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path, progress=False)
    assert result.best_val_accuracy >= 0.9
    loaded = load_model(result.best_dir)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


# ---- knowledge distillation from a small CNN teacher (training.teacher) ----


def test_the_loss_moves_from_the_labels_to_the_teachers_top_class_with_its_weight():
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 4), torch.randint(0, 4, (8,))
    teacher = torch.randn(8, 4)
    by_labels, by_teacher = F.cross_entropy(logits, targets), F.cross_entropy(logits, teacher.argmax(1))
    assert distillation_loss(logits, targets, teacher, 0.0) == pytest.approx(float(by_labels))
    assert distillation_loss(logits, targets, None, 0.0) == pytest.approx(float(by_labels))
    assert distillation_loss(logits, targets, teacher, 1.0) == pytest.approx(float(by_teacher))
    half = distillation_loss(logits, targets, teacher, 0.5)
    assert half == pytest.approx(0.5 * float(by_labels) + 0.5 * float(by_teacher))


def test_the_teacher_is_a_cnn_over_one_channel_slices():
    teacher = TeacherCNN(num_classes=4, width=8)
    assert teacher(torch.zeros(3, 1, 32, 32)).shape == (3, 4)


def test_a_run_trains_its_teacher_in_the_budget_records_it_and_reuses_it_on_resume(tmp_path, ticking_clock):
    train_data, val_data = stripe_images(160, seed=0), stripe_images(48, seed=1)
    config = tiny_config(epochs=None, time_budget_s=20.0, teacher_fraction=0.3, keep="last")
    result = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path, progress=False)
    teacher = result.teacher
    # Its share is 6 s; its first epoch took one tick (1 s), so it plans 6 epochs, and its clock moves 8 ticks
    # (6 epoch starts, the first epoch's end, the last reading): what the ViT's plan leaves out of the 20.
    assert teacher["epochs"] == 6 and teacher["seconds"] == 8.0
    assert result.epochs_run == result.epochs_planned == 6  # 12 s left at 2 s per epoch and validation
    assert teacher["val_accuracy"] >= 0.9  # stripes: a CNN learns them at once
    assert result.best_val_accuracy >= 0.9
    assert load_model(result.best_dir).info.extra["teacher"] == teacher  # the model records its teacher
    saved = (tmp_path / TEACHER_FILE).stat().st_mtime_ns
    again = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path, progress=False)
    assert (tmp_path / TEACHER_FILE).stat().st_mtime_ns == saved and again.teacher == teacher


def test_a_teacher_needs_a_budget_and_sane_weights():
    with pytest.raises(ValueError, match="time budget"):
        tiny_config(teacher_fraction=0.2)
    with pytest.raises(ValueError, match="teacher_fraction"):
        tiny_config(teacher_fraction=0.9, time_budget_s=10)
    with pytest.raises(ValueError, match="distill_weight"):
        tiny_config(distill_weight=1.5)


def test_tumour_free_slices_are_the_no_tumour_the_imputed_and_the_masked_ones():
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    labels = np.array([0, 1, 2, 3, NO_EVIDENCE, 0])
    masks = np.zeros((6, 4, 4), dtype=np.uint8)
    masks[5, 1, 1] = 255  # a glioma whose tumour is marked
    assert tumour_free_slices(labels, masks, classes).tolist() == [False, False, True, False, True, True]
    assert tumour_free_slices(labels, None, classes).tolist() == [False, False, True, False, True, False]
    # a collection without a no-tumour class: only what is known to be free
    assert tumour_free_slices(np.array([0, 1]), None, ["glioma", "pituitary"]).tolist() == [False, False]


def test_saliency_guided_training_learns_and_its_term_is_in_the_loss(data, tmp_path, monkeypatch):
    train_data, val_data = data
    config = tiny_config(saliency_guided_weight=1.0)
    result = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path / "real", progress=False)
    assert result.best_val_accuracy >= 0.9

    # A term of 5 per step, whatever the answers, must show in every epoch's training loss.
    calls = []

    def five(masked_logits, logits):
        calls.append(masked_logits.shape)
        return masked_logits.sum() * 0 + 5.0

    monkeypatch.setattr(train_module, "consistency_loss", five)
    result = train(train_data, val_data, CLASSES, PREPROCESSING, config, tmp_path / "spy", progress=False)
    assert len(calls) == 4 * (160 // 16) and calls[0] == (16, 2)
    assert min(record["train_loss"] for record in result.history) > 5.0
