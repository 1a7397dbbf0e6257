"""``kercr-train`` and ``kercr-prepare`` (kercr.cli.train): flags to options, and usage errors.

Runs of ``kercr-train`` (a run directory, resuming, bad options found before training, config
files) are tested with training in tests/training/; ``--help`` without TensorFlow and ``-q``/``-v``
in tests/cli/test_common.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from kercr import config
from kercr.cli.train import prepare_parser, train_flags, train_main, train_parser
from kercr.config import TrainConfig


def test_every_flag_is_the_option_of_its_name_and_unset_flags_are_none():
    parser = train_parser()
    args = parser.parse_args(["--lr-factor", "0.25", "--frame-shape", "512", "256", "--set", "filters=[8, 16]",
                              "--set", "norm=group", "--no-mixed-precision", "--sky-e-range", "30", "1e6"])
    flags = train_flags(parser, args)
    assert set(flags) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert flags["lr_factor"] == 0.25 and flags["frame_shape"] == [512, 256] and flags["sky_e_range"] == [30.0, 1e6]
    assert flags["model_options"] == {"filters": [8, 16], "norm": "group"} and flags["mixed_precision"] is False
    assert {k for k, v in flags.items() if v is not None} == {"lr_factor", "frame_shape", "model_options",
                                                              "mixed_precision", "sky_e_range"}
    assert train_flags(parser, parser.parse_args([]))["model_options"] is None  # no --set: not an empty table


def test_a_wrong_choice_names_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main(["--noise-model", "blocks"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'blocks'" in err and all(m in err for m in config.NOISE_MODELS)


def test_a_set_option_without_a_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_main(["--set", "filters"])
    assert exit_.value.code == 2
    assert "--set 'filters': expected KEY=VALUE, e.g. --set num_layers=8" in capsys.readouterr().err


def test_prepare_needs_an_output_folder_and_has_the_defaults_it_documents(capsys):
    with pytest.raises(SystemExit) as exit_:
        prepare_parser().parse_args([])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err
    args = prepare_parser().parse_args(["--out", "shards"])
    assert (args.data, args.frames, args.frame_shape, args.patch_size, args.shard_size, args.seed) == (
        "synthetic", 20, [4096, 2048], 256, 1024, 0)


def test_the_quickstart_config_says_what_to_expect_and_expect_is_not_an_option():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "quickstart.toml"
    options = config.read_config_file(path)
    expect = options.pop("expect")
    assert "4,865 validation CR pixels" in expect and "0.01 % FPR" in expect
    assert config.resolve_config(options, {}).model == "deepcr_2_32"  # the rest are training options


def test_an_expectation_that_is_not_a_string_stops_before_training(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "deepcr_2_32"\nexpect = 3\n')
    assert train_main(["--config", str(bad), "--out", str(tmp_path / "run")]) == 1
    assert "expect=3" in capsys.readouterr().err and not (tmp_path / "run").exists()
