"""kercr.tuning.space_format: the tables and keys of a search-space file and the error naming each mistake."""

from __future__ import annotations

import pytest

from kercr.tuning.space import Param, SearchSpaceError, load_search_space
from kercr.tuning.space_format import did_you_mean, parse_learning_rate


def test_learning_rates_are_a_range_one_rate_or_a_list():
    assert parse_learning_rate({"min": 1e-4, "max": 1e-2}, "s") == Param(min=1e-4, max=1e-2, sampling="log")
    assert parse_learning_rate({"min": 1e-4, "max": 1e-2, "sampling": "linear"}, "s").sampling == "linear"
    assert parse_learning_rate(3e-4, "s") == Param((3e-4,)) and parse_learning_rate([1e-3, 1e-4], "s").values == (1e-3, 1e-4)
    with pytest.raises(SearchSpaceError, match=r"s: \[space\] learning_rate: unknown key\(s\) step"):
        parse_learning_rate({"min": 1e-4, "max": 1e-2, "step": 2}, "s")
    with pytest.raises(SearchSpaceError, match=r"learning rates must be numbers in \(0, 1\)"):
        parse_learning_rate([1e-3, 2], "s")


def test_did_you_mean_offers_the_closest_choice_or_nothing():
    assert did_you_mean("num_head", ["num_heads", "num_layers"]) == " (did you mean 'num_heads'?)"
    assert did_you_mean("colour", ["num_heads", "num_layers"]) == ""


@pytest.mark.parametrize("text, expected", [
    ("[space]\nnum_head = [6, 12]\n", r"unknown key 'num_head' in \[space\] \(did you mean 'num_heads'\?\)"),
    ("[space]\nnum_layers = \"six\"\n", r"\[space\] num_layers = 'six': every value must be a positive integer, e.g. num_layers = \[6, 8, 12\]"),
    ("[space]\nmodel = [\"transunett\"]\n", r"unknown model 'transunett' \(did you mean 'transunet'\?\); choose among: unet"),
    ("[space]\nmlp_dim = []\n", r"\[space\] mlp_dim = \[\]: empty choice list; give at least one value, e.g. mlp_dim = \[64, 100, 128\]"),
    ("[search\ntuner = \"random\"\n", r"not valid TOML"),
    ("[serch]\ntuner = \"random\"\n", r"unknown table \[serch\] \(did you mean 'search'\?\)"),
    ("[search]\ntuner = \"grid\"\n", r"\[search\] tuner = 'grid': choose one of 'hyperband', 'bayesian', 'random'"),
    ("[space]\nnum_heads = [7]\n", r"7 heads do not divide hidden_dim 60 of model 'transunet'.*num_heads = \[6, 12"),
    ("[space]\nmodel = [\"transunet\"]\nbase_filters = [16]\n", r"base_filters applies to a convolutional UNet.*remove base_filters"),
    ("[space]\nlearning_rate = {min = 3e-3, max = 1e-4}\n", r"learning_rate: needs 0 < min < max < 1"),
    ("[data]\npatch_size = 64.5\n", r"\[data\] patch_size = 64.5: must be a positive integer"),
    ("[search]\nobjective = [\"dice\"]\n", r"\[search\] objective = \['dice'\]: choose \"dice\""),
    ("[search]\nseed = 5000000000\n", r"\[search\] seed = 5000000000: must be an integer in \[0, 2\*\*32\)"),
])
def test_bad_search_space_file_gets_a_clear_error(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SearchSpaceError, match=expected) as info:
        load_search_space(path)
    assert str(path) in str(info.value)

