"""Hyperparameter search with Keras Tuner (``kercr-tune``).

``CRHyperModel`` builds kercr's models from hyperparameters named ``model``, ``num_heads``,
``num_layers``, ``mlp_dim``, ``hidden_dim``, ``base_filters`` and ``learning_rate``; a
:class:`SearchSpace` (read from a TOML file by :func:`load_search_space`) says which values to
search and how; :func:`run_search` runs a resumable, optionally distributed search and writes a
results table and the best model.

Importing this package is light (``python -m kercr.tuning --help`` imports neither TensorFlow nor
``keras_tuner``): the names below load their modules on first use, as ``kercr``'s own do.
"""

import importlib as _importlib

__all__ = [
    "CRHyperModel",
    "OBJECTIVES",
    "Param",
    "SearchSpace",
    "SearchSpaceError",
    "TUNERS",
    "distributed_role",
    "load_search_space",
    "make_tuner",
    "parse_search_space",
    "run_search",
    "write_results",
]

_NAMES = {
    "CRHyperModel": "kercr.tuning.hypermodel",
    "write_results": "kercr.tuning.results",
    "distributed_role": "kercr.tuning.search",
    "run_search": "kercr.tuning.search",
    "OBJECTIVES": "kercr.tuning.space",
    "TUNERS": "kercr.tuning.space",
    "Param": "kercr.tuning.space",
    "SearchSpace": "kercr.tuning.space",
    "SearchSpaceError": "kercr.tuning.space",
    "load_search_space": "kercr.tuning.space",
    "parse_search_space": "kercr.tuning.space",
    "make_tuner": "kercr.tuning.tuners",
}


def __getattr__(name):
    if name in _NAMES:
        return getattr(_importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'kercr.tuning' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
