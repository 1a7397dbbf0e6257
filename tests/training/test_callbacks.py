"""The callbacks of a kercr-train run (:mod:`kercr.training.callbacks`)."""

from __future__ import annotations

import keras
import pytest

from kercr.training.callbacks import plateau_state


def test_a_resumed_run_cuts_its_learning_rate_when_an_uninterrupted_one_would():
    # Keras' ReduceLROnPlateau driven through a val_loss sequence with plateaus, cuts, sub-min_delta
    # "gains" and the floor; after every epoch the replay of history.csv must give its state.
    losses = [1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.89995, 0.94, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88]
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    callback = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=2e-4)
    callback.set_model(model)
    callback.on_train_begin()
    history, cuts = [], 0
    for epoch, loss in enumerate(losses):
        logs = {"val_loss": loss}
        callback.on_epoch_end(epoch, logs)
        history.append(dict(logs))
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        cuts += lr < history[-1]["learning_rate"]
        best, wait, replayed_lr = plateau_state(history, learning_rate=1e-3, factor=0.5, patience=2, min_lr=2e-4)
        assert (best, wait) == (callback.best, callback.wait), epoch
        assert replayed_lr == pytest.approx(lr, rel=1e-6), epoch
    assert cuts >= 3 and lr == pytest.approx(2e-4)  # several cuts, down to the floor
