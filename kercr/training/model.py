"""The model a ``kercr-train`` run fits: built from the registry for the patch size, its loss,
metrics and optimizer (with the learning-rate schedule), and the initial weights of a fine-tuning run (``init_weights``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras

from kercr.config import ConfigError, TrainConfig
from kercr.data.normalization import NormalizationConfig
from kercr.losses import DiceBCELoss, MedianWeightedBCE, WeightedBCE
from kercr.metrics import DiceCoefficient, TPRAtFPR
from kercr.model_files import load_keras_model, model_normalization, read_card, resolve_model_path
from kercr.models import build_model, input_multiple, model_kwargs

__all__ = ["build_and_check_model", "load_initial_weights", "make_loss", "make_metrics", "make_optimizer"]

logger = logging.getLogger(__name__)


def make_loss(name: str):
    """The training loss of ``--loss name`` (``dice_bce``, ``median_bce`` or ``bce``), built with its defaults."""
    return {"dice_bce": DiceBCELoss, "median_bce": MedianWeightedBCE, "bce": WeightedBCE}[name]()


def make_optimizer(config: TrainConfig):
    """Adam for a run of ``config``: at its ``learning_rate`` for ``lr_schedule="plateau"``, whose
    cuts the run's plateau callback makes; for ``"cosine"`` a half cosine from it down to
    ``min_learning_rate`` over ``epochs x steps_per_epoch`` steps, driven by the optimizer's step
    count (which a resumed run's backup restores, so it is where an uninterrupted run would be; a
    cosine run keeps its epochs)."""
    rate = float(config.learning_rate)
    if config.lr_schedule == "cosine":
        steps = max(1, int(config.epochs) * int(config.steps_per_epoch))
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=steps,
                                                      alpha=min(1.0, config.min_learning_rate / rate))
    return keras.optimizers.Adam(learning_rate=rate)


def make_metrics():
    """The streaming validation metrics of a run: pooled Dice and TPR at 0.01 % FPR."""
    return [DiceCoefficient(name="dice"), TPRAtFPR(fpr=1e-4, name="tpr_at_fpr_1e-4")]


def build_and_check_model(config: TrainConfig) -> keras.Model:
    """Build the configured model and check that the patch size suits it (ConfigError if not)."""
    options = dict(config.model_options)
    if "input_size" in model_kwargs(config.model) and "input_size" not in options:
        options["input_size"] = config.patch_size  # fixed-tile models are built at the patch size
    try:
        model = build_model(config.model, **options)
    except ValueError as err:
        raise ConfigError(f"model {config.model!r}: {err}") from None
    multiple = input_multiple(model)
    fixed = model.input_shape[1]
    if (fixed is not None and fixed != config.patch_size) or config.patch_size % multiple:
        fit = fixed or multiple * max(1, config.patch_size // multiple)
        # kercr-prepare shards fix the patch size: the fix is new shards, not another --patch-size.
        shards = config.data != "synthetic" and Path(config.data, "prepare.json").is_file()
        raise ConfigError(
            f"patch_size={config.patch_size} does not suit model {config.model!r}, whose input "
            + (f"is fixed at {fixed} x {fixed}" if fixed else f"must be a multiple of {multiple}")
            + (f"; the shards in {config.data} hold {config.patch_size} px patches: run kercr-prepare --patch-size "
               f"{fit} into a new folder and train on that." if shards else f"; use --patch-size {fit}.")
        )
    return model


def load_initial_weights(model: keras.Model, config: TrainConfig) -> None:
    """Copy the weights of ``config.init_weights`` into ``model`` (fine-tuning); ConfigError if they do not fit."""
    try:
        path = resolve_model_path(config.init_weights)
        source = load_keras_model(path)
        found = model_normalization(path, read_card(path))
    except Exception as err:  # noqa: BLE001 - any load failure is a config problem here
        raise ConfigError(f"init_weights={config.init_weights!r} cannot be loaded ({err}); pass a .keras model, "
                          "a run directory or 'default'.") from None
    weights = source.get_weights()
    mine = model.get_weights()
    if len(weights) != len(mine) or any(a.shape != b.shape for a, b in zip(weights, mine)):
        raise ConfigError(f"init_weights={config.init_weights!r} holds a {source.count_params():,}-parameter "
                          f"model that does not match model={config.model!r} ({model.count_params():,} parameters) "
                          f"with these model_options; pass the same architecture it was trained with.")
    normalization = found[0] if found is not None else NormalizationConfig()
    if normalization != config.normalization_config():
        logger.warning("init_weights %s was trained with another input normalization (%s); this run uses %s",
                       config.init_weights, normalization, config.normalization_config())
    model.set_weights(weights)
    logger.info("starting from the weights of %s", config.init_weights)
