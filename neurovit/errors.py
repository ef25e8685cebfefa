"""Typed errors: every one says what was expected and what arrived, so CLIs and servers can map them.

All derive from ValueError (bad input) or RuntimeError (environment), never bare Exception. Every error class
in the project derives from ``NeuroVitError``; the ``neurovit`` command maps ``DataError`` and ``StoreError``
to exit status 3 and every other one to 1 (docs/cli.md).
"""


class NeuroVitError(Exception):
    """Base of every error NeuroViT raises on purpose."""


class DataError(NeuroVitError, ValueError):
    """The dataset is unusable as given (missing folder, no images, one class, unknown layout)."""


class UnreadableImageError(DataError):
    """A file is not a decodable 2-D image (corrupt, truncated, not an image, a volume)."""


class ImageTooLargeError(UnreadableImageError):
    """An image over the pixel limit (a decompression bomb among them), refused before it is decoded."""


class NotASliceError(UnreadableImageError):
    """A readable image that is not one 2-D slice: a volume, a multi-frame DICOM, a multi-page TIFF."""


class DegenerateImageError(UnreadableImageError):
    """A DICOM intensity transform (rescale slope or intercept, window) that is NaN, infinite or absurd, or
    that leaves a blank (constant) image: refused, because any label on it would be meaningless."""


class MissingFileError(DataError):
    """A file the index or split lists has vanished (or cannot be opened) by the time it is read."""


class OutputError(NeuroVitError, RuntimeError):
    """A stage cannot write its outputs (disk full, read-only folder); it leaves nothing half-written."""


class StoreError(NeuroVitError, RuntimeError):
    """The artifact store cannot be read or written (unwritable folder, bad credentials, unreachable S3)."""


class IntegrityError(StoreError):
    """A stored version is incomplete or a file does not match its manifest checksum."""


class VersionConflictError(StoreError):
    """Another publish holds the version id with other files (running, or interrupted and not yet pruned)."""


class BaseModelError(NeuroVitError, RuntimeError):
    """A pretrained checkpoint (``--base-model``) cannot be used: not a folder and not reachable on the model
    hub, or not an architecture NeuroViT fine-tunes."""


class UsageError(NeuroVitError, ValueError):
    """Options that do not fit together or a value out of range, found after the command line was parsed."""


class CheckFailedError(NeuroVitError, RuntimeError):
    """A check ran and its answer is no (stale generated files, no alert fired): not a crash, a finding.
    ``result``: what the check found, for a caller that reports it (``neurovit ... --json``)."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result
