"""Backend-agnostic Keras ``PyDataset`` loaders over the numpy frame sources.

Elements are ``(image, mask, weight)`` batches, each (B, P, P, 1) float32 (see
:mod:`kercr.data.frames` for what the three arrays hold); a source whose frames carry several
input maps gives images of one channel per map. They feed TensorFlow (also under
tf.distribute), JAX and PyTorch alike. Training batch ``b`` of epoch ``e`` depends only on
``(seed, e, b)``, so a resumed run goes on with the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import keras
import numpy as np

from kercr.data.augment import random_flip_rot90
from kercr.data.frames import FITSFrames, SyntheticFrames, _stack, frame_keys, patch_batches
from kercr.data.patches import make_patches
from kercr.data.pixel_weights import alpha_floor

__all__ = ["SyntheticFrames", "FITSFrames", "PatchBatches", "FixedBatches", "patch_batches"]


class PatchBatches(keras.utils.PyDataset):
    """Training batches: ``patches_per_frame`` random, augmented patches of each frame in turn.

    Parameters
    ----------
    source : SyntheticFrames or FITSFrames
    exposure_ids : list
        Training exposures (frames of one exposure never reach validation).
    batch_size, patch_size : int
    patches_per_frame : int
        Patches cut from a frame before moving on (128 per 2k x 4k CCD by default).
    steps : int
        Batches per epoch.
    seed : int
    initial_epoch : int
        Epoch the run (re)starts at.
    augment : bool
        Random 90-degree rotations and flips.
    """

    def __init__(self, source, exposure_ids, *, batch_size, patch_size, patches_per_frame, steps, seed,
                 initial_epoch=0, augment=True, **kwargs):
        super().__init__(**kwargs)
        self.source, self.keys = source, frame_keys(source, exposure_ids)
        self.batch_size, self.patch_size, self.steps, self.seed = batch_size, patch_size, steps, seed
        self.patches_per_frame = max(batch_size, int(patches_per_frame))
        self.epoch, self.augment, self.alpha = int(initial_epoch), augment, 0.0
        self._order = np.random.default_rng([seed, 1]).permutation(len(self.keys))

    def __len__(self):
        return self.steps

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, idx):
        if not 0 <= idx < self.steps:
            raise IndexError(f"batch {idx} out of range [0, {self.steps})")
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        arrays = self.source.frame(self._key(self.epoch * self.steps + idx))  # (*inputs, mask, weight)
        patches, _ = make_patches(*arrays, patch_size=self.patch_size, n_patches=self.batch_size,
                                  mode="random", seed=rng)
        if self.augment:
            patches = list(zip(*(random_flip_rot90(*p, rng=rng) for p in zip(*patches))))
        x, y, w = _stack(patches)
        if self.alpha > 0:
            w = alpha_floor(w, self.alpha)
        return x, y, w


    def _key(self, global_batch: int):
        """Frame key of the ``global_batch``-th training batch (counted over all epochs)."""
        frame = global_batch // (self.patches_per_frame // self.batch_size)
        return self.keys[self._order[frame % len(self.keys)]]

    def keys_read(self, epochs: int) -> list:
        """Frame keys the batches of epochs 0 to ``epochs - 1`` read, each once, in reading order."""
        return list(dict.fromkeys(self._key(g) for g in range(int(epochs) * self.steps)))


class FixedBatches(keras.utils.PyDataset):
    """A fixed list of ``(x, y, w)`` batches (the validation set)."""

    def __init__(self, batches, **kwargs):
        super().__init__(**kwargs)
        self.batches = list(batches)

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, idx):
        return self.batches[idx]
