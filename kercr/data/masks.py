"""Boolean masks (True = flagged): the one check that turns what a user passes into a mask, and the
3 x 3 dilation every mask grows by (numpy and scipy only)."""

from __future__ import annotations

import numbers

import numpy as np

from kercr.data.errors import KercrDataError

__all__ = ["as_bool_mask", "dilate_mask"]


def as_bool_mask(mask, shape, what: str) -> np.ndarray:
    """A boolean (ny, nx) mask from a bool or 0/1 integer array; clear errors for anything else."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise KercrDataError(f"{what} has shape {mask.shape} but the image {tuple(shape)}; pass a mask of "
                             "this image (True = flagged).")
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.integer):
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise KercrDataError(f"{what} is an integer array with values outside 0 and 1 ({mask.min()} to "
                                 f"{mask.max()}); pass a boolean mask, e.g. mask != 0 or a bit test.")
        return mask.astype(bool)
    raise KercrDataError(f"{what} has dtype {mask.dtype}; pass a boolean mask (True = flagged), e.g. "
                         "result.mask, not the probability map (probability >= threshold gives a mask).")


def dilate_mask(mask, iterations: int = 1) -> np.ndarray:
    """Binary dilation with a 3 x 3 square structuring element, ``iterations`` times (0: a copy).

    ``mask`` is a 2-D bool or 0/1 integer array (:func:`as_bool_mask`); ``iterations`` in pixels."""
    if np.ndim(mask) != 2:
        raise KercrDataError(f"mask has shape {np.shape(mask)}; pass a 2-D (ny, nx) mask.")
    mask = as_bool_mask(mask, np.shape(mask), "mask")
    if isinstance(iterations, (bool, np.bool_)) or not isinstance(iterations, numbers.Integral) or iterations < 0:
        raise ValueError(f"dilation {iterations!r} must be a whole number of pixels >= 0.")
    if iterations == 0:
        return mask.copy()
    from scipy import ndimage

    return ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=int(iterations))
