"""The one normalization used by kercr for training and inference.

``normalized = clip((image - sky) / noise, clip_min, clip_max)``

``sky`` is a sigma-clipped median of the finite, unmasked pixels and ``noise`` a robust standard
deviation, both measured on a subsample so a 2048 x 4096 frame costs a few milliseconds. The
noise comes from one of three estimators (``NormalizationConfig.noise_estimator``):

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
``"diff2_std"``
    The same differences, their 3-sigma-clipped standard deviation (two iterations from the MAD,
    divided by the std of a unit Gaussian truncated at 3 sigma: the statistic of the block maps,
    :func:`kercr.data.robust_stats.clipped_block_std`). A MAD of integer-valued data is quantized
    to whole and half ADU and is 0 when most differences are 0, so ``"diff2"`` misreads the noise
    of raw, high-gain, low-sky frames (0.8-1.8x at a noise of 0.5-1.6 ADU, and 10x where the MAD
    is 0 and the unclipped std takes over); the clipped std stays within 2 % there and agrees with
    ``"diff2"`` on continuous noise.

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
import numbers

import numpy as np

from kercr.config import LOCAL_AXES, LOCAL_EDGES, NOISE_ESTIMATORS, NOISE_MODELS  # one definition of the choices, shared with the CLI
from kercr.data import robust_stats
from kercr.data.errors import KercrDataError, UndetectableImageError
from kercr.data.masks import as_bool_mask
from kercr.data.robust_stats import (
    clipped_block_std,
    clipped_center_noise,
    cut_blocks,
    diff_sample,
    fill_and_smooth,
    grid_rows,
    median_last,
    subsample,
    upsample_bilinear,
)

__all__ = ["NormalizationConfig", "NormalizationParams", "frame_noise", "robust_sky_noise", "local_background_noise",
           "local_block_grids", "normalize", "input_maps", "normalize_like", "denormalize"]

logger = logging.getLogger(__name__)

METHOD = "sky_mad_linear_v1"
#: Pixel rows of the full-size maps made at a time when :func:`normalize` applies them: bounds
#: their memory (a few 256-row strips instead of five full-frame float32 arrays); the result is
#: the same to the bit.
MAP_CHUNK_ROWS = 256
#: The least fraction of good pixels (and pixel pairs) a block needs for its own statistics.
MIN_BLOCK_FRACTION = 0.25
#: The statistics' constants (:mod:`kercr.data.robust_stats`), which the TensorFlow twin of this
#: normalization (:mod:`kercr.export.tf_normalization`) shares.
MAD_TO_SIGMA, TRUNCATED_STD_3SIGMA = robust_stats.MAD_TO_SIGMA, robust_stats.TRUNCATED_STD_3SIGMA
DIFF_LAG = robust_stats.DIFF_LAG  # pixels between the two pixels of a difference ("diff2")


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
    noise_estimator : {"mad", "diff2", "diff2_std"}
        How ``noise`` is measured (see the module docstring): ``"mad"`` (the default, and what
        models saved without this key used), ``"diff2"`` (halo-robust; the shipped model's) or
        ``"diff2_std"`` (as ``"diff2"``, and right on integer-valued data too).
        With ``noise_model="local"`` it sets only the frame-wide statistics in
        :class:`NormalizationParams`; the maps have their own estimator.
    noise_model : {"global", "local", "relative"}
        ``"global"`` (the default, and what models saved without this key used): one sky and one
        noise for the whole frame. ``"local"``: a background map and a noise map from
        ``block_size`` x ``block_size`` pixel blocks (:func:`local_background_noise`), so a
        pixel on a galaxy, nebula or gradient is measured against its own neighbourhood's noise.
        ``"relative"``: the background map of ``"local"``, and the frame's one noise (as
        ``"global"``, by ``noise_estimator``) scaled per pixel by the block noise map over its
        median (``noise * map / median(map)``). Where sky and noise are the same over the frame
        (a plain field, a cutout of a few blocks) the input is the global one, which the shipped
        model was trained on, whatever the estimators' differences (rows with structure, integer
        data); where a galaxy, nebula or gradient raises them, each pixel is measured against its
        own background and noise (with one sky per frame, a galaxy over half the field puts the
        sky on the galaxy and the faint half at the clip).
    block_size : int
        Block side in pixels of ``noise_model="local"`` and ``"relative"`` (>= 8).
    local_axis : {"larger", "smaller"}
        ``noise_model="local"`` or ``"relative"``: a block's noise is the larger (the default, and what models
        saved without this key used) or the smaller of its row and column estimates. The larger
        keeps noise correlated along one axis (smoothed or resampled data); the smaller is not
        inflated by structure along one axis (on astroscrappy's GMOS frame, whose rows carry
        structure, the median block reads 12.2 ADU along rows and 6.1 along columns, where the
        sky and read noise give 5.6).
    local_edges : {"reflect", "nearest"}
        ``noise_model="local"`` or ``"relative"``: padding of the block grid for its 3 x 3 median: ``"reflect"``
        (the default, and what models saved without this key used) takes the next block inward
        at the edge, so on a steep gradient the outer ring reads one block inward;
        ``"nearest"`` repeats the edge block.
    local_gate : float or None
        ``noise_model="relative"`` only: use the maps only where the background departs from the
        frame's sky. With ``d = |background - sky| / noise`` (the frame's one sky and noise) and
        ``g = clip(d / local_gate - 1, 0, 1)``, a pixel's background is ``sky + g (background - sky)``
        and its noise ``noise (1 + g (map / median(map) - 1))``: the global input where ``d <=
        local_gate`` (a plain frame, a cutout whose blocks follow compact galaxies and stars by a
        few noise units), the full relative input where ``d >= 2 local_gate`` (a galaxy or nebula
        over much of the field), a linear blend between. Noise units, > 0; None (the default, and
        what models saved without this key used): the maps everywhere.
    local_min_blocks : int or None
        ``noise_model="relative"`` only: a frame narrower than ``local_min_blocks`` blocks on
        either side (``min(ny, nx) < local_min_blocks * block_size``) gets the global input, one
        sky and noise, since a 3 x 3 block median over a grid of one or two blocks cannot tell a
        galaxy from the sky. None (the default, and what models saved without this key used):
        the maps on every frame.
    header_noise : (float, float) or None
        ``(low, high)``: where the frame's gain and read noise are known (``normalize(...,
        gain=, readnoise=)``: a header's ``GAIN``/``RDNOISE``, a training frame's imager), the
        frame noise is the Poisson-plus-read-noise model of its sky, ``sqrt(sky / gain +
        (readnoise / gain)^2)`` (image units; gain in e- per unit, read noise in e-), whenever the
        measured noise is ``low`` to ``high`` times that model: on frames where galaxies or
        nebulae cover much of the field the measured noise takes in their photon noise and
        texture (1.1-1.3x on source-covered DECam cutouts), the model does not. Outside the band
        (a sky-subtracted frame, a header describing the raw data rather than the processed frame,
        a bias pedestal) the measured noise stays. ``noise_model="global"`` and ``"relative"``
        (the frame noise the maps scale); None (the default, and what models saved without this
        key used): always measured.
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
    local_axis: str = "larger"
    local_edges: str = "reflect"
    local_gate: float | None = None
    local_min_blocks: int | None = None
    header_noise: tuple | None = None

    def __post_init__(self):
        if self.method != METHOD:
            raise KercrDataError(f"unknown normalization method {self.method!r}; kercr knows {METHOD!r}.")
        if self.clip_min is not None and self.clip_max is not None and not self.clip_min < self.clip_max:
            raise KercrDataError(f"clip_min={self.clip_min} must be below clip_max={self.clip_max}.")
        if (not self.sigma_clip > 0 or isinstance(self.n_iter, bool) or not isinstance(self.n_iter, int)
                or self.n_iter < 0 or self.sample_size < 100):
            raise KercrDataError(f"sigma_clip={self.sigma_clip!r} must be > 0, n_iter={self.n_iter!r} a whole number "
                                 f">= 0 and sample_size={self.sample_size!r} >= 100.")
        if not np.isfinite(self.nan_fill):
            raise KercrDataError(f"nan_fill={self.nan_fill!r} must be a finite number (the value of NaN/inf pixels).")
        if self.asinh_softening is not None and not self.asinh_softening > 0:
            raise KercrDataError(f"asinh_softening={self.asinh_softening!r} must be positive (noise units), or None.")
        if self.noise_estimator not in NOISE_ESTIMATORS:
            raise KercrDataError(f"noise_estimator={self.noise_estimator!r} is not one of {NOISE_ESTIMATORS}: 'mad' "
                                 "(MAD of the pixel values), 'diff2' (MAD of differences two pixels apart) or "
                                 "'diff2_std' (their clipped standard deviation, for integer-valued data).")
        if self.noise_model not in NOISE_MODELS:
            raise KercrDataError(f"noise_model={self.noise_model!r} is not one of {NOISE_MODELS}: 'global' (one sky "
                                 "and noise per frame), 'local' (background and noise maps from pixel blocks) or "
                                 "'relative' (the background map; the frame's noise scaled by the block noise map).")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 8:
            raise KercrDataError(f"block_size={self.block_size!r} must be an integer >= 8 (pixels), e.g. 32.")
        if self.local_axis not in LOCAL_AXES:
            raise KercrDataError(f"local_axis={self.local_axis!r} is not one of {LOCAL_AXES}: a block's noise from the "
                                 "larger or the smaller of its row and column estimates.")
        if self.local_edges not in LOCAL_EDGES:
            raise KercrDataError(f"local_edges={self.local_edges!r} is not one of {LOCAL_EDGES}: how the block grid "
                                 "is padded for its 3 x 3 median.")
        gate, min_blocks = self.local_gate, self.local_min_blocks
        if gate is not None and (isinstance(gate, (bool, np.bool_)) or not isinstance(gate, numbers.Real)
                                 or not 0 < gate < float("inf")):
            raise KercrDataError(f"local_gate={gate!r} must be a positive number of noise units (e.g. 5), or None "
                                 "for the maps everywhere.")
        if min_blocks is not None and (isinstance(min_blocks, (bool, np.bool_))
                                       or not isinstance(min_blocks, numbers.Integral) or min_blocks < 1):
            raise KercrDataError(f"local_min_blocks={min_blocks!r} must be a whole number of blocks >= 1 (e.g. 3), "
                                 "or None for the maps on every frame.")
        band = self.header_noise
        if band is not None:
            try:
                low, high = (float(v) for v in band)
            except (TypeError, ValueError):
                low = high = float("nan")
            if isinstance(band, (str, bytes)) or not 0 < low <= high < float("inf"):
                raise KercrDataError(f"header_noise={band!r} must be (low, high) with 0 < low <= high: the band of "
                                     "measured / modelled noise where the model is used, e.g. (0.9, 1.6); or None.")
            if self.noise_model == "local":
                raise KercrDataError("header_noise applies to noise_model='global' or 'relative' (a frame noise); "
                                     "the 'local' maps measure every block. Drop header_noise or change noise_model.")
            object.__setattr__(self, "header_noise", (low, high))
        # numpy scalars are taken as Python numbers, so the config saves as JSON and compares equal.
        if gate is not None:
            object.__setattr__(self, "local_gate", float(gate))
        if min_blocks is not None:
            object.__setattr__(self, "local_min_blocks", int(min_blocks))
        for name, value in (("local_gate", gate), ("local_min_blocks", min_blocks)):
            if value is not None and self.noise_model != "relative":
                raise KercrDataError(f"{name}={value!r} applies to noise_model='relative' only; this config has "
                                     f"noise_model={self.noise_model!r}. Drop {name} or set noise_model='relative'.")

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


def _too_few(n: int, shape, what: str) -> UndetectableImageError:
    return UndetectableImageError(
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
        mask = as_bool_mask(mask, image.shape, "mask")
    values = subsample(image, mask, config.sample_size)
    if values.size < 10:
        raise _too_few(values.size, image.shape, "pixels")
    sky, noise, values = clipped_center_noise(values, sigma_clip=config.sigma_clip, n_iter=config.n_iter)
    if config.noise_estimator in ("diff2", "diff2_std"):
        noise = 0.0
        for axis in (0, 1):
            diffs = diff_sample(image, mask, config.sample_size, axis)
            if diffs.size < 10:
                raise _too_few(diffs.size, image.shape, f"pixel pairs {DIFF_LAG} apart")
            if config.noise_estimator == "diff2":
                _, diff_noise, _ = clipped_center_noise(diffs, sigma_clip=config.sigma_clip, n_iter=config.n_iter)
            else:  # the block maps' clipped std: continuous on integer data, where a MAD is quantized
                diff_noise = float(clipped_block_std(diffs.astype(np.float32)[None, :])[0])
            noise = max(noise, diff_noise / np.sqrt(2))
    if not noise > 0:
        raise UndetectableImageError(
            "the image is constant over its unmasked pixels (noise 0), so it cannot be normalized. "
            "Pass a real exposure, not a blank or synthetic constant frame."
        )
    return sky, noise, int(values.size)


def local_background_noise(image, *, mask=None, config: NormalizationConfig | None = None, frame_stats=None):
    """Background and noise maps of an image, from ``config.block_size`` pixel blocks.

    The block grids of :func:`local_block_grids` (see there for the statistics and the
    parameters), interpolated bilinearly between block centres to every pixel.

    Returns
    -------
    background, noise : numpy.ndarray, shape (ny, nx), float32
        In the image's units; ``noise`` > 0 everywhere.
    sky, sigma : float
        Frame-wide values: the median of the block backgrounds and of the block noises.
    """
    config = config or NormalizationConfig()
    background, noise, sky, sigma = local_block_grids(image, mask=mask, config=config, frame_stats=frame_stats)
    shape, b = np.shape(image), int(config.block_size)
    return upsample_bilinear(background, shape, b), upsample_bilinear(noise, shape, b), sky, sigma


def local_block_grids(image, *, mask=None, config: NormalizationConfig | None = None, frame_stats=None):
    """Background and noise of an image's ``config.block_size`` pixel blocks (the grids that
    :func:`local_background_noise` interpolates to every pixel).

    In each block of ``b x b`` pixels (the frame padded to whole blocks): the background is the
    median of the finite, unmasked pixels; the noise is the 3-sigma-clipped standard deviation
    of the differences of pixels two apart (``x[i+2] - x[i]``, over sqrt 2; the larger, or with
    ``config.local_axis="smaller"`` the smaller, of the row and the column estimate), which
    smooth light (a galaxy, a nebula, a gradient) barely changes, and which stays continuous on
    integer-valued data where a MAD is quantized. A block with fewer than
    ``MIN_BLOCK_FRACTION`` good pixels (or pairs) takes the median of its neighbours; then each
    block grid is median-filtered over 3 x 3 blocks (and :func:`local_background_noise`
    interpolates it bilinearly between block centres). Per pixel, this is the Poisson noise of
    the local sky and smooth sources plus read noise, measured instead of modelled, so it needs no gain (the
    frame's gain and read noise are not used: a header's values are often those of the raw
    data, not of the processed frame at hand). Compact sources (stars, galaxy cores) smaller than a
    block keep the noise of their block, as with one noise per frame. In the outer ring of
    blocks the 3 x 3 median, reflected at the edge, takes the next block inward where the
    background has a steep gradient (up to ~25 % on the noise, a few sigma on the background);
    the first trained models saw it so; ``config.local_edges="nearest"`` repeats the edge block instead.

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Image in any units (ADU or e-); NaN/inf pixels are ignored. Not modified.
    mask : array_like of bool, shape (ny, nx), optional
        Pixels to leave out of the statistics (saturated, bad).
    config : NormalizationConfig, optional
        ``block_size`` and the frame-wide fallback statistics.
    frame_stats : (float, float), optional
        The frame's ``(sky, noise)`` of :func:`robust_sky_noise` with ``noise_estimator="diff2"``
        and this ``mask`` and ``config``, when the caller has measured them (the fallback of empty
        blocks); measured here otherwise.

    Returns
    -------
    background, noise : numpy.ndarray, shape (ceil(ny / b), ceil(nx / b)), float64
        Per block, in the image's units, after the fill and the 3 x 3 median; ``noise`` > 0.
    sky, sigma : float
        Frame-wide values: the median of the block backgrounds and of the block noises.
    """
    config = config or NormalizationConfig()
    image = np.asarray(image)
    if image.ndim != 2:
        raise KercrDataError(f"image has shape {image.shape}; pass a 2-D (ny, nx) image.")
    if mask is not None:
        mask = as_bool_mask(mask, image.shape, "mask")
    if frame_stats is None:
        diff2 = dataclasses.replace(config, noise_estimator="diff2")
        sky0, sigma0, _ = robust_sky_noise(image, mask=mask, config=diff2)
    else:
        sky0, sigma0 = frame_stats
    b = int(config.block_size)
    ny, nx = image.shape
    by, bx = -(-ny // b), -(-nx // b)
    half = (b + 1) // 2
    background, noise = np.empty((by, bx)), np.empty((by, bx))
    combine = np.fmax if config.local_axis == "larger" else np.fmin
    # A strip of block rows at a time (about MAP_CHUNK_ROWS pixel rows): every statistic is per
    # block, so the grids are those of the whole frame at once, with a strip's memory.
    strip = max(1, MAP_CHUNK_ROWS // b)
    for k0 in range(0, by, strip):
        k1 = min(k0 + strip, by)
        blocks = cut_blocks(_good_values(image, mask, k0 * b, k1 * b), b, b, k1 - k0, bx)
        level = median_last(blocks)
        level[np.isfinite(blocks).sum(-1) < MIN_BLOCK_FRACTION * b * b] = np.nan
        background[k0:k1] = level
        # Differences of every second line only (half the work; the two halves are alike): along
        # the rows on every second row (a block row holds `half` of them), along the columns on
        # every second column (pairs reach DIFF_LAG rows below the strip).
        rows = _good_values(image, mask, 2 * k0 * half, 2 * k1 * half, step=2)
        columns = _good_values(image, mask, k0 * b, k1 * b + DIFF_LAG, columns=slice(None, None, 2))
        level = None
        for d, bh, bw in ((rows[:, DIFF_LAG:] - rows[:, :-DIFF_LAG], half, b),           # along rows
                          (columns[DIFF_LAG:] - columns[:-DIFF_LAG], b, half)):          # along columns
            dblocks = cut_blocks(d, bh, bw, k1 - k0, bx)
            sigma = clipped_block_std(dblocks) / np.sqrt(2)
            sigma[np.isfinite(dblocks).sum(-1) < MIN_BLOCK_FRACTION * bh * bw] = np.nan
            level = sigma if level is None else combine(level, sigma)
        noise[k0:k1] = level
    noise[~(noise > 0)] = np.nan
    background = fill_and_smooth(background, sky0, edges=config.local_edges)
    noise = fill_and_smooth(noise, sigma0, edges=config.local_edges)
    return background, noise, float(np.median(background)), float(np.median(noise))


def _good_values(image: np.ndarray, mask, start: int, stop: int, *, step: int = 1,
                 columns: slice = slice(None)) -> np.ndarray:
    """Rows ``start:stop:step`` (and ``columns``) of ``image`` as float32, NaN where the image is
    not finite or ``mask`` is set."""
    values = image[start:stop:step, columns]
    good = np.isfinite(values)
    if mask is not None:
        good &= ~mask[start:stop:step, columns]
    return np.where(good, values, np.nan).astype(np.float32, copy=False)


def _too_small_for_maps(shape, config: NormalizationConfig) -> bool:
    """True when ``config.local_min_blocks`` sends a frame of this shape to the global input."""
    return config.local_min_blocks is not None and min(shape) < config.local_min_blocks * config.block_size


def _gate(background: np.ndarray, sky: float, noise: float, gate: float) -> np.ndarray:
    """``clip(|background - sky| / (noise * gate) - 1, 0, 1)`` (float32): 0 where the background is
    within ``gate`` noise units of the sky, 1 beyond twice that (``NormalizationConfig.local_gate``)."""
    g = np.abs(background - np.float32(sky))
    g *= np.float32(1.0 / (noise * gate))
    g -= 1
    return np.clip(g, 0, 1, out=g)


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


def frame_noise(sky: float, noise: float, *, gain, readnoise, band) -> float:
    """The frame noise to divide by: the Poisson-plus-read-noise model ``sqrt(sky / gain +
    (readnoise / gain)^2)`` when ``gain`` and ``readnoise`` are known and the measured ``noise`` is
    within ``band = (low, high)`` times it (``NormalizationConfig.header_noise``), else ``noise``."""
    if band is None or not _known(gain) or readnoise is None or not np.isfinite(readnoise) or readnoise < 0:
        return noise
    model = float(np.sqrt(max(float(sky), 0.0) / float(gain) + (float(readnoise) / float(gain)) ** 2))
    if model > 0 and band[0] <= noise / model <= band[1]:
        return model
    return noise


def _known(value) -> bool:
    return (value is not None and not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Real)
            and np.isfinite(value) and value > 0)


def normalize(image, *, mask=None, config: NormalizationConfig | None = None, gain=None,
              readnoise=None) -> tuple[np.ndarray, NormalizationParams]:
    """Normalize an image to sky-subtracted noise units (the one kercr normalization).

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Image in ADU or electrons, with or without sky/bias; not modified.
    mask : array_like of bool, shape (ny, nx), optional
        Pixels excluded from the statistics (they are still normalized).
    config : NormalizationConfig, optional
        Constants; pass the one stored with a model at inference.
    gain, readnoise : float, optional
        The frame's gain (e- per image unit) and read noise (e-), for ``config.header_noise``
        (:func:`frame_noise`); unused otherwise.

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
    if np.iscomplexobj(image) or not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise KercrDataError(f"image has dtype {image.dtype}; pass a real-valued image (ADU or electrons).")
    if config.noise_model == "local":
        grids = local_block_grids(image, mask=mask, config=config)
        out = image.astype(np.float32, copy=True)
        _divide_by_maps(out, grids[:2], config)
        n = int(np.isfinite(image).sum() if mask is None else (np.isfinite(image) & ~np.asarray(mask, bool)).sum())
        return _stretch(out, config), NormalizationParams(config=config, sky=grids[2], noise=grids[3], n_pixels=n)
    sky, measured, n = robust_sky_noise(image, mask=mask, config=config)
    noise = frame_noise(sky, measured, gain=gain, readnoise=readnoise, band=config.header_noise)
    grids = None
    if config.noise_model == "relative" and not _too_small_for_maps(image.shape, config):
        stats = (sky, measured) if config.noise_estimator == "diff2" else None  # the maps' fallback, measured once
        grids = local_block_grids(image, mask=mask, config=config, frame_stats=stats)
    out = image.astype(np.float32, copy=True)  # after the grids: their strips and this copy do not add up
    if grids is not None:
        _divide_by_maps(out, grids[:2], config, sky=sky, noise=noise, map_median=grids[3])
    else:
        out -= np.float32(sky)
        out *= np.float32(1.0 / noise)
    return _stretch(out, config), NormalizationParams(config=config, sky=sky, noise=noise, n_pixels=n)


def input_maps(image, *, mask=None, config: NormalizationConfig | None = None, gain=None,
               readnoise=None) -> tuple[np.ndarray, np.ndarray]:
    """The per-pixel background and noise that :func:`normalize` uses for ``config``.

    ``normalize(image)`` is ``(image - background) / noise``, then clipped and stretched as
    ``config`` says, with these maps: one sky and noise everywhere for ``noise_model="global"``
    (and for a frame that ``local_min_blocks`` sends to it), the block maps for ``"local"``, and
    the gated relative maps for ``"relative"``. Made over the whole frame at once (two float32
    frames of memory; :func:`normalize` makes them a strip at a time).

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        Image in ADU or electrons; not modified.
    mask : array_like of bool, shape (ny, nx), optional
        Pixels excluded from the statistics, as for :func:`normalize`.
    config : NormalizationConfig, optional
    gain, readnoise : float, optional
        As for :func:`normalize` (``config.header_noise``).

    Returns
    -------
    background, noise : numpy.ndarray, shape (ny, nx), float32
        In the image's units; ``noise`` > 0. Useful beyond the network's input: the noise a
        pixel's value is judged against (an uncertainty for photometry of a cleaned image).
    """
    config = config or NormalizationConfig()
    image = np.asarray(image)
    shape = image.shape
    if config.noise_model == "local":
        background, noise, _, _ = local_background_noise(image, mask=mask, config=config)
        return background, noise
    sky, measured, _ = robust_sky_noise(image, mask=mask, config=config)
    noise = frame_noise(sky, measured, gain=gain, readnoise=readnoise, band=config.header_noise)
    if config.noise_model == "relative" and not _too_small_for_maps(shape, config):
        stats = (sky, measured) if config.noise_estimator == "diff2" else None
        background_map, noise_map, _, map_median = local_background_noise(image, mask=mask, config=config,
                                                                          frame_stats=stats)
        _relative_maps(background_map, noise_map, sky=sky, noise=noise, map_median=map_median,
                       gate=config.local_gate)
        return background_map, noise_map
    return np.full(shape, sky, np.float32), np.full(shape, noise, np.float32)


def _divide_by_maps(out: np.ndarray, grids, config: NormalizationConfig, *, sky=None, noise=None,
                    map_median=None) -> None:
    """In place: ``out = (out - background) / noise_map`` with the maps of :func:`local_block_grids`
    interpolated to the pixels (:func:`upsample_bilinear`) ``MAP_CHUNK_ROWS`` rows at a time.

    ``noise_model="local"``: the maps as they are. ``"relative"``: the noise map scaled to the
    frame's ``noise`` (``noise * map / map_median``), and with ``local_gate`` both blended toward
    the frame's ``sky`` and ``noise`` by the gate (:func:`_gate`). Where the gate is shut on every
    pixel of a row (each block row it interpolates from is within ``local_gate`` noise units of the
    sky, with a margin for rounding) that row is ``(out - sky) / noise`` without the maps: the same
    float32 values the blend gives there (``g = 0``), to the bit.
    """
    b = int(config.block_size)
    background, noise_grid = grids
    relative = config.noise_model == "relative"
    gate = config.local_gate if relative else None
    with_maps = np.ones(out.shape[0], dtype=bool)
    if gate is not None:
        with_maps = _gate_may_open(background, sky, noise, gate, out.shape[0], b)
        for rows in _row_runs(~with_maps):
            view = out[rows]
            view -= np.float32(sky)
            view /= np.float32(noise)
    for rows in _row_runs(with_maps, MAP_CHUNK_ROWS):
        background_map = upsample_bilinear(background, out.shape, b, rows=rows)
        noise_map = upsample_bilinear(noise_grid, out.shape, b, rows=rows)
        if relative:
            _relative_maps(background_map, noise_map, sky=sky, noise=noise, map_median=map_median, gate=gate)
        view = out[rows]
        view -= background_map
        view /= noise_map


def _relative_maps(background_map: np.ndarray, noise_map: np.ndarray, *, sky: float, noise: float,
                   map_median: float, gate: float | None) -> None:
    """In place, float32: the relative input's maps from the measured ones. The noise map scaled to
    the frame's ``noise`` (``noise * map / map_median``); with a ``gate`` (``local_gate``), both
    blended toward the frame's ``sky`` and ``noise`` by :func:`_gate`."""
    if gate is None:
        noise_map *= np.float32(noise / map_median)
        return
    g = _gate(background_map, sky, noise, gate)
    background_map -= np.float32(sky)
    background_map *= g
    background_map += np.float32(sky)
    noise_map *= np.float32(1.0 / map_median)
    noise_map -= 1
    noise_map *= g
    noise_map += 1
    noise_map *= np.float32(noise)


def _gate_may_open(background: np.ndarray, sky: float, noise: float, gate: float, ny: int, block: int) -> np.ndarray:
    """Per pixel row (bool, length ``ny``): whether :func:`_gate` can be above 0 anywhere on it,
    i.e. whether a block row it interpolates from has a block background within a rounding margin
    of ``gate`` noise units from ``sky`` or beyond. An interpolated background lies between the
    block values it is made from, so a row marked False has ``g = 0`` on every pixel."""
    departure = np.abs(background.astype(np.float64) - sky)
    scale = max(float(np.abs(background).max()), abs(sky))
    margin = 64 * float(np.finfo(np.float32).eps) * scale + 1e-5 * noise * gate  # float32 rounding, generously
    open_rows = (departure > noise * gate - margin).any(axis=1)
    lo, hi = grid_rows(ny, background.shape[0], block)
    return open_rows[lo] | open_rows[hi]


def _row_runs(rows: np.ndarray, longest: int | None = None):
    """Slices of the runs of consecutive True entries of ``rows``, each at most ``longest`` long."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], rows.astype(np.int8), [0]))))
    for start, stop in zip(edges[::2].tolist(), edges[1::2].tolist()):
        step = longest or stop - start
        for first in range(start, stop, step):
            yield slice(first, min(first + step, stop))


def normalize_like(image, params: NormalizationParams) -> np.ndarray:
    """Normalize ``image`` with the sky and noise another image measured (``params`` of
    :func:`normalize`; global noise model only): the clean truth of a training frame in the units
    of the frame with its CRs, as the inpainting network is trained (float32)."""
    if params.config.noise_model != "global":
        raise KercrDataError("normalize_like needs the global noise model (one sky and noise per frame); "
                             f"this normalization uses noise_model={params.config.noise_model!r}.")
    out = np.asarray(image).astype(np.float32, copy=True)
    out -= np.float32(params.sky)
    out *= np.float32(1.0 / params.noise)
    return _stretch(out, params.config)


def denormalize(normalized, params: NormalizationParams) -> np.ndarray:
    """Map normalized values back to image units: ``normalized * noise + sky`` (float32).

    Clipped pixels do not come back to their original values.
    """
    normalized = np.asarray(normalized, dtype=np.float32)
    if params.config.asinh_softening is not None:
        soft = np.float32(params.config.asinh_softening)
        normalized = np.sinh(normalized / soft) * soft
    return (normalized * np.float32(params.noise) + np.float32(params.sky)).astype(np.float32)
