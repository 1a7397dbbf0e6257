"""kercr.tuning / kercr-tune: search space, hypermodel, a tiny search, distributed mode, bad files."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

kt = pytest.importorskip("keras_tuner")

import kercr  # noqa: E402,F401  (registers kercr's custom objects for load_model)
from kercr.models import build_model, count_trainable  # noqa: E402
from kercr.tuning import (  # noqa: E402
    CRHyperModel,
    SearchSpace,
    SearchSpaceError,
    load_search_space,
    parse_search_space,
    run_search,
)
from kercr.cli.tune import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TUNING = REPO / "tuning"

# A tiny TransUNet search: 64 x 64 tiles (the TransUNet is built at the patch size), 1 epoch of
# 2 batches of 4 patches from three 128 x 128 frames with dense cosmic rays.
TINY_DATA = {
    "patch_size": 64, "batch_size": 4, "frames": 3, "frame_shape": [128, 128],
    "steps_per_epoch": 2, "validation_steps": 2, "cr_rate_scale": 50.0,
}
TINY = {
    "search": {"tuner": "random", "max_trials": 2, "max_epochs": 1, "seed": 0},
    "space": {"model": ["transunet"], "num_heads": [6, 12], "num_layers": [1, 2], "mlp_dim": [32, 64],
              "learning_rate": [1e-3]},
    "data": TINY_DATA,
}


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """In-process searches are never distributed, whatever the environment says."""
    for var in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(var, raising=False)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------
# the search space


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


def test_reference_file_matches_the_built_in_default_and_small_file_loads():
    assert load_search_space(TUNING / "reference_transunet.toml").to_json() == SearchSpace().to_json()
    small = load_search_space(TUNING / "small.toml")
    assert small.models == ("deepcr_2_4", "transunet") and small.train_config().patch_size == 64


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


# ------------------------------------------------------------------------------------------
# the hypermodel


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


# ------------------------------------------------------------------------------------------
# a search


def test_two_trial_search_writes_table_and_best_model_and_resumes(tmp_path):
    from kercr.data.normalization import NormalizationConfig
    from kercr.evaluation import validation_metrics
    from kercr.training_data import make_training_data

    space = parse_search_space(TINY, source="tiny")
    out = tmp_path / "tune"
    rows = run_search(space, out, verbose=0)

    table = _read_csv(out / "results.csv")
    assert [r["trial"] for r in table] == [r["trial"] for r in rows]
    assert sorted(r["trial"] for r in table) == ["0", "1"]
    assert {r["status"] for r in table} == {"COMPLETED"} and {r["tuner"] for r in table} == {"tuner0"}
    assert float(table[0]["objective"]) >= float(table[1]["objective"])  # best first
    for row in table:
        expected = build_model("transunet", input_size=64, num_heads=int(row["num_heads"]),
                               num_layers=int(row["num_layers"]), mlp_dim=int(row["mlp_dim"]))
        assert int(row["trainable_params"]) == count_trainable(expected)
        assert 0.0 <= float(row["val_dice"]) <= 1.0 and 0.0 <= float(row["val_tpr_at_fpr_1e-4"]) <= 1.0
    markdown = (out / "results.md").read_text()
    assert "| trial | tuner | status | model | heads | layers | MLP dim |" in markdown
    assert "trainable parameters | validation Dice | validation TPR at 0.01 % FPR" in markdown
    assert markdown.count("| COMPLETED |") == 2

    # The best model is the first row's, with the normalization that training writes, and the
    # table's Dice / TPR are validation_metrics on the pooled validation batches.
    best = keras.saving.load_model(out / "best.keras")
    assert count_trainable(best) == int(table[0]["trainable_params"])
    assert json.loads((out / "normalization.json").read_text()) == NormalizationConfig().to_dict()
    assert json.loads((out / "best_trial.json").read_text())["trial"] == table[0]["trial"]
    batches = make_training_data(space.train_config()).validation_batches(space.train_config().validation_steps)
    pooled = validation_metrics(best, batches)
    assert pooled["dice"] == pytest.approx(float(table[0]["val_dice"]), abs=1e-6)
    assert pooled["tpr_at_fpr_1e-4"] == pytest.approx(float(table[0]["val_tpr_at_fpr_1e-4"]), abs=1e-6)

    # Re-running resumes: the finished search runs no new trial and keeps its results.
    stamp = (out / "search" / "trial_0" / "model.keras").stat().st_mtime_ns
    again = run_search(space, out, verbose=0)
    assert [(r["trial"], r["val_dice"]) for r in again] == [(r["trial"], r["val_dice"]) for r in rows]
    assert (out / "search" / "trial_0" / "model.keras").stat().st_mtime_ns == stamp
    assert not (out / "search" / "trial_2").exists()

    # Another space in the same directory is refused, naming the fix.
    other = parse_search_space({**TINY, "search": {**TINY["search"], "max_trials": 3}}, source="tiny")
    with pytest.raises(SearchSpaceError, match="another search space.*max_trials.*--out NEW_DIR"):
        run_search(other, out, verbose=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_distributed_chief_and_two_workers(tmp_path):
    """A chief oracle and workers tuner0 / tuner1 on localhost; every worker trial reaches the chief."""
    space_file = tmp_path / "tiny.toml"
    space_file.write_text(
        '[search]\ntuner = "random"\nmax_trials = 2\nmax_epochs = 1\nseed = 0\n'
        '[space]\nmodel = ["deepcr_2_4"]\nbase_filters = [4, 8]\nlearning_rate = [1e-3, 3e-3]\n'
        "[data]\npatch_size = 64\nbatch_size = 4\nframes = 3\nframe_shape = [128, 128]\n"
        "steps_per_epoch = 4\nvalidation_steps = 2\ncr_rate_scale = 50.0\n"
    )
    out = tmp_path / "out"
    port = _free_port()
    base_env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port),
                "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "kercr.tuning", "--space", str(space_file), "--out", str(out), "-v"]
    procs, logs = {}, {}

    def start(tuner_id):
        logs[tuner_id] = open(tmp_path / f"{tuner_id}.log", "w")
        procs[tuner_id] = subprocess.Popen(command, env={**base_env, "KERASTUNER_TUNER_ID": tuner_id},
                                           stdout=logs[tuner_id], stderr=subprocess.STDOUT, cwd=REPO)

    try:
        # The chief first, so that both workers ask for their first trial as soon as they are
        # up (no gRPC reconnection back-off): each of them then gets one of the two trials.
        start("chief")
        assert _wait_for_port(port, procs["chief"], 120), (tmp_path / "chief.log").read_text()[-3000:]
        start("tuner0")
        start("tuner1")
        for tuner_id in ("tuner0", "tuner1", "chief"):
            procs[tuner_id].wait(timeout=240)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        for f in logs.values():
            f.close()
    for tuner_id, proc in procs.items():
        assert proc.returncode == 0, f"{tuner_id}:\n" + (tmp_path / f"{tuner_id}.log").read_text()[-3000:]

    oracle = json.loads((out / "search" / "oracle.json").read_text())
    assert sorted(oracle["trial_tuners"]) == ["0", "1"]
    assert sorted(oracle["trial_tuners"].values()) == ["tuner0", "tuner1"]
    table = _read_csv(out / "results.csv")
    assert sorted((r["trial"], r["tuner"], r["status"]) for r in table) == [
        ("0", oracle["trial_tuners"]["0"], "COMPLETED"), ("1", oracle["trial_tuners"]["1"], "COMPLETED")]
    for trial_id in ("0", "1"):
        trial = json.loads((out / "search" / f"trial_{trial_id}" / "trial.json").read_text())
        assert trial["status"] == "COMPLETED" and trial["score"] is not None
        assert "pooled_val_dice" in trial["metrics"]["metrics"]
    for row in table:
        assert int(row["trainable_params"]) == count_trainable(
            build_model("deepcr_2_4", filters=(int(row["base_filters"]), 2 * int(row["base_filters"]))))
    assert (out / "best.keras").is_file() and (out / "normalization.json").is_file()
    # Each worker logged the trial it ran.
    for tuner_id in ("tuner0", "tuner1"):
        assert f"({tuner_id})" in (tmp_path / f"{tuner_id}.log").read_text()


# ------------------------------------------------------------------------------------------
# bad search-space files


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
])
def test_bad_search_space_file_gets_a_clear_error(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SearchSpaceError, match=expected) as info:
        load_search_space(path)
    assert str(path) in str(info.value)


def test_cli_reports_a_bad_file_and_has_help(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[space]\nmlp_dim = []\n")
    assert main(["--space", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kercr-tune: error: ") and str(path) in err and "mlp_dim" in err
    assert err.count("\n") == 1  # one line, no traceback
    assert main(["--space", str(tmp_path / "missing.toml")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["--tuner", "hyperband", "--max-epochs", "1", "--out", str(tmp_path / "o")]) == 1
    assert "Hyperband needs at least 2 epochs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for word in ("--objective", "dice", "tpr", "hyperband", "bayesian", "random", "KERASTUNER_TUNER_ID",
                 "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "resumes"):
        assert word in text


def test_distributed_role_needs_all_three_variables(monkeypatch):
    from kercr.tuning import distributed_role

    assert distributed_role() == "single"
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(SearchSpaceError, match="KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID"):
        distributed_role()
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert distributed_role() == "chief"
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    assert distributed_role() == "worker"


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path, capsys):
    from kercr.tuning.search import SPACE_FILE, _check_out_dir

    out = tmp_path / "tune"
    for name in ("results.csv", "results.md", "best.keras", "best_trial.json", "normalization.json"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("from an earlier search")
    bad = tmp_path / "bad.toml"
    bad.write_text('[search]\ntuner = "random"\nmax_trials = 1\nmax_epochs = 1\n[space]\nmodel = ["transunet"]\n'
                   "[data]\npatch_size = 64\nframes = 1\nframe_shape = [128, 128]\n")
    # One frame cannot be split 90/10: a clear error, before any trial, and --overwrite removed
    # the earlier search's results (an interrupted new search must not show the old best model).
    assert main(["--space", str(bad), "--out", str(out), "--overwrite"]) == 1
    assert "kercr-tune: error:" in capsys.readouterr().err
    assert not any((out / n).exists() for n in ("results.csv", "best.keras", "best_trial.json"))
    # The corrected space goes on in the same folder: no trial ran under the failed one.
    fixed = parse_search_space(TINY, source="tiny")
    _check_out_dir(out, fixed)
    assert json.loads((out / SPACE_FILE).read_text()) == fixed.to_json()
    (out / "search" / "trial_0").mkdir(parents=True)  # once a trial has run, another space is refused
    other = parse_search_space({**TINY, "search": {**TINY["search"], "max_trials": 3}}, source="tiny")
    with pytest.raises(SearchSpaceError, match="another search space"):
        _check_out_dir(out, other)


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
