"""What ``kercr-export`` exports: a ``.keras`` file, a training run directory or a registry name,
plus the normalization constants the model was trained with.

Rules (also in ``kercr-export --help`` and ``export/README.md``):

- an existing ``.keras`` **file** is loaded with ``keras.saving.load_model`` (safe mode);
- an existing **directory** must hold ``best.keras`` (a training run) or ``model.keras``;
  ``best.keras`` wins when both exist;
- anything else must be a **registry name** (``kercr.list_models()``): an untrained model, with
  ``overrides`` (e.g. ``input_size=64``) passed to ``kercr.build_model``. Useful for tests and
  benchmarks, never for science.

The normalization constants are the JSON object :meth:`NormalizationConfig.to_dict` writes, in a
file ``normalization.json`` in the same directory as the ``.keras`` file, else the model card's
``"normalization"`` (as :func:`kercr.detect` reads them, :func:`kercr.model_files.model_normalization`).
When both are absent (and always for a registry name) the default :class:`NormalizationConfig` is
used and a warning is logged. ``normalization=PATH`` overrides both. The model card beside a
``.keras`` file (``NAME.json``, e.g. the shipped ``default.json``) also says whether the model runs
averaged over the four flips of its input (``"tta"``); the export follows it unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from kercr import model_files
from kercr.data.normalization import NormalizationConfig
from kercr.model_files import MODEL_FILES, NORMALIZATION_FILE
from kercr.weights import MissingWeightsError, is_shipped_name, shipped_model_path

__all__ = ["ExportError", "ModelSource", "load_model_source", "read_normalization", "NORMALIZATION_FILE",
           "MODEL_FILES"]

logger = logging.getLogger(__name__)

class ExportError(model_files.ModelFileError):
    """A model or an option cannot be exported; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSource:
    """A loaded model and where it came from.

    Attributes
    ----------
    model : keras.Model
        Input (batch, H, W, 1) normalized float32, output (batch, H, W, 1) CR probability.
    normalization : NormalizationConfig
        Constants the served graph normalizes with.
    description : str
        Path of the ``.keras`` file, or ``"registry:NAME"``.
    normalization_source : str
        Path of the JSON file, or ``"default"``.
    trained : bool
        False for a registry name (random weights).
    tta : bool
        The model card's ``"tta"``: ``kercr.detect`` averages this model over four flips by default.
    threshold : tuple or None
        ``(threshold, where it came from, logit threshold or None)``: what ``kercr.detect`` cuts
        this model's probability at by default (:func:`kercr.model_files.default_threshold`); None
        for an untrained registry model.
    """

    model: object
    normalization: NormalizationConfig
    description: str
    normalization_source: str
    trained: bool
    tta: bool = False
    threshold: tuple | None = None


def read_normalization(path) -> NormalizationConfig:
    """Read a ``normalization.json`` (the dict of ``NormalizationConfig.to_dict()``)."""
    return model_files.read_normalization(path, error=ExportError)


def load_model_source(source, *, overrides=None, normalization=None) -> ModelSource:
    """Load the model to export and its normalization constants (rules in the module docstring).

    Parameters
    ----------
    source : str or path-like
        ``.keras`` file, directory with ``best.keras``/``model.keras``, ``"default"`` (the shipped
        model) or registry name.
    overrides : dict, optional
        Builder options for a registry name (error for a file).
    normalization : str or path-like, optional
        JSON file replacing the ``normalization.json`` sidecar.

    Raises
    ------
    ExportError
        Unknown name, missing or unreadable model file, bad normalization file.
    """
    from kercr.models import build_model, list_models  # heavy: imports Keras, kept off LiteRT detection's path

    overrides = dict(overrides or {})
    path = Path(source)
    if is_shipped_name(str(source)):  # a shipped model, as kercr.detect and kercr-train --init-weights take it
        try:
            path = shipped_model_path(str(source))
        except MissingWeightsError as err:
            raise ExportError(str(err)) from None
    if path.exists():
        if overrides:
            raise ExportError(f"builder options {sorted(overrides)} only apply to a registry name, not to the "
                              f"saved model {path}.")
        keras_file = model_files.find_model_file(path, error=ExportError)
        model = model_files.load_keras_model(keras_file, error=ExportError)
        description, trained = str(keras_file), True
        card = model_files.read_card(keras_file, error=ExportError)
        tta = card.get("tta", False)
        if not isinstance(tta, bool):
            raise ExportError(f"{keras_file}: the card's \"tta\" is {tta!r}; it must be true or false (fix it in "
                              "the card, the .json beside the model).")
    else:
        if str(source).endswith(".keras") or "/" in str(source):
            raise ExportError(f"model file {source} does not exist; pass an existing .keras file, a training "
                              "run directory or a registry name.")
        if str(source) not in list_models():
            raise ExportError(f"{source!r} is neither an existing file or directory nor a registry name; "
                              f"registry names: {', '.join(list_models())}.")
        try:
            model = build_model(str(source), **overrides)
        except (ValueError, TypeError) as err:
            raise ExportError(str(err)) from None
        description, trained, keras_file, card, tta = f"registry:{source}", False, None, {}, False
        logger.warning("exporting the UNTRAINED registry model %r (random weights); use it for tests only.", source)

    if normalization is not None:
        config, norm_source = read_normalization(normalization), str(normalization)
    else:  # the sidecar, else the card: what kercr.detect runs the model with
        found = model_files.model_normalization(keras_file, card, error=ExportError)
        if found is None:
            found = NormalizationConfig(), "default"
            where = f"next to {description} nor in its card" if keras_file is not None else f"for {description}"
            logger.warning("no %s %s; using the default NormalizationConfig(). If the model was trained with other "
                           "constants, pass --normalization FILE.", NORMALIZATION_FILE, where)
        config, norm_source = found
    _check_model(model, description)
    threshold = (model_files.default_threshold(card, keras_file, description, error=ExportError)
                 if keras_file is not None else None)
    return ModelSource(model=model, normalization=config, description=description,
                       normalization_source=norm_source, trained=trained, tta=tta, threshold=threshold)


def _check_model(model, description):
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if shape is None or len(shape) != 4 or shape[-1] != 1:
        raise ExportError(f"{description}: input shape {model.input_shape} is not (batch, H, W, 1); kercr-export "
                          "exports single-input, one-channel kercr models only.")
    out = tuple(model.output_shape) if not isinstance(model.output_shape, list) else None
    if out is None or len(out) != 4 or out[-1] != 1:
        raise ExportError(f"{description}: output shape {model.output_shape} is not (batch, H, W, 1).")
