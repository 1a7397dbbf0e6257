"""Segmentation losses for cosmic-ray (CR) masks with per-pixel weights.

All losses take ``y_true`` (binary CR mask, 1 = CR) and ``y_pred`` (sigmoid probabilities,
float32) of shape ``(B, H, W, 1)`` (``(B, H, W)`` also works) and return a scalar under the
default ``reduction="sum_over_batch_size"``.

Pixel weights (ignore masks, median weights)
--------------------------------------------
Pixel weights come from the data pipeline as ``sample_weight``, never from statistics computed
inside the loss. They reach the loss in three ways, all handled the same:

- ``model.fit(x, y, sample_weight=w)`` with numpy arrays,
- a ``tf.data`` / generator that yields ``(x, y, w)`` triplets,
- a direct call ``loss(y_true, y_pred, sample_weight=w)``.

``w`` has shape ``(B, H, W, 1)`` or ``(B, H, W)``; **a weight of 0 marks an ignored pixel**
(saturated star, bad column, padding): it contributes nothing to any term and its
``y_true``/``y_pred`` values cannot change the loss. A weight of shape ``(B,)`` (or a scalar)
(or ``(B, 1, 1, 1)``) is a per-patch weight that multiplies each patch's loss, as in plain Keras.

Why ``__call__`` is overridden: ``keras.losses.Loss.__call__`` multiplies the *output* of
``call`` by ``sample_weight``. A Dice term is a ratio of sums over a patch, so per-pixel
weights must enter those sums, before the ratio is taken. kercr's losses therefore compute one
loss value per patch with the pixel weights inside (:meth:`per_sample_loss`), then hand those
``(B,)`` values to Keras' own reduction (so ``reduction`` and distribution-strategy scaling
behave exactly as for built-in losses). ``model.fit`` calls ``loss(y_true, y_pred,
sample_weight)``, so the override is used in training and evaluation too.

Reductions: ``"sum_over_batch_size"`` (default) and ``"mean"`` average the per-patch values
over the ``B`` patches of the batch (a patch whose pixels are all ignored contributes 0 and
still counts); ``"mean_with_sample_weight"`` divides by the number of patches that have at least
one pixel of non-zero weight (times their per-patch weights); ``"sum"`` sums; ``None``/``"none"``
returns the ``(B,)`` per-patch values.
"""

import keras
from keras import ops

__all__ = ["DiceBCELoss", "MedianWeightedBCE", "WeightedBCE", "WeightedMSE"]

#: Probabilities are clipped to ``[EPSILON, 1 - EPSILON]`` before the logarithms of the
#: cross-entropy (same value as ``keras.backend.epsilon()`` and Cosmic-CoNN's ``eps``).
EPSILON = 1e-7


def _split_weights(sample_weight, y_pred):
    """Sort ``sample_weight`` into a per-pixel and a per-patch part.

    Parameters
    ----------
    sample_weight : tensor or None
        ``None``; a scalar; shape ``(B,)``, ``(B, 1)`` or ``(B, 1, 1, 1)`` (per patch); or shape
        ``y_pred.shape`` or ``y_pred.shape[:-1]`` when the last axis of ``y_pred`` has size 1 (per
        pixel; axes of size 1 are broadcast).
    y_pred : tensor
        Predictions, rank >= 2, first axis the batch.

    Returns
    -------
    pixel_weight : tensor or None
        Shape and rank of ``y_pred``.
    patch_weight : tensor or None
        Shape ``(B,)`` or a scalar.
    """
    if sample_weight is None:
        return None, None
    w = ops.cast(ops.convert_to_tensor(sample_weight), y_pred.dtype)
    rank_w, rank_p = _rank(w), len(y_pred.shape)
    if rank_w is None:
        # TensorFlow relaxes the rank to "unknown" when a traced train/test function is reused
        # for weights of another rank (e.g. (B, H, W) after (B, H, W, 1)); per-pixel is the
        # only layout kercr pipelines produce, so read the weights in the layout of y_pred.
        return ops.reshape(w, ops.shape(y_pred)), None
    if rank_w in (rank_p, rank_p - 1) and rank_w > 1 and all(d == 1 for d in w.shape[1:]):
        # (B, 1, 1, 1): per-patch weights in pixel layout, as Keras would broadcast them.
        return None, ops.reshape(w, (-1,))
    if rank_w == rank_p and rank_p > 1:
        return ops.broadcast_to(w, ops.shape(y_pred)), None
    if rank_w == rank_p - 1 and rank_w > 1 and y_pred.shape[-1] == 1:
        return ops.broadcast_to(ops.expand_dims(w, axis=-1), ops.shape(y_pred)), None
    if rank_w == 0:
        return None, w
    if rank_w == 1 or (rank_w == 2 and w.shape[-1] == 1):
        return None, ops.reshape(w, (-1,))
    raise ValueError(
        f"sample_weight has shape {tuple(w.shape)}, which fits neither per-pixel weights (the "
        f"shape of y_pred, {tuple(y_pred.shape)}, or that shape without its last axis of size 1) "
        "nor per-patch weights (shape (batch,)). Pass an ignore mask / median-weight map shaped "
        "like the CR mask."
    )


def _rank(x):
    """Static rank of a tensor, or None when unknown (TensorFlow graphs)."""
    try:
        return len(x.shape)
    except (TypeError, ValueError):
        return None


def _match_true(y_true, y_pred):
    """Give ``y_true`` the shape of ``y_pred`` by adding or removing a trailing channel axis of size
    1; a ValueError naming both shapes when they differ otherwise (never a silent broadcast)."""
    rank_t, rank_p = _rank(y_true), len(y_pred.shape)
    if rank_t is None:
        return ops.reshape(y_true, ops.shape(y_pred))
    if rank_t == rank_p - 1 and y_pred.shape[-1] == 1:
        y_true = ops.expand_dims(y_true, axis=-1)
    elif rank_t == rank_p + 1 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    known = len(y_true.shape) == rank_p and all(
        a is None or b is None or a == b for a, b in zip(y_true.shape, y_pred.shape))
    if not known:
        raise ValueError(f"y_true has shape {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)}: pass a CR mask "
                         "of the prediction's shape ((B, H, W, 1) or (B, H, W)).")
    return y_true


def _pixel_bce(y_true, y_pred, epsilon):
    """Per-pixel binary cross-entropy terms ``(-log p, -log(1 - p))`` on clipped ``p``."""
    p = ops.clip(y_pred, epsilon, 1.0 - epsilon)
    return -y_true * ops.log(p), -(1.0 - y_true) * ops.log(1.0 - p)


class _Identity(keras.losses.Loss):
    """Hands already computed per-patch values to Keras' reduction (never serialized)."""

    def call(self, y_true, y_pred):
        return y_pred


class _PixelWeightedLoss(keras.losses.Loss):
    """Base class: a loss computed per patch with per-pixel weights inside.

    Subclasses implement :meth:`per_sample_loss`. ``epsilon`` clips probabilities to
    ``[epsilon, 1 - epsilon]`` inside the logarithms of the cross-entropy.
    """

    def __init__(self, epsilon=EPSILON, reduction="sum_over_batch_size", name=None, dtype=None, **kwargs):
        super().__init__(name=name, reduction=reduction, dtype=dtype, **kwargs)
        self.epsilon = float(epsilon)

    def per_sample_loss(self, y_true, y_pred, pixel_weight=None):
        """Loss of each patch, shape ``(B,)``, with ``pixel_weight`` applied inside."""
        raise NotImplementedError

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        y_true = _match_true(ops.convert_to_tensor(y_true, dtype=self.dtype), y_pred)
        return self.per_sample_loss(y_true, y_pred)

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        y_true = _match_true(ops.convert_to_tensor(y_true, dtype=self.dtype), y_pred)
        pixel_weight, patch_weight = _split_weights(sample_weight, y_pred)
        if pixel_weight is not None:  # an ignored pixel's values (NaN included) cannot reach the loss
            kept = pixel_weight > 0
            y_true = ops.where(kept, y_true, ops.zeros_like(y_true))
            y_pred = ops.where(kept, y_pred, ops.full_like(y_pred, 0.5))
        values = self.per_sample_loss(y_true, y_pred, pixel_weight)
        if pixel_weight is not None:
            axes = tuple(range(1, len(y_pred.shape)))
            has_pixels = ops.cast(ops.any(pixel_weight > 0, axis=axes), values.dtype)
            patch_weight = has_pixels if patch_weight is None else has_pixels * patch_weight
        # Keras' reduction (under this loss's name scope) sees plain per-patch values.
        reducer = _Identity(reduction=self.reduction, dtype=self.dtype, name=self.name)
        return reducer(values, values, sample_weight=patch_weight)

    def get_config(self):
        config = super().get_config()
        config.update(dtype=self.dtype, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="kercr")
class DiceBCELoss(_PixelWeightedLoss):
    """Soft Dice plus binary cross-entropy, Dice computed per patch.

    For each patch ``b`` with pixel weights ``w`` (1 everywhere when none are given)::

        dice_b = (2 * sum(w * p * t) + smooth) / (sum(w * p) + sum(w * t) + smooth)
        bce_b  = sum(w * BCE(t, p)) / sum(w)        # weighted mean over the patch
        loss_b = dice_weight * (1 - dice_b) + (1 - dice_weight) * bce_b

    The default ``dice_weight=0.5`` gives ``(1 - Dice + BCE) / 2``, the combination used to
    train TransUNet (Chen et al. 2021) and its cosmic-ray adaptation.

    The smoothing term ``smooth`` (default 1, in units of "pixels") makes a perfect prediction of
    an empty patch (no CR, ``p = 0``) give ``dice_b = 1`` and so loss 0. Keras' own
    ``keras.losses.Dice`` has no smoothing term and returns loss 1 there, which pushes a network
    to predict CRs in the many empty sky patches. Per-patch Dice also keeps patches with a single
    small CR from being drowned by patches with many. With ``smooth=0`` an all-empty patch is
    defined as ``dice_b = 1``.

    Pixels with weight 0 are ignored: they enter neither the Dice sums nor the BCE mean. Other
    weights act as pixel weights in both terms (a weight of 2 counts like two pixels). A patch
    with every weight 0 has loss exactly 0. See the module docstring for reductions.

    Parameters
    ----------
    smooth : float, optional
        Additive smoothing of the soft Dice ratio, >= 0. Default 1.
    dice_weight : float, optional
        Weight of the Dice term in ``[0, 1]``; the BCE term gets ``1 - dice_weight``. Default 0.5.
    epsilon : float, optional
        Probabilities are clipped to ``[epsilon, 1 - epsilon]`` inside the logarithms.
    reduction : str or None, optional
        Keras reduction of the per-patch values. Default ``"sum_over_batch_size"``.
    name : str, optional
        Name of the loss. Default ``"dice_bce_loss"``.
    dtype : str, optional
        Computation dtype. Default ``keras.backend.floatx()``.

    References
    ----------
    .. [1] Chen, J. et al. 2021, "TransUNet: Transformers Make Strong Encoders for Medical Image
       Segmentation", arXiv:2102.04306.
    .. [2] Milletari, F., Navab, N. & Ahmadi, S.-A. 2016, "V-Net", arXiv:1606.04797 (soft Dice).
    """

    def __init__(
        self,
        smooth=1.0,
        dice_weight=0.5,
        epsilon=EPSILON,
        reduction="sum_over_batch_size",
        name="dice_bce_loss",
        dtype=None,
        **kwargs,
    ):
        super().__init__(epsilon=epsilon, name=name, reduction=reduction, dtype=dtype, **kwargs)
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}.")
        if not 0.0 <= dice_weight <= 1.0:
            raise ValueError(f"dice_weight must lie in [0, 1], got {dice_weight}.")
        self.smooth = float(smooth)
        self.dice_weight = float(dice_weight)

    def per_sample_loss(self, y_true, y_pred, pixel_weight=None):
        """Per-patch loss, shape ``(B,)``; see the class docstring for the formula."""
        axes = tuple(range(1, len(y_pred.shape)))
        w = ops.ones_like(y_pred) if pixel_weight is None else pixel_weight
        p = ops.clip(y_pred, 0.0, 1.0)
        intersection = ops.sum(w * p * y_true, axis=axes)
        total = ops.sum(w * p, axis=axes) + ops.sum(w * y_true, axis=axes)
        denominator = total + self.smooth
        dice = ops.where(
            denominator > 0,
            (2.0 * intersection + self.smooth) / ops.where(denominator > 0, denominator, 1.0),
            1.0,
        )
        pos, neg = _pixel_bce(y_true, y_pred, self.epsilon)
        bce = ops.divide_no_nan(ops.sum(w * (pos + neg), axis=axes), ops.sum(w, axis=axes))
        return self.dice_weight * (1.0 - dice) + (1.0 - self.dice_weight) * bce

    def get_config(self):
        config = super().get_config()
        config.update(smooth=self.smooth, dice_weight=self.dice_weight)
        return config


@keras.saving.register_keras_serializable(package="kercr")
class WeightedBCE(_PixelWeightedLoss):
    """Pixel binary cross-entropy, the weighted mean over each patch.

    ``loss_b = sum(w * BCE(t, p)) / sum(w)`` over the pixels of patch ``b``, with
    ``BCE(t, p) = -[t log p + (1 - t) log(1 - p)]``. Weight 0 = ignored pixel. Unlike
    ``keras.losses.BinaryCrossentropy`` with a pixel ``sample_weight`` (which divides by all
    pixels, so ignored pixels dilute the mean), the mean here is over the kept pixels only.

    Parameters
    ----------
    epsilon : float, optional
        Probabilities are clipped to ``[epsilon, 1 - epsilon]`` inside the logarithms.
    reduction : str or None, optional
        Keras reduction of the per-patch values. Default ``"sum_over_batch_size"``.
    name : str, optional
        Name of the loss. Default ``"weighted_bce"``.
    dtype : str, optional
        Computation dtype. Default ``keras.backend.floatx()``.
    """

    def __init__(self, epsilon=EPSILON, reduction="sum_over_batch_size", name="weighted_bce", dtype=None, **kwargs):
        super().__init__(epsilon=epsilon, reduction=reduction, name=name, dtype=dtype, **kwargs)

    def per_sample_loss(self, y_true, y_pred, pixel_weight=None):
        """Per-patch weighted mean BCE, shape ``(B,)``."""
        axes = tuple(range(1, len(y_pred.shape)))
        w = ops.ones_like(y_pred) if pixel_weight is None else pixel_weight
        pos, neg = _pixel_bce(y_true, y_pred, self.epsilon)
        return ops.divide_no_nan(ops.sum(w * (pos + neg), axis=axes), ops.sum(w, axis=axes))


@keras.saving.register_keras_serializable(package="kercr")
class MedianWeightedBCE(_PixelWeightedLoss):
    """Cosmic-CoNN's median-weighted binary cross-entropy.

    Per pixel, with ``w`` the pixel weight (``sample_weight``)::

        l = -[k * t * log(p) + w * (1 - t) * log(1 - p)],   k = 1 if w > 0 else 0
        loss_b = sum(l) / sum(k)          # mean over the kept pixels of patch b

    The weight scales only the non-CR term: CR pixels always count with weight 1 (unless
    ignored), while sky pixels are down-weighted where the median of the exposure stack is faint
    and keep weight 1 on stars and galaxies, where confusions with CRs happen. This is the loss of
    Xu et al. (2021), who average over all pixels; here ignored pixels (``w == 0``) are removed
    from both the sum and the pixel count.

    How the weights arrive: the data pipeline passes **one** array as ``sample_weight``, the
    median-weight map with values in ``[alpha, 1]`` (Xu et al. use ``alpha`` as the floor, e.g.
    ``alpha = 0.1``), with 0 written into ignored pixels. The loss does no statistics of its own.
    Without ``sample_weight`` it equals :class:`WeightedBCE` with unit weights.

    Parameters
    ----------
    epsilon : float, optional
        Probabilities are clipped to ``[epsilon, 1 - epsilon]`` inside the logarithms.
    reduction : str or None, optional
        Keras reduction of the per-patch values. Default ``"sum_over_batch_size"``.
    name : str, optional
        Name of the loss. Default ``"median_weighted_bce"``.
    dtype : str, optional
        Computation dtype. Default ``keras.backend.floatx()``.

    References
    ----------
    .. [1] Xu, C., McCully, C., Dong, B., Howell, D. A. & Sen, P. 2021, "Cosmic-CoNN: A Cosmic
       Ray Detection Deep-Learning Framework, Dataset, and Toolkit", arXiv:2106.14922.
    """

    def __init__(self, epsilon=EPSILON, reduction="sum_over_batch_size", name="median_weighted_bce", dtype=None, **kwargs):
        super().__init__(epsilon=epsilon, reduction=reduction, name=name, dtype=dtype, **kwargs)

    def per_sample_loss(self, y_true, y_pred, pixel_weight=None):
        """Per-patch median-weighted BCE, shape ``(B,)``."""
        axes = tuple(range(1, len(y_pred.shape)))
        w = ops.ones_like(y_pred) if pixel_weight is None else pixel_weight
        keep = ops.cast(w > 0, y_pred.dtype)
        pos, neg = _pixel_bce(y_true, y_pred, self.epsilon)
        return ops.divide_no_nan(
            ops.sum(keep * pos + w * neg, axis=axes), ops.sum(keep, axis=axes)
        )


@keras.saving.register_keras_serializable(package="kercr")
class WeightedMSE(_PixelWeightedLoss):
    """Squared error, the weighted mean over each patch: the inpainting network's loss.

    ``loss_b = sum(w * (t - p)^2) / sum(w)`` over the pixels of patch ``b``; ``y_true`` and
    ``y_pred`` are image values (not probabilities). The inpainting network
    (:func:`kercr.models.build_inpainter`) is trained with ``w`` = the mask of the pixels it
    replaces, so only those count. Weight 0 = ignored pixel.

    Parameters
    ----------
    reduction : str or None, optional
        Keras reduction of the per-patch values. Default ``"sum_over_batch_size"``.
    name : str, optional
        Name of the loss. Default ``"weighted_mse"``.
    dtype : str, optional
        Computation dtype. Default ``keras.backend.floatx()``.
    """

    def __init__(self, reduction="sum_over_batch_size", name="weighted_mse", dtype=None, **kwargs):
        kwargs.pop("epsilon", None)  # not used by a squared error
        super().__init__(reduction=reduction, name=name, dtype=dtype, **kwargs)

    def per_sample_loss(self, y_true, y_pred, pixel_weight=None):
        """Per-patch weighted mean squared error, shape ``(B,)``."""
        axes = tuple(range(1, len(y_pred.shape)))
        w = ops.ones_like(y_pred) if pixel_weight is None else pixel_weight
        return ops.divide_no_nan(ops.sum(w * ops.square(y_true - y_pred), axis=axes), ops.sum(w, axis=axes))
