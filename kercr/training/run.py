"""Train a kercr model end to end: one resumable run directory per run.

A run directory holds::

    config.json          the resolved configuration (defaults < config file < flags)
    normalization.json   the normalization constants, used again at inference and export
    best.keras           the model with the lowest validation loss so far
    last.keras           the model after the last finished epoch
    history.csv          one row per epoch (loss, Dice, TPR at 0.01 % FPR, learning rate, ...)
    tensorboard/         TensorBoard logs (scalars and a few validation images with predictions)
    loss.png, dice.png   training vs validation loss and Dice per epoch
    metrics.json         final validation metrics of best.keras on pooled validation pixels
    backup/              the resume state while a run is unfinished (removed at the end)

Running the same command again after an interruption resumes from the last finished epoch.
"""

from __future__ import annotations

import csv
import json
import io
import logging
import shutil
from pathlib import Path

import keras

from kercr._files import write_json, write_text
from kercr.config import ConfigError, TrainConfig
from kercr.evaluation import validation_metrics
from kercr.model_files import write_normalization
from kercr.plots import plot_history
from kercr.training.callbacks import (
    AlphaSchedule,
    AtomicModelCheckpoint,
    LearningRateLogger,
    ResumableReduceLROnPlateau,
    ValidationImages,
    plateau_state,
)
from kercr.training.data import check_validation_crs, make_training_data
from kercr.training.distribution import (build_from_local_batch, gather_ints, is_chief, lost_worker, make_strategy,
                                         tf_config)
from kercr.training.model import build_and_check_model, load_initial_weights, make_loss, make_metrics, make_optimizer

__all__ = ["STATE_FILE", "read_history", "run_validation", "train"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"


def read_history(path) -> list[dict]:
    """Rows of ``history.csv`` (one per finished epoch; the last row of an epoch wins)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = {}
        for row in csv.DictReader(f):
            try:
                rows[int(row["epoch"])] = {k: (float(v) if k != "epoch" else int(v)) for k, v in row.items() if v != ""}
            except (KeyError, ValueError):
                continue
    return [rows[k] for k in sorted(rows)]


def _keep_history_rows(path: Path, epochs: int) -> None:
    """Rewrite ``history.csv`` with the rows of epochs ``0 .. epochs - 1`` only (whole or not at all)."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if int(r["epoch"]) < epochs]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, table.getvalue())


def _backup_pair(backup: Path, suffix: str = "") -> int | None:
    """The epoch of the Keras backup pair ``latest.weights.h5{suffix}`` + ``training_metadata.json{suffix}``
    in ``backup``, or None where either is missing or unreadable (a kill during its save)."""
    import h5py

    try:
        epoch = int(json.loads((backup / f"training_metadata.json{suffix}").read_text())["epoch"])
        with h5py.File(backup / f"latest.weights.h5{suffix}", "r") as f:  # every array read: a cut file fails
            f.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
    except Exception:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError, ... for a cut file
        return None
    return epoch


def _repair_backup(work: Path) -> None:
    """Make ``work/backup`` whole again after a kill during Keras' save of it.

    ``BackupAndRestore(double_checkpoint=True)`` saves an epoch by copying the current pair to
    ``.bkp``, then writing the weights, then the metadata. Killed in between, the current pair is
    unreadable or still names the epoch of its ``.bkp`` copy (its weights maybe already the next
    epoch's): then the ``.bkp`` pair is the backup. Killed between the two copies, the ``.bkp``
    weights do not match their metadata: that copy goes (a worker that would need it says so).
    Killed during the first save, there is no backup at all (the folder goes; the run goes on as
    if that epoch's backup had not begun).
    Keras itself falls back only on an OSError from the weights, and not before the workers of a
    multi-worker run have agreed on an epoch from the metadata.
    """
    backup = work / "backup"
    if not backup.is_dir():
        return
    latest, previous = _backup_pair(backup), _backup_pair(backup, ".bkp")
    weights, copy = backup / "latest.weights.h5", backup / "latest.weights.h5.bkp"
    if latest is not None and latest != previous:
        if previous is not None and copy.read_bytes() == weights.read_bytes():
            # Killed between the two copies: the .bkp weights are this epoch's, not its metadata's.
            copy.unlink()
        return
    if previous is not None:
        if latest == previous and copy.read_bytes() == weights.read_bytes():
            return  # both copies done, or a roll-back: one epoch twice, nothing cut short
        logger.warning("%s: the save of the epoch after %d was cut short; going on from the copy of epoch %d",
                       backup, previous, previous)
        shutil.copyfile(copy, weights)
        shutil.copyfile(backup / "training_metadata.json.bkp", backup / "training_metadata.json")
        return
    if latest is None:
        if any(backup.glob("*.bkp")):  # not a first save: a copy was made, and neither can be read
            raise ConfigError(f"{backup}: neither the backup nor its previous copy can be read. Move the folder "
                              "away to go on from history.csv and last.keras, or start a new --out.")
        logger.warning("%s holds no whole backup (its first save was cut short); removed", backup)
        shutil.rmtree(backup)


def _backup_epoch(work: Path) -> int | None:
    """The epochs finished by the run whose Keras backup is in ``work/backup``, or None without one."""
    try:
        return int(json.loads((work / "backup" / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _agree_on_backup(strategy, work: Path, done: int | None) -> int | None:
    """The epoch every worker of a multi-worker run goes on from.

    Workers killed at once may have saved their backups one epoch apart (one wrote epoch k's, the
    other had not yet): replicas restored from different epochs would train apart while the run
    looks fine. A worker ahead of the others goes back to its previous backup (Keras keeps it,
    ``double_checkpoint``), or to none when that was the first epoch; if any worker cannot, every
    worker stops with the reason.
    """
    epochs = gather_ints(strategy, -1 if done is None else done)
    agreed = min(epochs)
    ok = done is None or done == agreed or _roll_back_backup(work, done, agreed)
    if not all(gather_ints(strategy, int(ok))):
        raise ConfigError(f"the workers' backups hold epochs {epochs} (in worker order) and cannot be brought to "
                          f"the same epoch ({agreed if agreed >= 0 else 'none'}); the replicas would train from "
                          "different weights. Start the run again with a new --out on every worker.")
    if done is not None and done != agreed:
        logger.warning("%s: this worker's backup was at epoch %d, another's at %s; going on from there together",
                       work, done, agreed if agreed >= 0 else "the start")
    return None if agreed < 0 else agreed


def _roll_back_backup(work: Path, done: int, to: int) -> bool:
    """Put the Keras backup in ``work`` back from epoch ``done`` to ``to`` (one epoch earlier: its
    ``.bkp`` copy; before the first epoch: no backup); False when it holds no such copy."""
    backup = work / "backup"
    if to < 0 and done == 1:
        shutil.rmtree(backup)
        return True
    if _backup_pair(backup, ".bkp") != to:
        return False
    # The metadata first: killed between the two, the metadata names its copy's epoch, which
    # _repair_backup takes as a save cut short and finishes from the copy.
    shutil.copyfile(backup / "training_metadata.json.bkp", backup / "training_metadata.json")
    shutil.copyfile(backup / "latest.weights.h5.bkp", backup / "latest.weights.h5")
    return True


def _check_run_dir(out: Path, config: TrainConfig) -> dict:
    """Refuse to mix runs: an existing run directory must hold the same configuration, and a
    directory that holds something else is never written into."""
    saved = out / "config.json"
    if not saved.is_file() and any(not p.name.startswith(".") for p in out.iterdir()):  # .worker-N, .DS_Store
        raise ConfigError(f"--out {str(out)!r} is a folder that holds files but no kercr-train run (no config.json); "
                          "pass --out NEW_DIR (created for the run) or an empty folder.")
    if saved.is_file():
        # Options added to kercr after the run was made read as their defaults: what that run did.
        previous = json.loads(json.dumps(TrainConfig.load(saved).to_dict()))
        mine = json.loads(json.dumps(config.to_dict()))
        # Extending a run is allowed; "out" names this very directory, however spelled (runs/x/, ./runs/x, ...).
        ignore = {"epochs", "out"}
        diff = sorted(k for k in set(previous) | set(mine) if k not in ignore and previous.get(k) != mine.get(k))
        started = any((out / name).exists() for name in ("history.csv", "backup", "last.keras", "best.keras"))
        if diff and not started:  # a start that failed before its first epoch: nothing to keep
            logger.info("%s: no epoch finished under its earlier options (%s); starting with these", out,
                        ", ".join(diff))
        elif diff:
            raise ConfigError(
                f"the run directory {str(out)!r} holds a run with other options ({', '.join(diff)}); "
                "pass --out NEW_DIR for a new run, or the same options to resume that one."
            )
        elif started and config.lr_schedule == "cosine" and previous.get("epochs") != mine.get("epochs"):
            raise ConfigError(
                f"the run in {str(out)!r} has a cosine learning rate that spans its {previous.get('epochs')} epochs, "
                f"so it cannot take epochs={config.epochs}: resume it with --epochs {previous.get('epochs')}, or "
                f"train on from it in a new run (--init-weights {out / 'last.keras'} --out NEW_DIR)."
            )
    state = out / STATE_FILE
    return json.loads(state.read_text()) if state.is_file() else {}


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def _set_precision(config: TrainConfig) -> None:
    if not config.mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
        return
    gpu = False
    if keras.backend.backend() == "jax":
        import jax

        gpu = jax.default_backend() == "gpu"
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    policy = "mixed_float16" if gpu else "mixed_bfloat16"
    logger.info("mixed precision: %s (outputs stay float32)", policy)
    keras.mixed_precision.set_global_policy(policy)


def train(config: TrainConfig, *, verbose="auto") -> dict:
    """Train (or resume) the run described by ``config``; return the final validation metrics.

    Parameters
    ----------
    config : TrainConfig
        A validated configuration (see :func:`kercr.config.resolve_config`).
    verbose : "auto", 0, 1 or 2
        Keras progress display (``"auto"``: a progress bar on a terminal, one line per epoch
        otherwise).

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    config.validate()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; pass a folder for the run (created if needed).")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():  # checked now, not after the model and the data are made
        raise ConfigError(f"--out {str(out)!r} cannot be made: {str(above)!r} is a file; pass a folder for the run.")
    multiworker = config.strategy == "multiworker"
    chief = not multiworker or is_chief()  # TF_CONFIG is read only when multi-worker training is asked for
    state = _check_run_dir(out, config) if out.is_dir() else {}
    if state.get("finished_epochs", -1) >= config.epochs and (out / "metrics.json").is_file():
        logger.info("run %s already finished %d epochs; nothing to do", out, config.epochs)
        return json.loads((out / "metrics.json").read_text())

    strategy = make_strategy(config.strategy)  # before any other TensorFlow op (multi-worker)
    # Non-chief workers write their checkpoints to a scratch directory that is removed at the end.
    work = out if chief else out / f".worker-{tf_config().get('task', {}).get('index', 0)}"
    keras.utils.set_random_seed(config.seed)
    _set_precision(config)
    history = read_history(out / "history.csv")
    _repair_backup(work)
    done = _backup_epoch(work)  # the epochs the backup holds decide where a killed run goes on
    if multiworker:
        done = _agree_on_backup(strategy, work, done)
    if done is not None:
        if len(history) < done:  # killed between backup and history row (runs from before the backup went last)
            logger.warning("%s: history.csv lacks epoch(s) %d-%d; going on from epoch %d, as the backup holds",
                           out, len(history) + 1, done, done + 1)
        if len(history) > done:  # killed after the history row of an epoch, before its backup: redone
            history = history[:done]
            if chief:  # the chief's file; a worker only reads it
                _keep_history_rows(out / "history.csv", done)
    initial_epoch = len(history) if done is None else done

    # A finished run given more --epochs has no backup/ any more: it goes on from last.keras
    # (weights and optimizer state), not from fresh weights.
    # Every worker reads the chief's last.keras (a worker's scratch folder went when the run finished).
    extending = bool(history) and not (work / "backup").exists() and (out / "last.keras").is_file()
    model = _model_of_run(config, strategy, history=history, extending=extending)
    data = make_training_data(config, initial_epoch=initial_epoch, strategy=strategy)
    check_validation_crs(data)
    # The model and the data are made before the run directory: a bad option leaves nothing behind.
    work.mkdir(parents=True, exist_ok=True)
    if chief:
        config.save(out / "config.json")
        write_normalization(out, config.normalization_config())
    callbacks = _callbacks(config, model, data, work, history=history, chief=chief)

    if multiworker:  # a batch of the PyDataset loader, or of kercr-prepare shards (a tf.data.Dataset)
        build_from_local_batch(model, next(iter(data.train.take(1))) if hasattr(data.train, "take") else data.train[0])
    logger.info(
        "training %s on %s: epochs %d-%d, %d steps of %d patches of %d px", config.model, config.data,
        initial_epoch + 1, config.epochs, config.steps_per_epoch, config.batch_size, config.patch_size,
    )
    try:
        model.fit(
            data.train, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
            validation_data=data.val, validation_steps=config.validation_steps,
            callbacks=callbacks, verbose=verbose, initial_epoch=initial_epoch if extending else 0,
        )
    except Exception as err:
        lost = lost_worker(err) if multiworker else None
        if lost is None:
            raise
        raise lost from err
    if not chief:
        shutil.rmtree(work, ignore_errors=True)
        return {}
    return _finish(config, out, data)


def _model_of_run(config: TrainConfig, strategy, *, history: list, extending: bool) -> keras.Model:
    """The compiled model to fit: ``last.keras`` of a finished run being extended, else a new one
    (with ``init_weights`` on a fresh start), under the strategy's scope."""
    scope = strategy.scope() if strategy is not None else _NullScope()
    with scope:
        if extending:
            model = keras.saving.load_model(Path(config.out) / "last.keras")
            logger.info("extending the finished run %s from epoch %d with last.keras", Path(config.out),
                        len(history) + 1)
        else:
            model = build_and_check_model(config)
            if config.init_weights is not None and not history:
                load_initial_weights(model, config)
            model.compile(
                optimizer=make_optimizer(config),
                loss=make_loss(config.loss),
                weighted_metrics=make_metrics(),
            )
    return model


def _callbacks(config: TrainConfig, model: keras.Model, data, work: Path, *, history: list, chief: bool) -> list:
    """The run's callbacks, with the plateau state and the learning rate of a resumed run restored."""
    # The plateau callback's state and the learning rate after the finished epochs, replayed from
    # history.csv (its learning_rate column is logged before each epoch's cut).
    best_val = min((row["val_loss"] for row in history if "val_loss" in row), default=None)
    plateau = config.lr_schedule == "plateau"  # else the optimizer's own schedule sets every step's rate
    if plateau:
        plateau_best, wait, lr = plateau_state(history, learning_rate=config.learning_rate, factor=config.lr_factor,
                                               patience=config.lr_patience, min_lr=config.min_learning_rate)
        if history:
            model.optimizer.learning_rate = lr

    callbacks = [
        LearningRateLogger(),
        *([ResumableReduceLROnPlateau(
            monitor="val_loss", factor=config.lr_factor, patience=config.lr_patience,
            min_lr=config.min_learning_rate, initial_best=plateau_best, initial_wait=wait,
        )] if plateau else []),
        AtomicModelCheckpoint(
            work / "best.keras", monitor="val_loss", save_best_only=True, initial_value_threshold=best_val,
        ),
        AtomicModelCheckpoint(work / "last.keras"),
        keras.callbacks.CSVLogger(str(work / "history.csv"), append=True),
        # Last: an epoch is done once its backup is; a kill before that redoes it (same batches).
        keras.callbacks.BackupAndRestore(str(work / "backup"), double_checkpoint=True),
    ]
    if config.loss == "median_bce":
        callbacks.insert(0, AlphaSchedule(data, start=config.alpha_start, epochs=config.alpha_epochs))
    if _tensorflow_available() and keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(str(work / "tensorboard"), write_graph=False))
        if config.tensorboard_images and chief:
            x, y, _ = data.validation_sample(config.tensorboard_images)
            callbacks.append(ValidationImages(work / "tensorboard", x, y))
    else:
        logger.warning("TensorBoard logs need TensorFlow with the TensorFlow backend; skipping them")
    return callbacks


def _finish(config: TrainConfig, out: Path, data) -> dict:
    """Score ``best.keras`` on the pooled validation pixels; write metrics.json, the plots and the state."""
    best = keras.saving.load_model(out / "best.keras")
    metrics = validation_metrics(best, data.validation_batches(config.validation_steps))
    metrics.update(model=config.model, epochs=config.epochs, data=config.data)
    write_json(out / "metrics.json", metrics, sort_keys=True)
    plot_history(read_history(out / "history.csv"), out)
    write_json(out / STATE_FILE, {"finished_epochs": config.epochs})
    logger.info(
        "validation: Dice %.4f, TPR %.4f at 0.01 %% FPR (best.keras, pooled pixels)",
        metrics["dice"], metrics["tpr_at_fpr_1e-4"],
    )
    return metrics


def run_validation(run_dir, *, tta: bool = False) -> dict:
    """Validation metrics of a finished run's ``best.keras``, recomputed on its validation patches.

    The patches are rebuilt from the run's ``config.json`` (they depend on nothing else; options
    added to kercr after the run read as their defaults), so ``tta=False`` gives ``metrics.json``
    again. ``tta=True`` scores every patch as the mean over its four flips, as
    ``kercr.detect(..., tta=True)`` does: the threshold for 0.01 % FPR of a model that runs with flips.

    Parameters
    ----------
    run_dir : path
        A finished ``kercr-train`` run directory (``best.keras``, ``config.json``).
    tta : bool

    Returns
    -------
    dict
        :func:`kercr.evaluation.pooled_metrics` of the validation pixels.
    """
    run_dir = Path(run_dir)
    missing = [n for n in ("best.keras", "config.json") if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: missing {', '.join(missing)}; pass a finished kercr-train run directory.")
    config = TrainConfig.load(run_dir / "config.json")
    data = make_training_data(config)
    best = keras.saving.load_model(run_dir / "best.keras")
    return validation_metrics(best, data.validation_batches(config.validation_steps), tta=tta)


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
