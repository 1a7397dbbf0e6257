"""kercr: cosmic-ray detection in astronomical CCD images with Keras 3.

``import kercr`` is light: it imports neither Keras nor TensorFlow. The names below load their
modules on first use: ``kercr.detect`` and ``kercr.detect_files`` (:mod:`kercr.detection`; with
the shipped model's LiteRT runtime they never import TensorFlow), ``kercr.build_model`` and
``kercr.list_models`` (:mod:`kercr.models`, Keras), ``kercr.losses``, ``kercr.metrics``,
``kercr.data`` (the numpy data core).

kercr's custom Keras objects (layers, losses, metrics) are registered as soon as Keras is
imported, before or after ``import kercr`` (a one-shot import hook for the ``keras`` module), so
a saved ``.keras`` model loads with ``keras.saving.load_model(path)`` after ``import kercr``
alone, with no ``custom_objects``.
"""

import importlib as _importlib
import importlib.abc as _abc
import importlib.util as _util
import sys as _sys

from kercr._version import __version__

__all__ = ["__version__", "DetectionResult", "build_model", "detect", "detect_files", "list_models", "load_model",
           "losses", "metrics", "models"]

_NAMES = {"detect": "kercr.detection", "detect_files": "kercr.detection", "load_model": "kercr.detection",
          "DetectionResult": "kercr.detection", "build_model": "kercr.models", "list_models": "kercr.models"}
_MODULES = ("config", "data", "detection", "evaluation", "export", "losses", "metrics", "model_files", "models",
            "training", "tuning", "weights")


def __getattr__(name):
    if name in _NAMES:
        return getattr(_importlib.import_module(_NAMES[name]), name)
    if name in _MODULES:
        return _importlib.import_module(f"kercr.{name}")
    raise AttributeError(f"module 'kercr' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | set(_MODULES))


def _register_custom_objects() -> None:
    """Import the modules whose classes carry ``@keras.saving.register_keras_serializable``."""
    try:
        import kercr.losses  # noqa: F401  # heavy: imports Keras; only once keras itself is imported
        import kercr.metrics  # noqa: F401  # heavy: imports Keras; only once keras itself is imported
        import kercr.models  # noqa: F401  # heavy: imports Keras; only once keras itself is imported
    except ImportError:  # a broken backend: the numpy data core stays usable
        pass


class _RegisterWhenKerasLoads(_abc.MetaPathFinder):
    """One-shot import hook: once the ``keras`` package has executed, register kercr's objects."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        if self in _sys.meta_path:
            _sys.meta_path.remove(self)
        spec = _util.find_spec("keras")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real = spec.loader

        class _Loader(_abc.Loader):
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                real.exec_module(module)
                _register_custom_objects()

        spec.loader = _Loader()
        return spec


if "keras" in _sys.modules:  # Keras is loaded already: register now
    _register_custom_objects()
elif not any(isinstance(f, _RegisterWhenKerasLoads) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _RegisterWhenKerasLoads())
