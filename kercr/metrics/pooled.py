"""Exact cosmic-ray detection metrics on pixels pooled over many frames (numpy only).

:func:`roc_curve`, :func:`pr_curve`, :func:`tpr_at_fpr`, :func:`threshold_at_fpr`,
:func:`precision_at_recall`, :func:`dice_score`, :func:`best_dice`. ``ignore`` is a boolean array
shaped like ``y_true``; True = excluded (see :mod:`kercr.metrics` for why ignored pixels are
never counted as negatives).

Memory with ~1e8 pooled pixels
------------------------------
:func:`tpr_at_fpr`, :func:`threshold_at_fpr`, :func:`precision_at_recall`, :func:`best_dice` and
:func:`dice_score` are exact and avoid a full sort: they copy the scores of the negative pixels
once (``np.partition``, O(N), or one in-place sort for :func:`best_dice`) and otherwise use
boolean temporaries, i.e. roughly ``itemsize + 3`` bytes per pixel on top of the inputs (~0.7 GB
for 1e8 float32 scores). :func:`roc_curve` and :func:`pr_curve` with ``bins=None`` return one
point per distinct score and need an argsort (~25 bytes per pixel); pass ``bins=4096`` for the
logit-histogram curve (a few MB; its resolution is described in :mod:`kercr.metrics.streaming`,
whose metrics use the same bins). For more pixels than fit in memory, feed frames one at a time
to a streaming metric's ``update_state``.
"""

import math

import numpy as np

__all__ = ["best_dice", "dice_score", "pr_curve", "precision_at_recall", "roc_curve", "threshold_at_fpr", "tpr_at_fpr"]

#: Default logit histogram (here and in the streaming metrics): number of bins and logit range.
NUM_BINS = 4096
LOGIT_MIN = -20.0
LOGIT_MAX = 20.0


def _as_labels(y_true, name="y_true", keep=None):
    """``y_true`` as bool; its values must be 0/1 on the ``keep`` pixels (all when None): an
    ignored pixel may hold any flag value."""
    y = np.asarray(y_true)
    if y.dtype != bool:
        kept = y if keep is None else y[keep]
        if not np.all((kept == 0) | (kept == 1)):
            raise ValueError(f"{name} must be a binary CR mask (0/1 or bool); found other values"
                             f"{'' if keep is None else ' on pixels not ignored'}.")
        y = y == 1
    return y


def _keep(ignore, shape):
    """The kept pixels (``~ignore``), or None when nothing is ignored."""
    if ignore is None:
        return None
    ignore = np.asarray(ignore, dtype=bool)
    if ignore.shape != shape:
        raise ValueError(f"ignore has shape {ignore.shape} but y_true has shape {shape}.")
    return ~ignore


def _split_scores(y_true, y_score, ignore):
    """Scores of the kept CR pixels and of the kept non-CR pixels (1-D copies); only kept pixels
    are checked (an ignored pixel may hold NaN or a flag value)."""
    shape = np.shape(y_true)
    keep = _keep(ignore, shape)
    y = _as_labels(y_true, keep=keep)
    s = np.asarray(y_score)
    if s.shape != y.shape:
        raise ValueError(f"y_score has shape {s.shape} but y_true has shape {y.shape}.")
    if not np.issubdtype(s.dtype, np.floating) and not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"y_score must be numeric, got dtype {s.dtype}.")
    if np.issubdtype(s.dtype, np.floating):
        kept = s if keep is None else s[keep]
        n_bad = kept.size - np.count_nonzero(np.isfinite(kept))
        if n_bad:
            raise ValueError(
                f"y_score has {n_bad} NaN/inf values; mask them with ignore= or fix the input."
            )
    if keep is not None:
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
        return float(v) + 1.0  # in float: v + 1 wraps round at the top of uint8/int8
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
    keep = _keep(ignore, np.shape(y_true))
    y = _as_labels(y_true, keep=keep)
    if np.shape(y_pred_bool) != y.shape:
        raise ValueError(f"y_pred_bool has shape {np.shape(y_pred_bool)} but y_true has shape {y.shape}.")
    pred = _as_labels(y_pred_bool, "y_pred_bool", keep=keep)
    if keep is not None:
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
