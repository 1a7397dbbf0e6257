"""kercr-train (:mod:`kercr.training.run`): run directory contents, config resolution, bad options, resume,
multi-worker, JAX."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from kercr.cli.train import train_main
from kercr.config import ConfigError, TrainConfig, read_config_file, resolve_config

TINY = [
    "--model", "deepcr_2_4", "--patch-size", "64", "--batch-size", "4", "--frames", "4",
    "--frame-shape", "256", "256", "--cr-rate-scale", "50", "--steps-per-epoch", "3",
    "--validation-steps", "2",
]


def _history(run):
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _env(**extra):
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}


def _cli(*args):
    """The ``kercr-train`` command line, run by this interpreter (the venv's bin may not be on PATH)."""
    return [sys.executable, "-c", "import sys; from kercr.cli.train import train_main; sys.exit(train_main())", *args]


def test_a_run_directory_holds_everything_the_user_needs(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main([*TINY, "--epochs", "2", "--variety", "wide", "--asinh-softening", "10",
                       "--noise-estimator", "diff2", "--out", str(run)]) == 0
    for name in ("config.json", "normalization.json", "best.keras", "last.keras", "history.csv",
                 "loss.png", "dice.png", "metrics.json"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()  # resume state is removed once the run finished
    history = _history(run)
    assert [int(r["epoch"]) for r in history] == [0, 1]
    for key in ("loss", "val_loss", "dice", "val_dice", "tpr_at_fpr_1e-4", "val_tpr_at_fpr_1e-4", "learning_rate"):
        assert key in history[0], key
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "deepcr_2_4" and config["patch_size"] == 64 and config["learning_rate"] == 1e-3
    assert config["variety"] == "wide" and config["asinh_softening"] == 10.0
    saved = json.loads((run / "normalization.json").read_text())
    assert saved["asinh_softening"] == 10.0 and saved["noise_estimator"] == "diff2"  # inference does the same
    metrics = json.loads((run / "metrics.json").read_text())
    # metrics.json scores best.keras on the run's validation patches (rebuilt from config.json), by
    # the definitions redone here in numpy: Dice at probability 0.5 and the TPR at 0.01 % FPR, read
    # off the ROC between its vertices with k - 1 and k false positives, k = ceil(1e-4 x non-CR pixels).
    import keras

    from kercr.training import make_training_data

    config = TrainConfig.load(run / "config.json")
    batches = make_training_data(config).validation_batches(config.validation_steps)
    best = keras.saving.load_model(run / "best.keras")
    p = np.concatenate([np.asarray(best.predict_on_batch(x)).ravel() for x, _, _ in batches])
    cr = np.concatenate([y.ravel() for _, y, _ in batches]) > 0.5
    keep = np.concatenate([w.ravel() for _, _, w in batches]) > 0  # weight 0: ignored pixel
    pos, neg = p[cr & keep], np.sort(p[~cr & keep])[::-1]
    counts = (metrics["cr_pixels"], metrics["non_cr_pixels"], metrics["ignored_pixels"])
    assert counts == (pos.size, neg.size, np.count_nonzero(~keep))
    called = (p >= 0.5) & keep
    dice = 2 * np.count_nonzero(called & cr) / (np.count_nonzero(called) + pos.size)
    assert metrics["dice"] == pytest.approx(dice, abs=1e-12)
    allowed = 1e-4 * neg.size  # false positives allowed at 0.01 % FPR
    k = int(np.ceil(allowed))
    above, at = np.count_nonzero(pos > neg[k - 1]), np.count_nonzero(pos >= neg[k - 1])
    tpr = (above + (allowed - (k - 1)) * (at - above)) / pos.size
    assert metrics["tpr_at_fpr_1e-4"] == pytest.approx(tpr, abs=1e-12)
    printed = capsys.readouterr().out
    # Not a terminal: one line per epoch, not a progress bar redrawn at every step.
    assert "━" not in printed and "\r" not in printed and " - loss: " in printed
    assert f"TPR {metrics['tpr_at_fpr_1e-4']:.4f} at 0.01 % FPR" in printed
    assert f"precision {metrics['precision_at_recall_0.95']:.4f} at 95 % recall" in printed
    # TensorBoard: scalars and validation images were written as real event files.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard" / "validation_images"), size_guidance={"images": 0})
    events.Reload()
    assert {"image", "truth", "predicted"} <= set(events.Tags()["tensors"]) | set(events.Tags()["images"])
    # The PNG plots are real images.
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Runs compared in one figure (the reference table's curves.png).
    from kercr.plots import plot_runs
    from kercr.training import read_history

    rows = read_history(run / "history.csv")
    assert [r["epoch"] for r in rows] == [0, 1] and "val_dice" in rows[0]
    png = plot_runs({"a": rows, "b": rows[:1]}, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_file_sets_options_and_flags_override_it(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('model = "unet"\nbatch_size = 8\nlearning_rate = 0.0005\n[model_options]\nfilters = [8, 16, 32]\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text("model: unet\nbatch_size: 8\n")
    assert read_config_file(yaml) == {"model": "unet", "batch_size": 8}
    config = resolve_config(read_config_file(toml), {"batch_size": 2, "epochs": None})
    assert (config.model, config.batch_size, config.learning_rate) == ("unet", 2, 0.0005)
    assert config.model_options == {"filters": [8, 16, 32]}
    assert config.epochs == TrainConfig().epochs


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet"], "unknown model 'resnet'"),
        (["--data", "/no/such/dir"], "no such directory"),
        (["--patch-size", "66", "--model", "deepcr"], "multiple of 4"),
        (["--model", "transunet", "--set", "input_size=128"], "fixed at 128"),
        (["--set", "heads=3"], "valid options"),
        (["--batch-size", "0"], "positive integer"),
        (["--on-source-fraction", "1.5"], "on_source_fraction=1.5 must be in [0, 1]"),
        (["--extended-sources", "-1"], "extended_sources=-1.0 must be >= 0"),
        (["--variety", "wide", "--sky-e-range", "500", "50"], "must be two sky levels in e- per pixel, 0 < low < high"),
        (["--sky-e-range", "100", "1e6"], "Use variety='wide' or leave sky_e_range unset"),
        (["--cr-threshold-e", "0"], "cr_threshold_e=0.0 must be a positive charge in e-"),
        (["--rim-weight", "0"], "rim_weight=0.0 must be a positive number"),
        (["--variety", "wide", "--data", "{tmp}", "--faint-crs", "negative"], "leave them at their defaults"),
        (["--init-weights", "/no/such/model.keras"], "init_weights='/no/such/model.keras': no such file"),
        (["--lr-factor", "2"], "lr_factor=2.0 must be in (0, 1)"),
        (["--alpha-start", "1.5"], "alpha_start=1.5 must be in [0, 1]"),
        (["--patches-per-frame", "0"], "patches_per_frame=0 must be >= 1"),
        (["--val-fraction", "1"], "val_fraction=1.0 must be in (0, 1)"),
        (["--seed", "-1"], "seed=-1 must be in [0, 2**32)"),
        (["--frames", "1"], "frames=1 must be >= 2"),
        (["--cr-rate-scale", "inf"], "cr_rate_scale=inf must be positive"),
        (["--alpha-epochs", "0"], "alpha_epochs=0 must be a positive integer"),
        (["--variety", "wide", "--data", "{tmp}"], "variety shape the synthetic frames"),
        (["--set", "filters=5"], "cannot be built with filters=5"),
        (["--out", "{tmp}/afile"], "is a file; pass a folder"),
        (["--out", "{tmp}/notes"], "holds files but no kercr-train run"),
        (["--out", "{tmp}/afile/sub"], "cannot be made: '{tmp}/afile' is a file"),
        (["--out", "{tmp}/hf"], "is not a kercr-train run's configuration (its keys: architectures, hidden_size)"),
    ],
)
def test_bad_options_fail_before_training_with_a_clear_error(tmp_path, capsys, args, message):
    run = tmp_path / "run"
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "history.csv").write_text("someone else's\n")
    (tmp_path / "hf").mkdir()  # another library's model folder
    (tmp_path / "hf" / "config.json").write_text('{"architectures": ["Bert"], "hidden_size": 768}')
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    message = message.replace("{tmp}", str(tmp_path))
    assert train_main([*TINY, "--out", str(run), *args]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert not run.exists()  # nothing written: no run directory
    assert (tmp_path / "afile").read_text() == "a file" and os.listdir(tmp_path / "notes") == ["history.csv"]
    assert (tmp_path / "notes" / "history.csv").read_text() == "someone else's\n"


def test_every_training_option_has_a_flag(tmp_path, monkeypatch):
    import dataclasses

    import kercr.training

    configs = []
    monkeypatch.setattr(kercr.training, "train", lambda config, **_: configs.append(config) or {})
    flags = ["--lr-factor", "0.25", "--lr-patience", "7", "--min-learning-rate", "1e-5", "--alpha-start", "0.1",
             "--patches-per-frame", "12", "--val-fraction", "0.2", "--tensorboard-images", "0",
             "--mixed-precision"]
    assert train_main([*TINY, *flags, "--out", str(tmp_path / "run")]) == 0
    config = configs[-1]
    assert (config.lr_factor, config.lr_patience, config.min_learning_rate, config.alpha_start) == (0.25, 7, 1e-5, 0.1)
    assert (config.patches_per_frame, config.val_fraction, config.tensorboard_images) == (12, 0.2, 0)
    assert config.mixed_precision is True
    path = tmp_path / "mp.toml"
    path.write_text("mixed_precision = true\n")
    assert train_main([*TINY, "--config", str(path), "--no-mixed-precision", "--out", str(tmp_path / "b")]) == 0
    assert configs[-1].mixed_precision is False  # a flag switches off what the file switched on
    helptext = subprocess.run([sys.executable, "-c", "from kercr.cli.train import train_main; train_main(['--help'])"],
                              capture_output=True, text=True).stdout
    for field in dataclasses.fields(TrainConfig):
        if field.name != "model_options":  # set with --set KEY=VALUE
            assert "--" + field.name.replace("_", "-") in helptext, field.name


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ("model = [unclosed", ".toml", "malformed"),
        ("epochs: [1, 2\n", ".yaml", "malformed"),
        ("epoch = 3\n", ".toml", "unknown option(s) in config file: epoch"),
        ("1: 2\n", ".yaml", "unknown option(s) in config file: 1"),
        ("model = 'unet'\n", ".ini", "unknown format"),
        ("frame_shape = 1024\n", ".toml", "frame_shape=1024 must be a list, not int"),
        ("frame_shape = [1024, 'x']\n", ".toml", "must be a list of 2 integers"),
        ("cr_rate_scale = 'dense'\n", ".toml", "cr_rate_scale='dense' must be a number, not str"),
        ("model_options = [48, 96]\n", ".toml", "must be a table of builder options"),
        ("epochs: true\n", ".yaml", "epochs=True must be an integer, not bool"),
        ("mixed_precision: 'yes'\n", ".yaml", "must be true or false"),
    ],
)
def test_malformed_config_files_are_rejected(tmp_path, capsys, content, suffix, message):
    path = tmp_path / f"config{suffix}"
    path.write_text(content)
    assert train_main(["--config", str(path), "--out", str(tmp_path / "run")]) == 1
    assert message in capsys.readouterr().err


def test_yaml_numbers_written_without_a_dot_are_read_as_numbers(tmp_path):
    # PyYAML reads 1e-3 as the string "1e-3" (YAML 1.1 wants 1.0e-3); kercr takes it as the number.
    path = tmp_path / "config.yaml"
    path.write_text("learning_rate: 1e-3\nasinh_softening: 1e1\n")
    config = resolve_config(read_config_file(path), {})
    assert config.learning_rate == 1e-3 and config.asinh_softening == 10.0


def test_a_run_directory_refuses_a_different_run(tmp_path, tiny_config):
    from kercr.training import train
    from kercr.training.run import _check_run_dir

    config = tiny_config()
    (tmp_path / "run").mkdir()
    config.save(tmp_path / "run" / "config.json")
    # A start that failed before its first epoch left only config.json: a corrected command goes on.
    assert _check_run_dir(tmp_path / "run", tiny_config(learning_rate=1e-2)) == {}
    (tmp_path / "run" / "history.csv").write_text("epoch,loss,val_loss\n0,0.5,0.5\n")
    with pytest.raises(ConfigError, match="other options"):
        train(tiny_config(learning_rate=1e-2))


def test_a_run_made_before_an_option_existed_resumes_with_its_default(tmp_path, tiny_config):
    from kercr.training.run import _check_run_dir

    run = tmp_path / "run"
    run.mkdir()
    older = tiny_config().to_dict()
    del older["noise_estimator"]  # config.json of a run made before kercr had the option
    (run / "config.json").write_text(json.dumps(older))
    (run / "history.csv").write_text("epoch,loss,val_loss\n0,0.5,0.5\n")  # it finished an epoch
    assert _check_run_dir(run, tiny_config(epochs=5)) == {}  # same run, extended
    assert _check_run_dir(run, tiny_config(out=str(run) + "/")) == {}  # the same directory, spelled otherwise
    with pytest.raises(ConfigError, match=r"other options \(noise_estimator\)"):
        _check_run_dir(run, tiny_config(noise_estimator="diff2"))


def test_a_saved_run_configuration_loads_back_and_bad_ones_are_named(tmp_path, tiny_config):
    config = tiny_config(model_options={"filters": [8, 16]}, variety="wide", sky_e_range=[30.0, 1e6])
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config
    older = config.to_dict()
    del older["noise_estimator"]  # a run made before kercr had the option did what its default does
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert TrainConfig.load(tmp_path / "older.json").noise_estimator == TrainConfig().noise_estimator
    (tmp_path / "newer.json").write_text(json.dumps({**config.to_dict(), "warp_drive": 9}))
    with pytest.raises(ConfigError, match=r"does not know \(warp_drive\).*upgrade kercr"):
        TrainConfig.load(tmp_path / "newer.json")
    (tmp_path / "cut.json").write_text(json.dumps(config.to_dict())[:40])
    with pytest.raises(ConfigError, match="not a readable run configuration"):
        TrainConfig.load(tmp_path / "cut.json")
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.load(tmp_path / "none.json")


def test_fine_tuning_starts_from_the_given_weights(tmp_path, tiny_config):
    import keras

    from kercr.training import train

    train(tiny_config(epochs=1, out=str(tmp_path / "base")), verbose=0)
    base = keras.saving.load_model(tmp_path / "base" / "best.keras")
    # A negligible learning rate: the fine-tuned weights stay those of the base model.
    assert train_main([*TINY, "--epochs", "1", "--learning-rate", "1e-9", "--seed", "5", "--extended-sources", "2",
                       "--on-source-fraction", "0.5", "--init-weights", str(tmp_path / "base"),
                       "--out", str(tmp_path / "tuned")]) == 0
    tuned = keras.saving.load_model(tmp_path / "tuned" / "last.keras")
    # (trainable weights: batch-norm statistics move with the new batches whatever the rate)
    for a, b in zip(base.trainable_weights, tuned.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    saved = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert saved["init_weights"] == str(tmp_path / "base") and saved["on_source_fraction"] == 0.5
    # Without --init-weights the same options start elsewhere (the test can fail).
    assert train_main([*TINY, "--epochs", "1", "--learning-rate", "1e-9", "--seed", "5",
                       "--out", str(tmp_path / "fresh")]) == 0
    fresh = keras.saving.load_model(tmp_path / "fresh" / "last.keras")
    assert not np.allclose(fresh.trainable_weights[0].numpy(), base.trainable_weights[0].numpy(), atol=1e-5)
    # Another architecture cannot start from these weights.
    with pytest.raises(ConfigError, match="does not match model='unet'"):
        train(tiny_config(model="unet", init_weights=str(tmp_path / "base"),
                           out=str(tmp_path / "other")), verbose=0)
    # The synthetic-frame options mean nothing for FITS data.
    with pytest.raises(ConfigError, match="leave them at their defaults"):
        tiny_config(data=str(tmp_path), on_source_fraction=0.3).validate()


def test_median_weighted_loss_raises_alpha_over_the_schedule(tmp_path, tiny_config):
    from kercr.training import train

    train(tiny_config(loss="median_bce", epochs=3, alpha_epochs=2), verbose=0)
    alphas = [float(r["alpha"]) for r in _history(tmp_path / "run")]
    assert alphas == pytest.approx([0.0, 0.5, 1.0])


def test_killed_training_resumes_from_the_last_finished_epoch(tmp_path):
    run = tmp_path / "run"
    args = _cli(*TINY, "--steps-per-epoch", "6", "--epochs", "4", "--out", str(run))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "history.csv").is_file() and len(_history(run)) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(_history(run))
    assert 2 <= finished < 4
    assert not (run / "metrics.json").exists()

    out = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Epoch {finished + 1}/4" in out.stdout and "Epoch 1/4" not in out.stdout
    history = _history(run)
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3]
    assert (run / "metrics.json").is_file() and not (run / "backup").exists()
    # Running it once more finds the run finished and changes nothing.
    before = (run / "best.keras").stat().st_mtime_ns
    again = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0 and "Epoch" not in again.stdout
    assert (run / "best.keras").stat().st_mtime_ns == before


def test_a_run_killed_between_its_history_row_and_its_backup_redoes_that_epoch(tmp_path, tiny_config, monkeypatch):
    """The backup is the last thing an epoch writes: a kill before it redoes the epoch with the same
    batches, so the run ends as an uninterrupted one (to float round-off: the resumed process sums
    in another order)."""
    import keras

    from kercr.training import train

    straight = train(tiny_config(epochs=3, out=str(tmp_path / "straight")), verbose=0)
    save = keras.callbacks.BackupAndRestore.on_epoch_end

    def killed_at_epoch_1(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt  # after best/last.keras and history.csv, before the backup
        save(self, epoch, logs)

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", killed_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(epochs=3, out=str(tmp_path / "killed")), verbose=0)
    assert [int(r["epoch"]) for r in _history(tmp_path / "killed")] == [0, 1]
    assert not list((tmp_path / "killed").glob(".*partial*"))  # the checkpoints were renamed whole
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", save)
    resumed = train(tiny_config(epochs=3, out=str(tmp_path / "killed")), verbose=0)
    rows = _history(tmp_path / "killed")  # epoch 1's first row went with the redo
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for epoch, row in enumerate(_history(tmp_path / "straight")):
        for key in ("loss", "val_loss"):
            assert float(rows[epoch][key]) == pytest.approx(float(row[key]), rel=1e-3), (epoch, key)
    assert resumed["dice"] == pytest.approx(straight["dice"], abs=0.01)


def test_a_cosine_run_follows_its_schedule_step_by_step_and_resumes_on_it(tmp_path, tiny_config, monkeypatch):
    """``lr_schedule="cosine"``: the rate after each epoch is the half cosine at that step (3 steps an
    epoch, no plateau cuts), down to min_learning_rate at the end; a run killed after epoch 1 goes on
    at the same point of the schedule (the optimizer's step count is in the backup)."""
    import math

    import keras

    from kercr.training import train

    options = dict(epochs=3, lr_schedule="cosine", learning_rate=1e-3, min_learning_rate=1e-5, lr_patience=0)

    def expected(epoch):  # after (epoch + 1) x 3 of 9 steps
        return 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (epoch + 1) * 3 / 9))

    train(tiny_config(**options, out=str(tmp_path / "straight")), verbose=0)
    rates = [float(r["learning_rate"]) for r in _history(tmp_path / "straight")]
    assert rates == pytest.approx([expected(e) for e in range(3)], rel=1e-4)
    assert rates[-1] == pytest.approx(1e-5, rel=1e-4)
    # Its schedule spans its epochs: more (or fewer) would change every step's rate; refused, named.
    with pytest.raises(ConfigError, match=r"cosine learning rate that spans its 3 epochs.*--epochs 3.*--init-weights"):
        train(tiny_config(**{**options, "epochs": 5}, out=str(tmp_path / "straight")), verbose=0)
    save = keras.callbacks.BackupAndRestore.on_epoch_end

    def killed_after_epoch_1(self, epoch, logs=None):
        save(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(**options, out=str(tmp_path / "killed")), verbose=0)
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_epoch_end", save)
    train(tiny_config(**options, out=str(tmp_path / "killed")), verbose=0)
    assert [float(r["learning_rate"]) for r in _history(tmp_path / "killed")] == pytest.approx(rates, rel=1e-4)


def test_a_finished_run_given_more_epochs_goes_on_from_its_last_weights(tmp_path, tiny_config):
    from kercr.training import train

    train(tiny_config(epochs=2, out=str(tmp_path / "straight")), verbose=0)
    train(tiny_config(epochs=1, out=str(tmp_path / "extended")), verbose=0)
    assert not (tmp_path / "extended" / "backup").exists()
    metrics = train(tiny_config(epochs=2, out=str(tmp_path / "extended")), verbose=0)
    straight, extended = _history(tmp_path / "straight"), _history(tmp_path / "extended")
    assert [int(r["epoch"]) for r in extended] == [0, 1] and metrics["epochs"] == 2
    # Same batches, weights and optimizer state: the second epoch matches an uninterrupted run.
    for key in ("loss", "val_loss"):
        assert float(extended[1][key]) == pytest.approx(float(straight[1][key]), rel=1e-3), key


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_train_together_and_only_the_chief_writes(tmp_path):
    run = tmp_path / "run"

    def both(epochs):
        cluster = {"worker": [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]}
        procs = []
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            procs.append(subprocess.Popen(
                _cli(*TINY, "--epochs", str(epochs), "--strategy", "multiworker", "--out", str(run)),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(TF_CONFIG=tf_config),
            ))
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
        return outputs

    outputs = both(2)
    assert [int(r["epoch"]) for r in _history(run)] == [0, 1]
    assert (run / "best.keras").is_file() and (run / "metrics.json").is_file()
    # The non-chief worker wrote only to its scratch folder, which it removed.
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".worker")) == []
    assert "validation (" in outputs[0] and "validation (" not in outputs[1]
    # Given a third epoch, both workers go on from the chief's last.keras (the worker's scratch is gone).
    outputs = both(3)
    assert [int(r["epoch"]) for r in _history(run)] == [0, 1, 2]
    assert all("epochs 3-3" in output for output in outputs)


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_named_and_the_same_command_resumes(tmp_path):
    run = tmp_path / "run"
    cluster = {"worker": [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]}
    args = (*TINY, "--steps-per-epoch", "150", "--epochs", "3", "--strategy", "multiworker", "--out", str(run))

    def start(index, phase):
        # Into files, not pipes: a worker blocked on a full pipe nobody reads stalls its peer's collectives.
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        with open(tmp_path / f"{phase}{index}.log", "w") as log:  # the child keeps its own handle
            return subprocess.Popen(_cli(*args), stdout=log, stderr=subprocess.STDOUT, text=True,
                                    env=_env(TF_CONFIG=tf_config, PYTHONFAULTHANDLER="1"))

    procs = [start(0, "a"), start(1, "a")]
    try:
        deadline = time.monotonic() + 300
        # Killed in the second epoch, once both workers' backups of the first are written. (A kill between
        # the chief's history row and the backups is a narrower case, not covered here; see the issue notes.)
        backups = [run / "backup" / "training_metadata.json", run / ".worker-1" / "backup" / "training_metadata.json"]
        while not all(b.is_file() for b in backups) or not _history(run):
            assert time.monotonic() < deadline and procs[0].poll() is None, "no epoch finished"
            time.sleep(0.2)
        time.sleep(1.0)  # into the second epoch
        procs[1].kill()
        try:
            # Soon: the lost worker is named within seconds, and the chief leaves without TensorFlow's
            # teardown, which hung for good at garbage collection once (a CI run).
            procs[0].wait(timeout=120)
        except subprocess.TimeoutExpired:
            procs[0].send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: the Python stacks go into the log
            procs[0].wait(timeout=30)
            pytest.fail("the chief did not end after losing its worker:\n" + (tmp_path / "a0.log").read_text()[-5000:])
        output = (tmp_path / "a0.log").read_text()
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 1, output[-3000:]
    assert f"lost worker 1 at {cluster['worker'][1]}" in output and "run the same command again" in output, output[-600:]
    assert "Traceback" not in output
    procs = [start(0, "b"), start(1, "b")]
    for p in procs:
        p.wait(timeout=600)
    outputs = [(tmp_path / f"b{index}.log").read_text() for index in (0, 1)]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert [int(r["epoch"]) for r in _history(run)] == [0, 1, 2]


def test_a_worker_ahead_of_the_others_goes_back_to_its_previous_backup(tmp_path):
    """Workers killed at once can hold backups one epoch apart; the one ahead takes Keras' previous copy."""
    import h5py

    from kercr.training.run import _backup_epoch, _repair_backup, _roll_back_backup

    backup = tmp_path / "w" / "backup"
    for epoch in (1, 2, 3):
        _backup_save(backup, epoch)
    assert not _roll_back_backup(tmp_path / "w", 3, 1)  # two epochs back: no copy holds it
    assert _roll_back_backup(tmp_path / "w", 3, 2)
    with h5py.File(backup / "latest.weights.h5", "r") as f:
        assert set(f["w"][()]) == {2.0}
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2
    _repair_backup(tmp_path / "w")  # a finished roll-back is a whole backup: left as it is
    assert _backup_epoch(tmp_path / "w") == 2 and (backup / "latest.weights.h5.bkp").is_file()
    # Killed during a roll-back, between its two copies: the next start finishes it.
    _backup_save(backup, 3)
    shutil.copyfile(backup / "training_metadata.json.bkp", backup / "training_metadata.json")
    _repair_backup(tmp_path / "w")
    assert _backup_epoch(tmp_path / "w") == 2
    with h5py.File(backup / "latest.weights.h5", "r") as f:
        assert set(f["w"][()]) == {2.0}
    shutil.rmtree(backup)
    _backup_save(backup, 1)
    assert _roll_back_backup(tmp_path / "w", 1, -1) and not backup.exists()  # before the first epoch: none


def _backup_save(backup, epoch, *, cut=None):
    """Keras' BackupAndRestore(double_checkpoint=True) save of ``epoch``, stopped after step ``cut``."""
    import h5py

    backup.mkdir(parents=True, exist_ok=True)
    weights, metadata = backup / "latest.weights.h5", backup / "training_metadata.json"
    if weights.is_file():
        shutil.copyfile(weights, backup / "latest.weights.h5.bkp")
    if cut == "copy":
        return
    if metadata.is_file():
        shutil.copyfile(metadata, backup / "training_metadata.json.bkp")
    with h5py.File(weights, "w") as f:
        f["w"] = np.full(20000, float(epoch))
    if cut == "weights":  # killed while writing them: a cut file
        weights.write_bytes(weights.read_bytes()[:3000])
    if cut in ("weights", "written"):
        return
    metadata.write_text(json.dumps({"epoch": epoch, "batch": 0}))


@pytest.mark.parametrize("cut, expected", [
    (None, 3), ("copy", 2), ("written", 2), ("weights", 2),
])
def test_a_backup_cut_short_by_a_kill_is_taken_from_its_copy(tmp_path, cut, expected):
    import h5py

    from kercr.training.run import _backup_epoch, _repair_backup

    backup = tmp_path / "w" / "backup"
    for epoch in (1, 2):
        _backup_save(backup, epoch)
    _backup_save(backup, 3, cut=cut)
    _repair_backup(tmp_path / "w")
    assert _backup_epoch(tmp_path / "w") == expected
    with h5py.File(backup / "latest.weights.h5", "r") as f:  # the weights of the epoch the metadata names
        assert set(f["w"][()]) == {float(expected)}
    # A previous copy is there only where its weights are those of the epoch its metadata names.
    if cut == "copy":
        assert not (backup / "latest.weights.h5.bkp").exists()
    else:
        copied = json.loads((backup / "training_metadata.json.bkp").read_text())["epoch"]
        with h5py.File(backup / "latest.weights.h5.bkp", "r") as f:
            assert set(f["w"][()]) == {float(copied)}


def test_a_backup_whose_copies_are_both_unreadable_is_not_removed(tmp_path):
    from kercr.training.run import _repair_backup

    backup = tmp_path / "w" / "backup"
    for epoch in (1, 2):
        _backup_save(backup, epoch)
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        (backup / name).write_bytes(b"not HDF5")
    with pytest.raises(ConfigError, match="neither the backup nor its previous copy can be read"):
        _repair_backup(tmp_path / "w")
    assert (backup / "training_metadata.json").is_file()


@pytest.mark.parametrize("cut", ["weights", "written"])
def test_a_first_backup_cut_short_by_a_kill_is_removed(tmp_path, cut):
    from kercr.training.run import _backup_epoch, _repair_backup

    _backup_save(tmp_path / "w" / "backup", 1, cut=cut)
    _repair_backup(tmp_path / "w")
    assert not (tmp_path / "w" / "backup").exists() and _backup_epoch(tmp_path / "w") is None


@pytest.mark.slow
def test_a_one_worker_cluster_trains_on_shards_and_tf_config_is_ignored_without_multiworker(tmp_path):
    from kercr.cli.train import prepare_main

    shards = tmp_path / "shards"
    assert prepare_main(["--frames", "4", "--frame-shape", "256", "256", "--patch-size", "64", "--patches-per-frame",
                         "8", "--shard-size", "8", "--cr-rate-scale", "50", "--out", str(shards)]) == 0
    cluster = {"cluster": {"worker": [f"localhost:{_free_port()}"]}, "task": {"type": "worker", "index": 0}}
    shard_run = subprocess.run(_cli(*TINY, "--epochs", "1", "--data", str(shards), "--strategy", "multiworker",
                                    "--out", str(tmp_path / "sharded")),
                               capture_output=True, text=True, env=_env(TF_CONFIG=json.dumps(cluster)), timeout=600)
    assert shard_run.returncode == 0, shard_run.stdout[-3000:] + shard_run.stderr[-3000:]
    assert (tmp_path / "sharded" / "metrics.json").is_file()
    # A TF_CONFIG left in the environment (this process a non-chief worker) does not matter to a run
    # that was not asked to be multi-worker: it trains and writes its run folder.
    stray = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}
    plain = subprocess.run(_cli(*TINY, "--epochs", "1", "--out", str(tmp_path / "plain")), capture_output=True,
                           text=True, env=_env(TF_CONFIG=json.dumps(stray)), timeout=600)
    assert plain.returncode == 0 and (tmp_path / "plain" / "metrics.json").is_file(), plain.stderr[-3000:]


# A short run under JAX, then the same model untrained (train()'s seeded initial weights) scored
# on the same validation patches by the same pooled metrics; one process, so JAX starts once.
_JAX_TRAINING = """
import json, sys

import keras

from kercr.config import resolve_config
from kercr.evaluation import validation_metrics
from kercr.training import build_and_check_model, make_training_data, train

assert keras.backend.backend() == "jax", keras.backend.backend()
config = resolve_config({}, dict(
    model="deepcr_2_4", patch_size=64, batch_size=4, frames=4, frame_shape=[256, 256], cr_rate_scale=50.0,
    steps_per_epoch=200, validation_steps=4, epochs=1, out=sys.argv[1],
))
trained = train(config, verbose=0)
keras.utils.set_random_seed(config.seed)
untrained = validation_metrics(build_and_check_model(config),
                               make_training_data(config).validation_batches(config.validation_steps))
print("RESULT " + json.dumps(dict(trained=trained, untrained=untrained)))
"""


@pytest.mark.slow
def test_training_under_the_jax_backend_learns(tmp_path):
    pytest.importorskip("jax")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _JAX_TRAINING, str(run)], capture_output=True, text=True,
                          env=_env(KERAS_BACKEND="jax"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ")[-1])
    trained, untrained = result["trained"], result["untrained"]
    assert len(_history(run)) == 1 and trained["cr_pixels"] == untrained["cr_pixels"]  # same patches
    # Threshold-free scores: after 200 steps no pixel reaches probability 0.5 yet (Dice at 0.5 is 0).
    # Measured: best Dice 0.73, TPR at 0.1 % FPR 0.51; untrained 0.008 (its score is flat: the Dice
    # of calling every pixel a CR) and 0; learning rate 0: the same as untrained; labels turned by
    # 180 degrees: 0.15 and 0.08.
    assert trained["best_dice"] > untrained["best_dice"] + 0.4, (trained, untrained)
    assert trained["tpr_at_fpr_1e-3"] > untrained["tpr_at_fpr_1e-3"] + 0.25, (trained, untrained)


def test_mixed_precision_keeps_float32_probabilities(tmp_path, tiny_config):
    import keras

    from kercr.training import train

    try:
        train(tiny_config(mixed_precision=True, epochs=1), verbose=0)
        model = keras.saving.load_model(tmp_path / "run" / "best.keras")
        assert model.layers[1].dtype_policy.name == "mixed_bfloat16"
        y = model(np.zeros((1, 64, 64, 1), "float32"))
        assert keras.backend.standardize_dtype(y.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_prepare_interrupted_by_ctrl_c_says_to_rerun_and_the_rerun_finishes_it(tmp_path, capsys, monkeypatch):
    from kercr.cli.train import prepare_main
    from kercr.data.frames import SyntheticFrames

    argv = ["--frames", "6", "--frame-shape", "128", "128", "--patch-size", "64", "--patches-per-frame", "3",
            "--shard-size", "2", "--out", str(tmp_path / "s")]
    assert prepare_main([*argv[:-1], str(tmp_path / "whole")]) == 0
    frame, calls = SyntheticFrames.frame, []

    def ctrl_c_in_the_third_frame(self, key):
        calls.append(key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return frame(self, key)

    monkeypatch.setattr(SyntheticFrames, "frame", ctrl_c_in_the_third_frame)
    assert prepare_main(argv) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err
    monkeypatch.setattr(SyntheticFrames, "frame", frame)
    # Other frames would mix into the shards already written (before: resumed, and prepare.json said nothing).
    for flag, value, said in (("--frame-shape", ["192", "192"], "frame_shape [128, 128] then, [192, 192] now"),
                              ("--cr-rate-scale", ["50"], "cr_rate_scale 5.0 then, 50.0 now")):
        assert prepare_main([*argv, flag, *value]) == 1
        assert "unfinished kercr-prepare run with other options" in (err := capsys.readouterr().err) and said in err
    assert prepare_main(argv) == 0
    assert ({p.relative_to(tmp_path / "s").as_posix(): p.read_bytes() for p in (tmp_path / "s").rglob("*.tfrecord")}
            == {p.relative_to(tmp_path / "whole").as_posix(): p.read_bytes()
                for p in (tmp_path / "whole").rglob("*.tfrecord")})
    assert (json.loads((tmp_path / "s" / "prepare.json").read_text())
            == json.loads((tmp_path / "whole" / "prepare.json").read_text()))


def test_prepare_writes_shards_split_by_exposure_and_train_reads_them(tmp_path, capsys):
    from kercr.cli.train import prepare_main

    shards = tmp_path / "shards"
    common = ["--frame-shape", "256", "256", "--patch-size", "64", "--cr-rate-scale", "50"]
    assert prepare_main(["--frames", "5", "--patches-per-frame", "8", "--out", str(shards), *common]) == 0
    meta = json.loads((shards / "prepare.json").read_text())
    assert not set(meta["train_exposures"]) & set(meta["val_exposures"])
    assert len(meta["train_exposures"]) + len(meta["val_exposures"]) == 5
    assert list((shards / "train").glob("*.tfrecord")) and list((shards / "val").glob("*.tfrecord"))
    # Never overwritten:
    assert prepare_main(["--frames", "5", "--out", str(shards), *common]) == 1
    assert "already holds" in capsys.readouterr().err
    # A run that stopped before prepare.json, an --out that cannot be written, a zero shard size:
    (tmp_path / "half" / "train").mkdir(parents=True)
    (tmp_path / "half" / "train" / "patches-00000.tfrecord").write_bytes(b"")
    assert prepare_main(["--frames", "5", "--out", str(tmp_path / "half"), *common]) == 1
    assert "not written by a kercr-prepare run that can be resumed" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert prepare_main(["--frames", "5", "--out", str(tmp_path / "afile" / "sub"), *common]) == 1
    assert "cannot write to --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare_main(["--frames", "5", "--shard-size", "0", "--out", str(tmp_path / "z"), *common])
    assert "--shard-size 0" in capsys.readouterr().err and not (tmp_path / "z").exists()
    for flags, message in ((["--patches-per-frame", "0"], "--patches-per-frame 0: pass a whole number >= 1"),
                           (["--cr-rate-scale", "nan"], "--cr-rate-scale nan"), (["--patch-size", "0"], "--patch-size 0")):
        with pytest.raises(SystemExit):
            prepare_main(["--frames", "5", "--out", str(tmp_path / "z"), *common, *flags])
        assert message in capsys.readouterr().err and not (tmp_path / "z").exists()
    run = tmp_path / "run"
    args = ["--data", str(shards), "--model", "deepcr_2_4", "--patch-size", "64", "--batch-size", "4",
            "--steps-per-epoch", "2", "--validation-steps", "2", "--epochs", "1", "--out", str(run)]
    # Options the shards fixed are refused unless they say what the shards hold (they would go into
    # config.json as if used):
    assert train_main([*args[:-1], str(tmp_path / "fixed"), "--cr-rate-scale", "500", "--frames", "999"]) == 1
    err = capsys.readouterr().err
    assert "kercr-prepare fixed the frames" in err and "cr_rate_scale=500.0 (the shards': 50.0)" in err
    assert "frames=999 (the shards': 5)" in err and not (tmp_path / "fixed" / "config.json").exists()
    assert train_main([*args, "--cr-rate-scale", "50", "--frame-shape", "256", "256"]) == 0
    assert json.loads((run / "metrics.json").read_text())["cr_pixels"] > 0
    assert train_main([*args[:5], "32", *args[6:-1], str(tmp_path / "run2")]) == 1
    assert "64 px patches" in capsys.readouterr().err
    # median_bce needs shards with median weights (else it would train as plain BCE).
    assert train_main([*args[:-1], str(tmp_path / "run3"), "--loss", "median_bce"]) == 1
    assert "prepared without median weights" in capsys.readouterr().err
    assert train_main([*args[:-1], str(tmp_path / "run3"), "--noise-estimator", "diff2"]) == 1
    assert "normalized with one 'mad' noise per frame" in capsys.readouterr().err  # shards cannot be re-normalized
    assert train_main([*args[:-1], str(tmp_path / "run3"), "--noise-model", "local"]) == 1
    assert "noise_model='local' needs frames" in capsys.readouterr().err


def test_training_from_a_directory_of_clean_fits_frames(tmp_path, tiny_config):
    from astropy.io import fits

    from kercr.data.synthetic import make_frame
    from kercr.training import train

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        f = make_frame(seed=i, shape=(256, 256))
        header = fits.Header({"EXPTIME": 3000.0, "GAIN": 4.0, "RDNOISE": 7.0, "SATURATE": 45000.0})
        fits.PrimaryHDU(f.clean_adu, header=header).writeto(frames / f"exp{i}.fits")
    before = {p.name: p.read_bytes() for p in frames.iterdir()}
    config = tiny_config(data=str(frames), cr_rate_scale=5.0, epochs=1)
    metrics = train(config, verbose=0)
    assert metrics["cr_pixels"] > 0
    assert {p.name: p.read_bytes() for p in frames.iterdir()} == before  # inputs untouched
    # A file of tables only among the frames: named, with what to do.
    from astropy.table import Table

    Table({"a": [1, 2]}).write(frames / "catalogue.fits")
    with pytest.raises(ValueError, match=r"catalogue.fits: no 2-D image extension .* Remove the file from --data"):
        train(tiny_config(data=str(frames), cr_rate_scale=5.0, epochs=1, out=str(tmp_path / "tables")), verbose=0)


def test_real_footprints_from_dark_frames_are_injected(tmp_path, tiny_config):
    from astropy.io import fits

    from kercr.data.frames import SyntheticFrames, load_footprints

    rng = np.random.default_rng(0)
    darks = tmp_path / "darks"
    darks.mkdir()
    dark = rng.normal(0.0, 5.0, (200, 200)).astype(np.float32)
    dark[50, 60:70] += 400.0  # a 10-pixel track
    dark[120:123, 30] += 300.0  # a 3-pixel track
    fits.PrimaryHDU(dark, header=fits.Header({"GAIN": 2.0})).writeto(darks / "dark.fits")
    stamps = load_footprints(darks)
    small, large = sorted(int((s > 0).sum()) for s in stamps)[-2:]
    assert 3 <= small <= 5 and 10 <= large <= 14  # the tracks, grown by any 2.5-sigma neighbours
    assert max(float(s.max()) for s in stamps) == pytest.approx(800.0, rel=0.1)  # electrons
    plain = SyntheticFrames(seed=1, shape=(256, 256), cr_rate_scale=20)
    mixed = SyntheticFrames(seed=1, shape=(256, 256), cr_rate_scale=20, footprints=stamps, footprint_fraction=2.0)
    assert mixed.frame(0)[1].sum() > plain.frame(0)[1].sum()
    # Every simulated CR pixel is still labelled; the extra labels are the footprints.
    assert np.all(mixed.frame(0)[1][plain.frame(0)[1] > 0] == 1)
    with pytest.raises(ConfigError, match="footprints"):
        tiny_config(footprints=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="variety='any'.*'wide'"):
        tiny_config(variety="any")
    with pytest.raises(ConfigError, match="asinh_softening=-1"):
        tiny_config(asinh_softening=-1)
    with pytest.raises(ConfigError, match="noise_estimator='std'.*'diff2'"):
        tiny_config(noise_estimator="std")


# One training step through kercr.training.train, on one device and under --strategy mirrored
# over two logical CPUs (a device layout TensorFlow takes only before it starts: a subprocess).
# SGD stands in for train()'s Adam there: Adam's step does not see the gradient's scale (a loss
# summed instead of averaged over the replicas would go unnoticed) and its first step is
# lr * sign(gradient), which rounding noise flips for near-zero gradients. norm=None because batch
# norm normalizes each replica's half batch by its own statistics, which differ from the full batch's.
_MIRRORED_STEP = """
import json, sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np

from kercr.config import resolve_config
from kercr.training import build_and_check_model, read_history, train

keras.optimizers.Adam = lambda learning_rate: keras.optimizers.SGD(learning_rate=learning_rate)
replicas, fit = [], keras.Model.fit


def recording_fit(self, *args, **kwargs):
    replicas.append(self.distribute_strategy.num_replicas_in_sync)
    return fit(self, *args, **kwargs)


keras.Model.fit = recording_fit
steps, losses = {}, {}
for strategy in ("none", "mirrored"):
    run = f"{sys.argv[1]}/{strategy}"
    config = resolve_config({}, dict(
        model="deepcr_2_4", model_options={"norm": None}, patch_size=64, batch_size=4, frames=4,
        frame_shape=[256, 256], cr_rate_scale=50.0, steps_per_epoch=1, validation_steps=1, epochs=1,
        learning_rate=0.1, strategy=strategy, out=run,
    ))
    train(config, verbose=0)
    steps[strategy] = keras.saving.load_model(f"{run}/last.keras").get_weights()
    losses[strategy] = read_history(f"{run}/history.csv")[0]["loss"]
keras.utils.set_random_seed(config.seed)  # train()'s initial weights
initial = build_and_check_model(config).get_weights()
steps = {k: np.concatenate([(a - b).ravel() for a, b in zip(w, initial)]) for k, w in steps.items()}
print("RESULT " + json.dumps(dict(
    replicas=replicas, losses=losses, step=float(np.abs(steps["none"]).max()),
    mismatch=float(np.abs(steps["mirrored"] - steps["none"]).max()),
)))
"""


@pytest.mark.slow
def test_a_mirrored_step_over_two_devices_equals_the_single_device_step(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_STEP, str(tmp_path)], capture_output=True, text=True,
                          env=_env(KERAS_BACKEND="tensorflow"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ")[-1])
    assert result["replicas"] == [1, 2]  # the mirrored run really trained on two replicas
    assert result["step"] > 1e-3  # the step moved the weights (up to ~2.5e-2)
    # Each replica took its own half of the global batch of 4 and the loss was averaged over all 4:
    # the same step as one device, up to float32 sums in another order (measured: ~1e-6 of the step).
    # Both replicas on the same half batch miss by ~2 % of the step; a loss summed over them, by 100 %.
    assert result["mismatch"] <= 1e-4 * result["step"], result
    assert result["losses"]["mirrored"] == pytest.approx(result["losses"]["none"], rel=1e-5)


def test_validation_without_cosmic_rays_is_refused_before_training(tmp_path, tiny_config):
    from kercr.training import train

    with pytest.raises(ConfigError, match="no \\(unignored\\) CR pixels"):
        train(tiny_config(cr_rate_scale=1e-6, validation_steps=1), verbose=0)
    assert not (tmp_path / "run" / "history.csv").exists()


def test_validation_is_rebuilt_from_the_run_and_a_card_with_flips_takes_its_threshold(tmp_path):
    from kercr.training import run_validation
    from kercr.weights.ship import ship

    run = tmp_path / "run"
    assert train_main([*TINY, "--epochs", "1", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    again = run_validation(run)
    for key in ("tpr_at_fpr_1e-4", "threshold_at_fpr_1e-4", "dice", "cr_pixels", "non_cr_pixels"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6), key
    flips = run_validation(run, tta=True)
    assert flips["cr_pixels"] == metrics["cr_pixels"] and flips["threshold_at_fpr_1e-4"] != metrics["threshold_at_fpr_1e-4"]
    ship(run, command="kercr-train ...", dest=tmp_path / "weights", tta=True)
    card = json.loads((tmp_path / "weights" / "default.json").read_text())
    assert card["tta"] is True and card["threshold"] == pytest.approx(flips["threshold_at_fpr_1e-4"])
    assert card["validation"]["tpr_at_fpr_1e-4"] == pytest.approx(flips["tpr_at_fpr_1e-4"])
    assert card["validation_without_tta"]["tpr_at_fpr_1e-4"] == pytest.approx(metrics["tpr_at_fpr_1e-4"])
    ship(run, command="kercr-train ...", dest=tmp_path / "plain")
    plain = json.loads((tmp_path / "plain" / "default.json").read_text())
    assert plain["tta"] is False and plain["threshold"] == metrics["threshold_at_fpr_1e-4"]
    assert "validation_without_tta" not in plain
    with pytest.raises(FileNotFoundError, match="finished kercr-train run"):
        run_validation(tmp_path / "nothing")


def test_shards_of_a_patch_size_the_model_cannot_take_say_to_prepare_new_ones(tmp_path):
    """Before, the model check said "use --patch-size 64" and the shard check then "pass --patch-size 65"."""
    from kercr.training.model import build_and_check_model

    (tmp_path / "prepare.json").write_text(json.dumps({"patch_size": 65}))
    with pytest.raises(ConfigError, match=r"hold 65 px patches: run kercr-prepare --patch-size 64 into a new folder"):
        build_and_check_model(TrainConfig(model="deepcr_2_4", patch_size=65, data=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"; use --patch-size 64\.$"):
        build_and_check_model(TrainConfig(model="deepcr_2_4", patch_size=65))


def test_shards_that_recorded_no_frame_options_accept_any(tmp_path):
    """Shards from before kercr-prepare recorded frame_shape and cr_rate_scale cannot say what they hold."""
    from kercr.training.data import _check_fixed_by_shards

    old = {"patch_size": 64, "train_exposures": ["a", "b"], "val_exposures": ["c"]}
    _check_fixed_by_shards(TrainConfig(data=str(tmp_path), frame_shape=[1024, 1024], cr_rate_scale=50.0), old)
    with pytest.raises(ConfigError, match="footprints="):
        _check_fixed_by_shards(TrainConfig(data=str(tmp_path), footprints="x.fits"), old)
