"""Keras Tuner tuners and oracles for kercr: Hyperband, Bayesian optimization, random search.

Two additions to Keras Tuner's own classes:

- the oracles remember which tuner (``KERASTUNER_TUNER_ID``, e.g. ``tuner0``) ran each trial and
  save it in ``oracle.json``, so the chief of a distributed search can say who ran what;
- after training, a trial's best epoch (by the objective) is evaluated with
  :func:`kercr.evaluation.validation_metrics` on the pooled pixels of the validation batches
  (ignored pixels excluded), saved as ``trial_<id>/model.keras``, and its trainable-parameter
  count and pooled metrics are reported to the oracle with the logged ones. Metrics reach the
  chief through Keras Tuner's gRPC calls; the ``.keras`` files stay in the tuner's directory.
"""

from __future__ import annotations

import logging
import os
import warnings

import keras
import keras_tuner as kt
import numpy as np

from kercr.config import ConfigError
from kercr.evaluation import validation_metrics
from kercr.models import count_trainable

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
POOLED_DICE = "pooled_val_dice"
POOLED_TPR = "pooled_val_tpr_at_fpr_1e-4"
PARAMS = "trainable_params"


class _TrialTunersMixin:
    """Oracle mixin: record the ID of the tuner each trial was handed to (``trial_tuners``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trial_tuners = {}

    @kt.synchronized
    def create_trial(self, tuner_id):
        trial = super().create_trial(tuner_id)
        if trial.status == kt.engine.trial.TrialStatus.RUNNING and self.trial_tuners.get(trial.trial_id) != tuner_id:
            self.trial_tuners[trial.trial_id] = tuner_id
            self.save()
        return trial

    @kt.synchronized
    def end_trial(self, trial):
        # Keras Tuner saves oracle.json before it drops the trial from the ongoing ones, and a chief
        # saves no more after the last trial: its oracle.json would list that trial as running, and a
        # restarted chief would hand it out again. Saved again once the trial has ended.
        super().end_trial(trial)
        self.save()

    def get_state(self):
        state = super().get_state()
        state["trial_tuners"] = dict(self.trial_tuners)
        return state

    def set_state(self, state):
        super().set_state(state)
        self.trial_tuners = dict(state.get("trial_tuners", {}))


def search_finished(oracle) -> bool:
    """Whether a reloaded oracle has nothing left to hand out: its ``max_trials`` trials all ended,
    none running or queued for a retry (a Hyperband oracle, which has no ``max_trials``, never says so)."""
    trials = list(oracle.trials.values())
    if oracle.max_trials is None or len(trials) < oracle.max_trials or oracle.ongoing_trials:
        return False
    if getattr(oracle, "_retry_queue", None):
        return False
    ended = {kt.engine.trial.TrialStatus.COMPLETED, kt.engine.trial.TrialStatus.INVALID,
             kt.engine.trial.TrialStatus.FAILED, kt.engine.trial.TrialStatus.STOPPED}
    return all(t.status in ended for t in trials)


class HyperbandOracle(_TrialTunersMixin, kt.oracles.HyperbandOracle):
    """Keras Tuner's Hyperband oracle, recording the tuner of each trial."""


class BayesianOptimizationOracle(_TrialTunersMixin, kt.oracles.BayesianOptimizationOracle):
    """Keras Tuner's Bayesian-optimization oracle, recording the tuner of each trial."""


class RandomSearchOracle(_TrialTunersMixin, kt.oracles.RandomSearchOracle):
    """Keras Tuner's random-search oracle, recording the tuner of each trial."""


class _PooledEvaluationMixin:
    """Tuner mixin: evaluate each trial's best epoch on pooled validation pixels and keep it.

    The oracle is built by :func:`make_tuner` (so it can record tuner IDs); Keras Tuner's
    ``Tuner.__init__`` is called directly, skipping the subclass constructors whose only job is
    to build their stock oracle.
    """

    def __init__(self, oracle, hypermodel, **kwargs):
        kt.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        histories = super().run_trial(trial, *args, **kwargs)
        results = _best_epoch_metrics(histories, self.oracle.objective)
        batches = _validation_batches(kwargs.get("validation_data"), kwargs.get("validation_steps"))
        with warnings.catch_warnings():
            # The checkpoint holds the optimizer's variables too; only the weights are needed.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = self.load_model(trial)  # the best epoch's weights (Keras Tuner's checkpoint)
        results[PARAMS] = float(count_trainable(model))
        if batches:
            pooled = validation_metrics(model, batches)
            results[POOLED_DICE] = pooled["dice"]
            results[POOLED_TPR] = pooled["tpr_at_fpr_1e-4"]
        path = os.path.join(self.get_trial_dir(trial.trial_id), MODEL_FILE)
        if model.optimizer is not None and not model.optimizer.built:
            # Saved with a built optimizer, the file loads back without optimizer warnings.
            model.optimizer.build(model.trainable_variables)
        model.save(path)
        logger.info(
            "trial %s (%s): %s %s, pooled validation Dice %s, TPR at 0.01 %% FPR %s; saved %s",
            trial.trial_id, self.tuner_id, model.name, _describe(trial.hyperparameters.values),
            _fmt(results.get(POOLED_DICE)), _fmt(results.get(POOLED_TPR)), path,
        )
        return results


class HyperbandTuner(_PooledEvaluationMixin, kt.Hyperband):
    """Keras Tuner's Hyperband with pooled-pixel evaluation of every trial."""


class BayesianOptimizationTuner(_PooledEvaluationMixin, kt.BayesianOptimization):
    """Keras Tuner's Bayesian optimization with pooled-pixel evaluation of every trial."""


class RandomSearchTuner(_PooledEvaluationMixin, kt.RandomSearch):
    """Keras Tuner's random search with pooled-pixel evaluation of every trial."""


def make_tuner(space, hypermodel, *, directory, project_name="search", overwrite=False):
    """The tuner ``space.tuner`` names, with its oracle, for ``hypermodel``.

    Parameters
    ----------
    space : kercr.tuning.SearchSpace
    hypermodel : keras_tuner.HyperModel
    directory, project_name : str
        Keras Tuner's project is ``directory/project_name``; running again with the same two
        (and ``overwrite=False``) resumes the search in it.
    overwrite : bool
        Start afresh, deleting the project.
    """
    objective = kt.Objective(space.objective_name, direction="max")
    common = dict(objective=objective, seed=space.seed)
    if space.tuner == "hyperband":
        oracle = HyperbandOracle(max_epochs=space.max_epochs, factor=space.factor,
                                 hyperband_iterations=space.hyperband_iterations, **common)
        cls = HyperbandTuner
    elif space.tuner == "bayesian":
        try:
            oracle = BayesianOptimizationOracle(max_trials=space.max_trials, **common)
        except ImportError as err:  # Keras Tuner's Gaussian process needs scikit-learn
            raise ConfigError(
                f"tuner 'bayesian' needs scikit-learn ({err}); install it with "
                "pip install 'keras-tuner[bayesian]', or use --tuner hyperband or --tuner random."
            ) from None
        cls = BayesianOptimizationTuner
    else:
        oracle = RandomSearchOracle(max_trials=space.max_trials, **common)
        cls = RandomSearchTuner
    return cls(oracle, hypermodel, directory=str(directory), project_name=project_name,
               overwrite=overwrite, executions_per_trial=space.executions_per_trial)


def _best_epoch_metrics(histories, objective) -> dict:
    """Logged metrics at the best epoch (by ``objective``) of each execution, averaged."""
    rows = []
    for history in histories if isinstance(histories, list) else [histories]:
        logs = history.history
        values = np.asarray(logs[objective.name], dtype=float)
        if objective.direction == "max":
            best = int(np.argmax(np.where(np.isfinite(values), values, -np.inf)))
        else:
            best = int(np.argmin(np.where(np.isfinite(values), values, np.inf)))
        rows.append({k: float(v[best]) for k, v in logs.items() if len(v) > best})
    keys = set.intersection(*(set(r) for r in rows))
    return {k: float(np.mean([r[k] for r in rows])) for k in sorted(keys)}


def _validation_batches(validation_data, steps):
    """The validation ``(x, y, w)`` batches as numpy arrays (a PyDataset, a list or one tuple)."""
    if validation_data is None:
        return []
    if isinstance(validation_data, tuple):
        return [validation_data]
    if isinstance(validation_data, keras.utils.PyDataset) or isinstance(validation_data, list):
        n = len(validation_data) if steps is None else min(int(steps), len(validation_data))
        return [validation_data[i] for i in range(n)]
    logger.warning("pooled validation metrics need a kercr PyDataset or a list of batches; skipping them")
    return []


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items() if not k.startswith("tuner/"))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
