"""kercr.tuning.hypermodel: CRHyperModel declares the search space and builds and trains exactly that model."""

from __future__ import annotations

import keras
import pytest

kt = pytest.importorskip("keras_tuner")

from kercr.models import build_model, count_trainable  # noqa: E402
from kercr.tuning import CRHyperModel, SearchSpace, parse_search_space  # noqa: E402
from tests.tuning._shared import TINY, TINY_DATA  # noqa: E402


def test_a_fixed_learning_rate_and_a_single_model_are_not_searched():
    space = parse_search_space({"space": {"model": ["deepcr_2_4"], "base_filters": [4], "learning_rate": 2e-3},
                                "data": TINY_DATA})
    hp = kt.HyperParameters()
    name, options, rate = CRHyperModel(space).hyperparameter_values(hp)
    assert (name, options, rate) == ("deepcr_2_4", {"filters": (4, 8)}, 2e-3)
    assert {type(p).__name__ for p in hp.space} == {"Fixed"}


def test_default_space_is_the_reference_transunet_search():
    hp = kt.HyperParameters()
    name, options, _ = CRHyperModel().hyperparameter_values(hp)
    space = {p.name: p for p in hp.space}
    assert list(space) == ["num_heads", "num_layers", "mlp_dim", "learning_rate"]  # no "model": one only
    assert space["num_heads"].values == [6, 12]
    assert space["num_layers"].values == [6, 8, 12]
    assert space["mlp_dim"].values == [64, 100, 128]
    lr = space["learning_rate"]
    assert isinstance(lr, kt.engine.hyperparameters.Float)
    assert (lr.min_value, lr.max_value, lr.sampling) == (1e-4, 3e-3, "log")
    assert name == "transunet" and options == {"num_heads": 6, "num_layers": 6, "mlp_dim": 64}
    default = SearchSpace()
    assert (default.tuner, default.objective_name, default.train_config().patch_size) == ("hyperband", "val_dice", 256)
    assert SearchSpace(objective="tpr").objective_name == "val_tpr_at_fpr_1e-4"


def test_multi_model_space_declares_model_and_conditional_widths():
    space = parse_search_space({
        "space": {"model": ["deepcr_2_4", "transunet"], "base_filters": [4, 8], "num_heads": [6, 12]},
        "data": TINY_DATA,
    })
    hp = kt.HyperParameters()
    CRHyperModel(space).hyperparameter_values(hp)
    assert hp.get("model") == "deepcr_2_4"
    assert {p.name for p in hp.space} == {"model", "base_filters", "num_heads", "learning_rate"}
    assert hp.is_active("base_filters") and not hp.is_active("num_heads")


def test_fixed_hyperparameters_build_exactly_that_transunet():
    hp = kt.HyperParameters()
    hp.Fixed("num_heads", 12)
    hp.Fixed("num_layers", 12)
    hp.Fixed("mlp_dim", 100)
    hp.Fixed("learning_rate", 5e-4)
    model = CRHyperModel().build(hp)
    assert count_trainable(model) == 637_845  # README: transunet (12, 12, 100)
    assert count_trainable(model) == count_trainable(build_model("transunet", num_heads=12, num_layers=12, mlp_dim=100))
    assert model.input_shape == (None, 256, 256, 1)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(5e-4)
    assert {m.name for m in model.metrics} >= {"loss", "compile_metrics"}


def test_fixed_hyperparameters_build_exactly_that_conv_model():
    space = parse_search_space({"space": {"model": ["deepcr_2_4", "transunet"], "base_filters": [4, 8]},
                                "data": TINY_DATA})
    hp = kt.HyperParameters()
    hp.Fixed("model", "deepcr_2_4")
    hp.Fixed("base_filters", 8)
    model = CRHyperModel(space).build(hp)
    assert model.name == "deepcr_2_4"
    assert count_trainable(model) == count_trainable(build_model("deepcr_2_4", filters=(8, 16)))
    assert count_trainable(model) != 1_709  # the preset (4, 8) would give deepCR's 1,709


def test_median_bce_trials_raise_alpha_as_kercr_train_does():
    from kercr.training import AlphaSchedule

    hypermodel = CRHyperModel(parse_search_space({**TINY, "search": {**TINY["search"], "loss": "median_bce"}},
                                                 source="tiny"))
    hypermodel.data = object()
    seen = {}

    class Model:
        def fit(self, x, *args, callbacks=None, **kwargs):
            seen["callbacks"] = callbacks

    hypermodel.fit(None, Model(), [], validation_data=None)
    assert any(isinstance(c, AlphaSchedule) for c in seen["callbacks"])



def test_a_cosine_space_anneals_each_trial_over_max_epochs_without_plateau_cuts():
    space = parse_search_space({**TINY, "data": {**TINY["data"], "lr_schedule": "cosine"}}, source="tiny")
    hypermodel = CRHyperModel(space)
    hp = kt.HyperParameters()
    hp.Fixed("learning_rate", 2e-3)
    model = hypermodel.build(hp)
    schedule = model.optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert schedule.initial_learning_rate == 2e-3
    assert schedule.decay_steps == space.max_epochs * space.train_config().steps_per_epoch
    assert space.to_json()["data"]["lr_schedule"] == "cosine"  # recorded in search_space.json
    seen = {}

    class Model:
        def fit(self, x, *args, callbacks=None, **kwargs):
            seen["callbacks"] = callbacks

    hypermodel.fit(None, Model(), [], validation_data=[])
    assert not any(isinstance(c, keras.callbacks.ReduceLROnPlateau) for c in seen["callbacks"])
    # Hyperband would go on with a trial under a new optimizer, restarting the cosine: refused, named.
    from kercr.tuning import SearchSpaceError

    with pytest.raises(SearchSpaceError, match=r"lr_schedule = \"cosine\" with tuner = \"hyperband\".*random"):
        parse_search_space({**TINY, "search": {**TINY["search"], "tuner": "hyperband", "max_epochs": 3},
                            "data": {**TINY["data"], "lr_schedule": "cosine"}}, source="tiny")
