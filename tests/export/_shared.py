"""Constants and helpers shared by the export tests (not a test module)."""

from __future__ import annotations

import numpy as np

from kercr.data.normalization import NormalizationConfig, normalize
from kercr.export.parity import synthetic_patches

TILE = 64
# Non-default constants, so the tests see that the sidecar (not the default) reaches the graph;
# sample_size=500 makes the subsample step > 1 on 64 x 128 images.
SIDECAR = NormalizationConfig(clip_min=-5.0, clip_max=300.0, n_iter=3, sample_size=500, nan_fill=-1.0)


def raw_tile(seed=3, shape=(TILE, TILE)):
    """A seeded raw synthetic image (ADU) of ``shape``."""
    patches = synthetic_patches(1, tile=max(shape), seed=seed)
    return patches.image_adu[0][: shape[0], : shape[1]].copy()


def keras_reference(model, image, config=SIDECAR):
    """The Keras model's probability map of a raw ``image`` normalized in numpy with ``config``."""
    normalized, _ = normalize(image, config=config)
    return np.asarray(model(normalized[None, :, :, None], training=False))[0, :, :, 0]
