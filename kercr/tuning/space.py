"""Search-space definitions for ``kercr-tune``: a small TOML format, validated up front.

A search-space file has three tables::

    [search]                      # how to search
    tuner = "hyperband"           # "hyperband" (default), "bayesian" or "random"
    objective = "dice"            # "dice" (val_dice) or "tpr" (val_tpr_at_fpr_1e-4); both maximized
    max_epochs = 20               # Hyperband: epochs of the longest run; others: epochs per trial
    factor = 3                    # Hyperband only
    hyperband_iterations = 1      # Hyperband only
    max_trials = 10               # random / bayesian only
    executions_per_trial = 1
    loss = "dice_bce"
    seed = 0

    [space]                       # what to search; a list is a choice, a single value is fixed
    model = ["transunet"]         # registry names (kercr-models)
    num_heads = [6, 12]           # TransUNet attention heads
    num_layers = [6, 8, 12]       # TransUNet transformer layers
    mlp_dim = [64, 100, 128]      # TransUNet MLP width
    hidden_dim = [60]             # TransUNet token width (must be divisible by num_heads)
    base_filters = [16, 32]       # convolutional UNets: channels of the first level, doubled per level
    learning_rate = {min = 1e-4, max = 3e-3, sampling = "log"}

    [data]                        # TrainConfig options of the data each trial trains on
    patch_size = 256
    batch_size = 16
    ...                           # and the synthetic frames' and the input's options, e.g.
    noise_model = "relative"      # (configs/compare_models.toml's; RECIPE_KEYS)

Every key is optional; the defaults are the reference TransUNet search
(``tuning/reference_transunet.toml``). A bad file raises :class:`SearchSpaceError` naming the
file, the key and the fix. The keys and the checks of their values are in
:mod:`kercr.tuning.space_format`; its names are importable from here too.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from kercr.config import ConfigError, TrainConfig, resolve_config
from kercr.tuning.space_format import (
    CONV_KEYS,
    DATA_KEYS,
    INT_KEYS,
    OBJECTIVES,
    RECIPE_KEYS,
    SEARCH_KEYS,
    SECTIONS,
    SPACE_KEYS,
    TRANSFORMER_KEYS,
    TUNERS,
    Param,
    SearchSpaceError,
    check_consistency,
    check_data,
    check_search,
    did_you_mean,
    models_using,
    parse_int_choice,
    parse_learning_rate,
    parse_models,
)

__all__ = ["CONV_KEYS", "DATA_KEYS", "INT_KEYS", "OBJECTIVES", "RECIPE_KEYS", "SEARCH_KEYS", "SECTIONS",
           "SPACE_KEYS", "TRANSFORMER_KEYS", "TUNERS", "Param", "SearchSpace", "SearchSpaceError", "load_search_space",
           "models_using", "parse_search_space"]


def _default_params() -> dict:
    return {
        "num_heads": Param((6, 12)),
        "num_layers": Param((6, 8, 12)),
        "mlp_dim": Param((64, 100, 128)),
        "learning_rate": Param(min=1e-4, max=3e-3, sampling="log"),
    }


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A validated search: tuner settings, hyperparameters and the data options of each trial.

    The defaults are the reference search: a TransUNet with heads {6, 12}, transformer layers
    {6, 8, 12}, MLP dim {64, 100, 128} and a log-uniform learning rate in [1e-4, 3e-3], searched
    by Hyperband for validation Dice.

    Attributes
    ----------
    tuner : {"hyperband", "bayesian", "random"}
    objective : {"dice", "tpr"}
        Validation Dice or validation TPR at 0.01 % FPR, both maximized.
    max_epochs : int
        Hyperband: epochs of the longest-trained model; random / bayesian: epochs of every trial.
    factor, hyperband_iterations : int
        Hyperband's reduction factor and number of brackets iterations.
    max_trials : int
        Number of trials of random search and Bayesian optimization.
    executions_per_trial : int
        Models trained per trial (the metrics are averaged).
    loss : str
        Training loss (see ``kercr-train --help``).
    seed : int
        Seed of the oracle, the data and every trial's weight initialization.
    models : tuple of str
        Registry names searched over (``model`` in the file).
    params : dict of str to Param
        The hyperparameters (``num_heads``, ``num_layers``, ``mlp_dim``, ``hidden_dim``,
        ``base_filters``, ``learning_rate``).
    data : dict
        :class:`kercr.config.TrainConfig` options (``patch_size``, ``batch_size``, ...).
    source : str
        Where the space came from (a file path, or ``"built-in default"``), for messages.
    """

    tuner: str = "hyperband"
    objective: str = "dice"
    max_epochs: int = 20
    factor: int = 3
    hyperband_iterations: int = 1
    max_trials: int = 10
    executions_per_trial: int = 1
    loss: str = "dice_bce"
    seed: int = 0
    models: tuple = ("transunet",)
    params: dict = dataclasses.field(default_factory=_default_params)
    data: dict = dataclasses.field(default_factory=dict)
    source: str = "built-in default"

    @property
    def objective_name(self) -> str:
        """The Keras log name of the objective (``val_dice`` or ``val_tpr_at_fpr_1e-4``)."""
        return OBJECTIVES[self.objective]

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` every trial starts from (model and learning rate are tuned)."""
        options = dict(self.data, model=self.models[0], loss=self.loss, seed=self.seed,
                       epochs=self.max_epochs)
        try:
            return resolve_config(options)
        except ConfigError as err:
            raise SearchSpaceError(f"{self.source}: [data]/[search]: {err}") from None

    def to_json(self) -> dict:
        """A JSON-ready description (saved as ``search_space.json`` beside the search)."""
        out = {k: getattr(self, k) for k in SEARCH_KEYS}
        out["space"] = {"model": list(self.models), **{k: p.to_json() for k, p in self.params.items()}}
        config, defaults = self.train_config().to_dict(), TrainConfig().to_dict()
        out["data"] = {k: config[k] for k in DATA_KEYS}
        out["data"].update({k: config[k] for k in RECIPE_KEYS if config[k] != defaults[k]})
        return json.loads(json.dumps(out))

    def replace(self, **changes) -> "SearchSpace":
        """A copy with ``changes`` (command-line overrides), validated again."""
        changes = {k: v for k, v in changes.items() if v is not None}
        space = dataclasses.replace(self, **changes)
        check_search(space.to_json(), space.source, flags=True)
        check_consistency(space)
        return space


def load_search_space(path) -> SearchSpace:
    """Read and validate a search-space TOML file.

    Parameters
    ----------
    path : str or path-like
        A ``.toml`` file (see the module docstring for its tables and keys).

    Returns
    -------
    SearchSpace

    Raises
    ------
    SearchSpaceError
        For a missing or malformed file, an unknown table or key, a wrong type, an unknown
        model, an empty choice list or an inconsistent combination; the message names the file,
        the key and the fix.
    """
    import tomllib

    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise SearchSpaceError(
            f"search-space file {source!r} does not exist; check the path given to --space "
            "(examples: tuning/reference_transunet.toml, tuning/small.toml)."
        )
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SearchSpaceError(
            f"{source}: not valid TOML ({err}); compare with tuning/reference_transunet.toml."
        ) from None
    return parse_search_space(doc, source=source)


def parse_search_space(doc: dict, *, source: str = "search space") -> SearchSpace:
    """Validate a parsed search-space document (the tables of the TOML file) into a :class:`SearchSpace`."""
    for section, value in doc.items():
        if section not in SECTIONS:
            raise SearchSpaceError(
                f"{source}: unknown table [{section}]{did_you_mean(section, SECTIONS)}; "
                f"a search-space file has the tables {', '.join(f'[{s}]' for s in SECTIONS)}."
            )
        if not isinstance(value, dict):
            raise SearchSpaceError(f"{source}: {section} must be a table, written [{section}] on its own line.")
        for key in value:
            if key not in SECTIONS[section]:
                raise SearchSpaceError(
                    f"{source}: unknown key {key!r} in [{section}]{did_you_mean(key, SECTIONS[section])}; "
                    f"valid keys: {', '.join(SECTIONS[section])}."
                )
    search = dict(doc.get("search", {}))
    check_search(search, source)
    space_doc = dict(doc.get("space", {}))
    models = parse_models(space_doc.pop("model", ["transunet"]), source)
    params = {}
    if "learning_rate" in space_doc:
        params["learning_rate"] = parse_learning_rate(space_doc.pop("learning_rate"), source)
    else:
        params["learning_rate"] = _default_params()["learning_rate"]
    explicit = dict(space_doc)
    if not doc.get("space") or "model" not in doc.get("space", {}):
        # No model list: the reference TransUNet values fill the keys the file leaves out.
        explicit = {**{k: v for k, v in _default_params().items() if k != "learning_rate"}, **explicit}
    for key, value in explicit.items():
        params[key] = value if isinstance(value, Param) else parse_int_choice(key, value, source)
    data = dict(doc.get("data", {}))
    check_data(data, source)
    space = SearchSpace(models=tuple(models), params=params, data=data, source=source, **search)
    check_consistency(space)
    return space


