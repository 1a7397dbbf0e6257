"""The Keras callbacks of a ``kercr-train`` run, and the replay that lets a resumed run cut its
learning rate exactly when an uninterrupted one would (:func:`plateau_state`).
"""

from __future__ import annotations

import os

import keras
import numpy as np

__all__ = ["AlphaSchedule", "AtomicModelCheckpoint", "LearningRateLogger", "ResumableReduceLROnPlateau",
           "ValidationImages", "plateau_state"]


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that saves to a hidden temporary ``.keras`` beside ``filepath`` and renames
    it, so a kill during a save leaves the previous model (``best.keras``, ``last.keras``) whole."""

    def __init__(self, filepath, **kwargs):
        self.final_path = os.fspath(filepath)
        head, name = os.path.split(self.final_path)
        super().__init__(os.path.join(head, f".{name[:-len('.keras')]}.partial.keras"), **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if os.path.exists(self.filepath):  # saved this epoch (save_best_only may skip it)
            os.replace(self.filepath, self.final_path)


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
