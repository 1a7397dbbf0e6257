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
  made odd), over sqrt 2, the larger of the two axes;
- ``(image - float32(sky)) * float32(1 / noise)`` in float32, non-finite -> ``nan_fill``,
  then the clip.

Masks are not supported here (a served graph has one ``image`` input); pixels that should not
count go in as NaN, which the statistics skip (they come out as ``nan_fill``).

The numpy function raises on an (almost) all-NaN or constant image; here the graph raises
``tf.errors.InvalidArgumentError`` with the same explanation.
"""

from __future__ import annotations

import tensorflow as tf

from kercr.data.normalization import DIFF_LAG, MAD_TO_SIGMA, NormalizationConfig

__all__ = ["normalize_image", "normalize_batch", "median"]

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
         "(almost) all NaN or smaller than 3 x 3. Send real pixel values (NaN only for bad pixels). Finite sample size:",
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
    if config.noise_estimator == "diff2":
        noise = tf.constant(0.0, tf.float64)
        for axis in (0, 1):
            diffs = _assert_enough(_diff_sample(image, config.sample_size, axis), f"pixel pairs {DIFF_LAG} apart")
            noise = tf.maximum(noise, _clipped(diffs, config)[1] / tf.sqrt(tf.constant(2.0, tf.float64)))
    check = tf.debugging.Assert(
        noise > 0,
        ["kercr normalization: the image is constant over its finite pixels (noise 0), so it cannot be "
         "normalized. Send a real exposure, not a blank or constant frame."],
    )
    with tf.control_dependencies([check]):
        noise = tf.identity(noise)
    return sky, noise


def normalize_image(image, config: NormalizationConfig | None = None):
    """Normalize one (ny, nx) float32 image exactly like :func:`kercr.data.normalization.normalize`.

    Parameters
    ----------
    image : tf.Tensor, shape (ny, nx), float32
        Raw pixels (ADU or electrons, with or without sky); NaN/inf pixels are ignored.
    config : NormalizationConfig, optional
        The model's normalization constants (the Python values are baked into the graph).

    Returns
    -------
    tf.Tensor, shape (ny, nx), float32
        ``clip((image - sky) / noise, clip_min, clip_max)`` in noise units; non-finite -> ``nan_fill``.
    """
    config = config or NormalizationConfig()
    image = tf.convert_to_tensor(image, tf.float32)
    sky, noise = robust_sky_noise(image, config)
    out = (image - tf.cast(sky, tf.float32)) * tf.cast(1.0 / noise, tf.float32)
    out = tf.where(tf.math.is_finite(out), out, tf.constant(config.nan_fill, tf.float32))
    if config.clip_min is not None:
        out = tf.maximum(out, tf.constant(config.clip_min, tf.float32))
    if config.clip_max is not None:
        out = tf.minimum(out, tf.constant(config.clip_max, tf.float32))
    if config.asinh_softening is not None:
        soft = tf.constant(config.asinh_softening, tf.float32)
        out = tf.math.asinh(out / soft) * soft
    return out


def normalize_batch(images, config: NormalizationConfig | None = None):
    """Normalize each image of a (batch, ny, nx, 1) float32 tensor on its own statistics."""
    config = config or NormalizationConfig()
    out = tf.map_fn(lambda im: normalize_image(im, config), images[..., 0],
                    fn_output_signature=tf.float32)
    return out[..., tf.newaxis]
