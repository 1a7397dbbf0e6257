"""Astronomical sources beyond a synthetic frame's stars and small galaxies, and a map of the pixels on sources.

:func:`extended_sources` (galaxies, nebulae and halos tens to hundreds of pixels across) and
:func:`dominant_source` (one source over much of the frame) render noiseless images in electrons
that :class:`kercr.data.frames.SyntheticFrames` adds to its frames, so CR hits land on bright,
structured light too. :func:`source_map` finds the pixels on sources of any image, to place CR
hits there in training and to report how a detector does there.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from kercr.data.instruments import log_uniform
from kercr.data.normalization import NormalizationConfig, robust_sky_noise

__all__ = ["DOMINANT_COVER", "dominant_source", "extended_sources", "source_map"]


def extended_sources(shape, rng, *, n, noise_e, peak_snr=(2.0, 300.0), re_px=(8.0, 120.0), max_peak_e=None):
    """Large smooth sources (nearby galaxies, nebulae, halos): an image in electrons, noiseless.

    The embedded frames' galaxies are at most a few arcsec across; real fields also hold
    galaxies and diffuse light tens to hundreds of pixels across, on which CR hits must still
    be found. Each source is an elliptical Sersic profile (index 0.5-4, axis ratio 0.3-1, centred
    anywhere on the frame) whose peak is ``peak_snr`` times the frame's noise.

    Parameters
    ----------
    shape : tuple of int
        (ny, nx) in pixels.
    rng : numpy.random.Generator or int
    n : int
        Number of sources.
    noise_e : float
        The frame's sky noise in electrons (sets the peak surface brightness).
    peak_snr : tuple of float
        Log-uniform range of the peak, in units of ``noise_e``.
    re_px : tuple of float
        Log-uniform range of the effective radius in pixels.
    max_peak_e : float, optional
        Upper limit of a peak in electrons (e.g. half the full well, so nothing saturates).

    Returns
    -------
    numpy.ndarray, shape (ny, nx), float32
        Source charge in electrons per pixel.
    """
    rng = np.random.default_rng(rng)
    ny, nx = shape
    out = np.zeros(shape, np.float32)
    for _ in range(int(n)):
        re = log_uniform(rng, *re_px)
        sersic_n = log_uniform(rng, 0.5, 4.0)
        b_n = 2 * sersic_n - 1 / 3 + 0.009876 / sersic_n
        q, pa = rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
        peak = log_uniform(rng, *peak_snr) * noise_e
        if max_peak_e is not None:
            peak = min(peak, max_peak_e)
        yc, xc = rng.uniform(0, ny), rng.uniform(0, nx)
        half = 6 * re  # the profile is below 1e-3 of its peak (n <= 4 at this radius is ~1e-3)
        y0, y1 = max(int(yc - half), 0), min(int(yc + half) + 1, ny)
        x0, x1 = max(int(xc - half), 0), min(int(xc + half) + 1, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(yc)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(xc)
        c, s = np.float32(np.cos(pa)), np.float32(np.sin(pa))
        u, w = dx * c + dy * s, (-dx * s + dy * c) / np.float32(q)
        r = np.sqrt(u * u + w * w + np.float32(1.0))  # softened by a pixel: no cusp
        # Sersic profile normalized to 1 at the (softened) centre
        k, inv_n = np.float32(b_n), np.float32(1 / sersic_n)
        profile = np.exp(-k * ((r / np.float32(re)) ** inv_n - np.float32(1 / re) ** inv_n))
        out[y0:y1, x0:x1] += np.float32(peak) * profile
    return out


#: Fraction of the field a :func:`dominant_source` covers (where it is brighter than the sky's variance).
DOMINANT_COVER = (0.3, 0.7)


def dominant_source(shape, rng, *, sky_var_e, cover=None, max_peak_e=None):
    """One galaxy or nebula that fills much of the frame: an image in electrons, noiseless.

    Half the time an elliptical Sersic galaxy (index 0.5-4, effective radius 15-50 % of the
    frame's short side, axis ratio 0.4-1, centred anywhere on the frame), half the time a
    nebula (the exponential of a Gaussian random field smoothed over 5-15 % of the frame).
    Its brightness is set so that it exceeds ``sky_var_e`` (the sky's variance in e-: the sky
    level plus the read noise squared) over a fraction ``cover`` of the frame: there its photon
    noise dominates, so one noise level per frame is wrong over 30-70 % of the field.

    Parameters
    ----------
    shape : tuple of int
        (ny, nx) in pixels.
    rng : numpy.random.Generator or int
    sky_var_e : float
        Variance of the sky in e-^2 (sky e- plus read noise e- squared).
    cover : float, optional
        Fraction of pixels where the source exceeds ``sky_var_e`` (default: uniform in
        :data:`DOMINANT_COVER`).
    max_peak_e : float, optional
        Upper limit of the peak in e- (e.g. half the full well).

    Returns
    -------
    numpy.ndarray, shape (ny, nx), float32
        Source charge in e- per pixel.
    """
    rng = np.random.default_rng(rng)
    ny, nx = shape
    cover = float(rng.uniform(*DOMINANT_COVER)) if cover is None else float(cover)
    if rng.uniform() < 0.5:
        re = min(ny, nx) * float(rng.uniform(0.15, 0.5))
        n = log_uniform(rng, 0.5, 4.0)
        b_n = 2 * n - 1 / 3 + 0.009876 / n
        q, pa = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
        yc, xc = rng.uniform(0, ny), rng.uniform(0, nx)
        dy = np.arange(ny, dtype=np.float32)[:, None] - np.float32(yc)
        dx = np.arange(nx, dtype=np.float32)[None, :] - np.float32(xc)
        c, s = np.float32(np.cos(pa)), np.float32(np.sin(pa))
        r = np.sqrt((dx * c + dy * s) ** 2 + ((-dx * s + dy * c) / np.float32(q)) ** 2 + np.float32(1.0))
        profile = np.exp(-np.float32(b_n) * (r / np.float32(re)) ** np.float32(1 / n))
    else:
        k = 8  # the field is made on a grid k times coarser, then interpolated
        small = rng.standard_normal((-(-ny // k) + 2, -(-nx // k) + 2))
        small = ndimage.gaussian_filter(small, min(ny, nx) / k * float(rng.uniform(0.05, 0.15)), mode="wrap")
        small = np.exp(2.5 * small / small.std())
        profile = ndimage.zoom(small, k, order=1)[:ny, :nx].astype(np.float32)
    profile /= profile.max()
    level = float(np.quantile(profile[::4, ::4], 1 - cover))  # the source is brighter than that on `cover`
    peak = sky_var_e / max(level, 1e-6)
    if max_peak_e is not None:
        peak = min(peak, max_peak_e)
    return (profile * np.float32(peak)).astype(np.float32)


def source_map(image, *, mask=None, nsigma=1.0, block=256, smooth=5):
    """Pixels on astronomical sources: where the locally smoothed signal exceeds the noise.

    The local background is the median of ``block`` x ``block`` pixel blocks (bilinear between
    block centres); the signal is the ``smooth`` x ``smooth`` mean of image - background, and a
    pixel is on a source when that mean exceeds ``nsigma`` times the pixel noise (measured from
    differences of pixels two apart, so the sources do not inflate it; ``nsigma * smooth``
    sigma of the mean). Used to place CR hits on stars, galaxies and halos
    in training, and to report how a detector does there.

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Image (ADU or electrons); not modified.
    mask : array_like of bool, optional
        Pixels to leave out of the background and of the map (saturated, bad).
    nsigma : float
        Threshold in units of the per-pixel noise.
    block, smooth : int
        Background block size and smoothing box in pixels.

    Returns
    -------
    numpy.ndarray of bool, shape (ny, nx)
    """
    image = np.asarray(image, dtype=np.float32)
    bad = ~np.isfinite(image) if mask is None else (np.asarray(mask, bool) | ~np.isfinite(image))
    # the noise from pixel differences: not inflated by the sources being mapped
    _, noise, _ = robust_sky_noise(image, mask=bad, config=NormalizationConfig(noise_estimator="diff2"))
    ny, nx = image.shape
    hy, hx = min(block, ny), min(block, nx)  # block size (the frame's, if smaller); the remainder is left out
    by, bx = ny // hy, nx // hx
    grid = np.where(bad, np.nan, image)[: by * hy, : bx * hx]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-masked blocks
        med = np.nanmedian(grid.reshape(by, hy, bx, hx), axis=(1, 3))
    med = np.where(np.isfinite(med), med, np.nanmedian(med) if np.isfinite(med).any() else 0.0)
    background = ndimage.zoom(med, (ny / by, nx / bx), order=1, mode="nearest", grid_mode=True)[:ny, :nx]
    signal = ndimage.uniform_filter(np.where(bad, background, image) - background, smooth)
    return (signal > nsigma * noise) & ~bad
