"""kercr.models.inpainting: the inpainting network's shape, and the UNet options it uses."""

from __future__ import annotations

import numpy as np
import pytest

from kercr.models import INPAINTER_INPUTS, build_inpainter, build_model, build_unet


def test_the_inpainter_takes_the_masked_image_and_the_mask_and_returns_linear_values():
    model = build_inpainter()
    assert model.input_shape == (None, None, None, len(INPAINTER_INPUTS)) == (None, None, None, 2)
    assert model.output_shape == (None, None, None, 1)
    # deepCR's 2-level, 32-channel layout: the detector's parameter count plus one input channel's
    # 3 x 3 x 32 weights (288).
    assert model.count_params() == build_model("deepcr_2_32").count_params() + 9 * 32
    x = np.full((1, 16, 16, 2), 50.0, np.float32)
    out = np.asarray(model.predict_on_batch(x))
    assert out.shape == (1, 16, 16, 1) and out.dtype == np.float32
    assert np.abs(out).max() > 1.0  # no sigmoid: values are not squeezed into (0, 1)


def test_unet_head_and_channels_are_checked():
    with pytest.raises(ValueError, match="head='softmax'; choose one of: probability, values"):
        build_unet(filters=(4, 8), head="softmax")
    with pytest.raises(ValueError, match="channels=0 must be a whole number >= 1"):
        build_unet(filters=(4, 8), channels=0)
