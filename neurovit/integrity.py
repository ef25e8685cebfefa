"""Is this folder exactly one published version? Checked against the version's ``manifest.json``.

A published version (``neurovit.store``) holds ``manifest.json``, which lists every other file with its size
and sha256. ``verify_folder`` accepts a folder only when every listed file is there, with that size and
checksum, and no other file is: a tampered or truncated file, a missing manifest (an interrupted publish, or
no version at all) and a folder that mixes in files of other versions (a ``storageUri`` prefix without its
trailing slash also matches sibling versions) are all refused.

``verify_served_version`` is what the TorchServe handler calls before it loads anything: the folder is the
one KServe's storage initializer filled from ``storageUri`` (``/mnt/models``), or ``NEUROVIT_VERSION_DIR``
where a local server keeps its fetched version elsewhere. Standard library only: the serving image has no
minio, and the store checks fetched files with the same functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path, PurePosixPath

from neurovit.errors import IntegrityError

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
VERSION_DIR_ENV = "NEUROVIT_VERSION_DIR"
# Where KServe's storage initializer copies the storageUri prefix (the predictor's model mount).
DEFAULT_VERSION_DIR = "/mnt/models"


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def safe_relpath(relpath: str, where: str) -> PurePosixPath:
    """A manifest path that stays inside its version folder (a tampered manifest must not write elsewhere)."""
    path = PurePosixPath(relpath)
    if path.is_absolute() or ".." in path.parts or not path.parts or relpath == MANIFEST_FILE:
        raise IntegrityError(f"{where}: manifest lists an unsafe file path {relpath!r}")
    return path


def check_file(path: Path, entry: dict, label: str) -> None:
    """Raise IntegrityError naming ``label`` when ``path`` is missing or differs from its manifest entry."""
    if not path.is_file():
        raise IntegrityError(f"{label}: file missing")
    size = path.stat().st_size
    if size != entry["size"]:
        raise IntegrityError(f"{label}: size {size} bytes, manifest says {entry['size']}")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise IntegrityError(f"{label}: sha256 {digest} does not match the manifest's {entry['sha256']}")


def read_manifest(folder: Path) -> dict:
    """The folder's manifest; IntegrityError when it is missing or is not a manifest."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise IntegrityError(
            f"{folder} has no {MANIFEST_FILE}: not a complete published version (an interrupted publish, "
            "or a storage URI that names no version)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IntegrityError(f"{path} is not readable JSON: {error}") from error
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise IntegrityError(f"{path} has no 'files' table")
    for relpath, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and entry.get("sha256")):
            raise IntegrityError(f"{path}: entry {relpath!r} has no size and sha256")
    return manifest


def verify_folder(folder: str | Path, *, model: str | None = None, version: str | None = None) -> dict:
    """Check that ``folder`` holds exactly the files its manifest lists, intact; return the manifest.

    ``model`` and ``version``, when given, must be the ones the manifest names (an archive of one version
    mounted beside another version's files is refused). Raises IntegrityError saying what is wrong.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IntegrityError(f"{folder} is not a folder: no published version to verify")
    manifest = read_manifest(folder)
    for key, expected in (("model", model), ("version", version)):
        if expected is not None and manifest.get(key) != expected:
            raise IntegrityError(
                f"{folder / MANIFEST_FILE} is for {key} {manifest.get(key)!r}, the server loads {expected!r}"
            )
    listed = {MANIFEST_FILE}
    for relpath, entry in manifest["files"].items():
        label = f"{folder.name}/{relpath}"
        check_file(folder / safe_relpath(relpath, label), entry, label)
        listed.add(relpath)
    unlisted = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if not path.is_dir() and path.relative_to(folder).as_posix() not in listed
    )
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")
        raise IntegrityError(
            f"{folder} holds files its manifest does not list ({shown}): not exactly one version (a storage "
            "URI without its trailing slash also copies sibling versions)"
        )
    return manifest


def verify_served_version(model: str | None = None, version: str | None = None) -> dict:
    """Verify the version folder a model server loads from (``NEUROVIT_VERSION_DIR``, default
    ``/mnt/models``) before anything is loaded; log and raise IntegrityError when it does not verify."""
    folder = Path(os.environ.get(VERSION_DIR_ENV) or DEFAULT_VERSION_DIR)
    try:
        manifest = verify_folder(folder, model=model, version=version)
    except IntegrityError as error:
        # TorchServe logs the worker's exception too; this line says plainly why nothing was loaded.
        log.error("refusing to load %s %s: %s", model or "the model", version or "", error)
        raise
    log.info(
        "verified %s %s in %s: %d files match manifest.json", model, version, folder, len(manifest["files"])
    )
    return manifest


__all__ = [
    "DEFAULT_VERSION_DIR",
    "MANIFEST_FILE",
    "VERSION_DIR_ENV",
    "check_file",
    "read_manifest",
    "safe_relpath",
    "sha256_of",
    "verify_folder",
    "verify_served_version",
]
