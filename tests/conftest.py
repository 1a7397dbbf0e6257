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
# package (no kercr/__init__.py code at all): what the numpy data core must survive.
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


#: What the detection-only install holds (README, "Detection-only install"), with their dependencies.
DETECTION_ONLY_REQUIREMENTS = ("numpy", "astropy", "scipy", "ai-edge-litert")


def _distribution_closure(names) -> dict:
    """The installed distributions ``names`` need, recursively (extras left out)."""
    import importlib.metadata as md
    import re

    seen: dict = {}
    stack = list(names)
    while stack:
        name = stack.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[key] = dist
        stack.extend(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r)
    return seen


@pytest.fixture(scope="session")
def detection_only_python(tmp_path_factory) -> Path:
    """The ``python`` of a real venv holding only kercr's detection-only install (no TensorFlow, no Keras).

    Built offline from this environment: a venv without pip whose ``.pth`` file points to a
    folder of links to exactly the distributions of :data:`DETECTION_ONLY_REQUIREMENTS` (and what
    they require) and to this checkout's ``kercr``. TensorFlow and Keras are not importable in it.
    """
    import venv

    if any(name not in _distribution_closure([name]) for name in DETECTION_ONLY_REQUIREMENTS):
        pytest.skip(f"this environment lacks one of {DETECTION_ONLY_REQUIREMENTS}")
    root = tmp_path_factory.mktemp("detection-only")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root / "venv")
    packages = root / "packages"
    packages.mkdir()
    for dist in _distribution_closure(DETECTION_ONLY_REQUIREMENTS).values():
        for top in {Path(str(f)).parts[0] for f in dist.files or ()}:
            source = Path(dist.locate_file(top))
            if top.startswith("..") or top == "__pycache__" or not source.exists() or (packages / top).exists():
                continue
            (packages / top).symlink_to(source)
    (packages / "kercr").symlink_to(REPO_ROOT / "kercr")
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "kercr-detection-only.pth").write_text(f"{packages}\n")
    return python
