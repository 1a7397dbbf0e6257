"""kercr.detection.tiling: overlapping tiles, predicted in batches, their cores stitched without seams.

:func:`predict_tiled` and :func:`check_tiling` are tested on their own (an identity "network" shows
where every output pixel came from), then through :func:`kercr.detect` with a tiny untrained
``deepcr_2_4`` against a one-piece prediction of the whole frame.
"""

from __future__ import annotations

import logging
import math

import keras
import numpy as np
import pytest

import kercr
from kercr.data import NormalizationConfig, make_frame
from kercr.detection import LoadedModel, detect, load_model
from kercr.detection.tiling import DEFAULT_TFLITE_TILE, DEFAULT_TILE, check_tiling, predict_tiled
from kercr.models import receptive_field_radius

SHAPE = (300, 500)  # the detection_frame fixture's


def _described(*, multiple=4, fixed_size=None, rf_radius=10):
    """A :class:`LoadedModel` with this geometry and no network (the tiling needs none)."""
    return LoadedModel(None, name="test-model", path=None, normalization=NormalizationConfig(),
                       normalization_source="default", threshold=0.5, threshold_source="none", card={},
                       multiple=multiple, fixed_size=fixed_size, rf_radius=0 if fixed_size else rf_radius,
                       local=fixed_size is None)


# --------------------------------------------------------------------------------------------
# predict_tiled: where every output pixel comes from
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(37, 53), (8, 8), (33, 100)])
def test_an_identity_network_gives_the_frame_back_pixel_for_pixel(shape):
    normalized = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    calls = []

    def identity(batch):
        calls.append(batch.shape)
        return batch.copy()

    out, tile_shape, n_tiles = predict_tiled(normalized, identity, tile=16, margin=4, multiple=4, fixed=False,
                                             batch_size=3)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_array_equal(out, normalized)  # a shifted or mirrored core would change values
    assert n_tiles == sum(n for n, *_ in calls) == math.ceil(shape[0] / 8) * math.ceil(shape[1] / 8)
    assert all(s[1:] == tile_shape for s in calls) and [s[0] for s in calls][:-1] == [3] * (len(calls) - 1)


def test_only_the_cores_of_the_tiles_are_kept():
    normalized = np.random.default_rng(1).normal(size=(40, 60)).astype(np.float32)
    margin = 6

    def borders_poisoned(batch):  # what a network sees near a tile edge is never used
        out = batch.copy()
        out[:, :margin] = out[:, -margin:] = np.nan
        out[:, :, :margin] = out[:, :, -margin:] = np.nan
        return out

    out, _, _ = predict_tiled(normalized, borders_poisoned, tile=24, margin=margin, multiple=2, fixed=False,
                              batch_size=4)
    np.testing.assert_array_equal(out, normalized)


def test_tiles_shrink_to_spread_the_frame_evenly_unless_the_input_is_fixed():
    normalized = np.zeros((33, 33), np.float32)
    _, spread, n = predict_tiled(normalized, lambda b: b, tile=40, margin=4, multiple=4, fixed=False, batch_size=8)
    assert n == 4 and spread == (28, 28)  # two cores of 20 (17 rounded up to the multiple), not 32 + 1
    _, fixed, n = predict_tiled(normalized, lambda b: b, tile=40, margin=4, multiple=4, fixed=True, batch_size=8)
    assert n == 4 and fixed == (40, 40)


# --------------------------------------------------------------------------------------------
# check_tiling: the caller's tile and overlap, or the defaults
# --------------------------------------------------------------------------------------------
def test_default_tile_and_overlap_follow_the_model(caplog):
    model = _described(multiple=4, rf_radius=10)
    assert check_tiling(model, None, None) == (DEFAULT_TILE, 12)  # the radius rounded up to the multiple
    assert check_tiling(model, 101, 13) == (104, 16)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="kercr"):
        assert check_tiling(model, 64, 5) == (64, 8)
    assert "overlap 8 px is below the receptive-field radius 10 px of test-model: tiles will show seams" in caplog.text
    fixed = _described(fixed_size=64)
    assert check_tiling(fixed, None, None) == (64, 8) and check_tiling(fixed, 64, 20) == (64, 20)
    assert check_tiling(model, None, None, "tflite-int8") == (DEFAULT_TFLITE_TILE, 12) != (DEFAULT_TILE, 12)
    assert check_tiling(fixed, None, None, "tflite-int8") == (64, 8)  # a fixed input wins over the runtime's


def test_the_shipped_models_litert_masks_do_not_depend_on_the_tile():
    """LiteRT's smaller default tile (less memory) must not change a mask: compare with Keras' 512."""
    rng = np.random.default_rng(5)
    image = rng.normal(300.0, 10.0, (900, 700)).astype(np.float32)
    image[100:400, 350] += 400.0  # a long straight CR across tile borders
    image[600, 50:650] += 300.0
    small = detect(image)  # the card's runtime: LiteRT int8 with 384-pixel tiles
    large = detect(image, tile=DEFAULT_TILE)
    assert small.runtime.startswith("tflite") and small.tile != large.tile
    np.testing.assert_array_equal(small.mask, large.mask)
    assert small.mask[100:400, 350].mean() > 0.9 and small.mask[600, 50:650].mean() > 0.9


@pytest.mark.parametrize("geometry, tile, overlap, message", [
    ({}, 16, 8, r"tile=16 leaves no core after an overlap of 8 px on each side; pass tile >= 20 or a smaller overlap"),
    ({}, 64, -1, r"overlap=-1 must be >= 0 pixels"),
    ({"fixed_size": 64}, 128, None, r"test-model takes a fixed 64 x 64 input; tile=128 is not possible. Leave tile=None"),
    ({"fixed_size": 64}, None, 32, r"overlap=32 must be in \[0, 32\) pixels for a 64-pixel tile"),
])
def test_impossible_tilings_are_named_with_the_fix(geometry, tile, overlap, message):
    with pytest.raises(ValueError, match=message):
        check_tiling(_described(**geometry), tile, overlap)


# --------------------------------------------------------------------------------------------
# Through kercr.detect with a real network
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [SHAPE, (301, 499)])
def test_tiled_prediction_equals_whole_frame(tiny, shape, whole_frame_reference):
    image = make_frame(seed=4, shape=shape).image_adu
    tiled = detect(image, model=tiny, tile=64, runtime="keras")
    whole = detect(image, model=tiny, tile=4096, runtime="keras")
    assert tiled.n_tiles > 20 and whole.n_tiles == 1
    assert tiled.probability.shape == shape and tiled.probability.dtype == np.float32
    assert tiled.mask.shape == shape and tiled.mask.dtype == bool
    np.testing.assert_allclose(tiled.probability, whole.probability, atol=1e-5, rtol=0)
    # Every pixel, borders included, equals an independent one-piece prediction of the padded frame.
    reference = whole_frame_reference(tiny, image, margin=whole.overlap, multiple=load_model(tiny).multiple)
    np.testing.assert_allclose(tiled.probability, reference, atol=1e-5, rtol=0)
    assert np.isfinite(tiled.probability).all()


def test_overlap_below_receptive_field_leaves_seams(tiny, frame):
    loaded = load_model(tiny)
    whole = detect(frame.image_adu, model=tiny, tile=4096, runtime="keras").probability
    seamy = detect(frame.image_adu, model=tiny, tile=64, overlap=0, runtime="keras").probability
    assert np.abs(seamy - whole).max() > 1e-3  # the comparison above can fail
    assert loaded.default_overlap >= loaded.rf_radius > 0


@pytest.mark.parametrize("arch", ["deepcr_2_4", "deepcr_2_32", "deepcr"])
def test_receptive_field_radius_bounds_the_true_one(arch):
    keras.utils.set_random_seed(0)
    model = kercr.build_model(arch)
    radius = receptive_field_radius(model)
    # A pixel change moves outputs no farther than the radius away (random weights: dense response).
    x = np.random.default_rng(0).normal(size=(1, 160, 160, 1)).astype("float32")
    y = x.copy()
    y[0, 80, 80, 0] += 50.0
    diff = np.abs(model.predict_on_batch(y) - model.predict_on_batch(x))[0, ..., 0]
    rows, cols = np.nonzero(diff > 0)
    reach = max(np.abs(rows - 80).max(), np.abs(cols - 80).max())
    assert reach <= radius
    assert radius <= 2 * reach + 4  # a tight bound, not a huge margin


def test_fixed_input_model_is_tiled_at_its_size():
    keras.utils.set_random_seed(0)
    model = kercr.build_model("transunet", input_size=64, num_layers=1, hidden_dim=12, num_heads=2, mlp_dim=8,
                              encoder_filters=(4, 4, 8, 8), decoder_stem_filters=8, decoder_filters=(4, 4, 4, 4))
    image = make_frame(seed=5, shape=(150, 170)).image_adu
    r = detect(image, model=model, runtime="keras")
    assert r.tile == (64, 64) and r.probability.shape == (150, 170) and np.isfinite(r.probability).all()
    assert r.overlap == 8 and r.n_tiles == math.ceil(150 / 48) * math.ceil(170 / 48)
    with pytest.raises(ValueError, match="fixed 64 x 64"):
        detect(image, model=model, tile=128, runtime="keras")

