"""Cosmic-ray detection metrics: streaming Keras metrics and exact numpy evaluation.

Two families:

- Streaming ``keras.metrics.Metric`` subclasses for training and validation logs:
  :class:`DiceCoefficient`, :class:`TPRAtFPR`, :class:`PrecisionAtRecall`. They pool every
  pixel seen since the last reset (not a mean of per-batch values).
- numpy functions for final evaluation on pixels pooled over many frames: :func:`roc_curve`,
  :func:`pr_curve`, :func:`tpr_at_fpr`, :func:`threshold_at_fpr`, :func:`precision_at_recall`,
  :func:`dice_score`, :func:`best_dice`.

Ignored pixels
--------------
At a false-positive rate of 0.01 % a few hundred pixels decide the metric, so pixels that are not
sky (saturated stars, bad columns, padding) must be excluded, never counted as negatives.

- Keras metrics: pass them through ``compile(weighted_metrics=[...])`` (plain ``metrics=`` get
  no ``sample_weight``); the pipeline's ``sample_weight`` (0 = ignored) then reaches
  ``update_state``. With ``weights_as_mask=True`` (default) any positive weight counts as 1, so
  the median-weight maps used by :class:`kercr.losses.MedianWeightedBCE` do not distort pixel
  counts.
- numpy functions: ``ignore`` is a boolean array shaped like ``y_true``; True = excluded.

Memory with ~1e8 pooled pixels
------------------------------
:func:`tpr_at_fpr`, :func:`threshold_at_fpr`, :func:`precision_at_recall`, :func:`best_dice` and
:func:`dice_score` are exact and avoid a full sort: they copy the scores of the negative pixels
once (``np.partition``, O(N), or one in-place sort for :func:`best_dice`) and otherwise use
boolean temporaries, i.e. roughly ``itemsize + 3`` bytes per pixel on top of the inputs (~0.7 GB
for 1e8 float32 scores). :func:`roc_curve` and :func:`pr_curve` with ``bins=None`` return one
point per distinct score and need an argsort (~25 bytes per pixel); pass ``bins=4096`` for the
logit-histogram curve (a few MB, resolution below). For more pixels than fit in memory, feed
frames one at a time to a streaming metric's ``update_state`` (it works eagerly on numpy arrays).

Histogram resolution
--------------------
Sigmoid probabilities of a confident model crowd against 1, where the thresholds for FPR 1e-4
live, so bins uniform in probability are useless there. Histograms here are uniform in
``logit(p) = log(p / (1 - p))``: by default 4096 bins over ``[-20, 20]``, a width of
0.0098 in logit, i.e. about 1 % relative resolution in ``1 - p`` (and in ``p`` near 0); values
outside the range fall into the end bins. Float32 probabilities themselves stop resolving near 1
at ``1 - p = 2**-24 = 6e-8`` (logit 16.6), well inside the range.
"""

import math

import keras
import numpy as np
from keras import ops

from kercr.losses import _match_true, _split_weights

__all__ = [
    "DiceCoefficient",
    "PrecisionAtRecall",
    "TPRAtFPR",
    "best_dice",
    "dice_score",
    "pr_curve",
    "precision_at_recall",
    "roc_curve",
    "threshold_at_fpr",
    "tpr_at_fpr",
]

#: Default logit histogram: number of bins and logit range.
NUM_BINS = 4096
LOGIT_MIN = -20.0
LOGIT_MAX = 20.0


# --------------------------------------------------------------------------------------------
# Streaming Keras metrics
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# numpy evaluation on pooled pixels
# --------------------------------------------------------------------------------------------
def _as_labels(y_true, name="y_true"):
    y = np.asarray(y_true)
    if y.dtype != bool:
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"{name} must be a binary CR mask (0/1 or bool); found other values.")
        y = y.astype(bool)
    return y


def _split_scores(y_true, y_score, ignore):
    """Scores of the kept CR pixels and of the kept non-CR pixels (1-D copies)."""
    y = _as_labels(y_true)
    s = np.asarray(y_score)
    if s.shape != y.shape:
        raise ValueError(f"y_score has shape {s.shape} but y_true has shape {y.shape}.")
    if not np.issubdtype(s.dtype, np.floating) and not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"y_score must be numeric, got dtype {s.dtype}.")
    if np.issubdtype(s.dtype, np.floating):
        n_bad = s.size - np.count_nonzero(np.isfinite(s))
        if n_bad:
            raise ValueError(
                f"y_score has {n_bad} NaN/inf values; mask them with ignore= or fix the input."
            )
    if ignore is not None:
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != y.shape:
            raise ValueError(f"ignore has shape {ignore.shape} but y_true has shape {y.shape}.")
        keep = ~ignore
        pos, neg = s[y & keep], s[~y & keep]
    else:
        pos, neg = s[y], s[~y]
    if pos.size == 0:
        raise ValueError(
            "No CR (positive) pixels left after applying ignore; TPR/recall are undefined. "
            "Evaluate on frames that contain cosmic rays."
        )
    if neg.size == 0:
        raise ValueError("No non-CR (negative) pixels left after applying ignore.")
    return pos, neg


def _largest_count(rate, total):
    """Largest integer m with m / total <= rate (robust to floating-point rounding)."""
    m = min(int(math.floor(rate * total)), total)
    while m < total and (m + 1) / total <= rate:
        m += 1
    while m > 0 and m / total > rate:
        m -= 1
    return m


def _fpr_vertices(pos, neg, fpr):
    """The two ROC vertices around ``fpr``: (tp1, fp1), (tp2, fp2) and the score v between."""
    n = neg.size
    m = _largest_count(fpr, n)
    if m >= n:
        return None
    k = n - 1 - m
    neg.partition(k)
    v = neg[k]  # the (m + 1)-th largest negative score
    fp1 = np.count_nonzero(neg[k + 1:] > v)
    fp2 = n - k - 1 + np.count_nonzero(neg[: k + 1] >= v)
    tp1 = np.count_nonzero(pos > v)
    tp2 = np.count_nonzero(pos >= v)
    return (tp1, fp1), (tp2, fp2), v


def tpr_at_fpr(y_true, y_score, fpr=1e-4, *, ignore=None):
    """Exact true-positive rate at a false-positive rate, by linear interpolation on the ROC.

    The ROC curve has one vertex per distinct score (predict CR where ``score >= t``) plus
    (0, 0). The result is the curve interpolated linearly at ``fpr``; on a vertical segment at
    exactly ``fpr`` the top is taken. O(N) time via ``np.partition`` (no full sort).

    Parameters
    ----------
    y_true : array_like of bool or {0, 1}
        CR mask, any shape (e.g. a stack of frames).
    y_score : array_like of float
        CR probability or any score increasing with CR likelihood, same shape.
    fpr : float, optional
        Target false-positive rate as a fraction. Default 1e-4 (0.01 %).
    ignore : array_like of bool, optional
        True marks pixels to exclude (saturated stars, bad pixels, padding).

    Returns
    -------
    float
        TPR in [0, 1].

    Raises
    ------
    ValueError
        No CR or no non-CR pixels after ``ignore``, shape mismatch, non-binary ``y_true``,
        non-finite scores.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1] (a fraction, not percent), got {fpr}.")
    pos, neg = _split_scores(y_true, y_score, ignore)
    p, n = pos.size, neg.size
    vertices = _fpr_vertices(pos, neg, fpr)
    if vertices is None:
        return 1.0
    (tp1, fp1), (tp2, fp2), _ = vertices
    frac = (fpr * n - fp1) / (fp2 - fp1)
    return float(tp1 / p + (tp2 - tp1) / p * min(max(frac, 0.0), 1.0))


def threshold_at_fpr(y_true, y_score, fpr=1e-4, *, ignore=None):
    """Lowest threshold whose false-positive rate does not exceed ``fpr``.

    Predicting CR where ``score >= threshold`` gives ``FPR <= fpr`` and the highest TPR possible
    under that constraint (the ROC vertex just left of ``fpr``). The threshold returned is the
    next representable number above the ``(m+1)``-th highest non-CR score (``m`` = allowed false
    positives), so it classifies exactly like the lowest score above that value.

    Parameters
    ----------
    y_true, y_score, fpr, ignore
        As for :func:`tpr_at_fpr`.

    Returns
    -------
    float
        Threshold in the units of ``y_score``; the minimum score when ``fpr >= 1``.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1] (a fraction, not percent), got {fpr}.")
    pos, neg = _split_scores(y_true, y_score, ignore)
    vertices = _fpr_vertices(pos, neg, fpr)
    if vertices is None:
        return float(min(pos.min(), neg.min()))
    v = vertices[2]
    if np.issubdtype(np.asarray(v).dtype, np.integer):
        return float(v + 1)
    return float(np.nextafter(v, np.inf))


def precision_at_recall(y_true, y_score, recall=0.95, *, ignore=None):
    """Precision at the highest threshold whose recall reaches ``recall``.

    The threshold is the ``k``-th highest CR score with ``k = ceil(recall * P)``; precision is
    ``TP / (TP + FP)`` for ``score >= threshold`` (ties included). Not interpolated.

    Parameters
    ----------
    y_true, y_score, ignore
        As for :func:`tpr_at_fpr`.
    recall : float, optional
        Target recall in (0, 1]. Default 0.95.

    Returns
    -------
    float
    """
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must lie in (0, 1], got {recall}.")
    pos, neg = _split_scores(y_true, y_score, ignore)
    p = pos.size
    k = min(max(int(math.ceil(recall * p)), 1), p)  # smallest k with k / P >= recall
    while k > 1 and (k - 1) / p >= recall:
        k -= 1
    while k < p and k / p < recall:
        k += 1
    t = np.partition(pos, p - k)[p - k]
    tp = np.count_nonzero(pos >= t)
    fp = np.count_nonzero(neg >= t)
    return float(tp / (tp + fp))


def dice_score(y_true, y_pred_bool, *, ignore=None):
    """Dice coefficient ``2 TP / (2 TP + FP + FN)`` of a binary prediction, pooled over pixels.

    Parameters
    ----------
    y_true : array_like of bool or {0, 1}
        CR mask.
    y_pred_bool : array_like of bool or {0, 1}
        Predicted CR mask (threshold probabilities first), same shape.
    ignore : array_like of bool, optional
        True marks pixels to exclude.

    Returns
    -------
    float
        Dice in [0, 1]; 1.0 when both masks are empty (perfect agreement).
    """
    y = _as_labels(y_true)
    pred = _as_labels(y_pred_bool, "y_pred_bool")
    if pred.shape != y.shape:
        raise ValueError(f"y_pred_bool has shape {pred.shape} but y_true has shape {y.shape}.")
    if ignore is not None:
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != y.shape:
            raise ValueError(f"ignore has shape {ignore.shape} but y_true has shape {y.shape}.")
        keep = ~ignore
        y, pred = y & keep, pred & keep
    tp = np.count_nonzero(y & pred)
    denominator = np.count_nonzero(y) + np.count_nonzero(pred)
    return 1.0 if denominator == 0 else float(2 * tp / denominator)


def best_dice(y_true, y_score, *, ignore=None):
    """Highest Dice over all thresholds, and the threshold that reaches it.

    Only CR scores need testing as thresholds: raising a threshold up to the next CR score keeps
    TP and cannot add false positives. Among equal Dice values the highest threshold wins.

    Parameters
    ----------
    y_true, y_score, ignore
        As for :func:`tpr_at_fpr`.

    Returns
    -------
    dice : float
    threshold : float
        Predict CR where ``score >= threshold``.
    """
    pos, neg = _split_scores(y_true, y_score, ignore)
    neg.sort()
    pos_sorted = np.sort(pos)
    candidates = np.unique(pos)[::-1]
    p, n = pos.size, neg.size
    tp = p - np.searchsorted(pos_sorted, candidates, side="left")
    fp = n - np.searchsorted(neg, candidates, side="left")
    dice = 2.0 * tp / (tp + fp + p)
    best = int(np.argmax(dice))
    return float(dice[best]), float(candidates[best])


def _histogram_counts(pos, neg, bins):
    edges = np.linspace(LOGIT_MIN, LOGIT_MAX, bins + 1)

    def counts(scores):
        p = np.clip(scores.astype(np.float64), 0.0, 1.0)
        with np.errstate(divide="ignore"):
            logit = np.log(p) - np.log1p(-p)
        width = (LOGIT_MAX - LOGIT_MIN) / bins
        index = np.clip(np.floor((logit - LOGIT_MIN) / width), 0, bins - 1).astype(np.int64)
        return np.bincount(index, minlength=bins)

    # Threshold of bin k = probability at its lower edge; bin 0 takes everything below.
    thresholds = 1.0 / (1.0 + np.exp(-edges[:-1]))
    thresholds[0] = 0.0
    tps = np.cumsum(counts(pos)[::-1])
    fps = np.cumsum(counts(neg)[::-1])
    return tps, fps, thresholds[::-1]


def _exact_counts(pos, neg):
    scores = np.concatenate([pos, neg])
    labels = np.zeros(scores.size, dtype=bool)
    labels[: pos.size] = True
    order = np.argsort(scores, kind="stable")[::-1]
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(labels, dtype=np.int64)[last]
    fps = last + 1 - tps
    return tps, fps, scores[last]


def roc_curve(y_true, y_score, *, ignore=None, bins=None):
    """ROC curve of pooled pixels.

    Parameters
    ----------
    y_true, y_score, ignore
        As for :func:`tpr_at_fpr`.
    bins : int, optional
        None (default): exact, one point per distinct score (argsort; ~25 bytes per pixel).
        An int: histogram of ``bins`` bins uniform in logit(p) over [-20, 20] (``y_score``
        must be a probability), a few MB whatever the number of pixels.

    Returns
    -------
    fpr, tpr : ndarray of float64
        Non-decreasing, starting at (0, 0) and ending at (1, 1).
    thresholds : ndarray
        Decreasing; ``thresholds[i]`` gives point ``i`` when predicting ``score >= t``;
        ``thresholds[0] = inf``.
    """
    pos, neg = _split_scores(y_true, y_score, ignore)
    tps, fps, thr = _histogram_counts(pos, neg, bins) if bins else _exact_counts(pos, neg)
    fpr = np.r_[0.0, fps / neg.size]
    tpr = np.r_[0.0, tps / pos.size]
    return fpr, tpr, np.r_[np.inf, thr.astype(np.float64)]


def pr_curve(y_true, y_score, *, ignore=None, bins=None):
    """Precision-recall curve of pooled pixels.

    Parameters
    ----------
    y_true, y_score, ignore, bins
        As for :func:`roc_curve`.

    Returns
    -------
    precision, recall : ndarray of float64
        One entry per threshold, recall non-decreasing (thresholds decreasing). Histogram bins
        that hold no pixel above them are dropped (precision undefined).
    thresholds : ndarray of float64
        Decreasing; predict CR where ``score >= t``.
    """
    pos, neg = _split_scores(y_true, y_score, ignore)
    tps, fps, thr = _histogram_counts(pos, neg, bins) if bins else _exact_counts(pos, neg)
    predicted = tps + fps
    keep = predicted > 0
    precision = tps[keep] / predicted[keep]
    return precision, tps[keep] / pos.size, thr[keep].astype(np.float64)
