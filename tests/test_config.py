"""kercr.config: the choice lists, TrainConfig's checks, config files and the merge of options.

Config files and the flags of a real ``kercr-train`` run (malformed files, YAML numbers, resumed
runs) are tested with training in tests/training/test_run.py; these tests call kercr.config directly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import subprocess
import sys

import pytest

from kercr import config
from kercr.config import ConfigError, TrainConfig, read_config_file, resolve_config


# --------------------------------------------------------------------------------------------
# Choices: one list each, here
# --------------------------------------------------------------------------------------------
def test_choice_lists_match_the_modules_that_check_them():
    from kercr.data import cleaning, frames, normalization, synthetic

    assert cleaning.CLEAN_METHODS is config.CLEAN_METHODS
    assert synthetic.VARIETIES == config.VARIETIES and frames.FAINT_CRS == config.FAINT_CRS
    assert normalization.NOISE_ESTIMATORS == config.NOISE_ESTIMATORS
    assert normalization.NOISE_MODELS == config.NOISE_MODELS
    from kercr.cli.detect import detect_parser

    actions = {a.dest: a for a in detect_parser()._actions}
    assert tuple(actions["runtime"].choices) == config.RUNTIMES
    assert tuple(actions["clean"].choices) == config.DETECT_CLEAN_METHODS == config.CLEAN_METHODS + ("network",)


def test_tuning_choices_match_the_search_space():
    pytest.importorskip("keras_tuner")
    from kercr.tuning import space

    assert tuple(space.TUNERS) == config.TUNERS and dict(space.OBJECTIVES) == config.OBJECTIVES


def test_console_script_choices_are_these_lists():
    from kercr.cli.train import train_parser
    from kercr.cli.tune import build_parser

    train = {a.dest: a.choices for a in train_parser()._actions}
    assert {key: tuple(train[key]) for key in ("loss", "variety", "faint_crs", "noise_estimator", "noise_model",
                                                "strategy")} == {
        "loss": config.LOSSES, "variety": config.VARIETIES, "faint_crs": config.FAINT_CRS,
        "noise_estimator": config.NOISE_ESTIMATORS, "noise_model": config.NOISE_MODELS,
        "strategy": config.STRATEGIES}
    tune = {a.dest: a.choices for a in build_parser()._actions}
    assert tuple(tune["tuner"]) == config.TUNERS and list(tune["objective"]) == list(config.OBJECTIVES)


def test_every_choice_is_accepted_where_it_is_checked_and_no_other():
    from kercr.data import KercrDataError
    from kercr.data.cleaning import check_clean_method
    from kercr.data.normalization import NormalizationConfig

    for method in config.CLEAN_METHODS:
        assert check_clean_method(method) == method
    for estimator in config.NOISE_ESTIMATORS:
        for noise_model in config.NOISE_MODELS:
            assert NormalizationConfig(noise_estimator=estimator, noise_model=noise_model).noise_model == noise_model
    with pytest.raises(KercrDataError, match="'std' is not one of \\('mad', 'diff2', 'diff2_std'\\)"):
        NormalizationConfig(noise_estimator="std")
    with pytest.raises(KercrDataError, match="choose one of: median, mean, idw"):
        check_clean_method("medmask")
    # TrainConfig takes every loss, strategy, variety and faint-CR choice, and refuses others.
    small = dict(frame_shape=[256, 256], frames=2)
    for key, choices in (("loss", config.LOSSES), ("strategy", config.STRATEGIES), ("variety", config.VARIETIES),
                         ("faint_crs", config.FAINT_CRS)):
        for choice in choices:
            assert getattr(TrainConfig(**small, **{key: choice}).validate(), key) == choice
        with pytest.raises(ConfigError, match=f"{key}='nope'"):
            TrainConfig(**small, **{key: "nope"}).validate()


def test_import_kercr_config_is_light():
    code = ("import sys, kercr.config; "
            "print([m for m in ('numpy', 'keras', 'tensorflow', 'astropy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# TrainConfig
# --------------------------------------------------------------------------------------------
def test_the_defaults_are_a_valid_configuration():
    default = TrainConfig()
    assert default.validate() is default
    assert (default.model, default.patch_size, default.batch_size, default.loss) == ("deepcr", 256, 16, "dice_bce")
    assert set(default.to_dict()) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("options, message", [
    ({"learning_rate": 0.0}, r"learning_rate=0.0 must be in \(0, 1\), e.g. 1e-3"),
    ({"min_learning_rate": 1.0}, r"min_learning_rate=1.0 must be in \[0, 1\)"),
    ({"lr_patience": -1}, "lr_patience=-1 must be >= 0"),
    ({"lr_schedule": "step"}, "lr_schedule='step' is not valid; choose one of: plateau, cosine"),
    ({"lr_schedule": "cosine", "min_learning_rate": 1e-3}, "give a smaller min_learning_rate"),
    ({"tensorboard_images": -2}, "tensorboard_images=-2 must be >= 0"),
    ({"loss": "dice"}, "loss='dice' is not valid; choose one of: dice_bce, median_bce, bce"),
    ({"strategy": "tpu"}, "strategy='tpu' is not valid; choose one of: auto, none, mirrored, multiworker"),
    ({"cr_rate_scale": 0.0}, "cr_rate_scale=0.0 must be positive"),
    ({"footprint_fraction": -1.0}, r"footprint_fraction=-1.0 must be a finite number >= 0 \(real footprints per"),
    ({"footprint_fraction": float("nan")}, "footprint_fraction=nan must be a finite number >= 0"),
    ({"frame_shape": [128, 512]}, r"frame_shape=\[128, 512\] must be two sizes \(ny, nx\), each at least patch_size=256"),
    ({"epochs": "3"}, "epochs='3' must be an integer, not str"),
    ({"sky_e_range": [30.0]}, r"sky_e_range=\[30.0\] must be a list of 2 numbers, e.g. \[30, 1e6\]"),
    ({"noise_model": "blocks"}, "noise_model='blocks'"),
    ({"model": "resnet"}, "model: unknown model 'resnet'"),
    ({"footprints": "/no/such/table.fits"}, "footprints='/no/such/table.fits': no such file or directory; pass a CR "
                                            "footprint table"),
])
def test_a_bad_option_is_named_with_the_fix(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options).validate()


def test_a_number_written_as_a_string_is_read_as_the_number():
    checked = TrainConfig(learning_rate="3e-4", asinh_softening="10").validate()
    assert checked.learning_rate == 3e-4 and checked.asinh_softening == 10.0


def test_normalization_config_carries_the_three_normalization_options():
    from kercr.data.normalization import NormalizationConfig

    trained = TrainConfig(asinh_softening=10.0, noise_estimator="diff2", noise_model="local")
    assert trained.normalization_config() == NormalizationConfig(asinh_softening=10.0, noise_estimator="diff2",
                                                                 noise_model="local")
    assert TrainConfig().normalization_config() == NormalizationConfig()
    relative = TrainConfig(noise_estimator="diff2", noise_model="relative", local_axis="smaller", local_edges="nearest")
    assert relative.normalization_config() == NormalizationConfig(noise_estimator="diff2", noise_model="relative",
                                                                  local_axis="smaller", local_edges="nearest")
    assert TrainConfig(noise_model="relative", block_size=64).normalization_config().block_size == 64
    with pytest.raises(ConfigError, match="block_size=4 must be an integer >= 8"):
        TrainConfig(noise_model="relative", block_size=4).validate()
    assert TrainConfig(noise_model="relative", local_gate=5.0).normalization_config().local_gate == 5.0
    with pytest.raises(ConfigError, match="local_gate=5.0 applies to noise_model='relative' only"):
        TrainConfig(local_gate=5.0).validate()
    with pytest.raises(ConfigError, match="local_gate=-1.0 must be a positive number"):
        TrainConfig(noise_model="relative", local_gate=-1.0).validate()
    assert TrainConfig(noise_model="relative", local_min_blocks=3).normalization_config().local_min_blocks == 3
    assert TrainConfig(header_noise=[0.9, 1.6]).normalization_config().header_noise == (0.9, 1.6)
    with pytest.raises(ConfigError, match=r"header_noise=\[0.9\] must be a list of 2 numbers, e.g. \[0.9, 1.6\]"):
        TrainConfig(header_noise=[0.9]).validate()
    with pytest.raises(ConfigError, match="0 < low <= high"):
        TrainConfig(header_noise=[1.6, 0.9]).validate()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_training_config_is_valid(path):
    """The configs/ recipes (the cards' reproduce commands) parse and validate as kercr-train reads them."""
    options = read_config_file(path)
    options.pop("expect", None)  # a note kercr-train prints after the run (quickstart.toml)
    if str(options.get("init_weights", "")).startswith("runs/"):
        options["init_weights"] = "default"  # a run of an earlier stage, absent on a fresh clone
    config = resolve_config(options, {})
    config.normalization_config()
    assert config.epochs > 0 and config.out


def test_save_writes_sorted_json_and_load_reads_it_back(tmp_path):
    saved = TrainConfig(model="deepcr_2_4", model_options={"filters": [8, 16]}, frame_shape=[512, 256], seed=7)
    saved.save(tmp_path / "config.json")
    text = (tmp_path / "config.json").read_text()
    assert list(json.loads(text)) == sorted(dataclasses.asdict(saved)) and text.endswith("}\n")
    assert TrainConfig.load(tmp_path / "config.json") == saved
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object of options, not list"):
        TrainConfig.load(tmp_path / "list.json")


# --------------------------------------------------------------------------------------------
# Config files and the merge: defaults < file < flags
# --------------------------------------------------------------------------------------------
def test_flags_win_over_the_file_and_model_options_merge_key_by_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "deepcr_2_4"\nepochs = 3\nbatch_size = 8\n'
                    '[model_options]\nfilters = [8, 16]\nnorm = "group"\n')
    file_options = read_config_file(path)
    assert file_options == {"model": "deepcr_2_4", "epochs": 3, "batch_size": 8,
                            "model_options": {"filters": [8, 16], "norm": "group"}}
    merged = resolve_config(file_options, {"batch_size": 4, "epochs": None, "model_options": {"norm": "batch"}})
    assert (merged.epochs, merged.batch_size) == (3, 4)  # None: the flag was not given
    assert merged.model_options == {"filters": [8, 16], "norm": "batch"}
    assert merged.learning_rate == TrainConfig().learning_rate  # neither set it: the default
    assert resolve_config({}, {"frame_shape": (512, 256)}).frame_shape == [512, 256]  # argparse gives tuples


def test_unknown_options_name_where_they_came_from_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) in config file: epoch, lr; valid options: .*epochs"):
        resolve_config({"epoch": 3, "lr": 0.1}, {})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) in flags: colour"):
        resolve_config({}, {"colour": "red"})
    with pytest.raises(ConfigError, match=r"model_options=\[8, 16\] in flags must be a table of builder options"):
        resolve_config({}, {"model_options": [8, 16]})


def test_read_config_file_reads_toml_and_yaml_and_names_a_bad_file(tmp_path):
    (tmp_path / "a.yml").write_text("model: unet\nfrequencies: [1, 2]\n")
    assert read_config_file(tmp_path / "a.yml") == {"model": "unet", "frequencies": [1, 2]}
    (tmp_path / "empty.yaml").write_text("")
    assert read_config_file(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a table of options, not list"):
        read_config_file(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match=r"does not exist; check the path given to --config"):
        read_config_file(tmp_path / "missing.toml")
    assert issubclass(ConfigError, ValueError)  # the CLI layer reports it as one line
