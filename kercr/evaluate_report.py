"""Deprecated: moved to :mod:`kercr.evaluation.report` (issue 23). Import from there; this alias goes in a later release."""

import warnings

from kercr.evaluation.report import (
    attention_layers,
    evaluate,
    labelled_frames,
    plot_curves,
    plot_layer_maps,
    plot_prediction_map,
    stage_layers,
    synthetic_frames,
)

warnings.warn("kercr.evaluate_report is deprecated: import from kercr.evaluation.report (evaluate, synthetic_frames, "
              "labelled_frames, ...).", DeprecationWarning, stacklevel=2)

__all__ = ["evaluate", "labelled_frames", "synthetic_frames", "stage_layers", "attention_layers",
           "plot_curves", "plot_prediction_map", "plot_layer_maps"]
