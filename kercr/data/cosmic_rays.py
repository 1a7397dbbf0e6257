"""Physically motivated cosmic-ray simulation for thick, fully depleted CCDs (DECam by default).

Three kinds of events, each a set of point charge deposits ``(x, y, depth, electrons)`` that are
spread by charge diffusion and integrated over pixels:

* **muons**: straight tracks through the whole thickness ``T``. The zenith angle follows the sea-level
  intensity ``I(theta) ~ cos^2(theta)`` per solid angle; through a flat sensor the rate gains a
  ``cos(theta)`` projection factor, so ``cos(theta) = U**(1/4)``. The projected length is
  ``T * tan(theta) / pixel`` pixels (16.7 tan(theta) for DECam). They deposit ``dedx_e_per_um``
  (80 e-/um, the most probable value for a minimum-ionizing particle in silicon) per micron with
  Landau-like fluctuations: ``1 + landau_width * M`` with ``M`` a standard Moyal variate
  (``M = -ln(Z^2)``, ``Z`` normal; mode 0, long upper tail).
* **worms**: low-energy electrons (Compton electrons, delta rays), curly 3-D random walks of 3-40 px.
* **spots**: compact deposits of 1-4 pixels and 300-20,000 e- (X-ray conversions, low-energy
  electrons); not alpha particles, whose ~10^6 e- saturate and bleed (not simulated).

Charge created at distance ``d`` from the collecting gates diffuses with a Gaussian of
``sigma = diffusion_sigma_px * sqrt(d / T)`` (0.45 px at the entrance window for DECam).

Truth mask: a pixel is a CR pixel when its deposited charge exceeds ``threshold_e`` (default half
the read noise, 3.5 e- for 7 e- read noise). Charge below the threshold is dropped, so the injected
signal is nonzero exactly on the mask; the dropped charge is far below the noise.

References
----------
Groom, D. 2004, "Cosmic rays and other nonsense in astronomical CCD imagers", Exp. Astron. 14, 45.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy.special import ndtr

from kercr.data.errors import KercrDataError

__all__ = [
    "DetectorGeometry", "CosmicRayModel", "CosmicRayImage", "DECAM",
    "projected_length_px", "muon_deposits", "render_deposits", "simulate_cosmic_rays", "inject_cosmic_rays",
    "bright_tracks", "BRIGHT_TRACK_GRID_DEG",
]

logger = logging.getLogger(__name__)

DECAM_CCD_AREA_PX = 2048 * 4096


@dataclasses.dataclass(frozen=True)
class DetectorGeometry:
    """Sensor geometry: thickness and pixel pitch in microns, diffusion at the entrance window (px)."""

    thickness_um: float = 250.0
    pixel_um: float = 15.0
    diffusion_sigma_px: float = 0.45


DECAM = DetectorGeometry()


@dataclasses.dataclass(frozen=True)
class CosmicRayModel:
    """Rates and event mix of the CR simulation.

    Attributes
    ----------
    rate_per_s : float
        Events per second per ``reference_area_px`` pixels (DECam darks: ~0.6 per 2k x 4k CCD).
    reference_area_px : int
        Area the rate refers to.
    fractions : tuple of 3 float
        Fractions of muons, worms and spots (normalized to 1).
    dedx_e_per_um : float
        Most probable muon deposit in e-/um.
    landau_width : float
        Relative width of the per-step Moyal fluctuation.
    worm_dedx_e_per_um : float
        Mean deposit of low-energy electrons in e-/um.
    spot_charge_e : tuple of 2 float
        Range (log-uniform) of total spot charge in electrons.
    max_length_px : float
        Longest projected muon track (grazing incidence is capped here).
    geometry : DetectorGeometry
        Sensor.
    """

    rate_per_s: float = 0.6
    reference_area_px: int = DECAM_CCD_AREA_PX
    fractions: tuple = (0.6, 0.15, 0.25)
    dedx_e_per_um: float = 80.0
    landau_width: float = 0.15
    worm_dedx_e_per_um: float = 200.0
    spot_charge_e: tuple = (300.0, 20000.0)
    max_length_px: float = 600.0
    geometry: DetectorGeometry = DECAM

    def expected_count(self, shape, exptime: float) -> float:
        """Mean number of events in a frame of ``shape`` exposed ``exptime`` seconds."""
        return self.rate_per_s * exptime * (shape[0] * shape[1]) / self.reference_area_px


@dataclasses.dataclass(frozen=True, eq=False)
class CosmicRayImage:
    """Simulated CRs: ``electrons`` (ny, nx) float32 in e-, ``mask`` (ny, nx) bool truth, ``events``."""

    electrons: np.ndarray
    mask: np.ndarray
    events: list


def projected_length_px(theta, geometry: DetectorGeometry = DECAM):
    """Projected length in pixels of a straight track at incidence angle ``theta`` (radians)."""
    return geometry.thickness_um * np.tan(theta) / geometry.pixel_um


def _moyal(rng, n):
    z = rng.standard_normal(n)
    return np.minimum(-np.log(np.maximum(z * z, 1e-12)), 30.0)


def _sigma(depth_um, geometry):
    # depth_um is measured from the entrance (back) surface; the gates sit at depth = thickness.
    frac = np.clip(1.0 - depth_um / geometry.thickness_um, 0.0, 1.0)
    return np.maximum(geometry.diffusion_sigma_px * np.sqrt(frac), 0.05)


def muon_deposits(x, y, theta, phi, *, rng, model: CosmicRayModel = CosmicRayModel()):
    """Point deposits of one straight muon track.

    Parameters
    ----------
    x, y : float
        Entry point (pixels) on the entrance surface.
    theta, phi : float
        Incidence angle from the sensor normal and azimuth (radians).
    rng : numpy.random.Generator
    model : CosmicRayModel

    Returns
    -------
    xs, ys, sigmas, charges : numpy.ndarray, shape (n,)
        Positions (px), diffusion sigma (px) and charge (e-) of each deposit.
    """
    g = model.geometry
    length = min(float(projected_length_px(theta, g)), model.max_length_px)
    n = max(8, int(np.ceil(length / 0.2)))
    t = (np.arange(n) + 0.5) / n
    xs = x + t * length * np.cos(phi)
    ys = y + t * length * np.sin(phi)
    depth = t * g.thickness_um
    path_um = np.hypot(g.thickness_um, length * g.pixel_um) / n
    q = path_um * model.dedx_e_per_um * np.maximum(1.0 + model.landau_width * _moyal(rng, n), 0.1)
    return xs, ys, _sigma(depth, g), q


def _worm_deposits(x, y, rng, model):
    g = model.geometry
    n = int(rng.integers(6, 80))
    step = 0.5  # px of 3-D path per step
    direction = rng.standard_normal(3)
    pos = np.array([x, y, rng.uniform(0, g.thickness_um / g.pixel_um)])
    pts = np.empty((n, 3))
    for i in range(n):
        # Multiple scattering grows as the electron slows down: curl more towards the end.
        direction = direction / np.linalg.norm(direction) + rng.standard_normal(3) * (0.3 + 1.2 * i / n)
        pos = pos + step * direction / np.linalg.norm(direction)
        pos[2] = np.clip(pos[2], 0.0, g.thickness_um / g.pixel_um)
        pts[i] = pos
    q = step * g.pixel_um * model.worm_dedx_e_per_um * np.maximum(1.0 + 0.3 * _moyal(rng, n), 0.1)
    return pts[:, 0], pts[:, 1], _sigma(pts[:, 2] * g.pixel_um, g), q


def _spot_deposits(x, y, rng, model):
    k = int(rng.integers(1, 4))
    total = np.exp(rng.uniform(*np.log(model.spot_charge_e)))
    xs = x + rng.normal(0, 0.4, k)
    ys = y + rng.normal(0, 0.4, k)
    sig = np.full(k, rng.uniform(0.25, 0.7))
    return xs, ys, sig, np.full(k, total / k)


def render_deposits(shape, xs, ys, sigmas, charges) -> np.ndarray:
    """Spread point charges over pixels with pixel-integrated Gaussians.

    Pixel ``(i, j)`` covers ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``. Charge falling outside the
    frame is lost. Returns a (ny, nx) float64 image in electrons.
    """
    ny, nx = shape
    xs, ys, sigmas, charges = (np.asarray(a, dtype=np.float64) for a in (xs, ys, sigmas, charges))
    if xs.size == 0:
        return np.zeros(shape)
    r = int(np.ceil(4 * sigmas.max())) + 1
    off = np.arange(-r, r + 1)
    cx = np.floor(xs + 0.5).astype(np.int64)
    cy = np.floor(ys + 0.5).astype(np.int64)
    px = cx[:, None] + off  # (n, k)
    py = cy[:, None] + off
    s = sigmas[:, None]
    wx = ndtr((px + 0.5 - xs[:, None]) / s) - ndtr((px - 0.5 - xs[:, None]) / s)
    wy = ndtr((py + 0.5 - ys[:, None]) / s) - ndtr((py - 0.5 - ys[:, None]) / s)
    vals = charges[:, None, None] * wy[:, :, None] * wx[:, None, :]
    iy = np.broadcast_to(py[:, :, None], vals.shape)
    ix = np.broadcast_to(px[:, None, :], vals.shape)
    ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx) & (vals > 0)
    flat = iy[ok] * nx + ix[ok]
    return np.bincount(flat, weights=vals[ok], minlength=ny * nx).reshape(shape)


def simulate_cosmic_rays(shape, *, exptime, rng, model: CosmicRayModel = CosmicRayModel(), n_events=None,
                         readnoise_e=7.0, threshold_e=None) -> CosmicRayImage:
    """Simulate the CRs hitting a CCD during one exposure.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the frame.
    exptime : float
        Exposure (plus readout) time in seconds; sets the mean event count with ``model.rate_per_s``.
    rng : numpy.random.Generator or int
        Random generator (or seed); the only source of randomness.
    model : CosmicRayModel
        Rates, event mix and sensor.
    n_events : int, optional
        Exact number of events instead of a Poisson draw.
    readnoise_e : float
        Read noise in electrons; sets the default threshold.
    threshold_e : float, optional
        Mask threshold in electrons (default ``0.5 * readnoise_e``).

    Returns
    -------
    CosmicRayImage
        ``electrons`` float32 (ny, nx) in e-, zero below the threshold; ``mask`` = electrons > 0;
        ``events``: one dict per event (kind, x, y, theta, length_px, charge_e).
    """
    rng = np.random.default_rng(rng)
    if len(shape) != 2 or min(shape) < 1:
        raise KercrDataError(f"shape {shape} is not a 2-D (ny, nx) frame shape.")
    if exptime < 0:
        raise KercrDataError(f"exptime={exptime} s is negative; pass the exposure time in seconds.")
    threshold = 0.5 * readnoise_e if threshold_e is None else float(threshold_e)
    ny, nx = shape
    n = int(rng.poisson(model.expected_count(shape, exptime))) if n_events is None else int(n_events)
    frac = np.asarray(model.fractions, dtype=float)
    kinds = rng.choice(3, size=n, p=frac / frac.sum())
    parts, events = [], []
    for kind in kinds:
        x, y = rng.uniform(-0.5, nx - 0.5), rng.uniform(-0.5, ny - 0.5)
        if kind == 0:
            theta = float(np.arccos(rng.uniform() ** 0.25))
            phi = rng.uniform(0, 2 * np.pi)
            dep = muon_deposits(x, y, theta, phi, rng=rng, model=model)
            ev = {"kind": "muon", "theta": theta, "length_px": float(projected_length_px(theta, model.geometry))}
        elif kind == 1:
            dep = _worm_deposits(x, y, rng, model)
            ev = {"kind": "worm", "theta": None, "length_px": None}
        else:
            dep = _spot_deposits(x, y, rng, model)
            ev = {"kind": "spot", "theta": None, "length_px": None}
        ev.update(x=x, y=y, charge_e=float(dep[3].sum()))
        parts.append(dep)
        events.append(ev)
    if parts:
        arrays = [np.concatenate([p[i] for p in parts]) for i in range(4)]
        electrons = render_deposits(shape, *arrays)
    else:
        electrons = np.zeros(shape)
    mask = electrons > threshold
    electrons = np.where(mask, electrons, 0.0).astype(np.float32)
    logger.debug("simulated %d CR events, %d pixels", n, int(mask.sum()))
    return CosmicRayImage(electrons=electrons, mask=mask, events=events)


#: Half-width (degrees) of the azimuths around a row or a column that half of :func:`bright_tracks` take.
BRIGHT_TRACK_GRID_DEG = 10.0


def bright_tracks(shape, *, n, rng, peak_e, length_px=(8.0, 60.0), threshold_e=3.5,
                  model: CosmicRayModel = CosmicRayModel()) -> CosmicRayImage:
    """Straight, heavily ionizing CR tracks, half of them within :data:`BRIGHT_TRACK_GRID_DEG` of a
    row or a column: the tracks that look like a bleed trail or a bad column.

    A minimum-ionizing muon leaves about 1,200 e- in a pixel of a grazing track
    (:func:`simulate_cosmic_rays`); the rarer heavily ionizing particles and the muons' upper
    Landau tail leave ten to a hundred times more, in straight lines. A model that saw bright
    straight lines only as bleed trails (negatives) misses such tracks near the pixel grid.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the frame.
    n : int
        Number of tracks.
    rng : numpy.random.Generator or int
    peak_e : (float, float)
        Range (log-uniform) of the most probable charge per pixel of track length, in e- (e.g.
        12,000 to 120,000 for 3,000 to 30,000 ADU at a gain of 4). The Landau fluctuation adds
        about 20 % on average, and a diagonal track puts up to 1.4 times that into one pixel.
    length_px : (float, float)
        Range (uniform) of the projected track length in pixels.
    threshold_e : float
        The truth mask keeps pixels with more charge than this (e-).
    model : CosmicRayModel
        The sensor (diffusion with depth) and the Landau fluctuation of the deposits.

    Returns
    -------
    CosmicRayImage
        ``electrons`` float32 (ny, nx) in e-, ``mask``, and one event per track (kind ``"bright"``,
        x, y, azimuth_deg, length_px, charge_e).
    """
    rng = np.random.default_rng(rng)
    lo, hi = (float(v) for v in peak_e)
    if not 0 < lo <= hi or not np.isfinite(hi):
        raise KercrDataError(f"peak_e={peak_e!r} must be two charges in e- per pixel, 0 < low <= high.")
    ny, nx = shape
    g = model.geometry
    parts, events = [], []
    for _ in range(int(n)):
        length = float(rng.uniform(*length_px))
        if rng.uniform() < 0.5:  # near the grid: along a row or a column, within the half-width
            azimuth = 90.0 * int(rng.integers(4)) + rng.uniform(-BRIGHT_TRACK_GRID_DEG, BRIGHT_TRACK_GRID_DEG)
        else:
            azimuth = rng.uniform(0.0, 360.0)
        phi = np.deg2rad(azimuth)
        x, y = rng.uniform(-0.5, nx - 0.5), rng.uniform(-0.5, ny - 0.5)
        theta = float(np.arctan(length * g.pixel_um / g.thickness_um))
        per_px = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        # muon_deposits' charge per px of length, scaled to this track's
        scaled = dataclasses.replace(model, dedx_e_per_um=per_px / np.hypot(g.pixel_um, g.thickness_um / length))
        dep = muon_deposits(x, y, theta, phi, rng=rng, model=scaled)
        parts.append(dep)
        events.append({"kind": "bright", "x": x, "y": y, "azimuth_deg": float(azimuth % 360.0), "length_px": length,
                       "charge_e": float(dep[3].sum())})
    if parts:
        electrons = render_deposits(shape, *(np.concatenate([p[i] for p in parts]) for i in range(4)))
    else:
        electrons = np.zeros(shape)
    mask = electrons > threshold_e
    return CosmicRayImage(electrons=np.where(mask, electrons, 0.0).astype(np.float32), mask=mask, events=events)


def inject_cosmic_rays(image_adu, cr_electrons, *, gain, saturation=None) -> np.ndarray:
    """Add CR charge to an image; the input is not modified.

    Parameters
    ----------
    image_adu : array_like, shape (ny, nx)
        Clean image in ADU.
    cr_electrons : array_like, shape (ny, nx)
        CR charge in electrons (e.g. :attr:`CosmicRayImage.electrons`).
    gain : float
        Gain in e-/ADU.
    saturation : float, optional
        Saturation in ADU: CR pixels are clipped to it (never below their clean value).

    Returns
    -------
    numpy.ndarray, shape (ny, nx), float32
        ``image_adu + cr_electrons / gain``, a new array.
    """
    image = np.asarray(image_adu)
    cr = np.asarray(cr_electrons)
    if image.shape != cr.shape or image.ndim != 2:
        raise KercrDataError(f"image shape {image.shape} and CR shape {cr.shape} must be the same 2-D shape.")
    if not gain > 0:
        raise KercrDataError(f"gain={gain} e-/ADU must be positive.")
    out = image.astype(np.float32, copy=True)
    hit = cr > 0
    out[hit] += (cr[hit] / gain).astype(np.float32)
    if saturation is not None:
        out[hit] = np.minimum(out[hit], np.maximum(np.float32(saturation), image[hit]))
    return out
