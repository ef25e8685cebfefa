"""Decode one 2-D grey image from bytes: the single entry point for files on disk and untrusted uploads.

Every failure on bad bytes is an ``UnreadableImageError`` with a message a user can act on; no other
exception type escapes, and the pixel count is checked from the header before anything is decoded, so a
small file cannot make us allocate gigabytes.

Pillow decodes PNG, JPEG, TIFF, BMP (and a few other raster formats); pydicom decodes DICOM and applies
the modality LUT (rescale slope/intercept) and then the VOI LUT or window, as a viewer would.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from neurovit.errors import ImageTooLargeError, NotASliceError, UnreadableImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000

# Only plain raster formats: Pillow can also open EPS/PDF-like formats that shell out to Ghostscript,
# which must never run on an uploaded file.
PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP", "PPM")

# A grey image stored as RGB (or re-encoded as JPEG) has channels that differ by rounding noise only.
_COLOUR_LEVEL_TOLERANCE = 8 / 255
_COLOUR_PIXEL_FRACTION = 0.001

# ITU-R 601-2 luma, the weights Pillow's own "L" conversion uses.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_DICOM_PREAMBLE = 128
_DICOM_MAGIC = b"DICM"

# File signatures, only to say "corrupt PNG" rather than "not an image" when a header is broken.
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
}


@dataclass
class DecodedImage:
    """A decoded 2-D grey image and what it was before decoding.

    Args:
        pixels: float32, shape (height, width), values in [0, 1].
        format: source format, e.g. "PNG", "JPEG", "TIFF", "BMP", "DICOM".
        mode: source pixel mode, e.g. "L", "I;16", "RGB" (Pillow) or "MONOCHROME2" (DICOM).
        bit_depth: bits per sample of the source (8, 16, ...).
        is_colour: True when the source had colour channels that really differ.
    """

    pixels: np.ndarray
    format: str
    mode: str
    bit_depth: int
    is_colour: bool = False

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Read and decode one image file; an unreadable file is an ``UnreadableImageError`` too."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UnreadableImageError(f"cannot read the file: {error.strerror or error}") from error
    return decode_image(data, max_pixels=max_pixels)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode the bytes of one 2-D image (PNG, JPEG, TIFF, BMP, DICOM) to a grey float image in [0, 1].

    Raises:
        UnreadableImageError: empty input, not an image, truncated or corrupt, more than ``max_pixels``,
            more than one frame or page, or a DICOM file without pixel data.
    """
    if not data:
        raise UnreadableImageError("the file is empty (0 bytes)")
    if data[_DICOM_PREAMBLE : _DICOM_PREAMBLE + 4] == _DICOM_MAGIC:
        return _decode_dicom(data, max_pixels=max_pixels, force=False)
    try:
        return _decode_pillow(data, max_pixels=max_pixels)
    except UnidentifiedImageError:
        pass
    # Old or stripped DICOM files have no preamble; pydicom reads them only when forced.
    dicom = _try_forced_dicom(data, max_pixels=max_pixels)
    if dicom is not None:
        return dicom
    if _looks_like_text(data):
        raise UnreadableImageError("not an image: the file holds text")
    known_format = _format_from_signature(data)
    if known_format is not None:  # the signature is right but Pillow could not parse the header
        raise UnreadableImageError(f"corrupt {known_format} image: the header cannot be parsed")
    raise UnreadableImageError(
        "not an image: the format is not recognised (expected PNG, JPEG, TIFF, BMP or DICOM)"
    )


# --- Pillow -------------------------------------------------------------------------------------------


def _decode_pillow(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode with Pillow; raises UnidentifiedImageError (only) when Pillow does not know the format."""
    # Pillow's own bomb check warns, then raises; both must end as our error, never a huge allocation.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        except UnidentifiedImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageTooLargeError(
                f"image too large (possible decompression bomb): {str(error).split(',')[0]}"
            ) from error
        except Exception as error:  # a broken header: struct errors, SyntaxError, ValueError, ...
            raise UnreadableImageError(f"corrupt image header: {_reason(error)}") from error

        with image:
            source_format = image.format or "unknown"
            width, height = image.size
            if width <= 0 or height <= 0:
                raise UnreadableImageError(f"corrupt {source_format} image: size {width} x {height}")
            if width * height > max_pixels:
                raise ImageTooLargeError(_too_large_message(width, height, max_pixels))
            try:
                frames = getattr(image, "n_frames", 1)  # TIFF and GIF walk their page list here
            except Exception as error:
                raise UnreadableImageError(f"corrupt {source_format} image: {_reason(error)}") from error
            if frames > 1:
                raise NotASliceError(
                    f"one 2-D slice expected, got {frames} frames (a multi-page {source_format})"
                )
            try:
                image.load()  # decodes now, so a truncated file fails here rather than later
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
                raise ImageTooLargeError(_too_large_message(width, height, max_pixels)) from error
            except MemoryError as error:
                raise ImageTooLargeError(_too_large_message(width, height, max_pixels)) from error
            except Exception as error:  # OSError "image file is truncated", zlib errors, ...
                raise UnreadableImageError(
                    f"truncated or corrupt {source_format} image: {_reason(error)}"
                ) from error
            try:
                return _pillow_to_grey(image, source_format)
            except UnreadableImageError:
                raise
            except Exception as error:
                raise UnreadableImageError(
                    f"cannot convert the {source_format} image (mode {image.mode}): {_reason(error)}"
                ) from error


def _pillow_to_grey(image: Image.Image, source_format: str) -> DecodedImage:
    """Loaded Pillow image of any supported mode -> grey float image in [0, 1]."""
    mode = image.mode
    if mode in ("1", "L"):
        pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        return DecodedImage(pixels, source_format, mode, 1 if mode == "1" else 8)
    if mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.float32) / 65535.0
        return DecodedImage(pixels, source_format, mode, 16)
    if mode == "I":
        values = np.asarray(image)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            # Pillow opens some 16-bit files as 32-bit "I"; their range is still the 16-bit one.
            return DecodedImage(values.astype(np.float32) / 65535.0, source_format, mode, 16)
        return DecodedImage(_min_max(values), source_format, mode, 32)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            return DecodedImage(values, source_format, mode, 32)
        return DecodedImage(_min_max(values), source_format, mode, 32)
    if mode in ("LA", "La"):
        pixels = np.asarray(image.getchannel("L"), dtype=np.float32) / 255.0
        return DecodedImage(pixels, source_format, mode, 8)
    if mode in ("I;16S", "I;32", "I;32B", "I;32S"):  # rare signed/wide modes: only their range is known
        return DecodedImage(_min_max(np.asarray(image)), source_format, mode, 16 if "16" in mode else 32)
    # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV: through RGB, then luminance.
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return DecodedImage(_luminance(rgb), source_format, mode, 8, is_colour=_is_colour(rgb))


# --- DICOM --------------------------------------------------------------------------------------------


def _try_forced_dicom(data: bytes, *, max_pixels: int) -> DecodedImage | None:
    """Decode data without the DICOM preamble; None when it is not a DICOM image at all."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every oddity of random bytes
            dataset = pydicom.dcmread(io.BytesIO(data), force=True)
            # A forced read accepts almost anything; only a dataset with image geometry counts.
            if "PixelData" not in dataset or "Rows" not in dataset or "Columns" not in dataset:
                return None
    except Exception:
        return None
    return _dicom_to_grey(dataset, max_pixels=max_pixels)


def _decode_dicom(data: bytes, *, max_pixels: int, force: bool) -> DecodedImage:
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(io.BytesIO(data), force=force)
    except Exception as error:
        raise UnreadableImageError(f"corrupt DICOM file: {_reason(error)}") from error
    return _dicom_to_grey(dataset, max_pixels=max_pixels)


def _dicom_to_grey(dataset, *, max_pixels: int) -> DecodedImage:
    """A parsed DICOM dataset -> grey float image, checking size and frames before decoding pixels."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    pixel_keywords = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if not any(keyword in dataset for keyword in pixel_keywords):
        raise UnreadableImageError("DICOM file without pixel data (not an image, e.g. a report)")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        bit_depth = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)) or 8)
    except Exception as error:
        raise UnreadableImageError(f"corrupt DICOM header: {_reason(error)}") from error
    if rows <= 0 or columns <= 0:
        raise UnreadableImageError(f"corrupt DICOM image: size {columns} x {rows}")
    if rows * columns > max_pixels:
        raise ImageTooLargeError(_too_large_message(columns, rows, max_pixels))
    if frames > 1:
        raise NotASliceError(f"one 2-D slice expected, got {frames} frames (a multi-frame DICOM)")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = dataset.pixel_array
    except Exception as error:  # truncated data, or a compression no installed plugin decodes
        raise UnreadableImageError(f"cannot decode the DICOM pixel data: {_reason(error)}") from error

    expected_ndim = 3 if samples > 1 else 2
    if raw.ndim != expected_ndim:
        raise NotASliceError(f"one 2-D slice expected, got DICOM pixel data of shape {raw.shape}")

    try:
        if samples > 1:  # pydicom already converted YBR to RGB
            rgb = _min_max(raw[..., :3]) if raw.dtype.kind == "f" else raw[..., :3] / float(2**bit_depth - 1)
            rgb = rgb.astype(np.float32)
            return DecodedImage(_luminance(rgb), "DICOM", photometric, bit_depth, is_colour=_is_colour(rgb))

        values = apply_modality_lut(raw, dataset)  # stored values -> physical units (slope, intercept)
        has_voi_lut = bool(dataset.get("VOILUTSequence"))
        has_window = "WindowCenter" in dataset and "WindowWidth" in dataset
        if has_voi_lut:
            pixels = _min_max(apply_voi_lut(values, dataset))
        elif has_window:
            windowed = apply_windowing(values, dataset)
            # The window maps to pydicom's output range [y_min, y_max]; probing with -inf/+inf yields
            # exactly those bounds, so the result scales to [0, 1] as the window intends.
            low, high = apply_windowing(np.array([-np.inf, np.inf]), dataset)
            pixels = _scale(windowed, low, high)
        else:
            pixels = _min_max(values)
    except Exception as error:  # a malformed LUT or window the standard does not allow
        raise UnreadableImageError(f"invalid DICOM intensity transform: {_reason(error)}") from error

    if photometric == "MONOCHROME1":  # low values are bright in MONOCHROME1
        pixels = 1.0 - pixels
    return DecodedImage(pixels.astype(np.float32), "DICOM", photometric, bit_depth)


# --- helpers ------------------------------------------------------------------------------------------


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return _min_max(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the image's own range; a flat image stays flat (zeros)."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0:
        return values.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if high - low <= 0:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb[..., :3] @ _LUMA_WEIGHTS, 0.0, 1.0).astype(np.float32)


def _is_colour(rgb: np.ndarray) -> bool:
    spread = rgb[..., :3].max(axis=-1) - rgb[..., :3].min(axis=-1)
    return bool(np.mean(spread > _COLOUR_LEVEL_TOLERANCE) > _COLOUR_PIXEL_FRACTION)


def _format_from_signature(data: bytes) -> str | None:
    return next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(character.isprintable() or character in "\r\n\t" for character in text)
    return printable >= 0.95 * max(1, len(text))


def _too_large_message(width: int, height: int, max_pixels: int) -> str:
    return (
        f"image too large (possible decompression bomb): {width} x {height} = {width * height:,} pixels, "
        f"more than the limit of {max_pixels:,}"
    )


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


__all__ = ["DEFAULT_MAX_PIXELS", "PILLOW_FORMATS", "DecodedImage", "decode_image", "read_image"]
