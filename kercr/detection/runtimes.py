"""Runtimes that run a detection model on a batch of normalized tiles.

``"keras"`` runs the Keras model; ``"tflite-float32"``, ``"tflite-float16"``,
``"tflite-dynamic"`` and ``"tflite-int8"`` run a TFLite file in the LiteRT interpreter
(:mod:`kercr.export.litert`, no TensorFlow). The TFLite file is the model's prebuilt one when
its card lists it for that runtime (the shipped model's int8 file), else the model is converted
once with :func:`kercr.export.tflite.convert` (TensorFlow) and cached on disk under
``$KERCR_CACHE_DIR`` or ``~/.cache/kercr/tflite``, keyed by the SHA-256 of the ``.keras`` file,
the variant and the versions. ``"auto"`` is the card's ``"runtime"`` when it names one, else
``"keras"``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import weakref
from pathlib import Path

import numpy as np

from kercr._version import __version__
from kercr.config import RUNTIMES
from kercr.data.augment import flip_average
from kercr.detection.flips import DEFAULT_TTA_GATE
from kercr.detection.loading import LoadedModel, ModelLoadError
from kercr.export.litert import ParallelTFLiteRunner, TFLiteRunner
from kercr.model_files import file_sha256

__all__ = ["DEFAULT_BATCH_SIZE", "RUNTIMES", "predictor", "resolve_runtime", "resolve_tta", "resolve_tta_gate",
           "view_predictor"]

logger = logging.getLogger(__name__)

_TFLITE_QUANTIZE = {"tflite-float32": "none", "tflite-float16": "float16", "tflite-dynamic": "dynamic",
                    "tflite-int8": "int8"}
#: tiles per network call when ``detect(batch_size=None)``: TFLite shares a batch out between its
#: interpreters; Keras on a CPU is no faster with more and needs more memory (BENCHMARKS.md)
DEFAULT_BATCH_SIZE = {"tflite": 4, "keras": 1}
# Probabilities are clipped to [floor, 1 - floor] before they become logits: half the int8 output
# step (a probability of exactly 0 or 1 would otherwise outweigh the other three flips).
_PROBABILITY_FLOOR = {"tflite-int8": 1.0 / 512}


def litert_available() -> bool:
    """Whether the LiteRT interpreter (``ai-edge-litert``) can be imported."""
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
        if wanted in RUNTIMES and wanted != "auto" and (not wanted.startswith("tflite") or litert_available()):
            return wanted
        if wanted in RUNTIMES and wanted.startswith("tflite") and not _warned_no_litert:
            _warned_no_litert.append(True)
            logger.warning("%s: its card asks for runtime %r, but the LiteRT interpreter is not installed; running "
                           "Keras instead (nearly the same masks, about 3x slower on a CPU). pip install ai-edge-litert "
                           "for the fast path.", loaded.name, wanted)
        return "keras"
    if runtime.startswith("tflite") and not litert_available():
        raise ValueError(f"runtime={runtime!r} needs the LiteRT interpreter: pip install ai-edge-litert "
                         "or use runtime='keras'.")
    # A detection-only install (no TensorFlow) runs prebuilt LiteRT files only: say so, not ModuleNotFoundError.
    if (runtime == "keras" or runtime not in loaded.prebuilt) and importlib.util.find_spec("tensorflow") is None:
        available = ", ".join(sorted(loaded.prebuilt)) or "none"
        why = "Keras" if runtime == "keras" else "to convert the model to TFLite"
        raise ValueError(f"runtime={runtime!r} for {loaded.name} needs TensorFlow ({why}), which this install does "
                         f"not have; its prebuilt runtimes: {available}. Leave runtime='auto', or install the full "
                         "kercr (README, 'A detection-only install').")
    return runtime


def resolve_tta(tta, loaded: LoadedModel) -> bool:
    """Whether flips run for ``loaded``: ``tta`` itself, or when None the model card's ``"tta"`` (False without one)."""
    if tta is None:
        return bool(loaded.card.get("tta", False))
    if not isinstance(tta, (bool, np.bool_)):
        raise ValueError(f"tta={tta!r}; pass True, False or None (None: the model card's choice).")
    return bool(tta)


def _cache_dir() -> Path:
    return Path(os.environ.get("KERCR_CACHE_DIR") or Path.home() / ".cache" / "kercr") / "tflite"


def convert_for_runtime(loaded: LoadedModel, quantize: str) -> bytes:
    """The TFLite flatbuffer of ``loaded`` in one precision, as kercr-export's defaults make it.

    int8 is calibrated on 16 synthetic 256 x 256 patches, seed 0 (the same set as kercr-export).
    Needs TensorFlow. ``kercr.weights.ship`` prebuilds the shipped model's file with this function.
    """
    from kercr.export.parity import normalized_patches, synthetic_patches  # heavy: TensorFlow
    from kercr.export.tflite import convert  # heavy: TensorFlow

    tile = loaded.fixed_size or 256
    representative = None
    if quantize == "int8":
        representative = normalized_patches(synthetic_patches(16, tile=tile, seed=0).image_adu, loaded.normalization)
    logger.info("converting %s to TFLite (%s); done once, then cached", loaded.name, quantize)
    return convert(loaded.model, tile=tile, quantize=quantize, representative=representative)


_TFLITE_BYTES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tflite_model(loaded: LoadedModel, runtime: str):
    """The flatbuffer (bytes) or ``.tflite`` path (prebuilt or cached) of ``loaded`` for ``runtime``."""
    if runtime in loaded.prebuilt:
        return loaded.prebuilt[runtime]
    quantize = _TFLITE_QUANTIZE[runtime]
    if loaded.path is None:  # an instance: convert in memory, once per instance and variant
        per_model = _TFLITE_BYTES.setdefault(loaded.model, {})
        if quantize not in per_model:
            per_model[quantize] = convert_for_runtime(loaded, quantize)
        return per_model[quantize]
    import keras  # heavy; converting needs TensorFlow anyway

    key = hashlib.sha256(json.dumps([file_sha256(loaded.path), quantize, loaded.normalization.to_dict(), __version__,
                                     keras.__version__]).encode()).hexdigest()[:20]
    cached = _cache_dir() / f"{loaded.path.stem}-{key}-{runtime[7:]}.tflite"
    if cached.is_file():
        return cached
    flatbuffer = convert_for_runtime(loaded, quantize)
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


def prepare_runtime(loaded: LoadedModel, runtime: str) -> None:
    """Make ``loaded``'s file for ``runtime`` ready once, here, before a batch starts its workers: a
    model with no TFLite file of its own is converted (and cached) once instead of in every worker
    at once, and a file LiteRT cannot load stops the batch, naming it, instead of breaking each
    worker's start (:func:`kercr.detection.batch.detect_files`). Nothing for ``runtime="keras"``."""
    if not runtime.startswith("tflite"):
        return
    try:
        source = _tflite_model(loaded, runtime)
    except (ValueError, OSError):  # kercr's own errors (a detection-only install, ...): as they are
        raise
    except Exception as err:  # the TFLite converter's
        text = " ".join(str(err).split()) or type(err).__name__
        raise ModelLoadError(f"{loaded.name}: converting it to TFLite ({runtime}) failed ({text}); pass "
                             "runtime='keras' (--runtime keras).") from err
    try:
        TFLiteRunner(source, num_threads=1)
    except Exception as err:  # LiteRT's own errors: RuntimeError, ValueError
        where = source if isinstance(source, Path) else f"{loaded.name}'s converted model"
        text = " ".join(str(err).split()) or type(err).__name__
        raise ModelLoadError(f"{where}: LiteRT cannot load this {runtime} file ({text}). It is cut short or not a "
                             "TFLite model: delete it (a cached conversion is made again) or export it again "
                             "(kercr-export), reinstall kercr for a shipped model, or pass runtime='keras'.") from None


@functools.lru_cache(maxsize=8)
def _runner_from_path(path: str, num_threads):
    return ParallelTFLiteRunner(path, num_threads=num_threads)


_logit_models: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _raw_predictor(loaded: LoadedModel, runtime: str, num_threads):
    """``(predict, returns_logits)``: predict maps (B, H, W) float32 normalized images to (B, H, W)
    float32 CR logits (Keras models with a logit layer) or probabilities (TFLite, other models)."""
    if runtime == "keras":
        from kercr.models import logit_model  # heavy: Keras, which this runtime needs

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
        runner = ParallelTFLiteRunner(source, num_threads=num_threads)
    return runner.predict, False


def _as_logits(predict, floor: float):
    """``predict`` (probabilities) turned into logits, probabilities clipped to ``[floor, 1 - floor]``."""
    def logits(x):
        p = np.clip(np.asarray(predict(x), dtype=np.float32), floor, 1.0 - floor)
        return (np.log(p) - np.log1p(-p)).astype(np.float32)

    return logits


def view_predictor(loaded: LoadedModel, runtime: str, *, num_threads=None):
    """``(predict, returns_logits)``: one view, scored as the four flips are averaged (logits where the
    model gives them; TFLite probabilities clipped and turned into logits, as :func:`predictor` does)."""
    predict, logits = _raw_predictor(loaded, runtime, num_threads)
    if not logits:
        predict, logits = _as_logits(predict, _PROBABILITY_FLOOR.get(runtime, 1e-7)), True
    return predict, logits


def predictor(loaded: LoadedModel, runtime: str, *, tta: bool, num_threads=None):
    """``(predict, returns_logits)`` for tiles: the runtime's prediction, averaged over the four flips with ``tta``.

    With ``tta``, TFLite probabilities are averaged as logits (clipped first), as the validation
    scores the card's threshold was chosen on were.
    """
    if tta:
        predict, logits = view_predictor(loaded, runtime, num_threads=num_threads)
        return functools.partial(flip_average, predict), logits
    return _raw_predictor(loaded, runtime, num_threads)


def resolve_tta_gate(tta_gate, loaded: LoadedModel) -> float:
    """The flips' gate for ``loaded`` (a probability; 0: every pixel gets the four-flip mean).

    ``tta_gate`` itself, or when None the card's ``"tta_gate"``, else :data:`DEFAULT_TTA_GATE`.
    Models whose output is not local (or has a fixed input) always get 0: a crop of their tile
    would not see what the tile saw (:mod:`kercr.detection.flips`).
    """
    if tta_gate is None:
        tta_gate = loaded.card.get("tta_gate", DEFAULT_TTA_GATE)
    if isinstance(tta_gate, (bool, np.bool_)) or not isinstance(tta_gate, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(tta_gate) < 1.0:
        raise ValueError(f"tta_gate={tta_gate!r}; pass a probability in [0, 1) (0: the four-flip mean on every "
                         f"pixel), or None for the model card's ({DEFAULT_TTA_GATE} without one).")
    if not loaded.local or loaded.fixed_size is not None:
        return 0.0
    return float(tta_gate)
