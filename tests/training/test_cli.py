"""The CLI's contract for bad input: one clear line on stderr, exit status 2, nothing half-written."""

import argparse

import pytest

from training import flow
from training.cli import DEMO_TRAINING, _train_config, main


@pytest.fixture
def one_class_folder(tmp_path, write_slice):
    for i in range(3):
        write_slice(tmp_path / "data" / "glioma" / f"{i}.png", seed=i)
    return tmp_path / "data"


def run_job(data_dir, store, run_dir) -> int:
    return main(["run", "--data-dir", str(data_dir), "--store", str(store), "--run-dir", str(run_dir)])


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["analyze", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "error: data path does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["analyze", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "empty" in capsys.readouterr().err


def test_one_class_only_is_refused_before_anything_is_trained(one_class_folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = run_job(one_class_folder, tmp_path / "store", run_dir)
    assert code == 2
    assert "one class" in capsys.readouterr().err
    assert not (run_dir / "train").exists()


def test_unwritable_store_is_found_before_training(one_class_folder, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    run_dir = tmp_path / "run"
    code = run_job(one_class_folder, blocker / "store", run_dir)
    assert code == 2
    assert "store path" in capsys.readouterr().err
    assert not run_dir.exists()


def test_the_demo_recipe_trains_with_the_head_median_intensity_window(monkeypatch, tmp_path):
    """The recipe's window reaches the model's PreprocessConfig; the demo picks the median window."""
    seen = []
    monkeypatch.setattr(flow.split, "load_split", lambda path: argparse.Namespace(classes=["a", "b"]))
    monkeypatch.setattr(
        flow, "split_arrays", lambda data, plan, part, preprocessing, cache: seen.append(preprocessing)
    )
    monkeypatch.setattr(flow, "train", lambda *args, **kwargs: args[3])
    args = argparse.Namespace(image_size=128)
    demo = _train_config(args, DEMO_TRAINING)
    assert flow.train_stage(tmp_path, tmp_path / "split.json", tmp_path / "train", demo).intensity_window == (
        "foreground_median"
    )
    plain = flow.train_stage(tmp_path, tmp_path / "split.json", tmp_path / "train", _train_config(args))
    assert plain.intensity_window == "percentile"  # everything else keeps the default window
    assert [config.intensity_window for config in seen] == ["foreground_median"] * 2 + ["percentile"] * 2


def test_prune_keeps_what_make_deploy_recorded_and_what_is_protected(tmp_path, monkeypatch, capsys):
    from neurovit.store import open_store
    from training.deploy import Target, record_deployment

    source = tmp_path / "model"
    source.mkdir()
    (source / "weights.bin").write_bytes(b"w")
    store = open_store(tmp_path / "store")
    versions = [store.publish("neurovit", source, metadata={"run": run}) for run in range(5)]
    records = tmp_path / "records"
    monkeypatch.setenv("NEUROVIT_DEPLOY_RECORDS", str(records))
    live = {  # a canary: versions[1] takes a share of the traffic, versions[0] the rest and the rollback
        "metadata": {
            "name": "neurovit",
            "annotations": {"neurovit.io/previous-storage-uri": f"s3://neurovit/neurovit/{versions[0]}"},
        },
        "spec": {"predictor": {"model": {"storageUri": f"s3://neurovit/neurovit/{versions[1]}/"}}},
    }
    record_deployment(live, Target("neurovit", "neurovit"))
    args = ["versions", "prune", "--store", str(tmp_path / "store"), "--keep", "1", "--protect", versions[2]]
    assert main(args) == 0
    assert "removed 1 versions" in capsys.readouterr().out
    assert [entry["version"] for entry in store.list_versions("neurovit")] == [*versions[:3], versions[4]]

    (records / "neurovit.neurovit.json").write_text("{half a record")
    assert main(args) == 2  # never prune blind to what a cluster serves
    assert "deployment records" in capsys.readouterr().err
