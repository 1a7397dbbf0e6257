"""Deprecated: moved to :mod:`kercr.detection` (issue 23). Import from there; this alias goes in a later release."""

import warnings

from kercr.config import RUNTIMES
from kercr.data.augment import FLIP_AXES, flip_average
from kercr.data.cleaning import dilate_mask
from kercr.detection.detector import detect
from kercr.detection.loading import LoadedModel, ModelLoadError, load_model
from kercr.detection.result import DetectionResult
from kercr.detection.runtimes import resolve_runtime, resolve_tta
from kercr.models.geometry import receptive_field_radius

warnings.warn("kercr.inference is deprecated: import from kercr.detection (detect, load_model, DetectionResult), "
              "kercr.data.augment (flip_average) or kercr.models (receptive_field_radius).",
              DeprecationWarning, stacklevel=2)

__all__ = ["DetectionResult", "FLIP_AXES", "LoadedModel", "ModelLoadError", "RUNTIMES", "detect", "dilate_mask",
           "flip_average", "load_model", "receptive_field_radius", "resolve_runtime", "resolve_tta"]
