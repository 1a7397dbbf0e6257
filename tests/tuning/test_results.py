"""kercr.tuning.results: the results table (CSV and Markdown, best first) and the best model beside it.

The tuner is a stand-in holding finished trials, so the table's rules are tested without training;
tests/tuning/test_search.py checks the same files after a real search.
"""

from __future__ import annotations

import csv
import json
import logging
import types

import pytest

pytest.importorskip("keras_tuner")

from kercr.data.normalization import NormalizationConfig  # noqa: E402
from kercr.tuning.results import markdown_table, trial_rows, write_results  # noqa: E402
from kercr.tuning.space import parse_search_space  # noqa: E402
from kercr.tuning.tuners import MODEL_FILE  # noqa: E402

SPACE = parse_search_space({"search": {"tuner": "random", "max_epochs": 4},
                            "space": {"model": ["transunet"], "num_heads": [6, 12]}}, source="test")


class _Metrics:
    def __init__(self, values):
        self.values = values

    def exists(self, name):
        return name in self.values

    def get_last_value(self, name):
        return self.values[name]


def _trial(trial_id, score, heads, lr, *, status="COMPLETED", dice=None):
    metrics = {} if dice is None else {"pooled_val_dice": dice, "pooled_val_tpr_at_fpr_1e-4": dice / 2,
                                       "trainable_params": 1000.0 + heads}
    return types.SimpleNamespace(trial_id=trial_id, score=score, status=status, metrics=_Metrics(metrics),
                                 hyperparameters=types.SimpleNamespace(values={"num_heads": heads,
                                                                               "learning_rate": lr}))


def _tuner(folder, trials, *, tuners=None):
    oracle = types.SimpleNamespace(trials={t.trial_id: t for t in trials}, trial_tuners=tuners or {},
                                   get_trial=lambda trial_id: oracle.trials[trial_id])

    def load_model(trial):
        raise FileNotFoundError("the checkpoint is on another machine")

    return types.SimpleNamespace(oracle=oracle, get_trial_dir=lambda trial_id: str(folder / f"trial_{trial_id}"),
                                 load_model=load_model)


TRIALS = [_trial("0", 0.41, 6, 1e-3, dice=0.4), _trial("1", None, 12, 2e-4, status="RUNNING"),
          _trial("2", 0.62, 12, 3.3e-4, dice=0.6), _trial("3", 0.41, 12, 1e-4, dice=0.3)]


def test_rows_are_best_first_and_unfinished_trials_last():
    rows = trial_rows(_tuner(None, TRIALS, tuners={"2": "tuner1"}), SPACE)
    assert [r["trial"] for r in rows] == ["2", "0", "3", "1"]  # ties by trial ID
    best = rows[0]
    assert (best["tuner"], best["model"], best["num_heads"], best["epochs"]) == ("tuner1", "transunet", 12, 4)
    assert (best["trainable_params"], best["val_dice"], best["val_tpr_at_fpr_1e-4"]) == (1012, 0.6, 0.3)
    assert rows[-1]["val_dice"] is None and rows[-1]["objective"] is None


def test_the_markdown_table_formats_numbers_and_leaves_out_unused_columns():
    text = markdown_table(trial_rows(_tuner(None, TRIALS), SPACE), SPACE)
    lines = text.splitlines()
    assert lines[0].startswith("Search: random, objective val_dice (max)")
    assert lines[2] == ("| trial | status | model | heads | learning rate | epochs | trainable parameters | "
                        "validation Dice | validation TPR at 0.01 % FPR | objective (best logged) |")
    assert lines[4] == "| 2 | COMPLETED | transunet | 12 | 0.00033 | 4 | 1,012 | 0.6000 | 0.3000 | 0.6200 |"
    assert lines[-1] == "| 1 | RUNNING | transunet | 12 | 0.0002 | 4 |  |  |  |  |"
    assert text.endswith("\n")


def test_write_results_copies_the_best_trials_model_with_its_normalization(tmp_path):
    (tmp_path / "trial_2").mkdir()
    (tmp_path / "trial_2" / MODEL_FILE).write_bytes(b"the best model")
    out = tmp_path / "out"
    rows = write_results(_tuner(tmp_path, TRIALS), SPACE, out)
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["trial"] for r in table] == [r["trial"] for r in rows] == ["2", "0", "3", "1"]
    assert "base_filters" not in table[0] and "tuner" not in table[0] and table[3]["val_dice"] == ""
    assert (out / "results.md").read_text() == markdown_table(rows, SPACE)
    assert (out / "best.keras").read_bytes() == b"the best model"
    assert json.loads((out / "normalization.json").read_text()) == NormalizationConfig().to_dict()
    best = json.loads((out / "best_trial.json").read_text())
    assert best["trial"] == "2" and best["hyperparameters"] == {"num_heads": 12, "learning_rate": 3.3e-4}


def test_without_a_model_to_copy_the_table_is_written_and_the_reason_logged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="kercr"):
        write_results(_tuner(tmp_path, TRIALS, tuners={"2": "tuner1"}), SPACE, tmp_path / "a")
    assert (tmp_path / "a" / "results.csv").is_file() and not (tmp_path / "a" / "best.keras").exists()
    assert "the best trial 2 ran on tuner1" in caplog.text and "same --out on a shared file system" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kercr"):
        write_results(_tuner(tmp_path, [TRIALS[1]]), SPACE, tmp_path / "b")
    assert "no trial finished yet; no best model to save" in caplog.text
    assert not (tmp_path / "b" / "best.keras").exists() and not (tmp_path / "b" / "normalization.json").exists()
