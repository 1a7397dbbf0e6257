"""Losses: hand-computed values, ignored pixels, reductions, serialization, training."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from kercr.losses import DiceBCELoss, MedianWeightedBCE, WeightedBCE

# One 3x3 patch: two CR pixels, a soft prediction.
T33 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype="float32")
P33 = np.array([[0.9, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.2]], dtype="float32")


def _batch(a):
    """(H, W) -> (1, H, W, 1)."""
    return a[None, ..., None]


def _bce(t, p):
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def test_dice_bce_hand_computed_3x3():
    # sum(p*t) = 0.9 + 0.6 = 1.5; sum(p) = 2.6; sum(t) = 2 -> Dice = (3 + 1) / (4.6 + 1)
    dice = 4.0 / 5.6
    bce = -(
        np.log(0.9) + np.log(0.8) + np.log(0.9)
        + np.log(0.7) + np.log(0.6) + np.log(0.9)
        + np.log(0.9) + np.log(0.9) + np.log(0.8)
    ) / 9.0
    expected = (1.0 - dice + bce) / 2.0
    value = float(DiceBCELoss()(_batch(T33), _batch(P33)))
    assert value == pytest.approx(expected, rel=1e-5)
    assert value == pytest.approx(0.2451121, rel=1e-5)


def test_dice_bce_empty_patch_perfect_prediction_is_zero_unlike_keras_dice():
    t = np.zeros((1, 4, 4, 1), "float32")
    p = np.zeros((1, 4, 4, 1), "float32")
    ours = float(DiceBCELoss()(t, p))
    assert ours < 1e-6
    # The documented pitfall: Keras' Dice has no smoothing and calls this a total failure.
    assert float(keras.losses.Dice()(t, p)) == pytest.approx(1.0, abs=1e-6)
    # A false detection on an empty patch is penalised: Dice = 1 / (0.5 + 1).
    p[0, 1, 1, 0] = 0.5
    bce = -np.log(0.5) / 16
    assert float(DiceBCELoss()(t, p)) == pytest.approx((1 - 1 / 1.5 + bce) / 2, rel=1e-5)


def test_dice_is_per_patch_then_averaged():
    # Patch 0: the 3x3 case; patch 1: perfect empty patch (loss ~0).
    t = np.stack([T33, np.zeros((3, 3), "float32")])[..., None]
    p = np.stack([P33, np.zeros((3, 3), "float32")])[..., None]
    single = float(DiceBCELoss()(_batch(T33), _batch(P33)))
    per_patch = np.asarray(DiceBCELoss(reduction=None)(t, p))
    assert per_patch.shape == (2,)
    assert per_patch[0] == pytest.approx(single, rel=1e-5)
    assert per_patch[1] < 1e-6
    assert float(DiceBCELoss()(t, p)) == pytest.approx(single / 2, rel=1e-5)
    assert float(DiceBCELoss(reduction="sum")(t, p)) == pytest.approx(single, rel=1e-5)


def test_dice_bce_ignored_pixels_are_excluded_from_both_terms():
    w = np.ones((3, 3), "float32")
    w[0, 2] = w[2, 2] = 0.0  # ignore two non-CR pixels (p = 0.1 and 0.2)
    kept = w > 0
    t, p = T33[kept], P33[kept]
    dice = (2 * np.sum(p * t) + 1) / (np.sum(p) + np.sum(t) + 1)  # = 4 / 5.3
    assert dice == pytest.approx(4 / 5.3)
    expected = (1 - dice + _bce(t, p).mean()) / 2
    loss = DiceBCELoss()
    value = float(loss(_batch(T33), _batch(P33), sample_weight=_batch(w)))
    assert value == pytest.approx(expected, rel=1e-5)
    # (B, H, W) weights work the same as (B, H, W, 1).
    assert float(loss(_batch(T33), _batch(P33), sample_weight=w[None])) == pytest.approx(
        value, rel=1e-6
    )
    # Whatever sits in ignored pixels cannot change the loss.
    t2, p2 = T33.copy(), P33.copy()
    t2[0, 2], p2[0, 2], p2[2, 2] = 1.0, 0.0, 0.99
    assert float(loss(_batch(t2), _batch(p2), sample_weight=_batch(w))) == pytest.approx(
        value, rel=1e-6
    )


def test_fully_ignored_patch_contributes_zero():
    t = np.stack([T33, T33])[..., None]
    p = np.stack([P33, 1 - P33])[..., None]
    w = np.ones_like(t)
    w[1] = 0.0
    single = float(DiceBCELoss()(_batch(T33), _batch(P33)))
    assert float(DiceBCELoss()(t, p, sample_weight=w)) == pytest.approx(single / 2, rel=1e-5)
    mean_kept = DiceBCELoss(reduction="mean_with_sample_weight")
    assert float(mean_kept(t, p, sample_weight=w)) == pytest.approx(single, rel=1e-5)


def test_per_patch_weights_of_shape_batch():
    t = np.stack([T33, T33])[..., None]
    p = np.stack([P33, P33])[..., None]
    single = float(DiceBCELoss()(_batch(T33), _batch(P33)))
    value = float(DiceBCELoss()(t, p, sample_weight=np.array([1.0, 0.0], "float32")))
    assert value == pytest.approx(single / 2, rel=1e-5)


@pytest.mark.parametrize("loss_cls", [DiceBCELoss, WeightedBCE, MedianWeightedBCE])
def test_per_patch_weights_in_pixel_layout_and_masks_with_or_without_a_channel_axis(loss_cls):
    t = np.stack([T33, T33[::-1]])[..., None]
    p = np.stack([P33, P33.T])[..., None]
    loss = loss_cls()
    by_patch = float(loss(t, p, sample_weight=np.array([1.0, 0.5], "float32")))
    # (B, 1, 1, 1) weights are per patch too: every pixel of a patch counts, not one.
    assert float(loss(t, p, sample_weight=np.array([1.0, 0.5], "float32").reshape(2, 1, 1, 1))) == pytest.approx(
        by_patch, rel=1e-5)
    # A mask with a channel axis and a prediction without one (and the reverse) mean the same pixels.
    reference = float(loss(t, p))
    assert float(loss(t, p[..., 0])) == pytest.approx(reference, rel=1e-6)
    assert float(loss(t[..., 0], p)) == pytest.approx(reference, rel=1e-6)
    with pytest.raises(ValueError, match="y_true has shape"):  # never broadcast into (B, H, W, W)
        loss(t[:, :, :2], p)


@pytest.mark.parametrize("loss_cls", [DiceBCELoss, WeightedBCE, MedianWeightedBCE])
def test_an_ignored_pixel_holding_nan_cannot_change_the_loss(loss_cls):
    t, p = _batch(T33).copy(), _batch(P33).copy()
    w = np.ones_like(t)
    w[0, 2, 2, 0] = 0.0
    reference = float(loss_cls()(t, p, sample_weight=w))
    t[0, 2, 2, 0], p[0, 2, 2, 0] = np.nan, np.nan
    assert float(loss_cls()(t, p, sample_weight=w)) == pytest.approx(reference, rel=1e-6)


def test_bad_weight_shape_names_the_fix():
    with pytest.raises(ValueError, match="per-pixel"):
        DiceBCELoss()(_batch(T33), _batch(P33), sample_weight=np.ones((1, 3), "float32"))


def test_weighted_bce_hand_computed_and_matches_keras_without_weights():
    t = np.array([[1, 0], [0, 0]], "float32")
    p = np.array([[0.8, 0.3], [0.1, 0.6]], "float32")
    w = np.array([[2, 1], [0, 1]], "float32")
    expected = (2 * -np.log(0.8) - np.log(0.7) - np.log(0.4)) / 4.0
    value = float(WeightedBCE()(_batch(t), _batch(p), sample_weight=_batch(w)))
    assert value == pytest.approx(expected, rel=1e-5)
    plain = float(WeightedBCE()(_batch(T33), _batch(P33)))
    keras_bce = float(keras.losses.BinaryCrossentropy()(_batch(T33), _batch(P33)))
    assert plain == pytest.approx(keras_bce, rel=1e-5)
    assert plain == pytest.approx(_bce(T33, P33).mean(), rel=1e-5)


def test_median_weighted_bce_weights_only_the_non_cr_term():
    t = np.array([[1, 0], [0, 0]], "float32")
    p = np.array([[0.8, 0.3], [0.1, 0.6]], "float32")
    # The CR pixel carries weight 0.1, but CR pixels always count 1; pixel (1, 0) is ignored.
    w = np.array([[0.1, 0.5], [0.0, 1.0]], "float32")
    expected = (-np.log(0.8) + 0.5 * -np.log(0.7) + 1.0 * -np.log(0.4)) / 3.0
    value = float(MedianWeightedBCE()(_batch(t), _batch(p), sample_weight=_batch(w)))
    assert value == pytest.approx(expected, rel=1e-5)
    assert value == pytest.approx(0.4392573, rel=1e-5)
    # No weights: plain BCE.
    assert float(MedianWeightedBCE()(_batch(t), _batch(p))) == pytest.approx(
        _bce(t, p).mean(), rel=1e-5
    )


def test_median_weighted_bce_4x4_against_numpy_formula():
    rng = np.random.default_rng(1)
    t = (rng.random((2, 4, 4)) < 0.3).astype("float32")
    p = rng.uniform(0.05, 0.95, (2, 4, 4)).astype("float32")
    w = rng.uniform(0.1, 1.0, (2, 4, 4)).astype("float32")
    w[0, 0, :] = 0.0
    keep = (w > 0).astype("float64")
    pixel = -(keep * t * np.log(p) + w * (1 - t) * np.log(1 - p))
    per_patch = pixel.sum(axis=(1, 2)) / keep.sum(axis=(1, 2))
    value = float(MedianWeightedBCE()(t[..., None], p[..., None], sample_weight=w))
    assert value == pytest.approx(per_patch.mean(), rel=1e-5)


@pytest.mark.parametrize(
    "loss",
    [DiceBCELoss(smooth=0.5, dice_weight=0.3), WeightedBCE(epsilon=1e-6), MedianWeightedBCE()],
)
def test_config_and_serialization_round_trip(loss):
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    config = keras.saving.serialize_keras_object(loss)
    assert config["registered_name"].startswith("kercr>")
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    a = float(loss(_batch(T33), _batch(P33)))
    assert float(restored(_batch(T33), _batch(P33))) == pytest.approx(a, rel=1e-6)


def _tiny_model():
    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", dtype="float32")(
        inputs
    )
    return keras.Model(inputs, outputs)


def test_keras_file_round_trip_with_safe_mode(tmp_path):
    model = _tiny_model()
    model.compile(optimizer="adam", loss=DiceBCELoss(smooth=2.0, dice_weight=0.25))
    model.optimizer.build(model.trainable_variables)
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.loss, DiceBCELoss)
    assert loaded.loss.smooth == 2.0 and loaded.loss.dice_weight == 0.25


@pytest.mark.slow
def test_keras_file_loads_in_fresh_interpreter_after_import_kercr(tmp_path):
    model = _tiny_model()
    model.compile(optimizer="adam", loss=MedianWeightedBCE(epsilon=1e-6))
    path = tmp_path / "tiny.keras"
    model.save(path)
    code = (
        "import sys, keras, kercr; "
        "m = keras.saving.load_model(sys.argv[1], safe_mode=True); "
        "assert type(m.loss).__name__ == 'MedianWeightedBCE', type(m.loss); "
        "assert m.loss.epsilon == 1e-6"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    y = (rng.random((4, 8, 8, 1)) < 0.2).astype("float32")
    w = np.ones((4, 8, 8, 1), "float32")
    w[:, :3] = 0.0  # rows 0-2 ignored: with a 3x3 kernel, rows 0-1 of x only reach them
    return x, y, w


@pytest.mark.parametrize("loss_cls", [DiceBCELoss, WeightedBCE, MedianWeightedBCE])
def test_model_evaluate_and_fit_ignore_masked_pixels(loss_cls):
    x, y, w = _data()
    model = _tiny_model()
    model.compile(optimizer="sgd", loss=loss_cls())
    base = model.evaluate(x, y, sample_weight=w, batch_size=2, verbose=0)
    x2, y2 = x.copy(), y.copy()
    x2[:, :2] = 100.0
    y2[:, :3] = 1.0 - y2[:, :3]
    assert model.evaluate(x2, y2, sample_weight=w, batch_size=2, verbose=0) == pytest.approx(
        base, rel=1e-6
    )
    # Same number as a direct call on the predictions; the mask changes the value.
    direct = float(model.loss(y, model.predict(x, verbose=0), sample_weight=w))
    assert direct == pytest.approx(base, rel=1e-5)
    assert model.evaluate(x, y, batch_size=2, verbose=0) != pytest.approx(base, rel=1e-3)
    # Training on the changed ignored pixels gives the same weights.
    weights = model.get_weights()
    model.fit(x, y, sample_weight=w, batch_size=2, epochs=1, shuffle=False, verbose=0)
    after_a = model.get_weights()
    model.set_weights(weights)
    model.fit(x2, y2, sample_weight=w, batch_size=2, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(after_a, model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(after_a[0], weights[0])


def test_tf_data_triplets_carry_pixel_weights():
    tf = pytest.importorskip("tensorflow")
    x, y, w = _data()
    model = _tiny_model()
    model.compile(optimizer="sgd", loss=DiceBCELoss())
    expected = model.evaluate(x, y, sample_weight=w, batch_size=2, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((x, y, w[..., 0])).batch(2)
    assert model.evaluate(ds, verbose=0) == pytest.approx(expected, rel=1e-5)


def test_weighted_mse_is_the_mean_squared_error_of_the_weighted_pixels_only():
    from kercr.losses import WeightedMSE

    y_true = np.zeros((2, 3, 3, 1), np.float32)
    y_pred = np.zeros((2, 3, 3, 1), np.float32)
    y_pred[0, 0, 0, 0], y_pred[0, 2, 2, 0] = 2.0, 100.0  # the second is outside the weights: ignored
    y_pred[1, 1, 1, 0] = 1.0
    w = np.zeros((2, 3, 3, 1), np.float32)
    w[0, 0, :, 0] = 1.0  # patch 0: three pixels, errors 2, 0, 0 -> 4 / 3
    w[1, 1, 1, 0] = 1.0  # patch 1: one pixel, error 1 -> 1
    loss = WeightedMSE()
    assert float(loss(y_true, y_pred, sample_weight=w)) == pytest.approx((4 / 3 + 1) / 2, rel=1e-6)
    per_patch = WeightedMSE(reduction=None)(y_true, y_pred, sample_weight=w)
    np.testing.assert_allclose(np.asarray(per_patch), [4 / 3, 1.0], rtol=1e-6)
    clone = WeightedMSE.from_config(loss.get_config())
    assert float(clone(y_true, y_pred, sample_weight=w)) == pytest.approx(float(loss(y_true, y_pred, sample_weight=w)))
