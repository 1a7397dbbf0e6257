"""Deprecated: moved to :mod:`kercr.training.data` (issue 23). Import from there; this alias goes in a later release."""

import warnings

from kercr.training.data import (
    TrainingData,
    is_shard_dir,
    make_training_data,
    synthetic_patches_per_frame,
    synthetic_source,
)

warnings.warn("kercr.training_data is deprecated: import from kercr.training (make_training_data, synthetic_source, "
              "TrainingData, ...) or kercr.training.data.", DeprecationWarning, stacklevel=2)

__all__ = ["TrainingData", "is_shard_dir", "make_training_data", "synthetic_patches_per_frame", "synthetic_source"]
