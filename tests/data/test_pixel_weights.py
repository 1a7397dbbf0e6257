"""Per-pixel loss weights (kercr.data.pixel_weights): median weighting, ignore masks, the alpha floor, the CR rim."""

import numpy as np
import pytest

from kercr.data.errors import KercrDataError
from kercr.data.pixel_weights import alpha_floor, apply_ignore_mask, median_weight_map, weigh_rim


def test_median_weight_map():
    rng = np.random.default_rng(0)
    sky = 100 + 5 * rng.standard_normal((3, 64, 64))
    sky[:, 30:33, 30:33] += 500.0  # a star in all three exposures
    sky[0, 10, 10] += 5000.0  # a CR in one exposure only: rejected by the median
    before = sky.copy()
    w = median_weight_map(sky, alpha=0.1)
    np.testing.assert_array_equal(sky, before)
    assert w.dtype == np.float32 and w.shape == (64, 64)
    assert w.max() == pytest.approx(1.0) and w.min() == pytest.approx(0.1)
    assert w[31, 31] == pytest.approx(1.0) and w[10, 10] == pytest.approx(0.1)
    assert 0.1 < w[31, 34] < 1.0  # smoothed wing of the 5x5 kernel
    assert w[31, 36] == pytest.approx(0.1)  # beyond the kernel radius
    with pytest.raises(KercrDataError, match="at least 3"):
        median_weight_map(sky[:2])
    with pytest.raises(KercrDataError, match="alpha"):
        median_weight_map(sky, alpha=1.5)


def test_apply_ignore_mask_zeroes_ignored_pixels_in_a_copy():
    w = np.linspace(0.1, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    before = w.copy()
    zero = apply_ignore_mask(w, np.eye(64, dtype=bool))
    assert zero.dtype == np.float32
    assert (np.diag(zero) == 0).all() and zero[0, 1] == w[0, 1]
    np.testing.assert_array_equal(w, before)  # the input is not modified
    with pytest.raises(KercrDataError, match="shape"):
        apply_ignore_mask(w, np.zeros((8, 8), bool))


def test_alpha_floor_raises_counted_weights_and_keeps_ignored_pixels_at_zero():
    w = np.array([[0.0, 1e-6, 0.2], [0.5, 1.0, 0.0]], np.float64)
    floored = alpha_floor(w, 0.3)
    assert floored.dtype == np.float32
    np.testing.assert_array_equal(floored, np.array([[0.0, 0.3, 0.3], [0.5, 1.0, 0.0]], np.float32))
    np.testing.assert_array_equal(alpha_floor(w, 0.0), w.astype(np.float32))
    assert w[0, 1] == 1e-6  # the input is not modified


def test_weigh_rim_multiplies_the_counted_non_cr_pixels_touching_a_cr():
    cr = np.zeros((7, 8), bool)
    cr[3, 3:5] = True
    weights = np.ones(cr.shape, np.float32)
    weights[2, 2] = 0.0  # ignored: stays ignored
    weights[0, 0] = 0.5  # far from the CR: unchanged
    keep = weights.copy()
    out = weigh_rim(weights, cr, 4)
    rim = np.zeros(cr.shape, bool)
    rim[2:5, 2:6] = True
    rim &= ~cr
    assert rim.sum() == 10
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[rim & (keep > 0)], 4.0)
    assert out[2, 2] == 0.0 and out[0, 0] == 0.5
    np.testing.assert_array_equal(out[~rim], keep[~rim])  # the CR pixels and the rest as they were
    np.testing.assert_array_equal(weights, keep)  # a copy
    np.testing.assert_array_equal(weigh_rim(weights, cr, 1), keep)
    for bad in (0, -1.0, float("inf"), float("nan"), True, "4"):
        with pytest.raises(KercrDataError, match="rim_weight=.* must be a positive number"):
            weigh_rim(weights, cr, bad)
    with pytest.raises(KercrDataError, match="CR mask shape"):
        weigh_rim(weights, cr[:-1], 4)
