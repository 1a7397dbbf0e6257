"""Cleaned images: cosmic-ray pixels replaced by a masked local estimate (numpy/scipy only).

:func:`clean_image` replaces the pixels of a CR mask (optionally dilated) by an estimate from
their *good* neighbours: finite pixels that are neither CR (after dilation) nor ignored. Every
other pixel is left as it was, NaN and ignored pixels included.

Methods (after astroscrappy's ``cleantype``; kercr's are all masked):

``"median"``
    Median of the good pixels in the window (as astroscrappy's ``"medmask"``, except that an even
    count averages the two middle values where astroscrappy takes the lower). Robust to a CR pixel
    the mask missed; the default.
``"mean"``
    Mean of the good pixels (astroscrappy's ``"meanmask"``).
``"idw"``
    Inverse-distance-weighted mean of the good pixels, weight ``1 / r`` with ``r`` the distance
    in pixels (astroscrappy's ``"idw"``): closer pixels count more, which follows gradients
    (a star's profile) better than a flat mean.

Window rule: each replaced pixel starts with a ``window`` x ``window`` square (5 x 5, as
astroscrappy) centred on it; while that square holds fewer than ``min_good`` good pixels it grows
by one pixel on each side (7 x 7, 9 x 9, ...) up to ``max_window`` x ``max_window``. If even
the largest square holds fewer than ``min_good`` good pixels, the good pixels it does hold are
used; if it holds none, the pixel gets the *fallback*: the median of the good pixels of the
nearest ``max_window`` x ``max_window`` block holding any (the level around a large hole, a
galaxy's where it lies on one), and a warning says how many pixels got it.
A cleaned image never has a NaN hole where the input had a finite value.

Speed: one pass of integral images counts the good pixels of every window size for every CR
pixel, then the pixels that share a window size are estimated together. A 4096 x 2048 frame with
1 % CR pixels takes about 0.2 s on one core, 0.5-0.6 s with ``dilate=1`` (three times the pixels;
``benchmarks/bench_cleaning.py``, BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import numbers
import sys

import numpy as np

from kercr.config import CLEAN_METHODS
from kercr.data.errors import KercrDataError
from kercr.data.masks import as_bool_mask, dilate_mask  # noqa: F401  (public here too)
from kercr.data.robust_stats import cut_blocks, median_last

__all__ = ["CLEAN_METHODS", "DEFAULT_WINDOW", "DEFAULT_MAX_WINDOW", "DEFAULT_MIN_GOOD", "as_bool_mask",
           "check_clean_method", "clean_image", "cleaning_mask", "dilate_mask", "masked_input"]

logger = logging.getLogger(__name__)

#: First window side in pixels (astroscrappy's 5 x 5).
DEFAULT_WINDOW = 5
#: Largest window side in pixels before the fallback.
DEFAULT_MAX_WINDOW = 31
#: Good pixels a window needs (a third of the 24 neighbours of a 5 x 5 window).
DEFAULT_MIN_GOOD = 8
#: Gathered values per chunk (float32: 16 MB), which bounds the memory of large windows.
_CHUNK_VALUES = 1 << 22


def check_clean_method(method, choices=CLEAN_METHODS) -> str:
    """``method`` if it is one of ``choices`` (default: this module's methods; ``kercr.detect`` adds
    ``"network"``), else a :class:`KercrDataError` listing them."""
    if not isinstance(method, str) or method not in choices:
        raise KercrDataError(f"cleaning method {method!r} does not exist; choose one of: "
                             f"{', '.join(choices)} (see kercr.data.cleaning).")
    return method


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low:
        raise KercrDataError(f"{name}={value!r}: pass an integer >= {low}.")
    return int(value)


def cleaning_mask(cr_mask, *, ignore=None, dilate: int = 0, image=None) -> np.ndarray:
    """The pixels :func:`clean_image` replaces: ``cr_mask`` dilated, minus ignored and non-finite pixels.

    Parameters
    ----------
    cr_mask : array_like of bool (or 0/1 integers), shape (ny, nx)
        True for cosmic-ray pixels.
    ignore : array_like of bool, shape (ny, nx), optional
        Pixels never replaced and never used (saturated, bad).
    dilate : int
        Grow ``cr_mask`` by this many pixels (3 x 3 square, that many times) first.
    image : array_like, shape (ny, nx), optional
        When given, its non-finite pixels are excluded too.

    Returns
    -------
    numpy.ndarray, shape (ny, nx), bool
    """
    cr = np.asarray(cr_mask)
    shape = cr.shape if image is None else np.shape(image)
    cr = as_bool_mask(cr, shape, "cr_mask")
    out = dilate_mask(cr, _check_int(dilate, "dilate", 0))
    if ignore is not None:
        out &= ~as_bool_mask(ignore, shape, "ignore")
    if image is not None:
        out &= np.isfinite(image)
    return out


def _window_offsets(half: int):
    """Row and column offsets of a (2 half + 1)^2 window, centre included, and their 1/r weights."""
    d = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    r = np.hypot(dy, dx).ravel()
    weights = np.zeros_like(r)
    np.divide(1.0, r, out=weights, where=r > 0)  # the centre is always replaced, never a source
    return dy.ravel(), dx.ravel(), weights


def _estimate(values: np.ndarray, weights: np.ndarray, method: str) -> np.ndarray:
    """Masked estimate of every row of ``values`` (n, k) float32, NaN = not good; NaN where none is."""
    good = ~np.isnan(values)
    count = good.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "median":
            ordered = np.sort(values, axis=1)  # NaN sorts last: the first ``count`` are the good values
            lo = np.take_along_axis(ordered, np.maximum(count - 1, 0)[:, None] // 2, axis=1)[:, 0]
            hi = np.take_along_axis(ordered, (count // 2)[:, None], axis=1)[:, 0]
            out = 0.5 * (lo.astype(np.float64) + hi.astype(np.float64))
        else:
            w = np.where(good, weights[None, :] if method == "idw" else 1.0, 0.0)
            out = (w * np.where(good, values, 0.0)).sum(axis=1) / w.sum(axis=1)
    out[count == 0] = np.nan
    return out


def clean_image(image, cr_mask, *, ignore=None, method: str = "median", dilate: int = 0,
                window: int = DEFAULT_WINDOW, max_window: int = DEFAULT_MAX_WINDOW,
                min_good: int = DEFAULT_MIN_GOOD, fallback: float | None = None) -> np.ndarray:
    """Replace cosmic-ray pixels by a masked local estimate from their good neighbours.

    Parameters
    ----------
    image : array_like, numpy.ma.MaskedArray or astropy.nddata.CCDData, shape (ny, nx), real dtype
        The frame, in any units (ADU or electrons, with or without sky). Not modified. NaN/inf
        pixels are left as they are and never used; masked pixels are treated as ``ignore``.
    cr_mask : array_like of bool (or 0/1 integers), shape (ny, nx)
        True for cosmic-ray pixels (e.g. ``kercr.detect(image).mask``).
    ignore : array_like of bool (or 0/1 integers), shape (ny, nx), optional
        Pixels neither replaced nor used as neighbours (saturated stars, bleed trails, bad
        columns; ``DetectionResult.ignored``). They keep their values, even under ``cr_mask``.
    method : {"median", "mean", "idw"}
        Estimator over the good pixels of the window (module docstring): masked median, masked
        mean, or inverse-distance (1 / r) weighted mean.
    dilate : int
        Grow ``cr_mask`` by this many pixels (3 x 3 square, that many times) before cleaning, to
        catch the faint rims of CR hits. The grown pixels are replaced and not used as neighbours.
    window : int
        First window side in pixels (odd, >= 3; default 5, as astroscrappy).
    max_window : int
        Largest window side in pixels (odd, >= ``window``; default 31).
    min_good : int
        Good pixels a window needs before it stops growing (default 8).
    fallback : float, optional
        Value of a pixel with no good pixel within ``max_window``, in the image's units; default
        the median of the good pixels of the nearest ``max_window``-sized block that has any.

    Returns
    -------
    numpy.ndarray, shape (ny, nx), float32; or astropy.nddata.CCDData
        A new array: ``image`` as float32, with the replaced pixels (:func:`cleaning_mask`)
        set to their estimates; every other pixel is ``image.astype(float32)`` bit for bit. For a
        ``CCDData``, a copy of it holding that array, with its mask OR the replaced pixels (its
        unit, header, WCS and uncertainty kept). The mask of a ``CCDData`` or of a numpy masked
        array counts as ``ignore``.

    Raises
    ------
    KercrDataError
        Image not 2-D or not real; a mask of another shape, or not boolean / 0-1 integers; an
        unknown method; bad window sizes; a frame with pixels to replace and no good pixel at all
        (and no ``fallback``).
    """
    method = check_clean_method(method)
    ccd = image if _is_ccddata(image) else None
    own_mask = getattr(image, "mask", None)  # a CCDData's or numpy masked array's flagged pixels
    img = np.asarray(image.data if ccd is not None else np.ma.getdata(image))
    window, max_window, min_good = _check_arguments(img, window=window, max_window=max_window, min_good=min_good,
                                                    fallback=fallback)
    if ignore is not None:
        ignore = as_bool_mask(ignore, img.shape, "ignore")
    if own_mask is not None and own_mask is not np.ma.nomask:
        flagged = as_bool_mask(np.broadcast_to(own_mask, img.shape), img.shape, "the image's own mask")
        ignore = flagged if ignore is None else ignore | flagged
    replace = cleaning_mask(cr_mask, ignore=ignore, dilate=dilate, image=img)
    out = _clean(img, replace, ignore, method=method, window=window, max_window=max_window, min_good=min_good,
                 fallback=fallback)
    if ccd is None:
        return out
    cleaned = ccd.copy()  # CCDData in, CCDData out (as ccdproc's cosmicray_lacosmic)
    cleaned.data = out
    cleaned.mask = replace if ccd.mask is None else np.asarray(ccd.mask, dtype=bool) | replace
    return cleaned


def _is_ccddata(image) -> bool:
    nddata = sys.modules.get("astropy.nddata")  # a CCDData exists only once astropy.nddata is imported
    return nddata is not None and isinstance(image, nddata.CCDData)


def _clean(img, replace, ignore, *, method, window, max_window, min_good, fallback) -> np.ndarray:
    out = img.astype(np.float32)  # always a copy: the input is never modified
    ys, xs = np.nonzero(replace)
    if ys.size == 0:
        return out

    good = np.isfinite(out) & ~replace
    if ignore is not None:
        good &= ~ignore
    half_max = max_window // 2
    padded = np.full((img.shape[0] + 2 * half_max, img.shape[1] + 2 * half_max), np.nan, np.float32)
    inner = padded[half_max:-half_max, half_max:-half_max]  # max_window >= 3: half_max >= 1
    np.copyto(inner, out)
    inner[~good] = np.nan
    py, px = ys + half_max, xs + half_max
    half = _half_widths(padded, py, px, window=window, max_window=max_window, min_good=min_good)
    estimate = _window_estimates(padded, py, px, half, method)
    _fill_empty(estimate, out, good, ys, xs, fallback=fallback, max_window=max_window)
    out[ys, xs] = estimate.astype(np.float32)
    return out


def _check_arguments(img, *, window, max_window, min_good, fallback) -> tuple[int, int, int]:
    """KercrDataError for an image that is not 2-D and real, or bad window sizes or fallback; the
    window sizes and ``min_good`` as ints."""
    if img.ndim != 2:
        raise KercrDataError(f"image has shape {img.shape}; clean_image needs a 2-D (ny, nx) image.")
    if not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)) or img.dtype == bool:
        raise KercrDataError(f"image has dtype {img.dtype}; pass real-valued pixels.")
    window = _check_int(window, "window", 3)
    max_window = _check_int(max_window, "max_window", window)
    min_good = _check_int(min_good, "min_good", 1)
    if window % 2 == 0 or max_window % 2 == 0:
        raise KercrDataError(f"window={window} and max_window={max_window} must be odd (a square centred on the "
                             "pixel), e.g. 5 and 31.")
    if fallback is not None and (isinstance(fallback, (bool, np.bool_)) or not isinstance(fallback, numbers.Real)
                                 or not np.isfinite(fallback)):
        raise KercrDataError(f"fallback={fallback!r} must be a finite number (image units) or None.")
    return window, max_window, min_good


def _fill_empty(estimate, out, good, ys, xs, *, fallback, max_window) -> None:
    """Set the estimates with no good pixel in their window (NaN; pixels ``ys, xs``) to ``fallback``,
    by default the median of the good pixels in the nearest ``max_window``-sized block that has
    any (:func:`nearest_block_medians`: local, so a large hole in a galaxy gets the galaxy's level,
    not the sky's), in place."""
    empty = np.isnan(estimate)
    if empty.any():
        if fallback is None:
            if not good.any():
                raise KercrDataError(f"every pixel of the image is a CR, ignored or non-finite: {int(empty.sum())} "
                                     "CR pixels have nothing to be estimated from. Check the masks, or pass "
                                     "fallback=VALUE (image units).")
            medians = nearest_block_medians(out, good, max_window)
            estimate[empty] = medians[ys[empty] // max_window, xs[empty] // max_window]
            said = f"the median of the nearest {max_window} x {max_window} block with good pixels"
        else:
            estimate[empty] = fallback
            said = f"fallback={fallback:.6g}"
        logger.warning("%d CR pixels have no good pixel within %d x %d; set to %s. Pass a larger max_window to "
                       "estimate them from their own windows.", int(empty.sum()), max_window, max_window, said)


def nearest_block_medians(image, good, block: int, *, min_good: int = 1) -> np.ndarray:
    """``(ceil(ny / block), ceil(nx / block))`` float64: the median of each ``block`` x ``block``
    block's ``good`` pixels, or, in a block with fewer than ``min_good`` of them, that of the
    nearest block with enough (local however large the hole; image units). ``good`` has at least one."""
    from scipy import ndimage  # heavy: only for holes wider than the largest window

    ny, nx = image.shape
    tiles = cut_blocks(np.where(good, image, np.nan).astype(np.float32), block, block, -(-ny // block),
                       -(-nx // block))
    medians = median_last(tiles)  # NaN in blocks without a good pixel
    missing = np.isfinite(tiles).sum(axis=-1) < max(1, min_good)
    if missing.all():  # no block has enough: those with any
        missing = np.isnan(medians)
    if missing.any():
        nearest = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
        medians = medians[tuple(nearest)]
    return medians


def _half_widths(padded, py, px, *, window, max_window, min_good) -> np.ndarray:
    """Half-width of the smallest window (``window`` up to ``max_window``) around each pixel
    ``(py, px)`` of ``padded`` (NaN = not good) that holds ``min_good`` good pixels; the largest
    where none does, -1 where even that holds no good pixel. int64, one per pixel."""
    half_max = max_window // 2
    # Integral image of the good pixels: the count in any square around any pixel in four look-ups.
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1), np.int32)
    np.cumsum(np.cumsum(~np.isnan(padded), axis=0, dtype=np.int32), axis=1, out=integral[1:, 1:])
    half = np.full(py.size, -1, np.int64)  # chosen half-width; -1 = none reaches min_good yet
    def count(rows, h):  # good pixels in the square of half-width h around each of the pixels ``rows``
        y0, y1, x0, x1 = py[rows] - h, py[rows] + h + 1, px[rows] - h, px[rows] + h + 1
        return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]

    for h in range(window // 2, half_max + 1):
        todo = np.nonzero(half < 0)[0]
        if todo.size == 0:
            break
        half[todo[count(todo, h) >= min_good]] = h
    short = np.nonzero(half < 0)[0]
    if short.size:
        logger.debug("%d CR pixels have fewer than %d good pixels within %d x %d; using those there are",
                     short.size, min_good, max_window, max_window)
        half[short] = half_max
        half[short[count(short, half_max) == 0]] = -1  # nothing to estimate from: no window to gather and sort
    return half


def _window_estimates(padded, py, px, half, method) -> np.ndarray:
    """The ``method`` estimate of each pixel ``(py, px)`` over the good pixels of its window of
    half-width ``half`` in ``padded`` (float64; NaN where the window holds no good pixel)."""
    estimate = np.full(py.size, np.nan)
    for h in np.unique(half[half >= 0]):
        dy, dx, weights = _window_offsets(int(h))
        members = np.nonzero(half == h)[0]
        step = max(1, _CHUNK_VALUES // dy.size)
        for start in range(0, members.size, step):
            rows = members[start:start + step]
            values = padded[py[rows, None] + dy[None, :], px[rows, None] + dx[None, :]]
            estimate[rows] = _estimate(values, weights, method)
    return estimate


def masked_input(normalized, mask) -> np.ndarray:
    """The inpainting network's input ``(..., H, W, 2)`` float32: ``normalized`` with the ``mask``
    pixels set to 0 (the sky), then the mask as 0/1 (:func:`kercr.models.build_inpainter`)."""
    mask = np.asarray(mask, bool)
    return np.stack([np.where(mask, np.float32(0), np.asarray(normalized, np.float32)), mask.astype(np.float32)],
                    axis=-1)
