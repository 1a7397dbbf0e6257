"""``CRHyperModel``: kercr's architectures as a Keras Tuner hypermodel."""

from __future__ import annotations

import dataclasses
import logging

import keras
import keras_tuner as kt

from kercr.config import ConfigError
from kercr.models import get_spec
from kercr.training import AlphaSchedule, build_and_check_model, make_loss, make_metrics, make_optimizer
from kercr.tuning.space import CONV_KEYS, SearchSpace, SearchSpaceError, models_using

logger = logging.getLogger(__name__)


class CRHyperModel(kt.HyperModel):
    """Build and train one kercr cosmic-ray model per set of hyperparameters.

    Hyperparameter names say what they are:

    - ``model``: the registry name, declared only when the space lists several models;
    - ``num_heads``, ``num_layers``, ``mlp_dim``, ``hidden_dim``: TransUNet attention heads,
      transformer layers, MLP width and token width (active for TransUNet models);
    - ``base_filters``: channels of the first level of a convolutional UNet, doubled at each
      deeper level (active for ``unet``, ``deepcr``, ``cosmic_conn``, ``attention_unet``, ...);
    - ``learning_rate``: initial Adam learning rate.

    With no arguments the space is the reference search (TransUNet heads {6, 12}, layers
    {6, 8, 12}, MLP dim {64, 100, 128}, learning rate log-uniform in [1e-4, 3e-3]) on 256 x 256
    patches. A ``HyperParameters`` object with ``Fixed`` values builds exactly that model.

    Every build starts from the same seed, so trials differ only by their hyperparameters. Models
    are compiled as ``kercr-train`` compiles them (Adam, the configured loss, and Dice and TPR at
    0.01 % FPR as ``weighted_metrics`` so that ignored pixels, weight 0, are left out).

    Parameters
    ----------
    space : SearchSpace, optional
        The search space (default: :class:`SearchSpace()`, the reference search).
    name : str, optional
        Keras Tuner's name of the hypermodel.
    tunable : bool, optional
        Keras Tuner's flag: whether the hyperparameters are tuned.
    """

    def __init__(self, space: SearchSpace | None = None, *, name=None, tunable=True):
        super().__init__(name=name, tunable=tunable)
        self.space = space if space is not None else SearchSpace()
        self.config = self.space.train_config()
        self.data = None  # the search's TrainingData (run_search sets it): median_bce's alpha schedule

    def hyperparameter_values(self, hp) -> tuple[str, dict, float]:
        """Declare the space on ``hp``; return ``(model name, builder overrides, learning rate)``."""
        models = list(self.space.models)
        name = hp.Choice("model", models) if len(models) > 1 else models[0]
        options = {}
        for key, param in self.space.params.items():
            if key == "learning_rate":
                continue
            users = models_using(key, models)
            if len(models) > 1:
                with hp.conditional_scope("model", users):
                    value = param.declare(hp, key)
            else:
                value = param.declare(hp, key)
            if name in users and value is not None:
                options[key] = value
        learning_rate = self.space.params["learning_rate"].declare(hp, "learning_rate")
        return name, _builder_options(name, options), float(learning_rate)

    def build(self, hp) -> keras.Model:
        """Build and compile the model that ``hp`` describes.

        Parameters
        ----------
        hp : keras_tuner.HyperParameters

        Returns
        -------
        keras.Model
            Compiled; input ``(B, P, P, 1)`` float32 normalized image, output ``(B, P, P, 1)``
            float32 CR probability, ``P`` the patch size of the space's ``[data]``.
        """
        name, options, learning_rate = self.hyperparameter_values(hp)
        config = dataclasses.replace(self.config, model=name, model_options=options,
                                     learning_rate=learning_rate)
        keras.utils.set_random_seed(config.seed)
        try:
            model = build_and_check_model(config)
        except ConfigError as err:
            raise SearchSpaceError(
                f"{self.space.source}: {err} (in a search-space file the patch size is [data] patch_size)"
            ) from None
        model.compile(
            optimizer=make_optimizer(config),  # the trial's rate; cosine over max_epochs
            loss=make_loss(config.loss),
            weighted_metrics=make_metrics(),
        )
        return model

    def fit(self, hp, model, x, *args, callbacks=None, **kwargs):
        """Train ``model`` as ``kercr-train`` does; return the Keras ``History``.

        Every trial sees the same training batches: a kercr batch sequence (which counts its
        epochs) is rewound to the trial's first epoch. The learning rate is halved on validation
        loss plateaus, or follows ``lr_schedule = "cosine"`` over ``max_epochs``, as in ``kercr-train``.
        """
        if hasattr(x, "epoch") and hasattr(x, "steps"):
            x.epoch = int(kwargs.get("initial_epoch", 0))
        callbacks = list(callbacks or [])
        if self.config.loss == "median_bce" and self.data is not None:
            # as kercr-train: the floor alpha rises over the epochs
            callbacks.append(AlphaSchedule(self.data, start=self.config.alpha_start, epochs=self.config.alpha_epochs))
        if kwargs.get("validation_data") is not None and self.config.lr_schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=self.config.lr_factor, patience=self.config.lr_patience,
                min_lr=self.config.min_learning_rate,
            ))
        return model.fit(x, *args, callbacks=callbacks, **kwargs)


def _builder_options(name: str, options: dict) -> dict:
    """Turn hyperparameter values into builder overrides (``base_filters`` -> ``filters``)."""
    options = dict(options)
    for key in CONV_KEYS:
        if key in options:
            base = int(options.pop(key))
            depth = len(get_spec(name).preset.get("filters", (32, 64, 128)))
            options["filters"] = tuple(base * 2**i for i in range(depth))
    return options
