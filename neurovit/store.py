"""Versioned, checksummed artifact store: a local folder (default) or MinIO / any S3 API via the minio SDK.

Layout: ``<root>/<model>/<version>/<files...>`` where root is a local folder or ``s3://<bucket>[/<prefix>]``.
Version ids sort by time, ``vYYYYMMDD-HHMMSS-<6 hex>`` (UTC). Every version holds a ``manifest.json`` that is
written last: ``{model, version, created_at, files: {relpath: {sha256, size}}}`` plus the publisher's
metadata (metrics, data fingerprint, preprocessing, code version...). A version without a manifest is an
interrupted publish: it is never listed nor loaded, publishing it again completes it, ``prune`` removes it.
Versions are immutable: republishing one with different content is refused.

The local back end builds each version in a hidden folder inside the model folder and renames it into place,
so a version appears complete or not at all. The S3 back end uploads the objects, then the manifest; a retry
skips objects already uploaded with the same checksum.

Two publishes of one version id: before writing anything, a publish claims the id with an exclusive create
of ``<root>/.claims/<model>/<version>.json`` holding its file table (local: a hard link, which fails when the
name exists; S3: a PUT with ``If-None-Match: *``, a conditional write MinIO and AWS S3 honour and answer 412
to when the object exists). Only publishes of the same files go on (a retry, or a twin racing it); one with
other files is refused with ``VersionConflictError`` and writes nothing. A store that ignores
``If-None-Match`` (old MinIO or S3-compatibles) loses that guarantee. ``prune`` removes a version's claim
with it, and claims of publishes that never wrote their version once they are stale.

Store URIs never carry credentials (``s3://KEY:SECRET@bucket`` is refused, and shown redacted): they would
end up in logs, tracebacks and process lists. ``redact_uri`` masks them wherever a URI is printed.

Environment variables (S3 back end only; secrets are never logged):

``NEUROVIT_S3_ENDPOINT``
    ``host:port`` of the S3 API, e.g. ``minio.neurovit.svc:9000`` or ``s3.amazonaws.com``. Required for
    ``s3://`` stores. An ``http://`` or ``https://`` prefix is accepted and overrides ``NEUROVIT_S3_SECURE``.
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
    Credentials; when unset, requests are anonymous.
``AWS_SESSION_TOKEN``
    Optional, for temporary credentials.
``NEUROVIT_S3_SECURE``
    ``1`` (default): HTTPS; ``0``: plain HTTP (a MinIO inside the cluster).
``NEUROVIT_S3_REGION``
    Region of the bucket; when unset the SDK asks the server.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from neurovit.errors import IntegrityError, StoreError, VersionConflictError
from neurovit.integrity import MANIFEST_FILE
from neurovit.integrity import check_file as _check_file
from neurovit.integrity import safe_relpath as _safe_relpath
from neurovit.integrity import sha256_of as _sha256

log = logging.getLogger(__name__)

LATEST = "latest"
# Checked with fullmatch: `$` also matches before a final newline, so `^...$` let "v1\n" through. \Z keeps a
# caller's .match() exact too.
VERSION_PATTERN = re.compile(r"v\d{8}-\d{6}-[0-9a-f]{6}\Z")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RESERVED_KEYS = ("model", "version", "created_at", "files")
_SUMMARY_METRICS = 6
_PUBLISHING_PREFIX = ".publishing-"
_CLAIMS = ".claims"  # beside the model folders, so a version's prefix (KServe's storageUri) holds no claim
# user:password@ after the scheme: credentials that must never reach a log line or an error message.
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")
_CREDENTIAL_ERRORS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
# Short timeouts and few retries: an unreachable endpoint must fail in seconds, not minutes.
_S3_TIMEOUT = urllib3.Timeout(connect=3.0, read=30.0)
_S3_RETRIES = urllib3.Retry(
    total=2,
    connect=1,
    read=1,
    backoff_factor=0.2,
    status_forcelist=(500, 502, 503, 504),
    raise_on_status=False,
)


def redact_uri(uri: str | Path) -> str:
    """``uri`` with any ``user:password@`` part masked as ``***@``: safe for logs and error messages."""
    return _USERINFO.sub("***@", str(uri))


def _refuse_credentials(uri: str, what: str = "store URI") -> None:
    if _USERINFO.search(uri):
        raise StoreError(
            f"{what} {redact_uri(uri)} carries credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "instead (a URI ends up in logs, manifests and process lists)"
        )


def new_version_id(now: datetime | None = None) -> str:
    """A fresh version id that sorts by creation time: ``vYYYYMMDD-HHMMSS-<6 hex>`` (UTC)."""
    now = now or datetime.now(UTC)
    return f"v{now.astimezone(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME_PATTERN.fullmatch(value) or value == LATEST:
        raise ValueError(
            f"invalid {what} name {value!r}: use letters, digits, '.', '_' or '-', not starting with '.' "
            f"or '-', and not {LATEST!r}"
        )
    return value


def _copy_file(source: Path, target: Path) -> None:
    """Copy and flush to disk, so a version renamed into place survives a power cut."""
    with source.open("rb") as reader, target.open("wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
        writer.flush()
        os.fsync(writer.fileno())


def _write_json_durably(path: Path, document: dict) -> None:
    with path.open("w") as handle:
        handle.write(json.dumps(document, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _collect_files(source_dir: str | Path) -> dict[str, Path]:
    """Every regular file under ``source_dir`` by POSIX relative path (a top manifest.json is dropped)."""
    source = Path(source_dir)
    if not source.is_dir():
        raise StoreError(f"nothing to publish: {source} is not a folder")
    files = {}
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        relpath = path.relative_to(source).as_posix()
        if relpath == MANIFEST_FILE:
            # A folder fetched from the store carries its old manifest; the new one replaces it.
            log.warning("publish: ignoring %s; the store writes its own manifest", path)
            continue
        files[relpath] = path
    if not files:
        raise StoreError(f"nothing to publish: {source} holds no files")
    return files


def _summary(manifest: dict) -> dict:
    """The one-line view of a version that ``list_versions`` returns."""
    metrics = manifest.get("metrics")
    scalars = {}
    if isinstance(metrics, dict):
        scalars = {
            name: value
            for name, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
    return {
        "version": manifest["version"],
        "created_at": manifest["created_at"],
        "size": sum(entry["size"] for entry in manifest["files"].values()),
        "n_files": len(manifest["files"]),
        "metrics": dict(list(scalars.items())[:_SUMMARY_METRICS]),
    }


class ArtifactStore(ABC):
    """Shared logic of the back ends; they supply the storage primitives (the ``_`` methods)."""

    uri: str

    # --- storage primitives -------------------------------------------------------------------------------

    @abstractmethod
    def _model_names(self) -> list[str]:
        """Every model folder name."""

    @abstractmethod
    def _version_names(self, model: str) -> list[str]:
        """Every version folder name of ``model``, complete or not (hidden build folders excluded)."""

    @abstractmethod
    def _read_manifest_text(self, model: str, version: str) -> str | None:
        """The manifest's text, or None when the version has none."""

    @abstractmethod
    def _write_version(self, model: str, version: str, files: dict[str, Path], manifest: dict) -> None:
        """Store ``files`` under the version, then its manifest, last."""

    @abstractmethod
    def _download(self, model: str, version: str, relpath: str, target: Path) -> None:
        """Copy one stored file to ``target``; IntegrityError when it is missing."""

    @abstractmethod
    def _create_claim(self, model: str, version: str, claim: dict) -> dict | None:
        """Create the version's claim unless one exists: None if this call created it, else the existing one.

        Exclusive: of two concurrent calls for one version, exactly one creates the claim.
        """

    @abstractmethod
    def _delete_version(self, model: str, version: str) -> None:
        """Remove a version folder, complete or not, and its claim."""

    @abstractmethod
    def _incomplete_leftovers(self, model: str, older_than_s: float) -> list[str]:
        """Interrupted publishes of ``model`` (claims included) untouched for ``older_than_s`` seconds."""

    # --- public API ---------------------------------------------------------------------------------------

    def publish(
        self, model: str, source_dir: str | Path, *, metadata: dict, version: str | None = None
    ) -> str:
        """Upload every file under ``source_dir`` as a new version of ``model`` and return its id.

        ``metadata`` (JSON-serialisable) is merged into the manifest. Passing the ``version`` of an
        interrupted publish completes it; republishing a complete version with the same files is a no-op.
        A publish of the same ``version`` with other files, concurrent or later, is refused before it writes
        anything (``VersionConflictError``; see the module docstring on claims).
        """
        _check_name(model, "model")
        version = _check_name(version, "version") if version is not None else new_version_id()
        clashes = sorted(set(metadata) & set(_RESERVED_KEYS))
        if clashes:
            raise ValueError(f"metadata keys {clashes} are reserved for the manifest")
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as error:
            raise ValueError(f"metadata is not JSON-serialisable: {error}") from error
        files = _collect_files(source_dir)
        entries = {
            relpath: {"sha256": _sha256(path), "size": path.stat().st_size} for relpath, path in files.items()
        }

        existing = self._load_manifest(model, version)
        if existing is not None:
            if existing["files"] == entries:
                log.info("publish: %s/%s already holds these files; nothing to do", model, version)
                return version
            raise StoreError(
                f"version {version} of {model} already exists in {self.uri} with other files; "
                "versions are immutable, publish a new version"
            )
        manifest = {
            "model": model,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "files": entries,
            **metadata,
        }
        self._claim(model, version, entries)
        self._write_version(model, version, files, manifest)
        log.info("published %s/%s (%d files) to %s", model, version, len(files), self.uri)
        return version

    @abstractmethod
    def check_writable(self) -> None:
        """Raise StoreError now if a publish would fail (unwritable folder, bad credentials, no bucket).

        Called before hours of training, so a store problem is found before the work it would lose.
        """

    def version_uri(self, model: str, version: str) -> str:
        """The URI that names one version (a folder path or an s3:// URI); ``resolve`` reads it back."""
        return f"{self.uri.rstrip('/')}/{_check_name(model, 'model')}/{_check_name(version, 'version')}"

    def list_models(self) -> list[str]:
        """Models with at least one complete version, sorted by name."""
        return sorted(model for model in self._model_names() if self._complete_manifests(model))

    def list_versions(self, model: str) -> list[dict]:
        """Complete versions of ``model``, oldest first: version, created_at, size, n_files, a few metrics."""
        return [_summary(manifest) for manifest in self._complete_manifests(model)]

    def latest(self, model: str) -> str:
        """The newest complete version of ``model``; StoreError when there is none."""
        manifests = self._complete_manifests(model)
        if not manifests:
            raise StoreError(f"no complete version of model {model!r} in {self.uri}")
        return manifests[-1]["version"]

    def manifest(self, model: str, version: str) -> dict:
        """The manifest of a complete version (``version`` may be ``"latest"``)."""
        version = self._resolve_version(model, version)
        manifest = self._load_manifest(model, version)
        if manifest is not None:
            return manifest
        if version in self._version_names(model):
            raise IntegrityError(
                f"version {version} of {model} in {self.uri} is incomplete (no {MANIFEST_FILE}): "
                "an interrupted publish; publish it again or prune it"
            )
        raise StoreError(f"no version {version!r} of model {model!r} in {self.uri}")

    def fetch(self, model: str, version: str, dest_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Download a version to ``dest_dir`` (with its manifest) and verify every checksum.

        Files land in a temporary folder beside ``dest_dir`` that is renamed into place only once all of them
        verify, so a failure leaves nothing half-written. A ``dest_dir`` that already holds this verified
        version is returned as is; other content is replaced only with ``overwrite``.
        """
        manifest = self.manifest(model, version)
        version = manifest["version"]
        dest = Path(dest_dir)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            if _holds_version(dest, manifest):
                log.info("fetch: %s already holds %s/%s", dest, model, version)
                return dest
            if not overwrite:
                raise StoreError(
                    f"cannot fetch {model}/{version}: {dest} exists and holds something else "
                    "(pass overwrite=True to replace it)"
                )
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetching-", dir=dest.parent))
        except OSError as error:
            raise StoreError(f"cannot write to {dest.parent}: {error}") from error
        try:
            for relpath, entry in manifest["files"].items():
                label = f"{model}/{version}/{relpath}"
                target = staging / _safe_relpath(relpath, label)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download(model, version, relpath, target)
                _check_file(target, entry, label)
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            _replace_dir(staging, dest)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError):  # disk full, no permission: say so, not a bare errno
                raise StoreError(
                    f"cannot fetch {model}/{version} to {dest}: {_os_reason(error)} (nothing half-written "
                    "was left)"
                ) from error
            raise
        log.info("fetched %s/%s from %s to %s", model, version, self.uri, dest)
        return dest

    def verify(self, model: str, version: str) -> dict:
        """Check every file of a version against its manifest; return the manifest or raise IntegrityError."""
        manifest = self.manifest(model, version)
        with tempfile.TemporaryDirectory(prefix="neurovit-verify-") as scratch:
            self.fetch(model, manifest["version"], Path(scratch) / "version")
        return manifest

    def prune(
        self, model: str, keep: int, *, stale_after_s: float = 3600.0, protect: Iterable[str] = ()
    ) -> list[str]:
        """Remove the oldest complete versions beyond ``keep`` (>= 1) and interrupted publishes; return them.

        Versions named in ``protect`` (what a cluster serves or would roll back to, as `make deploy` records
        it: ``handlers.kserve_rollout.recorded_versions``) are never removed, nor counted toward ``keep``.
        Interrupted publishes younger than ``stale_after_s`` are left alone: they may be in progress.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (the latest version is never pruned), got {keep}")
        protected = set(protect)
        complete = [manifest["version"] for manifest in self._complete_manifests(model)]
        unprotected = [version for version in complete if version not in protected]
        removed = []
        for version in unprotected[: max(0, len(unprotected) - keep)]:
            self._delete_version(model, version)
            removed.append(version)
        for leftover in self._incomplete_leftovers(model, stale_after_s):
            if leftover in protected:
                continue
            self._delete_version(model, leftover)
            removed.append(leftover)
        if removed:
            log.info("pruned %s from %s/%s", removed, self.uri, model)
        return removed

    # --- helpers ------------------------------------------------------------------------------------------

    def _claim(self, model: str, version: str, entries: dict) -> None:
        """Reserve ``version`` for these files before anything is written (see the module docstring)."""
        existing = self._create_claim(model, version, {"model": model, "version": version, "files": entries})
        if existing is not None and existing.get("files") != entries:
            raise VersionConflictError(
                f"version {version} of {model} in {self.uri} is claimed by another publish with other files "
                "(in progress, or interrupted: `neurovit versions prune` removes stale claims); versions are "
                "immutable, publish a new version"
            )

    def _resolve_version(self, model: str, version: str) -> str:
        return self.latest(model) if version == LATEST else version

    def _load_manifest(self, model: str, version: str) -> dict | None:
        # Names become paths and keys: checking them keeps every read inside the store.
        text = self._read_manifest_text(_check_name(model, "model"), _check_name(version, "version"))
        if text is None:
            return None
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as error:
            raise IntegrityError(f"{model}/{version}/{MANIFEST_FILE} is not valid JSON: {error}") from error
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise IntegrityError(f"{model}/{version}/{MANIFEST_FILE} has no 'files' table")
        if (manifest.get("model"), manifest.get("version")) != (model, version):
            raise IntegrityError(
                f"{model}/{version}/{MANIFEST_FILE} describes "
                f"{manifest.get('model')}/{manifest.get('version')}: a moved or copied folder"
            )
        return manifest

    def _complete_manifests(self, model: str) -> list[dict]:
        """Manifests of the complete versions, oldest first; unreadable ones are skipped with a warning."""
        manifests = []
        for version in self._version_names(model):
            try:
                manifest = self._load_manifest(model, version)
            except IntegrityError as error:
                log.warning("skipping %s: %s", version, error)
                continue
            if manifest is not None:
                manifests.append(manifest)
        return sorted(manifests, key=lambda manifest: (manifest["created_at"], manifest["version"]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _holds_version(folder: Path, manifest: dict) -> bool:
    """Whether ``folder`` is an intact earlier fetch of the version ``manifest`` describes."""
    try:
        local = json.loads((folder / MANIFEST_FILE).read_text())
        if (local.get("version"), local.get("files")) != (manifest["version"], manifest["files"]):
            return False
        for relpath, entry in manifest["files"].items():
            _check_file(folder / relpath, entry, relpath)
    except (OSError, ValueError, AttributeError, IntegrityError):
        return False
    return True


def _replace_dir(staging: Path, dest: Path) -> None:
    """Rename ``staging`` to ``dest``, moving anything already at ``dest`` out of the way first."""
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    elif dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / "content")
        os.rename(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(staging, dest)


class LocalStore(ArtifactStore):
    """A store in a local (or mounted) folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)
        # A file anywhere on the path makes the store unusable for reading and writing alike.
        for folder in (self.root, *self.root.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise StoreError(f"store path {self.root} is unusable: {folder} is a file, not a folder")
                break

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as error:
            raise StoreError(f"store path {self.root} is not writable: {error}") from error

    def _model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and _NAME_PATTERN.fullmatch(entry.name)
        )

    def _version_names(self, model: str) -> list[str]:
        model_dir = self.root / _check_name(model, "model")
        if not model_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in model_dir.iterdir()
            if entry.is_dir() and _NAME_PATTERN.fullmatch(entry.name)
        )

    def _read_manifest_text(self, model: str, version: str) -> str | None:
        path = self.root / model / version / MANIFEST_FILE
        try:
            return path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise StoreError(f"cannot read {path}: {error}") from error

    def _claim_path(self, model: str, version: str) -> Path:
        return self.root / _CLAIMS / model / f"{version}.json"

    def _create_claim(self, model: str, version: str, claim: dict) -> dict | None:
        path = self._claim_path(model, version)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=path.parent, prefix=".claiming-", delete=False
            ) as handle:
                handle.write(json.dumps(claim) + "\n")
            try:
                os.link(handle.name, path)  # exclusive: fails when the name exists, and the content is whole
                return None
            except FileExistsError:
                return json.loads(path.read_text())
            finally:
                os.unlink(handle.name)
        except (OSError, ValueError) as error:
            raise StoreError(f"cannot claim {model}/{version} in {self.root}: {error}") from error

    def _write_version(self, model: str, version: str, files: dict[str, Path], manifest: dict) -> None:
        model_dir = self.root / model
        target = model_dir / version
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
            if (target / MANIFEST_FILE).is_file():  # a twin publish of the same files finished first
                return
            if target.exists():  # an incomplete folder: moved aside first, so a racing twin's is never hit
                log.warning("publish: replacing incomplete version folder %s", target)
                aside = Path(tempfile.mkdtemp(prefix=f"{_PUBLISHING_PREFIX}{version}-stale-", dir=model_dir))
                os.rename(target, aside / "content")
                shutil.rmtree(aside)
            staging = Path(tempfile.mkdtemp(prefix=f"{_PUBLISHING_PREFIX}{version}-", dir=model_dir))
        except OSError as error:
            raise StoreError(f"store path {self.root} is not writable: {error}") from error
        try:
            for relpath, source in files.items():
                destination = staging / relpath
                destination.parent.mkdir(parents=True, exist_ok=True)
                _copy_file(source, destination)
            _write_json_durably(staging / MANIFEST_FILE, manifest)
            os.chmod(staging, 0o755)  # mkdtemp makes it owner-only
            _rename_into_place(staging, target)
            _fsync_dir(model_dir)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError):
                raise StoreError(
                    f"cannot publish {model}/{version} to {self.root}: {_os_reason(error)} (nothing "
                    "half-written was left)"
                ) from error
            raise

    def _download(self, model: str, version: str, relpath: str, target: Path) -> None:
        source = self.root / model / version / relpath
        if not source.is_file():
            raise IntegrityError(f"{model}/{version}/{relpath}: file missing from the store")
        _copy_file(source, target)

    def _delete_version(self, model: str, version: str) -> None:
        folder = self.root / model / version
        if folder.exists():
            shutil.rmtree(folder)
        self._claim_path(model, version).unlink(missing_ok=True)

    def _incomplete_leftovers(self, model: str, older_than_s: float) -> list[str]:
        model_dir = self.root / model
        cutoff = time.time() - older_than_s
        leftovers = []
        for entry in sorted(model_dir.iterdir()) if model_dir.is_dir() else []:
            interrupted = entry.name.startswith(_PUBLISHING_PREFIX) or (
                _NAME_PATTERN.fullmatch(entry.name) and not (entry / MANIFEST_FILE).is_file()
            )
            if entry.is_dir() and interrupted and _newest_mtime(entry) <= cutoff:
                leftovers.append(entry.name)
        claims = self.root / _CLAIMS / model
        for claim in sorted(claims.glob("*.json")) if claims.is_dir() else []:
            orphan = not (model_dir / claim.stem).exists()  # the publish stopped before writing its version
            if orphan and claim.stat().st_mtime <= cutoff and claim.stem not in leftovers:
                leftovers.append(claim.stem)
        return leftovers

    def verify(self, model: str, version: str) -> dict:
        """Check every file in place against the manifest (no copy)."""
        manifest = self.manifest(model, version)
        folder = self.root / model / manifest["version"]
        for relpath, entry in manifest["files"].items():
            label = f"{model}/{manifest['version']}/{relpath}"
            _check_file(folder / _safe_relpath(relpath, label), entry, label)
        return manifest


def _rename_into_place(staging: Path, target: Path) -> None:
    """Atomic: the version appears complete or not at all. A twin publish (same claim, same files) may have
    put its copy there first; that one stays."""
    try:
        os.rename(staging, target)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not (target / MANIFEST_FILE).is_file():
            raise
        log.info("publish: %s was completed by a concurrent publish of the same files", target)
        shutil.rmtree(staging, ignore_errors=True)


def _os_reason(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the device: free some space and try again"
    return error.strerror or str(error)


def _newest_mtime(folder: Path) -> float:
    return max([folder.stat().st_mtime, *(path.stat().st_mtime for path in folder.rglob("*"))])


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class S3Store(ArtifactStore):
    """A store in an S3 bucket (MinIO, AWS or any S3 API), under an optional key prefix."""

    def __init__(
        self, client: Minio, endpoint: str, bucket: str, prefix: str = "", *, create_bucket: bool = False
    ):
        self._client = client
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        with self._errors("checking the bucket"):
            if not client.bucket_exists(bucket):
                if not create_bucket:
                    raise StoreError(
                        f"S3 bucket {bucket!r} does not exist at {endpoint}: create it, or open the "
                        "store with create_bucket=True"
                    )
                client.make_bucket(bucket)
                log.info("created S3 bucket %s at %s", bucket, endpoint)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate SDK and network failures into StoreErrors that say what to fix."""
        try:
            yield
        except S3Error as error:
            if error.code in _CREDENTIAL_ERRORS:
                raise StoreError(
                    f"S3 rejected the credentials for {self.endpoint} ({error.code}) while {action}: check "
                    f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the key's rights on {self.bucket!r}"
                ) from error
            if error.code == "NoSuchBucket":
                raise StoreError(f"S3 bucket {self.bucket!r} does not exist at {self.endpoint}") from error
            raise StoreError(
                f"S3 error while {action} at {self.endpoint}: {error.code}: {error.message}"
            ) from error
        except urllib3.exceptions.HTTPError as error:
            reason = getattr(error, "reason", None) or error
            raise StoreError(f"cannot reach S3 endpoint {self.endpoint}: {reason}") from error
        except MinioException as error:
            raise StoreError(
                f"unexpected answer from S3 endpoint {self.endpoint} while {action}: {error}"
            ) from error

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def check_writable(self) -> None:
        key = self._key(f".probe-{secrets.token_hex(8)}")
        with self._errors("checking that the bucket is writable"):
            self._client.put_object(self.bucket, key, io.BytesIO(b""), length=0)
            self._client.remove_object(self.bucket, key)

    def _folders(self, prefix: str) -> list[str]:
        with self._errors(f"listing {prefix or '/'}"):
            entries = list(self._client.list_objects(self.bucket, prefix=prefix, recursive=False))
        return sorted(entry.object_name[len(prefix) :].rstrip("/") for entry in entries if entry.is_dir)

    def _model_names(self) -> list[str]:
        return [name for name in self._folders(self.prefix) if _NAME_PATTERN.fullmatch(name)]

    def _version_names(self, model: str) -> list[str]:
        names = self._folders(self._key(_check_name(model, "model"), ""))
        return [name for name in names if _NAME_PATTERN.fullmatch(name)]

    def _read_manifest_text(self, model: str, version: str) -> str | None:
        key = self._key(model, version, MANIFEST_FILE)
        try:
            with self._errors(f"reading {key}"):
                response = self._client.get_object(self.bucket, key)
                try:
                    return response.read().decode()
                finally:
                    response.close()
                    response.release_conn()
        except StoreError as error:
            if isinstance(error.__cause__, S3Error) and error.__cause__.code == "NoSuchKey":
                return None
            raise

    def _uploaded_sha256(self, key: str) -> str | None:
        """The checksum recorded on an already uploaded object, so a retried publish can skip it."""
        try:
            with self._errors(f"checking {key}"):
                stat = self._client.stat_object(self.bucket, key)
        except StoreError as error:
            if isinstance(error.__cause__, S3Error) and error.__cause__.code in {"NoSuchKey", "NoSuchObject"}:
                return None
            raise
        return (stat.metadata or {}).get("x-amz-meta-sha256")

    def _write_version(self, model: str, version: str, files: dict[str, Path], manifest: dict) -> None:
        for relpath, source in files.items():
            key = self._key(model, version, relpath)
            digest = manifest["files"][relpath]["sha256"]
            if self._uploaded_sha256(key) == digest:
                log.debug("publish: %s already uploaded", key)
                continue
            with self._errors(f"uploading {key}"), source.open("rb") as handle:
                self._client.put_object(
                    self.bucket, key, handle, length=source.stat().st_size, metadata={"sha256": digest}
                )
        # The manifest goes last: until it exists, the version is incomplete and invisible.
        body = (json.dumps(manifest, indent=2) + "\n").encode()
        key = self._key(model, version, MANIFEST_FILE)
        with self._errors(f"uploading {key}"):
            self._client.put_object(
                self.bucket, key, io.BytesIO(body), length=len(body), content_type="application/json"
            )

    def _claim_key(self, model: str, version: str) -> str:
        return self._key(_CLAIMS, model, f"{version}.json")

    def _create_claim(self, model: str, version: str, claim: dict) -> dict | None:
        key = self._claim_key(model, version)
        body = (json.dumps(claim) + "\n").encode()
        try:
            with self._errors(f"claiming {key}"):
                # The public put_object has no way to send If-None-Match (it would become user metadata).
                self._client._put_object(
                    self.bucket,
                    key,
                    body,
                    headers={"If-None-Match": "*", "Content-Type": "application/json"},
                )
            return None
        except StoreError as error:
            if not (isinstance(error.__cause__, S3Error) and error.__cause__.code == "PreconditionFailed"):
                raise
        with self._errors(f"reading {key}"):
            response = self._client.get_object(self.bucket, key)
            try:
                text = response.read().decode()
            finally:
                response.close()
                response.release_conn()
        try:
            return json.loads(text)
        except ValueError:
            return {}

    def _download(self, model: str, version: str, relpath: str, target: Path) -> None:
        key = self._key(model, version, relpath)
        try:
            with self._errors(f"downloading {key}"):
                response = self._client.get_object(self.bucket, key)
                try:
                    with target.open("wb") as handle:
                        for chunk in response.stream(1 << 20):
                            handle.write(chunk)
                finally:
                    response.close()
                    response.release_conn()
        except StoreError as error:
            if isinstance(error.__cause__, S3Error) and error.__cause__.code == "NoSuchKey":
                raise IntegrityError(f"{model}/{version}/{relpath}: file missing from the store") from None
            raise

    def _delete_version(self, model: str, version: str) -> None:
        prefix = self._key(model, version, "")
        with self._errors(f"deleting {prefix}"):
            keys = [
                entry.object_name
                for entry in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            ]
            keys.append(self._claim_key(model, version))  # deleting a missing key is no error in S3
            failures = list(self._client.remove_objects(self.bucket, [DeleteObject(key) for key in keys]))
        if failures:
            raise StoreError(f"could not delete {len(failures)} objects under {prefix}: {failures[0]}")

    def _incomplete_leftovers(self, model: str, older_than_s: float) -> list[str]:
        cutoff = datetime.now(UTC).timestamp() - older_than_s
        leftovers = []
        for version in self._version_names(model):
            prefix = self._key(model, version, "")
            with self._errors(f"listing {prefix}"):
                entries = list(self._client.list_objects(self.bucket, prefix=prefix, recursive=True))
            names = {entry.object_name[len(prefix) :] for entry in entries}
            newest = max(
                (entry.last_modified.timestamp() for entry in entries if entry.last_modified), default=0.0
            )
            if MANIFEST_FILE not in names and newest <= cutoff:
                leftovers.append(version)
        prefix = self._key(_CLAIMS, model, "")
        with self._errors(f"listing {prefix}"):
            claims = list(self._client.list_objects(self.bucket, prefix=prefix, recursive=True))
        versions = set(self._version_names(model))
        for claim in claims:
            version = claim.object_name[len(prefix) :].removesuffix(".json")
            modified = claim.last_modified.timestamp() if claim.last_modified else 0.0
            if version not in versions and modified <= cutoff and version not in leftovers:
                leftovers.append(version)  # the publish stopped before writing its version
        return leftovers


def s3_client_from_env() -> tuple[Minio, str]:
    """A minio client configured from the environment (see the module docstring) and its endpoint."""
    endpoint = os.environ.get("NEUROVIT_S3_ENDPOINT", "").strip()
    if not endpoint:
        raise StoreError("s3:// stores need NEUROVIT_S3_ENDPOINT (host:port of the S3 API)")
    if "@" in endpoint:
        raise StoreError(
            "NEUROVIT_S3_ENDPOINT carries credentials (user:password@host): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY instead"
        )
    secure_setting = os.environ.get("NEUROVIT_S3_SECURE", "1").strip().lower()
    if secure_setting not in {"1", "0", "true", "false"}:
        raise StoreError(f"NEUROVIT_S3_SECURE must be 1 or 0, got {secure_setting!r}")
    secure = secure_setting in {"1", "true"}
    if "://" in endpoint:
        parsed = urlsplit(endpoint)
        secure, endpoint = parsed.scheme == "https", parsed.netloc
    http_client = urllib3.PoolManager(
        timeout=_S3_TIMEOUT,
        retries=_S3_RETRIES,
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )
    try:
        client = Minio(
            endpoint,
            access_key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            secure=secure,
            region=os.environ.get("NEUROVIT_S3_REGION") or None,
            http_client=http_client,
        )
    except ValueError as error:
        raise StoreError(f"bad S3 settings for endpoint {endpoint}: {error}") from error
    return client, endpoint


def open_store(uri: str | Path, *, create_bucket: bool = False) -> ArtifactStore:
    """Open a store: a local folder path, or ``s3://bucket[/prefix]`` configured from the environment.

    Args:
        uri: the store root.
        create_bucket: for S3, create the bucket when it does not exist instead of failing.
    """
    uri = str(uri)
    _refuse_credentials(uri)
    if uri.startswith("s3://"):
        parsed = urlsplit(uri)
        if not parsed.netloc:
            raise StoreError(f"no bucket in S3 store URI {uri!r}: expected s3://<bucket>[/<prefix>]")
        client, endpoint = s3_client_from_env()
        log.info("opening S3 store %s at %s", uri, endpoint)
        return S3Store(client, endpoint, parsed.netloc, parsed.path, create_bucket=create_bucket)
    if uri.startswith("file://"):
        uri = urlsplit(uri).path
    elif "://" in uri:
        raise StoreError(f"unsupported store URI {uri!r}: use a folder path or s3://<bucket>[/<prefix>]")
    return LocalStore(uri)


def resolve(uri: str | Path, *, model: str | None = None) -> tuple[ArtifactStore, str, str]:
    """Turn a version address into ``(store, model, version)``, checking the version exists and is complete.

    Accepted: ``<root>/<model>/<version>``, ``<root>/<model>/latest``, ``<root>/<model>`` (latest), with
    root a folder or ``s3://bucket[/prefix]``; or a store root with ``model=`` given (latest).
    """
    uri = str(uri)
    _refuse_credentials(uri)
    if model is not None:
        store = open_store(uri)
        return store, model, store.latest(model)
    if uri.startswith("s3://"):
        parsed = urlsplit(uri)
        base, parts = f"s3://{parsed.netloc}", [part for part in parsed.path.split("/") if part]
    else:
        path = Path(urlsplit(uri).path if uri.startswith("file://") else uri).expanduser().absolute()
        base, parts = path.anchor, list(path.parts[1:])
    if not parts:
        raise StoreError(f"{uri!r} names no model: expected <store>/<model>[/<version>|/latest]")

    def store_at(root_parts: list[str]) -> ArtifactStore:
        return open_store(base.rstrip("/") + "/" + "/".join(root_parts) if root_parts else base)

    *rest, last = parts

    def is_version_folder() -> bool:
        if VERSION_PATTERN.fullmatch(last):
            return True
        # A custom version name: only a manifest tells it apart from a model folder.
        names_valid = _NAME_PATTERN.fullmatch(rest[-1]) and _NAME_PATTERN.fullmatch(last) and last != LATEST
        return bool(names_valid and store_at(rest[:-1])._read_manifest_text(rest[-1], last) is not None)

    if last == LATEST and rest:
        store, model, version = store_at(rest[:-1]), rest[-1], LATEST
    elif rest and is_version_folder():
        store, model, version = store_at(rest[:-1]), rest[-1], last
    else:
        store, model, version = store_at(rest), last, LATEST
    manifest = store.manifest(model, version)
    return store, model, manifest["version"]


def resolve_version(spec: str | Path, store: str | Path, *, model: str) -> tuple[ArtifactStore, str, str]:
    """The one resolver every command uses: ``spec`` -> ``(store, model, version)`` of a complete version.

    ``spec`` is one of:
    - ``latest``: the newest complete version of ``model`` in ``store``;
    - a version id (``v20261125-160000-ab12cd``, or a custom name): that version of ``model`` in ``store``;
    - a version folder (``outputs/store/neurovit/<version>``) or URI (``s3://bucket[/prefix]/<model>/<version>``,
      ``.../<model>/latest``, ``.../<model>``): read as ``resolve`` reads it, ``store`` and ``model`` unused.
    StoreError (version not found, store unreadable) otherwise.
    """
    spec = str(spec)
    if spec == LATEST:
        return resolve(store, model=model)
    if "/" not in spec and "://" not in spec and (VERSION_PATTERN.fullmatch(spec) or not Path(spec).exists()):
        if not _NAME_PATTERN.fullmatch(spec):
            raise StoreError(
                f"{spec!r} is not a version: expected 'latest', a version id, a version folder or URI"
            )
        return resolve(f"{str(store).rstrip('/')}/{model}/{spec}")
    return resolve(spec)


__all__ = [
    "LATEST",
    "MANIFEST_FILE",
    "VERSION_PATTERN",
    "ArtifactStore",
    "LocalStore",
    "S3Store",
    "new_version_id",
    "open_store",
    "redact_uri",
    "resolve",
    "resolve_version",
]
