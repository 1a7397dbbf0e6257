"""Full-frame cosmic-ray detection: :func:`detect`.

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
4. **Flips (test-time augmentation).** With ``tta`` (the shipped model's card turns it on) every
   tile is also predicted flipped along rows, columns and both, each prediction is flipped back,
   and the four logits are averaged (TFLite probabilities are turned into logits first, as the
   validation scores the card's threshold was chosen on were): 4 x the network time. On the
   real-frame benchmark it finds more CR pixels at the same false-positive rate
   (``BENCHMARKS.md``); adding the four transposed views gains nothing more.
5. **Threshold.** ``mask = probability >= threshold`` outside ignored pixels (for Keras models the
   comparison is made on the logits, which stay distinct where float32 probabilities round to 1).

Models are given as ``"default"`` (``kercr/weights/default.keras``), a ``.keras`` file, a
training run directory (``best.keras``) or a ``keras.Model``; a registry name is refused
(an untrained architecture finds nothing). Loaded models are cached per file.

Runtimes: ``"keras"`` runs the Keras model; ``"tflite-float32"``, ``"tflite-float16"``,
``"tflite-dynamic"`` and ``"tflite-int8"`` convert the model once with
:func:`kercr.export.tflite.convert` (cached on disk under ``$KERCR_CACHE_DIR`` or
``~/.cache/kercr/tflite``, keyed by the SHA-256 of the ``.keras`` file, the variant and the
versions) and run it in the LiteRT interpreter. ``"auto"`` is the model card's ``"runtime"`` when it names one (the
shipped model's card sets it after its quality was checked with ``kercr-evaluate``), else
``"keras"``: on 2 CPU threads TFLite float32 is no faster than Keras (``benchmarks/bench_detect.py``).
The int8 variant is about 2x faster but quantizes the normalized input and every activation to
256 levels; use it after checking its quality on your data (``kercr-evaluate --runtime tflite-int8``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import weakref
from pathlib import Path

import numpy as np

from kercr.data.cleaning import check_clean_method, clean_image, dilate_mask
from kercr.data.errors import KercrDataError
from kercr.data.normalization import NormalizationConfig, NormalizationParams, normalize
from kercr.model_files import (
    NORMALIZATION_FILE,
    ModelFileError,
    find_model_file,
    load_keras_model,
    model_normalization,
    read_card,
    read_json_object,
)

__all__ = ["DetectionResult", "LoadedModel", "ModelLoadError", "RUNTIMES", "detect", "load_model",
           "receptive_field_radius", "resolve_runtime", "resolve_tta", "dilate_mask", "flip_average"]

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "keras", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8")
_TFLITE_QUANTIZE = {"tflite-float32": "none", "tflite-float16": "float16", "tflite-dynamic": "dynamic",
                    "tflite-int8": "int8"}
#: Default tile side (pixels) of the convolutional models; see benchmarks/bench_detect.py.
DEFAULT_TILE = 512
#: tiles per network call when ``detect(batch_size=None)``: TFLite shares a batch out between its
#: interpreters; Keras on a CPU is no faster with more and needs more memory (BENCHMARKS.md)
DEFAULT_BATCH_SIZE = {"tflite": 4, "keras": 1}
#: Overlap margin of fixed-input models (TransUNet, whose receptive field is the whole tile); at most 1/8 tile.
FIXED_MODEL_OVERLAP = 32
_SATURATED_PROBABILITY = 1.0 - 2.0**-24  # the largest float32 below 1 is 1 - 2**-24


class ModelLoadError(ModelFileError):
    """A model argument cannot be used for detection; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    """A detection model and everything needed to run it.

    Attributes
    ----------
    model : keras.Model
        Input (B, H, W, 1) float32 normalized image, output (B, H, W, 1) CR probability.
    name : str
        ``"default"``, the ``.keras`` path, or ``"<instance NAME>"``.
    path : pathlib.Path or None
        The ``.keras`` file (None for an instance).
    normalization : NormalizationConfig
        Constants of :func:`kercr.data.normalize`.
    normalization_source : str
        The sidecar path, ``"card"`` or ``"default"``.
    threshold : float
        Default probability threshold (model card, run metrics, or 0.5).
    threshold_source : str
        Where :attr:`threshold` came from.
    card : dict
        The model card (empty when there is none).
    multiple : int
        Input height and width must be multiples of this (pooling); the tile size for fixed models.
    fixed_size : int or None
        Input side of a fixed-input model (TransUNet), else None.
    rf_radius : int
        Receptive-field radius in pixels (an upper bound from the layers); 0 for fixed models.
    local : bool
        True when every output pixel depends only on inputs within ``rf_radius`` (no
        image-wide normalization or attention), so tiling is exact.
    logit_threshold : float or None
        The default threshold as a logit, when the card or the run's metrics give it: Keras
        models are cut there, since a threshold near 1 rounds to 1.0 as a float32 probability.
    """

    model: object
    name: str
    path: Path | None
    normalization: NormalizationConfig
    normalization_source: str
    threshold: float
    threshold_source: str
    card: dict
    multiple: int
    fixed_size: int | None
    rf_radius: int
    local: bool
    logit_threshold: float | None = None

    @property
    def default_overlap(self) -> int:
        """Overlap margin in pixels: the receptive-field radius rounded up to :attr:`multiple`."""
        if self.fixed_size is not None:
            return min(FIXED_MODEL_OVERLAP, self.fixed_size // 8)
        return _round_up(max(self.rf_radius, 1), self.multiple)


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def _layer_rf(layer, radius: float, jump: float) -> tuple[float, float]:
    """Receptive-field radius and jump (input pixels per step) after ``layer``."""
    import keras

    if isinstance(layer, keras.Model):  # a nested network (a wrapper, an ensemble member): same-size output
        return radius + receptive_field_radius(layer) * jump, jump
    if isinstance(layer, keras.layers.Conv2DTranspose):
        stride = int(layer.strides[0])
        jump /= stride
        # k = s: each output pixel sees one input pixel; + one step for the sub-pixel alignment.
        return radius + (max(0, int(layer.kernel_size[0]) - stride) + 1) * jump, jump
    if isinstance(layer, keras.layers.Conv2D):
        k, d = int(layer.kernel_size[0]), int(layer.dilation_rate[0])
        return radius + (k - 1) // 2 * d * jump + (k - 1) % 2 * jump, jump * int(layer.strides[0])
    if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        return radius + (int(layer.pool_size[0]) - 1) * jump, jump * int(layer.strides[0])
    if isinstance(layer, keras.layers.UpSampling2D):
        jump /= int(layer.size[0])
        return radius + jump, jump
    return radius, jump


def receptive_field_radius(model) -> int:
    """Receptive-field radius of a convolutional model, in input pixels (an upper bound).

    Propagates (radius, jump) through the functional graph: every convolution adds
    ``(kernel - 1) / 2`` steps at its scale, every pooling ``pool - 1`` steps (its window is
    one-sided), every upsampling one step for the sub-pixel alignment; a merge takes the largest
    radius of its inputs; a nested model (a wrapper, an ensemble member) adds its own radius. If
    the graph cannot be walked, every layer is counted in series (a looser bound).

    Parameters
    ----------
    model : keras.Model

    Returns
    -------
    int
        Pixels on each side of an output pixel that can influence it.
    """
    state: dict = {}
    try:
        for layer in model.layers:
            nodes = getattr(layer, "_inbound_nodes", [])
            parents = [t._keras_history.operation.name for t in nodes[0].input_tensors] if nodes else []
            if len(nodes) > 1:
                raise ValueError("shared layer")
            inputs = [state[p] for p in parents]
            radius = max((r for r, _ in inputs), default=0.0)
            jump = max((j for _, j in inputs), default=1.0)
            state[layer.name] = _layer_rf(layer, radius, jump)
        radius = max(state[t._keras_history.operation.name][0] for t in model.outputs)
    except (AttributeError, KeyError, IndexError, ValueError):
        radius, jump = 0.0, 1.0
        for layer in model.layers:
            radius, jump = _layer_rf(layer, radius, jump)
    return int(math.ceil(radius))


def _is_local(model) -> bool:
    import keras

    global_layers = (keras.layers.GroupNormalization, keras.layers.LayerNormalization,
                     keras.layers.MultiHeadAttention)
    return model.input_shape[1] is None and not any(isinstance(layer, global_layers) for layer in _all_layers(model))


def _all_layers(model):
    """The layers of ``model`` and of every model nested in it."""
    import keras

    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _describe(model, *, name, path, card) -> LoadedModel:
    from kercr.models import input_multiple

    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[-1] != 1:
        raise ModelLoadError(f"{name}: input shape {shape} is not (batch, H, W, 1); kercr.detect runs "
                             "single-input, one-channel kercr models.")
    found = model_normalization(path, card, error=ModelLoadError)
    if found is not None:
        norm, norm_source = found
    else:
        norm, norm_source = NormalizationConfig(), "default"
        logger.warning("%s: no %s beside the model and none in its card; normalizing with the default "
                       "NormalizationConfig(). If the model was trained with other constants, put its "
                       "normalization.json beside the .keras file.", name, NORMALIZATION_FILE)
    threshold, threshold_source, logit_threshold = 0.5, "none (0.5)", None
    if "threshold" in card:
        threshold, threshold_source = float(card["threshold"]), "card"
        logit_threshold = card.get("logit_threshold")
    elif path is not None and (path.parent / "metrics.json").is_file():
        metrics = read_json_object(path.parent / "metrics.json", "run metrics file", error=ModelLoadError)
        if "threshold_at_fpr_1e-4" in metrics:
            threshold = float(metrics["threshold_at_fpr_1e-4"])
            threshold_source = f"{path.parent / 'metrics.json'} threshold_at_fpr_1e-4"
            logit_threshold = metrics.get("logit_threshold_at_fpr_1e-4")
    if not 0.0 <= threshold <= 1.0 or not math.isfinite(threshold):
        raise ModelLoadError(f"{name}: default threshold {threshold} ({threshold_source}) is not in [0, 1].")
    if logit_threshold is not None:
        try:
            logit_threshold = float(logit_threshold)
        except (TypeError, ValueError):
            logit_threshold = math.nan
        if not math.isfinite(logit_threshold):
            raise ModelLoadError(f"{name}: the logit threshold beside the default threshold ({threshold_source}) is "
                                 "not a finite number; fix or remove it (the probability threshold is then used).")
    if threshold >= _SATURATED_PROBABILITY:
        if logit_threshold is not None:
            advice = (f"Keras detection cuts at its logit threshold {logit_threshold:.4g} instead; TFLite runtimes "
                      "flag almost nothing unless given a threshold below 1.")
        else:
            advice = "It would flag almost nothing: pass a threshold below 1 (e.g. 0.5)."
        logger.warning("%s: its default threshold (%s) is %.9g, which float32 probabilities round to 1 (the model "
                       "scores its validation non-CR pixels that high). %s", name, threshold_source, threshold, advice)
    fixed = shape[1]
    return LoadedModel(
        model=model, name=name, path=path, normalization=norm, normalization_source=norm_source,
        threshold=threshold, threshold_source=threshold_source, card=card,
        multiple=int(input_multiple(model)), fixed_size=None if fixed is None else int(fixed),
        rf_radius=0 if fixed is not None else receptive_field_radius(model), local=_is_local(model),
        logit_threshold=logit_threshold,
    )


def _file_stamp(path: Path):
    """``(mtime_ns, size)`` of a file, or None when there is none: part of the model cache's key."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _load_file(path: str, stamps: tuple, is_default: bool) -> LoadedModel:
    """Load and describe a model file; ``stamps`` (of it and the files beside it) keys the cache."""
    p = Path(path)
    model = load_keras_model(p, error=ModelLoadError)
    card = read_card(p, error=ModelLoadError)  # default.json beside default.keras
    name = "default" if is_default else str(p)
    logger.info("loaded model %s", name)
    return _describe(model, name=name, path=p, card=card)


_INSTANCES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def load_model(model="default") -> LoadedModel:
    """Resolve and load a detection model (cached).

    Parameters
    ----------
    model : str, path-like, keras.Model or LoadedModel
        ``"default"`` (``kercr/weights/default.keras``), a ``.keras`` file, a directory holding
        ``best.keras`` (a kercr-train run) or ``model.keras``, or a ``keras.Model`` instance.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelLoadError
        A registry name (untrained), a missing or unreadable file, a bad sidecar.
    kercr.weights.MissingWeightsError
        ``"default"`` when no default model is installed.
    """
    if isinstance(model, LoadedModel):
        return model
    import keras

    if isinstance(model, keras.Model):
        if model not in _INSTANCES:
            _INSTANCES[model] = _describe(model, name=f"<instance {model.name}>", path=None, card={})
        return _INSTANCES[model]
    if not isinstance(model, (str, os.PathLike)):
        raise ModelLoadError(f"model={model!r}: pass 'default', a .keras file, a run directory or a keras.Model.")
    is_default = str(model) == "default"
    if is_default:
        from kercr.weights import default_model_path

        path = default_model_path()
    else:
        path = Path(model).expanduser()
        if not path.exists():
            from kercr.models import list_models

            if str(model) in list_models():
                raise ModelLoadError(
                    f"model={str(model)!r} is a registry architecture with random weights, not a trained "
                    "model; it would find nothing. Pass 'default', a trained .keras file or a kercr-train "
                    "run directory (or train one: kercr-train).")
            raise ModelLoadError(f"model {str(model)!r} does not exist; pass 'default', a .keras file or a "
                                 "kercr-train run directory.")
        path = find_model_file(path, error=ModelLoadError)
    path = path.resolve()
    # The card, the normalization sidecar and a run's metrics.json are read with the model: a change
    # to any of them loads it again.
    beside = (path, path.with_suffix(".json"), path.parent / NORMALIZATION_FILE, path.parent / "metrics.json")
    return _load_file(str(path), tuple(_file_stamp(f) for f in beside), is_default)


# ---------------------------------------------------------------------------------------------
# Runtimes
# ---------------------------------------------------------------------------------------------
def _litert_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


_warned_no_litert: list = []  # the fallback to Keras is logged once per process


def resolve_runtime(runtime: str, loaded: LoadedModel) -> str:
    """The concrete runtime ``runtime`` means for ``loaded`` (``"auto"`` resolved)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}; choose one of: {', '.join(RUNTIMES)}.")
    if runtime == "auto":
        # The card may name a runtime validated for this model (e.g. tflite-int8 after kercr-evaluate
        # showed no quality loss); otherwise Keras: exact, and TFLite float32 is not faster on CPU.
        wanted = loaded.card.get("runtime")
        if wanted in RUNTIMES and wanted != "auto" and (not wanted.startswith("tflite") or _litert_available()):
            return wanted
        if wanted in RUNTIMES and wanted.startswith("tflite") and not _warned_no_litert:
            _warned_no_litert.append(True)
            logger.warning("%s: its card asks for runtime %r, but the LiteRT interpreter is not installed; running "
                           "Keras instead (nearly the same masks, about 3x slower on a CPU). pip install ai-edge-litert "
                           "(or kercr[export]) for the fast path.", loaded.name, wanted)
        return "keras"
    if runtime.startswith("tflite") and not _litert_available():
        raise ValueError(f"runtime={runtime!r} needs the LiteRT interpreter: pip install ai-edge-litert "
                         "(or kercr[export]), or use runtime='keras'.")
    return runtime


def _cache_dir() -> Path:
    return Path(os.environ.get("KERCR_CACHE_DIR") or Path.home() / ".cache" / "kercr") / "tflite"


def _convert(loaded: LoadedModel, quantize: str) -> bytes:
    from kercr.export.tflite import convert

    tile = loaded.fixed_size or 256
    representative = None
    if quantize == "int8":
        # Same calibration set as kercr-export's defaults: 16 synthetic 256 x 256 patches, seed 0.
        from kercr.export.parity import normalized_patches, synthetic_patches

        representative = normalized_patches(synthetic_patches(16, tile=tile, seed=0).image_adu, loaded.normalization)
    logger.info("converting %s to TFLite (%s); done once, then cached", loaded.name, quantize)
    return convert(loaded.model, tile=tile, quantize=quantize, representative=representative)


_TFLITE_BYTES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tflite_model(loaded: LoadedModel, runtime: str):
    """The flatbuffer (bytes) or cached ``.tflite`` path of ``loaded`` for ``runtime``."""
    quantize = _TFLITE_QUANTIZE[runtime]
    if loaded.path is None:  # an instance: convert in memory, once per instance and variant
        per_model = _TFLITE_BYTES.setdefault(loaded.model, {})
        if quantize not in per_model:
            per_model[quantize] = _convert(loaded, quantize)
        return per_model[quantize]
    import keras

    from kercr._version import __version__
    from kercr.export.exporter import file_sha256

    key = hashlib.sha256(json.dumps([file_sha256(loaded.path), quantize, loaded.normalization.to_dict(), __version__,
                                     keras.__version__]).encode()).hexdigest()[:20]
    cached = _cache_dir() / f"{loaded.path.stem}-{key}-{runtime[7:]}.tflite"
    if cached.is_file():
        return cached
    flatbuffer = _convert(loaded, quantize)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.name}.{os.getpid()}.partial")
        partial.write_bytes(flatbuffer)
        os.replace(partial, cached)  # atomic: a concurrent reader never sees half a file
        logger.info("cached the TFLite model in %s", cached)
        return cached
    except OSError as err:
        logger.warning("cannot cache the TFLite model in %s (%s); set KERCR_CACHE_DIR to a writable "
                       "directory to avoid converting again", cached.parent, err)
        return flatbuffer


@functools.lru_cache(maxsize=8)
def _runner_from_path(path: str, num_threads):
    from kercr.export.tflite import ParallelTFLiteRunner

    return ParallelTFLiteRunner(path, num_threads=num_threads)


def _predictor(loaded: LoadedModel, runtime: str, num_threads):
    """``(predict, returns_logits)``: predict maps (B, H, W) float32 normalized images to (B, H, W)
    float32 CR logits (Keras models with a logit layer) or probabilities (TFLite, other models)."""
    if runtime == "keras":
        from kercr.models import logit_model

        scorer = _logit_models.get(loaded.model)
        if scorer is None:
            scorer = _logit_models[loaded.model] = logit_model(loaded.model) or loaded.model

        def predict(x):
            return np.asarray(scorer.predict_on_batch(x[..., None]), dtype=np.float32)[..., 0]

        return predict, scorer is not loaded.model
    source = _tflite_model(loaded, runtime)
    if isinstance(source, Path):
        runner = _runner_from_path(str(source), num_threads)
    else:
        from kercr.export.tflite import ParallelTFLiteRunner

        runner = ParallelTFLiteRunner(source, num_threads=num_threads)
    return runner.predict, False


_logit_models: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

FLIP_AXES = ((), (1,), (2,), (1, 2))  # the four flips of a (B, H, W[, C]) batch: none, rows, columns, both


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
    total = None
    for axes in FLIP_AXES:
        p = np.asarray(predict(np.ascontiguousarray(np.flip(x, axes)) if axes else x), dtype=np.float32)
        p = np.flip(p, axes) if axes else p
        if total is None:
            total = p.copy()
        else:
            total += p
    total /= np.float32(len(FLIP_AXES))
    return total


# Probabilities are clipped to [floor, 1 - floor] before they become logits: half the int8 output
# step (a probability of exactly 0 or 1 would otherwise outweigh the other three flips).
_PROBABILITY_FLOOR = {"tflite-int8": 1.0 / 512}


def _as_logits(predict, floor: float):
    """``predict`` (probabilities) turned into logits, probabilities clipped to ``[floor, 1 - floor]``."""
    def logits(x):
        p = np.clip(np.asarray(predict(x), dtype=np.float32), floor, 1.0 - floor)
        return (np.log(p) - np.log1p(-p)).astype(np.float32)

    return logits


def resolve_tta(tta, loaded: LoadedModel) -> bool:
    """Whether flips run for ``loaded``: ``tta`` itself, or when None the model card's ``"tta"`` (False without one)."""
    if tta is None:
        return bool(loaded.card.get("tta", False))
    if not isinstance(tta, (bool, np.bool_)):
        raise ValueError(f"tta={tta!r}; pass True, False or None (None: the model card's choice).")
    return bool(tta)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def _header_number(header, key, pair=(), combine=np.mean):
    if header is None:
        return None
    for k in (key,):
        v = header.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            return float(v)
    vals = [float(header[k]) for k in pair if isinstance(header.get(k), (int, float))
            and not isinstance(header.get(k), bool) and header[k] > 0]
    return float(combine(vals)) if vals else None


def _unpack(image):
    """(data, header, extra ignore mask or None, description, CCDFrame or None) of a supported input."""
    from astropy.io import fits

    from kercr.data.fits_io import CCDFrame

    if isinstance(image, CCDFrame):
        return image.data, image.header, None, f"{image.path}[{image.extname}]", image
    if isinstance(image, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        if image.data is None:
            raise KercrDataError(f"HDU {image.name!r} holds no image data; pass an image extension.")
        return image.data, image.header, None, f"HDU {image.name}", None
    try:
        from astropy.nddata import CCDData
    except ImportError:  # pragma: no cover
        CCDData = ()
    if CCDData and isinstance(image, CCDData):
        header = fits.Header(image.meta) if image.meta else None
        mask = None if image.mask is None else np.asarray(image.mask, dtype=bool)
        return image.data, header, mask, "CCDData", None
    if isinstance(image, (str, os.PathLike)):
        raise KercrDataError(f"kercr.detect got the file name {str(image)!r}, not an image: read it first, e.g. "
                             f"kercr.detect(kercr.data.read_ccd({str(image)!r})) for its first image (ext=NAME "
                             "for another), or "
                             "run kercr-detect on the file (every CCD extension).")
    if isinstance(image, fits.HDUList):
        raise KercrDataError("kercr.detect got a whole FITS file (HDUList): pass one image extension, e.g. "
                             "hdul[1] or hdul['N4'] (kercr-detect does every CCD extension).")
    return image, None, None, "image", None


@dataclasses.dataclass(frozen=True, eq=False)
class DetectionResult:
    """CR detection of one frame.

    Attributes
    ----------
    probability : numpy.ndarray, shape (ny, nx), float32
        CR probability in [0, 1]; 0 on ignored pixels.
    mask : numpy.ndarray, shape (ny, nx), bool
        ``probability >= threshold``; False on ignored pixels.
    threshold : float
        Probability threshold used.
    ignored : numpy.ndarray, shape (ny, nx), bool
        Pixels excluded: non-finite, saturated (``exclude_saturated``) and the caller's mask.
    model_name : str
        ``"default"``, the ``.keras`` path, or ``"<instance NAME>"``.
    runtime : str
        The runtime that ran (``"auto"`` resolved).
    tta : bool
        Whether the prediction is the average over the four flips of each tile.
    tile : tuple of int
        Tile shape (height, width) in pixels actually predicted.
    overlap : int
        Margin in pixels discarded on each side of every tile.
    n_tiles : int
        Number of tiles predicted.
    normalization : NormalizationParams
        Constants and the frame's measured sky and noise (image units).
    gain, readnoise, saturation : float or None
        e-/ADU, electrons, image units: the values used (argument, else header, else None).
    logit_threshold : float or None
        The logit the mask was cut at, when the runtime gives logits (else None).
    logit : numpy.ndarray or None
        float32 logits of :attr:`probability` (ignored pixels: the lowest float32), with ``keep_logits=True`` and
        a runtime that gives logits (Keras, or any with ``tta``); else None. They rank confident
        pixels that the float32 probability rounds to 1.0 alike.
    clean : numpy.ndarray or None
        With ``detect(..., clean=METHOD)``: the image as float32 in its own units, the pixels of
        ``dilated_mask(clean_dilate)`` replaced by :func:`kercr.data.clean_image` (every other
        pixel, NaN and ignored ones included, as the input bit for bit); else None.
    clean_method : str or None
        The cleaning method (``"median"``, ``"mean"``, ``"idw"``), or None.
    clean_dilate : int
        Pixels the mask was grown by (3 x 3 square) before cleaning.
    """

    probability: np.ndarray
    mask: np.ndarray
    threshold: float
    ignored: np.ndarray
    model_name: str
    runtime: str
    tile: tuple
    overlap: int
    n_tiles: int
    normalization: NormalizationParams
    gain: float | None = None
    readnoise: float | None = None
    saturation: float | None = None
    tta: bool = False
    logit_threshold: float | None = None
    logit: np.ndarray | None = None
    clean: np.ndarray | None = None
    clean_method: str | None = None
    clean_dilate: int = 0
    _ccd: object = dataclasses.field(default=None, repr=False)  # the CCDData detected, for to_ccddata

    @property
    def n_cr_pixels(self) -> int:
        """Number of flagged pixels."""
        return int(np.count_nonzero(self.mask))

    def dilated_mask(self, iterations: int = 1) -> np.ndarray:
        """:attr:`mask` grown by ``iterations`` pixels (3 x 3 structuring element), never into ignored pixels."""
        return dilate_mask(self.mask, iterations) & ~self.ignored

    def to_ccddata(self):
        """The cleaned frame as a new ``CCDData``, as ccdproc's ``cosmicray_lacosmic`` returns it.

        Needs ``kercr.detect(ccd, clean=METHOD)`` on an ``astropy.nddata.CCDData``.

        Returns
        -------
        astropy.nddata.CCDData
            A copy of the input: ``data`` is :attr:`clean` (float32, the input's unit); ``mask``
            is the input's mask OR the replaced pixels (``dilated_mask(clean_dilate)``); the
            uncertainty, WCS and flags are the input's (the uncertainty of replaced pixels is not
            recomputed: the mask flags them); the header gains ``KCRVER`` (kercr version),
            ``KCRMODEL``, ``KCRTHR`` (threshold), ``KCRCLEAN`` (method), ``KCRCDIL`` (dilation,
            pixels) and ``KCRNCLN`` (pixels replaced). The input is not modified.

        Raises
        ------
        ValueError
            No cleaned image (``clean=None``), or the input was not a ``CCDData``.
        """
        if self.clean is None:
            raise ValueError("this detection has no cleaned image; run kercr.detect(ccd, clean='median') "
                             "(or 'mean', 'idw') first.")
        if self._ccd is None:
            raise ValueError("to_ccddata needs the detection of an astropy CCDData; use result.clean for other "
                             "inputs, or detect CCDData(image, unit=...) instead.")
        from astropy.io import fits

        from kercr._version import __version__

        out = self._ccd.copy()
        out.data = self.clean.copy()
        replaced = self.dilated_mask(self.clean_dilate)
        out.mask = replaced if out.mask is None else np.asarray(out.mask, dtype=bool) | replaced
        cards = {
            "KCRVER": (__version__, "kercr version"),
            "KCRMODEL": (str(self.model_name)[-60:], "kercr model"),
            "KCRTHR": (float(self.threshold), "CR probability threshold"),
            "KCRCLEAN": (self.clean_method, "kercr CR cleaning method"),
            "KCRCDIL": (int(self.clean_dilate), "CR mask dilation before cleaning, pixels"),
            "KCRNCLN": (int(replaced.sum()), "pixels replaced by cleaning"),
        }
        is_header = isinstance(out.meta, fits.Header)
        for key, (value, comment) in cards.items():
            out.meta[key] = (value, comment) if is_header else value
        return out


# ---------------------------------------------------------------------------------------------
# Tiling
# ---------------------------------------------------------------------------------------------
def _axis_plan(n: int, tile: int, margin: int, multiple: int, fixed: bool):
    """Tiles along one axis: (number, core, tile size, pad before, pad after)."""
    core_max = tile - 2 * margin
    count = max(1, math.ceil(n / core_max))
    # Spread the frame evenly over the tiles instead of padding the last one with reflections.
    core = core_max if fixed else min(core_max, _round_up(math.ceil(n / count), multiple))
    size = core + 2 * margin
    return count, core, size, margin, count * core + margin - n


def _predict_tiled(normalized, predict, *, tile, margin, multiple, fixed, batch_size):
    ny, nx = normalized.shape
    cy, core_y, ty, pby, pay = _axis_plan(ny, tile, margin, multiple, fixed)
    cx, core_x, tx, pbx, pax = _axis_plan(nx, tile, margin, multiple, fixed)
    padded = np.pad(normalized, ((pby, pay), (pbx, pax)), mode="reflect")
    out = np.empty((cy * core_y, cx * core_x), np.float32)
    origins = [(i * core_y, j * core_x) for i in range(cy) for j in range(cx)]
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        batch = np.stack([padded[y:y + ty, x:x + tx] for y, x in chunk])
        prob = predict(batch)
        for (y, x), p in zip(chunk, prob):
            out[y:y + core_y, x:x + core_x] = p[margin:margin + core_y, margin:margin + core_x]
    return out[:ny, :nx], (ty, tx), len(origins)


def _check_tiling(loaded: LoadedModel, tile, overlap):
    multiple = loaded.multiple
    if loaded.fixed_size is not None:
        if tile is not None and int(tile) != loaded.fixed_size:
            raise ValueError(f"{loaded.name} takes a fixed {loaded.fixed_size} x {loaded.fixed_size} input; "
                             f"tile={tile} is not possible. Leave tile=None.")
        tile = loaded.fixed_size
        margin = loaded.default_overlap if overlap is None else int(overlap)
        if not 0 <= margin < tile // 2:
            raise ValueError(f"overlap={overlap} must be in [0, {tile // 2}) pixels for a {tile}-pixel tile.")
        return tile, margin
    margin = loaded.default_overlap if overlap is None else _round_up(int(overlap), multiple)
    if overlap is not None and int(overlap) < 0:
        raise ValueError(f"overlap={overlap} must be >= 0 pixels.")
    if overlap is not None and margin < loaded.rf_radius:
        logger.warning("overlap %d px is below the receptive-field radius %d px of %s: tiles will show seams.",
                       margin, loaded.rf_radius, loaded.name)
    tile = DEFAULT_TILE if tile is None else _round_up(int(tile), multiple)
    if tile - 2 * margin < multiple:
        raise ValueError(f"tile={tile} leaves no core after an overlap of {margin} px on each side; pass "
                         f"tile >= {2 * margin + multiple} or a smaller overlap.")
    return tile, margin


# ---------------------------------------------------------------------------------------------
# detect
# ---------------------------------------------------------------------------------------------
def detect(image, *, model="default", threshold=None, gain=None, readnoise=None, saturation=None,
           exclude_saturated=True, mask=None, tile=None, overlap=None, batch_size=None, runtime="auto",
           tta=None, num_threads=None, keep_logits=False, clean=None, clean_dilate=0) -> DetectionResult:
    """Find cosmic rays in a CCD frame of any size.

    Parameters
    ----------
    image : numpy.ndarray, astropy.nddata.CCDData, astropy.io.fits ImageHDU/PrimaryHDU/CompImageHDU or CCDFrame
        Shape (ny, nx), any real dtype, in ADU or electrons, with or without sky. Not modified.
        NaN/inf pixels are allowed (ignored). A ``CCDData`` mask and header and an HDU's header
        are used.
    model : str, path-like, keras.Model or LoadedModel
        ``"default"``, a ``.keras`` file, a kercr-train run directory, or a model instance (see
        :func:`load_model`). Registry names are refused (untrained).
    threshold : float, optional
        Probability threshold; default: the model card's ``threshold`` (chosen on validation
        for 0.01 % FPR), else the run's ``metrics.json`` ``threshold_at_fpr_1e-4``, else 0.5.
    gain : float, optional
        e-/ADU; default: header ``GAIN`` (or mean of ``GAINA``/``GAINB``). Recorded only: the
        normalization is in noise units and needs no gain.
    readnoise : float, optional
        Electrons; default: header ``RDNOISE`` (or mean of ``RDNOISEA``/``RDNOISEB``). Recorded only.
    saturation : float, optional
        Saturation level in the image's units; default: header ``SATURATE`` (or the lower of
        ``SATURATA``/``SATURATB``).
    exclude_saturated : bool
        Ignore pixels ``>= saturation`` (when a level is known).
    mask : numpy.ndarray of bool, shape (ny, nx), optional
        True for pixels to ignore (bad pixels, bleed trails): left out of the statistics,
        probability 0, mask False.
    tile : int, optional
        Tile side in pixels (rounded up to the model's multiple); default 512 (peak memory
        < 1.5 GB on a 2k x 4k CCD), or the fixed input of a TransUNet. Tiles shrink to fit
        small frames.
    overlap : int, optional
        Margin in pixels discarded on each side of every tile; default: the receptive-field
        radius rounded up to the model's multiple (32 for a 256-pixel TransUNet, 1/8 of a smaller one).
    batch_size : int, optional
        Tiles per network call. Default: 4 with the TFLite runtimes (shared out between their two
        interpreters, one tile at a time each), 1 with Keras (on a CPU a larger batch is no faster
        and costs about 150 MB per 512-pixel tile: 1.7 GB peak at 4 against 1.2 GB at 1).
    runtime : {"auto", "keras", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8"}
        See the module docstring.
    tta : bool, optional
        Average the prediction over the four flips of each tile (4 x the time; see the module
        docstring). Default: the model card's ``"tta"`` (on for the shipped model, whose threshold
        was chosen with it), else off.
    num_threads : int, optional
        CPU threads for the TFLite runtimes, default: every core this process may use. They are
        shared out between two LiteRT interpreters, each on its own tiles of a batch (on two
        cores 12-14 % faster than one interpreter's threads sharing each tile, for about 180 MB
        more memory; ``num_threads=1`` runs one). Keras: set ``tf.config.threading`` instead.
    keep_logits : bool
        Also return the logits (:attr:`DetectionResult.logit`, one more float32 map), for
        ranking pixels as :mod:`kercr.evaluation` does.
    clean : {None, "median", "mean", "idw"} or bool
        Also return a cleaned image (:attr:`DetectionResult.clean`, float32, image units): the CR
        pixels replaced by the masked median, mean or inverse-distance-weighted mean of their
        non-CR, non-ignored neighbours in a 5 x 5 window grown up to 31 x 31 until it holds 8 such
        pixels (:func:`kercr.data.clean_image`). True means ``"median"``. For a ``CCDData``,
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
    ModelLoadError, kercr.weights.MissingWeightsError
        Unusable model argument.
    ValueError
        Bad tile, overlap, threshold or runtime.
    """
    data, header, extra_mask, description, frame = _unpack(image)
    data = np.asarray(data)
    if data.ndim != 2:
        raise KercrDataError(f"{description} has shape {data.shape}; kercr.detect needs a 2-D (ny, nx) image.")
    if min(data.shape) < 2:
        raise KercrDataError(f"{description} has shape {data.shape}; pass an image of at least 2 x 2 pixels.")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise KercrDataError(f"{description} has dtype {data.dtype}; pass real-valued pixels.")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (or None: 4 with TFLite, 1 with Keras).")
    if clean is not None and clean is not False:  # checked before the network runs
        clean = check_clean_method("median" if clean is True else clean)
        if isinstance(clean_dilate, bool) or not isinstance(clean_dilate, (int, np.integer)) or clean_dilate < 0:
            raise KercrDataError(f"clean_dilate={clean_dilate!r}: pass a number of pixels >= 0.")
    else:
        clean = None
    if frame is not None:  # a kercr CCDFrame already parsed its headers
        gain = gain if gain is not None else frame.gain
        readnoise = readnoise if readnoise is not None else frame.readnoise
        saturation = saturation if saturation is not None else frame.saturation
    else:
        gain = gain if gain is not None else _header_number(header, "GAIN", ("GAINA", "GAINB"))
        readnoise = readnoise if readnoise is not None else _header_number(header, "RDNOISE", ("RDNOISEA", "RDNOISEB"))
        saturation = saturation if saturation is not None else _header_number(header, "SATURATE",
                                                                               ("SATURATA", "SATURATB"), min)

    loaded = load_model(model)
    runtime = resolve_runtime(runtime, loaded)
    tta = resolve_tta(tta, loaded)
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE["keras" if runtime == "keras" else "tflite"]
    # The default threshold is cut on the logits where the card or the run's metrics give it.
    threshold, logit_cut = (loaded.threshold, loaded.logit_threshold) if threshold is None else (float(threshold), None)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be a probability in [0, 1].")
    tile, margin = _check_tiling(loaded, tile, overlap)

    ignored = ~np.isfinite(data)
    if exclude_saturated and saturation is not None:
        with np.errstate(invalid="ignore"):
            ignored |= data >= saturation
    for m, what in ((extra_mask, "CCDData mask"), (mask, "mask")):
        if m is not None:
            m = np.asarray(m, dtype=bool)
            if m.shape != data.shape:
                raise KercrDataError(f"{what} has shape {m.shape} but the image {data.shape}; pass a mask of this image.")
            ignored |= m
    if ignored.all():
        raise KercrDataError(f"every pixel of {description} is ignored (non-finite, saturated or masked); "
                             "nothing to detect. Check the data, the saturation level and the mask.")

    normalized, params = normalize(data, mask=ignored, config=loaded.normalization)
    predict, logits = _predictor(loaded, runtime, num_threads)
    if tta:
        if not logits:  # average TFLite probabilities as logits, as the card's threshold was chosen
            predict, logits = _as_logits(predict, _PROBABILITY_FLOOR.get(runtime, 1e-7)), True
        predict = functools.partial(flip_average, predict)
    score, tile_shape, n_tiles = _predict_tiled(
        normalized, predict, tile=tile, margin=margin, multiple=loaded.multiple,
        fixed=loaded.fixed_size is not None, batch_size=int(batch_size))
    del normalized
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
        del score
    else:
        probability = score
        np.clip(probability, 0.0, 1.0, out=probability)
        cr_mask = probability >= np.float32(threshold)
    probability[ignored] = 0.0
    cr_mask &= ~ignored
    logger.debug("%s: %d tiles of %s, %d CR pixels at p >= %.4g", description, n_tiles, tile_shape,
                 int(cr_mask.sum()), threshold)
    cleaned, ccd = None, None
    if clean is not None:
        cleaned = clean_image(data, cr_mask, ignore=ignored, method=clean, dilate=int(clean_dilate))
        from astropy.nddata import CCDData

        ccd = image if isinstance(image, CCDData) else None
    return DetectionResult(
        probability=probability, mask=cr_mask, threshold=threshold, ignored=ignored, model_name=loaded.name,
        runtime=runtime, tile=tuple(tile_shape), overlap=margin, n_tiles=n_tiles, normalization=params,
        gain=gain, readnoise=readnoise, saturation=saturation, tta=tta, logit=logit,
        logit_threshold=None if cut is None else float(cut),
        clean=cleaned, clean_method=clean, clean_dilate=int(clean_dilate) if clean is not None else 0, _ccd=ccd,
    )
