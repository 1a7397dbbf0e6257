"""kercr.export.parity: the synthetic patches exports are checked on, and how two outputs are compared."""

from __future__ import annotations

import numpy as np
import pytest

import kercr
from kercr.data.normalization import NormalizationConfig, normalize
from kercr.export.parity import PatchSet, compare, float64_twin, keras_predict, normalized_patches, synthetic_patches


def test_synthetic_patches_are_seeded_and_hold_cosmic_rays():
    a = synthetic_patches(5, tile=32, seed=4)
    assert a.image_adu.shape == a.cr_mask.shape == a.ignore_mask.shape == (5, 32, 32)
    assert a.image_adu.dtype == np.float32 and a.cr_mask.dtype == bool and a.cr_mask.sum() > 0
    b = synthetic_patches(5, tile=32, seed=4)
    for name in ("image_adu", "cr_mask", "ignore_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(synthetic_patches(5, tile=32, seed=5).image_adu, a.image_adu)
    # Four patches per frame: the first four are the quadrants of one 64 x 64 frame, in order.
    np.testing.assert_array_equal(synthetic_patches(4, tile=32, seed=4).image_adu, a.image_adu[:4])
    with pytest.raises(ValueError, match="n=0 patches; ask for at least 1"):
        synthetic_patches(0, tile=32, seed=4)


def test_normalized_patches_normalize_each_patch_on_its_own():
    images = synthetic_patches(3, tile=32, seed=1).image_adu
    images[1] += 5000.0  # another sky: it must not change the other patches
    config = NormalizationConfig(asinh_softening=10.0)
    got = normalized_patches(images, config)
    for image, patch in zip(images, got):
        np.testing.assert_array_equal(patch, normalize(image, config=config)[0])


def test_compare_counts_what_changed_on_hand_made_outputs():
    y = np.zeros((1, 4, 4), bool)
    y[0, 0, 0] = y[0, 0, 1] = True
    ignore = np.zeros_like(y)
    ignore[0, 3, 3] = True  # an ignored pixel scored 0.99: it must not set the threshold
    reference = np.full((1, 4, 4), 0.1, np.float32)
    reference[0, 1, :] = 0.3
    reference[0, 0, 0], reference[0, 0, 1], reference[0, 3, 3] = 0.9, 0.95, 0.99
    candidate = reference.copy()
    candidate[0, 0, 1] = 0.05  # one CR pixel lost
    report = compare(reference, candidate, PatchSet(np.zeros_like(reference), y, ignore), threshold=0.5)
    assert report["max_abs_delta_p"] == pytest.approx(0.9) and report["mean_abs_delta_p"] == pytest.approx(0.9 / 16)
    assert report["flipped_pixels"] == 1
    assert (report["pixels"], report["cr_pixels"], report["ignored_pixels"]) == (16, 2, 1)
    tpr = report["tpr_at_fpr"]
    assert (tpr["keras"], tpr["export"], tpr["delta"]) == (1.0, 0.5, -0.5)
    dice = report["dice"]
    assert dice["keras"] == 1.0 and dice["export"] == pytest.approx(2 / 3) and dice["delta"] == pytest.approx(-1 / 3)


def test_compare_without_cosmic_rays_reports_no_tpr():
    nothing = PatchSet(np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool))
    report = compare(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), nothing)
    assert report["tpr_at_fpr"]["keras"] is None and report["tpr_at_fpr"]["delta"] is None
    assert report["flipped_pixels"] == 0 and report["max_abs_delta_p"] == 0.0


def test_the_float64_twin_has_the_weights_and_the_values_in_float64():
    model = kercr.build_model("deepcr_2_4")
    twin = float64_twin(model)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b.astype(a.dtype))
    x = np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32)
    exact = keras_predict(twin, x, dtype=np.float64)
    assert exact.dtype == np.float64 and exact.shape == (2, 32, 32)
    np.testing.assert_allclose(keras_predict(model, x, batch_size=1), exact, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(keras_predict(model, x, batch_size=1)[1], np.asarray(model(x[1:, ..., None]))[0, ..., 0])
