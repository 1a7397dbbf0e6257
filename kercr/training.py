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
import logging
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from kercr.config import ConfigError, TrainConfig
from kercr.data.normalization import NormalizationConfig
from kercr.model_files import load_keras_model, model_normalization, read_card, resolve_model_path, write_normalization

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"


# --------------------------------------------------------------------------------------------
# distribution


def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except json.JSONDecodeError as err:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({err}); see tf.distribute's multi-worker guide.") from None


def is_chief() -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster (TF_CONFIG)."""
    task = _tf_config().get("task", {})
    kind, index = task.get("type"), task.get("index", 0)
    if kind in (None, "chief"):
        return True
    has_chief = "chief" in _tf_config().get("cluster", {})
    return kind == "worker" and index == 0 and not has_chief


def make_strategy(name: str):
    """The tf.distribute strategy for ``name`` (None: the backend's default, no distribution)."""
    if name in ("auto", "none"):
        return None
    if keras.backend.backend() != "tensorflow":
        raise ConfigError(
            f"strategy={name!r} needs the TensorFlow backend (KERAS_BACKEND={keras.backend.backend()}); "
            "use --strategy none, or unset KERAS_BACKEND."
        )
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not _tf_config().get("cluster"):
        raise ConfigError(
            "strategy='multiworker' reads the cluster from TF_CONFIG, which is not set. Set it on every "
            'worker, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\'.'
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


# --------------------------------------------------------------------------------------------
# model, loss, metrics


def make_loss(name: str):
    from kercr.losses import DiceBCELoss, MedianWeightedBCE, WeightedBCE

    return {"dice_bce": DiceBCELoss, "median_bce": MedianWeightedBCE, "bce": WeightedBCE}[name]()


def make_metrics():
    from kercr.metrics import DiceCoefficient, TPRAtFPR

    return [DiceCoefficient(name="dice"), TPRAtFPR(fpr=1e-4, name="tpr_at_fpr_1e-4")]


def build_and_check_model(config: TrainConfig) -> keras.Model:
    """Build the configured model and check that the patch size suits it (ConfigError if not)."""
    from kercr.models import build_model, input_multiple, model_kwargs

    options = dict(config.model_options)
    if "input_size" in model_kwargs(config.model) and "input_size" not in options:
        options["input_size"] = config.patch_size  # fixed-tile models are built at the patch size
    try:
        model = build_model(config.model, **options)
    except ValueError as err:
        raise ConfigError(f"model {config.model!r}: {err}") from None
    multiple = input_multiple(model)
    fixed = model.input_shape[1]
    if (fixed is not None and fixed != config.patch_size) or config.patch_size % multiple:
        raise ConfigError(
            f"patch_size={config.patch_size} does not suit model {config.model!r}, whose input "
            + (f"is fixed at {fixed} x {fixed}" if fixed else f"must be a multiple of {multiple}")
            + f"; use --patch-size {fixed or multiple * max(1, config.patch_size // multiple)}."
        )
    return model


def load_initial_weights(model: keras.Model, config: TrainConfig) -> None:
    """Copy the weights of ``config.init_weights`` into ``model`` (fine-tuning); ConfigError if they do not fit."""
    try:
        path = resolve_model_path(config.init_weights)
        source = load_keras_model(path)
        found = model_normalization(path, read_card(path))
    except Exception as err:  # noqa: BLE001 - any load failure is a config problem here
        raise ConfigError(f"init_weights={config.init_weights!r} cannot be loaded ({err}); pass a .keras model, "
                          "a run directory or 'default'.") from None
    weights = source.get_weights()
    mine = model.get_weights()
    if len(weights) != len(mine) or any(a.shape != b.shape for a, b in zip(weights, mine)):
        raise ConfigError(f"init_weights={config.init_weights!r} holds a {source.count_params():,}-parameter "
                          f"model that does not match model={config.model!r} ({model.count_params():,} parameters) "
                          f"with these model_options; pass the same architecture it was trained with.")
    normalization = found[0] if found is not None else NormalizationConfig()
    if normalization != config.normalization_config():
        logger.warning("init_weights %s was trained with another input normalization (%s); this run uses %s",
                       config.init_weights, normalization, config.normalization_config())
    model.set_weights(weights)
    logger.info("starting from the weights of %s", config.init_weights)


# --------------------------------------------------------------------------------------------
# resume bookkeeping


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


def _check_run_dir(out: Path, config: TrainConfig) -> dict:
    """Refuse to mix runs: an existing run directory must hold the same configuration."""
    saved = out / "config.json"
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
    state = out / STATE_FILE
    return json.loads(state.read_text()) if state.is_file() else {}


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose plateau state survives a resume (read back from history.csv)."""

    def __init__(self, *args, initial_best=None, initial_wait=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial_best = initial_best
        self.initial_wait = initial_wait

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.initial_best is not None:
            self.best = self.initial_best
            self.wait = self.initial_wait


def plateau_state(history, *, learning_rate, factor, patience, min_lr, min_delta=1e-4):
    """``(best, wait, learning_rate)`` of ``ReduceLROnPlateau(monitor="val_loss")`` after ``history``.

    Replays Keras' rule epoch by epoch (an improvement is ``val_loss < best - min_delta``; after
    ``patience`` epochs without one the rate is multiplied by ``factor``, down to ``min_lr``, and
    the count starts again), so a resumed run cuts its learning rate exactly when an uninterrupted
    one would. ``learning_rate`` is the run's initial rate; the one returned is the rate for the
    next epoch (after any cut at the end of the last one).
    """
    best, wait, lr = None, 0, float(np.float32(learning_rate))
    for row in history:
        current = row.get("val_loss")
        if current is None:
            continue
        if best is None or current + min_delta < best:
            best, wait = current, 0
            continue
        wait += 1
        if wait >= patience and lr > np.float32(min_lr):
            lr, wait = float(np.float32(max(lr * factor, min_lr))), 0
    return best, wait, lr


class LearningRateLogger(keras.callbacks.Callback):
    """Put the optimizer's learning rate into the epoch logs (CSV and TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class AlphaSchedule(keras.callbacks.Callback):
    """Raise the floor alpha of the median weights linearly from ``start`` to 1 over ``epochs``."""

    def __init__(self, data, *, start=0.0, epochs=10):
        super().__init__()
        self.data, self.start, self.epochs = data, float(start), max(1, int(epochs))

    def on_epoch_begin(self, epoch, logs=None):
        self.data.set_alpha(min(1.0, self.start + (1.0 - self.start) * epoch / self.epochs))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["alpha"] = float(self.data.alpha)


class ValidationImages(keras.callbacks.Callback):
    """Write a few validation patches with truth and predicted masks to TensorBoard."""

    def __init__(self, log_dir, images, masks):
        super().__init__()
        self.log_dir, self.images, self.masks = str(log_dir), images, masks

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        # A direct call, not predict(): under a multi-worker strategy predict() is a collective
        # op that every worker would have to join, and only the chief writes images.
        pred = np.asarray(keras.ops.convert_to_numpy(self.model(self.images, training=False)))
        shown = np.clip((self.images + 3.0) / 23.0, 0.0, 1.0)  # -3..20 noise units to 0..1
        with tf.summary.create_file_writer(os.path.join(self.log_dir, "validation_images")).as_default():
            tf.summary.image("image", shown, step=epoch, max_outputs=len(shown))
            tf.summary.image("truth", self.masks.astype("float32"), step=epoch, max_outputs=len(shown))
            tf.summary.image("predicted", pred, step=epoch, max_outputs=len(shown))


# --------------------------------------------------------------------------------------------
# the run


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
    from kercr.evaluation import validation_metrics
    from kercr.plots import plot_history
    from kercr.training_data import make_training_data

    config.validate()
    out = Path(config.out)
    chief = is_chief()
    state = _check_run_dir(out, config) if out.is_dir() else {}
    if state.get("finished_epochs", -1) >= config.epochs and (out / "metrics.json").is_file():
        logger.info("run %s already finished %d epochs; nothing to do", out, config.epochs)
        return json.loads((out / "metrics.json").read_text())

    strategy = make_strategy(config.strategy)  # before any other TensorFlow op (multi-worker)
    # Non-chief workers write their checkpoints to a scratch directory that is removed at the end.
    work = out if chief else out / f".worker-{_tf_config().get('task', {}).get('index', 0)}"
    work.mkdir(parents=True, exist_ok=True)
    if chief:
        config.save(out / "config.json")
        write_normalization(out, config.normalization_config())

    keras.utils.set_random_seed(config.seed)
    _set_precision(config)
    history = read_history(out / "history.csv")
    initial_epoch = len(history)

    # A finished run given more --epochs has no backup/ any more: it goes on from last.keras
    # (weights and optimizer state), not from fresh weights.
    extending = bool(history) and not (work / "backup").exists() and (work / "last.keras").is_file()
    scope = strategy.scope() if strategy is not None else _NullScope()
    with scope:
        if extending:
            model = keras.saving.load_model(work / "last.keras")
            logger.info("extending the finished run %s from epoch %d with last.keras", out, initial_epoch + 1)
        else:
            model = build_and_check_model(config)
            if config.init_weights is not None and not history:
                load_initial_weights(model, config)
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
                loss=make_loss(config.loss),
                weighted_metrics=make_metrics(),
            )
    data = make_training_data(config, initial_epoch=initial_epoch, strategy=strategy)
    if not any(np.any((y > 0.5) & (w > 0)) for _, y, w in data.validation_batches()):
        raise ConfigError(
            "the validation patches hold no (unignored) CR pixels, so TPR and Dice cannot be measured; "
            "raise --validation-steps, --cr-rate-scale or the exposure time / frame size of the data."
        )

    # The plateau callback's state and the learning rate after the finished epochs, replayed from
    # history.csv (its learning_rate column is logged before each epoch's cut).
    best_val = min((row["val_loss"] for row in history if "val_loss" in row), default=None)
    plateau_best, wait, lr = plateau_state(history, learning_rate=config.learning_rate, factor=config.lr_factor,
                                           patience=config.lr_patience, min_lr=config.min_learning_rate)
    if history:
        model.optimizer.learning_rate = lr

    callbacks = [
        LearningRateLogger(),
        ResumableReduceLROnPlateau(
            monitor="val_loss", factor=config.lr_factor, patience=config.lr_patience,
            min_lr=config.min_learning_rate, initial_best=plateau_best, initial_wait=wait,
        ),
        keras.callbacks.BackupAndRestore(str(work / "backup"), double_checkpoint=True),
        keras.callbacks.ModelCheckpoint(
            str(work / "best.keras"), monitor="val_loss", save_best_only=True,
            initial_value_threshold=best_val,
        ),
        keras.callbacks.ModelCheckpoint(str(work / "last.keras")),
        keras.callbacks.CSVLogger(str(work / "history.csv"), append=True),
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

    if config.strategy == "multiworker":
        _build_from_local_batch(model, data.train[0])
    logger.info(
        "training %s on %s: epochs %d-%d, %d steps of %d patches of %d px", config.model, config.data,
        initial_epoch + 1, config.epochs, config.steps_per_epoch, config.batch_size, config.patch_size,
    )
    model.fit(
        data.train, epochs=config.epochs, steps_per_epoch=config.steps_per_epoch,
        validation_data=data.val, validation_steps=config.validation_steps,
        callbacks=callbacks, verbose=verbose, initial_epoch=initial_epoch if extending else 0,
    )
    if not chief:
        shutil.rmtree(work, ignore_errors=True)
        return {}

    best = keras.saving.load_model(out / "best.keras")
    metrics = validation_metrics(best, data.validation_batches(config.validation_steps))
    metrics.update(model=config.model, epochs=config.epochs, data=config.data)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    plot_history(read_history(out / "history.csv"), out)
    (out / STATE_FILE).write_text(json.dumps({"finished_epochs": config.epochs}) + "\n")
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
    from kercr.evaluation import validation_metrics
    from kercr.training_data import make_training_data

    run_dir = Path(run_dir)
    missing = [n for n in ("best.keras", "config.json") if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: missing {', '.join(missing)}; pass a finished kercr-train run directory.")
    config = TrainConfig.load(run_dir / "config.json")
    data = make_training_data(config)
    best = keras.saving.load_model(run_dir / "best.keras")
    return validation_metrics(best, data.validation_batches(config.validation_steps), tta=tta)


def _build_from_local_batch(model, batch) -> None:
    """Build model, loss, metrics and optimizer from a local batch, before ``fit``.

    Under ``MultiWorkerMirroredStrategy``, Keras 3's ``fit`` builds the model from a batch that
    it first reduces across the workers, only to learn its shapes, and that reduction fails
    (keras-team/keras#20585). Building from a local batch first, then skipping that step, is
    equivalent: only the batch's shapes and dtypes are used.
    """
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    _patch_multi_worker_scalar_reduction()


def _patch_multi_worker_scalar_reduction() -> None:
    """Let Keras 3 reduce scalar logs across workers (its ``axis=0`` fails on a scalar).

    Keras' TensorFlow trainer averages every per-replica output with
    ``strategy.reduce("MEAN", v, axis=0)`` under a multi-worker strategy; the losses and metric
    results in the logs are scalars, for which that raises "Invalid reduction dimension 0". Scalars
    are averaged over replicas with ``axis=None`` instead; everything else goes to Keras as before.
    Applied only when ``--strategy multiworker`` is used.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer
    from keras.src import tree

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_kercr_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not tf_trainer._collective_all_reduce_multi_worker(strategy):
            return original(values, strategy, reduction)

        def _reduce(v):
            local = strategy.experimental_local_results(v)[0] if tf_trainer._is_per_replica_instance(v) else v
            if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                return strategy.reduce("MEAN", v, axis=None)
            return original(v, strategy, reduction)

        return tree.map_structure(_reduce, values)

    reduce_per_replica._kercr_patched = True
    tf_trainer.reduce_per_replica = reduce_per_replica


class _NullScope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
