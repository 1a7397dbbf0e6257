"""Evaluation of a model on pixels pooled over many patches or frames, honouring ignore masks.

- :mod:`kercr.evaluation.pooled`: :func:`pooled_predictions`, :func:`pooled_metrics` and
  :func:`validation_metrics`, the numbers of ``metrics.json`` (training, tuning, benchmarks);
  importable from here.
- :mod:`kercr.evaluation.report`: ``kercr-evaluate``'s report (:func:`kercr.evaluation.report.evaluate`):
  :func:`kercr.detect` on labelled frames, ``metrics.json`` and plots. It is imported on its own
  (it imports the detection layer, which training and tuning do not need).
"""

from kercr.evaluation.pooled import pooled_metrics, pooled_predictions, validation_metrics

__all__ = ["pooled_metrics", "pooled_predictions", "validation_metrics"]
