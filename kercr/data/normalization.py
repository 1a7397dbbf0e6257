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
import warnings

import numpy as np

from kercr.data.errors import KercrDataError

__all__ = ["NormalizationConfig", "NormalizationParams", "robust_sky_noise", "local_background_noise", "normalize",
           "denormalize"]

logger = logging.getLogger(__name__)

METHOD = "sky_mad_linear_v1"
MAD_TO_SIGMA = 1.4826
NOISE_ESTIMATORS = ("mad", "diff2")
DIFF_LAG = 2  # pixels between the two pixels of a difference ("diff2")
#: "global": one sky and one noise per frame; "local": a background and a noise map (blocks).
NOISE_MODELS = ("global", "local")
#: The least fraction of good pixels (and pixel pairs) a block needs for its own statistics.
MIN_BLOCK_FRACTION = 0.25
#: Standard deviation of a unit Gaussian truncated at +-3 sigma (the clipped std is divided by it).
TRUNCATED_STD_3SIGMA = 0.986583


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
        With ``noise_model="local"`` it sets only the frame-wide statistics in
        :class:`NormalizationParams`; the maps have their own estimator.
    noise_model : {"global", "local"}
        ``"global"`` (the default, and what models saved without this key used): one sky and one
        noise for the whole frame. ``"local"``: a background map and a noise map from
        ``block_size`` x ``block_size`` pixel blocks (:func:`local_background_noise`), so a
        pixel on a galaxy, nebula or gradient is measured against its own neighbourhood's noise.
    block_size : int
        Block side in pixels of ``noise_model="local"`` (>= 8).
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
    noise_model: str = "global"
    block_size: int = 32

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
        if self.noise_model not in NOISE_MODELS:
            raise KercrDataError(f"noise_model={self.noise_model!r} is not one of {NOISE_MODELS}: 'global' (one sky "
                                 "and noise per frame) or 'local' (background and noise maps from pixel blocks).")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 8:
            raise KercrDataError(f"block_size={self.block_size!r} must be an integer >= 8 (pixels), e.g. 32.")

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


def _blocks(a: np.ndarray, bh: int, bw: int, by: int, bx: int) -> np.ndarray:
    """``a`` (ny, nx) cut into (by, bx) blocks of ``bh x bw`` (NaN-padded or cropped), as
    (by, bx, bh * bw)."""
    ny, nx = a.shape
    if (ny, nx) != (by * bh, bx * bw):
        out = np.full((by * bh, bx * bw), np.nan, dtype=a.dtype)
        out[: min(ny, by * bh), : min(nx, bx * bw)] = a[: by * bh, : bx * bw]
        a = out
    return a.reshape(by, bh, bx, bw).transpose(0, 2, 1, 3).reshape(by, bx, bh * bw)


def _median_last(x: np.ndarray) -> np.ndarray:
    """Median along the last axis ignoring NaN (NaN where a row is all NaN); numpy's fast
    median on the rows without NaN, ``nanmedian`` only on the others."""
    flat = x.reshape(-1, x.shape[-1])
    has_nan = np.isnan(flat).any(-1)
    out = np.empty(flat.shape[0], dtype=np.float64)
    if (~has_nan).any():
        out[~has_nan] = np.median(flat[~has_nan], axis=-1)
    if has_nan.any():
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
            out[has_nan] = np.nanmedian(flat[has_nan], axis=-1)
    return out.reshape(x.shape[:-1])


def _clipped_block_std(d: np.ndarray) -> np.ndarray:
    """3-sigma-clipped standard deviation along the last axis (two iterations from the MAD),
    ignoring NaN; NaN where fewer than 2 values are left. ``d`` float32, arithmetic in float32
    (sums of a few hundred values; float32 keeps the full-frame pass fast).

    The clipped std is divided by the std of a unit Gaussian truncated at 3 sigma, so it is
    unbiased on Gaussian noise; unlike the MAD it is not quantized on integer-valued data.
    """
    center = _median_last(d)[..., None].astype(np.float32)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks (no degrees of freedom)
        dev = np.abs(d - center)
        sigma = np.float32(MAD_TO_SIGMA) * _median_last(dev)[..., None].astype(np.float32)
        if not (sigma > 0).all():  # integer data with a MAD of 0: start from the std
            sigma = np.where(sigma > 0, sigma, np.nanstd(d, axis=-1, keepdims=True)).astype(np.float32)
        for _ in range(2):
            z = d - center
            keep = np.abs(z) < np.float32(3.0) * sigma  # False on NaN
            k = keep.sum(-1, keepdims=True, dtype=np.float32)
            z[~keep] = 0.0
            mean = z.sum(-1, keepdims=True) / k
            var = np.einsum("...i,...i->...", z, z)[..., None] / k - mean * mean
            sigma = np.where(k > 1, np.sqrt(np.maximum(var, 0)) / np.float32(TRUNCATED_STD_3SIGMA), np.nan)
            sigma = sigma.astype(np.float32)
            center = center + np.where(k > 1, mean, np.float32(0.0))
    return sigma[..., 0].astype(np.float64)


def _fill_and_smooth(grid: np.ndarray, fallback: float) -> np.ndarray:
    """Blocks without a value (NaN) take the median of their finite 3 x 3 neighbours (else
    ``fallback``), then every block becomes the median of its 3 x 3 neighbourhood (edges
    reflected), so one odd block (a saturated star, a dense CR shower) cannot stand out."""
    padded = np.pad(grid, 1, mode="reflect" if min(grid.shape) > 1 else "edge")
    by, bx = grid.shape
    stack = np.stack([padded[i:i + by, j:j + bx] for i in range(3) for j in range(3)])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
        smoothed = np.nanmedian(stack, axis=0)
    return np.where(np.isfinite(smoothed), smoothed, fallback)


def _upsample_bilinear(grid: np.ndarray, shape, block: int) -> np.ndarray:
    """Bilinear interpolation of a block grid to pixels (float32), block values at block
    centres ``(k + 0.5) * block - 0.5``, constant beyond the outer centres. Separable: along
    the rows on the block grid (float64), then along the columns at full size (float32)."""
    out = grid.astype(np.float64)
    for axis, n in enumerate(shape):
        nb = grid.shape[axis]
        pos = (np.arange(n, dtype=np.float64) + 0.5) / block - 0.5
        pos = np.clip(pos, 0.0, nb - 1.0)
        lo = np.minimum(np.floor(pos).astype(np.int64), max(nb - 2, 0))
        hi = np.minimum(lo + 1, nb - 1)
        frac = (pos - lo).reshape((-1, 1) if axis == 0 else (1, -1))
        if axis == 1:
            out, frac = out.astype(np.float32), frac.astype(np.float32)
        a, b = np.take(out, lo, axis=axis), np.take(out, hi, axis=axis)
        b -= a
        b *= frac
        a += b
        out = a
    return out.astype(np.float32, copy=False)


def local_background_noise(image, *, mask=None, config: NormalizationConfig | None = None):
    """Background and noise maps of an image, from ``config.block_size`` pixel blocks.

    In each block of ``b x b`` pixels (the frame padded to whole blocks): the background is the
    median of the finite, unmasked pixels; the noise is the 3-sigma-clipped standard deviation
    of the differences of pixels two apart (``x[i+2] - x[i]``, over sqrt 2; the larger of the
    row and the column estimate), which smooth light (a galaxy, a nebula, a gradient) barely
    changes, and which stays continuous on integer-valued data where a MAD is quantized.
    A block with fewer than ``MIN_BLOCK_FRACTION`` good pixels (or pairs) takes the median of
    its neighbours; then each block grid is median-filtered over 3 x 3 blocks and interpolated
    bilinearly between block centres. Per pixel, this is the Poisson noise of the local sky and
    smooth sources plus read noise, measured instead of modelled, so it needs no gain (the
    frame's gain and read noise are not used: a header's values are often those of the raw
    data, not of the processed frame at hand). Compact sources (stars, galaxy cores) smaller than a
    block keep the noise of their block, as with one noise per frame. In the outer ring of
    blocks the 3 x 3 median, reflected at the edge, takes the next block inward where the
    background has a steep gradient (up to ~25 % on the noise, a few sigma on the background);
    the trained models saw it so (a change is for the next training round).

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Image in any units (ADU or e-); NaN/inf pixels are ignored. Not modified.
    mask : array_like of bool, shape (ny, nx), optional
        Pixels to leave out of the statistics (saturated, bad).
    config : NormalizationConfig, optional
        ``block_size`` and the frame-wide fallback statistics.

    Returns
    -------
    background, noise : numpy.ndarray, shape (ny, nx), float32
        In the image's units; ``noise`` > 0 everywhere.
    sky, sigma : float
        Frame-wide values: the median of the block backgrounds and of the block noises.
    """
    config = config or NormalizationConfig()
    image = np.asarray(image)
    if image.ndim != 2:
        raise KercrDataError(f"image has shape {image.shape}; pass a 2-D (ny, nx) image.")
    good = np.isfinite(image)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            raise KercrDataError(f"mask shape {mask.shape} differs from image shape {image.shape}.")
        good &= ~mask
    sky0, sigma0, _ = robust_sky_noise(image, mask=mask, config=dataclasses.replace(config, noise_estimator="diff2"))
    b = int(config.block_size)
    ny, nx = image.shape
    by, bx = -(-ny // b), -(-nx // b)
    data = np.where(good, image, np.nan).astype(np.float32)
    blocks = _blocks(data, b, b, by, bx)
    background = _median_last(blocks)
    background[np.isfinite(blocks).sum(-1) < MIN_BLOCK_FRACTION * b * b] = np.nan
    noise = np.full((by, bx), -np.inf)
    # Differences of every second line only (half the work; the two halves are alike).
    half = (b + 1) // 2
    for d, bh, bw in ((data[::2, DIFF_LAG:] - data[::2, :-DIFF_LAG], half, b),   # along rows
                      (data[DIFF_LAG:, ::2] - data[:-DIFF_LAG, ::2], b, half)):  # along columns
        dblocks = _blocks(d, bh, bw, by, bx)
        sigma = _clipped_block_std(dblocks) / np.sqrt(2)
        sigma[np.isfinite(dblocks).sum(-1) < MIN_BLOCK_FRACTION * bh * bw] = np.nan
        noise = np.fmax(noise, sigma)
    noise[~(noise > 0)] = np.nan
    background = _fill_and_smooth(background, sky0)
    noise = _fill_and_smooth(noise, sigma0)
    sky, sigma = float(np.median(background)), float(np.median(noise))
    return (_upsample_bilinear(background, image.shape, b), _upsample_bilinear(noise, image.shape, b), sky, sigma)


def _stretch(out: np.ndarray, config: NormalizationConfig) -> np.ndarray:
    """NaN/inf -> ``nan_fill``, clip, optional asinh, in place."""
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
    return out


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
    if config.noise_model == "local":
        background, noise_map, sky, noise = local_background_noise(image, mask=mask, config=config)
        out = image.astype(np.float32, copy=True)
        out -= background
        out /= noise_map
        n = int(np.isfinite(image).sum() if mask is None else (np.isfinite(image) & ~np.asarray(mask, bool)).sum())
        return _stretch(out, config), NormalizationParams(config=config, sky=sky, noise=noise, n_pixels=n)
    sky, noise, n = robust_sky_noise(image, mask=mask, config=config)
    out = image.astype(np.float32, copy=True)
    out -= np.float32(sky)
    out *= np.float32(1.0 / noise)
    return _stretch(out, config), NormalizationParams(config=config, sky=sky, noise=noise, n_pixels=n)


def denormalize(normalized, params: NormalizationParams) -> np.ndarray:
    """Map normalized values back to image units: ``normalized * noise + sky`` (float32).

    Clipped pixels do not come back to their original values.
    """
    normalized = np.asarray(normalized, dtype=np.float32)
    if params.config.asinh_softening is not None:
        soft = np.float32(params.config.asinh_softening)
        normalized = np.sinh(normalized / soft) * soft
    return (normalized * np.float32(params.noise) + np.float32(params.sky)).astype(np.float32)
