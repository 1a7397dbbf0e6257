"""Per-pixel loss weights: Cosmic-CoNN's median weighting, ignore masks and the alpha floor.

(Not to be confused with :mod:`kercr.weights`, the shipped model.)

Cosmic-CoNN (Xu et al. 2023, arXiv:2106.14922) weights the loss by a map made from the median of
three or more aligned consecutive exposures: the median frame holds the stars and galaxies but no
CRs, so up-weighting its bright pixels makes the network pay attention exactly where CRs are
hardest to tell from astronomical sources. Recipe implemented here:

1. median frame of the aligned exposures, sky-subtracted (sigma-clipped median) and divided by its
   robust noise (MAD);
2. clipped to ``[1, 5]`` robust sigma, then shifted so the sky (<= 1 sigma) maps to 0;
3. smoothed with a 5 x 5 Gaussian of sigma 2 px;
4. divided by its maximum (-> ``[0, 1]``), then bounded below by ``alpha`` so sky pixels keep
   weight ``alpha``.

The returned weights go to the loss as ``sample_weight``; ignored pixels get weight 0.
:func:`alpha_floor` raises the counted weights to Cosmic-CoNN's rising floor during training.
"""

from __future__ import annotations

import logging
import numbers

import numpy as np
from scipy import ndimage

from kercr.data.cleaning import dilate_mask
from kercr.data.errors import KercrDataError
from kercr.data.normalization import NormalizationConfig, robust_sky_noise

__all__ = ["median_weight_map", "apply_ignore_mask", "alpha_floor", "weigh_rim", "check_rim_weight"]

logger = logging.getLogger(__name__)


def median_weight_map(frames, *, alpha=0.1, mask=None, clip=(1.0, 5.0), smooth_sigma=2.0) -> np.ndarray:
    """Cosmic-CoNN median weight map from aligned consecutive exposures.

    Parameters
    ----------
    frames : sequence of array_like, each (ny, nx), or array (n, ny, nx)
        At least 3 aligned exposures in the same units (ADU or e-); not modified. NaN is ignored.
    alpha : float
        Lower bound of the weights, in ``[0, 1]`` (the weight of plain sky).
    mask : array_like of bool, shape (ny, nx), optional
        Pixels excluded from the sky/noise statistics.
    clip : tuple of float
        Clipping range in robust sigma.
    smooth_sigma : float
        Sigma of the Gaussian smoothing in pixels (the kernel is 5 x 5 for sigma 2).

    Returns
    -------
    numpy.ndarray, shape (ny, nx), float32
        Weights in ``[alpha, 1]``.
    """
    stack = np.asarray(frames, dtype=np.float32)
    if stack.ndim != 3 or stack.shape[0] < 3:
        raise KercrDataError(
            f"frames have shape {stack.shape}; pass at least 3 aligned exposures of one 2-D shape "
            "(n >= 3, ny, nx) so their median rejects the CRs."
        )
    if not 0.0 <= alpha <= 1.0:
        raise KercrDataError(f"alpha={alpha} must be in [0, 1].")
    lo, hi = clip
    if not 0 <= lo < hi:
        raise KercrDataError(f"clip={clip} must satisfy 0 <= low < high.")
    median = np.nanmedian(stack, axis=0)
    sky, noise, _ = robust_sky_noise(median, mask=mask, config=NormalizationConfig())
    sig = np.nan_to_num((median - sky) / noise, nan=0.0)
    w = np.clip(sig, lo, hi) - lo
    # truncate=1.0 with sigma=2 gives a radius-2 (5 x 5) kernel, as in Cosmic-CoNN.
    w = ndimage.gaussian_filter(w, sigma=smooth_sigma, truncate=2.0 / smooth_sigma, mode="nearest")
    peak = float(w.max())
    if peak > 0:
        w /= peak
    return np.maximum(w, alpha).astype(np.float32)


def apply_ignore_mask(weights, ignore_mask) -> np.ndarray:
    """Return a float32 copy of ``weights`` with 0 on ignored pixels (saturated, bad, NaN)."""
    w = np.array(weights, dtype=np.float32, copy=True)
    ignore = np.asarray(ignore_mask, dtype=bool)
    if ignore.shape != w.shape:
        raise KercrDataError(f"ignore mask shape {ignore.shape} differs from weights shape {w.shape}.")
    w[ignore] = 0.0
    return w


def alpha_floor(weights, alpha) -> np.ndarray:
    """Cosmic-CoNN's alpha schedule: a float32 copy of ``weights`` raised to at least ``alpha``
    where they count (> 0); ignored pixels (weight 0) stay 0."""
    w = np.asarray(weights, dtype=np.float32)
    return np.where(w > 0, np.maximum(w, np.float32(alpha)), np.float32(0.0)).astype(np.float32)


def weigh_rim(weights, cr_mask, factor) -> np.ndarray:
    """A float32 copy of ``weights`` multiplied by ``factor`` on the rim of the CRs: the non-CR
    pixels that touch a CR pixel (8-connected) and count (weight > 0).

    Issue 22's "fat masks": a network trained with weight 1 there flags about one pixel too many
    around every CR (most of its false positives at 0.01 % FPR on real frames are that rim).
    ``factor`` > 1 makes each such false positive cost more; 1 returns the weights unchanged.
    """
    factor = check_rim_weight(factor)
    w = np.array(weights, dtype=np.float32, copy=True)
    if factor == 1:
        return w
    cr = np.asarray(cr_mask) > 0
    if cr.shape != w.shape:
        raise KercrDataError(f"CR mask shape {cr.shape} differs from weights shape {w.shape}.")
    rim = dilate_mask(cr) & ~cr & (w > 0)
    w[rim] *= np.float32(factor)
    return w


def check_rim_weight(factor) -> float:
    """``factor`` as a float if it is a valid rim weight (a positive finite number), else
    :class:`~kercr.data.errors.KercrDataError` naming the fix."""
    if not (isinstance(factor, numbers.Real) and not isinstance(factor, (bool, np.bool_))
            and 0 < factor < float("inf")):
        raise KercrDataError(f"rim_weight={factor!r} must be a positive number (e.g. 4: a false positive touching "
                             "a CR costs four times another), or 1 for no change.")
    return float(factor)
