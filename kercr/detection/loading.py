"""Loading a detection model: :func:`load_model` and :class:`LoadedModel`.

A model is ``"default"`` (``kercr/weights/default.keras``) or another shipped model's name
(:func:`kercr.weights.shipped_names`), a ``.keras`` file, a training run
directory (``best.keras``), a ``keras.Model`` instance, or a :class:`LoadedModel`. Its files are
read through :mod:`kercr.model_files`. The tiling geometry (input multiple, receptive field) is
read off the Keras layers (:mod:`kercr.models.geometry`), or taken from the model card's
``"geometry"`` when it has one (the shipped model's does): then the Keras model is loaded only
when a runtime needs it, and a LiteRT runtime with a prebuilt TFLite file (the card's
``"tflite"``) needs neither Keras nor TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
import weakref
from pathlib import Path

from kercr.data.normalization import NormalizationConfig
from kercr.model_files import (
    NORMALIZATION_FILE,
    ModelFileError,
    default_threshold,
    file_sha256,
    load_keras_model,
    model_normalization,
    read_card,
    resolve_model_path,
)
from kercr.weights import is_shipped_name

__all__ = ["FIXED_MODEL_OVERLAP", "LoadedModel", "ModelLoadError", "load_model", "prebuilt_files", "round_up"]

logger = logging.getLogger(__name__)

#: Overlap margin of fixed-input models (TransUNet, whose receptive field is the whole tile); at most 1/8 tile.
FIXED_MODEL_OVERLAP = 32
_GEOMETRY_KEYS = ("input_multiple", "fixed_size", "rf_radius", "local")


class ModelLoadError(ModelFileError):
    """A model argument cannot be used for detection; the message names the problem and the fix."""


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return int(math.ceil(n / multiple) * multiple)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    """A detection model and everything needed to run it.

    Attributes
    ----------
    model : keras.Model
        Input (B, H, W, 1) float32 normalized image, output (B, H, W, 1) CR probability. Loaded
        on first use when the card gave the geometry (a LiteRT runtime with a prebuilt file never
        loads it).
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
    prebuilt : dict
        Runtime name (``"tflite-int8"``) -> prebuilt ``.tflite`` file beside the model, listed in
        its card and made from this very ``.keras`` file (its SHA-256 recorded in the card).
    """

    keras_model: dataclasses.InitVar[object]
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
    prebuilt: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self, keras_model):
        object.__setattr__(self, "_keras", keras_model)

    @property
    def model(self):
        """The Keras model (loaded from :attr:`path` on first use)."""
        if self._keras is None:
            logger.info("loading the Keras model %s", self.name)
            object.__setattr__(self, "_keras", load_keras_model(self.path, error=ModelLoadError))
        return self._keras

    @property
    def default_overlap(self) -> int:
        """Overlap margin in pixels: the receptive-field radius rounded up to :attr:`multiple`."""
        if self.fixed_size is not None:
            return min(FIXED_MODEL_OVERLAP, self.fixed_size // 8)
        return round_up(max(self.rf_radius, 1), self.multiple)


def _normalization(path: Path | None, card: dict, name: str) -> tuple[NormalizationConfig, str]:
    found = model_normalization(path, card, error=ModelLoadError)
    if found is not None:
        return found
    logger.warning("%s: no %s beside the model and none in its card; normalizing with the default "
                   "NormalizationConfig(). If the model was trained with other constants, put its "
                   "normalization.json beside the .keras file.", name, NORMALIZATION_FILE)
    return NormalizationConfig(), "default"


def model_geometry(model) -> dict:
    """The card's ``"geometry"`` of a Keras model: ``input_multiple``, ``fixed_size``, ``rf_radius``, ``local``."""
    from kercr.models.geometry import input_multiple, is_local, receptive_field_radius  # heavy: Keras

    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[-1] != 1:
        raise ModelLoadError(f"input shape {shape} is not (batch, H, W, 1); kercr.detect runs single-input, "
                             "one-channel kercr models.")
    fixed = shape[1]
    return {"input_multiple": int(input_multiple(model)), "fixed_size": None if fixed is None else int(fixed),
            "rf_radius": 0 if fixed is not None else receptive_field_radius(model), "local": bool(is_local(model))}


def _card_geometry(card: dict, name: str) -> dict | None:
    geometry = card.get("geometry")
    if geometry is None:
        return None
    fix = "; fix it or remove it (the geometry is then read off the Keras model)."
    if not isinstance(geometry, dict) or set(_GEOMETRY_KEYS) - set(geometry):
        raise ModelLoadError(f"{name}: the card's \"geometry\" must hold {', '.join(_GEOMETRY_KEYS)}{fix}")
    for key in ("input_multiple", "rf_radius", "fixed_size"):
        value = geometry[key]
        if not (value is None and key == "fixed_size") and (isinstance(value, bool) or not isinstance(value, int)
                                                             or value < (1 if key == "input_multiple" else 0)):
            raise ModelLoadError(f"{name}: the card's geometry \"{key}\" is {value!r}, not a whole number of "
                                 f"pixels{fix}")
    if not isinstance(geometry["local"], bool):
        raise ModelLoadError(f"{name}: the card's geometry \"local\" is {geometry['local']!r}, not true or false{fix}")
    return geometry


def prebuilt_files(card: dict, path: Path | None, name: str, *, instead: str = "the model is converted instead",
                   rebuild: str = "python -m kercr.weights.ship --prebuild") -> dict:
    """Runtime -> prebuilt ``.tflite`` path, for the card's entries whose file is there and made from ``path``.

    Each other entry is logged as a warning that ends with ``instead`` (what runs in its place) and,
    for a file made from another ``path``, the ``rebuild`` command. Serves the detectors and the
    inpainting network (:mod:`kercr.detection.inpainting`).
    """
    entries = card.get("tflite") or {}
    if path is None or not entries:
        return {}
    source_sha = file_sha256(path)
    found = {}
    if not isinstance(entries, dict):
        logger.warning("%s: the card's \"tflite\" is not a table of runtimes; %s.", name, instead)
        return {}
    for runtime, entry in entries.items():
        if not isinstance(entry, dict):
            logger.warning("%s: the card's tflite entry %r is not a table (file, source_sha256); %s.", name, runtime,
                           instead)
            continue
        file = path.parent / str(entry.get("file", ""))
        if not file.is_file():
            logger.warning("%s: the card lists %s, which is missing; %s.", name, file, instead)
        elif entry.get("source_sha256") != source_sha:
            logger.warning("%s: %s was made from another version of %s (SHA-256 differs); %s. Rebuild it: %s.",
                           name, file.name, path.name, instead, rebuild)
        else:
            found[runtime] = file
    return found


def describe(model, *, name: str, path: Path | None, card: dict) -> LoadedModel:
    """A :class:`LoadedModel` of a Keras model (None: load ``path`` when needed; the card must give the geometry)."""
    geometry = _card_geometry(card, name)
    if geometry is None:
        if model is None:
            model = load_keras_model(path, error=ModelLoadError)
        try:
            geometry = model_geometry(model)
        except ModelLoadError as err:
            raise ModelLoadError(f"{name}: {err}") from None
    norm, norm_source = _normalization(path, card, name)
    threshold, threshold_source, logit_threshold = default_threshold(card, path, name, error=ModelLoadError)
    if not isinstance(card.get("tta", False), bool):
        raise ModelLoadError(f"{name}: the card's \"tta\" is {card['tta']!r}; it must be true or false (fix it in "
                             "the card, the .json beside the model).")
    return LoadedModel(
        model, name=name, path=path, normalization=norm, normalization_source=norm_source,
        threshold=threshold, threshold_source=threshold_source, card=card,
        multiple=int(geometry["input_multiple"]),
        fixed_size=None if geometry["fixed_size"] is None else int(geometry["fixed_size"]),
        rf_radius=int(geometry["rf_radius"]), local=bool(geometry["local"]), logit_threshold=logit_threshold,
        prebuilt=prebuilt_files(card, path, name),
    )


def _file_stamp(path: Path):
    """``(mtime_ns, size)`` of a file, or None when there is none: part of the model cache's key."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _load_file(path: str, stamps: tuple, shipped_name: str | None) -> LoadedModel:
    """Load and describe a model file; ``stamps`` (of it and the files beside it) keys the cache."""
    p = Path(path)
    card = read_card(p, error=ModelLoadError)  # default.json beside default.keras
    name = shipped_name or str(p)
    loaded = describe(None, name=name, path=p, card=card)
    logger.info("loaded model %s", name)
    return loaded


_INSTANCES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def load_model(model="default") -> LoadedModel:
    """Resolve and load a detection model (cached).

    Parameters
    ----------
    model : str, path-like, keras.Model or LoadedModel
        ``"default"`` (``kercr/weights/default.keras``) or another shipped model's name
        (``kercr/weights/models/NAME``), a ``.keras`` file, a directory holding ``best.keras``
        (a kercr-train run) or ``model.keras``, or a ``keras.Model`` instance.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelLoadError
        A registry name (untrained), a missing or unreadable file, a bad sidecar.
    kercr.weights.MissingWeightsError
        ``"default"`` when no default model is installed, or a name of no shipped model.
    """
    if isinstance(model, LoadedModel):
        return model
    keras = sys.modules.get("keras")  # a keras.Model exists only if Keras was imported
    if keras is not None and isinstance(model, keras.Model):
        if model not in _INSTANCES:
            _INSTANCES[model] = describe(model, name=f"<instance {model.name}>", path=None, card={})
        return _INSTANCES[model]
    if not isinstance(model, (str, Path)) and not hasattr(model, "__fspath__"):
        raise ModelLoadError(f"model={model!r}: pass 'default', a .keras file, a run directory or a keras.Model.")
    shipped = str(model) if is_shipped_name(str(model)) else None
    if shipped is None and not Path(model).expanduser().exists():
        try:
            from kercr.models import list_models  # heavy: Keras; only to explain the error

            registry = list_models()
        except ImportError:  # a LiteRT-only install has no registry: the error below says what is wrong
            registry = ()
        if str(model) in registry:
            raise ModelLoadError(
                f"model={str(model)!r} is a registry architecture with random weights, not a trained "
                "model; it would find nothing. Pass 'default', a trained .keras file or a kercr-train "
                "run directory (or train one: kercr-train).")
    path = resolve_model_path(model, error=ModelLoadError).resolve()
    # The card, the normalization sidecar and a run's metrics.json are read with the model: a change
    # to any of them loads it again.
    beside = (path, path.with_suffix(".json"), path.parent / NORMALIZATION_FILE, path.parent / "metrics.json")
    return _load_file(str(path), tuple(_file_stamp(f) for f in beside), shipped)
