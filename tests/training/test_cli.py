"""The CLI's contract: every command's --help, --json that parses, one clear line on stderr for bad input,
exit status 2 for usage and 3 for data or store errors, nothing half-written; the one version resolver."""

import argparse
import json

import pytest

from neurovit.errors import StoreError
from neurovit.store import open_store, resolve_version
from training import stages
from training.cli import build_parser, command_tree, main, train_config
from training.train import DEMO_TRAINING


@pytest.fixture
def one_class_folder(tmp_path, write_slice):
    for i in range(3):
        write_slice(tmp_path / "data" / "glioma" / f"{i}.png", seed=i)
    return tmp_path / "data"


def run_job(data_dir, store, run_dir) -> int:
    return main(["train", "--data-dir", str(data_dir), "--store", str(store), "--run-dir", str(run_dir)])


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert (
        main(["data", "analyze", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 3
    )
    assert "error: data path does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        main(["data", "analyze", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 3
    )
    assert "empty" in capsys.readouterr().err


def test_one_class_only_is_refused_before_anything_is_trained(one_class_folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = run_job(one_class_folder, tmp_path / "store", run_dir)
    assert code == 3
    assert "one class" in capsys.readouterr().err
    assert not (run_dir / "train").exists()


def test_unwritable_store_is_found_before_training(one_class_folder, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    run_dir = tmp_path / "run"
    code = run_job(one_class_folder, blocker / "store", run_dir)
    assert code == 3
    assert "store path" in capsys.readouterr().err
    assert not run_dir.exists()


def test_the_demo_recipe_trains_with_the_head_median_intensity_window(monkeypatch, tmp_path):
    """The recipe's window reaches the model's PreprocessConfig; the demo picks the median window."""
    seen = []
    monkeypatch.setattr(stages.split, "load_split", lambda path: argparse.Namespace(classes=["a", "b"]))
    monkeypatch.setattr(
        stages, "split_arrays", lambda data, plan, part, preprocessing, cache: seen.append(preprocessing)
    )
    monkeypatch.setattr(stages, "train", lambda *args, **kwargs: args[3])
    args = argparse.Namespace(image_size=128)
    demo = train_config(args, DEMO_TRAINING)
    assert stages.train_stage(
        tmp_path, tmp_path / "split.json", tmp_path / "train", demo
    ).intensity_window == ("foreground_median")
    plain = stages.train_stage(tmp_path, tmp_path / "split.json", tmp_path / "train", train_config(args))
    assert plain.intensity_window == "percentile"  # everything else keeps the default window
    assert [config.intensity_window for config in seen] == ["foreground_median"] * 2 + ["percentile"] * 2


def test_prune_keeps_what_make_deploy_recorded_and_what_is_protected(tmp_path, monkeypatch, capsys):
    from handlers.kserve_rollout import Target, record_deployment

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
    assert main(args) == 3  # never prune blind to what a cluster serves
    assert "deployment records" in capsys.readouterr().err


COMMANDS = [name.split() for name, _ in command_tree(build_parser()._subparsers._group_actions[0])]


def test_help_lists_every_command_with_one_line(capsys):
    assert main(["--help"]) == 0
    printed = capsys.readouterr().out
    for command in COMMANDS:
        assert " ".join(command) in printed
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command, capsys):
    assert main([*command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: neurovit {' '.join(command)}")


def test_version(capsys):
    import neurovit

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"neurovit {neurovit.__version__}"


@pytest.mark.parametrize(
    "argv", [["versions", "list", "--no-such-flag"], ["no-such-command"], ["evaluate"], ["versions"]]
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.fixture
def store(tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    (source / "weights.bin").write_bytes(b"w")
    store = open_store(tmp_path / "store")
    versions = [store.publish("neurovit", source, metadata={"run": run}) for run in range(2)]
    return store, versions


def test_missing_version_exits_3_without_a_traceback(store, capsys):
    store, _ = store
    assert main(["versions", "show", "--store", str(store.root), "--version", "v20990101-000000-abcdef"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: no version 'v20990101-000000-abcdef'") and "Traceback" not in err
    assert main(["versions", "verify", "--store", str(store.root / "empty")]) == 3


def test_a_folder_that_is_not_a_dataset_exits_3(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    assert main(["data", "analyze", "--data-dir", str(tmp_path / "notes"), "--out", str(tmp_path / "o")]) == 3
    assert capsys.readouterr().err.startswith("error: ")


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["versions", "show", "--store", str(tmp_path / "none")]
    assert main(["--debug", *argv]) == 3
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("NEUROVIT_DEBUG", "1")
    assert main(argv) == 3
    assert "Traceback" in capsys.readouterr().err


def test_json_output_parses_and_human_lines_go_to_stderr(store, capsys):
    store, versions = store
    assert main(["versions", "list", "--store", str(store.root), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [entry["version"] for entry in json.loads(out)] == versions
    assert versions[0] in err  # the human lines, moved off stdout
    assert main(["versions", "verify", "--store", str(store.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "model": "neurovit",
        "version": versions[1],
        "verified": True,
    }
    assert main(["versions", "show", "--store", str(store.root), "--version", versions[0], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == versions[0]


def test_the_resolver_reads_every_form(store, tmp_path, monkeypatch):
    store, versions = store
    root = str(store.root)
    expected = ("neurovit", versions[1])
    assert resolve_version("latest", root, model="neurovit")[1:] == expected
    assert resolve_version(versions[1], root, model="neurovit")[1:] == expected
    assert resolve_version(f"{root}/neurovit/{versions[1]}", "/elsewhere", model="other")[1:] == expected
    assert resolve_version(f"{root}/neurovit/latest", "/elsewhere", model="other")[1:] == expected
    assert resolve_version(f"{root}/neurovit", "/elsewhere", model="other")[1:] == expected
    assert resolve_version(versions[0], root, model="neurovit")[1:] == ("neurovit", versions[0])
    monkeypatch.chdir(tmp_path)  # a relative version folder
    assert resolve_version(f"store/neurovit/{versions[0]}", "/x", model="x")[1:] == ("neurovit", versions[0])
    for bad in ("v20990101-000000-abcdef", "not a name", f"{root}/neurovit/v20990101-000000-abcdef"):
        with pytest.raises(StoreError):
            resolve_version(bad, root, model="neurovit")


def test_the_resolver_reads_s3_uris(monkeypatch):
    calls = []
    monkeypatch.setattr("neurovit.store.resolve", lambda uri, model=None: calls.append((uri, model)))
    resolve_version("s3://bucket/prefix/neurovit/v20261125-160000-ab12cd", "s3://bucket/prefix", model="m")
    resolve_version("v20261125-160000-ab12cd", "s3://bucket/prefix/", model="neurovit")
    resolve_version("latest", "s3://bucket", model="neurovit")
    assert calls == [
        ("s3://bucket/prefix/neurovit/v20261125-160000-ab12cd", None),
        ("s3://bucket/prefix/neurovit/v20261125-160000-ab12cd", None),
        ("s3://bucket", "neurovit"),
    ]
