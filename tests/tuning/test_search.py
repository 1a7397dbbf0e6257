"""kercr.tuning.search: a tiny search, its table and best model, resuming, distributed mode, the output folder.

The search space, the hypermodel, the tuners and the results table have their own files here;
kercr-tune's command line is in tests/cli/test_tune.py.
"""

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
from kercr.tuning import SearchSpaceError, parse_search_space, run_search  # noqa: E402
from kercr.cli.tune import main  # noqa: E402
from tests.tuning._shared import TINY  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """In-process searches are never distributed, whatever the environment says."""
    for var in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(var, raising=False)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------
# a search


def test_two_trial_search_writes_table_and_best_model_and_resumes(tmp_path):
    from kercr.data.normalization import NormalizationConfig
    from kercr.evaluation import validation_metrics
    from kercr.training import make_training_data

    space = parse_search_space(TINY, source="tiny")
    out = tmp_path / "tune"
    rows = run_search(space, out, verbose=0)

    table = _read_csv(out / "results.csv")
    assert [r["trial"] for r in table] == [r["trial"] for r in rows]
    assert sorted(r["trial"] for r in table) == ["0", "1"]
    assert {r["status"] for r in table} == {"COMPLETED"} and {r["tuner"] for r in table} == {"tuner0"}
    assert float(table[0]["objective"]) >= float(table[1]["objective"])  # best first
    # Each row's Dice / TPR are validation_metrics of that trial's saved model on the pooled
    # validation batches (not the logged per-batch means).
    batches = make_training_data(space.train_config()).validation_batches(space.train_config().validation_steps)
    for row in table:
        expected = build_model("transunet", input_size=64, num_heads=int(row["num_heads"]),
                               num_layers=int(row["num_layers"]), mlp_dim=int(row["mlp_dim"]))
        assert int(row["trainable_params"]) == count_trainable(expected)
        trial = keras.saving.load_model(out / "search" / f"trial_{row['trial']}" / "model.keras")
        pooled = validation_metrics(trial, batches)
        assert pooled["dice"] == pytest.approx(float(row["val_dice"]), abs=1e-6)
        assert pooled["tpr_at_fpr_1e-4"] == pytest.approx(float(row["val_tpr_at_fpr_1e-4"]), abs=1e-6)
    markdown = (out / "results.md").read_text()
    assert "| trial | tuner | status | model | heads | layers | MLP dim |" in markdown
    assert "trainable parameters | validation Dice | validation TPR at 0.01 % FPR" in markdown
    assert markdown.count("| COMPLETED |") == 2

    # The best model is the first row's, with the normalization that training writes.
    best = keras.saving.load_model(out / "best.keras")
    assert count_trainable(best) == int(table[0]["trainable_params"])
    assert json.loads((out / "normalization.json").read_text()) == NormalizationConfig().to_dict()
    assert json.loads((out / "best_trial.json").read_text())["trial"] == table[0]["trial"]
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
    # The saved oracle lists no trial as running, and the chief run again alone, with nothing left to
    # hand out, writes the results and ends instead of serving for ever.
    assert oracle["ongoing_trials"] == {}
    rerun = subprocess.run(command, env={**base_env, "KERASTUNER_TUNER_ID": "chief"}, cwd=REPO, timeout=120,
                           capture_output=True, text=True)
    assert rerun.returncode == 0 and "has run all its trials" in rerun.stderr, rerun.stderr[-3000:]
    assert _read_csv(out / "results.csv") == table


# ------------------------------------------------------------------------------------------
# distributed mode and the output folder


def test_a_worker_without_a_chief_stops_with_the_address_it_tried(monkeypatch):
    from kercr.tuning import search

    monkeypatch.setenv("KERCR_ORACLE_WAIT_S", "1")
    with pytest.raises(OSError, match=r"no chief oracle listens at 127.0.0.1:\d+ after 1 s.*KERASTUNER_TUNER_ID=chief"):
        search._wait_for_oracle("127.0.0.1", str(_free_port()))
    with socket.socket() as listening:  # a chief listening: the worker goes on at once
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        search._wait_for_oracle("127.0.0.1", str(listening.getsockname()[1]))


def test_a_worker_finds_a_chief_at_an_ipv6_address_in_brackets(monkeypatch):
    from kercr.tuning import search

    try:
        listening = socket.socket(socket.AF_INET6)
        listening.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    monkeypatch.setenv("KERCR_ORACLE_WAIT_S", "1")
    with listening:
        listening.listen()
        port = str(listening.getsockname()[1])
        search._wait_for_oracle("[::1]", port)  # before: "[::1]" went to the socket as it is, and it never connected
        with pytest.raises(OSError, match=r"cannot listen on \[::1\]:\d+"):
            search._check_oracle_port("[::1]", port)


def test_a_chief_refuses_a_port_something_else_listens_on():
    from kercr.tuning import search

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1:.*Pick another KERASTUNER_ORACLE_PORT"):
            search._check_oracle_port("127.0.0.1", str(taken.getsockname()[1]))
    search._check_oracle_port("127.0.0.1", str(_free_port()))  # a free port: no error


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
    for name in (SPACE_FILE, "results.csv", "results.md", "best.keras", "best_trial.json", "normalization.json"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("from an earlier search")
    bad = tmp_path / "bad.toml"
    bad.write_text('[search]\ntuner = "random"\nmax_trials = 1\nmax_epochs = 1\n[space]\nmodel = ["transunet"]\n'
                   "[data]\npatch_size = 64\nframes = 3\nframe_shape = [128, 128]\ncr_rate_scale = 1e-3\n")
    # Validation patches without CRs: a clear error, before any trial, and --overwrite removed
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


def test_a_damaged_space_file_and_a_validation_set_without_crs_are_named_before_any_trial(tmp_path):
    from kercr.config import ConfigError
    from kercr.tuning.search import SPACE_FILE

    out = tmp_path / "tune"
    out.mkdir()
    (out / SPACE_FILE).write_text('{"search": {"tuner": "ran')  # a kill while an older kercr wrote it
    space = parse_search_space(TINY, source="tiny")
    with pytest.raises(SearchSpaceError, match=rf"{SPACE_FILE} is not readable JSON .* --overwrite"):
        run_search(space, out, verbose=0)
    sparse = parse_search_space({**TINY, "data": {**TINY["data"], "cr_rate_scale": 1e-3}}, source="tiny")
    with pytest.raises(ConfigError, match="the validation patches hold no .* CR pixels"):
        run_search(sparse, tmp_path / "sparse", verbose=0)
    assert not (tmp_path / "sparse" / "search").exists()  # no trial started


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_holds_no_search_is_refused_and_nothing_in_it_is_touched(tmp_path, overwrite):
    """Before, kercr-tune wrote into a finished kercr-train run (and --overwrite deleted its
    best.keras first): the run's config.json then described another model than its best.keras."""
    space = parse_search_space(TINY, source="tiny")
    run = tmp_path / "run"
    run.mkdir()
    for name, text in (("config.json", "{}"), ("best.keras", "weights"), ("normalization.json", "{}")):
        (run / name).write_text(text)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(SearchSpaceError, match=r"holds a kercr-train run \(config.json\), not a kercr-tune search.*"
                                               r"--out NEW_DIR"):
        run_search(space, run, overwrite=overwrite, verbose=0)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(SearchSpaceError, match=r"holds other files \(a.txt\)"):
        run_search(space, tmp_path / "notes", overwrite=overwrite, verbose=0)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SearchSpaceError, match="is a file; pass --out NEW_DIR"):
        run_search(space, tmp_path / "afile", overwrite=overwrite, verbose=0)
