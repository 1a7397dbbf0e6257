"""Full-frame cosmic-ray detection: :func:`detect`, the function behind ``kercr.detect``.

The path from a raw CCD frame to a CR mask:

1. **Ignored pixels.** Non-finite pixels (NaN, inf), pixels at or above the saturation level
   (``exclude_saturated=True``, the default, when a level is known) and the caller's ``mask``
   are *ignored*: they are left out of the normalization statistics, their probability is set
   to 0 and their mask to False, and they are listed in :attr:`DetectionResult.ignored`.
2. **Normalization.** kercr's one :func:`kercr.data.normalize` over the *whole* frame (sky and
   noise measured on all non-ignored pixels), with the constants the model was trained with
   (its ``normalization.json`` sidecar). Non-finite pixels become the config's ``nan_fill``
   (the sky) before the network, so they never spread into their neighbours. Saturated and
   masked pixels keep their (clipped) values in the network input, as in training, where such
   pixels are in the input and only carry zero loss weight.
3. **Tiling.** The normalized frame is reflect-padded by the overlap margin on every side (and
   up to the tile grid), cut into overlapping tiles of equal shape, and each tile's central part
   (the tile minus ``overlap`` pixels on each side) is kept; the kept parts tile the frame
   exactly, so there is no averaging and no seam, and no border is left unpredicted. With
   ``overlap`` at least the network's receptive-field radius (the default, computed from the
   layers) and tile origins on the network's pooling grid, the tiled prediction equals a
   prediction of the whole padded frame in one piece up to float32 round-off (~1e-6). Models
   with a fixed input (TransUNet) are tiled at that size. Models whose normalization layers
   pool over the image (GroupNormalization, LayerNormalization: ``cosmic_conn``) and the
   TransUNet's attention see the whole tile, so their output depends (weakly) on the tile size.
4. **Flips (test-time augmentation).** With ``tta`` (the shipped model's card turns it on) pixels
   are also predicted flipped along rows, columns and both, each prediction is flipped back,
   and the four logits are averaged (TFLite probabilities are turned into logits first, as the
   validation scores the card's threshold was chosen on were). On the real-frame benchmark it
   finds more CR pixels at the same false-positive rate (``BENCHMARKS.md``); adding the four
   transposed views gains nothing more. The flipped views run only on windows around the
   pixels whose single view reaches ``tta_gate`` (:mod:`kercr.detection.flips`): there the
   score is the four-view mean to the bit, elsewhere it stays the single view's (below the
   gate, far below any threshold), so the mask is the full average's at about 1.4 network
   passes instead of 4. ``tta_gate=0`` flips every pixel.
5. **Threshold.** ``mask = probability >= threshold`` outside ignored pixels (for Keras models the
   comparison is made on the logits, which stay distinct where float32 probabilities round to 1).

Models are loaded by :mod:`kercr.detection.loading` (``"default"``, a ``.keras`` file, a
training run directory or a ``keras.Model``; a registry name is refused: an untrained architecture
finds nothing) and run by :mod:`kercr.detection.runtimes` (Keras, or LiteRT in four precisions).
"""

from __future__ import annotations

import logging
import numbers

import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData, NDData

from kercr.config import DETECT_CLEAN_METHODS
from kercr.data.cleaning import check_clean_method, clean_image, cleaning_mask
from kercr.data.errors import KercrDataError, UndetectableImageError
from kercr.data.normalization import normalize
from kercr.detection.inputs import header_levels, unpack
from kercr.detection.loading import load_model
from kercr.detection.result import DetectionResult
from kercr.detection.flips import add_flips, gate_score
from kercr.detection.runtimes import (DEFAULT_BATCH_SIZE, predictor, resolve_runtime, resolve_tta, resolve_tta_gate,
                                     view_predictor)
from kercr.detection.tiling import check_batch_size, check_tiling, predict_tiled

__all__ = ["detect"]

logger = logging.getLogger(__name__)


def detect(image, *, model="default", threshold=None, gain=None, readnoise=None, saturation=None,
           exclude_saturated=True, mask=None, tile=None, overlap=None, batch_size=None, runtime="auto",
           tta=None, tta_gate=None, num_threads=None, keep_logits=False, clean=None,
           clean_dilate=0) -> DetectionResult:
    """Find cosmic rays in a CCD frame of any size.

    Parameters
    ----------
    image : numpy.ndarray, astropy.nddata.CCDData (or another NDData), astropy.io.fits ImageHDU/PrimaryHDU/CompImageHDU or CCDFrame
        Shape (ny, nx), any real dtype, in ADU or electrons, with or without sky. Not modified.
        NaN/inf pixels are allowed (ignored). A ``CCDData`` mask and header and an HDU's header
        are used.
    model : str, path-like, keras.Model or LoadedModel
        ``"default"``, a ``.keras`` file, a kercr-train run directory, or a model instance (see
        :func:`load_model`). Registry names are refused (untrained).
    threshold : float, optional
        Probability threshold; default: the model card's ``threshold`` (chosen on validation
        for 0.01 % FPR), else the run's ``metrics.json`` ``threshold_at_fpr_1e-4``, else 0.5.
    gain : float or astropy Quantity, optional
        e-/ADU; default: header ``GAIN`` (or mean of ``GAINA``/``GAINB``). Used by a model whose
        normalization takes the frame noise from the header (``header_noise``); recorded otherwise.
    readnoise : float or astropy Quantity, optional
        Electrons; default: header ``RDNOISE`` (or mean of ``RDNOISEA``/``RDNOISEB``). As ``gain``.
    saturation : float or astropy Quantity, optional
        Saturation level in the image's units (a Quantity is converted to them); default: header ``SATURATE`` (or the lower of
        ``SATURATA``/``SATURATB``), in ADU: for a CCDData in electrons ``SATURATE x GAIN`` (and
        gain 1), for other units none (pass it; see :func:`kercr.detection.inputs.header_levels`).
    exclude_saturated : bool
        Ignore pixels ``>= saturation`` (when a level is known).
    mask : numpy.ndarray of bool, shape (ny, nx), optional
        True for pixels to ignore (bad pixels, bleed trails): left out of the statistics,
        probability 0, mask False.
    tile : int, optional
        Tile side in pixels (rounded up to the model's multiple); default 512 with Keras, 384
        with LiteRT (peak memory 0.48 GB on a 2k x 4k CCD with the shipped model), or the fixed
        input of a TransUNet. Tiles shrink to fit
        small frames.
    overlap : int, optional
        Margin in pixels discarded on each side of every tile; default: the receptive-field
        radius rounded up to the model's multiple (32 for a 256-pixel TransUNet, 1/8 of a smaller one).
    batch_size : int, optional
        Tiles per network call. Default: 4 with the TFLite runtimes (shared out between their two
        interpreters, one tile at a time each), 1 with Keras (on a CPU a larger batch is no faster
        and costs about 150 MB per 512-pixel tile: 1.7 GB peak at 4 against 1.2 GB at 1).
    runtime : {"auto", "keras", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8"}
        See :mod:`kercr.detection.runtimes`.
    tta : bool, optional
        Average the prediction over the four flips of each tile (see the
        :mod:`kercr.detection` docstring). Default: the model card's ``"tta"`` (on for the shipped model, whose threshold
        was chosen with it), else off.
    tta_gate : float, optional
        With ``tta``: the single-view CR probability from which a pixel's window gets the flips
        (:mod:`kercr.detection.flips`); default: the card's ``"tta_gate"``, else 0.003. ``0``
        averages every pixel over the four flips (4 x the network time; the probabilities below
        the gate then are four-view means too). Models that are not local (GroupNormalization,
        attention) or have a fixed input always flip every pixel.
    num_threads : int, optional
        CPU threads for the TFLite runtimes, default: every core this process may use. They are
        shared out between two LiteRT interpreters, each on its own tiles of a batch (on two
        cores 12-14 % faster than one interpreter's threads sharing each tile, for about 180 MB
        more memory; ``num_threads=1`` runs one). Keras: set ``tf.config.threading`` instead.
    keep_logits : bool
        Also return the logits (:attr:`DetectionResult.logit`, one more float32 map), for
        ranking pixels as :mod:`kercr.evaluation` does.
    clean : {None, "median", "mean", "idw", "network"} or bool
        Also return a cleaned image (:attr:`DetectionResult.clean`, float32, image units): the CR
        pixels replaced by the masked median, mean or inverse-distance-weighted mean of their
        non-CR, non-ignored neighbours in a 5 x 5 window grown up to 31 x 31 until it holds 8 such
        pixels (:func:`kercr.data.clean_image`); ``"network"``: the values the learned inpainting
        network predicts (:func:`kercr.detection.inpainting.inpaint`: its LiteRT file, or Keras).
        True means ``"median"``. For a ``CCDData``,
        :meth:`DetectionResult.to_ccddata` gives the ccdproc-style cleaned ``CCDData``.
    clean_dilate : int
        Grow the CR mask by this many pixels (3 x 3 square) before cleaning, to replace the faint
        rims of CR hits too; default 0. :attr:`DetectionResult.mask` itself is not grown.

    Returns
    -------
    DetectionResult

    Raises
    ------
    kercr.data.KercrDataError
        Image not 2-D, too small, all pixels ignored, or a mask of another shape; an unknown
        cleaning method or a negative ``clean_dilate``.
    kercr.detection.ModelLoadError, kercr.weights.MissingWeightsError
        Unusable model argument.
    ValueError
        Bad tile, overlap, threshold or runtime.

    Notes
    -----
    Longer than kercr's ~80-line guide for a function only by this docstring, which documents
    every keyword of the public entry point; the body (~50 lines) hands its steps to helpers.
    """
    data, header, extra_mask, description, frame = unpack(image)
    data = np.asarray(data)
    image_unit = getattr(image, "unit", None) if isinstance(image, NDData) else None
    gain, readnoise, saturation = (_plain_number(name, value, unit) for name, value, unit in (
        ("gain", gain, "electron / adu"),
        ("readnoise", readnoise, "electron"), ("saturation", saturation, image_unit or "adu")))
    for name, value, least in (("gain", gain, "> 0 (e- per image unit)"), ("readnoise", readnoise, ">= 0 (e-)")):
        if value is not None and not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                      and np.isfinite(value) and (value > 0 if name == "gain" else value >= 0)):
            raise KercrDataError(f"{name}={value!r} must be a number {least}, or None to read it from the header.")
    clean = _check_arguments(data, description, batch_size=batch_size, clean=clean, clean_dilate=clean_dilate)
    if frame is not None:  # a kercr CCDFrame already parsed its headers
        gain = gain if gain is not None else frame.gain
        readnoise = readnoise if readnoise is not None else frame.readnoise
        saturation = saturation if saturation is not None else frame.saturation
    else:  # a CCDData's header numbers are in ADU; its data may be in electrons
        levels = header_levels(header, image_unit,
                               saturation_given=saturation is not None, gain_given=gain is not None,
                               readnoise_given=readnoise is not None, source=description)
        gain, readnoise, saturation = (given if given is not None else level for given, level in
                                       zip((gain, readnoise, saturation), levels))
        if isinstance(image, (fits.ImageHDU, fits.CompImageHDU)) and gain is None and saturation is None:
            logger.warning("HDU %s has no SATURATE or GAIN card: levels kept in the file's primary header are not "
                           "seen from one extension; pass saturation= and gain=, or read the file with "
                           "kercr.data.read_ccd(path, ext=%r), which looks in both", image.name, image.name)

    loaded = load_model(model)
    runtime = resolve_runtime(runtime, loaded)
    tta = resolve_tta(tta, loaded)
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE["keras" if runtime == "keras" else "tflite"]
    # The default threshold is cut on the logits where the card or the run's metrics give it.
    if threshold is not None and (isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real)
                                  or not 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold={threshold!r} must be a probability in [0, 1] (None: the model's).")
    threshold, logit_cut = (loaded.threshold, loaded.logit_threshold) if threshold is None else (float(threshold), None)
    tile, margin = check_tiling(loaded, tile, overlap, runtime)

    ignored = _ignored_pixels(data, description, saturation=saturation if exclude_saturated else None,
                              masks=((extra_mask, f"{description}'s mask"), (mask, "mask")))

    normalized, params = normalize(data, mask=ignored, config=loaded.normalization, gain=gain, readnoise=readnoise)
    gate = resolve_tta_gate(tta_gate, loaded) if tta else None
    if gate:  # one view everywhere, then the four flips on the candidates' windows
        predict, logits = view_predictor(loaded, runtime, num_threads=num_threads)
    else:
        predict, logits = predictor(loaded, runtime, tta=tta, num_threads=num_threads)
    score, tile_shape, n_tiles = predict_tiled(
        normalized, predict, tile=tile, margin=margin, multiple=loaded.multiple,
        fixed=loaded.fixed_size is not None, batch_size=int(batch_size))
    flipped = None if gate is None else 1.0
    if gate:
        flipped = add_flips(normalized, score, predict, gate=gate_score(gate, logits=logits), tile=tile, margin=margin,
                            multiple=loaded.multiple, batch_size=int(batch_size))
    del normalized
    probability, cr_mask, logit, cut = _threshold(score, logits=logits, threshold=threshold, logit_cut=logit_cut,
                                                  ignored=ignored, keep_logits=keep_logits)
    del score
    probability[ignored] = 0.0
    cr_mask &= ~ignored
    logger.debug("%s: %d tiles of %s, %d CR pixels at p >= %.4g%s", description, n_tiles, tile_shape,
                 int(cr_mask.sum()), threshold, "" if flipped is None else f"; {flipped:.2%} of the pixels flipped")
    cleaned, ccd = None, None
    if clean is not None:
        if clean == "network":
            from kercr.detection.inpainting import inpaint  # heavy: LiteRT or Keras, only for this method

            replace = cleaning_mask(cr_mask, ignore=ignored, dilate=int(clean_dilate))
            cleaned = inpaint(data, replace, ignore=ignored, num_threads=num_threads)
        else:
            cleaned = clean_image(data, cr_mask, ignore=ignored, method=clean, dilate=int(clean_dilate))
        ccd = image if isinstance(image, CCDData) else None
    return DetectionResult(
        probability=probability, mask=cr_mask, threshold=threshold, ignored=ignored, model_name=loaded.name,
        runtime=runtime, tile=tuple(tile_shape), overlap=margin, n_tiles=n_tiles, normalization=params,
        gain=gain, readnoise=readnoise, saturation=saturation, tta=tta, tta_gate=gate, tta_fraction=flipped, logit=logit,
        logit_threshold=None if cut is None else float(cut),
        clean=cleaned, clean_method=clean, clean_dilate=int(clean_dilate) if clean is not None else 0, _ccd=ccd,
    )


def _check_arguments(data, description, *, batch_size, clean, clean_dilate):
    """KercrDataError or ValueError for an image that is not a real 2-D array of at least 2 x 2
    pixels, or a bad ``batch_size`` or cleaning option; the cleaning method (None: no cleaning).
    (The noise statistics then need about 5 x 5 finite pixels; they say so for a smaller image.)"""
    if data.ndim != 2:
        raise KercrDataError(f"{description} has shape {data.shape}; kercr.detect needs a 2-D (ny, nx) image.")
    if min(data.shape) < 2:
        raise UndetectableImageError(f"{description} has shape {data.shape}; pass an image of at least 5 x 5 pixels "
                                     "(the noise statistics need them).")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise KercrDataError(f"{description} has dtype {data.dtype}; pass real-valued pixels.")
    check_batch_size(batch_size)
    if clean is not None and clean is not False:  # checked before the network runs
        clean = check_clean_method("median" if clean is True else clean, DETECT_CLEAN_METHODS)
        if isinstance(clean_dilate, bool) or not isinstance(clean_dilate, (int, np.integer)) or clean_dilate < 0:
            raise KercrDataError(f"clean_dilate={clean_dilate!r}: pass a whole number of pixels >= 0.")
    else:
        clean = None
    return clean


def _plain_number(name: str, value, unit: str):
    """``value`` as a plain number: an astropy Quantity (``gain=2 * u.electron / u.adu``, as ccdproc takes
    it) converted to ``unit``; anything else as given (checked by the caller)."""
    if not (hasattr(value, "unit") and hasattr(value, "to_value")):
        return value
    try:
        return float(value.to_value(unit))
    except Exception:  # astropy.units.UnitConversionError, or a unit astropy cannot parse
        raise KercrDataError(f"{name}={value!r} is not in {unit} (or a unit that converts to it); pass it in "
                             f"{unit}, or as a plain number in those units.") from None


def _ignored_pixels(data, description, *, saturation, masks) -> np.ndarray:
    """The ignored pixels: non-finite, at or above ``saturation`` (None: none saturate) or in one of
    ``masks`` (``(mask or None, what)`` pairs); KercrDataError when that is every pixel."""
    ignored = ~np.isfinite(data)
    if saturation is not None and not (isinstance(saturation, numbers.Real) and not np.isnan(saturation)):
        raise KercrDataError(f"saturation={saturation!r} must be a number in image units (None: from the header, "
                             "or nothing saturates).")
    if saturation is not None:
        with np.errstate(invalid="ignore"):
            ignored |= data >= saturation
    for m, what in masks:
        if m is not None:
            m = np.asarray(m, dtype=bool)
            if m.shape != data.shape:
                raise KercrDataError(f"{what} has shape {m.shape} but the image {data.shape}; pass a mask of this image.")
            ignored |= m
    if ignored.all():
        raise UndetectableImageError(f"every pixel of {description} is ignored (non-finite, saturated or masked); "
                             "nothing to detect. Check the data, the saturation level and the mask.")
    return ignored


def _threshold(score, *, logits, threshold, logit_cut, ignored, keep_logits):
    """``(probability, mask, logit, cut)`` of the network's ``score`` map (logits when ``logits``,
    else probabilities, which are clipped to [0, 1] in place and returned as ``probability``).
    ``logit`` is ``score`` itself when ``keep_logits`` (set to float32's minimum on ``ignored``
    pixels), else None; ``cut`` is the logit threshold (None for probabilities)."""
    logit, cut = None, None
    if logits:
        # Threshold the logits: float32 probabilities round to 1.0 above a logit of ~16.6, where
        # the threshold for 0.01 % FPR of a well-trained model can lie.
        if logit_cut is not None:
            cut = logit_cut
        else:
            with np.errstate(divide="ignore"):
                cut = np.log(threshold) - np.log1p(-threshold)
        cr_mask = score >= cut
        probability = np.empty_like(score)
        np.negative(score, out=probability)
        with np.errstate(over="ignore"):
            np.exp(probability, out=probability)
        probability += 1.0
        np.reciprocal(probability, out=probability)
        if keep_logits:
            score[ignored] = np.finfo(np.float32).min  # probability 0; finite for the metrics
            logit = score
    else:
        probability = score
        np.clip(probability, 0.0, 1.0, out=probability)
        cr_mask = probability >= np.float32(threshold)
    return probability, cr_mask, logit, cut
