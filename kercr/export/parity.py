"""Calibration and validation patches for export, and the parity of an export against Keras.

Both sets are cut from synthetic DECam-like frames (:mod:`kercr.data.synthetic`) with a raised CR
rate (``cr_rate_per_s``, default 100 events/s per 2k x 4k CCD instead of DECam's ~0.6: about 80 CRs
and ~4 % CR pixels per 256 x 256 patch at 100 s) so that a few patches hold enough CR pixels for a
TPR; each frame of ``2 tile x 2 tile`` pixels gives four patches. The calibration set (int8) and the validation set use different seeds.

The parity of a candidate (a SavedModel or a TFLite file) against the Keras model on the same
patches: max and mean |delta p|, and TPR at ``fpr`` (default 0.01 %) and Dice at ``threshold``
(default 0.5), pooled over the patches with the ignore mask (saturated, bleed, hot, bad-column
pixels) excluded, for both and their difference.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from kercr.data.cosmic_rays import CosmicRayModel
from kercr.data.normalization import NormalizationConfig, normalize
from kercr.data.synthetic import SyntheticConfig, generate_dataset

__all__ = ["PatchSet", "synthetic_patches", "normalized_patches", "keras_predict", "float64_twin", "compare"]

logger = logging.getLogger(__name__)

try:  # kercr.metrics holds the exact pooled-pixel versions
    from kercr.metrics import dice_score, tpr_at_fpr
except ImportError:  # pragma: no cover - only while kercr.metrics is being written
    tpr_at_fpr = dice_score = None


@dataclasses.dataclass(frozen=True, eq=False)
class PatchSet:
    """Raw patches with their truth.

    Attributes
    ----------
    image_adu : numpy.ndarray, (n, tile, tile) float32
        Raw pixels in ADU (sky included), as a client would send them.
    cr_mask, ignore_mask : numpy.ndarray, (n, tile, tile) bool
    """

    image_adu: np.ndarray
    cr_mask: np.ndarray
    ignore_mask: np.ndarray


def synthetic_patches(n: int, *, tile: int, seed: int, cr_rate_per_s: float = 100.0) -> PatchSet:
    """``n`` patches of ``tile x tile`` pixels from synthetic frames (four per 2 tile x 2 tile frame)."""
    if n < 1:
        raise ValueError(f"n={n} patches; ask for at least 1.")
    config = SyntheticConfig(cr_model=CosmicRayModel(rate_per_s=float(cr_rate_per_s)))
    images, crs, ignores = [], [], []
    for frame in generate_dataset(math.ceil(n / 4), seed=seed, shape=(2 * tile, 2 * tile), config=config):
        for y0 in (0, tile):
            for x0 in (0, tile):
                sl = (slice(y0, y0 + tile), slice(x0, x0 + tile))
                images.append(frame.image_adu[sl])
                crs.append(frame.cr_mask[sl])
                ignores.append(frame.ignore_mask[sl])
    return PatchSet(np.stack(images[:n]).astype(np.float32), np.stack(crs[:n]), np.stack(ignores[:n]))


def normalized_patches(images, config: NormalizationConfig) -> np.ndarray:
    """Normalize each (H, W) image of a stack on its own statistics (no mask, as served)."""
    return np.stack([normalize(image, config=config)[0] for image in images])


def keras_predict(model, normalized, *, batch_size: int = 8, dtype=np.float32) -> np.ndarray:
    """Keras CR probability of (n, H, W) normalized images -> (n, H, W) ``dtype``."""
    out = []
    for i in range(0, len(normalized), batch_size):
        batch = np.asarray(normalized[i:i + batch_size], np.float32)[..., None]
        out.append(np.asarray(model(batch, training=False))[..., 0])
    return np.concatenate(out).astype(dtype)


def float64_twin(model):
    """A copy of ``model`` that computes in float64, with the same weights: its exact output.

    The parity of a float32 export is measured against this, not against Keras in float32, whose
    own rounding depends on the runtime's summation order (for a GroupNorm model, TensorFlow's
    float32 output at batch 1 differs from its output at batch 4 by ~2e-3 in probability; see
    :mod:`kercr.export.lowering`).

    Parameters
    ----------
    model : keras.Model
        Functional (nested functional models included). Input float32 (cast inside), output float64.
    """
    import keras

    def clone(layer):
        if not isinstance(layer, keras.layers.Layer):  # an op of the graph (keras.ops.flip): no dtype
            return layer
        config = layer.get_config()
        config["dtype"] = "float64"
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone, recursive=True)
    twin.set_weights(model.get_weights())
    return twin


def _tpr(y_true, score, fpr, ignore):
    if tpr_at_fpr is not None:
        return tpr_at_fpr(y_true, score, fpr, ignore=ignore)
    keep = ~ignore  # pragma: no cover - fallback
    pos, neg = score[y_true & keep], score[~y_true & keep]
    threshold = np.sort(neg)[::-1][int(fpr * neg.size)]
    return float(np.mean(pos > threshold))


def _dice(y_true, pred, ignore):
    if dice_score is not None:
        return dice_score(y_true, pred, ignore=ignore)
    y, p = y_true & ~ignore, pred & ~ignore  # pragma: no cover - fallback
    denominator = y.sum() + p.sum()
    return 1.0 if denominator == 0 else float(2 * (y & p).sum() / denominator)


def _metrics(y_true, score, ignore, fpr, threshold):
    try:
        tpr = float(_tpr(y_true, score, fpr, ignore))
    except ValueError as err:  # e.g. no CR pixel in the set
        logger.warning("TPR not computed: %s", err)
        tpr = None
    return tpr, float(_dice(y_true, score >= threshold, ignore))


def compare(reference, candidate, patches: PatchSet, *, fpr: float = 1e-4, threshold: float = 0.5) -> dict:
    """Parity of ``candidate`` probabilities against ``reference`` (both (n, H, W)).

    Returns
    -------
    dict
        ``max_abs_delta_p``, ``mean_abs_delta_p``, ``flipped_pixels`` (class changes at
        ``threshold``), ``tpr_at_fpr`` and ``dice`` as ``{"keras", "export", "delta"}``, and the
        pixel counts the metrics pooled.
    """
    reference = np.asarray(reference, np.float32)
    candidate = np.asarray(candidate, np.float32).reshape(reference.shape)
    delta = np.abs(candidate.astype(np.float64) - reference)
    y, ignore = patches.cr_mask, patches.ignore_mask
    tpr_ref, dice_ref = _metrics(y, reference, ignore, fpr, threshold)
    tpr_new, dice_new = _metrics(y, candidate, ignore, fpr, threshold)
    return {
        "max_abs_delta_p": float(delta.max()),
        "mean_abs_delta_p": float(delta.mean()),
        "flipped_pixels": int(np.count_nonzero((reference >= threshold) != (candidate >= threshold))),
        "tpr_at_fpr": {"fpr": fpr, "keras": tpr_ref, "export": tpr_new,
                       "delta": None if tpr_ref is None or tpr_new is None else tpr_new - tpr_ref},
        "dice": {"threshold": threshold, "keras": dice_ref, "export": dice_new, "delta": dice_new - dice_ref},
        "pixels": int(y.size), "cr_pixels": int(np.count_nonzero(y & ~ignore)),
        "ignored_pixels": int(np.count_nonzero(ignore)),
    }
