"""Export kercr models for serving: TF Serving SavedModels and TFLite (LiteRT) files.

The library behind ``kercr-export`` (:func:`kercr.cli.export.main`). TensorFlow is imported only
by the submodules that need it, so ``import kercr.export`` stays light.

>>> from kercr.export import export_model
>>> result = export_model("runs/deepcr", "models", formats=["savedmodel", "tflite"], quantize=["none", "int8"])
>>> result.path                                     # models/kercr/1
"""

from kercr.export.exporter import FORMATS, ExportResult, export_model, next_version
from kercr.export.profiles import load_profile
from kercr.export.source import ExportError, ModelSource, load_model_source, read_normalization

__all__ = ["FORMATS", "ExportError", "ExportResult", "ModelSource", "export_model", "load_model_source",
           "load_profile", "next_version", "read_normalization"]
