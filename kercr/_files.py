"""Small files written whole or not at all: a temporary name beside the target, then an atomic rename.

Standard library only (layer 0), so that the configuration (``config.json``), the training run
(``metrics.json``, ``state.json``) and the model files share one writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

__all__ = ["new_folder", "write_json", "write_text"]


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


@contextlib.contextmanager
def new_folder(path):
    """Fill a NEW folder ``path`` whole or not at all: yields a hidden folder beside it, renamed to
    ``path`` when the block ends (``path`` may then be absent or an empty folder, nothing else) and
    removed when the block raises, so a failure or a kill never leaves a half-made ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
    staging.mkdir()
    try:
        yield staging
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(f"{path} appeared meanwhile; not replacing it.")
        os.replace(staging, path)  # onto an empty folder, or a new name
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path, data, *, sort_keys: bool = False, default=None) -> Path:
    """Write ``data`` as indented JSON to ``path``, whole or not at all (:func:`write_text`);
    ``default`` as :func:`json.dumps`'s."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=default) + "\n")
