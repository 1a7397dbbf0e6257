"""The imagers synthetic frames are made for: DECam's camera and sky by default, or a random CCD imager.

:class:`SyntheticConfig` holds every constant and range of a synthetic frame (detector, optics,
sky, source counts, cosmic rays); its defaults describe DECam CP InstCal frames in ADU.
:func:`random_instrument` draws another imager and observing setup for training that generalizes
beyond DECam. :mod:`kercr.data.synthetic` makes the frames.

Photometric constants (e-/s zero points, dark-sky mag/arcsec^2) follow the Legacy Surveys DECam
calibration (legacypipe ``legacyzpts``): g 26.61/22.04, r 26.82/20.91, i 26.76/20.15, z 26.48/18.46.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kercr.config import VARIETIES  # one definition of the choices, shared with the CLI
from kercr.data.cosmic_rays import CosmicRayModel, DetectorGeometry

__all__ = ["BANDS", "PIXEL_SCALE", "SENSORS", "SENSOR_WEIGHTS", "VARIETIES", "SyntheticConfig", "log_uniform",
           "random_instrument"]

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


def log_uniform(rng, lo, hi):
    """One number drawn log-uniformly in ``[lo, hi]`` from the generator ``rng`` (a float)."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


#: (thickness um, pixel pitch um, diffusion sigma px at the entrance window): thick red-sensitive
#: (DECam, HSC), LSST ITL, thinned back-illuminated and 2x2-binned thick sensors.
SENSORS = ((250.0, 15.0, 0.45), (200.0, 15.0, 0.4), (100.0, 10.0, 0.3), (40.0, 15.0, 0.25),
           (15.0, 15.0, 0.2), (20.0, 13.5, 0.2), (250.0, 30.0, 0.25), (40.0, 30.0, 0.15))
#: How often each of :data:`SENSORS` is drawn: thick sensors (long, faint muon tracks) 45 %.
SENSOR_WEIGHTS = (0.25, 0.1, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1)
#: Synthetic data sets (:data:`kercr.config.VARIETIES`): DECam's camera for every frame, or
#: :func:`random_instrument` per frame.


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
    fwhm_px = log_uniform(rng, 1.1, 8.0)
    pixel_scale = log_uniform(rng, 0.1, 1.2)
    gain = log_uniform(rng, 0.5, 5.0)
    bias = 0.0 if rng.uniform() < 0.5 else float(rng.uniform(100.0, 3000.0))
    full_well = log_uniform(rng, 3e4, 2e5)
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
        hot_pixels=log_uniform(rng, 5.0, 400.0), bad_columns=float(rng.uniform(0.0, 4.0)),
        cr_model=cr_model, pixel_scale=pixel_scale, zeropoint_offset=zeropoint_offset)


def _capped_sky_range(sky_e_range, cap_e):
    """``random_instrument``'s sky range in e-: ``sky_e_range`` (default 3 e- upward) capped at ``cap_e``."""
    lo, hi = (3.0, cap_e) if sky_e_range is None else (float(sky_e_range[0]), float(sky_e_range[1]))
    return (min(lo, cap_e), min(hi, cap_e))
