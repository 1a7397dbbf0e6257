"""Export profiles: named sets of ``kercr-export`` options in a TOML (or JSON) file.

A profile is a flat table whose keys are ``kercr-export`` long options with ``_`` for ``-``::

    description = "TF Serving: SavedModel, raw pixels in"
    formats = ["savedmodel"]
    quantize = ["none"]
    tile = 256

Allowed keys: ``description``, ``formats``, ``quantize``, ``tile``, ``name``,
``calibration_patches``, ``validation_patches``, ``seed``, ``fpr``, ``threshold``,
``cr_rate_per_s``, ``tta``. Options given on the command line win over the profile. The profiles shipped
with kercr are in the repository's top-level ``export/`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from kercr.export.source import ExportError

__all__ = ["PROFILE_KEYS", "load_profile"]

#: key -> expected type(s)
PROFILE_KEYS = {
    "description": str, "formats": list, "quantize": list, "tile": int, "name": str,
    "calibration_patches": int, "validation_patches": int, "seed": int, "fpr": float, "threshold": float,
    "cr_rate_per_s": float, "tta": bool,
}


def load_profile(path) -> dict:
    """Read and check a profile file (``.toml`` or ``.json``); returns its keys except ``description``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ExportError(f"cannot read profile {path}: {err.strerror or err}. Pass an existing file such as "
                          "export/serving.toml.") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except ValueError as err:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ExportError(f"profile {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {err}") from None
    if not isinstance(data, dict):
        raise ExportError(f"profile {path} must be a table of options.")
    unknown = sorted(set(data) - set(PROFILE_KEYS))
    if unknown:
        raise ExportError(f"profile {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(PROFILE_KEYS)}.")
    for key, value in data.items():
        expected = PROFILE_KEYS[key]
        ok = isinstance(value, expected) and not isinstance(value, bool)
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if expected is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if expected is bool:
            ok = isinstance(value, bool)
        if not ok:
            raise ExportError(f"profile {path}: {key} = {value!r} should be a "
                              f"{'list of strings' if expected is list else expected.__name__}.")
    data.pop("description", None)
    return data
