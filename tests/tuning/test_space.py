"""kercr.tuning.space: SearchSpace, its defaults, files and overrides.

The rules of the file format (every key and the error naming it) are in test_space_format.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kercr.tuning.space import SearchSpace, SearchSpaceError, load_search_space, parse_search_space

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

