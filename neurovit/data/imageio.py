"""Decode one 2-D grey image from bytes: the single entry point for files on disk and untrusted uploads.

Every failure on bad bytes is an ``UnreadableImageError`` with a message a user can act on; no other
exception type escapes. Every cap is checked before the step it protects, so a small file cannot make us
allocate gigabytes or walk for seconds: the pixel count from the header before decoding, a second page or
frame probed (never counted), a deflated DICOM inflated only up to ``max_decoded_bytes``, a compressed DICOM
frame's own header compared with the dataset's before it is decoded, and a DICOM header read without its
pixel data first. A DICOM intensity transform (rescale, window) that is not finite, or that leaves a blank
image, is refused as a ``DegenerateImageError``: an answer on such an image would look like a diagnosis.

Pillow decodes PNG, JPEG, TIFF, BMP (and a few other raster formats); pydicom decodes DICOM and applies
the modality LUT (rescale slope/intercept) and then the VOI LUT or window, as a viewer would.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from neurovit.errors import DegenerateImageError, ImageTooLargeError, NotASliceError, UnreadableImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
# Largest decoded DICOM dataset (a deflated file inflated, or the pixel data a header promises).
DEFAULT_MAX_DECODED_BYTES = 64 * 1024 * 1024  # a 16-bit 4096 x 4096 slice is 32 MiB

# A rescale or window parameter beyond this is no physical unit of any scanner; refused, not overflowed.
_MAX_INTENSITY_PARAMETER = 1e12
_INTENSITY_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")
# Compressed DICOM decoded here: the JPEG family through Pillow (whose header we check first), RLE natively.
_PILLOW_DICOM_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "JPEG",  # JPEG Extended
    "1.2.840.10008.1.2.4.90": "JPEG2000",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "JPEG2000",  # JPEG 2000
}
_RLE_LOSSLESS = "1.2.840.10008.1.2.5"
_INFLATE_CHUNK = 1024 * 1024
_NO_PIXELS = "DICOM file without pixel data (not an image, e.g. a report)"
# An RLE segment never needs more than 2 bytes per decoded byte; more is a bomb (each 2 bytes -> 128).
_RLE_MAX_BYTES_PER_BYTE = 2

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


@dataclass(frozen=True)
class _Limits:
    pixels: int
    decoded_bytes: int


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


def read_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> DecodedImage:
    """Read and decode one image file; an unreadable file is an ``UnreadableImageError`` too."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UnreadableImageError(f"cannot read the file: {error.strerror or error}") from error
    return decode_image(data, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> DecodedImage:
    """Decode the bytes of one 2-D image (PNG, JPEG, TIFF, BMP, DICOM) to a grey float image in [0, 1].

    Raises:
        UnreadableImageError: empty input, not an image, truncated or corrupt, more than ``max_pixels``,
            a DICOM dataset over ``max_decoded_bytes`` once decoded (``ImageTooLargeError``), more than one
            frame or page (``NotASliceError``), a DICOM file without pixel data, or a DICOM intensity
            transform that is not finite or leaves a blank image (``DegenerateImageError``).
    """
    if not data:
        raise UnreadableImageError("the file is empty (0 bytes)")
    limits = _Limits(max_pixels, max_decoded_bytes)
    if data[_DICOM_PREAMBLE : _DICOM_PREAMBLE + 4] == _DICOM_MAGIC:
        return _decode_dicom(data, limits)
    try:
        return _decode_pillow(data, max_pixels=max_pixels)
    except UnidentifiedImageError:
        pass
    # Old or stripped DICOM files have no preamble; pydicom reads them only when forced.
    dicom = _try_forced_dicom(data, limits)
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
            if _has_second_frame(image, source_format):
                raise NotASliceError(
                    f"one 2-D slice expected, got more than one frame (a multi-page {source_format})"
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


def _has_second_frame(image: Image.Image, source_format: str) -> bool:
    """Probe for a second page or frame. Never ``n_frames``: TIFF walks its whole page chain for it (40,000
    one-pixel pages take seconds); seeking to page 1 reads one more header."""
    try:
        image.seek(1)
    except EOFError:
        return False
    except Exception as error:  # a broken next-page offset or header
        raise UnreadableImageError(f"corrupt {source_format} image: {_reason(error)}") from error
    return True


def _pillow_to_grey(image: Image.Image, source_format: str) -> DecodedImage:
    """Loaded Pillow image of any supported mode -> grey float image in [0, 1]."""
    mode = image.mode
    if mode in ("1", "L"):
        pixels = _scaled(np.asarray(image.convert("L")), 255.0)
        return DecodedImage(pixels, source_format, mode, 1 if mode == "1" else 8)
    if mode.startswith("I;16"):
        return DecodedImage(_scaled(np.asarray(image), 65535.0), source_format, mode, 16)
    if mode == "I":
        values = np.asarray(image)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            # Pillow opens some 16-bit files as 32-bit "I"; their range is still the 16-bit one.
            return DecodedImage(_scaled(values, 65535.0), source_format, mode, 16)
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
    # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV: through RGB, then luminance; colour is judged on the 8-bit
    # channels.
    rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"))
    colour = bool(np.mean(_spread(rgb) > _COLOUR_LEVEL_TOLERANCE * 255) > _COLOUR_PIXEL_FRACTION)
    return DecodedImage(_luminance8(rgb), source_format, mode, 8, is_colour=colour)


def _scaled(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Integer pixels -> float32 in [0, 1], scaled in place: one float array, not two. Divided, not
    multiplied by the reciprocal: the same float32 values as before, so the same canonical images."""
    pixels = values.astype(np.float32)
    pixels /= np.float32(full_scale)
    return pixels


def _luminance8(rgb: np.ndarray) -> np.ndarray:
    """8-bit RGB -> luminance in [0, 1] (float32), with the arithmetic images were always read with (a model
    sees the same pixels it was trained on); the float copy of three channels is 48 MiB at the service's
    2048 x 2048 cap."""
    return np.clip((rgb.astype(np.float32) / 255.0) @ _LUMA_WEIGHTS, 0.0, 1.0).astype(np.float32)


def _spread(rgb: np.ndarray) -> np.ndarray:
    """Per pixel, the largest channel minus the smallest (uint8: no float copy)."""
    return rgb.max(axis=-1) - rgb.min(axis=-1)


# --- DICOM --------------------------------------------------------------------------------------------


def _try_forced_dicom(data: bytes, limits: _Limits) -> DecodedImage | None:
    """Decode data without the DICOM preamble; None when it is not a DICOM image at all."""
    try:
        header = _read_dicom(data, limits, force=True, stop_before_pixels=True)
    except (ImageTooLargeError, NotASliceError):
        raise
    except Exception:
        return None
    # A forced read accepts almost anything; only a dataset with image geometry counts.
    if "Rows" not in header or "Columns" not in header:
        return None
    return _dicom_to_grey(data, header, limits, force=True)


def _decode_dicom(data: bytes, limits: _Limits) -> DecodedImage:
    header = _read_dicom(data, limits, force=False, stop_before_pixels=True)
    return _dicom_to_grey(data, header, limits, force=False)


def _read_dicom(data: bytes, limits: _Limits, *, force: bool, stop_before_pixels: bool):
    """pydicom's dataset, after checking that a deflated one inflates within the limit (pydicom inflates
    the whole file before reading any element, even with ``stop_before_pixels``). Whatever else fails in
    reading is an ``UnreadableImageError``."""
    import pydicom

    try:
        _check_inflated_size(data, limits.decoded_bytes, force=force)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every oddity of random bytes
            return pydicom.dcmread(io.BytesIO(data), force=force, stop_before_pixels=stop_before_pixels)
    except UnreadableImageError:
        raise
    except Exception as error:
        raise UnreadableImageError(f"corrupt DICOM file: {_reason(error)}") from error


def _check_inflated_size(data: bytes, max_bytes: int, *, force: bool) -> None:
    """A deflated transfer syntax: inflate at most ``max_bytes`` (+1) to learn whether it stays under."""
    from pydicom.filereader import _read_file_meta_info, read_preamble  # no public API takes bytes
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_preamble(stream, force)
            syntax = _read_file_meta_info(stream).get("TransferSyntaxUID")
    except Exception:
        return  # no readable file meta, so nothing pydicom would inflate
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    if _inflated_size(data[stream.tell() :], max_bytes) > max_bytes:
        raise ImageTooLargeError(
            f"DICOM too large (possible decompression bomb): the deflated dataset inflates to more than "
            f"{max_bytes:,} bytes"
        )


def _inflated_size(deflated: bytes, max_bytes: int) -> int:
    """Bytes a raw deflate stream inflates to, counted in chunks that are dropped, stopping past
    ``max_bytes``: memory stays at one chunk whatever the stream holds."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = deflated, 0
    try:
        while total <= max_bytes:
            chunk = inflater.decompress(pending, _INFLATE_CHUNK)
            total += len(chunk)
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and len(chunk) < _INFLATE_CHUNK):
                break
    except zlib.error as error:
        raise UnreadableImageError(f"corrupt deflated DICOM: {_reason(error)}") from error
    return total


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    samples: int
    photometric: str
    bit_depth: int
    frame_bytes: int


def _dicom_geometry(header, limits: _Limits) -> _Geometry:
    """Size, frames and decoded size from the header alone, each checked against its limit."""
    if "Rows" not in header or "Columns" not in header:
        raise UnreadableImageError(_NO_PIXELS)
    try:
        rows, columns = int(header.Rows), int(header.Columns)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        bits_allocated = int(header.get("BitsAllocated", 16) or 16)
        bit_depth = int(header.get("BitsStored", bits_allocated) or bits_allocated)
    except Exception as error:
        raise UnreadableImageError(f"corrupt DICOM header: {_reason(error)}") from error
    if rows <= 0 or columns <= 0:
        raise UnreadableImageError(f"corrupt DICOM image: size {columns} x {rows}")
    if rows * columns > limits.pixels:
        raise ImageTooLargeError(_too_large_message(columns, rows, limits.pixels))
    if frames > 1:
        raise NotASliceError(f"one 2-D slice expected, got {frames} frames (a multi-frame DICOM)")
    if not 1 <= samples <= 4 or not 1 <= bits_allocated <= 64:
        raise UnreadableImageError(
            f"corrupt DICOM header: {samples} samples per pixel, {bits_allocated} bits allocated"
        )
    frame_bytes = rows * columns * samples * math.ceil(bits_allocated / 8)
    if frame_bytes > limits.decoded_bytes:
        raise ImageTooLargeError(
            f"DICOM too large: its pixel data decodes to {frame_bytes:,} bytes, more than the limit of "
            f"{limits.decoded_bytes:,}"
        )
    return _Geometry(rows, columns, samples, photometric, bit_depth, frame_bytes)


def _check_intensity_parameters(header) -> None:
    """Rescale and window values must be finite numbers of a sane size: NaN, Inf or 1e308 would give a
    blank or non-finite image that the model would still label."""
    for keyword in _INTENSITY_KEYWORDS:
        for number in _numbers(header, keyword):
            if not math.isfinite(number) or abs(number) > _MAX_INTENSITY_PARAMETER:
                raise DegenerateImageError(
                    f"invalid DICOM {keyword}: {number!r} (expected a finite number of at most "
                    f"{_MAX_INTENSITY_PARAMETER:g} in magnitude)"
                )
    if 0.0 in _numbers(header, "RescaleSlope"):
        raise DegenerateImageError("invalid DICOM RescaleSlope: 0 makes every pixel the same value")


def _numbers(header, keyword: str) -> list[float]:
    """The values of a (possibly multi-valued) decimal element; a value that is no number is refused."""
    try:
        raw = header.get(keyword)
    except Exception as error:
        raise DegenerateImageError(f"invalid DICOM {keyword}: {_reason(error)}") from error
    if raw is None or raw == "":
        return []
    values = [raw] if isinstance(raw, str | bytes | int | float) else list(raw)
    try:
        return [float(value) for value in values]
    except (TypeError, ValueError) as error:
        raise DegenerateImageError(f"invalid DICOM {keyword}: {str(raw)[:40]!r} is not a number") from error


def _check_encapsulated(dataset, geometry: _Geometry) -> None:
    """A compressed frame is decoded only when its own header matches the dataset's geometry (a JPEG may
    claim 60,000 x 60,000 inside a 64 x 64 DICOM) and RLE data is no bigger than its image could need."""
    from pydicom.encaps import generate_frames

    meta = getattr(dataset, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not syntax or not getattr(meta.TransferSyntaxUID, "is_encapsulated", False):
        return
    name = getattr(meta.TransferSyntaxUID, "name", syntax)
    if syntax not in _PILLOW_DICOM_SYNTAXES and syntax != _RLE_LOSSLESS:
        raise UnreadableImageError(f"compressed DICOM ({name}) is not supported: send it uncompressed")
    try:
        frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    except Exception as error:
        raise UnreadableImageError(f"corrupt compressed DICOM pixel data: {_reason(error)}") from error
    if syntax == _RLE_LOSSLESS:
        limit = geometry.frame_bytes * _RLE_MAX_BYTES_PER_BYTE + 64
        if len(frame) > limit:
            raise ImageTooLargeError(
                f"DICOM too large (possible decompression bomb): {len(frame):,} bytes of RLE data for a "
                f"{geometry.columns} x {geometry.rows} image"
            )
        return
    try:
        with Image.open(io.BytesIO(frame), formats=(_PILLOW_DICOM_SYNTAXES[syntax],)) as image:
            size = image.size
    except Exception as error:
        raise UnreadableImageError(f"corrupt {name} frame in the DICOM: {_reason(error)}") from error
    if size != (geometry.columns, geometry.rows):
        raise UnreadableImageError(
            f"corrupt DICOM: its {name} frame is {size[0]} x {size[1]}, the header says "
            f"{geometry.columns} x {geometry.rows}"
        )


def _dicom_to_grey(data: bytes, header, limits: _Limits, *, force: bool) -> DecodedImage:
    """A DICOM file whose header was read -> grey float image; every check on the header runs before the
    pixel data is read or decoded."""
    geometry = _dicom_geometry(header, limits)
    _check_intensity_parameters(header)
    dataset = _read_dicom(data, limits, force=force, stop_before_pixels=False)
    pixel_keywords = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if not any(keyword in dataset for keyword in pixel_keywords):
        raise UnreadableImageError(_NO_PIXELS)
    _check_encapsulated(dataset, geometry)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = dataset.pixel_array
    except Exception as error:  # truncated data, or a compression no installed plugin decodes
        raise UnreadableImageError(f"cannot decode the DICOM pixel data: {_reason(error)}") from error

    expected_ndim = 3 if geometry.samples > 1 else 2
    if raw.ndim != expected_ndim:
        raise NotASliceError(f"one 2-D slice expected, got DICOM pixel data of shape {raw.shape}")
    if geometry.samples > 1:  # pydicom already converted YBR to RGB
        return _dicom_colour(raw, geometry)
    pixels = _dicom_intensities(raw, dataset)
    if geometry.photometric == "MONOCHROME1":  # low values are bright in MONOCHROME1
        pixels = 1.0 - pixels
    return DecodedImage(pixels.astype(np.float32), "DICOM", geometry.photometric, geometry.bit_depth)


def _dicom_colour(raw: np.ndarray, geometry: _Geometry) -> DecodedImage:
    try:
        if raw.dtype.kind == "f":
            rgb = _min_max(raw[..., :3])
        else:
            rgb = raw[..., :3] / float(2**geometry.bit_depth - 1)
        rgb = rgb.astype(np.float32)
    except Exception as error:
        raise UnreadableImageError(f"cannot convert the DICOM colour pixels: {_reason(error)}") from error
    luminance = _luminance(rgb)
    return DecodedImage(luminance, "DICOM", geometry.photometric, geometry.bit_depth, _is_colour(rgb))


def _dicom_intensities(raw: np.ndarray, dataset) -> np.ndarray:
    """Modality LUT (slope, intercept), then VOI LUT or window, as a viewer shows it, scaled to [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    try:
        with np.errstate(all="ignore"):  # overflow is checked below, as a refusal
            values = apply_modality_lut(raw, dataset)  # stored values -> physical units
            _check_finite(values, "rescale")
            if dataset.get("VOILUTSequence"):
                pixels = _min_max(apply_voi_lut(values, dataset))
            elif "WindowCenter" in dataset and "WindowWidth" in dataset:
                windowed = apply_windowing(values, dataset)
                _check_finite(windowed, "window")
                # The window maps to pydicom's output range [y_min, y_max]; probing with -inf/+inf yields
                # exactly those bounds, so the result scales to [0, 1] as the window intends.
                low, high = apply_windowing(np.array([-np.inf, np.inf]), dataset)
                pixels = _scale(windowed, low, high)
            else:
                pixels = _min_max(values)
    except DegenerateImageError:
        raise
    except Exception as error:  # a malformed LUT or window the standard does not allow
        raise DegenerateImageError(f"invalid DICOM intensity transform: {_reason(error)}") from error
    if pixels.size and float(pixels.max()) - float(pixels.min()) <= 0:
        raise DegenerateImageError(
            "the DICOM image is blank (one constant value) after its rescale and window: nothing to classify"
        )
    return pixels


def _check_finite(values: np.ndarray, step: str) -> None:
    if not np.all(np.isfinite(values)):
        raise DegenerateImageError(f"invalid DICOM intensity transform: the {step} gives non-finite values")


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


__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_PIXELS",
    "PILLOW_FORMATS",
    "DecodedImage",
    "decode_image",
    "read_image",
]
