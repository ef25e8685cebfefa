"""Pipeline runs on the demo data get the demo recipe (`neurovit pipeline run` and submit alike);
options are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import pipeline, pipeline_submit
from training.cli import main as neurovit
from training.train import DEMO_TRAINING


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The keyword arguments each run_local call got; nothing runs."""
    calls: list[dict] = []

    def fake_run_local(store_uri: str, **arguments) -> str:
        calls.append({"store_uri": store_uri, **arguments})
        return f"{store_uri}/neurovit/v1"

    monkeypatch.setattr(pipeline, "run_local", fake_run_local)
    return calls


def test_demo_run_trains_with_the_demo_recipe(submitted: list[dict], tmp_path: Path) -> None:
    assert neurovit(["pipeline", "run", "--store", str(tmp_path)]) == 0
    (call,) = submitted
    assert call["data_uri"] == "demo"
    for name in ("epochs", "batch_size", "patience", "intensity_window"):
        assert call[name] == DEMO_TRAINING[name], name


def test_other_data_keeps_the_default_window(submitted: list[dict], tmp_path: Path) -> None:
    assert (
        neurovit(["pipeline", "run", "--store", str(tmp_path), "--data-uri", str(tmp_path / "slices")]) == 0
    )
    (call,) = submitted
    # Not passed, so the pipeline's default applies: TrainConfig's percentile window.
    assert "intensity_window" not in call
    assert call["epochs"] == DEMO_TRAINING["epochs"]


def test_options_override_the_recipe(submitted: list[dict], tmp_path: Path) -> None:
    argv = [
        "pipeline",
        "run",
        "--store",
        str(tmp_path),
        "--intensity-window",
        "percentile",
        "--patience",
        "3",
    ]
    assert neurovit(argv) == 0
    (call,) = submitted
    assert call["intensity_window"] == "percentile"
    assert call["patience"] == 3


def test_unknown_window_is_refused_before_anything_runs(
    submitted: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert neurovit(["pipeline", "run", "--store", str(tmp_path), "--intensity-window", "median"]) == 2
    assert "--intensity-window must be one of foreground_median, percentile" in capsys.readouterr().err
    assert submitted == []


@pytest.mark.parametrize(
    ("data_uri", "window"), [("demo", DEMO_TRAINING["intensity_window"]), ("s3://neurovit/slices", None)]
)
def test_submitted_runs_get_the_window_their_data_calls_for(data_uri: str, window: str | None) -> None:
    env = {"NEUROVIT_STORE_URI": "s3://neurovit", "NEUROVIT_DATA_URI": data_uri}
    arguments = pipeline_submit.run_arguments(env, {"epochs": 3})
    assert arguments.get("intensity_window") == window
    # A --param still wins over what the data calls for.
    assert (
        pipeline_submit.run_arguments(env, {"intensity_window": "percentile"})["intensity_window"]
        == "percentile"
    )
