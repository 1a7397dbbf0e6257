"""Hyperparameter search with Keras Tuner (``kercr-tune``).

``CRHyperModel`` builds kercr's models from hyperparameters named ``model``, ``num_heads``,
``num_layers``, ``mlp_dim``, ``hidden_dim``, ``base_filters`` and ``learning_rate``; a
:class:`SearchSpace` (read from a TOML file by :func:`load_search_space`) says which values to
search and how; :func:`run_search` runs a resumable, optionally distributed search and writes a
results table and the best model. Importing this package imports ``keras_tuner``.
"""

from kercr.tuning.hypermodel import CRHyperModel
from kercr.tuning.results import write_results
from kercr.tuning.search import distributed_role, run_search
from kercr.tuning.space import (
    OBJECTIVES,
    TUNERS,
    Param,
    SearchSpace,
    SearchSpaceError,
    load_search_space,
    parse_search_space,
)
from kercr.tuning.tuners import make_tuner

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
