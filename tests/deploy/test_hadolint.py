"""hadolint on every Dockerfile here; .hadolint.yaml ignores a few rules, each for a reason."""

from __future__ import annotations

import subprocess

from k8s_render import BIN, ROOT

SKIP = {".venv", ".venv-tools", "outputs", ".git", "node_modules"}


def dockerfiles() -> list:
    return sorted(p for p in ROOT.rglob("Dockerfile*") if not SKIP & set(p.relative_to(ROOT).parts))


def test_every_dockerfile_passes_hadolint() -> None:
    files = dockerfiles()
    assert {p.relative_to(ROOT).as_posix() for p in files} >= {
        "handlers/Dockerfile",
        "handlers/Dockerfile.kserve",
        "training/Dockerfile",
    }
    result = subprocess.run(
        [str(BIN / "hadolint"), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", *map(str, files)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_still_finds_problems() -> None:
    """The config only ignores named rules: a bad Dockerfile still fails."""
    result = subprocess.run(
        [str(BIN / "hadolint"), "--config", str(ROOT / ".hadolint.yaml"), "-"],
        input="FROM python:latest\nRUN cd /tmp && pip install requests\n",
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "DL3007" in result.stdout
