"""kercr.tuning.space: SearchSpace, its defaults, files and overrides.

The rules of the file format (every key and the error naming it) are in test_space_format.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kercr.config import TrainConfig, read_config_file
from kercr.tuning.space import (DATA_KEYS, RECIPE_KEYS, SearchSpace, SearchSpaceError, load_search_space,
                                parse_search_space)

REPO = Path(__file__).resolve().parents[2]
TUNING = REPO / "tuning"


def test_the_default_is_the_reference_search():
    default = SearchSpace()
    assert (default.tuner, default.objective_name, default.models, default.max_epochs) == (
        "hyperband", "val_dice", ("transunet",), 20)
    assert default.train_config().patch_size == 256 and default.train_config().model == "transunet"
    assert SearchSpace(objective="tpr").objective_name == "val_tpr_at_fpr_1e-4"
    assert default.to_json()["space"] == {"model": ["transunet"], "num_heads": [6, 12], "num_layers": [6, 8, 12],
                                          "mlp_dim": [64, 100, 128],
                                          "learning_rate": {"min": 1e-4, "max": 3e-3, "sampling": "log"}}


def test_the_data_table_reaches_every_trials_training_config(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[search]\ntuner = "random"\nloss = "bce"\nseed = 4\nmax_epochs = 3\n'
                    '[space]\nmodel = ["deepcr_2_4"]\nbase_filters = [4, 8]\n'
                    "[data]\npatch_size = 64\nbatch_size = 2\nframes = 3\nframe_shape = [128, 128]\n")
    space = load_search_space(path)
    assert space.source == str(path) and space.params["base_filters"].values == (4, 8)
    config = space.train_config()
    assert (config.model, config.loss, config.seed, config.epochs) == ("deepcr_2_4", "bce", 4, 3)
    assert (config.patch_size, config.batch_size, config.frames, config.frame_shape) == (64, 2, 3, [128, 128])
    assert json.loads(json.dumps(space.to_json()))["data"]["patch_size"] == 64


def test_a_search_trains_on_a_recipe_s_frames_and_input_and_earlier_searches_keep_their_space_file(tmp_path):
    """[data] takes the synthetic frames' and the input's options (configs/compare_models.toml's);
    search_space.json lists them only where they differ from kercr-train's defaults, so a search
    made before they existed resumes."""

    recipe = {k: v for k, v in read_config_file(Path(__file__).parents[2] / "configs" / "compare_models.toml").items()
              if k in RECIPE_KEYS}
    assert {"noise_model", "local_gate", "footprints", "dominant_sources"} <= set(recipe)
    space = parse_search_space({"search": {"tuner": "random", "max_epochs": 1},
                                "data": {"patch_size": 128, "frame_shape": [1024, 1024], **recipe}})
    config = space.train_config()
    assert config.normalization_config().noise_model == "relative" and config.local_gate == 5.0
    assert config.dominant_sources == 0.15 and config.footprints == recipe["footprints"]
    defaults = TrainConfig().to_dict()
    assert {k: v for k, v in space.to_json()["data"].items() if k in RECIPE_KEYS} == \
        {k: v for k, v in recipe.items() if v != defaults[k]}  # footprint_fraction 0.5 is the default
    plain = parse_search_space({"data": {"patch_size": 128}}).to_json()["data"]
    assert set(plain) == set(DATA_KEYS)  # the keys the earlier versions wrote, and no more
    with pytest.raises(SearchSpaceError, match=r"\[data\]/\[search\]: local_gate=5.0 applies to noise_model='relative'"):
        parse_search_space({"data": {"local_gate": 5.0}}, source="s.toml")


def test_overrides_are_checked_like_the_file():
    space = parse_search_space({"search": {"tuner": "random", "max_epochs": 1}, "data": {"patch_size": 64}})
    changed = space.replace(tuner="random", max_trials=3, seed=None)  # None: not given
    assert (changed.max_trials, changed.seed, space.max_trials) == (3, 0, 10)
    with pytest.raises(SearchSpaceError, match=r"--max-trials = 0: must be a positive integer"):
        space.replace(max_trials=0)
    with pytest.raises(SearchSpaceError, match="Hyperband needs at least 2 epochs"):
        space.replace(tuner="hyperband")  # with max_epochs 1


def test_a_training_option_the_config_refuses_names_the_file():
    with pytest.raises(SearchSpaceError, match=r"^tiny.toml: \[data\]/\[search\]: frame_shape=\[128, 128\] must be "
                                               "two sizes"):
        parse_search_space({"data": {"frame_shape": [128, 128]}}, source="tiny.toml")  # 256-pixel patches
    with pytest.raises(SearchSpaceError, match=r"search-space file '.*none.toml' does not exist; check the path "
                                               "given to --space"):
        load_search_space(Path("/no/where/none.toml"))


def test_reference_file_matches_the_built_in_default_and_small_file_loads():
    assert load_search_space(TUNING / "reference_transunet.toml").to_json() == SearchSpace().to_json()
    small = load_search_space(TUNING / "small.toml")
    assert small.models == ("deepcr_2_4", "transunet") and small.train_config().patch_size == 64
    # Issue 22.5's CPU search and its seed twin: the comparison's data and input, one configuration apart.
    cpu, seed = load_search_space(TUNING / "transunet_cpu.toml"), load_search_space(TUNING / "transunet_cpu_seed.toml")
    compare = read_config_file(REPO / "configs" / "compare_models.toml")
    for space in (cpu, seed):
        config = space.train_config()
        assert all(getattr(config, k) == v for k, v in compare.items() if k in RECIPE_KEYS or k in DATA_KEYS)
        assert config.model == "transunet" and config.epochs == 12 and space.objective == "tpr"
    assert {k: p.values for k, p in seed.params.items()} == {"num_heads": (6,), "num_layers": (6,), "mlp_dim": (64,),
                                                           "learning_rate": (1e-3,)}
    assert cpu.to_json()["data"] == seed.to_json()["data"]
    # Their cosine twins (session 25): the same with lr_schedule = "cosine" alone.
    for plain, name in ((cpu, "transunet_cpu_cosine.toml"), (seed, "transunet_cpu_cosine_seed.toml")):
        cosine = load_search_space(TUNING / name)
        assert cosine.train_config().lr_schedule == "cosine"
        expected = plain.to_json()
        expected["data"]["lr_schedule"] = "cosine"
        assert cosine.to_json() == expected, name

