"""kercr.data.masks: what a user passes becomes a boolean mask, or a clear error; the 3 x 3 dilation."""

from __future__ import annotations

import numpy as np
import pytest

from kercr.data import KercrDataError
from kercr.data.masks import as_bool_mask, dilate_mask


def test_as_bool_mask_takes_bools_and_0_1_integers_only():
    assert as_bool_mask(np.eye(3, dtype=np.uint8), (3, 3), "m").dtype == bool
    with pytest.raises(KercrDataError, match=r"m is an integer array with values outside 0 and 1 \(0 to 2\)"):
        as_bool_mask(2 * np.eye(3, dtype=int), (3, 3), "m")
    with pytest.raises(KercrDataError, match="m has shape"):
        as_bool_mask(np.eye(3, dtype=bool), (3, 4), "m")


def test_dilate_mask_takes_a_2d_mask_and_whole_pixels():
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    assert dilate_mask(mask.astype(np.uint8), 1).sum() == 9
    with pytest.raises(KercrDataError, match="dtype float64; pass a boolean mask"):
        dilate_mask(np.full((5, 5), 0.2))
    with pytest.raises(KercrDataError, match="pass a 2-D"):
        dilate_mask(np.zeros(5, bool))
    with pytest.raises(ValueError, match="whole number of pixels"):
        dilate_mask(mask, 1.5)
