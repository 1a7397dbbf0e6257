"""Per-pixel loss weights (kercr.data.pixel_weights): median weighting, ignore masks, the alpha floor."""

import numpy as np
import pytest

from kercr.data.errors import KercrDataError
from kercr.data.pixel_weights import alpha_floor, apply_ignore_mask, median_weight_map


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
