"""Shared test fixtures: seeding and the location of the real data beside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    """Seed Python, numpy and the Keras backend before every test."""
    import keras

    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests using it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


# Python run with TensorFlow, Keras, JAX and PyTorch unimportable and ``kercr`` loaded as a bare
# package (kercr/__init__.py imports Keras for the models): what the numpy data core must survive.
_NO_ML_PREAMBLE = f"""
import importlib.abc, sys, types
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "jax", "torch"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
pkg = types.ModuleType("kercr"); pkg.__path__ = [{str(REPO_ROOT / "kercr")!r}]
sys.modules["kercr"] = pkg
"""


@pytest.fixture
def run_without_ml():
    """``run(code) -> CompletedProcess``: run ``code`` in a subprocess without TF/Keras/JAX/torch."""

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _NO_ML_PREAMBLE + textwrap.dedent(code)],
                              capture_output=True, text=True, timeout=120)

    return run
