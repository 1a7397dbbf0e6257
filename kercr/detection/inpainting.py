"""Cleaning with the learned inpainting network: :func:`inpaint`, and ``kercr.detect(..., clean="network")``.

The network (:func:`kercr.models.build_inpainter`, trained by :mod:`kercr.training.inpainting`
on synthetic frames whose CR-free truth is exact) sees the frame normalized as it was trained
(its ``normalization.json``: sky and noise of the frame, asinh stretch, no clipping) with the
pixels to replace set to 0, and their mask. It runs on the tiles (256 pixels, margins of its
receptive field) that hold a pixel to replace; its values there are turned back into the image's
units (:func:`kercr.data.normalization.denormalize`). Every other pixel is the input's (as
float32) bit for bit, NaN and ignored pixels included, as with :func:`kercr.data.clean_image`.

The shipped network is ``kercr/weights/inpainter/`` (card ``inpainter.json``: how it was trained
and what it scored). It runs in Keras, so this path needs the full install (TensorFlow).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from kercr.data.cleaning import as_bool_mask, masked_input
from kercr.data.errors import KercrDataError
from kercr.data.normalization import denormalize, normalize
from kercr.detection.loading import round_up
from kercr.detection.tiling import axis_plan
from kercr.model_files import model_normalization, read_card
from kercr.weights import default_inpainter_path

__all__ = ["INPAINT_TILE", "inpaint", "load_inpainter"]

logger = logging.getLogger(__name__)

#: Tile side in pixels; only tiles holding a pixel to replace are predicted.
INPAINT_TILE = 256


@functools.lru_cache(maxsize=4)
def load_inpainter(model="default"):
    """``(keras.Model, NormalizationConfig, card, rf margin, pooling multiple)`` of an inpainting network.

    ``model``: ``"default"`` (``kercr/weights/inpainter/inpainter.keras``) or a ``.keras`` file /
    training run folder of :mod:`kercr.training.inpainting`.
    """
    try:
        import keras  # noqa: F401  # heavy: the network runs in Keras
    except ImportError as err:
        raise KercrDataError(f"the inpainting network (clean='network') runs in Keras, which is not installed "
                             f"({err}); install the full kercr (pip install kercr), or clean with 'median'.") from None
    from kercr.model_files import load_keras_model  # heavy: Keras
    from kercr.models.geometry import input_multiple, receptive_field_radius  # heavy: Keras

    path = default_inpainter_path() if str(model) == "default" else Path(model)
    if path.is_dir():
        path = path / "inpainter.keras"
    if not path.is_file():
        raise KercrDataError(f"inpainting network {str(model)!r} not found ({path}); pass 'default', an "
                             "inpainter.keras file or the folder of a kercr.training.inpainting run.")
    network = load_keras_model(path)
    if network.input_shape[-1] != 2:
        raise KercrDataError(f"{path} takes {network.input_shape[-1]} input channel(s); an inpainting network takes 2 "
                             "(the masked image and the mask). Pass one made by kercr.training.inpainting.")
    card = read_card(path)
    found = model_normalization(path, card)
    if found is None:
        raise KercrDataError(f"{path}: no normalization.json beside it and none in its card; the inpainting "
                             "network needs the normalization it was trained with.")
    multiple = input_multiple(network)
    margin = round_up(receptive_field_radius(network), multiple)
    return network, found[0], card, margin, multiple


def inpaint(image, mask, *, ignore=None, model="default", batch_size=4) -> np.ndarray:
    """Replace the ``mask`` pixels of ``image`` by the inpainting network's values.

    Parameters
    ----------
    image : array_like, shape (ny, nx)
        The frame in ADU or electrons (any real dtype), with its sky; not modified.
    mask : array_like of bool, shape (ny, nx)
        Pixels to replace (a CR mask, dilated as wanted).
    ignore : array_like of bool, shape (ny, nx), optional
        Pixels neither used nor replaced (saturated, bad); non-finite pixels are always ignored.
    model : str or path-like
        ``"default"`` or an inpainting network's ``.keras`` file (see :func:`load_inpainter`).
    batch_size : int
        Tiles per network call.

    Returns
    -------
    numpy.ndarray, float32, shape (ny, nx)
        ``image`` with the replaced pixels (``mask`` less ignored and non-finite pixels) changed;
        every other pixel as the input, bit for bit.

    Raises
    ------
    kercr.data.KercrDataError
        ``image`` not 2-D, a mask of another shape, or every pixel ignored.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise KercrDataError(f"image has shape {img.shape}; inpaint needs a 2-D (ny, nx) image.")
    bad = ~np.isfinite(img)
    if ignore is not None:
        bad |= as_bool_mask(ignore, img.shape, "ignore")
    replace = as_bool_mask(mask, img.shape, "mask") & ~bad
    out = img.astype(np.float32, copy=True)
    if not replace.any():
        return out
    if (bad | replace).all():
        raise KercrDataError("every pixel of the image is ignored or to be replaced; nothing to inpaint from.")
    network, config, _, margin, multiple = load_inpainter(model)
    normalized, params = normalize(img, mask=bad | replace, config=config)
    values = _predict_where(normalized, bad | replace, replace, network, margin, multiple, int(batch_size))
    out[replace] = denormalize(values, params)
    return out


def _predict_where(normalized, hidden, replace, network, margin, multiple, batch_size) -> np.ndarray:
    """The network's values (normalized units) at the ``replace`` pixels, in ``np.nonzero`` order."""
    ny, nx = normalized.shape
    cy, core_y, ty, pad_y, after_y = axis_plan(ny, INPAINT_TILE, margin, multiple, False)
    cx, core_x, tx, pad_x, after_x = axis_plan(nx, INPAINT_TILE, margin, multiple, False)
    pads = ((pad_y, after_y), (pad_x, after_x))
    x = masked_input(np.pad(normalized, pads, mode="reflect"), np.pad(hidden, pads, mode="reflect"))
    result = np.zeros((ny, nx), np.float32)
    origins = [(y, x0) for y in range(0, cy * core_y, core_y) for x0 in range(0, cx * core_x, core_x)
               if replace[y:y + core_y, x0:x0 + core_x].any()]
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        batch = np.stack([x[y:y + ty, x0:x0 + tx] for y, x0 in chunk])
        pred = np.asarray(network.predict_on_batch(batch), np.float32)[..., 0]
        for (y, x0), p in zip(chunk, pred):
            h, w = min(core_y, ny - y), min(core_x, nx - x0)
            result[y:y + h, x0:x0 + w] = p[margin:margin + h, margin:margin + w]
    return result[replace]
