"""Small files written whole or not at all: a temporary name beside the target, then an atomic rename.

Standard library only (layer 0), so that the configuration (``config.json``), the training run
(``metrics.json``, ``state.json``) and the model files share one writer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_json", "write_text"]


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary name and an atomic rename (a kill leaves the
    old file or the new one, never half of one)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # gone after a successful rename; removed after a failed one
    return path


def write_json(path, data, *, sort_keys: bool = False, default=None) -> Path:
    """Write ``data`` as indented JSON to ``path``, whole or not at all (:func:`write_text`);
    ``default`` as :func:`json.dumps`'s."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=default) + "\n")
