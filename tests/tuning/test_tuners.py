"""kercr.tuning.tuners: which tuner a space names, the oracles' record of who ran each trial, best epochs."""

from __future__ import annotations

import json
import logging
import math
import types

import numpy as np
import pytest

kt = pytest.importorskip("keras_tuner")

from kercr.config import ConfigError  # noqa: E402
from kercr.tuning import CRHyperModel, parse_search_space  # noqa: E402
from kercr.tuning.tuners import (  # noqa: E402
    HyperbandTuner,
    RandomSearchOracle,
    RandomSearchTuner,
    _best_epoch_metrics,
    _validation_batches,
    make_tuner,
)

DATA = {"patch_size": 64, "batch_size": 2, "frames": 3, "frame_shape": [128, 128]}


def _space(**search):
    return parse_search_space({"search": {"seed": 3, **search}, "data": DATA,
                               "space": {"model": ["deepcr_2_4"], "base_filters": [4, 8]}}, source="test")


def test_the_space_names_the_tuner_and_its_settings(tmp_path):
    space = _space(tuner="random", max_trials=5, max_epochs=2, objective="tpr")
    tuner = make_tuner(space, CRHyperModel(space), directory=tmp_path, project_name="p")
    assert type(tuner) is RandomSearchTuner and isinstance(tuner.oracle, RandomSearchOracle)
    assert (tuner.oracle.max_trials, tuner.oracle.seed) == (5, 3)
    assert (tuner.oracle.objective.name, tuner.oracle.objective.direction) == ("val_tpr_at_fpr_1e-4", "max")
    assert tuner.project_dir == str(tmp_path / "p")
    space = _space(tuner="hyperband", max_epochs=9, factor=3)
    tuner = make_tuner(space, CRHyperModel(space), directory=tmp_path, project_name="h")
    assert type(tuner) is HyperbandTuner and (tuner.oracle.max_epochs, tuner.oracle.factor) == (9, 3)
    space = _space(tuner="bayesian", max_trials=2)
    try:
        tuner = make_tuner(space, CRHyperModel(space), directory=tmp_path, project_name="b")
    except ConfigError as err:  # Keras Tuner's Gaussian process needs scikit-learn
        assert "pip install 'keras-tuner[bayesian]'" in str(err)
    else:
        assert tuner.oracle.max_trials == 2


def test_the_oracle_records_which_tuner_ran_each_trial_and_keeps_it(tmp_path):
    space = _space(tuner="random", max_trials=3, max_epochs=1)
    tuner = make_tuner(space, CRHyperModel(space), directory=tmp_path, project_name="p")
    first = tuner.oracle.create_trial("tuner7")
    second = tuner.oracle.create_trial("tuner2")
    assert tuner.oracle.trial_tuners == {first.trial_id: "tuner7", second.trial_id: "tuner2"}
    saved = json.loads((tmp_path / "p" / "oracle.json").read_text())
    assert saved["trial_tuners"] == tuner.oracle.trial_tuners
    tuner.save()  # as after every trial
    resumed = make_tuner(space, CRHyperModel(space), directory=tmp_path, project_name="p")  # the same command again
    assert resumed.oracle.trial_tuners == tuner.oracle.trial_tuners


def _history(**logs):
    return types.SimpleNamespace(history=logs)


def test_the_best_epoch_is_taken_by_the_objective_and_averaged_over_executions():
    objective = kt.Objective("val_dice", "max")
    one = _history(val_dice=[0.2, 0.5, math.nan, 0.4], loss=[0.9, 0.7, 0.6, 0.5])
    assert _best_epoch_metrics(one, objective) == {"loss": 0.7, "val_dice": 0.5}  # NaN is never the best
    two = _history(val_dice=[0.7, 0.1], loss=[0.3, 0.2], extra=[1.0, 1.0])
    assert _best_epoch_metrics([one, two], objective) == {"loss": pytest.approx(0.5), "val_dice": pytest.approx(0.6)}
    assert _best_epoch_metrics(one, kt.Objective("loss", "min")) == {"loss": 0.5, "val_dice": 0.4}


def test_validation_batches_come_from_a_tuple_a_list_or_a_dataset(caplog):
    x = np.zeros((2, 4, 4, 1), np.float32)
    assert _validation_batches(None, 3) == [] and _validation_batches((x, x, x), None)[0][0] is x
    batches = [(x + i, x, x) for i in range(4)]
    assert [float(b[0][0, 0, 0, 0]) for b in _validation_batches(batches, 2)] == [0.0, 1.0]
    assert len(_validation_batches(batches, None)) == 4 and len(_validation_batches(batches, 10)) == 4
    with caplog.at_level(logging.WARNING, logger="kercr"):
        assert _validation_batches(iter(batches), 2) == []
    assert "pooled validation metrics need a kercr PyDataset or a list of batches" in caplog.text
