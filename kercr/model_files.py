"""Files that make up a trained kercr model: the one module that reads and writes them.

Detection, export, ``kercr-train`` (its run directory and ``--init-weights``), the tuner's
outputs and ``kercr.weights`` (the shipped model) all go through these functions.

A trained model is a ``.keras`` file with a ``normalization.json`` sidecar beside it (the dict
of :meth:`kercr.data.normalization.NormalizationConfig.to_dict`); a ``kercr-train`` run
directory holds ``best.keras`` (and ``last.keras``), and other tools write ``model.keras``.
An optional model card ``NAME.json`` beside ``NAME.keras`` (the shipped ``default.json``) holds
the threshold, whether the model runs averaged over four flips (``"tta"``) and, for a model
without a sidecar, its ``"normalization"``. Detection and export read these files through
:func:`read_card` and :func:`model_normalization`, so both run a model with the same constants.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path

from kercr._files import write_json
from kercr.data.errors import KercrDataError
from kercr.data.normalization import NormalizationConfig
from kercr.weights import is_shipped_name, shipped_model_path, shipped_names

logger = logging.getLogger(__name__)

NORMALIZATION_FILE = "normalization.json"
#: The largest float32 below 1 is 1 - 2**-24: a threshold at or above it flags (almost) nothing.
_SATURATED_PROBABILITY = 1.0 - 2.0**-24
MODEL_FILES = ("best.keras", "model.keras")


class ModelFileError(ValueError):
    """A model file or its sidecar cannot be used; the message names the file and the fix."""


def find_model_file(path, *, error=ModelFileError) -> Path:
    """The ``.keras`` file of ``path``: the file itself, or ``best.keras``/``model.keras`` in a directory."""
    path = Path(path)
    if path.is_dir():
        for name in MODEL_FILES:
            if (path / name).is_file():
                return path / name
        raise error(f"directory {path} holds neither {' nor '.join(MODEL_FILES)}; pass a kercr-train run "
                    "directory or a .keras file.")
    if path.suffix != ".keras":
        raise error(f"{path} is not a .keras file; pass a .keras model or a kercr-train run directory.")
    return path


def read_json_object(path, what: str, *, error=ModelFileError) -> dict:
    """Read a JSON file that must hold an object (``what`` names it in errors)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"the {what} {path} does not exist; pass an existing JSON file.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"cannot read the {what} {path}: {err}. Fix or remove the file.") from None
    if not isinstance(data, dict):
        raise error(f"the {what} {path} holds a JSON {type(data).__name__}; it must hold an object.")
    return data


def normalization_from_dict(data: dict, source: str, *, error=ModelFileError) -> NormalizationConfig:
    """A :class:`NormalizationConfig` from its dict, with errors naming ``source``."""
    valid = {f.name for f in dataclasses.fields(NormalizationConfig)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise error(f"{source}: unknown normalization key(s) {', '.join(unknown)}; valid keys: "
                    f"{', '.join(sorted(valid))}.")
    try:
        return NormalizationConfig.from_dict(data)
    except (KercrDataError, TypeError, ValueError) as err:
        raise error(f"{source}: invalid normalization constants: {err}") from None


def read_normalization(path, *, error=ModelFileError) -> NormalizationConfig:
    """Read a ``normalization.json`` file."""
    return normalization_from_dict(read_json_object(path, "normalization file", error=error), str(path), error=error)


def read_card(keras_file, *, error=ModelFileError) -> dict:
    """The model card ``NAME.json`` beside ``NAME.keras``; an empty dict when there is none."""
    card_file = Path(keras_file).with_suffix(".json")
    return read_json_object(card_file, "model card", error=error) if card_file.is_file() else {}


def model_normalization(keras_file, card: dict, *, error=ModelFileError) -> tuple[NormalizationConfig, str] | None:
    """The normalization constants a saved model was trained with, and where they came from.

    The ``normalization.json`` sidecar beside ``keras_file`` wins; else the card's
    ``"normalization"`` object (source ``"card"``); else None (the caller falls back to the
    default :class:`NormalizationConfig` and warns). ``keras_file`` None (an in-memory model)
    looks at the card only.
    """
    if keras_file is not None:
        sidecar = Path(keras_file).parent / NORMALIZATION_FILE
        if sidecar.is_file():
            return read_normalization(sidecar, error=error), str(sidecar)
    if "normalization" in card:
        if not isinstance(card["normalization"], dict):
            raise error(f"model card of {keras_file}: \"normalization\" must be an object of "
                        "NormalizationConfig constants; fix the card or put a normalization.json beside the model.")
        return normalization_from_dict(card["normalization"], f"model card of {keras_file}", error=error), "card"
    return None


def resolve_model_path(model, *, error=ModelFileError) -> Path:
    """The ``.keras`` file ``model`` names: ``"default"`` or another shipped model's name
    (:func:`kercr.weights.shipped_names`), a file or a run directory.

    Raises ``error`` for a path that does not exist; ``kercr.weights.MissingWeightsError`` when
    ``"default"`` is not installed.
    """
    if is_shipped_name(str(model)):
        return shipped_model_path(str(model))
    path = Path(model).expanduser()
    if not path.exists():
        raise error(f"model {str(model)!r} does not exist; pass a shipped model's name "
                    f"({', '.join(shipped_names())}), a .keras file or a kercr-train run directory.")
    return find_model_file(path, error=error)


def file_sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_normalization(folder, config: NormalizationConfig) -> Path:
    """Write ``folder/normalization.json``: the constants a model was trained with (read by :func:`read_normalization`)."""
    return write_json(Path(folder) / NORMALIZATION_FILE, config.to_dict())


def load_keras_model(path, *, error=ModelFileError, compile: bool = True):
    """Load a kercr ``.keras`` file in safe mode (kercr's custom objects registered)."""
    import keras

    import kercr.losses  # noqa: F401  # heavy: imports Keras; registers kercr's custom objects
    import kercr.metrics  # noqa: F401  # heavy: imports Keras; registers kercr's custom objects
    import kercr.models  # noqa: F401  # heavy: imports Keras; registers kercr's custom objects

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except Exception as err:  # keras raises many types for a corrupt archive
        raise error(f"cannot load the Keras model {path}: {type(err).__name__}: {err}. Check that it is a "
                    "complete .keras file saved by kercr (load it with keras.saving.load_model after "
                    "`import kercr.models`).") from None


def card_number(card: dict, key: str, name: str, *, error=ModelFileError) -> float:
    """The card's number ``key`` (a JSON number; a bool or anything else is refused, naming the key)."""
    value = card[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name}: the card's \"{key}\" is {value!r}, not a number; fix it in the card "
                    "(the .json beside the model) or remove the entry.")
    return float(value)


def default_threshold(card: dict, path: Path | None, name: str, *,
                      error=ModelFileError) -> tuple[float, str, float | None]:
    """``(threshold, where it came from, logit threshold or None)`` of the model file ``path`` (None: an
    instance): its card's, else its run's ``metrics.json`` ``threshold_at_fpr_1e-4``, else 0.5. What
    ``kercr.detect`` cuts at by default and ``kercr-export`` writes beside the artifacts."""
    threshold, threshold_source, logit_threshold = 0.5, "none (0.5)", None
    if "threshold" in card:
        threshold, threshold_source = card_number(card, "threshold", name, error=error), "card"
        logit_threshold = card.get("logit_threshold")
    elif path is not None and (path.parent / "metrics.json").is_file():
        metrics = read_json_object(path.parent / "metrics.json", "run metrics file", error=error)
        if "threshold_at_fpr_1e-4" in metrics:
            threshold = float(metrics["threshold_at_fpr_1e-4"])
            threshold_source = f"{path.parent / 'metrics.json'} threshold_at_fpr_1e-4"
            logit_threshold = metrics.get("logit_threshold_at_fpr_1e-4")
    if not 0.0 <= threshold <= 1.0 or not math.isfinite(threshold):
        raise error(f"{name}: default threshold {threshold} ({threshold_source}) is not in [0, 1].")
    if logit_threshold is not None:
        try:
            logit_threshold = float(logit_threshold)
        except (TypeError, ValueError):
            logit_threshold = math.nan
        if not math.isfinite(logit_threshold):
            raise error(f"{name}: the logit threshold beside the default threshold ({threshold_source}) is "
                        "not a finite number; fix or remove it (the probability threshold is then used).")
    if threshold >= _SATURATED_PROBABILITY:
        if logit_threshold is not None:
            advice = (f"Keras detection cuts at its logit threshold {logit_threshold:.4g} instead; TFLite runtimes "
                      "flag almost nothing unless given a threshold below 1.")
        else:
            advice = "It would flag almost nothing: pass a threshold below 1 (e.g. 0.5)."
        logger.warning("%s: its default threshold (%s) is %.9g, which float32 probabilities round to 1 (the model "
                       "scores its validation non-CR pixels that high). %s", name, threshold_source, threshold, advice)
    return threshold, threshold_source, logit_threshold
