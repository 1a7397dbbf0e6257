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

Photometric constants (e-/s zero points, dark-sky mag/arcsec^2) follow the Legacy Surveys DECam
calibration (legacypipe ``legacyzpts``): g 26.61/22.04, r 26.82/20.91, i 26.76/20.15, z 26.48/18.46.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Iterator

import numpy as np
from scipy import ndimage

from kercr.data.cosmic_rays import CosmicRayModel, DetectorGeometry, inject_cosmic_rays, simulate_cosmic_rays
from kercr.data.errors import KercrDataError

__all__ = ["BANDS", "PIXEL_SCALE", "SENSORS", "VARIETIES", "SyntheticConfig", "random_instrument", "SyntheticFrame",
           "make_frame", "generate_dataset", "extended_sources", "source_map"]

logger = logging.getLogger(__name__)

PIXEL_SCALE = 0.263  # arcsec / pixel
#: band -> (zero point for 1 e-/s, dark-sky surface brightness in mag/arcsec^2)
BANDS = {"g": (26.61, 22.04), "r": (26.82, 20.91), "i": (26.76, 20.15), "z": (26.48, 18.46)}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Ranges and constants of the synthetic frames (defaults: DECam CP InstCal-like, in ADU).

    Attributes
    ----------
    gain : float
        e-/ADU.
    readnoise_e : float
        Read noise in electrons.
    saturation_adu : float
        Saturation level in ADU (above ``bias_adu``).
    bias_adu : float
        Constant level added in ADU (0: bias-subtracted like DECam CP frames).
    exptime_range : tuple of float
        Uniform range of exposure times in seconds.
    seeing_range : tuple of float
        Uniform range of PSF FWHM in arcsec.
    beta_range : tuple of float
        Uniform range of the Moffat beta.
    sky_scale_range : tuple of float
        Log-uniform range of the sky relative to dark sky (moon, twilight).
    star_density, galaxy_density : float
        Objects per deg^2 over the magnitude ranges (a frame scales them by a log-uniform 0.5-2).
    star_mags, galaxy_mags : tuple of float
        Magnitude ranges.
    star_slope, galaxy_slope : float
        Count slopes ``d log10 N / dm``.
    sky_gradient : float
        Largest fractional sky change from frame centre to edge (uniform in +-, per axis).
    hot_pixels, bad_columns : float
        Mean numbers per 2048 x 4096 CCD.
    cr_model : CosmicRayModel
        CR rates and physics.
    pixel_scale : float
        Arcsec per pixel (DECam: 0.263).
    zeropoint_offset : float
        Magnitudes added to the DECam zero points (a smaller telescope or a lower throughput is
        negative: -2.5 is 10x fewer e- per source and per sky area).
    density_scale_range : tuple of float
        Log-uniform range of the per-frame factor on the star counts (sparse to crowded fields).
    sky_e_range : tuple of float or None
        If set, the sky level in e- per pixel is drawn log-uniform in this range and the exposure
        time follows from the band's sky brightness (``exptime_range`` is not used).
    cr_exptime : float or None
        Exposure time in seconds the CR count is drawn for (None: the frame's own), so that CR
        density can be set independently of the sky.
    cr_threshold_e : float or None
        Simulated CR charge kept per pixel, in e-: deposits below it are dropped from the image
        and from the truth alike (None: half the read noise). CR footprints harvested from dark
        frames end at their harvesting threshold (about 50 e- for imSim's ITL table); simulated
        CRs cut the same way have the same sharp edges.
    """

    gain: float = 4.0
    readnoise_e: float = 7.0
    saturation_adu: float = 45000.0
    bias_adu: float = 0.0
    exptime_range: tuple = (30.0, 200.0)
    seeing_range: tuple = (0.8, 1.6)
    beta_range: tuple = (2.5, 4.5)
    sky_scale_range: tuple = (1.0, 3.0)
    star_density: float = 4000.0
    galaxy_density: float = 80000.0
    star_mags: tuple = (12.0, 24.5)
    galaxy_mags: tuple = (17.0, 25.5)
    star_slope: float = 0.15
    galaxy_slope: float = 0.35
    sky_gradient: float = 0.005
    hot_pixels: float = 40.0
    bad_columns: float = 2.0
    cr_model: CosmicRayModel = CosmicRayModel()
    pixel_scale: float = PIXEL_SCALE
    zeropoint_offset: float = 0.0
    density_scale_range: tuple = (0.5, 2.0)
    sky_e_range: tuple | None = None
    cr_exptime: float | None = None
    cr_threshold_e: float | None = None


def _log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


#: (thickness um, pixel pitch um, diffusion sigma px at the entrance window): thick red-sensitive
#: (DECam, HSC), LSST ITL, thinned back-illuminated and 2x2-binned thick sensors.
SENSORS = ((250.0, 15.0, 0.45), (200.0, 15.0, 0.4), (100.0, 10.0, 0.3), (40.0, 15.0, 0.25),
           (15.0, 15.0, 0.2), (20.0, 13.5, 0.2), (250.0, 30.0, 0.25), (40.0, 30.0, 0.15))
#: How often each of :data:`SENSORS` is drawn: thick sensors (long, faint muon tracks) 45 %.
SENSOR_WEIGHTS = (0.25, 0.1, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1)
#: Synthetic data sets: DECam's camera for every frame, or :func:`random_instrument` per frame.
VARIETIES = ("decam", "wide")


def random_instrument(rng, *, cr_rate_scale: float = 1.0, sky_e_range=None) -> SyntheticConfig:
    """A random CCD imager and observing setup, for training that generalizes beyond DECam.

    Everything a real frame can differ in is drawn independently and widely (units in brackets):

    - sampling: PSF FWHM 1.1 to 8 pixels (log-uniform; undersampled space images to
      well-sampled ground frames) at 0.1 to 1.2 arcsec/pixel, Moffat beta 2 to 6;
    - signal: sky level 3 e- to 30 % of saturation per pixel (log-uniform: as many sky-noise
      dominated frames, where thick-sensor muon tracks are only 5-20 sigma, as read-noise
      dominated ones), the exposure time following from the band's sky brightness (0.5 to 20
      times dark sky) and a zero point -3.5 to +0.5 mag from DECam's; star counts 0.3 to 8
      times the field average with more bright (saturated, bleeding) stars than DECam's defaults;
    - detector: gain 0.5 to 5 e-/ADU, read noise 2 to 12 e-, full well 3e4 to 2e5 e- (and a
      16-bit ADC), a bias pedestal of 0 (calibrated) or 100 to 3000 ADU (raw frames);
    - sensor: one of :data:`SENSORS` (thickness, pitch, diffusion), which sets CR track lengths
      and widths; the CR rate scales with the pixel area.

    Parameters
    ----------
    rng : numpy.random.Generator
    cr_rate_scale : float
        CR rate as a multiple of the sensor's dark rate.
    sky_e_range : (float, float) or None
        Sky level range in e- per pixel (log-uniform), instead of 3 e- to 30 % of saturation.
        Both ends are capped at 30 % of the imager's saturation. A higher floor spends fewer
        frames on the read-noise-dominated regime (where the noise hardly changes with the sky)
        and more on bright skies, where CR tracks are faint against the sky noise.

    Returns
    -------
    SyntheticConfig
    """
    fwhm_px = _log_uniform(rng, 1.1, 8.0)
    pixel_scale = _log_uniform(rng, 0.1, 1.2)
    gain = _log_uniform(rng, 0.5, 5.0)
    bias = 0.0 if rng.uniform() < 0.5 else float(rng.uniform(100.0, 3000.0))
    full_well = _log_uniform(rng, 3e4, 2e5)
    thickness, pitch, diffusion = SENSORS[int(rng.choice(len(SENSORS), p=SENSOR_WEIGHTS))]
    geometry = DetectorGeometry(thickness_um=thickness, pixel_um=pitch, diffusion_sigma_px=diffusion)
    zeropoint_offset = float(rng.uniform(-3.5, 0.5))
    saturation_adu = float(min(full_well / gain, 65535.0 - bias))  # full well or the 16-bit ADC
    base = CosmicRayModel()
    cr_model = dataclasses.replace(base, geometry=geometry, max_length_px=base.max_length_px * 15.0 / pitch,
                                   rate_per_s=base.rate_per_s * cr_rate_scale * (pitch / 15.0) ** 2)
    return SyntheticConfig(
        gain=gain, readnoise_e=float(rng.uniform(2.0, 12.0)),
        saturation_adu=saturation_adu, bias_adu=bias,
        sky_e_range=_capped_sky_range(sky_e_range, 0.3 * saturation_adu * gain), cr_exptime=115.0,
        seeing_range=(fwhm_px * pixel_scale,) * 2, beta_range=(2.0, 6.0),
        sky_scale_range=(0.5, 20.0), density_scale_range=(0.3, 8.0), star_mags=(9.0, 24.5), star_slope=0.12,
        hot_pixels=_log_uniform(rng, 5.0, 400.0), bad_columns=float(rng.uniform(0.0, 4.0)),
        cr_model=cr_model, pixel_scale=pixel_scale, zeropoint_offset=zeropoint_offset)


def _capped_sky_range(sky_e_range, cap_e):
    """``random_instrument``'s sky range in e-: ``sky_e_range`` (default 3 e- upward) capped at ``cap_e``."""
    lo, hi = (3.0, cap_e) if sky_e_range is None else (float(sky_e_range[0]), float(sky_e_range[1]))
    return (min(lo, cap_e), min(hi, cap_e))


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
    if len(shape) != 2 or min(shape) < 8:
        raise KercrDataError(f"shape {shape} must be (ny, nx) with both sides >= 8 pixels.")
    if band is None:
        band = str(rng.choice(sorted(BANDS)))
    if band not in BANDS:
        raise KercrDataError(f"unknown band {band!r}; choose one of {sorted(BANDS)}.")
    given = exptime is not None
    exptime = float(rng.uniform(*cfg.exptime_range)) if exptime is None else float(exptime)
    if not exptime > 0:
        raise KercrDataError(f"exptime={exptime} s must be positive.")
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
    scale = ny * nx / (4096 * 2048)
    n_hot = int(rng.poisson(cfg.hot_pixels * scale))
    hot_y, hot_x = rng.integers(0, ny, n_hot), rng.integers(0, nx, n_hot)
    model[hot_y, hot_x] += (np.exp(rng.uniform(np.log(5), np.log(500), n_hot)) * exptime).astype(np.float32)

    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= np.sqrt(np.maximum(model, 0) + np.float32(cfg.readnoise_e**2))
    image_e = model + noise
    saturated = _saturate_and_bleed(image_e, cfg.saturation_adu * cfg.gain)
    ignore = saturated.copy()
    ignore[hot_y, hot_x] = True
    clean = image_e
    clean *= np.float32(1 / cfg.gain)
    clean += np.float32(cfg.bias_adu)
    for _ in range(int(rng.poisson(cfg.bad_columns * nx / 2048))):
        col, y0 = int(rng.integers(nx)), int(rng.integers(ny))
        rows = slice(y0, ny) if rng.integers(2) else slice(0, y0 + 1)
        if rng.integers(2):  # charge-trap column: low values
            clean[rows, col] = cfg.bias_adu + (clean[rows, col] - cfg.bias_adu) * np.float32(rng.uniform(0, 0.5))
        else:  # hot column
            clean[rows, col] += np.float32(rng.uniform(20, 500))
        ignore[rows, col] = True

    cr_exptime = exptime if cfg.cr_exptime is None else float(cfg.cr_exptime)
    crs = simulate_cosmic_rays(shape, exptime=cr_exptime, rng=rng, model=cfg.cr_model, readnoise_e=cfg.readnoise_e,
                               threshold_e=cfg.cr_threshold_e)
    image = inject_cosmic_rays(clean, crs.electrons, gain=cfg.gain, saturation=cfg.saturation_adu + cfg.bias_adu)
    meta = {
        "band": band, "exptime": exptime, "cr_exptime": cr_exptime, "seeing_arcsec": seeing, "psf_beta": beta, "pixel_scale": cfg.pixel_scale,
        "fwhm_px": fwhm_px, "sensor_um": [cfg.cr_model.geometry.thickness_um, cfg.cr_model.geometry.pixel_um],
        "zeropoint_e": zp, "sky_e_per_s": sky_rate, "sky_adu": sky_e / cfg.gain + cfg.bias_adu,
        "gain": cfg.gain, "readnoise_e": cfg.readnoise_e, "saturation_adu": cfg.saturation_adu + cfg.bias_adu,
        "bias_adu": cfg.bias_adu, "n_stars": n_stars, "n_galaxies": n_gals, "n_hot_pixels": n_hot,
        "n_cosmic_rays": len(crs.events), "cr_pixels": int(crs.mask.sum()), "shape": [ny, nx],
    }
    logger.debug("synthetic frame %s", meta)
    return SyntheticFrame(image_adu=image, clean_adu=clean, cr_mask=crs.mask, ignore_mask=ignore,
                          cr_electrons=crs.electrons, meta=meta, saturated_mask=saturated)


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
        re = _log_uniform(rng, *re_px)
        sersic_n = _log_uniform(rng, 0.5, 4.0)
        b_n = 2 * sersic_n - 1 / 3 + 0.009876 / sersic_n
        q, pa = rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
        peak = _log_uniform(rng, *peak_snr) * noise_e
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
        n = _log_uniform(rng, 0.5, 4.0)
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
    from kercr.data.normalization import NormalizationConfig, robust_sky_noise

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
