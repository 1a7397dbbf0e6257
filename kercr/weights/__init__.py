"""kercr's shipped models: ``default.keras`` and its model card ``default.json``.

The files live in this package directory (``kercr/weights/``) and are installed with it (hatch
puts every file of the package into the wheel). See ``README.md`` here for what the files must hold.

>>> from kercr.weights import default_model_path
>>> default_model_path()            # doctest: +SKIP
PosixPath('.../kercr/weights/default.keras')
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["WEIGHTS_DIR", "DEFAULT_NAME", "INPAINTER_DIR", "MissingWeightsError", "default_model_path", "default_card",
           "default_inpainter_path", "has_default"]

WEIGHTS_DIR = Path(__file__).resolve().parent
DEFAULT_NAME = "default"
#: The shipped inpainting network: ``inpainter.keras``, its ``normalization.json`` and card ``inpainter.json``
#: (a folder of its own: its normalization differs from the detector's).
INPAINTER_DIR = WEIGHTS_DIR / "inpainter"


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
