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


# --------------------------------------------------------------------------------------------
# Saved models (detection, export, shipping): tiny untrained networks saved as a run saves them
# --------------------------------------------------------------------------------------------
#: Shape of :func:`detection_frame`: not a multiple of any tile, so the borders are exercised.
DETECTION_FRAME_SHAPE = (300, 500)


def _save_model(directory, name="tiny", *, arch="deepcr_2_4", card=None, normalization=True, **overrides):
    import json

    import keras

    import kercr
    from kercr.data import NormalizationConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model = kercr.build_model(arch, **overrides)
    path = directory / f"{name}.keras"
    model.save(path)
    if normalization:
        (directory / "normalization.json").write_text(json.dumps(NormalizationConfig().to_dict()))
    if card is not None:
        (directory / f"{name}.json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="session")
def save_model():
    """``save_model(directory, name="tiny", *, arch="deepcr_2_4", card=None, normalization=True, **options)``.

    Saves an untrained registry model (seed 0) as ``directory/NAME.keras``, with the default
    ``normalization.json`` beside it (``normalization=False``: none) and the model card
    ``NAME.json`` when ``card`` is a dict; returns the ``.keras`` path.
    """
    return _save_model


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory) -> Path:
    """An untrained ``deepcr_2_4`` (1,709 parameters) saved with its sidecar and a card (threshold 0.55)."""
    return _save_model(tmp_path_factory.mktemp("tiny-detector"), card={"threshold": 0.55})


@pytest.fixture(scope="session")
def detection_frame():
    """A synthetic DECam-like frame of :data:`DETECTION_FRAME_SHAPE` (seed 3); copy it before changing it."""
    from kercr.data import make_frame

    return make_frame(seed=3, shape=DETECTION_FRAME_SHAPE)


@pytest.fixture(scope="session")
def whole_frame_reference():
    """``reference(model_path, image, *, margin, multiple)``: a prediction of the whole frame in one piece.

    Independent of kercr's tiling: normalize (non-finite pixels ignored), reflect-pad by
    ``margin`` on every side (and up to ``multiple``), one Keras call, crop back.
    """
    import math

    import numpy as np

    from kercr.data import normalize
    from kercr.detection import load_model

    def reference(model_path, image, *, margin, multiple):
        loaded = load_model(model_path)
        normalized, _ = normalize(image, mask=~np.isfinite(image), config=loaded.normalization)
        ny, nx = image.shape
        py = math.ceil(ny / multiple) * multiple - ny
        px = math.ceil(nx / multiple) * multiple - nx
        padded = np.pad(normalized, ((margin, margin + py), (margin, margin + px)), mode="reflect")
        p = loaded.model.predict_on_batch(padded[None, ..., None])[0, ..., 0]
        return p[margin:margin + ny, margin:margin + nx]

    return reference
