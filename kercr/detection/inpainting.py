"""Cleaning with the learned inpainting network: :func:`inpaint`, and ``kercr.detect(..., clean="network")``.

The network (:func:`kercr.models.build_inpainter`, trained by :mod:`kercr.training.inpainting`
on synthetic frames whose CR-free truth is exact) sees the frame less its smooth local level
(:data:`LEVEL_BLOCK`-pixel blocks, added back to its values), normalized as it was trained (its
``normalization.json``: sky and noise of the frame, asinh stretch, no clipping), with the pixels to
replace set to 0, and their mask. It runs on the tiles (64, 128 or 256 pixels, whichever
predicts the fewest pixels in all; margins of its receptive field) that hold a pixel to replace; its values there are turned back into the image's
units (:func:`kercr.data.normalization.denormalize`). Every other pixel is the input's (as
float32) bit for bit, NaN and ignored pixels included, as with :func:`kercr.data.clean_image`.

The shipped network is ``kercr/weights/inpainter/`` (card ``inpainter.json``: how it was trained
and what it scored). Runtimes, as for detection (:mod:`kercr.detection.runtimes`):

* ``"tflite-float16"`` (what ``"auto"`` picks when ``ai-edge-litert`` is installed): the
  prebuilt LiteRT file beside the network, listed in its card with the geometry tiling needs, so
  cleaning needs neither TensorFlow nor Keras. float16 weights give the Keras values to 0.012 at
  most (normalized units; median 7e-5); int8 is not offered: its output steps cost 60 % more
  squared error (BENCHMARKS.md, "Cleaning CR pixels").
* ``"keras"``: the ``.keras`` file (the full install); the only runtime of a network without a
  prebuilt file (a :mod:`kercr.training.inpainting` run of your own).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from kercr.data.cleaning import as_bool_mask, masked_input, nearest_block_medians
from kercr.data.errors import KercrDataError
from kercr.data.normalization import NormalizationConfig, denormalize, normalize
from kercr.data.robust_stats import fill_and_smooth, upsample_bilinear
from kercr.detection.loading import prebuilt_files, round_up
from kercr.detection.runtimes import litert_available
from kercr.detection.tiling import axis_plan
from kercr.model_files import model_normalization, read_card
from kercr.weights import default_inpainter_path

__all__ = ["INPAINT_RUNTIMES", "INPAINT_TILE", "INPAINT_TILES", "Inpainter", "inpaint", "load_inpainter"]

logger = logging.getLogger(__name__)

#: Tile side in pixels (margins included) of the TFLite file's default input shape.
INPAINT_TILE = 256
#: Tile sides tried (pixels, margins included); only tiles holding a pixel to replace are
#: predicted, and the side that predicts the fewest pixels in all is used: small tiles where CRs
#: are sparse, large ones (less margin per tile) where nearly every tile holds one.
INPAINT_TILES = (256, 128, 64)
#: What ``inpaint(runtime=...)`` takes; the TFLite ones only where the card lists a prebuilt file.
INPAINT_RUNTIMES = ("auto", "keras", "tflite-float32", "tflite-float16", "tflite-dynamic")


@dataclasses.dataclass(frozen=True)
class Inpainter:
    """A loaded inpainting network (:func:`load_inpainter`).

    Attributes
    ----------
    predict : callable
        ``(B, H, W, 2)`` float32 network inputs -> ``(B, H, W)`` values in normalized units.
    normalization : NormalizationConfig
        How the frame is normalized for it (its ``normalization.json``).
    card : dict
        Its card (empty when there is none).
    margin, multiple : int
        Tile margin (receptive-field radius rounded up to ``multiple``) and the input's pooling
        multiple, in pixels.
    runtime : str
        ``"keras"`` or the TFLite runtime that runs it.
    path : pathlib.Path
        Its ``.keras`` file.
    """

    predict: Callable
    normalization: NormalizationConfig
    card: dict
    margin: int
    multiple: int
    runtime: str
    path: Path


def _choose_runtime(runtime: str, prebuilt: dict, card: dict, path: Path) -> str:
    if runtime not in INPAINT_RUNTIMES:
        raise KercrDataError(f"runtime={runtime!r} for the inpainting network; choose one of: "
                             f"{', '.join(INPAINT_RUNTIMES)}.")
    if runtime == "auto":
        wanted = card.get("runtime")
        return wanted if wanted in prebuilt and litert_available() else "keras"
    if runtime != "keras":
        if runtime not in prebuilt:
            have = ", ".join(["keras", *prebuilt])
            raise KercrDataError(f"{path} has no prebuilt {runtime} file; its runtimes: {have}. Build one with "
                                 "python -m kercr.weights.ship --inpainter --prebuild --dest FOLDER.")
        if not litert_available():
            raise KercrDataError(f"runtime={runtime!r} needs the LiteRT interpreter: pip install ai-edge-litert "
                                 "or use runtime='keras'.")
    return runtime


@functools.lru_cache(maxsize=4)
def load_inpainter(model="default", runtime="auto", num_threads=None) -> Inpainter:
    """Load an inpainting network as an :class:`Inpainter`.

    ``model``: ``"default"`` (``kercr/weights/inpainter/inpainter.keras``) or a ``.keras`` file /
    training run folder of :mod:`kercr.training.inpainting`. ``runtime``: one of
    :data:`INPAINT_RUNTIMES` (``"auto"``: the card's ``"runtime"`` when its prebuilt file is there
    and LiteRT is installed, else ``"keras"``). ``num_threads``: LiteRT threads (default: every
    core this process may use).
    """
    path = default_inpainter_path() if str(model) == "default" else Path(model)
    if path.is_dir():
        path = path / "inpainter.keras"
    if not path.is_file():
        raise KercrDataError(f"inpainting network {str(model)!r} not found ({path}); pass 'default', an "
                             "inpainter.keras file or the folder of a kercr.training.inpainting run.")
    card = read_card(path)
    found = model_normalization(path, card)
    if found is None:
        raise KercrDataError(f"{path}: no normalization.json beside it and none in its card; the inpainting "
                             "network needs the normalization it was trained with.")
    prebuilt = prebuilt_files(card, path, str(path), instead="running Keras instead",
                              rebuild="python -m kercr.weights.ship --inpainter --prebuild")
    chosen = _choose_runtime(runtime, prebuilt, card, path)
    if chosen != "keras":
        from kercr.export.litert import ParallelTFLiteRunner  # heavy: LiteRT, only for this runtime

        geometry = card["geometry"]
        multiple = int(geometry["input_multiple"])
        runner = ParallelTFLiteRunner(prebuilt[chosen], num_threads=num_threads)
        if runner.runners[0].channels != 2:
            raise KercrDataError(f"{prebuilt[chosen]} takes {runner.runners[0].channels} input channel(s); an "
                                 "inpainting network takes 2 (the masked image and the mask).")
        return Inpainter(runner.predict, found[0], card, round_up(int(geometry["rf_radius"]), multiple), multiple,
                         chosen, path)
    network, multiple, margin = _keras_network(path)
    return Inpainter(lambda x: np.asarray(network.predict_on_batch(x), np.float32)[..., 0], found[0], card, margin,
                     multiple, "keras", path)


def _keras_network(path: Path):
    """``(keras.Model, input multiple, margin)`` of an inpainting network's ``.keras`` file."""
    try:
        import keras  # noqa: F401  # heavy: the network runs in Keras
    except ImportError as err:
        raise KercrDataError(f"the inpainting network {path} runs in Keras here, which is not installed ({err}); "
                             "install ai-edge-litert for the shipped network's LiteRT file, or the full kercr "
                             "(pip install kercr), or clean with 'median'.") from None
    from kercr.model_files import load_keras_model  # heavy: Keras
    from kercr.models.geometry import input_multiple, receptive_field_radius  # heavy: Keras

    network = load_keras_model(path)
    if network.input_shape[-1] != 2:
        raise KercrDataError(f"{path} takes {network.input_shape[-1]} input channel(s); an inpainting network takes 2 "
                             "(the masked image and the mask). Pass one made by kercr.training.inpainting.")
    multiple = input_multiple(network)
    return network, multiple, round_up(receptive_field_radius(network), multiple)


#: Block side (pixels) of the smooth level taken out before the network and added back after. 16 px
#: follows a galaxy's profile: on a Gaussian galaxy of peak +2000 ADU (sd 90 px, sky noise 10 ADU) the
#: mean error at CR pixels is +2.5 ADU, against +13.9 with 32-px blocks, -37 with 64 and -60 without
#: (``python benchmarks/clean_levels.py --level-block N``; BENCHMARKS.md, "Cleaning CR pixels").
LEVEL_BLOCK = 16


def inpaint(image, mask, *, ignore=None, model="default", runtime="auto", num_threads=None,
            batch_size=4) -> np.ndarray:
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
    runtime : str
        One of :data:`INPAINT_RUNTIMES`; ``"auto"``: the prebuilt LiteRT file when there is one
        and LiteRT is installed, else Keras (see the module docstring).
    num_threads : int, optional
        LiteRT threads (default: every core this process may use).
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
        ``image`` not 2-D, a mask of another shape, every pixel ignored, an unknown runtime, or
        neither LiteRT with a prebuilt file nor Keras to run the network.
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
    net = load_inpainter(model, runtime, num_threads)
    # The network sees the image less its smooth local level (LEVEL_BLOCK-pixel blocks), which is
    # added back: it was trained on frames of one sky, and on a galaxy or a gradient hundreds of sigma above
    # the frame's sky its asinh-stretched values lose the precision to give the level back (-460 ADU on a
    # +2000 ADU half of a frame, where the median cleaner is within the noise; benchmarks/clean_levels.py).
    level = _smooth_level(img, bad | replace)
    normalized, params = normalize(img - level, mask=bad | replace, config=net.normalization)
    values = _predict_where(normalized, bad | replace, replace, net.predict, net.margin, net.multiple,
                            int(batch_size))
    out[replace] = denormalize(values, params) + level[replace]
    return out


def _smooth_level(img, hidden) -> np.ndarray:
    """The image's smooth local level (float32, image units): the median of the good pixels (finite,
    not ``hidden``) of each :data:`LEVEL_BLOCK`-pixel block (a block with under a quarter of them
    takes the nearest block's with enough, however large the hole), median-filtered over 3 x 3
    blocks (a star or a CR shower cannot stand out) and interpolated bilinearly to every pixel."""
    good = np.isfinite(img) & ~hidden
    grid = nearest_block_medians(img, good, LEVEL_BLOCK, min_good=LEVEL_BLOCK * LEVEL_BLOCK // 4)
    grid = fill_and_smooth(grid, float(np.median(grid)))
    return upsample_bilinear(grid, img.shape, LEVEL_BLOCK).astype(np.float32)


def _tile_plan(replace, margin, multiple):
    """``(origins, core_y, core_x, ty, tx, pads)`` of the tile side in :data:`INPAINT_TILES` that
    predicts the fewest pixels: the cores holding a pixel to replace, their tile shape and the padding."""
    ny, nx = replace.shape
    best = None
    for tile in INPAINT_TILES:
        if best is not None and tile - 2 * margin < max(multiple, 8):
            continue  # too small for this network's margins
        cy, core_y, ty, pad_y, after_y = axis_plan(ny, tile, margin, multiple, False)
        cx, core_x, tx, pad_x, after_x = axis_plan(nx, tile, margin, multiple, False)
        origins = [(y, x0) for y in range(0, cy * core_y, core_y) for x0 in range(0, cx * core_x, core_x)
                   if replace[y:y + core_y, x0:x0 + core_x].any()]
        if best is None or len(origins) * ty * tx < len(best[0]) * best[3] * best[4]:
            best = (origins, core_y, core_x, ty, tx, ((pad_y, after_y), (pad_x, after_x)))
    return best


def _predict_where(normalized, hidden, replace, predict, margin, multiple, batch_size) -> np.ndarray:
    """The network's values (normalized units) at the ``replace`` pixels, in ``np.nonzero`` order."""
    ny, nx = normalized.shape
    origins, core_y, core_x, ty, tx, pads = _tile_plan(replace, margin, multiple)
    x = masked_input(np.pad(normalized, pads, mode="reflect"), np.pad(hidden, pads, mode="reflect"))
    result = np.zeros((ny, nx), np.float32)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        batch = np.stack([x[y:y + ty, x0:x0 + tx] for y, x0 in chunk])
        pred = predict(batch)
        for (y, x0), p in zip(chunk, pred):
            h, w = min(core_y, ny - y), min(core_x, nx - x0)
            result[y:y + h, x0:x0 + w] = p[margin:margin + h, margin:margin + w]
    return result[replace]
