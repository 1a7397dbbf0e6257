"""kercr's normalization re-implemented in TensorFlow ops, for graphs that take raw pixels.

:func:`kercr.data.normalization.normalize` is numpy; a served SavedModel must normalize inside
its own graph so that a client can send raw pixel values. :func:`normalize_image` repeats the
numpy algorithm step by step, in the same precision, so the two agree to float32 rounding:

- the same regular subsample (``step = int(sqrt(ny * nx / sample_size))``, made odd when > 1);
- the finite pixels of the subsample, in float64;
- median and MAD (``1.4826 * median(|x - median|)``) with numpy's convention that the median
  of an even count is the mean of the two middle values;
- up to ``n_iter`` sigma-clipping iterations, stopping as numpy does when the noise is 0 or
  no pixel is clipped; the population standard deviation when the MAD is 0;
- for ``noise_estimator="diff2"``, the same clipped MAD of the differences ``x[i+2] - x[i]`` of
  every ``step``-th row and every ``step``-th column (``step = int(lines * pairs / sample_size)``,
  made odd), over sqrt 2, the larger of the two axes; for ``"diff2_std"`` their clipped standard
  deviation, by the block maps' float32 arithmetic below (sums rounded differently: ~1e-6 relative);
- ``(image - float32(sky)) * float32(1 / noise)`` in float32, non-finite -> ``nan_fill``,
  then the clip.

Masks are not supported here (a served graph has one ``image`` input); pixels that should not
count go in as NaN, which the statistics skip (they come out as ``nan_fill``).

The numpy function raises on an (almost) all-NaN or constant image; here the graph raises
``tf.errors.InvalidArgumentError`` with the same explanation.

``noise_model="local"`` (:func:`local_background_noise`) repeats
:func:`kercr.data.normalization.local_background_noise` with the height and width known only at
run time: the frame-wide ``diff2`` statistics above (the fallback of empty blocks), the frame and
the lag-2 differences of every second line padded with NaN to whole blocks, all blocks of a
frame at once (medians by ``tf.sort`` along the block axis, NaN sorted last and not counted),
the two-iteration clipped standard deviation in float32 (the larger or smaller axis, as
``local_axis`` says), the 3 x 3 block median (reflect padding, edge padding for
``local_edges="nearest"`` or when the grid is one block thick), the bilinear upsampling in numpy's precision and
order, then ``(image - background) / noise`` in float32. ``noise_model="relative"`` takes the
background map above and the noise map times ``noise / median`` (the frame-wide noise of the
global path over the median of the block grid, in float64, cast to float32 as numpy does), then
``(image - background) / map`` in float32; with ``local_gate`` the blend toward the frame's sky
and noise in numpy's float32 order; with ``local_min_blocks``, a ``tf.cond`` on the frame's size at
run time picks the global path for small frames. The background map is bit-for-bit
numpy's; the noise map is not quite: numpy's float32 sums (pairwise) and TensorFlow's round
differently in the clipped standard deviation, which moves the noise by up to ~8e-7 relative.
Measured in a tf.function with unknown H and W on the frames of
tests/export/test_tf_normalization.py (white noise with a gradient and a galaxy, integer-valued
with block MADs of 0, NaN regions with an all-NaN block, 100 x 77, 20 x 13, 33 x 95; block sizes
8, 16, 32; asinh on and off; four seeds): max |TF - numpy| = 8.0e-7 x max(1, |normalized|)
(4.3e-4 noise units at ~1000).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from kercr.data.normalization import (
    DIFF_LAG,
    MAD_TO_SIGMA,
    MIN_BLOCK_FRACTION,
    TRUNCATED_STD_3SIGMA,
    NormalizationConfig,
)

__all__ = ["normalize_image", "normalize_batch", "median", "local_background_noise"]

MIN_SAMPLE = 10  # as kercr.data.normalization.robust_sky_noise


def median(values):
    """numpy-compatible median of a non-empty 1-D tensor (even count: mean of the two middle)."""
    s = tf.sort(values)
    n = tf.size(s)
    half = n // 2
    upper = tf.gather(s, half)
    lower = tf.gather(s, tf.maximum(half - 1, 0))
    return tf.where(n % 2 == 1, upper, (lower + upper) / tf.constant(2, s.dtype))


def _sky_noise(values):
    sky = median(values)
    noise = tf.constant(MAD_TO_SIGMA, tf.float64) * median(tf.abs(values - sky))
    return sky, noise


def _subsample(image, sample_size: int):
    shape = tf.shape(image)
    npix = tf.cast(shape[0], tf.float64) * tf.cast(shape[1], tf.float64)
    step = _odd(tf.maximum(1, tf.cast(tf.sqrt(npix / tf.constant(float(sample_size), tf.float64)), tf.int32)))
    values = tf.reshape(image[::step, ::step], [-1])
    return tf.cast(tf.boolean_mask(values, tf.math.is_finite(values)), tf.float64)


def _odd(step):
    # Odd step, as in numpy (avoids locking onto one amplifier of a two-amplifier pattern).
    return tf.where((step > 1) & (step % 2 == 0), step + 1, step)


def _diff_sample(image, sample_size: int, axis: int):
    """Differences ``x[i + DIFF_LAG] - x[i]`` along ``axis`` of every ``step``-th line, finite, float64."""
    if axis == 0:
        image = tf.transpose(image)
    shape = tf.shape(image)
    pairs = tf.maximum(shape[1] - DIFF_LAG, 0)
    lines = tf.cast(shape[0], tf.float64) * tf.cast(pairs, tf.float64)
    step = _odd(tf.maximum(1, tf.cast(lines / tf.constant(float(sample_size), tf.float64), tf.int32)))
    rows = tf.cast(image[::step], tf.float64)
    d = tf.reshape(rows[:, DIFF_LAG:] - rows[:, :-DIFF_LAG], [-1])
    return tf.boolean_mask(d, tf.math.is_finite(d))


def _assert_enough(values, what: str):
    check = tf.debugging.Assert(
        tf.size(values) >= MIN_SAMPLE,
        [f"kercr normalization: fewer than 10 finite {what} in the statistics sample; the image is "
         "(almost) all NaN or too small (under 5 x 5 pixels). Send real pixel values (NaN only for bad pixels). "
         "Finite sample size:",
         tf.size(values)],
    )
    with tf.control_dependencies([check]):
        return tf.identity(values)


def _clipped(values, config: NormalizationConfig):
    """Sigma-clipped median and MAD noise of a 1-D float64 sample, as numpy's ``_clipped_center_noise``."""
    sky, noise = _sky_noise(values)
    sigma_clip = tf.constant(float(config.sigma_clip), tf.float64)
    for _ in range(int(config.n_iter)):
        keep = tf.abs(values - sky) < sigma_clip * noise
        stop = (noise <= 0) | tf.reduce_all(keep)

        def clipped(values=values, keep=keep):
            kept = tf.boolean_mask(values, keep)
            return (kept, *_sky_noise(kept))

        # Once stopped, the state is a fixed point of the loop, so later iterations stop too.
        values, sky, noise = tf.cond(stop, lambda values=values, sky=sky, noise=noise: (values, sky, noise), clipped)
    # Quantized or constant images have MAD 0; numpy falls back to the standard deviation.
    noise = tf.cond(noise > 0, lambda: noise, lambda: tf.math.reduce_std(values))
    return sky, noise


def robust_sky_noise(image, config: NormalizationConfig):
    """Sigma-clipped median sky and robust noise of one (ny, nx) float32 image, as float64 scalars."""
    sky, noise = _clipped(_assert_enough(_subsample(image, config.sample_size), "pixels"), config)
    if config.noise_estimator in ("diff2", "diff2_std"):
        noise = tf.constant(0.0, tf.float64)
        for axis in (0, 1):
            diffs = _assert_enough(_diff_sample(image, config.sample_size, axis), f"pixel pairs {DIFF_LAG} apart")
            if config.noise_estimator == "diff2":
                diff_noise = _clipped(diffs, config)[1]
            else:  # numpy's clipped_block_std of the sample as one float32 row
                diff_noise = tf.cast(_clipped_block_std(tf.cast(diffs, tf.float32)[None, :])[0], tf.float64)
            noise = tf.maximum(noise, diff_noise / tf.sqrt(tf.constant(2.0, tf.float64)))
    check = tf.debugging.Assert(
        noise > 0,
        ["kercr normalization: the image is constant over its finite pixels (noise 0), so it cannot be "
         "normalized. Send a real exposure, not a blank or constant frame."],
    )
    with tf.control_dependencies([check]):
        noise = tf.identity(noise)
    return sky, noise


def frame_noise(sky, noise, gain, readnoise, config: NormalizationConfig):
    """numpy's :func:`kercr.data.normalization.frame_noise` (``config.header_noise``) in float64:
    the Poisson-plus-read-noise model where ``gain`` > 0 and ``readnoise`` >= 0 are finite and the
    measured ``noise`` is within the band of it, else ``noise``."""
    if config.header_noise is None or gain is None or readnoise is None:
        return noise
    low, high = config.header_noise
    gain, readnoise = tf.cast(gain, tf.float64), tf.cast(readnoise, tf.float64)
    known = tf.math.is_finite(gain) & (gain > 0) & tf.math.is_finite(readnoise) & (readnoise >= 0)
    gain = tf.where(known, gain, tf.constant(1.0, tf.float64))
    model = tf.sqrt(tf.maximum(sky, tf.constant(0.0, tf.float64)) / gain + tf.square(readnoise / gain))
    ratio = noise / tf.where(model > 0, model, tf.constant(1.0, tf.float64))
    use = known & (model > 0) & (ratio >= low) & (ratio <= high)
    return tf.where(use, model, noise)


def normalize_image(image, config: NormalizationConfig | None = None, gain=None, readnoise=None):
    """Normalize one (ny, nx) float32 image exactly like :func:`kercr.data.normalization.normalize`.

    Parameters
    ----------
    image : tf.Tensor, shape (ny, nx), float32
        Raw pixels (ADU or electrons, with or without sky); NaN/inf pixels are ignored.
    config : NormalizationConfig, optional
        The model's normalization constants (the Python values are baked into the graph).
    gain, readnoise : tf.Tensor, scalar, optional
        The frame's gain (e- per image unit) and read noise (e-) for ``config.header_noise``; a
        value that is not positive (gain) or negative (read noise) means unknown.

    Returns
    -------
    tf.Tensor, shape (ny, nx), float32
        ``clip((image - sky) / noise, clip_min, clip_max)`` in noise units; non-finite -> ``nan_fill``.
        With ``config.noise_model == "local"``, ``sky`` and ``noise`` are the maps of
        :func:`local_background_noise`; with ``"relative"``, ``sky`` is that background map and
        ``noise`` the frame's noise times the noise map over its median block.
    """
    config = config or NormalizationConfig()
    image = tf.convert_to_tensor(image, tf.float32)
    if config.noise_model == "local":
        background, noise_map = local_background_noise(image, config)
        return _stretch((image - background) / noise_map, config)
    sky, measured = robust_sky_noise(image, config)
    noise = frame_noise(sky, measured, gain, readnoise, config)
    if config.noise_model != "relative":
        return _global(image, sky, noise, config)
    if config.local_min_blocks is None:
        return _relative(image, sky, noise, config, measured)
    short = tf.minimum(tf.shape(image)[0], tf.shape(image)[1]) < config.local_min_blocks * config.block_size
    return tf.cond(short, lambda: _global(image, sky, noise, config),
                   lambda: _relative(image, sky, noise, config, measured))


def _global(image, sky, noise, config: NormalizationConfig):
    """One sky and noise for the frame (float64 scalars), as numpy's global path."""
    return _stretch((image - tf.cast(sky, tf.float32)) * tf.cast(1.0 / noise, tf.float32), config)


def _relative(image, sky, noise, config: NormalizationConfig, measured):
    """``noise_model="relative"`` (with its gate) of one image, given the frame's sky and noise
    (``measured``: the noise before :func:`frame_noise`, the maps' fallback)."""
    stats = (sky, measured) if config.noise_estimator == "diff2" else None  # the maps' fallback, measured once
    background, noise_map, map_median = local_background_noise(image, config, with_median=True, frame_stats=stats)
    if config.local_gate is None:
        return _stretch((image - background) / (noise_map * tf.cast(noise / map_median, tf.float32)), config)
    sky32 = tf.cast(sky, tf.float32)
    gate = tf.abs(background - sky32) * tf.cast(1.0 / (noise * config.local_gate), tf.float32) - 1.0
    gate = tf.clip_by_value(gate, 0.0, 1.0)
    background = (background - sky32) * gate + sky32
    ratio = noise_map * tf.cast(1.0 / map_median, tf.float32)
    noise_map = ((ratio - 1.0) * gate + 1.0) * tf.cast(noise, tf.float32)
    return _stretch((image - background) / noise_map, config)


def _stretch(out, config: NormalizationConfig):
    """Non-finite -> ``nan_fill``, clip, optional asinh (numpy's ``_stretch``)."""
    out = tf.where(tf.math.is_finite(out), out, tf.constant(config.nan_fill, tf.float32))
    if config.clip_min is not None:
        out = tf.maximum(out, tf.constant(config.clip_min, tf.float32))
    if config.clip_max is not None:
        out = tf.minimum(out, tf.constant(config.clip_max, tf.float32))
    if config.asinh_softening is not None:
        soft = tf.constant(config.asinh_softening, tf.float32)
        out = tf.math.asinh(out / soft) * soft
    return out


def normalize_batch(images, config: NormalizationConfig | None = None, gain=None, readnoise=None):
    """Normalize each image of a (batch, ny, nx, 1) float32 tensor on its own statistics (with
    ``gain`` and ``readnoise``, (batch,) tensors, for ``config.header_noise``)."""
    config = config or NormalizationConfig()
    if gain is None or readnoise is None:
        out = tf.map_fn(lambda im: normalize_image(im, config), images[..., 0], fn_output_signature=tf.float32)
    else:
        out = tf.map_fn(lambda args: normalize_image(args[0], config, args[1], args[2]),
                        (images[..., 0], tf.cast(gain, tf.float32), tf.cast(readnoise, tf.float32)),
                        fn_output_signature=tf.float32)
    return out[..., tf.newaxis]


# --- noise_model="local" ------------------------------------------------------------------------

def _nanmedian_rows(x):
    """Median of each row of a (n, m) tensor ignoring NaN (NaN for an all-NaN row), exactly as
    numpy's ``median`` / ``nanmedian``: a selection, and the mean of the two middle values in
    ``x``'s dtype for an even count."""
    finite = ~tf.math.is_nan(x)
    s = tf.sort(tf.where(finite, x, tf.constant(np.inf, x.dtype)), axis=-1)  # NaN last, as +inf
    n = tf.reduce_sum(tf.cast(finite, tf.int32), axis=-1)
    upper = tf.gather(s, tf.minimum(n // 2, tf.shape(s)[-1] - 1), axis=-1, batch_dims=1)
    lower = tf.gather(s, tf.maximum(n // 2 - 1, 0), axis=-1, batch_dims=1)
    mid = tf.where(n % 2 == 1, upper, (lower + upper) / tf.constant(2, x.dtype))
    return tf.where(n > 0, mid, tf.constant(np.nan, x.dtype))


def _blocks(a, bh: int, bw: int, by, bx):
    """(ny, nx) -> (by * bx, bh * bw): ``a`` NaN-padded to (by * bh, bx * bw) and cut into blocks
    (the row-major block order of numpy's ``_blocks``)."""
    a = a[: by * bh, : bx * bw]
    shape = tf.shape(a)
    a = tf.pad(a, [[0, by * bh - shape[0]], [0, bx * bw - shape[1]]], constant_values=np.nan)
    a = tf.transpose(tf.reshape(a, [by, bh, bx, bw]), [0, 2, 1, 3])
    return tf.reshape(a, [by * bx, bh * bw])


def _enough(blocks, bh: int, bw: int):
    """True for the blocks with at least ``MIN_BLOCK_FRACTION`` non-NaN values."""
    count = tf.reduce_sum(tf.cast(~tf.math.is_nan(blocks), tf.float64), axis=-1)
    return ~(count < MIN_BLOCK_FRACTION * bh * bw)


def _divide(x, constant: float):
    """``x / constant``, correctly rounded in ``x``'s dtype. Grappler (TensorFlow's graph
    optimizer, on in tf.function and in a served SavedModel) rewrites ``x / constant`` as
    ``x * (1 / constant)``, which is off by one unit in the last place for about one value in
    six; ``divide_no_nan`` is left alone and divides (the constant is never 0 here)."""
    return tf.math.divide_no_nan(x, tf.constant(constant, x.dtype))


def _count_divide(total, count):
    # numpy's nanstd divides a float32 sum by an integer count in float64, then rounds to float32.
    return tf.cast(tf.cast(total, tf.float64) / count, tf.float32)


def _clipped_block_std(d):
    """numpy's ``_clipped_block_std`` on (n, m) float32 rows (NaN ignored) -> (n,) float32."""
    center = _nanmedian_rows(d)[:, None]
    sigma = tf.constant(MAD_TO_SIGMA, tf.float32) * _nanmedian_rows(tf.abs(d - center))[:, None]
    # A MAD of 0 (integer data): start from the standard deviation (numpy's nanstd).
    finite = ~tf.math.is_nan(d)
    count = tf.reduce_sum(tf.cast(finite, tf.float64), axis=-1, keepdims=True)
    mean = _count_divide(tf.reduce_sum(tf.where(finite, d, 0.0), axis=-1, keepdims=True), count)
    dev = tf.where(finite, d - mean, 0.0)
    std = tf.sqrt(_count_divide(tf.reduce_sum(dev * dev, axis=-1, keepdims=True), count))
    sigma = tf.where(sigma > 0, sigma, std)
    for _ in range(2):
        z = d - center
        keep = tf.abs(z) < tf.constant(3.0, tf.float32) * sigma  # False on NaN
        k = tf.reduce_sum(tf.cast(keep, tf.float32), axis=-1, keepdims=True)
        z = tf.where(keep, z, 0.0)
        mean = tf.reduce_sum(z, axis=-1, keepdims=True) / k
        var = tf.reduce_sum(z * z, axis=-1, keepdims=True) / k - mean * mean
        several = k > 1
        sigma = tf.where(several, _divide(tf.sqrt(tf.maximum(var, 0.0)), TRUNCATED_STD_3SIGMA),
                         tf.constant(np.nan, tf.float32))
        center = center + tf.where(several, mean, 0.0)
    return sigma[:, 0]


def _fmax(a, b):
    """numpy's ``fmax``: the larger, ignoring NaN (NaN only where both are)."""
    return tf.where(tf.math.is_nan(a), b, tf.where(tf.math.is_nan(b), a, tf.maximum(a, b)))


def _fmin(a, b):
    """numpy's ``fmin``: the smaller, ignoring NaN (NaN only where both are)."""
    return tf.where(tf.math.is_nan(a), b, tf.where(tf.math.is_nan(b), a, tf.minimum(a, b)))


def _fill_and_smooth(grid, fallback, edges: str = "reflect"):
    """numpy's ``fill_and_smooth`` on a (by, bx) float64 grid: 3 x 3 NaN-ignoring median (reflect
    padding, or edge padding for ``edges="nearest"`` or when a side is one block), then NaN -> ``fallback``."""
    by, bx = tf.shape(grid)[0], tf.shape(grid)[1]
    reflect = tf.logical_and(tf.minimum(by, bx) > 1, edges == "reflect")

    def padded_index(n):
        first = tf.where(reflect, 1, 0)
        last = tf.where(reflect, n - 2, n - 1)
        return tf.concat([[first], tf.range(n), [last]], axis=0)

    padded = tf.gather(tf.gather(grid, padded_index(by), axis=0), padded_index(bx), axis=1)
    stack = tf.stack([padded[i:i + by, j:j + bx] for i in range(3) for j in range(3)], axis=-1)
    smoothed = tf.reshape(_nanmedian_rows(tf.reshape(stack, [-1, 9])), [by, bx])
    return tf.where(tf.math.is_finite(smoothed), smoothed, fallback)


def _interpolation(n, nb, block: int):
    """Indices and float64 weights of numpy's ``_upsample_bilinear`` along one axis."""
    pos = _divide(tf.cast(tf.range(n), tf.float64) + 0.5, float(block)) - 0.5
    pos = tf.clip_by_value(pos, 0.0, tf.cast(nb, tf.float64) - 1.0)
    lo = tf.minimum(tf.cast(tf.floor(pos), tf.int32), tf.maximum(nb - 2, 0))
    hi = tf.minimum(lo + 1, nb - 1)
    return lo, hi, pos - tf.cast(lo, tf.float64)


def _upsample_bilinear(grid, ny, nx, block: int):
    """numpy's ``_upsample_bilinear``: along the rows in float64, along the columns in float32."""
    lo, hi, frac = _interpolation(ny, tf.shape(grid)[0], block)
    a, b = tf.gather(grid, lo, axis=0), tf.gather(grid, hi, axis=0)
    out = tf.cast(a + (b - a) * frac[:, None], tf.float32)
    lo, hi, frac = _interpolation(nx, tf.shape(grid)[1], block)
    a, b = tf.gather(out, lo, axis=1), tf.gather(out, hi, axis=1)
    return a + (b - a) * tf.cast(frac, tf.float32)[None, :]


def local_background_noise(image, config: NormalizationConfig, *, with_median: bool = False, frame_stats=None):
    """Background and noise maps of one (ny, nx) float32 image, as numpy's
    :func:`kercr.data.normalization.local_background_noise` (NaN/inf pixels ignored; no mask).

    Parameters
    ----------
    image : tf.Tensor, shape (ny, nx), float32
        Raw pixels; ny and nx may be unknown until run time.
    config : NormalizationConfig
        ``block_size`` and the frame-wide fallback statistics' constants.

    with_median : bool
        Also return the median of the block noise grid (numpy's ``sigma``), which
        ``noise_model="relative"`` divides the map by.
    frame_stats : (tf.Tensor, tf.Tensor), optional
        The frame's ``diff2`` sky and noise of :func:`robust_sky_noise` (float64 scalars), when
        the caller has them; measured here otherwise.

    Returns
    -------
    background, noise : tf.Tensor, shape (ny, nx), float32
        In the image's units.
    sigma : tf.Tensor, scalar float64
        Only with ``with_median``.
    """
    if frame_stats is None:
        sky0, sigma0 = robust_sky_noise(image, dataclasses.replace(config, noise_estimator="diff2"))
    else:
        sky0, sigma0 = frame_stats
    b = int(config.block_size)
    half = (b + 1) // 2
    ny, nx = tf.shape(image)[0], tf.shape(image)[1]
    by, bx = (ny + b - 1) // b, (nx + b - 1) // b
    data = tf.where(tf.math.is_finite(image), image, tf.constant(np.nan, tf.float32))
    blocks = _blocks(data, b, b, by, bx)
    background = tf.where(_enough(blocks, b, b), tf.cast(_nanmedian_rows(blocks), tf.float64),
                          tf.constant(np.nan, tf.float64))
    noise = None
    # Differences of every second line only, as numpy: along the rows, then along the columns.
    for d, bh, bw in ((data[::2, DIFF_LAG:] - data[::2, :-DIFF_LAG], half, b),
                      (data[DIFF_LAG:, ::2] - data[:-DIFF_LAG, ::2], b, half)):
        dblocks = _blocks(d, bh, bw, by, bx)
        sigma = _divide(tf.cast(_clipped_block_std(dblocks), tf.float64), float(np.sqrt(2.0)))
        sigma = tf.where(_enough(dblocks, bh, bw), sigma, tf.constant(np.nan, tf.float64))
        noise = sigma if noise is None else (_fmax if config.local_axis == "larger" else _fmin)(noise, sigma)
    noise = tf.where(noise > 0, noise, tf.constant(np.nan, tf.float64))
    background = _fill_and_smooth(tf.reshape(background, [by, bx]), sky0, config.local_edges)
    noise = _fill_and_smooth(tf.reshape(noise, [by, bx]), sigma0, config.local_edges)
    maps = _upsample_bilinear(background, ny, nx, b), _upsample_bilinear(noise, ny, nx, b)
    return maps + (median(tf.reshape(noise, [-1])),) if with_median else maps
