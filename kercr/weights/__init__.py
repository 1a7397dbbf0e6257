"""kercr's shipped models: ``default.keras`` and its model card ``default.json``, and named alternatives.

The files live in this package directory (``kercr/weights/``) and are installed with it (hatch
puts every file of the package into the wheel). See ``README.md`` here for what the files must hold.
A named alternative ``NAME`` is the folder ``models/NAME/`` (``model.keras``, its card
``model.json``, ``normalization.json`` and prebuilt LiteRT files); ``model="NAME"`` runs it
wherever ``model="default"`` is taken.

>>> from kercr.weights import default_model_path
>>> default_model_path()            # doctest: +SKIP
PosixPath('.../kercr/weights/default.keras')
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["WEIGHTS_DIR", "DEFAULT_NAME", "INPAINTER_DIR", "MODELS_DIR", "MissingWeightsError", "default_model_path",
           "default_card", "default_inpainter_path", "has_default", "is_shipped_name", "shipped_model_path",
           "shipped_names"]

WEIGHTS_DIR = Path(__file__).resolve().parent
DEFAULT_NAME = "default"
#: The shipped inpainting network: ``inpainter.keras``, its ``normalization.json`` and card ``inpainter.json``
#: (a folder of its own: its normalization differs from the detector's).
INPAINTER_DIR = WEIGHTS_DIR / "inpainter"
#: Named shipped models besides the default, one folder each: ``models/NAME/model.keras`` + ``model.json``
#: + ``normalization.json`` (written by ``python -m kercr.weights.ship RUN --name NAME``).
MODELS_DIR = WEIGHTS_DIR / "models"
#: The model file of a named shipped model, inside its folder.
NAMED_FILE = "model.keras"


class MissingWeightsError(FileNotFoundError):
    """The shipped default model is not installed (no ``kercr/weights/default.keras``)."""


def has_default() -> bool:
    """Whether ``kercr/weights/default.keras`` exists."""
    return (WEIGHTS_DIR / f"{DEFAULT_NAME}.keras").is_file()


def default_model_path() -> Path:
    """Path of the shipped default model.

    Returns
    -------
    pathlib.Path
        ``kercr/weights/default.keras``.

    Raises
    ------
    MissingWeightsError
        When the file is absent (a development checkout before a trained model was added).
    """
    path = WEIGHTS_DIR / f"{DEFAULT_NAME}.keras"
    if not path.is_file():
        raise MissingWeightsError(
            f"the default kercr model is not installed: {path} does not exist. Pass model= a trained "
            "model instead (a .keras file, or a kercr-train run directory holding best.keras), or "
            "install a kercr release that ships kercr/weights/default.keras."
        )
    return path


def shipped_names() -> list[str]:
    """The names ``model=`` takes for shipped models: ``"default"``, then each installed ``models/NAME``, sorted."""
    names = [DEFAULT_NAME]
    if MODELS_DIR.is_dir():
        names += sorted(p.name for p in MODELS_DIR.iterdir() if (p / NAMED_FILE).is_file())
    return names


def is_shipped_name(model) -> bool:
    """Whether ``model`` (anything ``detect(model=...)`` takes) names a shipped model rather than a path.

    ``"default"`` always does (installed or not); another plain name (no path separator) does
    when ``kercr/weights/models/NAME/model.keras`` is installed. A shipped name wins over a
    folder of the same name in the working directory: pass ``./NAME`` for that.
    """
    if not isinstance(model, str):
        return False
    if model == DEFAULT_NAME:
        return True
    return bool(model) and "/" not in model and "\\" not in model and not model.startswith(".") \
        and (MODELS_DIR / model / NAMED_FILE).is_file()


def shipped_model_path(name: str) -> Path:
    """Path of the shipped model ``name``: ``"default"`` (:func:`default_model_path`) or a named alternative.

    Raises
    ------
    MissingWeightsError
        When no shipped model has that name; the message lists those installed.
    """
    if name == DEFAULT_NAME:
        return default_model_path()
    path = MODELS_DIR / name / NAMED_FILE
    if not path.is_file():
        raise MissingWeightsError(f"no shipped kercr model is named {name!r} ({path} does not exist); the installed "
                                  f"ones are {', '.join(shipped_names())}. Pass one of them, a .keras file or a "
                                  "kercr-train run directory.")
    return path


def default_card() -> dict:
    """The model card ``kercr/weights/default.json`` as a dict (empty when absent)."""
    path = WEIGHTS_DIR / f"{DEFAULT_NAME}.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def default_inpainter_path() -> Path:
    """Path of the shipped inpainting network, ``kercr/weights/inpainter/inpainter.keras``.

    Raises
    ------
    MissingWeightsError
        When the file is absent.
    """
    path = INPAINTER_DIR / "inpainter.keras"
    if not path.is_file():
        raise MissingWeightsError(f"the kercr inpainting network is not installed: {path} does not exist. Train one "
                                  "(python -m kercr.training.inpainting --out DIR) and pass its folder, or use a "
                                  "masked estimate (clean='median').")
    return path
