"""Training: ``kercr-train``'s library, one resumable run directory per run.

- :mod:`kercr.training.run`: :func:`train` (the fit loop and the run directory it writes, resumed
  after an interruption), :func:`run_validation`, :func:`read_history`;
- :mod:`kercr.training.data`: the training and validation batches of a run
  (:func:`make_training_data`), split by exposure;
- :mod:`kercr.training.model`: the model, loss and metrics a run compiles;
- :mod:`kercr.training.callbacks`: the run's Keras callbacks and the learning-rate replay of a resume;
- :mod:`kercr.training.distribution`: ``--strategy`` (tf.distribute) and the multi-worker chief.

Every name below is importable from here (``from kercr.training import train``).
"""

from kercr.training.callbacks import (
    AlphaSchedule,
    LearningRateLogger,
    ResumableReduceLROnPlateau,
    ValidationImages,
    plateau_state,
)
from kercr.training.data import (
    TrainingData,
    is_shard_dir,
    make_training_data,
    synthetic_patches_per_frame,
    synthetic_source,
)
from kercr.training.distribution import is_chief, make_strategy
from kercr.training.model import build_and_check_model, load_initial_weights, make_loss, make_metrics, make_optimizer
from kercr.training.run import STATE_FILE, read_history, run_validation, train

__all__ = [
    "AlphaSchedule",
    "LearningRateLogger",
    "ResumableReduceLROnPlateau",
    "STATE_FILE",
    "TrainingData",
    "ValidationImages",
    "build_and_check_model",
    "is_chief",
    "is_shard_dir",
    "load_initial_weights",
    "make_loss",
    "make_metrics",
    "make_optimizer",
    "make_strategy",
    "make_training_data",
    "plateau_state",
    "read_history",
    "run_validation",
    "synthetic_patches_per_frame",
    "synthetic_source",
    "train",
]
