"""A stage that runs out of disk says so and leaves no half-written output behind."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
from fixtures.run_outputs import write_run_outputs

from neurovit.errors import NeuroVitError, OutputError
from training import stages


@pytest.fixture()
def run_outputs(tmp_path: Path) -> dict[str, Path]:
    outputs = write_run_outputs(tmp_path)
    (outputs["evaluation"] / "cache").mkdir()
    (outputs["evaluation"] / "cache" / "arrays.npz").write_bytes(b"big")
    return outputs


def test_disk_full_during_the_publish_copy_is_clear_and_leaves_nothing(
    run_outputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copyfile, copies = shutil.copyfile, []

    def copy_until_the_disk_is_full(source, target, *args, **kwargs):
        copies.append(source)
        if len(copies) == 3:
            Path(target).write_bytes(b"x")  # part of the file made it
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real_copyfile(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_until_the_disk_is_full)
    staging = tmp_path / "work" / "staging"
    with pytest.raises(OutputError, match="no space left on the device") as caught:
        stages.publish_stage(
            str(tmp_path / "store"),
            "neurovit",
            run_outputs["model"],
            run_outputs["evaluation"],
            run_outputs["split"],
            run_outputs["analysis"],
            staging,
            package=False,
        )
    assert isinstance(caught.value, NeuroVitError) and str(staging) in str(caught.value)
    assert len(copies) == 3  # it stopped at the first failure
    assert list((tmp_path / "work").iterdir()) == []  # no staging folder, no hidden half-copy
    assert not (tmp_path / "store").exists()


def test_built_in_place_replaces_the_destination_only_on_success(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with stages.built_in_place(dest, "test output") as building:
        (building / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), stages.built_in_place(dest, "test output") as building:
        (building / "a.txt").write_text("second")
        raise RuntimeError("the stage failed")
    assert (dest / "a.txt").read_text() == "first"
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
