"""Decoding of every supported format, and a typed, specific error for every kind of bad input."""

from __future__ import annotations

import io
import re
import struct
import time
import tracemalloc

import numpy as np
import pytest
from fixtures import hostile
from fixtures.serving_samples import dicom_bytes, png_header_only
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, MRImageStorage, RLELossless, generate_uid

from neurovit.data.imageio import DecodedImage, decode_image, read_image
from neurovit.errors import (
    DataError,
    DegenerateImageError,
    ImageTooLargeError,
    NotASliceError,
    UnreadableImageError,
)


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


GREY = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)


# --- formats ------------------------------------------------------------------------------------------


def test_png_8bit_is_scaled_by_255_exactly():
    image = decode_image(encode(GREY, "PNG"))
    assert (image.format, image.mode, image.bit_depth, image.is_colour) == ("PNG", "L", 8, False)
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (48, 64)
    np.testing.assert_allclose(image.pixels, GREY / 255.0, atol=1e-6)


def test_png_16bit_is_scaled_by_its_bit_range():
    pixels16 = (GREY.astype(np.uint16) * 257) + 3
    image = decode_image(encode(pixels16, "PNG"))
    assert image.mode.startswith("I;16") and image.bit_depth == 16
    np.testing.assert_allclose(image.pixels, pixels16 / 65535.0, atol=1e-6)


def test_tiff_16bit():
    pixels16 = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    image = decode_image(encode(pixels16, "TIFF"))
    assert (image.format, image.bit_depth) == ("TIFF", 16)
    assert image.pixels.min() == 0.0 and image.pixels.max() == pytest.approx(1.0)


def test_jpeg_decodes_close_to_the_original(make_slice):
    original = make_slice(1)
    image = decode_image(encode(original, "JPEG", quality=90))
    assert (image.format, image.mode, image.bit_depth) == ("JPEG", "L", 8)
    assert np.mean(np.abs(image.pixels - original / 255.0)) < 0.02


def test_bmp():
    image = decode_image(encode(GREY, "BMP"))
    assert image.format == "BMP"
    np.testing.assert_allclose(image.pixels, GREY / 255.0, atol=1e-6)


def test_grey_stored_as_rgb_is_not_colour():
    image = decode_image(encode(np.stack([GREY] * 3, axis=-1), "PNG"))
    assert image.mode == "RGB" and image.is_colour is False and image.pixels.ndim == 2
    np.testing.assert_allclose(image.pixels, GREY / 255.0, atol=1e-5)


def test_grey_stored_as_rgb_jpeg_is_not_colour(make_slice):
    grey = make_slice(2)
    image = decode_image(encode(np.stack([grey] * 3, axis=-1), "JPEG", quality=70))
    assert image.is_colour is False


def test_colour_is_detected_and_converted_to_luminance():
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    rgb[..., 2] = 50
    image = decode_image(encode(rgb, "PNG"))
    assert image.is_colour is True
    np.testing.assert_allclose(image.pixels, (0.299 * 200 + 0.114 * 50) / 255.0, atol=1e-5)


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "1", "I", "F"])
def test_other_pillow_modes_decode_to_a_grey_image_in_range(mode):
    source = Image.fromarray(np.stack([GREY] * 3, axis=-1)).convert(mode)
    buffer = io.BytesIO()
    source.save(buffer, "TIFF" if mode in ("I", "F") else "PNG")
    image = decode_image(buffer.getvalue())
    assert image.mode == mode
    assert image.pixels.shape == GREY.shape and image.pixels.dtype == np.float32
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    assert image.pixels.std() > 0  # the content survived


def test_read_image_reads_a_file(tmp_path):
    path = tmp_path / "slice.png"
    path.write_bytes(encode(GREY, "PNG"))
    assert isinstance(read_image(path), DecodedImage)


def test_read_image_of_a_missing_file_is_unreadable(tmp_path):
    with pytest.raises(UnreadableImageError, match="cannot read"):
        read_image(tmp_path / "absent.png")


# --- DICOM --------------------------------------------------------------------------------------------

STORED = (np.arange(16 * 16).reshape(16, 16) * 16).astype(np.uint16)  # 0 .. 4080, 12 bits


def test_dicom_without_window_is_min_max_scaled():
    image = decode_image(dicom_bytes(STORED))
    assert (image.format, image.mode, image.bit_depth) == ("DICOM", "MONOCHROME2", 12)
    np.testing.assert_allclose(image.pixels, STORED / STORED.max(), atol=1e-6)


def test_dicom_applies_rescale_then_window():
    slope, intercept, center, width = 2.0, -1000.0, 3000.0, 2000.0
    image = decode_image(dicom_bytes(STORED, rescale=(slope, intercept), window=(center, width)))
    physical = STORED * slope + intercept
    # DICOM PS3.3 C.11.2.1.2 linear window, scaled to [0, 1].
    expected = np.clip((physical - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)
    assert image.pixels.min() == 0.0 and image.pixels.max() == 1.0  # the window clips both ends


def test_dicom_window_ignoring_rescale_would_differ():
    """Guards the order of operations: the window is in rescaled (physical) units."""
    with_rescale = decode_image(dicom_bytes(STORED, rescale=(2.0, -1000.0), window=(3000.0, 2000.0)))
    without_rescale = decode_image(dicom_bytes(STORED, window=(3000.0, 2000.0)))
    assert not np.allclose(with_rescale.pixels, without_rescale.pixels)


def test_dicom_monochrome1_is_inverted():
    normal = decode_image(dicom_bytes(STORED))
    inverted = decode_image(dicom_bytes(STORED, photometric="MONOCHROME1"))
    assert inverted.mode == "MONOCHROME1"
    np.testing.assert_allclose(inverted.pixels, 1.0 - normal.pixels, atol=1e-6)


def test_dicom_without_preamble_is_still_read():
    data = dicom_bytes(STORED, preamble=False)
    assert data[128:132] != b"DICM"
    assert decode_image(data).format == "DICOM"


def test_multi_frame_dicom_is_rejected():
    with pytest.raises(UnreadableImageError, match="one 2-D slice expected, got 3 frames"):
        decode_image(dicom_bytes(np.stack([STORED] * 3)))


def test_dicom_without_pixel_data_is_rejected():
    with pytest.raises(UnreadableImageError, match="DICOM file without pixel data"):
        decode_image(dicom_bytes(STORED, with_pixels=False))


def test_dicom_with_truncated_pixel_data_is_unreadable():
    data = dicom_bytes(STORED)
    with pytest.raises(UnreadableImageError):
        decode_image(data[: len(data) - 200])


# --- bad input ----------------------------------------------------------------------------------------


def test_unreadable_is_a_data_error():
    assert issubclass(UnreadableImageError, DataError)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"path,label\nimg.png,glioma\n" * 20, "not an image: the file holds text"),
        (np.random.default_rng(0).bytes(4096), "not an image: the format is not recognised"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt PNG"),
    ],
    ids=["empty", "text", "random-bytes", "broken-png-header"],
)
def test_bad_bytes_give_a_specific_message(data, message):
    with pytest.raises(UnreadableImageError, match=message):
        decode_image(data)


def test_truncated_png_is_reported_as_truncated(make_slice):
    data = encode(make_slice(3), "PNG")
    with pytest.raises(UnreadableImageError, match="truncated or corrupt PNG"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    "side", [8_000, 12_000, 50_000], ids=["over-limit", "pillow-warning", "pillow-error"]
)
def test_decompression_bomb_header_is_rejected_before_decoding(side):
    with pytest.raises(UnreadableImageError, match="image too large"):
        decode_image(png_header_only(side, side))


def test_pillow_bomb_warning_is_an_error_even_with_a_higher_limit():
    """Above Pillow's own limit its warning must stop decoding, whatever max_pixels says."""
    with pytest.raises(UnreadableImageError, match="image too large"):
        decode_image(png_header_only(12_000, 12_000), max_pixels=10**9)


def test_max_pixels_is_checked_from_the_header():
    with pytest.raises(UnreadableImageError, match="64 x 48 = 3,072 pixels, more than the limit of 1,000"):
        decode_image(encode(GREY, "PNG"), max_pixels=1_000)


def test_dicom_over_max_pixels_is_rejected():
    with pytest.raises(UnreadableImageError, match="image too large"):
        decode_image(dicom_bytes(STORED), max_pixels=100)


def test_multi_page_tiff_is_rejected():
    buffer = io.BytesIO()
    Image.fromarray(GREY).save(buffer, "TIFF", save_all=True, append_images=[Image.fromarray(GREY)] * 2)
    with pytest.raises(UnreadableImageError, match="one 2-D slice expected, got more than one frame"):
        decode_image(buffer.getvalue())


def test_unsafe_pillow_formats_are_not_opened():
    """EPS would run Ghostscript on an upload: it must be refused as 'not an image'."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(UnreadableImageError, match="not an image"):
        decode_image(eps)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP", "DICOM"])
def test_damaged_files_never_raise_another_exception_type(fmt, make_slice):
    grey = make_slice(4)[:64, :64]
    data = dicom_bytes(grey.astype(np.uint16)) if fmt == "DICOM" else encode(grey, fmt)
    rng = np.random.default_rng(5)
    damaged = [data[:cut] for cut in (1, 8, 20, 60, 200, len(data) // 3, len(data) - 5)]
    for _ in range(25):  # random byte flips in the header and body
        flipped = bytearray(data)
        for position in rng.integers(0, len(data), size=4):
            flipped[position] = int(rng.integers(0, 256))
        damaged.append(bytes(flipped))
    for sample in damaged:
        try:
            image = decode_image(sample)
        except UnreadableImageError:
            continue
        assert image.pixels.ndim == 2 and 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0


# --- hostile input (issue 18): every cap is checked before the step it protects ------------------------


def _peak_bytes(function) -> tuple[int, BaseException | None]:
    """Peak Python allocation while ``function`` runs, and what it raised."""
    tracemalloc.start()
    try:
        function()
        raised = None
    except Exception as error:  # noqa: BLE001 - the caller asserts on it
        raised = error
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, raised


def test_a_deflated_dicom_bomb_is_refused_before_pydicom_inflates_it():
    bomb = hostile.deflated_dicom_bomb()  # ~300 KB inflating to 300 MB
    assert len(bomb) < 400_000
    start = time.perf_counter()
    peak, raised = _peak_bytes(lambda: decode_image(bomb))
    assert isinstance(raised, ImageTooLargeError) and "inflates to more than" in str(raised)
    assert time.perf_counter() - start < 3.0 and peak < 16 * 1024 * 1024


def test_a_small_deflated_dicom_is_still_read():
    image = decode_image(hostile.deflated_dicom_bomb(1024))
    assert image.format == "DICOM" and image.pixels.shape == (16, 16)
    with pytest.raises(ImageTooLargeError, match="inflates to more than 1,000"):
        decode_image(hostile.deflated_dicom_bomb(1024), max_decoded_bytes=1_000)


@pytest.mark.parametrize(
    ("rescale", "window", "message"),
    [
        ((float("nan"), 0.0), None, "invalid DICOM RescaleSlope: nan"),
        ((1e308, 0.0), None, "invalid DICOM RescaleSlope: 1e+308"),
        ((float("inf"), 0.0), None, "invalid DICOM RescaleSlope: inf"),
        ((1.0, float("nan")), None, "invalid DICOM RescaleIntercept: nan"),
        ((0.0, 5.0), None, "RescaleSlope: 0 makes every pixel the same"),
        (None, (float("nan"), 400.0), "invalid DICOM WindowCenter: nan"),
        (None, (100.0, 1e308), "invalid DICOM WindowWidth: 1e+308"),
        (None, (-100_000.0, 10.0), "blank (one constant value) after its rescale and window"),
    ],
    ids=[
        "nan-slope",
        "huge-slope",
        "inf-slope",
        "nan-intercept",
        "zero-slope",
        "nan-center",
        "huge-width",
        "window-outside-the-data",
    ],
)
def test_a_degenerate_dicom_intensity_transform_is_refused(rescale, window, message):
    data = dicom_bytes(STORED, rescale=rescale, window=window)
    with pytest.raises(DegenerateImageError, match=re.escape(message)):
        decode_image(data)


def test_a_blank_dicom_is_refused_not_labelled():
    with pytest.raises(DegenerateImageError, match="blank"):
        decode_image(dicom_bytes(np.zeros((16, 16), np.uint16)))


def test_a_40000_page_tiff_is_refused_in_well_under_a_second():
    data = hostile.tiff_pages(40_000)
    start = time.perf_counter()
    with pytest.raises(NotASliceError, match="more than one frame"):
        decode_image(data)
    assert time.perf_counter() - start < 0.5
    assert decode_image(hostile.tiff_pages(1)).pixels.shape == (1, 1)


def _compressed_dicom(frame: bytes, syntax: str, rows: int, columns: int) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Rows, dataset.Columns, dataset.SamplesPerPixel = rows, columns, 1
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.PixelData = encapsulate([frame])
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_jpeg_dicom_is_decoded_when_its_frame_matches_its_header():
    image = decode_image(_compressed_dicom(encode(GREY, "JPEG", quality=95), JPEGBaseline8Bit, 48, 64))
    assert image.format == "DICOM" and image.pixels.shape == (48, 64)


def test_a_compressed_dicom_frame_bigger_than_its_header_is_refused_before_decoding():
    big = encode(np.zeros((4000, 4000), np.uint8), "JPEG")  # small on the wire, 16 MP once decoded
    with pytest.raises(UnreadableImageError, match="frame is 4000 x 4000, the header says 16 x 16"):
        decode_image(_compressed_dicom(big, JPEGBaseline8Bit, 16, 16))


def test_an_rle_dicom_bomb_is_refused_before_decoding():
    segment = b"\x81\x00" * 100_000  # each pair decodes to 128 bytes: 12.8 MB for a 16 x 16 image
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    with pytest.raises(ImageTooLargeError, match="bytes of RLE data for a 16 x 16 image"):
        decode_image(_compressed_dicom(header + segment, RLELossless, 16, 16))
