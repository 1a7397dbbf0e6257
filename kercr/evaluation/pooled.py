"""Evaluation on pixels pooled over many patches or frames, honouring ignore masks.

At 0.01 % FPR a few hundred false-positive pixels decide the metric, so the scores of every
patch are pooled before any rate is computed, and ignored pixels (weight 0: saturated stars,
bleed trails, bad pixels, NaN) are removed from both the positives and the negatives.
"""

from __future__ import annotations

import numpy as np

from kercr import metrics as M
from kercr.data.augment import flip_average
from kercr.models import logit_model

__all__ = ["pooled_metrics", "pooled_predictions", "validation_metrics"]


def pooled_predictions(model, batches, *, tta=False):
    """Run ``model`` over ``(x, y, w)`` numpy batches; return pooled (truth, score, ignore).

    The score is the CR logit when the model exposes one (:func:`kercr.models.logit_model`),
    else the probability: logits keep the ranking of confident pixels that float32
    probabilities collapse onto 1.0. Both rank pixels identically otherwise.

    Parameters
    ----------
    model : keras.Model
    batches : iterable of (x, y, w)
        ``x`` (B, H, W, 1) float32 normalized images, ``y`` (B, H, W, 1) CR truth, ``w`` the
        pixel weights (0 = ignored pixel).
    tta : bool
        Score each patch as the mean over its four flips (:func:`kercr.data.augment.flip_average`),
        as ``kercr.detect(..., tta=True)`` does.

    Returns
    -------
    truth : numpy.ndarray of bool, shape (N,)
    score : numpy.ndarray of float32, shape (N,)
        Logits (or probabilities for models without a logit layer).
    ignore : numpy.ndarray of bool, shape (N,)
    """
    scorer = logit_model(model) or model
    truth, score, ignore = [], [], []
    for x, y, w in batches:
        x = np.asarray(x, dtype=np.float32)
        p = flip_average(scorer.predict_on_batch, x) if tta else np.asarray(scorer.predict_on_batch(x), dtype=np.float32)
        truth.append(np.asarray(y).reshape(-1) > 0.5)
        score.append(p.reshape(-1))
        ignore.append(np.asarray(w).reshape(-1) <= 0)
    return np.concatenate(truth), np.concatenate(score), np.concatenate(ignore)


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.float64(z))))


def _probability_cut(logit_cut: float) -> float:
    """The probability threshold that flags, in float32 as Keras detection computes probabilities, no
    pixel that the float32 logit cut ``logit_cut`` leaves out: just above the float32 probability of
    the highest logit below the cut (the float64 sigmoid of the cut itself rounds to that very value,
    so a probability runtime flagged one negative more than the FPR allows). At most 1."""
    below = np.nextafter(np.float32(logit_cut), np.float32(-np.inf))
    with np.errstate(over="ignore"):
        p_below = np.float32(1.0) / (np.float32(1.0) + np.exp(-below, dtype=np.float32))
    return min(float(np.nextafter(p_below, np.float32(np.inf))), 1.0)


def pooled_metrics(truth, score, ignore=None, *, threshold=0.5, logits=True, logit_threshold=None) -> dict:
    """The standard kercr metrics on pooled pixels.

    Parameters
    ----------
    truth, score, ignore : numpy.ndarray, shape (N,)
        As returned by :func:`pooled_predictions`.
    threshold : float
        Probability threshold of the ``dice`` entry.
    logits : bool
        Whether ``score`` holds logits (thresholds are reported as probabilities either way,
        computed in float64; ``*_logit`` entries give the logit thresholds).
    logit_threshold : float, optional
        With ``logits``: the cut of the ``dice`` entry as a logit, for a threshold so close to 1
        that even float64 cannot tell it from 1 (``threshold`` is then only reported).

    Returns
    -------
    dict
        ``tpr_at_fpr_1e-4`` and ``tpr_at_fpr_1e-3`` (TPR at 0.01 % and 0.1 % FPR),
        ``threshold_at_fpr_1e-4``, ``precision_at_recall_0.95``, ``dice`` (at ``threshold``),
        ``best_dice`` and ``best_dice_threshold``, and the pixel counts used.
    """
    keep = np.ones_like(truth, dtype=bool) if ignore is None else ~np.asarray(ignore, dtype=bool)
    to_p = _sigmoid if logits else float
    if logits and logit_threshold is not None:
        cut = float(logit_threshold)
    elif logits:
        with np.errstate(divide="ignore"):
            cut = np.log(threshold) - np.log1p(-threshold)
    else:
        cut = threshold
    best, best_t = M.best_dice(truth, score, ignore=ignore)
    t_fpr = M.threshold_at_fpr(truth, score, 1e-4, ignore=ignore)
    return {
        "tpr_at_fpr_1e-4": float(M.tpr_at_fpr(truth, score, 1e-4, ignore=ignore)),
        "tpr_at_fpr_1e-3": float(M.tpr_at_fpr(truth, score, 1e-3, ignore=ignore)),
        "threshold_at_fpr_1e-4": _probability_cut(t_fpr) if logits else min(float(t_fpr), 1.0),
        "logit_threshold_at_fpr_1e-4": float(t_fpr) if logits else None,
        "precision_at_recall_0.95": float(M.precision_at_recall(truth, score, 0.95, ignore=ignore)),
        "dice": float(M.dice_score(truth, score >= cut, ignore=ignore)),
        "dice_threshold": float(threshold),
        "best_dice": float(best),
        "best_dice_threshold": to_p(best_t),
        "logit_best_dice_threshold": float(best_t) if logits else None,
        "cr_pixels": int(np.count_nonzero(truth & keep)),
        "non_cr_pixels": int(np.count_nonzero(~truth & keep)),
        "ignored_pixels": int(np.count_nonzero(~keep)),
    }


def validation_metrics(model, batches, *, threshold=0.5, tta=False) -> dict:
    """:func:`pooled_metrics` of ``model`` on ``(x, y, w)`` batches (``tta``: see :func:`pooled_predictions`)."""
    return pooled_metrics(*pooled_predictions(model, batches, tta=tta), threshold=threshold,
                          logits=logit_model(model) is not None)
