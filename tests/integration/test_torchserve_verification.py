"""A real TorchServe never turns the model ready when the mounted version does not match its manifest: the
handler refuses in initialize, TorchServe retries the worker, the management API never reports READY (what
KServe's readiness probe reads), and the log says why."""

from __future__ import annotations

import shutil

import pytest

from handlers.local_service import ServeError

pytestmark = pytest.mark.integration


def test_a_tampered_version_never_turns_ready(torchserve_package, start_torchserve, tmp_path):
    version = tmp_path / "version"
    shutil.copytree(torchserve_package, version)
    # A file TorchServe itself never reads in this test (the server gets its own config.properties), so
    # only the manifest check can stop it.
    with (version / "config" / "config.properties").open("a") as config:
        config.write("# changed after publishing\n")
    with pytest.raises(ServeError, match="did not become ready"):
        with start_torchserve(version, tmp_path / "server", ready_timeout_s=45):
            pass
    logs = "".join(path.read_text(errors="replace") for path in (tmp_path / "server").rglob("*.log"))
    assert "refusing to load neurovit" in logs and "config/config.properties: size" in logs
