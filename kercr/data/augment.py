"""Training examples from real frames, and numpy augmentations shared by all loaders.

Real frames get CRs injected (simulated, or real footprints) and the sky augmentation of deepCR
(Zhang & Bloom 2020, arXiv:1907.09500): ``image' = image + a * sky`` with ``a ~ U(-0.9, 3)``, which
makes one exposure stand for exposures of other sky levels and signal-to-noise ratios.

Caution: kercr's normalization (:func:`kercr.data.normalization.normalize`) subtracts the sky and
divides by the noise measured on the (augmented) image, and ``a * sky`` adds no noise, so the
augmentation leaves the normalized network input unchanged; it matters only for other
normalizations (e.g. deepCR's fixed scaling).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from kercr.data.cosmic_rays import CosmicRayModel, inject_cosmic_rays, simulate_cosmic_rays
from kercr.data.errors import KercrDataError
from kercr.data.footprints import inject_footprints
from kercr.data.normalization import robust_sky_noise

__all__ = ["TrainingExample", "sky_augment", "random_flip_rot90", "decam_dq_ignore", "make_training_example",
           "FLIP_AXES", "flip_average", "flipped_views"]

logger = logging.getLogger(__name__)

#: DECam CP data-quality codes: 1 bad, 2 no value, 3 saturated, 4 bleed, 5 CR, 6 low weight, 7 diff, 8 streak.
DECAM_DQ_IGNORE = (1, 2, 3, 4, 6, 8)


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingExample:
    """Image (ny, nx) float32 ADU with CRs, truth ``cr_mask`` and ``ignore_mask`` (bool), sky factor ``a``."""

    image_adu: np.ndarray
    cr_mask: np.ndarray
    ignore_mask: np.ndarray
    sky_scale: float


def sky_augment(image_adu, *, sky_adu, a) -> np.ndarray:
    """Return ``image_adu + a * sky_adu`` as a new float32 array (deepCR's sky augmentation)."""
    return (np.asarray(image_adu, dtype=np.float32) + np.float32(a * sky_adu)).astype(np.float32, copy=False)


def random_flip_rot90(*arrays, rng):
    """Apply the same random 90-degree rotation and flip to 2-D arrays of one shape (new arrays)."""
    rng = np.random.default_rng(rng)
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(np.asarray(a), k=k, axes=(-2, -1))
        out.append(np.ascontiguousarray(a[..., ::-1] if flip else a))
    return tuple(out)


def decam_dq_ignore(dq, *, include_cr=True) -> np.ndarray:
    """Ignore mask (bool) from a DECam CP data-quality image (``*_ood_*``).

    Real CRs (code 5) are ignored by default: in a frame used as "clean" they are unlabeled.
    """
    dq = np.asarray(dq)
    codes = DECAM_DQ_IGNORE + ((5,) if include_cr else ())
    return np.isin(dq, codes)


def make_training_example(clean_adu, *, gain, exptime, rng, readnoise_e=7.0, sky_adu=None, saturation_adu=None,
                          ignore_mask=None, footprints=None, n_footprints=None, cr_model: CosmicRayModel | None = None,
                          sky_scale_range=(-0.9, 3.0)) -> TrainingExample:
    """Turn a real (CR-free or CR-masked) frame into a training example.

    Parameters
    ----------
    clean_adu : array_like, shape (ny, nx)
        Real frame in ADU; not modified. NaN pixels are ignored.
    gain : float
        e-/ADU.
    exptime : float
        Seconds; sets the number of simulated CRs.
    rng : numpy.random.Generator or int
    readnoise_e : float
        Read noise in e- (CR mask threshold).
    sky_adu : float, optional
        Sky level in ADU for the augmentation (default: sigma-clipped median of the frame).
    saturation_adu : float, optional
        Pixels at or above it are ignored; injected CR pixels are clipped to it.
    ignore_mask : array_like of bool, optional
        Extra pixels to ignore (e.g. :func:`decam_dq_ignore`).
    footprints : sequence of numpy.ndarray, optional
        Real CR stamps in e-; if given they are injected instead of simulated CRs.
    n_footprints : int, optional
        How many footprints (default: the expected simulated count for this exposure).
    cr_model : CosmicRayModel, optional
    sky_scale_range : tuple of float
        Range of ``a``; ``(0, 0)`` disables the augmentation.

    Returns
    -------
    TrainingExample
    """
    rng = np.random.default_rng(rng)
    clean = np.asarray(clean_adu, dtype=np.float32)
    if clean.ndim != 2:
        raise KercrDataError(f"frame has shape {clean.shape}; pass a 2-D (ny, nx) frame.")
    model = cr_model or CosmicRayModel()
    ignore = ~np.isfinite(clean)
    if ignore_mask is not None:
        ignore |= np.asarray(ignore_mask, dtype=bool)
    if saturation_adu is not None:
        ignore |= np.nan_to_num(clean, nan=0.0) >= saturation_adu
    if sky_adu is None:
        sky_adu, _, _ = robust_sky_noise(clean, mask=ignore)
    a = float(rng.uniform(*sky_scale_range))
    base = np.nan_to_num(sky_augment(clean, sky_adu=sky_adu, a=a), nan=0.0)
    sat = None if saturation_adu is None else saturation_adu + a * sky_adu
    if footprints is not None:
        n = int(rng.poisson(model.expected_count(clean.shape, exptime))) if n_footprints is None else n_footprints
        image, _, mask = inject_footprints(base, footprints, n=n, gain=gain, rng=rng, saturation=sat)
    else:
        crs = simulate_cosmic_rays(clean.shape, exptime=exptime, rng=rng, model=model, readnoise_e=readnoise_e)
        image, mask = inject_cosmic_rays(base, crs.electrons, gain=gain, saturation=sat), crs.mask
    return TrainingExample(image_adu=image, cr_mask=mask, ignore_mask=ignore, sky_scale=a)


# ---------------------------------------------------------------------------------------------
# Test-time augmentation: the four flips kercr.detect, the evaluation and the exported flip
# models average (kercr.models.flip_average_model builds the same average into a Keras model).
# ---------------------------------------------------------------------------------------------
FLIP_AXES = ((), (1,), (2,), (1, 2))  # the four flips of a (B, H, W[, C]) batch: none, rows, columns, both


def flipped_views(predict, x):
    """``predict`` on the three flips of ``x`` other than the identity, each flipped back.

    Parameters
    ----------
    predict : callable
        Maps a (B, H, W[, C]) float32 batch to an array whose first three axes are (B, H, W).
    x : numpy.ndarray, shape (B, H, W[, C])

    Yields
    ------
    numpy.ndarray, float32
        ``predict`` on ``x`` flipped along H, along W and along both (:data:`FLIP_AXES` after the
        first), each aligned with ``x``. :func:`flip_average` adds them to the identity view in
        this order; detection adds them to an identity view it already has in the same order,
        so both give the same average to the bit.
    """
    for axes in FLIP_AXES[1:]:
        p = np.asarray(predict(np.ascontiguousarray(np.flip(x, axes))), dtype=np.float32)
        yield np.flip(p, axes)


def flip_average(predict, x) -> np.ndarray:
    """Test-time augmentation: the mean of ``predict`` over the four flips of each image.

    Parameters
    ----------
    predict : callable
        Maps a (B, H, W[, C]) float32 batch to an array whose first three axes are (B, H, W).
    x : numpy.ndarray, shape (B, H, W[, C])

    Returns
    -------
    numpy.ndarray, float32
        The average of ``predict`` on ``x`` flipped along H, along W, along both and not at all,
        each prediction flipped back first, so it is aligned with ``x``. It averages whatever
        ``predict`` returns (logits or probabilities).
    """
    total = np.array(predict(x), dtype=np.float32)  # a copy: the sum below must not write into predict's array
    for p in flipped_views(predict, x):
        total += p
    total /= np.float32(len(FLIP_AXES))
    return total
