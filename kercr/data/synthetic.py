"""Synthetic DECam-like CCD frames with exact cosmic-ray truth: kercr's embedded default data set.

A frame is built in electrons, then converted to ADU:

1. sky (per-band DECam dark-sky brightness, a weak linear gradient) x exposure time;
2. stars (Moffat PSF) and galaxies (Sersic n=1 or n=4, elliptical; the PSF is approximated by
   softening the radius with the PSF width) stamped as small postage stamps, never a full-frame
   convolution, with magnitudes drawn from power-law number counts ``dN/dm ~ 10**(slope*m)``;
3. hot pixels (dark current) and, after noise, bad columns;
4. Poisson noise (Gaussian approximation: the sky is hundreds to thousands of e-) and read noise;
5. saturation at the full well with bleed trails: the excess charge of each saturated column run
   fills pixels up and down the column;
6. cosmic rays from :mod:`kercr.data.cosmic_rays`, added last with their exact truth mask.

The ignore mask covers saturated, bleed, hot and bad-column pixels. One ``seed`` drives every
random choice through ``numpy.random.default_rng``.

The imager (:class:`SyntheticConfig`, :func:`random_instrument`, the DECam bands) is described in
:mod:`kercr.data.instruments`; larger sources added to frames and the map of pixels on sources
(:func:`extended_sources`, :func:`dominant_source`, :func:`source_map`) are in
:mod:`kercr.data.sources`. All of them are importable from here too.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterator

import numpy as np
from scipy import ndimage

from kercr.data.cosmic_rays import inject_cosmic_rays, simulate_cosmic_rays
from kercr.data.errors import KercrDataError
from kercr.data.instruments import (
    BANDS,
    PIXEL_SCALE,
    SENSOR_WEIGHTS,
    SENSORS,
    VARIETIES,
    SyntheticConfig,
    random_instrument,
)
from kercr.data.sources import DOMINANT_COVER, dominant_source, extended_sources, source_map

__all__ = ["BANDS", "PIXEL_SCALE", "SENSORS", "VARIETIES", "SyntheticConfig", "random_instrument", "SyntheticFrame",
           "make_frame", "generate_dataset", "extended_sources", "source_map", "DOMINANT_COVER", "SENSOR_WEIGHTS",
           "dominant_source"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticFrame:
    """One synthetic exposure.

    Attributes
    ----------
    image_adu : numpy.ndarray, (ny, nx) float32
        Observed image in ADU, with CRs.
    clean_adu : numpy.ndarray, (ny, nx) float32
        The same image without CRs (same noise realization).
    cr_mask : numpy.ndarray, (ny, nx) bool
        Exact CR truth (deposited charge above half the read noise).
    ignore_mask : numpy.ndarray, (ny, nx) bool
        Saturated, bleed-trail, hot and bad-column pixels.
    cr_electrons : numpy.ndarray, (ny, nx) float32
        Injected CR charge in electrons.
    meta : dict
        JSON-serializable description (band, exptime, seeing, sky, gain, counts, ...).
    saturated_mask : numpy.ndarray, (ny, nx) bool
        Saturated and bleed-trail pixels (part of ``ignore_mask``). Their truth is known (no CR
        unless ``cr_mask`` says so), so training uses them as negatives: a detector must learn
        not to flag bleed trails, which are not all saturated.
    """

    image_adu: np.ndarray
    clean_adu: np.ndarray
    cr_mask: np.ndarray
    ignore_mask: np.ndarray
    cr_electrons: np.ndarray
    meta: dict
    saturated_mask: np.ndarray | None = None


def _power_law_mags(rng, n, lo, hi, slope):
    # Inverse CDF of p(m) ~ 10**(slope*m) on [lo, hi].
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + rng.uniform(size=n) * (b - a)) / slope


def _stamp_values(shape, xc, yc, size, profile):
    """Evaluate ``profile(dx, dy)`` on (n, size, size) stamps; return flat indices and unit-sum values."""
    ny, nx = shape
    r = size // 2
    off = np.arange(-r, r + 1)
    ix = np.floor(xc + 0.5).astype(np.int64)[:, None] + off
    iy = np.floor(yc + 0.5).astype(np.int64)[:, None] + off
    dx = (ix - xc[:, None])[:, None, :]
    dy = (iy - yc[:, None])[:, :, None]
    vals = profile(dx, dy)
    vals /= vals.sum(axis=(1, 2), keepdims=True)
    iyb = np.broadcast_to(iy[:, :, None], vals.shape)
    ixb = np.broadcast_to(ix[:, None, :], vals.shape)
    ok = (iyb >= 0) & (iyb < ny) & (ixb >= 0) & (ixb < nx)
    return ok, iyb * nx + ixb, vals


def _render_objects(shape, rng, *, n_stars, n_gals, zp, exptime, fwhm_px, beta, cfg):
    """Stars and galaxies in electrons: (ny, nx) float64 image, plus bright-star count."""
    ny, nx = shape
    alpha = fwhm_px / (2 * np.sqrt(2 ** (1 / beta) - 1))
    idx, val = [], []

    def add(xc, yc, flux, size, profile):
        for lo in range(0, len(xc), 4096):  # bound memory for large batches
            sl = slice(lo, lo + 4096)
            ok, flat, v = _stamp_values(shape, xc[sl], yc[sl], size, lambda dx, dy: profile(dx, dy, sl))
            v *= flux[sl][:, None, None]
            idx.append(flat[ok])
            val.append(v[ok])

    moffat = lambda dx, dy, sl: (1 + (dx * dx + dy * dy) / alpha**2) ** (-beta)  # noqa: E731
    m_star = _power_law_mags(rng, n_stars, *cfg.star_mags, cfg.star_slope)
    f_star = 10 ** (-0.4 * (m_star - zp)) * exptime
    xs, ys = rng.uniform(-0.5, nx - 0.5, n_stars), rng.uniform(-0.5, ny - 0.5, n_stars)
    for sel, size in ((m_star >= 18, 2 * int(3 * fwhm_px) + 1), (m_star < 18, 2 * int(20 * fwhm_px) + 1)):
        if sel.any():
            add(xs[sel], ys[sel], f_star[sel], size, moffat)

    m_gal = _power_law_mags(rng, n_gals, *cfg.galaxy_mags, cfg.galaxy_slope)
    f_gal = 10 ** (-0.4 * (m_gal - zp)) * exptime
    re_px = np.clip(0.6 * 10 ** (-0.15 * (m_gal - 22)) * rng.lognormal(0, 0.3, n_gals), 0.1, 6.0) / cfg.pixel_scale
    sersic_n = np.where(rng.uniform(size=n_gals) < 0.7, 1.0, 4.0)
    b_n = 2 * sersic_n - 1 / 3 + 0.009876 / sersic_n
    q = rng.uniform(0.2, 1.0, n_gals)
    pa = rng.uniform(0, np.pi, n_gals)
    soft = fwhm_px / 2.355
    gx, gy = rng.uniform(-0.5, nx - 0.5, n_gals), rng.uniform(-0.5, ny - 0.5, n_gals)
    extent = np.maximum(re_px * 3, 2.5 * fwhm_px)
    for lo_e, hi_e in ((0, 8), (8, 20), (20, np.inf)):
        sel = (extent >= lo_e) & (extent < hi_e)
        if not sel.any():
            continue
        size = 2 * int(min(extent[sel].max(), 60)) + 1
        p = {k: v[sel][:, None, None] for k, v in dict(re=re_px, n=sersic_n, b=b_n, q=q, pa=pa).items()}

        def sersic(dx, dy, sl, p=p):
            c, s = np.cos(p["pa"][sl]), np.sin(p["pa"][sl])
            u, w = dx * c + dy * s, (-dx * s + dy * c) / p["q"][sl]
            r = np.sqrt(u * u + w * w + soft**2)
            return np.exp(-p["b"][sl] * ((r / p["re"][sl]) ** (1 / p["n"][sl]) - 1))

        add(gx[sel], gy[sel], f_gal[sel], size, sersic)
    if not idx:
        return np.zeros(shape)
    return np.bincount(np.concatenate(idx), weights=np.concatenate(val), minlength=ny * nx).reshape(shape)


def _saturate_and_bleed(image_e, full_well):
    """Clip at the full well and bleed the excess along columns; returns the bleed+saturated mask."""
    sat = image_e > full_well
    if not sat.any():
        return sat
    ny = image_e.shape[0]
    runs, n = ndimage.label(sat, structure=[[0, 1, 0], [0, 1, 0], [0, 1, 0]])
    excess = ndimage.sum(image_e - full_well, runs, np.arange(1, n + 1))
    affected = sat.copy()
    for k, sl in enumerate(ndimage.find_objects(runs)):
        y0, y1, col = sl[0].start, sl[0].stop, sl[1].start
        extra = int(excess[k] // full_well)
        up, down = extra // 2, extra - extra // 2
        affected[max(0, y0 - down): min(ny, y1 + up), col] = True
    image_e[affected] = full_well
    return affected


def make_frame(*, seed, shape=(4096, 2048), band=None, exptime=None, config: SyntheticConfig | None = None) -> SyntheticFrame:
    """Make one synthetic DECam-like exposure.

    Parameters
    ----------
    seed : int, numpy.random.SeedSequence or numpy.random.Generator
        Drives every random choice.
    shape : tuple of int
        ``(ny, nx)``; DECam CCDs are (4096, 2048).
    band : {"g", "r", "i", "z"}, optional
        Filter (random if None).
    exptime : float, optional
        Seconds (if None: uniform in ``config.exptime_range``, or set by ``config.sky_e_range``).
    config : SyntheticConfig, optional

    Returns
    -------
    SyntheticFrame
    """
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(seed)
    if (len(shape) != 2 or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in shape)
            or min(shape) < 8):
        raise KercrDataError(f"shape {shape} must be (ny, nx), whole numbers of pixels, both >= 8.")
    if band is None:
        band = str(rng.choice(sorted(BANDS)))
    if band not in BANDS:
        raise KercrDataError(f"unknown band {band!r}; choose one of {sorted(BANDS)}.")
    given = exptime is not None
    exptime = float(rng.uniform(*cfg.exptime_range)) if exptime is None else float(exptime)
    if not 0 < exptime < np.inf:
        raise KercrDataError(f"exptime={exptime} s must be a positive finite time.")
    ny, nx = shape
    zp, sky_mag = BANDS[band]
    zp += cfg.zeropoint_offset
    seeing = float(rng.uniform(*cfg.seeing_range))
    beta = float(rng.uniform(*cfg.beta_range))
    fwhm_px = seeing / cfg.pixel_scale
    sky_rate = 10 ** (-0.4 * (sky_mag - zp)) * cfg.pixel_scale**2 * float(np.exp(rng.uniform(*np.log(cfg.sky_scale_range))))
    if cfg.sky_e_range is not None and not given:
        sky_e = float(np.exp(rng.uniform(*np.log(cfg.sky_e_range))))
        exptime = sky_e / sky_rate
    sky_e = sky_rate * exptime
    area_deg2 = ny * nx * (cfg.pixel_scale / 3600.0) ** 2
    density = float(np.exp(rng.uniform(*np.log(cfg.density_scale_range))))
    n_stars = int(rng.poisson(cfg.star_density * area_deg2 * density))
    n_gals = int(rng.poisson(cfg.galaxy_density * area_deg2))

    model = _render_objects(shape, rng, n_stars=n_stars, n_gals=n_gals, zp=zp, exptime=exptime,
                            fwhm_px=fwhm_px, beta=beta, cfg=cfg).astype(np.float32)
    gx, gy = rng.uniform(-cfg.sky_gradient, cfg.sky_gradient, 2)
    model += np.float32(sky_e) * (1 + gy * np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
                                  + gx * np.linspace(-1, 1, nx, dtype=np.float32)[None, :])
    hot_y, hot_x = _add_hot_pixels(model, rng, cfg=cfg, exptime=exptime)

    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= np.sqrt(np.maximum(model, 0) + np.float32(cfg.readnoise_e**2))
    image_e = model + noise
    saturated = _saturate_and_bleed(image_e, cfg.saturation_adu * cfg.gain)
    ignore = saturated.copy()
    ignore[hot_y, hot_x] = True
    clean = image_e
    clean *= np.float32(1 / cfg.gain)
    clean += np.float32(cfg.bias_adu)
    _add_bad_columns(clean, ignore, rng, cfg=cfg)

    cr_exptime = exptime if cfg.cr_exptime is None else float(cfg.cr_exptime)
    crs = simulate_cosmic_rays(shape, exptime=cr_exptime, rng=rng, model=cfg.cr_model, readnoise_e=cfg.readnoise_e,
                               threshold_e=cfg.cr_threshold_e)
    image = inject_cosmic_rays(clean, crs.electrons, gain=cfg.gain, saturation=cfg.saturation_adu + cfg.bias_adu)
    meta = {
        "band": band, "exptime": exptime, "cr_exptime": cr_exptime, "seeing_arcsec": seeing, "psf_beta": beta, "pixel_scale": cfg.pixel_scale,
        "fwhm_px": fwhm_px, "sensor_um": [cfg.cr_model.geometry.thickness_um, cfg.cr_model.geometry.pixel_um],
        "zeropoint_e": zp, "sky_e_per_s": sky_rate, "sky_adu": sky_e / cfg.gain + cfg.bias_adu,
        "gain": cfg.gain, "readnoise_e": cfg.readnoise_e, "saturation_adu": cfg.saturation_adu + cfg.bias_adu,
        "bias_adu": cfg.bias_adu, "n_stars": n_stars, "n_galaxies": n_gals, "n_hot_pixels": len(hot_y),
        "n_cosmic_rays": len(crs.events), "cr_pixels": int(crs.mask.sum()), "shape": [ny, nx],
    }
    logger.debug("synthetic frame %s", meta)
    return SyntheticFrame(image_adu=image, clean_adu=clean, cr_mask=crs.mask, ignore_mask=ignore,
                          cr_electrons=crs.electrons, meta=meta, saturated_mask=saturated)


def _add_hot_pixels(model, rng, *, cfg: SyntheticConfig, exptime: float):
    """Add hot pixels (dark current of 5-500 e-/s, log-uniform; ``cfg.hot_pixels`` per 2048 x 4096
    CCD) to ``model`` (e-) in place; return their ``(y, x)`` indices."""
    ny, nx = model.shape
    scale = ny * nx / (4096 * 2048)
    n_hot = int(rng.poisson(cfg.hot_pixels * scale))
    hot_y, hot_x = rng.integers(0, ny, n_hot), rng.integers(0, nx, n_hot)
    model[hot_y, hot_x] += (np.exp(rng.uniform(np.log(5), np.log(500), n_hot)) * exptime).astype(np.float32)
    return hot_y, hot_x


def _add_bad_columns(clean, ignore, rng, *, cfg: SyntheticConfig) -> None:
    """Charge-trap (low) and hot columns from a random row to one end of the CCD, in ``clean`` (ADU)
    in place, marked in ``ignore``; ``cfg.bad_columns`` per 2048 columns on average."""
    ny, nx = clean.shape
    for _ in range(int(rng.poisson(cfg.bad_columns * nx / 2048))):
        col, y0 = int(rng.integers(nx)), int(rng.integers(ny))
        rows = slice(y0, ny) if rng.integers(2) else slice(0, y0 + 1)
        if rng.integers(2):  # charge-trap column: low values
            clean[rows, col] = cfg.bias_adu + (clean[rows, col] - cfg.bias_adu) * np.float32(rng.uniform(0, 0.5))
        else:  # hot column
            clean[rows, col] += np.float32(rng.uniform(20, 500))
        ignore[rows, col] = True


def generate_dataset(n_frames, *, seed, shape=(4096, 2048), band=None, exptime=None,
                     config: SyntheticConfig | None = None) -> Iterator[SyntheticFrame]:
    """Yield ``n_frames`` independent synthetic frames; frame ``i`` depends only on ``(seed, i)``.

    Parameters are those of :func:`make_frame`; each frame's ``meta`` gains ``"seed"`` and
    ``"index"`` (and an ``"exposure_id"`` string usable by :func:`kercr.data.patches.split_exposures`).
    """
    if n_frames < 0:
        raise KercrDataError(f"n_frames={n_frames} must be >= 0.")
    children = np.random.SeedSequence(seed).spawn(int(n_frames))
    for i, child in enumerate(children):
        frame = make_frame(seed=child, shape=shape, band=band, exptime=exptime, config=config)
        frame.meta.update(seed=seed if isinstance(seed, int) else None, index=i, exposure_id=f"synthetic-{seed}-{i:06d}")
        yield frame
