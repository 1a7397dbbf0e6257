"""The Keras PyDataset loaders of kercr.data.loader: kercr-train's training batches."""

import numpy as np
import pytest

from kercr.data.frames import SyntheticFrames
from kercr.data.loader import FixedBatches, PatchBatches

SHAPE = (128, 128)


def test_training_batches_depend_only_on_seed_epoch_and_batch():
    def batches(epoch):
        source = SyntheticFrames(seed=0, shape=SHAPE, cr_rate_scale=20)
        return PatchBatches(source, [0, 1], batch_size=2, patch_size=64, patches_per_frame=4, steps=4, seed=0,
                            initial_epoch=epoch)

    ds = batches(0)
    assert len(ds) == 4
    x, y, w = ds[3]
    assert x.shape == y.shape == w.shape == (2, 64, 64, 1) and x.dtype == y.dtype == w.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0} and set(np.unique(w)) <= {0.0, 1.0}
    # Batch b of epoch e depends only on (seed, e, b): a resumed run sees the same batches.
    np.testing.assert_array_equal(x, batches(0)[3][0])
    ds.on_epoch_end()
    np.testing.assert_array_equal(ds[1][0], batches(1)[1][0])
    assert not np.array_equal(ds[1][0], batches(0)[1][0])
    with pytest.raises(IndexError):
        ds[4]


def test_alpha_floors_median_weights_of_training_batches_but_not_ignored_pixels():
    source = SyntheticFrames(seed=0, shape=SHAPE, cr_rate_scale=20, median_weights=True)
    ds = PatchBatches(source, [0, 1], batch_size=2, patch_size=64, patches_per_frame=4, steps=2, seed=0)
    x, y, w = ds[0]
    counted = w > 0
    assert counted.any() and (~counted).any() and w[counted].min() < 0.3
    ds.alpha = 0.3
    x2, y2, w2 = ds[0]
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(w2, np.where(counted, np.maximum(w, np.float32(0.3)), 0))


def test_fixed_batches_serve_their_list():
    batches = [tuple(np.full((1, 4, 4, 1), v, np.float32) for v in (i, 0, 1)) for i in range(3)]
    fixed = FixedBatches(iter(batches))
    assert len(fixed) == 3 and fixed[2] is batches[2]


class _TwoMaps:
    """A source whose frames carry a second input map beside the image: ``(image, extra, mask, weight)``."""

    def __init__(self, base):
        self.base = base

    def exposure_ids(self, n):
        return self.base.exposure_ids(n)

    def frame(self, key):
        image, mask, weight = self.base.frame(key)
        return image, 2 * image + np.float32(1), mask, weight  # a pointwise map: its patches show where they were cut


def test_frames_with_several_input_maps_give_one_channel_per_map_cut_and_flipped_together():
    from kercr.data.frames import patch_batches

    plain = SyntheticFrames(seed=0, shape=SHAPE, cr_rate_scale=20)
    two = _TwoMaps(SyntheticFrames(seed=0, shape=SHAPE, cr_rate_scale=20))
    kw = dict(batch_size=2, patch_size=64, patches_per_frame=4, steps=4, seed=0)
    for b in range(4):
        (x1, y1, w1), (x2, y2, w2) = PatchBatches(plain, [0, 1], **kw)[b], PatchBatches(two, [0, 1], **kw)[b]
        assert x2.shape == (2, 64, 64, 2) and x2.dtype == np.float32
        # channel 0, truth and weights are the one-map batch's, patch for patch (same positions and flips)
        np.testing.assert_array_equal(x2[..., :1], x1)
        np.testing.assert_array_equal(y2, y1)
        np.testing.assert_array_equal(w2, w1)
        np.testing.assert_array_equal(x2[..., 1], 2 * x2[..., 0] + np.float32(1))  # cut and flipped together
    for (x1, y1, _), (x2, y2, _) in zip(*(patch_batches(s, [0, 1], n_batches=2, batch_size=2, patch_size=64, seed=0)
                                          for s in (plain, two))):
        np.testing.assert_array_equal(x2[..., :1], x1)
        np.testing.assert_array_equal(y2, y1)
        np.testing.assert_array_equal(x2[..., 1], 2 * x2[..., 0] + np.float32(1))
