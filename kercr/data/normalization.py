"""The one normalization used by kercr for training and inference.

``normalized = clip((image - sky) / noise, clip_min, clip_max)``

``sky`` is a sigma-clipped median of the finite, unmasked pixels and ``noise`` a robust standard
deviation, both measured on a subsample so a 2048 x 4096 frame costs a few milliseconds. The
noise comes from one of two estimators (``NormalizationConfig.noise_estimator``):

``"mad"``
    1.4826 x the sigma-clipped MAD of the pixel values. Right on a frame of mostly sky; inflated
    by smooth structure that covers much of the frame (star halos, galaxies, nebulae, a spectrum),
    which makes every CR look fainter than it is (1.3-2.6x on small DECam cutouts around saturated
    stars, see BENCHMARKS.md).
``"diff2"``
    The sigma-clipped MAD of pixel differences two pixels apart, ``x[i+2] - x[i]``, over sqrt 2,
    along rows and along columns; the larger of the two. A smooth halo barely changes over two
    pixels, so it does not inflate this; skipping the nearest neighbour keeps most of the noise
    of frames whose neighbouring pixels are correlated (resampled, interpolated or binned data),
    where first differences read low; taking the larger axis keeps the noise of data correlated
    along one axis (spectra). Unbiased on white noise.

Subtracting the sky and dividing by the noise makes the result independent of the units (ADU or
electrons: both statistics scale with the gain) and of an additive sky or bias level, so frames of
different bands, exposure times and instruments look alike to the network.

The scaling is linear by default: a CR is a sharp, very bright, PSF-narrow feature, and a linear
scale keeps the contrast between its peak and its neighbours that tells it from a star.
``asinh_softening`` adds an asinh stretch after the clip (the shipped model uses it) so faint CRs
are not dwarfed by bright sources. Values are clipped to ``[clip_min, clip_max]`` (default ``[-10, 1000]`` noise units)
so that saturated stars (~10^4 sigma) do not dominate the activations; nearly every CR peak is
well inside this range. NaN pixels become ``nan_fill`` (default 0, the sky); callers pass them as
ignored pixels to the loss.

:class:`NormalizationConfig` is JSON-serializable and is stored with a trained model, so inference
normalizes exactly as training did; :class:`NormalizationParams` adds the per-image statistics.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np

from kercr.data.errors import KercrDataError

__all__ = ["NormalizationConfig", "NormalizationParams", "robust_sky_noise", "normalize", "denormalize"]

logger = logging.getLogger(__name__)

METHOD = "sky_mad_linear_v1"
MAD_TO_SIGMA = 1.4826
NOISE_ESTIMATORS = ("mad", "diff2")
DIFF_LAG = 2  # pixels between the two pixels of a difference ("diff2")


@dataclasses.dataclass(frozen=True)
class NormalizationConfig:
    """Constants of the normalization; saved with a model (``to_dict`` / ``from_dict``).

    Attributes
    ----------
    method : str
        Name and version of the method (``"sky_mad_linear_v1"``).
    clip_min, clip_max : float or None
        Output range in noise units; ``None`` disables that side.
    sigma_clip : float
        Clipping threshold (in robust sigma) of the sky/noise iterations.
    n_iter : int
        Number of sigma-clipping iterations.
    sample_size : int
        Approximate number of pixels (regular grid subsample) used for the statistics.
    nan_fill : float
        Output value of NaN (and inf) input pixels, in noise units.
    asinh_softening : float or None
        If set (``s``, in noise units), the clipped value ``x`` becomes ``s * asinh(x / s)``:
        linear within a few ``s`` of the sky, logarithmic above, so faint CR tracks (5-20 sigma)
        are not dwarfed by stars and bright CRs (10^2-10^3 sigma) in the network's activations.
        None (the default): linear.
    noise_estimator : {"mad", "diff2"}
        How ``noise`` is measured (see the module docstring): ``"mad"`` (the default, and what
        models saved without this key used) or ``"diff2"`` (halo-robust; the shipped model's).
    """

    method: str = METHOD
    clip_min: float | None = -10.0
    clip_max: float | None = 1000.0
    sigma_clip: float = 3.0
    n_iter: int = 5
    sample_size: int = 200_000
    nan_fill: float = 0.0
    asinh_softening: float | None = None
    noise_estimator: str = "mad"

    def __post_init__(self):
        if self.method != METHOD:
            raise KercrDataError(f"unknown normalization method {self.method!r}; kercr knows {METHOD!r}.")
        if self.clip_min is not None and self.clip_max is not None and not self.clip_min < self.clip_max:
            raise KercrDataError(f"clip_min={self.clip_min} must be below clip_max={self.clip_max}.")
        if self.sigma_clip <= 0 or self.n_iter < 0 or self.sample_size < 100:
            raise KercrDataError("sigma_clip must be > 0, n_iter >= 0 and sample_size >= 100.")
        if self.asinh_softening is not None and not self.asinh_softening > 0:
            raise KercrDataError(f"asinh_softening={self.asinh_softening!r} must be positive (noise units), or None.")
        if self.noise_estimator not in NOISE_ESTIMATORS:
            raise KercrDataError(f"noise_estimator={self.noise_estimator!r} is not one of {NOISE_ESTIMATORS}: 'mad' "
                                 "(MAD of the pixel values) or 'diff2' (MAD of differences two pixels apart).")

    def to_dict(self) -> dict:
        """JSON-serializable dict of the constants."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> "NormalizationConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(**config)


@dataclasses.dataclass(frozen=True)
class NormalizationParams:
    """The constants plus the statistics measured on one image.

    Attributes
    ----------
    config : NormalizationConfig
        Constants used.
    sky : float
        Sky level subtracted, in the image's units (ADU or e-).
    noise : float
        Noise (robust standard deviation) divided by, in the image's units.
    n_pixels : int
        Number of pixels the statistics were measured on.
    """

    config: NormalizationConfig
    sky: float
    noise: float
    n_pixels: int

    def to_dict(self) -> dict:
        """JSON-serializable dict (method constants and per-image statistics)."""
        return {**self.config.to_dict(), "sky": self.sky, "noise": self.noise, "n_pixels": self.n_pixels}

    def to_json(self) -> str:
        """The dict of :meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "NormalizationParams":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        stats = {k: d.pop(k) for k in ("sky", "noise", "n_pixels")}
        return cls(config=NormalizationConfig.from_dict(d), **stats)


def _subsample(image: np.ndarray, mask, sample_size: int) -> np.ndarray:
    ny, nx = image.shape
    step = _odd_step(max(1, int(np.sqrt(ny * nx / sample_size))))
    values = image[::step, ::step]
    good = np.isfinite(values)
    if mask is not None:
        good &= ~mask[::step, ::step]
    return values[good].astype(np.float64)


def _odd_step(step: int) -> int:
    # An odd step avoids locking onto every second column of a two-amplifier pattern.
    return step + 1 if step > 1 and step % 2 == 0 else step


def _diff_sample(image: np.ndarray, mask, sample_size: int, axis: int) -> np.ndarray:
    """Differences ``x[i + DIFF_LAG] - x[i]`` along ``axis`` in every ``step``-th line (float64)."""
    if axis == 0:
        image = image.T
        mask = None if mask is None else mask.T
    ny, nx = image.shape
    pairs = max(nx - DIFF_LAG, 0)
    step = _odd_step(max(1, int(ny * pairs / sample_size))) if pairs else 1
    rows = image[::step].astype(np.float64)
    d = rows[:, DIFF_LAG:] - rows[:, :-DIFF_LAG]
    good = np.isfinite(d)
    if mask is not None:
        m = mask[::step]
        good &= ~(m[:, DIFF_LAG:] | m[:, :-DIFF_LAG])
    return d[good]


def _clipped_center_noise(values: np.ndarray, config: NormalizationConfig) -> tuple[float, float, np.ndarray]:
    """Sigma-clipped median and 1.4826 x MAD of a 1-D sample (std if the MAD is 0); the kept values."""
    center = float(np.median(values))
    noise = MAD_TO_SIGMA * float(np.median(np.abs(values - center)))
    for _ in range(config.n_iter):
        if noise <= 0:
            break
        keep = np.abs(values - center) < config.sigma_clip * noise
        if keep.all():
            break
        values = values[keep]
        center = float(np.median(values))
        noise = MAD_TO_SIGMA * float(np.median(np.abs(values - center)))
    if not noise > 0:
        # Quantized or constant images have MAD 0; fall back to the standard deviation.
        noise = float(np.std(values))
    return center, noise, values


def _too_few(n: int, shape, what: str) -> KercrDataError:
    return KercrDataError(
        f"only {n} finite unmasked {what} in the statistics sample of a {shape} image; "
        "the image is (almost) all NaN or masked, or too small: the statistics need 10 finite unmasked pixels and, "
        "with noise_estimator='diff2', 10 pairs of them two pixels apart along each axis (5 x 5 pixels at least). "
        "Check the mask and the data."
    )


def robust_sky_noise(image, *, mask=None, config: NormalizationConfig | None = None) -> tuple[float, float, int]:
    """Sigma-clipped median sky and robust noise of an image.

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Image in any units; NaN/inf pixels are ignored.
    mask : array_like of bool, shape (ny, nx), optional
        True for pixels to ignore (saturated, bad, known CRs).
    config : NormalizationConfig, optional
        Estimator, clipping threshold, iterations and sample size.

    Returns
    -------
    sky, noise : float
        In the image's units. ``noise`` by ``config.noise_estimator`` (module docstring).
    n_pixels : int
        Pixels left after clipping in the sky sample.
    """
    config = config or NormalizationConfig()
    image = np.asarray(image)
    if image.ndim != 2:
        raise KercrDataError(f"image has shape {image.shape}; pass a 2-D (ny, nx) image.")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            raise KercrDataError(f"mask shape {mask.shape} differs from image shape {image.shape}.")
    values = _subsample(image, mask, config.sample_size)
    if values.size < 10:
        raise _too_few(values.size, image.shape, "pixels")
    sky, noise, values = _clipped_center_noise(values, config)
    if config.noise_estimator == "diff2":
        noise = 0.0
        for axis in (0, 1):
            diffs = _diff_sample(image, mask, config.sample_size, axis)
            if diffs.size < 10:
                raise _too_few(diffs.size, image.shape, f"pixel pairs {DIFF_LAG} apart")
            noise = max(noise, _clipped_center_noise(diffs, config)[1] / np.sqrt(2))
    if not noise > 0:
        raise KercrDataError(
            "the image is constant over its unmasked pixels (noise 0), so it cannot be normalized. "
            "Pass a real exposure, not a blank or synthetic constant frame."
        )
    return sky, noise, int(values.size)


def normalize(image, *, mask=None, config: NormalizationConfig | None = None) -> tuple[np.ndarray, NormalizationParams]:
    """Normalize an image to sky-subtracted noise units (the one kercr normalization).

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Image in ADU or electrons, with or without sky/bias; not modified.
    mask : array_like of bool, shape (ny, nx), optional
        Pixels excluded from the statistics (they are still normalized).
    config : NormalizationConfig, optional
        Constants; pass the one stored with a model at inference.

    Returns
    -------
    normalized : numpy.ndarray, shape (ny, nx), float32
        ``clip((image - sky) / noise, clip_min, clip_max)`` (then ``s asinh(x / s)`` when
        ``asinh_softening`` is set); NaN/inf input -> ``nan_fill``.
    params : NormalizationParams
        Constants and the measured ``sky`` and ``noise``.
    """
    config = config or NormalizationConfig()
    image = np.asarray(image)
    sky, noise, n = robust_sky_noise(image, mask=mask, config=config)
    out = image.astype(np.float32, copy=True)
    out -= np.float32(sky)
    out *= np.float32(1.0 / noise)
    bad = ~np.isfinite(out)
    if bad.any():
        out[bad] = config.nan_fill
    if config.clip_min is not None or config.clip_max is not None:
        np.clip(out, config.clip_min, config.clip_max, out=out)
    if config.asinh_softening is not None:
        soft = np.float32(config.asinh_softening)
        out *= 1 / soft
        np.arcsinh(out, out=out)
        out *= soft
    return out, NormalizationParams(config=config, sky=sky, noise=noise, n_pixels=n)


def denormalize(normalized, params: NormalizationParams) -> np.ndarray:
    """Map normalized values back to image units: ``normalized * noise + sky`` (float32).

    Clipped pixels do not come back to their original values.
    """
    normalized = np.asarray(normalized, dtype=np.float32)
    if params.config.asinh_softening is not None:
        soft = np.float32(params.config.asinh_softening)
        normalized = np.sinh(normalized / soft) * soft
    return (normalized * np.float32(params.noise) + np.float32(params.sky)).astype(np.float32)
