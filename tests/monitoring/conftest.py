"""Fixtures for the monitoring checks: promtool, and running it from the repository root."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def promtool() -> Callable[..., subprocess.CompletedProcess]:
    """``promtool(*args)``: runs promtool in the repository root; fails the test on a non-zero exit."""
    binary = shutil.which("promtool")
    if binary is None:
        message = "promtool is missing: `make prometheus` (apt-get install -y prometheus)"
        if os.environ.get("CI"):  # `make test` installs it first: in CI a missing promtool is a failure
            pytest.fail(message)
        pytest.skip(message)

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([binary, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    return run
