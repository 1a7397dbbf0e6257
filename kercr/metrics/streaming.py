"""Streaming Keras metrics of cosmic-ray detection, for training and validation logs.

:class:`DiceCoefficient`, :class:`TPRAtFPR` and :class:`PrecisionAtRecall` pool every pixel seen
since the last reset (not a mean of per-batch values). Pass them through
``compile(weighted_metrics=[...])`` (plain ``metrics=`` get no ``sample_weight``): the pipeline's
``sample_weight`` (0 = ignored) then reaches ``update_state``. With ``weights_as_mask=True``
(default) any positive weight counts as 1, so the median-weight maps used by
:class:`kercr.losses.MedianWeightedBCE` do not distort pixel counts. For more pixels than fit in
memory, feed frames one at a time to ``update_state`` (it works eagerly on numpy arrays).

Histogram resolution
--------------------
Sigmoid probabilities of a confident model crowd against 1, where the thresholds for FPR 1e-4
live, so bins uniform in probability are useless there. Histograms here are uniform in
``logit(p) = log(p / (1 - p))``: by default 4096 bins over ``[-20, 20]``, a width of
0.0098 in logit, i.e. about 1 % relative resolution in ``1 - p`` (and in ``p`` near 0); values
outside the range fall into the end bins. Float32 probabilities themselves stop resolving near 1
at ``1 - p = 2**-24 = 6e-8`` (logit 16.6), well inside the range.

The classes are registered as ``kercr>DiceCoefficient``, ``kercr>TPRAtFPR`` and
``kercr>PrecisionAtRecall``; a saved model finds them by those names, whatever module they live in.
"""

import keras
from keras import ops

from kercr.losses import _match_true, _split_weights
from kercr.metrics.pooled import LOGIT_MAX, LOGIT_MIN, NUM_BINS

__all__ = ["DiceCoefficient", "PrecisionAtRecall", "TPRAtFPR"]


def _pixel_weights(y_pred, sample_weight, weights_as_mask):
    """Per-pixel weights broadcast to the shape of ``y_pred`` (ones when none are given)."""
    pixel, patch = _split_weights(sample_weight, y_pred)
    w = ops.ones_like(y_pred) if pixel is None else ops.broadcast_to(pixel, ops.shape(y_pred))
    if patch is not None:
        patch = ops.reshape(patch, (-1,) + (1,) * (len(y_pred.shape) - 1))
        w = w * patch
    if weights_as_mask:
        w = ops.cast(w > 0, y_pred.dtype)
    return w


def _prepare(y_true, y_pred, sample_weight, dtype, weights_as_mask):
    y_pred = ops.convert_to_tensor(y_pred, dtype=dtype)
    y_true = _match_true(ops.convert_to_tensor(y_true, dtype=dtype), y_pred)
    w = _pixel_weights(y_pred, sample_weight, weights_as_mask)
    return y_true, y_pred, w


@keras.saving.register_keras_serializable(package="kercr")
class DiceCoefficient(keras.metrics.Metric):
    """Dice coefficient of the thresholded prediction, pooled over all pixels seen.

    ``Dice = 2 TP / (2 TP + FP + FN)`` with a pixel predicted CR when ``p >= threshold``, the
    counts summed over every pixel since the last reset (one number for the whole validation
    set, not a mean of per-batch values). Returns 1 while no pixel is positive in either mask.

    Parameters
    ----------
    threshold : float, optional
        Probability threshold. Default 0.5.
    weights_as_mask : bool, optional
        If True (default), ``sample_weight`` is used only as an ignore mask (0 = ignored, any
        positive weight counts 1). If False, weights multiply the counts.
    name : str, optional
        Default ``"dice"``.
    dtype : str, optional
        Dtype of the accumulators. Default ``"float32"``.
    """

    def __init__(self, threshold=0.5, weights_as_mask=True, name="dice", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.threshold = float(threshold)
        self.weights_as_mask = bool(weights_as_mask)
        self.tp = self.add_variable(shape=(), initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        t, p, w = _prepare(y_true, y_pred, sample_weight, self.dtype, self.weights_as_mask)
        t = ops.cast(t > 0.5, self.dtype)
        pred = ops.cast(p >= self.threshold, self.dtype)
        self.tp.assign_add(ops.sum(w * pred * t))
        self.fp.assign_add(ops.sum(w * pred * (1.0 - t)))
        self.fn.assign_add(ops.sum(w * (1.0 - pred) * t))

    def result(self):
        denominator = 2.0 * self.tp + self.fp + self.fn
        return ops.where(denominator > 0, ops.divide_no_nan(2.0 * self.tp, denominator), 1.0)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(ops.zeros(v.shape, dtype=v.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold, weights_as_mask=self.weights_as_mask)
        return config


class _LogitHistogramMetric(keras.metrics.Metric):
    """Accumulates weighted counts of CR / non-CR pixels in bins uniform in logit(p)."""

    def __init__(
        self,
        num_bins=NUM_BINS,
        logit_min=LOGIT_MIN,
        logit_max=LOGIT_MAX,
        weights_as_mask=True,
        name=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__(name=name, dtype=dtype, **kwargs)
        if num_bins < 2 or not logit_min < logit_max:
            raise ValueError(
                f"Need num_bins >= 2 and logit_min < logit_max; got num_bins={num_bins}, "
                f"logit_min={logit_min}, logit_max={logit_max}."
            )
        self.num_bins = int(num_bins)
        self.logit_min = float(logit_min)
        self.logit_max = float(logit_max)
        self.weights_as_mask = bool(weights_as_mask)
        self.positives = self.add_variable(
            shape=(self.num_bins,), initializer="zeros", name="positives"
        )
        self.negatives = self.add_variable(
            shape=(self.num_bins,), initializer="zeros", name="negatives"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        t, p, w = _prepare(y_true, y_pred, sample_weight, self.dtype, self.weights_as_mask)
        t = ops.cast(t > 0.5, self.dtype)
        p = ops.clip(ops.nan_to_num(p, nan=0.0), 0.0, 1.0)
        # logit = log p - log(1 - p); 1 - p is exact in float for p >= 0.5, so the top bins keep
        # their resolution. p = 0 or 1 give -inf / +inf and land in the end bins.
        logit = ops.log(p) - ops.log(1.0 - p)
        width = (self.logit_max - self.logit_min) / self.num_bins
        position = ops.clip((logit - self.logit_min) / width, 0.0, self.num_bins - 1.0)
        index = ops.reshape(ops.cast(ops.floor(position), "int32"), (-1,))
        w = ops.reshape(w, (-1,))
        t = ops.reshape(t, (-1,))
        self.positives.assign_add(
            ops.segment_sum(w * t, index, num_segments=self.num_bins)
        )
        self.negatives.assign_add(
            ops.segment_sum(w * (1.0 - t), index, num_segments=self.num_bins)
        )

    def _curve(self):
        """Cumulative (TP, FP) at the bin edges, from the highest threshold down.

        Entry ``i`` counts the pixels in the top ``i`` bins (``i = 0`` is the point (0, 0)).
        """
        zero = ops.zeros((1,), dtype=self.dtype)
        tp = ops.concatenate([zero, ops.cumsum(ops.flip(self.positives, axis=0))])
        fp = ops.concatenate([zero, ops.cumsum(ops.flip(self.negatives, axis=0))])
        return tp, fp

    def reset_state(self):
        for v in (self.positives, self.negatives):
            v.assign(ops.zeros(v.shape, dtype=v.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_bins=self.num_bins,
            logit_min=self.logit_min,
            logit_max=self.logit_max,
            weights_as_mask=self.weights_as_mask,
        )
        return config


@keras.saving.register_keras_serializable(package="kercr")
class TPRAtFPR(_LogitHistogramMetric):
    """True-positive rate at a fixed false-positive rate, streaming.

    Counts of CR and non-CR pixels are accumulated in a histogram uniform in ``logit(p)`` (see
    the module docstring for the resolution). The ROC curve through the bin edges is
    interpolated linearly at ``fpr``, the same rule as :func:`tpr_at_fpr`; the two agree to
    within the TPR carried by the one bin that straddles the target. Returns 0 until a CR pixel
    has been seen.

    Parameters
    ----------
    fpr : float, optional
        Target false-positive rate (fraction, not percent). Default 1e-4 = 0.01 %.
    num_bins, logit_min, logit_max : optional
        Histogram in logit(p). Defaults 4096 bins over [-20, 20].
    weights_as_mask : bool, optional
        If True (default) ``sample_weight`` is only an ignore mask (0 = ignored).
    name : str, optional
        Default ``"tpr_at_fpr"``.
    dtype : str, optional
        Dtype of the accumulators. Default ``"float32"`` (exact counts up to 2**24 per bin;
        beyond that the relative error stays ~1e-7 per update).

    References
    ----------
    .. [1] Zhang, K. & Bloom, J. S. 2020, "deepCR: Cosmic Ray Rejection with Deep Learning",
       arXiv:1907.09500 (TPR at fixed FPR as the CR-detection figure of merit).
    """

    def __init__(self, fpr=1e-4, name="tpr_at_fpr", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= fpr <= 1.0:
            raise ValueError(f"fpr must lie in [0, 1] (a fraction, not percent), got {fpr}.")
        self.fpr = float(fpr)

    def result(self):
        tp, fp = self._curve()
        tpr = ops.divide_no_nan(tp, tp[-1])
        fpr = ops.divide_no_nan(fp, fp[-1])
        target = ops.cast(self.fpr, self.dtype)
        # Last ROC point with FPR <= target (the top of a vertical segment), then the next one.
        lo = ops.sum(ops.cast(fpr <= target, "int32")) - 1
        hi = ops.minimum(lo + 1, self.num_bins)
        f_lo, f_hi = ops.take(fpr, lo), ops.take(fpr, hi)
        t_lo, t_hi = ops.take(tpr, lo), ops.take(tpr, hi)
        frac = ops.clip(ops.divide_no_nan(target - f_lo, f_hi - f_lo), 0.0, 1.0)
        return t_lo + (t_hi - t_lo) * frac

    def get_config(self):
        config = super().get_config()
        config["fpr"] = self.fpr
        return config


@keras.saving.register_keras_serializable(package="kercr")
class PrecisionAtRecall(_LogitHistogramMetric):
    """Precision at the highest histogram threshold whose recall reaches ``recall``, streaming.

    Same logit histogram as :class:`TPRAtFPR`. Precision is not interpolated (it is not linear
    between ROC points); the threshold is the highest bin edge with recall >= target, as in
    :func:`precision_at_recall`. Returns 0 until a CR pixel has been seen.

    Parameters
    ----------
    recall : float, optional
        Target recall (TPR) in (0, 1]. Default 0.95.
    num_bins, logit_min, logit_max, weights_as_mask, dtype : optional
        As for :class:`TPRAtFPR`.
    name : str, optional
        Default ``"precision_at_recall"``.
    """

    def __init__(self, recall=0.95, name="precision_at_recall", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 < recall <= 1.0:
            raise ValueError(f"recall must lie in (0, 1], got {recall}.")
        self.recall = float(recall)

    def result(self):
        tp, fp = self._curve()
        rec = ops.divide_no_nan(tp, tp[-1])
        reached = ops.sum(ops.cast(rec >= ops.cast(self.recall, self.dtype), "int32"))
        index = ops.clip(self.num_bins + 1 - reached, 0, self.num_bins)
        tp_at, fp_at = ops.take(tp, index), ops.take(fp, index)
        return ops.where(tp[-1] > 0, ops.divide_no_nan(tp_at, tp_at + fp_at), 0.0)

    def get_config(self):
        config = super().get_config()
        config["recall"] = self.recall
        return config
