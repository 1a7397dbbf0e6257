"""Cosmic-ray detection metrics: streaming Keras metrics and exact numpy evaluation.

Two families:

- :mod:`kercr.metrics.streaming`: ``keras.metrics.Metric`` subclasses for training and
  validation logs: :class:`DiceCoefficient`, :class:`TPRAtFPR`, :class:`PrecisionAtRecall`. They
  pool every pixel seen since the last reset (not a mean of per-batch values).
- :mod:`kercr.metrics.pooled`: numpy functions for final evaluation on pixels pooled over many
  frames: :func:`roc_curve`, :func:`pr_curve`, :func:`tpr_at_fpr`, :func:`threshold_at_fpr`,
  :func:`precision_at_recall`, :func:`dice_score`, :func:`best_dice`.

Both are importable from here (``from kercr.metrics import TPRAtFPR, tpr_at_fpr``).

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
"""

from kercr.metrics import pooled
from kercr.metrics.pooled import (
    best_dice,
    dice_score,
    pr_curve,
    precision_at_recall,
    roc_curve,
    threshold_at_fpr,
    tpr_at_fpr,
)
from kercr.metrics.streaming import DiceCoefficient, PrecisionAtRecall, TPRAtFPR

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

#: The logit histogram's defaults, where the one-file ``kercr.metrics`` had them.
NUM_BINS, LOGIT_MIN, LOGIT_MAX = pooled.NUM_BINS, pooled.LOGIT_MIN, pooled.LOGIT_MAX
