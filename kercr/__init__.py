"""kercr: cosmic-ray detection in astronomical CCD images with Keras 3.

Importing kercr registers its custom Keras objects (layers, losses, metrics), so a saved
``.keras`` model loads with ``keras.saving.load_model(path)`` after ``import kercr`` alone.

The numpy data core, :mod:`kercr.data`, imports neither Keras nor TensorFlow; where Keras (or
its backend) cannot be imported, ``import kercr`` still succeeds and the data core is usable.
"""

import os as _os
import sys as _sys

from kercr._version import __version__


def _import_keras_for_a_console_script():
    """``import keras`` without TensorFlow's start-up INFO lines on the terminal.

    TensorFlow >= 2.19 writes them from C++ at import whatever TF_CPP_MIN_LOG_LEVEL says
    (tensorflow/tensorflow#100442), twice, above every kercr command's own output. The native
    stderr is caught during the import and written back without those lines; warnings, errors and
    anything else still show. Later C++ log lines are off too (TF_CPP_MIN_LOG_LEVEL=3: on a machine
    without a GPU, TensorFlow logs a "failed call to cuInit" error on its first operation); set
    TF_CPP_MIN_LOG_LEVEL (to 0 to see all of them) and none of this is done.
    """
    import re
    import tempfile

    noise = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called"
                       r"|I\d{4} [\d:.]+ +\d+ \S+:\d+\]")  # glog INFO lines: I0000 00:00:17.. 123 port.cc:153]
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _sys.stderr.flush()
    try:
        saved = _os.dup(2)
    except OSError:
        import keras

        return keras
    with tempfile.TemporaryFile() as caught:
        _os.dup2(caught.fileno(), 2)
        try:
            import keras
        finally:
            _sys.stderr.flush()
            _os.dup2(saved, 2)
            _os.close(saved)
            caught.seek(0)
            lines = caught.read().decode(errors="replace").splitlines(keepends=True)
            _sys.stderr.write("".join(line for line in lines if not noise.match(line)))
    return keras


try:
    if (_os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("kercr-")
            and "TF_CPP_MIN_LOG_LEVEL" not in _os.environ):  # a console script; a user's own setting wins
        _keras = _import_keras_for_a_console_script()
    else:
        import keras as _keras  # noqa: F401  (needs a working backend: TensorFlow, or JAX with KERAS_BACKEND=jax)
except ImportError:  # only the numpy data core is usable here
    _keras = None

if _keras is not None:
    from kercr import losses, metrics, models
    from kercr.inference import detect
    from kercr.models import build_model, list_models

__all__ = ["__version__", "build_model", "detect", "list_models", "losses", "metrics", "models"]
