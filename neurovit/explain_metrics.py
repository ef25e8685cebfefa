"""How good is an explanation map? Localisation (pointing game) and faithfulness (deletion), plus baselines.

- ``pointing_game_hit``: the pointing game of Zhang et al. ("Top-down Neural Attention by Excitation
  Backprop", IJCV 2018), as facebookresearch/TorchRay ``benchmark/pointing_game.py`` implements it: the map's
  maximum is a hit when it lies within ``tolerance`` pixels of the ground-truth mask. Two deliberate
  differences: the distance test is ``<= tolerance`` (TorchRay's ``< tolerance`` makes tolerance 0 an
  automatic miss), and tied maxima are scored in expectation (the share of tied points that hit, i.e.
  uniform random tie-breaking), so a flat map scores like a random guess, never as a sure hit (Quantus
  counts any tied hit as a hit). Slices without a lesion have no answer: the caller leaves them out.
- ``deletion_curve`` / ``deletion_auc``: the deletion metric of Petsiuk, Das & Saenko ("RISE: Randomized
  Input Sampling for Explanation of Black-box Models", BMVC 2018), checked against eclique/RISE
  ``evaluation.py``: the explained class' probability as the most relevant regions are replaced by a
  substrate step by step, and the normalised area under that curve, ``(sum - first/2 - last/2) / steps``
  (the trapezoid rule over x in [0, 1]). Lower is better: a faithful map names the evidence whose removal
  kills the prediction first. Here the regions are the cells of the map's own grid (the ViT's patches),
  not single pixels, and every perturbed input of a curve is built at once and run in batches.
- ``noisy_linear_imputation`` (substrate ``"road"``): ROAD's fill (Rong, Leemann et al., "A Consistent and
  Efficient Evaluation Strategy for Attribution Methods", ICML 2022), checked against tleemann/road_evaluation
  ``imputations.py`` as pytorch-grad-cam ``metrics/road.py`` ships it. A constant fill leaves the removed
  cells' outline in the image, an input unlike any training image that a model may answer to (and that
  says where the map pointed); the imputed tissue continues its surroundings instead.
- ``random_map`` (seeded) and ``gaussian_map`` (a centred blob: "the lesion is somewhere in the middle")
  are the baselines an explainer must beat; ``lesion_map`` (the ground-truth mask on the patch grid, then
  outward from it) is a reference, not an explainer: how low deletion goes when the lesion is removed first.

Both scores depend only on the ORDER of a map's values (its argmax, its ranking), so any monotone rescaling
of a map leaves them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from neurovit.explain import normalise_maps, upsample

SUBSTRATES = ("mean", "blur", "road")
# ROAD's neighbour weights (side 1/6, diagonal 1/12: they sum to 1) and its absolute noise.
ROAD_NEIGHBOURS = (
    ((-1, 0), 1 / 6),
    ((1, 0), 1 / 6),
    ((0, -1), 1 / 6),
    ((0, 1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((1, 1), 1 / 12),
)
ROAD_NOISE = 0.01
# Values within this of a map's maximum count as tied maxima (bilinear upsampling in float32 is exact only
# to a few ulps; real differences between patches are orders of magnitude larger).
TIE_ATOL = 1e-6
# The pointing game's tolerance: TorchRay's 15 px (Zhang et al.) at 224 px, scaled to each image's own longer
# side, where the map's maximum is compared with the mask as drawn.
DEFAULT_TOLERANCE_PX = 15.0
TOLERANCE_SIDE_PX = 224

# A lesion imputed as a whole (``grown_lesion``) is first grown by this share of the image's side (2 px at
# 96 px, about 4 px at 224 px), so that its bright rim and its edge leave with it.
LESION_MARGIN = 0.02

# A control region (``control_region``) is the grown lesion moved by up to this share of the side, to a place
# that lies at least ``CONTROL_IN_HEAD`` inside the head and clear of the lesion (the first of
# ``CONTROL_TRIES`` seeded draws that fits). The head: canonical pixels above ``HEAD_LEVEL`` of the range,
# holes filled (a real slice's background is noise near 0, not exactly 0).
CONTROL_SHIFT = 0.35
CONTROL_IN_HEAD = 0.9
CONTROL_TRIES = 200
HEAD_LEVEL = 0.1

ModelFn = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------------------------
# Pointing game.


def pointing_game_hit(saliency: np.ndarray, mask: np.ndarray, tolerance: float = 0.0) -> float:
    """1.0 when the maximum of ``saliency`` lies within ``tolerance`` pixels of the ``mask``, else 0.0.

    Args:
        saliency: ``(h, w)`` map; when its shape differs from the mask's (a patch-grid map), it is upsampled
            bilinearly to the mask's size first (``neurovit.explain.upsample``, what the overlays show).
        mask: ``(H, W)`` boolean (or 0/1) lesion mask, in the same geometry as the model input. Must not be
            empty: a slice without a lesion is left out of the pointing game.
        tolerance: Euclidean distance in mask pixels; a maximum at most this far from a mask pixel hits.

    Returns:
        The hit as a float. With several tied maxima (a flat map, a plateau), the share of them that hit:
        the expected score under uniform random tie-breaking, so values strictly between 0 and 1 are possible.
    """
    mask = np.asarray(mask).astype(bool)
    saliency = np.asarray(saliency, dtype=np.float32)
    if mask.ndim != 2 or saliency.ndim != 2:
        raise ValueError(f"expected a 2-D map and a 2-D mask, got {saliency.shape} and {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty: a slice without a lesion has no pointing-game answer")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not np.isfinite(saliency).all():
        raise ValueError("the map holds NaN or infinite values")
    if saliency.shape != mask.shape:
        saliency = upsample(saliency, mask.shape)
    maxima = saliency >= saliency.max() - TIE_ATOL
    # Distance of every pixel to the nearest mask pixel (0 inside the mask).
    distance = ndimage.distance_transform_edt(~mask)
    return float((distance[maxima] <= tolerance).mean())


def map_on_image(saliency: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map over the model's square input, upsampled bilinearly onto the image's own ``shape``.

    The square stands for the image's longer side with the shorter one centred on it
    (``neurovit.preprocessing.resize_keep_aspect``), so the padding is cropped off again.
    """
    height, width = shape
    side = max(height, width)
    square = upsample(np.asarray(saliency, dtype=np.float32), side)
    top, left = (side - height) // 2, (side - width) // 2
    return square[top : top + height, left : left + width]


def scaled_tolerance(shape: tuple[int, int], tolerance: float = DEFAULT_TOLERANCE_PX) -> float:
    """``tolerance`` pixels at ``TOLERANCE_SIDE_PX`` scaled to an image of ``shape`` (its longer side)."""
    return tolerance * max(shape) / TOLERANCE_SIDE_PX


def lesion_hit(saliency: np.ndarray, mask: np.ndarray, tolerance: float = DEFAULT_TOLERANCE_PX) -> float:
    """The pointing game at the image's own resolution: ``saliency`` (over the model input) goes back onto
    the image (``map_on_image``) and its maximum must lie within ``tolerance`` px at 224 px, scaled to the
    image's size, of ``mask`` as drawn (``pointing_game_hit``). What eval-explain scores and the demo says.
    """
    mask = np.asarray(mask).astype(bool)
    return pointing_game_hit(
        map_on_image(saliency, mask.shape), mask, scaled_tolerance(mask.shape, tolerance)
    )


def max_point(saliency: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    """(row, col) of the maximum of ``saliency`` upsampled to ``shape``; the centroid of tied maxima."""
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != tuple(shape):
        saliency = upsample(saliency, shape)
    rows, cols = np.nonzero(saliency >= saliency.max() - TIE_ATOL)
    return float(rows.mean()), float(cols.mean())


# ------------------------------------------------------------------------------------------------------------
# Deletion.


def cell_index(grid: tuple[int, int], height: int, width: int) -> np.ndarray:
    """``(height, width)`` int array: the raster index of the ``grid`` cell each pixel falls in.

    Cells split the image as evenly as possible (exactly the ViT's patches when the sides divide evenly).
    """
    grid_h, grid_w = grid
    if not (1 <= grid_h <= height and 1 <= grid_w <= width):
        raise ValueError(f"a {grid_h}x{grid_w} grid does not fit a {height}x{width} image")
    rows = np.arange(height) * grid_h // height
    cols = np.arange(width) * grid_w // width
    return rows[:, None] * grid_w + cols[None, :]


def deletion_order(saliency: np.ndarray) -> np.ndarray:
    """Cell indices (raster order of the map) from most to least relevant; ties keep raster order."""
    flat = np.asarray(saliency, dtype=np.float64).reshape(-1)
    if not np.isfinite(flat).all():
        raise ValueError("the map holds NaN or infinite values")
    return np.argsort(-flat, kind="stable")


def removed_counts(cells: int, steps: int | None = None) -> np.ndarray:
    """Cells removed before each of the ``steps + 1`` curve points: ``round(k * cells / steps)``, k = 0..steps

    ``steps=None`` removes one cell per step.
    """
    steps = cells if steps is None else int(steps)
    if not 1 <= steps <= cells:
        raise ValueError(f"steps must be in [1, {cells}] for {cells} cells, got {steps}")
    return np.rint(np.arange(steps + 1) * cells / steps).astype(np.int64)


def make_substrate(
    image: torch.Tensor, substrate: str | float = "mean", blur_sigma: float = 8.0
) -> torch.Tensor:
    """What removed regions are replaced with, shaped like ``image`` ``(C, H, W)``.

    ``"mean"``: the image's own mean value per channel (a flat grey); ``"blur"``: a Gaussian blur of the image
    with ``blur_sigma`` pixels (low frequencies survive, edges and texture do not); a number: that constant.
    (``"road"`` has no single fill: ``deletion_inputs`` imputes each step.)
    """
    if isinstance(substrate, int | float) and not isinstance(substrate, bool):
        return torch.full_like(image, float(substrate))
    if substrate == "mean":
        return image.mean(dim=(-2, -1), keepdim=True).expand_as(image).clone()
    if substrate == "road":
        raise ValueError("the road substrate is imputed per deletion step, not one fill: see deletion_inputs")
    if substrate == "blur":
        array = image.detach().to("cpu", torch.float64).numpy()
        blurred = np.stack([ndimage.gaussian_filter(plane, blur_sigma, mode="nearest") for plane in array])
        return torch.as_tensor(blurred, dtype=image.dtype, device=image.device)
    raise ValueError(f"substrate must be one of {SUBSTRATES} or a number, got {substrate!r}")


def noisy_linear_imputation(
    image: torch.Tensor,
    removed: np.ndarray,
    noise: float = ROAD_NOISE,
    rng: np.random.Generator | int | None = 0,
) -> torch.Tensor:
    """``image`` ``(C, H, W)`` with its ``removed`` pixels ``(H, W)`` imputed as ROAD does (module docstring).

    Every removed pixel is the weighted mean of its in-image neighbours (``ROAD_NEIGHBOURS``, renormalised at
    the border), known or removed alike: one sparse linear system per image, solved for all channels, plus
    Gaussian noise of standard deviation ``noise``. With every pixel removed nothing is known and any
    constant solves the system: the image's mean is used (the ``"mean"`` substrate).
    """
    image = _as_chw(image)
    removed = np.asarray(removed, dtype=bool)
    height, width = image.shape[-2:]
    if removed.shape != (height, width):
        raise ValueError(f"removed mask {removed.shape} differs from the image's {(height, width)}")
    rows, cols = np.nonzero(removed)
    count = len(rows)
    if count == 0:
        return image.clone()
    if count == removed.size:
        return make_substrate(image, "mean")
    pixels = image.detach().to("cpu", torch.float64).numpy().reshape(image.shape[0], -1)
    unknown = np.full(removed.size, -1, dtype=np.int64)
    unknown[rows * width + cols] = np.arange(count)
    neighbours = []  # per offset: the removed pixels whose neighbour is in the image, where it is, its weight
    for (dy, dx), weight in ROAD_NEIGHBOURS:
        y, x = rows + dy, cols + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        neighbours.append((np.nonzero(inside)[0], (y * width + x)[inside], weight))
    total = np.zeros(count)
    for at, _, weight in neighbours:
        total[at] += weight
    # Row i: x_i - sum_n (w_n / total_i) x_n = 0, the known neighbours moved to the right-hand side.
    entries, right = [(np.arange(count), np.arange(count), np.ones(count))], np.zeros((count, image.shape[0]))
    for at, neighbour, weight in neighbours:
        share = weight / total[at]
        variable = unknown[neighbour]
        free = variable >= 0
        entries.append((at[free], variable[free], -share[free]))
        np.add.at(right, at[~free], share[~free, None] * pixels[:, neighbour[~free]].T)
    entry_rows, entry_cols, values = (np.concatenate(part) for part in zip(*entries, strict=True))
    system = sparse.csc_matrix((values, (entry_rows, entry_cols)), shape=(count, count))
    solution = np.asarray(spsolve(system, right)).reshape(count, -1)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    solution = solution + noise * generator.standard_normal(solution.shape)
    filled = pixels.copy()
    filled[:, rows * width + cols] = solution.T
    return torch.as_tensor(filled.reshape(image.shape), dtype=image.dtype, device=image.device)


def grown_lesion(mask: np.ndarray, margin: float = LESION_MARGIN) -> np.ndarray:
    """``mask`` ``(H, W)`` grown by ``margin`` of its longer side (at least one pixel): what is imputed when
    a lesion is removed whole (evaluation's lesion-imputation line, training's counterfactual slices)."""
    mask = np.asarray(mask, dtype=bool)
    return ndimage.binary_dilation(mask, iterations=max(1, int(round(margin * max(mask.shape)))))


def control_region(
    lesion: np.ndarray, image: np.ndarray, rng: np.random.Generator, step: int = 1
) -> np.ndarray | None:
    """``lesion`` ``(H, W)`` moved to another place in the head of ``image`` (canonical uint8, same shape):
    mostly inside the head and not touching the lesion; None when no seeded draw fits. Imputing it beside
    imputing the lesion separates "the lesion mattered" from "any imputed patch of that size matters".

    ``step`` moves it by whole multiples of that many pixels only: a region of whole token cells stays on
    the token grid, so that its copy differs from it in place only, not in how it cuts the cells."""
    lesion = np.asarray(lesion, dtype=bool)
    head = ndimage.binary_fill_holes(np.asarray(image) > HEAD_LEVEL * 255)
    height, width = lesion.shape
    reach = max(1, int(round(CONTROL_SHIFT * max(height, width))) // step)
    rows, cols = np.nonzero(lesion)
    for _ in range(CONTROL_TRIES):
        dy, dx = rng.integers(-reach, reach + 1, size=2) * step
        y, x = rows + dy, cols + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        if inside.mean() < CONTROL_IN_HEAD:
            continue
        moved = np.zeros_like(lesion)
        moved[y[inside], x[inside]] = True
        if (moved & lesion).any() or (moved & head).sum() < CONTROL_IN_HEAD * len(rows):
            continue
        return moved
    return None


def deletion_inputs(
    image: torch.Tensor,
    saliency: np.ndarray,
    steps: int | None = None,
    substrate: str | float | torch.Tensor = "mean",
) -> torch.Tensor:
    """The ``steps + 1`` inputs of a deletion curve ``(steps + 1, C, H, W)``: the image with the ``n_k`` most
    relevant cells of ``saliency`` replaced by the substrate, from none (k = 0) to all (k = steps).

    ``"road"`` imputes each step's removed cells anew (``noisy_linear_imputation``, noise seeded per curve).
    """
    image = _as_chw(image)
    saliency = np.asarray(saliency)
    if saliency.ndim != 2:
        raise ValueError(f"expected one map (h, w), got shape {saliency.shape}")
    cells = saliency.size
    rank = np.empty(cells, dtype=np.int64)
    rank[deletion_order(saliency)] = np.arange(cells)  # rank[cell] = position in the deletion order
    pixel_rank = torch.as_tensor(rank[cell_index(saliency.shape, image.shape[-2], image.shape[-1])])
    counts = torch.as_tensor(removed_counts(cells, steps))
    removed = (pixel_rank[None] < counts[:, None, None]).to(image.device)  # (steps + 1, H, W)
    if isinstance(substrate, str) and substrate == "road":
        rng = np.random.default_rng(0)
        return torch.stack([noisy_linear_imputation(image, mask.cpu().numpy(), rng=rng) for mask in removed])
    fill = substrate if isinstance(substrate, torch.Tensor) else make_substrate(image, substrate)
    if fill.shape != image.shape:
        raise ValueError(f"substrate shape {tuple(fill.shape)} differs from the image's {tuple(image.shape)}")
    return torch.where(removed[:, None], fill[None], image[None])


def deletion_curves(
    model_fn: ModelFn,
    image: torch.Tensor,
    maps: np.ndarray,
    steps: int | None = None,
    substrate: str | float | torch.Tensor = "mean",
    batch_size: int = 128,
) -> np.ndarray:
    """Deletion curves of several maps ``(M, h, w)`` of one image: ``(M, steps + 1)`` probabilities.

    ``model_fn`` takes a batch ``(B, C, H, W)`` and returns the explained class' probability ``(B,)`` (the
    caller binds the class and any temperature). All ``M * (steps + 1)`` perturbed inputs go through it in
    batches of ``batch_size``, without gradients. ``substrate``: a name or number for ``make_substrate``,
    or the replacement image itself, shaped like ``image``.
    """
    image = _as_chw(image)
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"expected maps (M, h, w), got shape {maps.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # A fixed fill is made once for all maps; ROAD's depends on each step's removed cells.
    as_given = isinstance(substrate, torch.Tensor) or substrate == "road"
    fill = substrate if as_given else make_substrate(image, substrate)
    inputs = torch.cat([deletion_inputs(image, grid_map, steps, fill) for grid_map in maps])
    scores = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch_scores = torch.as_tensor(model_fn(inputs[start : start + batch_size]))
            scores.append(batch_scores.detach().reshape(-1).to("cpu", torch.float64))
    curves = torch.cat(scores).numpy()
    if curves.shape[0] != inputs.shape[0]:
        raise ValueError(f"model_fn returned {curves.shape[0]} scores for {inputs.shape[0]} inputs")
    return curves.reshape(len(maps), -1)


def deletion_curve(
    model_fn: ModelFn,
    image: torch.Tensor,
    saliency: np.ndarray,
    steps: int | None = None,
    substrate: str | float | torch.Tensor = "mean",
    batch_size: int = 128,
) -> np.ndarray:
    """The deletion curve of one map ``(h, w)``: ``steps + 1`` probabilities (see ``deletion_curves``)."""
    return deletion_curves(model_fn, image, np.asarray(saliency)[None], steps, substrate, batch_size)[0]


def deletion_auc(curve: np.ndarray) -> float | np.ndarray:
    """Normalised area under deletion curve(s) ``(..., steps + 1)`` sampled at x = 0, 1/steps, ..., 1.

    The trapezoid rule as eclique/RISE ``auc``: ``(sum - first/2 - last/2) / steps``; probabilities in
    [0, 1] give an area in [0, 1]. One curve gives a float, a stack of curves an array.
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.shape[-1] < 2:
        raise ValueError(f"a curve needs at least two points, got shape {curve.shape}")
    area = (curve.sum(axis=-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / (curve.shape[-1] - 1)
    return float(area) if area.ndim == 0 else area


def _as_chw(image: torch.Tensor) -> torch.Tensor:
    image = torch.as_tensor(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"expected one image (C, H, W) or (H, W), got shape {tuple(image.shape)}")
    return image


# ------------------------------------------------------------------------------------------------------------
# Baselines.


def random_map(grid: int, seed: int | np.random.Generator = 0, count: int | None = None) -> np.ndarray:
    """Uniform random map(s) on a ``grid x grid`` patch grid, min-max scaled to [0, 1] like the explainers'.

    ``count=None`` gives one ``(grid, grid)`` map, else ``(count, grid, grid)``. Seeded: the same seed (or
    generator state) gives the same maps.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    values = rng.random((1 if count is None else count, grid, grid))
    maps = normalise_maps(values)
    return maps[0] if count is None else maps


def gaussian_map(grid: int, sigma: float | None = None) -> np.ndarray:
    """A centred isotropic Gaussian ``(grid, grid)`` in [0, 1] (1 at the centre cells), ``sigma`` in cells.

    The centre is the grid's centre, ``((grid - 1) / 2, (grid - 1) / 2)``: on an even grid the four middle
    cells tie. The default ``sigma`` is a quarter of the grid side.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    sigma = grid / 4 if sigma is None else float(sigma)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    centre = (grid - 1) / 2
    offsets = np.arange(grid) - centre
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    blob = np.exp(-squared / (2 * sigma**2))
    return normalise_maps(blob[None])[0]


def centre_map(size: int) -> np.ndarray:
    """A ``(size, size)`` map in [0, 1] that peaks at the image centre and falls linearly with the distance
    to it: "the tumour is in the middle", the prior to beat on slices centred on the head (a pituitary
    adenoma always is). On an even side the four middle pixels tie."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    offsets = np.arange(size) - (size - 1) / 2
    distance = np.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)
    return normalise_maps(-distance[None])[0]


def lesion_map(mask: np.ndarray, grid: int) -> np.ndarray:
    """The lesion first, then outward from it: a ``(grid, grid)`` map on the cells deletion uses.

    Cells holding lesion score ``0.5 + 0.5 * share`` (their share of lesion pixels: the most-covered cell
    first); the others score below 0.5, the nearer their nearest pixel to the lesion the higher, so deletion
    following this map removes the lesion, then the tissue around it. Without that order the cells without
    lesion would tie and go in raster order, from the top-left corner: mostly background, which costs a
    model nothing, so the reference's deletion curve flattened after the lesion whatever the model read
    around it. ``mask`` is ``(H, W)`` boolean or 0/1 and must not be empty.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty: a slice without a lesion has no lesion map")
    cells = cell_index((grid, grid), *mask.shape).reshape(-1)
    lesion_pixels = np.bincount(cells, weights=mask.reshape(-1), minlength=grid * grid)
    share = lesion_pixels / np.bincount(cells, minlength=grid * grid)
    distance = ndimage.distance_transform_edt(~mask).reshape(-1)
    nearest = np.full(grid * grid, np.inf)
    np.minimum.at(nearest, cells, distance)
    # In (0, 1]; cells equally near the lesion tie and keep raster order.
    closeness = 1.0 - nearest / (nearest.max() + 1.0)
    return np.where(share > 0, 0.5 + 0.5 * share, 0.5 * closeness).reshape(grid, grid)


# ------------------------------------------------------------------------------------------------------------
# Comparing two methods on the same images.


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """Mean of the paired differences ``a - b`` and its percentile bootstrap interval (images resampled)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two non-empty 1-D arrays of one shape, got {a.shape} and {b.shape}")
    difference = a - b
    rng = np.random.default_rng(seed)
    means = difference[rng.integers(0, difference.size, size=(resamples, difference.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean_difference": float(difference.mean()), "ci_low": float(low), "ci_high": float(high)}


__all__ = [
    "ROAD_NEIGHBOURS",
    "ROAD_NOISE",
    "SUBSTRATES",
    "cell_index",
    "deletion_auc",
    "deletion_curve",
    "deletion_curves",
    "deletion_inputs",
    "deletion_order",
    "DEFAULT_TOLERANCE_PX",
    "TOLERANCE_SIDE_PX",
    "centre_map",
    "gaussian_map",
    "lesion_hit",
    "lesion_map",
    "map_on_image",
    "make_substrate",
    "max_point",
    "noisy_linear_imputation",
    "paired_bootstrap",
    "pointing_game_hit",
    "random_map",
    "removed_counts",
    "scaled_tolerance",
]
