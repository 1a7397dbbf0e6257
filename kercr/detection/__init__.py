"""Cosmic-ray detection on full frames (``kercr.detect``) and on FITS files.

Modules, from the bottom up:

- :mod:`~kercr.detection.loading`: :func:`load_model` and :class:`LoadedModel` (the model, its
  card, normalization, threshold and tiling geometry), through :mod:`kercr.model_files`;
- :mod:`~kercr.detection.runtimes`: Keras or LiteRT (prebuilt or converted TFLite files), the
  four-flip average;
- :mod:`~kercr.detection.tiling`: overlapping tiles, stitched without seams;
- :mod:`~kercr.detection.flips`: the four flips on windows around candidate pixels (where they
  can change the mask);
- :mod:`~kercr.detection.inputs`: the image types accepted and the header numbers read;
- :mod:`~kercr.detection.result`: :class:`DetectionResult`;
- :mod:`~kercr.detection.detector`: :func:`detect`, which puts them together;
- :mod:`~kercr.detection.files`: FITS files in, new FITS files out (``kercr-detect``);
- :mod:`~kercr.detection.batch`: :func:`detect_files`, many files on every core (worker
  processes, CCD by CCD) or on a Dask cluster (file by file), a bad file stopping nothing.

With the shipped model (LiteRT, prebuilt int8 file) none of these import TensorFlow or Keras.
"""

from kercr.config import RUNTIMES
from kercr.detection.batch import BatchResult, FileOutcome, detect_files
from kercr.detection.detector import detect
from kercr.detection.loading import LoadedModel, ModelLoadError, load_model
from kercr.detection.result import DetectionResult
from kercr.detection.runtimes import resolve_runtime, resolve_tta, resolve_tta_gate

__all__ = ["RUNTIMES", "BatchResult", "DetectionResult", "FileOutcome", "LoadedModel", "ModelLoadError", "detect",
           "detect_files", "load_model", "resolve_runtime", "resolve_tta", "resolve_tta_gate"]
