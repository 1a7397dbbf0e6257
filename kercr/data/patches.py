"""Cut frames into training patches and split exposures into train/validation sets.

Patches of one exposure are strongly correlated (same PSF, sky, CR population), so the
train/validation split is made by exposure, never by patch: :func:`split_exposures`.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from kercr.data.errors import KercrDataError

__all__ = ["default_patch_count", "patch_positions", "extract_patches", "make_patches", "split_exposures"]

logger = logging.getLogger(__name__)

DECAM_CCD_AREA_PX = 4096 * 2048


def default_patch_count(shape, *, per_ccd=128) -> int:
    """Patches for a frame of ``shape``: ``per_ccd`` per 2048 x 4096 pixels, at least 1."""
    return max(1, int(round(per_ccd * shape[0] * shape[1] / DECAM_CCD_AREA_PX)))


def _grid_starts(n, p):
    starts = list(range(0, n - p + 1, p))
    if starts[-1] + p < n:  # one more tile flush with the edge so no border is left out
        starts.append(n - p)
    return starts


def patch_positions(shape, *, patch_size=256, n_patches=None, mode="random", seed=0) -> np.ndarray:
    """Top-left corners of patches.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the frame.
    patch_size : int
        Side of the square patches in pixels.
    n_patches : int, optional
        Number of patches (default :func:`default_patch_count`). In ``"grid"`` mode, a seeded
        random subset of the grid when smaller than the grid.
    mode : {"random", "grid"}
        Uniform random corners, or non-overlapping tiles covering the frame (the last row/column of
        tiles is flush with the edge).
    seed : int or numpy.random.Generator

    Returns
    -------
    numpy.ndarray, shape (n, 2), int64
        ``(y0, x0)`` of each patch.
    """
    if len(shape) != 2:
        raise KercrDataError(f"frame shape {tuple(shape)}: pass a 2-D (ny, nx) frame.")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
        raise KercrDataError(f"patch_size={patch_size!r} must be a whole number of pixels >= 1.")
    if n_patches is not None and (isinstance(n_patches, bool) or not isinstance(n_patches, (int, np.integer))
                                  or n_patches < 0):
        raise KercrDataError(f"n_patches={n_patches!r} must be a whole number >= 0 (None: every position).")
    ny, nx = shape
    p = int(patch_size)
    if p < 1 or ny < p or nx < p:
        raise KercrDataError(f"frame shape {tuple(shape)} is smaller than patch_size={p}; use a smaller patch_size.")
    rng = np.random.default_rng(seed)
    if mode == "random":
        n = default_patch_count(shape) if n_patches is None else int(n_patches)
        return np.stack([rng.integers(0, ny - p + 1, n), rng.integers(0, nx - p + 1, n)], axis=1).astype(np.int64)
    if mode == "grid":
        yy, xx = np.meshgrid(_grid_starts(ny, p), _grid_starts(nx, p), indexing="ij")
        pos = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)
        if n_patches is not None and n_patches < len(pos):
            pos = pos[np.sort(rng.choice(len(pos), size=int(n_patches), replace=False))]
        return pos
    raise KercrDataError(f"mode={mode!r}; use 'random' or 'grid'.")


def extract_patches(array, positions, *, patch_size=256) -> np.ndarray:
    """Copy patches out of a 2-D array: returns (n, patch_size, patch_size), same dtype."""
    a = np.asarray(array)
    if a.ndim != 2:
        raise KercrDataError(f"array has shape {a.shape}; pass a 2-D (ny, nx) array.")
    p = int(patch_size)
    out = np.empty((len(positions), p, p), dtype=a.dtype)
    for i, (y0, x0) in enumerate(positions):
        out[i] = a[y0:y0 + p, x0:x0 + p]
    return out


def make_patches(*arrays, patch_size=256, n_patches=None, mode="random", seed=0):
    """Cut the same patches out of several aligned arrays (image, mask, weights, ...).

    Returns
    -------
    patches : list of numpy.ndarray
        One (n, patch_size, patch_size) array per input, in input order.
    positions : numpy.ndarray, shape (n, 2)
        ``(y0, x0)`` of each patch.
    """
    if not arrays:
        raise KercrDataError("pass at least one array.")
    shape = np.shape(arrays[0])
    for a in arrays[1:]:
        if np.shape(a) != shape:
            raise KercrDataError(f"arrays have different shapes {shape} and {np.shape(a)}; pass aligned arrays.")
    pos = patch_positions(shape, patch_size=patch_size, n_patches=n_patches, mode=mode, seed=seed)
    return [extract_patches(a, pos, patch_size=patch_size) for a in arrays], pos


def split_exposures(exposure_ids, *, val_fraction=0.1, seed=0):
    """Split exposure ids into train and validation sets, deterministically for a seed.

    Each id's side is decided by a hash of ``(seed, id)``, so an id keeps its side when other
    exposures are added or removed (both sides are kept non-empty); with fewer than 20 exposures an exact seeded permutation is used
    instead so small sets still get ``round(val_fraction * n)`` (at least 1) validation exposures.

    Parameters
    ----------
    exposure_ids : iterable of str or int
        Exposure identifiers (duplicates collapse).
    val_fraction : float
        Fraction in ``(0, 1)`` for validation.
    seed : int

    Returns
    -------
    train_ids, val_ids : list
        Disjoint, sorted lists whose union is the set of ids.
    """
    if not 0.0 < val_fraction < 1.0:
        raise KercrDataError(f"val_fraction={val_fraction} must be between 0 and 1.")
    ids = sorted(set(exposure_ids), key=str)
    if len(ids) < 2:
        raise KercrDataError(f"need at least 2 exposures to split, got {len(ids)}.")
    if len(ids) < 20:
        n_val = min(len(ids) - 1, max(1, int(round(val_fraction * len(ids)))))
        order = np.random.default_rng(seed).permutation(len(ids))
        val = {ids[i] for i in order[:n_val]}
    else:
        def u(i):
            h = hashlib.sha256(f"{seed}:{i}".encode()).digest()
            return int.from_bytes(h[:8], "big") / 2**64
        scores = {i: u(i) for i in ids}
        val = {i for i in ids if scores[i] < val_fraction}
        if not val:  # keep both sides non-empty
            val = {min(ids, key=scores.get)}
        if len(val) == len(ids):
            val.discard(max(ids, key=scores.get))
    train = [i for i in ids if i not in val]
    return train, sorted(val, key=str)
