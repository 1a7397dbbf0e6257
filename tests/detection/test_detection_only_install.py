"""The detection-only install: kercr.detect with the shipped model runs without TensorFlow or Keras."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from kercr.weights import has_default

pytestmark = pytest.mark.skipif(not has_default(), reason="no shipped model in this checkout")

_GUARD = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "jax", "torch"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
"""


def _run(python, code, *args):
    return subprocess.run([str(python), "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cleaning_with_the_network_imports_neither_tensorflow_nor_keras(tmp_path):
    """clean="network" runs the inpainting network's prebuilt LiteRT file."""
    from kercr.detection import detect

    image = (100 + 5 * np.random.default_rng(3).standard_normal((96, 80))).astype(np.float32)
    image[40, 10:30] += 300.0
    np.save(tmp_path / "image.npy", image)
    code = _GUARD + """
import sys, numpy as np
import kercr
r = kercr.detect(np.load(sys.argv[1]), clean="network")
np.save(sys.argv[2], r.clean)
print(r.n_cr_pixels, "keras" in sys.modules, "tensorflow" in sys.modules)
"""
    out = _run(sys.executable, code, tmp_path / "image.npy", tmp_path / "clean.npy")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-3]) > 0 and out.stdout.split()[-2:] == ["False", "False"]
    full = detect(image, clean="network")
    np.testing.assert_array_equal(np.load(tmp_path / "clean.npy"), full.clean)  # the same LiteRT file here
    assert np.median(np.abs(full.clean - 100)[full.mask]) < 5  # the track replaced by sky values


def test_import_kercr_and_detect_import_neither_tensorflow_nor_keras(tmp_path):
    image = (100 + 5 * np.random.default_rng(0).standard_normal((96, 80))).astype(np.float32)
    image[40, 10:30] += 300.0
    np.save(tmp_path / "image.npy", image)
    code = """
import sys, numpy as np
import kercr
assert "keras" not in sys.modules and "tensorflow" not in sys.modules, "import kercr"
r = kercr.detect(np.load(sys.argv[1]))
print(r.runtime, r.n_cr_pixels, "keras" in sys.modules, "tensorflow" in sys.modules)
"""
    # In this full install, with nothing blocked: the modules are importable but must not be imported.
    out = _run(sys.executable, code, tmp_path / "image.npy")
    assert out.returncode == 0, out.stderr
    runtime, n, keras_loaded, tf_loaded = out.stdout.split()[-4:]
    assert runtime == "tflite-int8" and int(n) > 0 and keras_loaded == "False" and tf_loaded == "False"
    # ... and with them unimportable, the same.
    blocked = _run(sys.executable, _GUARD + code, tmp_path / "image.npy")
    assert blocked.returncode == 0, blocked.stderr
    assert blocked.stdout.split()[-4:] == out.stdout.split()[-4:]


def test_the_shipped_int8_file_is_what_detection_would_convert(tmp_path):
    """The prebuilt file is the on-the-fly conversion (so masks are unchanged without it).

    Bit for bit with the TensorFlow and numpy that built it; another release of either may move
    the int8 calibration by a rounding step (seen: TF 2.21 with numpy 2.4.6, one pixel of 11,430
    flagged at the card's threshold, mean |dp| 4e-7), so then the two files' outputs are compared.
    """
    from kercr.detection.loading import load_model
    from kercr.detection.runtimes import convert_for_runtime
    from kercr.export.litert import TFLiteRunner
    from kercr.export.parity import normalized_patches, synthetic_patches
    from kercr.model_files import file_sha256

    loaded = load_model("default")
    entry = loaded.card["tflite"]["tflite-int8"]
    prebuilt = loaded.prebuilt["tflite-int8"]
    assert file_sha256(prebuilt) == entry["sha256"] and entry["source_sha256"] == file_sha256(loaded.path)
    (tmp_path / "fresh.tflite").write_bytes(convert_for_runtime(loaded, "int8"))
    if file_sha256(tmp_path / "fresh.tflite") != entry["sha256"]:
        x = normalized_patches(synthetic_patches(4, tile=256, seed=1).image_adu, loaded.normalization)
        shipped, fresh = (TFLiteRunner(path, num_threads=1).predict(x) for path in (prebuilt, tmp_path / "fresh.tflite"))
        flagged = shipped >= loaded.threshold
        assert flagged.sum() > 1000  # CR pixels to compare
        assert np.abs(shipped - fresh).mean() < 1e-4
        assert ((fresh >= loaded.threshold) != flagged).sum() <= 0.001 * flagged.sum()
    # The card's geometry is what the Keras layers say.
    from kercr.detection.loading import model_geometry

    assert model_geometry(loaded.model) == loaded.card["geometry"]


def test_a_stale_prebuilt_file_is_ignored_and_the_model_converted(tmp_path, monkeypatch, caplog):
    import shutil

    from kercr.detection import detect, load_model
    from kercr.weights import WEIGHTS_DIR

    for name in ("default.keras", "default.json", "normalization.json", "default-int8.tflite"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    card = json.loads((tmp_path / "default.json").read_text())
    card["tflite"]["tflite-int8"]["source_sha256"] = "0" * 64  # made from another model
    (tmp_path / "default.json").write_text(json.dumps(card))
    monkeypatch.setenv("KERCR_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="kercr"):
        loaded = load_model(tmp_path / "default.keras")
    assert loaded.prebuilt == {} and "SHA-256 differs" in caplog.text
    image = (100 + 5 * np.random.default_rng(1).standard_normal((64, 64))).astype(np.float32)
    assert detect(image, model=loaded).runtime == "tflite-int8"
    assert list((tmp_path / "cache" / "tflite").glob("*int8.tflite"))  # converted instead


def test_detection_only_venv_gives_the_full_installs_mask(detection_only_python, shared_data, tmp_path):
    """A venv with numpy, astropy, scipy and LiteRT only (no TensorFlow, no Keras) detects a real DECam cutout."""
    files = sorted((shared_data / "decam_cp").rglob("*_ooi_*.fits"))
    if not files:
        pytest.skip("no DECam CP image in the shared data")
    with fits.open(files[0]) as hdul:
        hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
        data = np.array(hdu.data, np.float32)
        header = hdu.header.copy()
    # The CP image's own CRs were interpolated away: add three tracks (30 sigma) so the mask has CRs.
    sigma = 1.4826 * np.nanmedian(np.abs(data - np.nanmedian(data)))
    for k, (y, x) in enumerate(((20, 15), (45, 60), (70, 30))):
        data[y + np.arange(12) // (k + 2), x + np.arange(12)] += 30 * sigma
    fits.PrimaryHDU(data, header=header).writeto(tmp_path / "cutout.fits")
    check = _run(detection_only_python, "import tensorflow")
    assert check.returncode != 0 and "No module named 'tensorflow'" in check.stderr  # really absent there
    code = """
import sys, numpy as np
from astropy.io import fits
import kercr
with fits.open(sys.argv[1]) as hdul:
    r = kercr.detect(hdul[0], clean="network", clean_dilate=1)
np.save(sys.argv[2], r.mask)
np.save(sys.argv[3], r.clean)
print(r.runtime, "keras" in sys.modules, "tensorflow" in sys.modules)
"""
    out = _run(detection_only_python, code, tmp_path / "cutout.fits", tmp_path / "mask.npy", tmp_path / "clean.npy")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-3:] == ["tflite-int8", "False", "False"]
    from kercr.detection import detect

    with fits.open(tmp_path / "cutout.fits") as hdul:
        full = detect(hdul[0], clean="network", clean_dilate=1)
    light = np.load(tmp_path / "mask.npy")
    assert full.n_cr_pixels > 0
    np.testing.assert_array_equal(light, full.mask)
    # The inpainting network's LiteRT file cleans there too, as in the full install.
    replaced = full.dilated_mask(1)
    np.testing.assert_array_equal(np.load(tmp_path / "clean.npy")[~replaced], data[~replaced])
    np.testing.assert_allclose(np.load(tmp_path / "clean.npy"), full.clean, rtol=1e-5, atol=1e-3 * sigma)


def _console_scripts() -> dict:
    import tomllib
    from pathlib import Path

    return tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_console_script_in_a_detection_only_install(detection_only_python, tmp_path):
    """kercr-detect runs there; every other command says in one line that it needs the full install
    (a traceback ending in ModuleNotFoundError before)."""
    image = (100 + 5 * np.random.default_rng(2).standard_normal((96, 80))).astype(np.float32)
    image[40, 10:30] += 300.0
    fits.PrimaryHDU(image, header=fits.Header([("GAIN", 1.0), ("SATURATE", 60000.0)])).writeto(tmp_path / "f.fits")
    argv = {"kercr-detect": [str(tmp_path / "f.fits"), "--out", str(tmp_path / "masks")],
            "kercr-evaluate": ["--synthetic", "1", "--out", str(tmp_path / "ev")],
            "kercr-train": ["--epochs", "1", "--out", str(tmp_path / "tr")],
            "kercr-prepare": ["--out", str(tmp_path / "pr")],
            "kercr-export": ["default", "--out", str(tmp_path / "ex")],
            "kercr-tune": ["--out", str(tmp_path / "tu")],
            "kercr-models": []}
    scripts = _console_scripts()
    assert set(scripts) == set(argv)  # a new command gets its line here
    for name, target in scripts.items():
        module, func = target.split(":")
        code = f"import sys; from {module} import {func}; sys.argv = sys.argv[1:]; sys.exit({func}())"
        out = _run(detection_only_python, code, name, *argv[name])
        if name == "kercr-detect":
            assert out.returncode == 0, out.stderr
            assert (tmp_path / "masks" / "f.fits").exists() or list((tmp_path / "masks").glob("*.fits"))
            continue
        assert out.returncode == 1, (name, out.stderr)
        assert "Traceback" not in out.stderr, (name, out.stderr)
        line = out.stderr.strip().splitlines()[-1]
        assert line.startswith(f"{name}: error: needs ") and "detection-only install" in line, (name, line)
