"""The built-in demo dataset: axial slices of a real brain template with synthetic, class-specific lesions.

It lets the whole project run and its tests pass with no download. Images are cut from the MNI152 2009a
symmetric T1 template (skull-stripped, 1 mm) that the nilearn wheel ships, with the white-matter map used to
place intra-axial lesions. Four classes, one folder each, like the public brain-tumour MRI sets:

- ``glioma``: an irregular intra-axial mass in the hemispheric white matter; high-grade ones have a bright
  enhancing rim around a dark necrotic core, low-grade ones are a dim mass; both with surrounding oedema.
- ``meningioma``: a round, homogeneous, bright extra-axial mass with a broad base on the inner skull surface,
  sometimes with a dark CSF cleft and a dural tail.
- ``pituitary``: a mass in the midline sellar region, at the low levels where the sella is in the slice.
- ``notumor``: none.

Slice level, rotation, scale, translation, bias field, contrast (window, gamma), Rician noise, lesion size and
lesion contrast all vary, and a share of lesions is small and faint; the non-pituitary classes also sample the
sellar levels (which always show a normal pituitary gland), so that neither level nor lesion presence alone
gives the class away. A small classifier learns it well above chance but not perfectly.

Each image ``<class>/<class>_<NNNN>.png`` (8-bit grey) has its lesion mask ``<class>/<class>_<NNNN>.mask.png``
(0/255, all zero for ``notumor``) beside it. A few planted duplicates (exact copies, and near copies that were
JPEG re-encoded, brightened and resized) give the data analysis something to find. ``demo.json`` records the
parameters, counts, duplicates and per-image generation facts. Output is byte-identical for a given seed.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from neurovit.data.layout import MASK_SUFFIX  # the layout reader skips these files
from neurovit.errors import DataError

log = logging.getLogger(__name__)

DEMO_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
DEMO_MANIFEST = "demo.json"

_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
_WM_FILE = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"

# Axial levels (MNI z, mm). The sella turcica lies below the brain between the temporal lobes.
_SELLAR_LEVELS = (-36, -22)
_CLASS_LEVELS = {"glioma": (-18, 56), "meningioma": (-18, 64), "notumor": (-20, 64)}
# Non-pituitary images drawn from the sellar levels, so the level is not the label. At 0.3 a sellar level
# alone meant "pituitary" half the time, and a minutes-trained model read the temporal lobes, not the sella.
_SELLAR_SHARE = 0.45
_SELLA_CENTRE_MM = (0.0, 1.0)  # (x, y) of the gland; the brainstem's front edge is at y = -13 at these levels
_GLAND_LEVELS = (-37, -25)
_VIEW_CENTRE_MM = (0.0, -18.0)  # middle of the brain's extent in x and y
_FIELD_OF_VIEW_MM = 210.0
# Lesion contrasts (in the painters) and this share of faint lesions are set so that the demo's minutes of
# CPU training find the lesions (0.76 test accuracy after 30 epochs); fainter settings left it near 0.6.
_FAINT_SHARE = 0.06


@dataclass(frozen=True)
class _Level:
    """One axial slice of the template and the masks derived from it, in image orientation at 1 mm."""

    t1: np.ndarray  # float32, 0..1
    white_matter: np.ndarray  # bool: cerebral white matter (hemispheres, not cerebellum or brainstem)
    brain: np.ndarray  # bool
    cerebrum: np.ndarray  # bool: brain minus cerebellum and brainstem
    intracranial: np.ndarray  # bool: brain with sulci and fissures closed, an inner-skull stand-in
    depth: np.ndarray  # float32: mm from each brain pixel to the nearest non-brain pixel
    outer_edge: np.ndarray  # (n, 2) int: pixels on the intracranial boundary
    white_level: float  # typical white-matter intensity, the reference for lesion contrast


@dataclass(frozen=True)
class _Template:
    t1: np.ndarray  # uint8 (x, y, z)
    white_matter: np.ndarray  # uint8 probability * 255
    origin_mm: np.ndarray  # world position of voxel (0, 0, 0)


def _template_dir() -> Path:
    """The nilearn wheel's data folder, found without importing nilearn (its import is slow)."""
    spec = find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise DataError("the demo dataset needs the nilearn package (it ships the MNI152 template)")
    return Path(spec.origin).parent / "datasets" / "data"


@functools.cache
def _load_template() -> _Template:
    folder = _template_dir()
    try:
        t1_image = nib.load(folder / _T1_FILE)
        wm_image = nib.load(folder / _WM_FILE)
    except FileNotFoundError as error:
        raise DataError(f"MNI152 template missing from the nilearn install at {folder}: {error}") from error
    affine = t1_image.affine
    # The shipped templates are 1 mm, axis-aligned RAS; the slicing below relies on it.
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise DataError(f"unexpected MNI152 template orientation/spacing: affine {affine.tolist()}")
    return _Template(
        t1=np.asarray(t1_image.dataobj, dtype=np.uint8),
        white_matter=np.asarray(wm_image.dataobj, dtype=np.uint8),
        origin_mm=affine[:3, 3].copy(),
    )


def _mm_to_pixel(x_mm: float, y_mm: float) -> np.ndarray:
    """World (x, y) in mm -> (row, col) in the image-oriented slice (anterior up, patient right on left)."""
    template = _load_template()
    n_x, n_y = template.t1.shape[:2]
    i, j = x_mm - template.origin_mm[0], y_mm - template.origin_mm[1]
    return np.array([n_y - 1 - j, n_x - 1 - i], dtype=np.float64)


def _pixel_to_mm(row: float, col: float) -> tuple[float, float]:
    """Inverse of ``_mm_to_pixel``."""
    template = _load_template()
    n_x, n_y = template.t1.shape[:2]
    return n_x - 1 - col + template.origin_mm[0], n_y - 1 - row + template.origin_mm[1]


@functools.cache
def _level(z_mm: int) -> _Level:
    template = _load_template()
    k = int(round(z_mm - template.origin_mm[2]))

    def orient(volume: np.ndarray) -> np.ndarray:
        # Rows: anterior at the top; columns: radiological convention (patient right on image left).
        return np.ascontiguousarray(volume[::-1, ::-1, k].T)

    t1 = orient(template.t1).astype(np.float32) / 255.0
    brain = t1 > 0  # the template is skull-stripped: zero outside the brain
    cerebrum = brain & ~_infratentorial(z_mm, t1.shape)
    white_matter = (orient(template.white_matter) > 127) & cerebrum
    disk = _disk(6)
    padded = np.pad(brain, 8)
    intracranial = ndimage.binary_fill_holes(ndimage.binary_closing(padded, structure=disk))[8:-8, 8:-8]
    outer_edge = np.argwhere(intracranial & ~ndimage.binary_erosion(intracranial))
    depth = ndimage.distance_transform_edt(brain).astype(np.float32)
    white_values = t1[white_matter]
    white_level = float(np.median(white_values)) if white_values.size > 50 else 0.85
    return _Level(t1, white_matter, brain, cerebrum, intracranial, depth, outer_edge, white_level)


def _infratentorial(z_mm: int, shape: tuple[int, int]) -> np.ndarray:
    """A rough cerebellum + brainstem region (MNI boxes), where the demo places no glioma."""
    rows, cols = np.indices(shape)
    top_left_mm = _pixel_to_mm(0, 0)
    x_mm, y_mm = top_left_mm[0] - cols, top_left_mm[1] - rows
    cerebellum = (y_mm < -42) & ((z_mm < -14) | ((z_mm < -2) & (np.abs(x_mm) < 25)))
    brainstem = (z_mm < -8) & (np.abs(x_mm) < 16) & (y_mm < -8)
    return cerebellum | brainstem


def _disk(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Spatially smooth Gaussian noise with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def _sample_level(rng: np.random.Generator, label: str) -> int:
    if label == "pituitary" or rng.random() < _SELLAR_SHARE:
        low, high = _SELLAR_LEVELS
    else:
        low, high = _CLASS_LEVELS[label]
    return int(rng.integers(low, high + 1))


def _lesion_size_and_contrast(
    rng: np.random.Generator,
    radius_mm: tuple[float, float],
    contrast: tuple[float, float],
    faint_scale: float,
) -> tuple[float, float, bool]:
    """A lesion radius and relative contrast; a share are small and faint, the hard cases."""
    if rng.random() < _FAINT_SHARE:
        return radius_mm[0] * rng.uniform(0.7, 1.1), contrast[0] * rng.uniform(faint_scale, 0.8), True
    return rng.uniform(*radius_mm), rng.uniform(*contrast), False


def _polar(shape: tuple[int, int], centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.indices(shape, dtype=np.float32)
    d_row, d_col = rows - np.float32(centre[0]), cols - np.float32(centre[1])
    return d_row, d_col, np.hypot(d_row, d_col)


def _paint_gland(canvas: np.ndarray, level: _Level, z_mm: int, rng: np.random.Generator) -> None:
    """The normal pituitary gland, present in every class at the levels that cut through the sella."""
    low, high = _GLAND_LEVELS
    if not low <= z_mm <= high:
        return
    middle, half = (low + high) / 2, (high - low) / 2 + 1
    radius = 4.0 * np.sqrt(max(0.0, 1 - ((z_mm - middle) / half) ** 2))
    _, _, distance = _polar(canvas.shape, _mm_to_pixel(*_SELLA_CENTRE_MM))
    alpha = np.clip(radius - distance + 0.5, 0.0, 1.0)
    value = level.white_level * rng.uniform(0.35, 0.6)
    canvas[:] = canvas * (1 - alpha) + value * alpha


def _paint_glioma(canvas: np.ndarray, level: _Level, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    radius, contrast, faint = _lesion_size_and_contrast(rng, (8.0, 24.0), (0.3, 0.6), 0.3)
    # Deep in the cerebral white matter, else anywhere deep in the cerebrum; thin slices shrink the lesion.
    cerebral_depth = np.where(level.cerebrum, level.depth, 0.0)
    candidates = np.argwhere(level.white_matter & (cerebral_depth > 0.8 * radius + 2))
    if len(candidates) == 0:
        candidates = np.argwhere(cerebral_depth > 0.8 * radius + 2)
    if len(candidates) == 0:
        radius = min(radius, 0.8 * float(cerebral_depth.max()))
        candidates = np.argwhere(cerebral_depth >= 0.9 * cerebral_depth.max())
    centre = candidates[rng.integers(len(candidates))].astype(np.float64)
    d_row, d_col, distance = _polar(canvas.shape, centre)
    angle = np.arctan2(d_row, d_col)
    # An irregular outline: a few random harmonics plus fine boundary noise.
    outline = np.ones_like(angle)
    for harmonic in range(2, 6):
        outline += rng.uniform(0.0, 0.35 / harmonic) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    relative = distance / (radius * outline) + 0.12 * _smooth_noise(rng, canvas.shape, 2.0)
    alpha = np.clip((1.0 - relative) / 0.12, 0.0, 1.0) * level.brain  # intra-axial: stays inside the brain

    high_grade = rng.random() < 0.65
    oedema_reach = rng.uniform(0.3, 1.0) if high_grade else rng.uniform(0.0, 0.4)
    oedema = np.clip((1.0 + oedema_reach - relative) / max(oedema_reach, 1e-3), 0.0, 1.0) * level.brain
    canvas *= 1.0 - rng.uniform(0.1, 0.3) * contrast / 0.45 * oedema  # oedema is dark on T1
    texture = 1.0 + 0.06 * _smooth_noise(rng, canvas.shape, 1.0)
    if high_grade:
        value = np.full_like(canvas, level.white_level * (1.0 + contrast))  # enhancing rim
        if radius >= 8 and not faint:
            core_edge = rng.uniform(0.4, 0.65)
            necrosis = np.clip((core_edge - relative) / 0.1, 0.0, 1.0)
            value = value * (1 - necrosis) + level.white_level * rng.uniform(0.3, 0.5) * necrosis
    else:
        value = np.full_like(canvas, level.white_level * (1.0 - 1.3 * contrast))
    canvas[:] = canvas * (1 - alpha) + value * texture * alpha
    return alpha, {
        "lesion_radius_mm": radius,
        "lesion_contrast": contrast,
        "faint": faint,
        "glioma_grade": "high" if high_grade else "low",
    }


def _paint_meningioma(canvas: np.ndarray, level: _Level, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    radius, contrast, faint = _lesion_size_and_contrast(rng, (6.0, 20.0), (0.3, 0.6), 0.3)
    edge_point = level.outer_edge[rng.integers(len(level.outer_edge))].astype(np.float64)
    # Outward normal: from the centroid of nearby intracranial pixels towards the edge point.
    window = 12
    top, left = np.maximum(edge_point.astype(int) - window, 0)
    nearby = np.argwhere(level.intracranial[top : top + 2 * window + 1, left : left + 2 * window + 1])
    normal = edge_point - (nearby.mean(axis=0) + (top, left))
    normal /= max(float(np.linalg.norm(normal)), 1e-6)
    tangent = np.array([-normal[1], normal[0]])
    centre = edge_point - normal * radius * rng.uniform(0.35, 0.75)

    d_row, d_col, _ = _polar(canvas.shape, centre)
    along_normal = (d_row * normal[0] + d_col * normal[1]) / (radius * rng.uniform(0.75, 1.0))
    along_tangent = (d_row * tangent[0] + d_col * tangent[1]) / (radius * rng.uniform(1.0, 1.3))
    relative = np.hypot(along_normal, along_tangent) + 0.03 * _smooth_noise(rng, canvas.shape, 3.0)
    # Clipping to the inner skull gives the broad, flat base on the dura.
    alpha = np.clip((1.0 - relative) / 0.08, 0.0, 1.0) * level.intracranial

    if rng.random() < 0.5:  # CSF cleft: a thin dark rim between tumour and brain
        cleft = np.clip(1.0 - np.abs(relative - 1.08) / 0.06, 0.0, 1.0) * level.brain
        canvas *= 1.0 - rng.uniform(0.2, 0.45) * cleft
    value = level.white_level * (1.0 + contrast)
    if rng.random() < 0.4:  # dural tail: the dura next to the base thickens and enhances
        rows, cols = np.indices(canvas.shape)
        near_base = np.hypot(rows - edge_point[0], cols - edge_point[1]) < 1.8 * radius
        dura = level.intracranial & ~ndimage.binary_erosion(level.intracranial, iterations=2) & near_base
        canvas[dura] = canvas[dura] * 0.5 + value * 0.5
    texture = 1.0 + 0.02 * _smooth_noise(rng, canvas.shape, 2.0)  # homogeneous
    canvas[:] = canvas * (1 - alpha) + value * texture * alpha
    return alpha, {"lesion_radius_mm": radius, "lesion_contrast": contrast, "faint": faint}


def _paint_pituitary(canvas: np.ndarray, level: _Level, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    radius, contrast, faint = _lesion_size_and_contrast(rng, (6.0, 12.0), (1.0, 1.4), 0.45)
    centre_mm = (_SELLA_CENTRE_MM[0] + rng.uniform(-2.5, 2.5), _SELLA_CENTRE_MM[1] + rng.uniform(-4.0, 5.0))
    d_row, d_col, _ = _polar(canvas.shape, _mm_to_pixel(*centre_mm))
    relative = np.hypot(d_row / (radius * rng.uniform(0.9, 1.2)), d_col / (radius * rng.uniform(0.8, 1.1)))
    alpha = np.clip((1.0 - relative) / 0.1, 0.0, 1.0)
    texture = 1.0 + 0.05 * _smooth_noise(rng, canvas.shape, 1.5)
    canvas[:] = canvas * (1 - alpha) + level.white_level * contrast * texture * alpha
    return alpha, {"lesion_radius_mm": radius, "lesion_contrast": contrast, "faint": faint}


_PAINTERS = {"glioma": _paint_glioma, "meningioma": _paint_meningioma, "pituitary": _paint_pituitary}


def _warp(planes: list[np.ndarray], rng: np.random.Generator, size: int) -> list[np.ndarray]:
    """Crop a square field of view to ``size`` with a small random rotation, scale and translation."""
    angle = np.deg2rad(rng.uniform(-10.0, 10.0))
    zoom = rng.uniform(0.92, 1.08)
    shift = rng.uniform(-6.0, 6.0, size=2)
    mm_per_pixel = _FIELD_OF_VIEW_MM / size / zoom
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation * mm_per_pixel
    output_centre = np.full(2, (size - 1) / 2)
    offset = _mm_to_pixel(*_VIEW_CENTRE_MM) + shift - matrix @ output_centre
    return [
        ndimage.affine_transform(plane, matrix, offset, output_shape=(size, size), order=1, mode="constant")
        for plane in planes
    ]


def _acquire(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanner-like appearance: bias field, Rician noise, window and gamma -> uint8."""
    size = image.shape[0]
    rows, cols = np.indices(image.shape, dtype=np.float32) / (size / 2) - 1.0
    direction = rng.uniform(0, 2 * np.pi)
    image = image * (1.0 + rng.uniform(0.0, 0.15) * (np.cos(direction) * cols + np.sin(direction) * rows))
    sigma = rng.uniform(0.01, 0.05)
    real = image + rng.normal(0.0, sigma, image.shape)
    imaginary = rng.normal(0.0, sigma, image.shape)
    image = np.hypot(real, imaginary)  # magnitude of complex Gaussian noise: Rician
    low, high = rng.uniform(0.0, 0.06), rng.uniform(0.9, 1.25)
    image = np.clip((image - low) / (high - low), 0.0, 1.0) ** rng.uniform(0.75, 1.35)
    return np.round(image * 255).astype(np.uint8)


def _render(
    label: str, rng: np.random.Generator, size: int, healthy: bool = False
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One (image, mask, facts) sample of ``label``; with ``healthy``, the facts also hold
    ``"healthy_twin"``: the same slice, pose and acquisition with no lesion painted (see ``healthy_twin``).
    The random draws of the image are the same either way."""
    z_mm = _sample_level(rng, label)
    level = _level(z_mm)
    canvas = level.t1.copy()
    _paint_gland(canvas, level, z_mm, rng)
    unpainted = canvas.copy() if healthy else None
    facts: dict = {"level_mm": z_mm}
    lesion = np.zeros_like(canvas)
    if label in _PAINTERS:
        lesion, lesion_facts = _PAINTERS[label](canvas, level, rng)
        facts.update(
            {
                key: round(value, 3) if isinstance(value, float) else value
                for key, value in lesion_facts.items()
            }
        )
    planes = [canvas, lesion.astype(np.float32)] + ([unpainted] if unpainted is not None else [])
    image, lesion, *twin = _warp(planes, rng, size)  # one pose for every plane
    mask = lesion >= 0.5
    if label in _PAINTERS and not mask.any():  # a tiny lesion thinned out by resampling: keep its core
        mask = lesion >= 0.5 * lesion.max()
    if twin:
        # the same scanner draws (bias field, noise, window, gamma) from a copy of the generator
        facts["healthy_twin"] = _acquire(twin[0], copy.deepcopy(rng))
    return _acquire(image, rng), (mask * 255).astype(np.uint8), facts


def _image_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    # One independent stream per image: the output does not depend on generation order.
    return np.random.default_rng([seed, class_index, index])


def healthy_twin(data_dir: str | Path, relpath: str) -> np.ndarray | None:
    """The lesion-free twin of the demo image ``relpath`` of ``data_dir``, or None if there is none.

    The twin is the image re-rendered with the same level, pose and scanner draws but no lesion painted:
    it differs from the image only where the lesion (and its oedema) is, so it is what the slice would look
    like healthy. Explanation scores use it as a deletion substrate and to ask whether a model's
    prediction needs the lesion at all (``training.evaluations.explanations``). Only original images of a
    dataset that
    ``generate_demo_dataset`` wrote have one (not planted duplicates or other data). ``(H, W)`` uint8, like
    the image file; a DataError if the file on disk is not what the generator draws for it (edited data).
    """
    root = Path(data_dir)
    manifest_path = root / DEMO_MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    if relpath not in manifest["images"]:
        return None
    label = relpath.split("/", 1)[0]
    index = int(Path(relpath).stem.rsplit("_", 1)[1])
    rng = _image_rng(manifest["seed"], manifest["classes"].index(label), index)
    image, _, facts = _render(label, rng, manifest["image_size"], healthy=True)
    with Image.open(root / relpath) as stored:
        on_disk = np.asarray(stored.convert("L"))
    if not np.array_equal(on_disk, image):
        raise DataError(f"{relpath} is not the image the demo generator draws for it: it was changed")
    return facts["healthy_twin"]


def _save_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels, mode="L").save(path, format="PNG", optimize=False, compress_level=6)


def _near_copy(
    image: Image.Image, mask: Image.Image, rng: np.random.Generator
) -> tuple[Image.Image, Image.Image]:
    """What a re-exported scan looks like: JPEG round trip, a little brighter, resized by a few percent."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(70, 92)))
    buffer.seek(0)
    pixels = np.asarray(Image.open(buffer).convert("L"), dtype=np.float32) * rng.uniform(1.03, 1.08)
    brighter = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), mode="L")
    factor = rng.uniform(0.93, 0.97) if rng.random() < 0.5 else rng.uniform(1.03, 1.07)
    new_size = (round(image.width * factor), round(image.height * factor))
    return brighter.resize(new_size, Image.BILINEAR), mask.resize(new_size, Image.NEAREST)


def _plant_duplicates(root: Path, originals: list[str], count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, len(DEMO_CLASSES)])  # a stream of its own, apart from the images'
    next_index = {label: sum(path.startswith(f"{label}/") for path in originals) for label in DEMO_CLASSES}
    planted = []
    for source in sorted(rng.choice(originals, size=count, replace=False).tolist()):
        label = source.split("/")[0]
        copy = f"{label}/{label}_{next_index[label]:04d}.png"
        next_index[label] += 1
        kind = "exact" if rng.random() < 0.5 else "near"
        source_mask, copy_mask = (name.removesuffix(".png") + MASK_SUFFIX for name in (source, copy))
        if kind == "exact":
            shutil.copyfile(root / source, root / copy)
            shutil.copyfile(root / source_mask, root / copy_mask)
        else:
            with Image.open(root / source) as image, Image.open(root / source_mask) as mask:
                near_image, near_mask = _near_copy(image.convert("L"), mask.convert("L"), rng)
            near_image.save(root / copy, format="PNG")
            near_mask.save(root / copy_mask, format="PNG")
        planted.append({"path": copy, "source": source, "kind": kind})
    return planted


def _replace_folder(built: Path, out_dir: Path) -> None:
    """Move a finished dataset into place; only an empty folder or an earlier demo set is replaced."""
    if out_dir.exists():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        elif (out_dir / DEMO_MANIFEST).is_file():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            shutil.rmtree(old)
        else:
            raise DataError(
                f"{out_dir} exists and is not an earlier demo dataset (no {DEMO_MANIFEST}); "
                "refusing to overwrite it"
            )
    built.rename(out_dir)


def generate_demo_dataset(
    out_dir: str | Path,
    *,
    n_per_class: int = 150,
    image_size: int = 128,
    seed: int = 0,
    duplicate_fraction: float = 0.03,
) -> Path:
    """Write the demo dataset to ``out_dir`` and return its path.

    Args:
        out_dir: destination folder; must be absent, empty, or an earlier demo dataset (which is replaced).
        n_per_class: original images per class, before the planted duplicates.
        image_size: side of the square images, in pixels.
        seed: everything is derived from it; the same seed writes the same bytes.
        duplicate_fraction: share of the original images that get a planted duplicate.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if not 0.0 <= duplicate_fraction <= 0.5:
        raise ValueError(f"duplicate_fraction must be in [0, 0.5], got {duplicate_fraction}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the destination and renamed in at the end: an interrupted run leaves no half dataset.
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        images: dict[str, dict] = {}
        for class_index, label in enumerate(DEMO_CLASSES):
            (build / label).mkdir()
            for index in range(n_per_class):
                image, mask, facts = _render(label, _image_rng(seed, class_index, index), image_size)
                name = f"{label}/{label}_{index:04d}"
                _save_png(image, build / f"{name}.png")
                _save_png(mask, build / f"{name}{MASK_SUFFIX}")
                images[f"{name}.png"] = facts
        n_duplicates = round(duplicate_fraction * len(images))
        duplicates = _plant_duplicates(build, list(images), n_duplicates, seed)
        counts = {
            label: n_per_class + sum(d["path"].startswith(f"{label}/") for d in duplicates)
            for label in DEMO_CLASSES
        }
        description = {
            "generator": "neurovit.data.demo",
            "template": "MNI152 ICBM 2009a symmetric T1 + white matter (copy shipped in the nilearn wheel)",
            "seed": seed,
            "n_per_class": n_per_class,
            "image_size": image_size,
            "duplicate_fraction": duplicate_fraction,
            "classes": list(DEMO_CLASSES),
            "counts": counts,
            "duplicates": duplicates,
            "images": images,
        }
        (build / DEMO_MANIFEST).write_text(json.dumps(description, indent=1) + "\n")
        _replace_folder(build, out_dir)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log.info(
        "wrote demo dataset: %d images (%d planted duplicates) to %s",
        sum(counts.values()),
        len(duplicates),
        out_dir,
    )
    return out_dir


__all__ = ["DEMO_CLASSES", "DEMO_MANIFEST", "MASK_SUFFIX", "generate_demo_dataset", "healthy_twin"]
