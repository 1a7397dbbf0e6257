"""Robust statistics of pixel samples and pixel blocks (numpy only): the arithmetic under
:mod:`kercr.data.normalization`.

Samples: a regular-grid subsample of a frame, differences of pixels :data:`DIFF_LAG` apart, and
their sigma-clipped median and MAD (:func:`clipped_center_noise`). Blocks: a frame cut into
square blocks, NaN-aware medians and 3-sigma-clipped standard deviations per block, and the
smoothing and bilinear upsampling of a grid of block values back to pixels.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["DIFF_LAG", "MAD_TO_SIGMA", "TRUNCATED_STD_3SIGMA", "clipped_block_std", "clipped_center_noise",
           "cut_blocks", "diff_sample", "fill_and_smooth", "grid_rows", "median_last", "odd_step", "subsample",
           "upsample_bilinear"]

#: 1 / (the MAD of a unit Gaussian): the MAD times this is the standard deviation.
MAD_TO_SIGMA = 1.4826
DIFF_LAG = 2  # pixels between the two pixels of a difference ("diff2")
#: Standard deviation of a unit Gaussian truncated at +-3 sigma (the clipped std is divided by it).
TRUNCATED_STD_3SIGMA = 0.986583


def subsample(image: np.ndarray, mask, sample_size: int) -> np.ndarray:
    """The finite, unmasked pixels of a regular grid of about ``sample_size`` pixels (float64, 1-D)."""
    ny, nx = image.shape
    step = odd_step(max(1, int(np.sqrt(ny * nx / sample_size))))
    values = image[::step, ::step]
    good = np.isfinite(values)
    if mask is not None:
        good &= ~mask[::step, ::step]
    return values[good].astype(np.float64)


def odd_step(step: int) -> int:
    """``step``, made odd (``step + 1``) when it is even and above 1."""
    # An odd step avoids locking onto every second column of a two-amplifier pattern.
    return step + 1 if step > 1 and step % 2 == 0 else step


def diff_sample(image: np.ndarray, mask, sample_size: int, axis: int) -> np.ndarray:
    """Differences ``x[i + DIFF_LAG] - x[i]`` along ``axis`` in every ``step``-th line (float64)."""
    if axis == 0:
        image = image.T
        mask = None if mask is None else mask.T
    ny, nx = image.shape
    pairs = max(nx - DIFF_LAG, 0)
    step = odd_step(max(1, int(ny * pairs / sample_size))) if pairs else 1
    rows = image[::step].astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, dropped below
        d = rows[:, DIFF_LAG:] - rows[:, :-DIFF_LAG]
    good = np.isfinite(d)
    if mask is not None:
        m = mask[::step]
        good &= ~(m[:, DIFF_LAG:] | m[:, :-DIFF_LAG])
    return d[good]


def clipped_center_noise(values: np.ndarray, *, sigma_clip: float, n_iter: int) -> tuple[float, float, np.ndarray]:
    """Median and 1.4826 x MAD of a 1-D sample, clipped up to ``n_iter`` times at ``sigma_clip`` sigma
    (std if the MAD is 0); the kept values."""
    center = float(np.median(values))
    noise = MAD_TO_SIGMA * float(np.median(np.abs(values - center)))
    for _ in range(n_iter):
        if noise <= 0:
            break
        keep = np.abs(values - center) < sigma_clip * noise
        if keep.all():
            break
        values = values[keep]
        center = float(np.median(values))
        noise = MAD_TO_SIGMA * float(np.median(np.abs(values - center)))
    if not noise > 0:
        # Quantized or constant images have MAD 0; fall back to the standard deviation.
        noise = float(np.std(values))
    return center, noise, values


def cut_blocks(a: np.ndarray, bh: int, bw: int, by: int, bx: int) -> np.ndarray:
    """``a`` (ny, nx) cut into (by, bx) blocks of ``bh x bw`` (NaN-padded or cropped), as
    (by, bx, bh * bw)."""
    ny, nx = a.shape
    if (ny, nx) != (by * bh, bx * bw):
        out = np.full((by * bh, bx * bw), np.nan, dtype=a.dtype)
        out[: min(ny, by * bh), : min(nx, bx * bw)] = a[: by * bh, : bx * bw]
        a = out
    return a.reshape(by, bh, bx, bw).transpose(0, 2, 1, 3).reshape(by, bx, bh * bw)


def median_last(x: np.ndarray) -> np.ndarray:
    """Median along the last axis ignoring NaN (NaN where a row is all NaN); numpy's fast
    median on the rows without NaN, ``nanmedian`` only on the others."""
    flat = x.reshape(-1, x.shape[-1])
    has_nan = np.isnan(flat).any(-1)
    out = np.empty(flat.shape[0], dtype=np.float64)
    if (~has_nan).any():
        out[~has_nan] = np.median(flat[~has_nan], axis=-1)
    if has_nan.any():
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
            out[has_nan] = np.nanmedian(flat[has_nan], axis=-1)
    return out.reshape(x.shape[:-1])


def clipped_block_std(d: np.ndarray) -> np.ndarray:
    """3-sigma-clipped standard deviation along the last axis (two iterations from the MAD),
    ignoring NaN; NaN where fewer than 2 values are left. ``d`` float32, arithmetic in float32
    (sums of a few hundred values; float32 keeps the full-frame pass fast).

    The clipped std is divided by the std of a unit Gaussian truncated at 3 sigma, so it is
    unbiased on Gaussian noise; unlike the MAD it is not quantized on integer-valued data.
    """
    center = median_last(d)[..., None].astype(np.float32)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks (no degrees of freedom)
        dev = np.abs(d - center)
        sigma = np.float32(MAD_TO_SIGMA) * median_last(dev)[..., None].astype(np.float32)
        if not (sigma > 0).all():  # integer data with a MAD of 0: start from the std
            sigma = np.where(sigma > 0, sigma, np.nanstd(d, axis=-1, keepdims=True)).astype(np.float32)
        for _ in range(2):
            z = d - center
            keep = np.abs(z) < np.float32(3.0) * sigma  # False on NaN
            k = keep.sum(-1, keepdims=True, dtype=np.float32)
            z[~keep] = 0.0
            mean = z.sum(-1, keepdims=True) / k
            var = np.einsum("...i,...i->...", z, z)[..., None] / k - mean * mean
            sigma = np.where(k > 1, np.sqrt(np.maximum(var, 0)) / np.float32(TRUNCATED_STD_3SIGMA), np.nan)
            sigma = sigma.astype(np.float32)
            center = center + np.where(k > 1, mean, np.float32(0.0))
    return sigma[..., 0].astype(np.float64)


def fill_and_smooth(grid: np.ndarray, fallback: float, *, edges: str = "reflect") -> np.ndarray:
    """Blocks without a value (NaN) take the median of their finite 3 x 3 neighbours (else
    ``fallback``), then every block becomes the median of its 3 x 3 neighbourhood (edges
    ``"reflect"``ed, or ``"nearest"``: the edge block repeated; always the latter when the grid
    is one block thick), so one odd block (a saturated star, a dense CR shower) cannot stand out."""
    padded = np.pad(grid, 1, mode="reflect" if edges == "reflect" and min(grid.shape) > 1 else "edge")
    by, bx = grid.shape
    stack = np.stack([padded[i:i + by, j:j + bx] for i in range(3) for j in range(3)])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
        smoothed = np.nanmedian(stack, axis=0)
    return np.where(np.isfinite(smoothed), smoothed, fallback)


def upsample_bilinear(grid: np.ndarray, shape, block: int, rows: slice | None = None) -> np.ndarray:
    """Bilinear interpolation of a block grid to pixels (float32), block values at block
    centres ``(k + 0.5) * block - 0.5``, constant beyond the outer centres. Separable: along
    the rows on the block grid (float64), then along the columns at full size (float32).

    ``rows`` (a slice of pixel rows, step 1) returns only those rows of the full result, bit for
    bit the same values (each row is interpolated on its own)."""
    out = grid.astype(np.float64)
    for axis, n in enumerate(shape):
        nb = grid.shape[axis]
        lo, hi, frac = _interpolation_weights(n, nb, block)
        if axis == 0 and rows is not None:
            lo, hi, frac = lo[rows], hi[rows], frac[rows]
        frac = frac.reshape((-1, 1) if axis == 0 else (1, -1))
        if axis == 1:
            out, frac = out.astype(np.float32), frac.astype(np.float32)
        a, b = np.take(out, lo, axis=axis), np.take(out, hi, axis=axis)
        b -= a
        b *= frac
        a += b
        out = a
    return out.astype(np.float32, copy=False)


def _interpolation_weights(n: int, nb: int, block: int):
    """Per pixel of one axis (``n`` pixels, ``nb`` blocks): the lower and upper block index and the
    float64 weight of the upper one (:func:`upsample_bilinear`)."""
    pos = (np.arange(n, dtype=np.float64) + 0.5) / block - 0.5
    pos = np.clip(pos, 0.0, nb - 1.0)
    lo = np.minimum(np.floor(pos).astype(np.int64), max(nb - 2, 0))
    hi = np.minimum(lo + 1, nb - 1)
    return lo, hi, pos - lo


def grid_rows(n: int, nb: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The two block rows each of ``n`` pixel rows interpolates between (:func:`upsample_bilinear`
    with ``nb`` block rows): ``(lo, hi)``, int arrays of length ``n``."""
    lo, hi, _ = _interpolation_weights(n, nb, block)
    return lo, hi
