"""Numpy sources of training patches ``(image, mask, weight)``, shared by the tf.data pipeline
(:mod:`kercr.data.pipeline`) and the Keras ``PyDataset`` loader (:mod:`kercr.data.loader`).

Every patch is normalized with :func:`kercr.data.normalization.normalize`, whose statistics are
measured on the whole frame before cutting (a patch full of a bright galaxy would otherwise get a
wrong sky). Weights are 1 (or a median-weight map) and 0 on ignored pixels.

Note: deepCR's sky augmentation (``image + a * sky``) is invisible after kercr's normalization,
which subtracts the sky and divides by the noise measured on the augmented image; it is kept in
:mod:`kercr.data.augment` for other normalizations but the sources here do not apply it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from kercr.data.augment import make_training_example
from kercr.data.errors import KercrDataError
from kercr.data.fits_io import iter_ccds, list_ccd_extensions, read_ccd
from kercr.data.normalization import NormalizationConfig, normalize
from kercr.data.patches import make_patches
from kercr.data.synthetic import SyntheticConfig, make_frame
from kercr.data.weights import apply_ignore_mask

__all__ = ["frame_patches", "synthetic_patches", "fits_patches"]

logger = logging.getLogger(__name__)

Patch = tuple  # (image (p, p, 1) float32, mask (p, p, 1) float32, weight (p, p, 1) float32)


def frame_patches(image_adu, cr_mask, ignore_mask, *, weight=None, patch_size=256, n_patches=None, seed=0,
                  normalization: NormalizationConfig | None = None) -> list[Patch]:
    """Normalize a frame and cut aligned ``(image, mask, weight)`` patches (each (p, p, 1) float32)."""
    ignore = np.asarray(ignore_mask, dtype=bool) | ~np.isfinite(image_adu)
    norm, _ = normalize(image_adu, mask=ignore | np.asarray(cr_mask, bool), config=normalization)
    w = apply_ignore_mask(np.ones(norm.shape, np.float32) if weight is None else weight, ignore)
    (x, y, wt), _ = make_patches(norm, np.asarray(cr_mask, np.float32), w, patch_size=patch_size,
                                 n_patches=n_patches, seed=seed)
    return [(x[i, ..., None], y[i, ..., None], wt[i, ..., None]) for i in range(len(x))]


def synthetic_patches(*, seed, n_frames=None, shape=(4096, 2048), patch_size=256, patches_per_frame=None,
                      config: SyntheticConfig | None = None, normalization=None) -> Iterator[Patch]:
    """Patches of synthetic frames; frame ``i`` depends only on ``(seed, i)``. ``n_frames=None`` is endless."""
    ss = np.random.SeedSequence(seed)
    i = 0
    while n_frames is None or i < n_frames:
        frame_seed, patch_seed = np.random.SeedSequence(ss.entropy, spawn_key=(i,)).spawn(2)
        f = make_frame(seed=frame_seed, shape=shape, config=config)
        yield from frame_patches(f.image_adu, f.cr_mask, f.ignore_mask, patch_size=patch_size,
                                 n_patches=patches_per_frame, seed=np.random.default_rng(patch_seed),
                                 normalization=normalization)
        i += 1


def fits_patches(paths, *, seed, patch_size=256, patches_per_frame=None, mask_extname="CRMASK",
                 ignore_extname="IGNORE", exptime=None, normalization=None) -> Iterator[Patch]:
    """Patches from FITS files, one pass in the given order.

    A file with a ``mask_extname`` extension (as written by :func:`write_fits_with_mask`) is used as
    labelled: its first image extension with that mask (and ``ignore_extname`` if present). Any other
    file is a clean frame: every CCD gets simulated CRs (:func:`make_training_example`, gain from the
    header, 4 e-/ADU if absent).
    """
    rng = np.random.default_rng(seed)
    for path in paths:
        path = Path(os.fspath(path))
        names = [n for _, n in list_ccd_extensions(path)]
        if mask_extname in names:
            image = read_ccd(path, next(n for n in names if n not in (mask_extname, ignore_extname)))
            mask = read_ccd(path, mask_extname).data > 0
            ignore = read_ccd(path, ignore_extname).data > 0 if ignore_extname in names else np.zeros_like(mask)
            yield from frame_patches(image.data, mask, ignore, patch_size=patch_size, n_patches=patches_per_frame,
                                     seed=rng, normalization=normalization)
            continue
        for ccd in iter_ccds(path):
            t = exptime or ccd.exptime
            if t is None:
                raise KercrDataError(f"{path}[{ccd.extname}]: no EXPTIME in the header; pass exptime= in seconds.")
            ex = make_training_example(ccd.data, gain=ccd.gain or 4.0, readnoise_e=ccd.readnoise or 7.0,
                                       exptime=t, saturation_adu=ccd.saturation, rng=rng)
            yield from frame_patches(ex.image_adu, ex.cr_mask, ex.ignore_mask, patch_size=patch_size,
                                     n_patches=patches_per_frame, seed=rng, normalization=normalization)
