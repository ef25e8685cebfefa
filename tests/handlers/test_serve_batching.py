"""`make serve`'s TorchServe batching: the batch delay is a setting that reaches TorchServe's config, with a
default a lone request barely waits for, and it is refused where it would mean nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handlers.package import config_properties
from handlers.torchserve_launcher import LOCAL_BATCH_DELAY_MS, local_settings
from training.cli import main as neurovit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "serving-api.md"


def model_snapshot(settings) -> dict:
    text = config_properties("neurovit", "v1", settings)
    line = next(line for line in text.splitlines() if line.startswith("model_snapshot="))
    return json.loads(line.split("=", 1)[1])["models"]["neurovit"]["v1"]


def test_the_batch_delay_reaches_torchserves_model_snapshot(tmp_path):
    default = model_snapshot(local_settings(tmp_path, tmp_path / "metrics.yaml", 8080))
    assert (default["batchSize"], default["maxBatchDelay"]) == (4, LOCAL_BATCH_DELAY_MS)
    chosen = model_snapshot(local_settings(tmp_path, tmp_path / "metrics.yaml", 8080, max_batch_delay_ms=0))
    assert chosen["maxBatchDelay"] == 0


def test_serve_passes_the_batch_delay_only_when_given(monkeypatch):
    from handlers import local_service

    calls = []
    monkeypatch.setattr(local_service, "serve", lambda *args, **kwargs: calls.append(kwargs) or {})
    assert neurovit(["serve", "--batch-delay-ms", "0"]) == 0
    assert neurovit(["serve"]) == 0
    assert calls[0]["batch_delay_ms"] == 0 and "batch_delay_ms" not in calls[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-delay-ms", "-1"], "0 or more milliseconds, got -1"),
        (["--batch-delay-ms", "5", "--runtime", "kserve"], "not with --runtime kserve"),
        (["--batch-delay-ms", "5", "--demo"], "or --demo"),
    ],
)
def test_a_batch_delay_that_means_nothing_is_refused(argv, message, capsys, monkeypatch):
    from handlers import local_service

    monkeypatch.setattr(local_service, "serve", lambda *a, **k: pytest.fail("served anyway"))
    monkeypatch.setattr(local_service, "demo", lambda *a, **k: pytest.fail("served anyway"))
    assert neurovit(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_serving_guide_states_the_default_batch_delay():
    assert f"`--batch-delay-ms` (default {LOCAL_BATCH_DELAY_MS})" in DOCS.read_text()
