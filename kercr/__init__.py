"""kercr: cosmic-ray detection in astronomical CCD images with Keras 3.

Importing kercr registers its custom Keras objects (layers, losses, metrics), so a saved
``.keras`` model loads with ``keras.saving.load_model(path)`` after ``import kercr`` alone.

The numpy data core, :mod:`kercr.data`, imports neither Keras nor TensorFlow; where Keras (or
its backend) cannot be imported, ``import kercr`` still succeeds and the data core is usable.
"""

from kercr._version import __version__

try:
    import keras as _keras  # noqa: F401  (needs a working backend: TensorFlow, or JAX with KERAS_BACKEND=jax)
except ImportError:  # only the numpy data core is usable here
    _keras = None

if _keras is not None:
    from kercr import losses, metrics, models
    from kercr.inference import detect
    from kercr.models import build_model, list_models

__all__ = ["__version__", "build_model", "detect", "list_models", "losses", "metrics", "models"]
