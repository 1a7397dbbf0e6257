"""Real cosmic-ray footprints: read a footprint table, harvest footprints from darks, inject them.

A footprint table (the LSST DESC imSim format, e.g. ``cosmic_rays_itl_2017.fits``) is a
``COSMIC_RAYS`` binary table with one row per serial span: ``fp_id`` (CR id), ``x0``, ``y0`` (span
start, pixels) and ``pixel_values`` (variable-length, electrons along the row). Each CR becomes a
small 2-D stamp in electrons, zero outside the footprint.

Footprints harvested from another sensor keep that sensor's geometry (the ITL table comes from
100 um thick sensors with 10 um pixels, so its tracks are shorter than DECam's at the same angle).
"""

from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage

from kercr.data.cosmic_rays import inject_cosmic_rays
from kercr.data.errors import FITSFileNotFoundError, FITSFormatError, KercrDataError
from kercr.data.masks import as_bool_mask

__all__ = ["read_footprint_table", "extract_footprints", "inject_footprints", "random_orientation"]

logger = logging.getLogger(__name__)


def read_footprint_table(path, *, extname="COSMIC_RAYS") -> list[np.ndarray]:
    """Read a CR footprint table into stamps.

    Parameters
    ----------
    path : str or os.PathLike
        FITS file with a binary table ``extname`` (columns fp_id, x0, y0, pixel_values).
    extname : str
        Name of the table extension.

    Returns
    -------
    list of numpy.ndarray
        One float32 stamp (h, w) in electrons per CR, in ``fp_id`` order; 0 outside the footprint.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FITSFileNotFoundError(f"{p}: footprint table not found. Check the path.")
    try:
        with fits.open(p) as hdul:
            table = hdul[extname].data
            fp_id = np.asarray(table["fp_id"]).astype(np.int64)
            x0 = np.asarray(table["x0"]).astype(np.int64)
            y0 = np.asarray(table["y0"]).astype(np.int64)
            values = [np.asarray(v, dtype=np.float32) for v in table["pixel_values"]]
    except (OSError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise FITSFormatError(
            f"{p}: not a CR footprint table ({exc}). Pass a FITS file with a binary table "
            f"{extname!r} holding columns fp_id, x0, y0, pixel_values."
        ) from exc
    if fp_id.size == 0:
        raise FITSFormatError(f"{p}: the footprint table {extname!r} is empty; harvest footprints from dark frames "
                              "first (kercr.data.extract_footprints).")
    order = np.argsort(fp_id, kind="stable")
    bounds = np.flatnonzero(np.diff(fp_id[order])) + 1
    stamps = []
    for rows in np.split(order, bounds):
        xs0, ys0 = x0[rows], y0[rows]
        ends = xs0 + np.array([values[r].size for r in rows])
        xmin, ymin = xs0.min(), ys0.min()
        stamp = np.zeros((ys0.max() - ymin + 1, ends.max() - xmin), dtype=np.float32)
        for r, xs, ys in zip(rows, xs0, ys0):
            v = values[r]
            stamp[ys - ymin, xs - xmin: xs - xmin + v.size] += v
        stamps.append(stamp)
    logger.info("read %d CR footprints from %s", len(stamps), p)
    return stamps


def extract_footprints(dark, *, gain=1.0, detect_sigma=5.0, grow_sigma=2.5, min_pixels=1, max_pixels=5000,
                       bad_mask=None) -> list[np.ndarray]:
    """Harvest CR footprints from a dark frame (as deepCR and imSim do).

    The dark is median-subtracted, its noise measured with the MAD; footprints are connected
    (8-connected) regions above ``grow_sigma`` that contain a pixel above ``detect_sigma``.

    Parameters
    ----------
    dark : array_like, shape (ny, nx)
        Bias-subtracted dark exposure in ADU (or electrons with ``gain=1``); not modified.
    gain : float
        e-/ADU, to return stamps in electrons.
    detect_sigma, grow_sigma : float
        Seed and growth thresholds in robust sigma.
    min_pixels, max_pixels : int
        Footprints outside this size range are dropped.
    bad_mask : array_like of bool, optional
        Known hot pixels / bad columns; footprints touching them are dropped.

    Returns
    -------
    list of numpy.ndarray
        Float32 stamps (h, w) in electrons above the median, zero outside each footprint.
    """
    dark = np.asarray(dark, dtype=np.float64)
    if dark.ndim != 2:
        raise KercrDataError(f"dark has shape {dark.shape}; pass a 2-D (ny, nx) dark frame.")
    if not detect_sigma >= grow_sigma > 0:
        raise KercrDataError("need detect_sigma >= grow_sigma > 0.")
    if isinstance(gain, (bool, np.bool_)) or not isinstance(gain, numbers.Real) or not 0 < gain < np.inf:
        raise KercrDataError(f"gain={gain!r} must be a positive number of e-/ADU (1 for a dark in electrons).")
    if bad_mask is not None:
        bad_mask = as_bool_mask(bad_mask, dark.shape, "bad_mask")
    finite = np.isfinite(dark)
    if not finite.any():
        raise KercrDataError("the dark has no finite pixel; pass a real dark frame.")
    med = np.median(dark[finite])
    sigma = 1.4826 * np.median(np.abs(dark[finite] - med))
    if not sigma > 0:
        raise KercrDataError("the dark has zero MAD noise; pass a real (noisy) dark frame.")
    resid = np.where(finite, dark - med, 0.0)
    labels, n = ndimage.label(resid > grow_sigma * sigma, structure=np.ones((3, 3)))
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    peak = ndimage.maximum(resid, labels, idx)
    size = ndimage.sum(np.ones_like(resid), labels, idx)
    keep = (peak > detect_sigma * sigma) & (size >= min_pixels) & (size <= max_pixels)
    if bad_mask is not None:
        touched = ndimage.maximum(bad_mask.astype(float), labels, idx) > 0
        keep &= ~touched
    stamps = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if keep[i]:
            stamps.append(np.where(labels[sl] == i + 1, resid[sl] * gain, 0.0).astype(np.float32))
    logger.info("extracted %d CR footprints from a %s dark", len(stamps), dark.shape)
    return stamps


def random_orientation(stamp, rng) -> np.ndarray:
    """Return a copy of ``stamp`` with a random 90-degree rotation and random flip."""
    out = np.rot90(stamp, k=int(rng.integers(4)))
    if rng.integers(2):
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def inject_footprints(image_adu, stamps, *, n, gain, rng, saturation=None, where=None):
    """Add ``n`` randomly chosen, oriented and placed footprints to an image.

    Parameters
    ----------
    image_adu : array_like, shape (ny, nx)
        Clean image in ADU; not modified.
    stamps : sequence of numpy.ndarray
        Footprint stamps in electrons (from :func:`read_footprint_table` / :func:`extract_footprints`).
    n : int
        Number of footprints to inject.
    gain : float
        e-/ADU.
    rng : numpy.random.Generator or int
    saturation : float, optional
        Saturation in ADU (CR pixels are clipped to it).
    where : array_like of bool, shape (ny, nx), optional
        Allowed footprint centres (e.g. :func:`kercr.data.synthetic.source_map`, to put CR hits
        on stars and galaxies); None or no True pixel: anywhere, footprints may overlap the edge.

    Returns
    -------
    image : numpy.ndarray, shape (ny, nx), float32
        New image with the CRs added.
    cr_electrons : numpy.ndarray, shape (ny, nx), float32
        Injected charge in electrons.
    mask : numpy.ndarray, shape (ny, nx), bool
        Truth mask (injected charge > 0). Footprints may overlap the frame edge and be cropped.
    """
    rng = np.random.default_rng(rng)
    image = np.asarray(image_adu)
    if image.ndim != 2:
        raise KercrDataError(f"image has shape {image.shape}; pass a 2-D (ny, nx) image.")
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 0:
        raise KercrDataError(f"n={n!r} must be a whole number of footprints >= 0.")
    if n > 0 and len(stamps) == 0:
        raise KercrDataError("no footprint stamps given; read a footprint table or extract footprints first.")
    ny, nx = image.shape
    centres = None
    if where is not None:
        where = as_bool_mask(where, image.shape, "where")
        centres = np.flatnonzero(where)
        centres = centres if centres.size else None
    cr = np.zeros(image.shape, dtype=np.float32)
    for _ in range(int(n)):
        s = random_orientation(stamps[int(rng.integers(len(stamps)))], rng)
        h, w = s.shape
        if centres is None:
            y0 = int(rng.integers(-h + 1, ny))
            x0 = int(rng.integers(-w + 1, nx))
        else:
            yc, xc = divmod(int(centres[rng.integers(centres.size)]), nx)
            y0, x0 = yc - h // 2, xc - w // 2
        ys, xs = slice(max(y0, 0), min(y0 + h, ny)), slice(max(x0, 0), min(x0 + w, nx))
        cr[ys, xs] += s[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
    out = inject_cosmic_rays(image, cr, gain=gain, saturation=saturation)
    return out, cr, cr > 0
