"""kercr: cosmic-ray detection in astronomical CCD images with Keras 3.

Importing kercr registers its custom Keras objects (layers, losses, metrics), so a saved
``.keras`` model loads with ``keras.saving.load_model(path)`` after ``import kercr`` alone.
The numpy data core lives in :mod:`kercr.data` and imports no TensorFlow.
"""

from kercr._version import __version__
from kercr import losses, metrics, models
from kercr.models import build_model, list_models

__all__ = ["__version__", "build_model", "list_models", "losses", "metrics", "models"]
