"""Every script under benchmarks/ parses with the Python that runs the tests.

Most benchmarks run for minutes and are not run by the suite; this catches what would stop them
before they start (a syntax only newer Pythons accept, say) on the Python CI uses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_there_are_benchmark_scripts():
    assert any(p.name == "bench_detect.py" for p in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_parses(script):
    ast.parse(script.read_text(), filename=str(script))


@pytest.fixture()
def peers():
    """benchmarks/peers.py as a module (it imports real_frames.py beside it)."""
    import importlib.util
    import sys

    folder = str(SCRIPTS[0].parent)
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("peers", SCRIPTS[0].parent / "peers.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(folder)
        sys.modules.pop("real_frames", None)


def test_peers_padding_gives_the_network_a_multiple_and_every_pixel_back(peers):
    """Cosmic-CoNN crops to a multiple of 16 and deepCR pads with zeros; the benchmark reflect-pads for both."""
    import numpy as np

    image = np.arange(37 * 50, dtype=np.float32).reshape(37, 50)
    seen = []

    def run(x):
        seen.append(x.shape)
        return x * 2

    out = peers._padded(image, 16, run)
    assert seen == [(48, 64)]
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, image * 2)  # every pixel the network's, none left at zero
    assert peers._padded(image[:32, :48], 16, run).shape == (32, 48) and seen[-1] == (32, 48)


def test_peers_credits_each_peer_with_its_best_input_variant(peers):
    rows = {"kercr": {"tpr_at_fpr_1e-4": 0.9},
            "cosmic-conn (ADU)": {"tpr_at_fpr_1e-4": 0.3}, "cosmic-conn (electrons)": {"tpr_at_fpr_1e-4": 0.4},
            "deepcr-decam (ADU, sky subtracted)": {"tpr_at_fpr_1e-4": 0.6},
            "deepcr-decam (electrons)": {"tpr_at_fpr_1e-4": 0.1}}
    assert peers.best_variants(rows) == {"cosmic-conn": "cosmic-conn (electrons)",
                                         "deepcr-decam": "deepcr-decam (ADU, sky subtracted)"}
    with pytest.raises(ValueError, match="unknown peer"):
        peers.load_peer("lacosmic", 1)


def test_real_frame_variants_bin_frames_and_footprints_alike_and_add_a_seeded_sky(peers):
    """real_frames.py --variant: binned frames get binned footprints (charge kept); bright sky is seeded and additive."""
    import sys

    import numpy as np

    vary = sys.modules["real_frames"].vary
    rng = np.random.default_rng(0)
    image = rng.normal(100, 5, (9, 12)).astype(np.float32)
    ignore = np.zeros((9, 12), bool)
    ignore[3, 5] = True
    stamp = np.array([[0, 80, 0], [0, 200, 60]], np.float32)
    frames = [("f", image, ignore, 4.0, 7.0)]
    before = image.copy()

    assert vary(frames, [stamp], "as-is") == (frames, [stamp])
    (binned,), (bstamp,) = vary(frames, [stamp], "binned")
    name, img, ign, gain, rn = binned
    assert img.shape == (4, 6) and ign.shape == (4, 6) and (gain, rn) == (4.0, 14.0)
    np.testing.assert_allclose(img[1, 2], image[2:4, 4:6].sum(), rtol=1e-6)
    assert ign[1, 2] and ign.sum() == 1  # a block with one ignored pixel is ignored
    assert bstamp.shape == (1, 2) and bstamp.sum() == stamp.sum()  # the same charge, in half the pixels

    (bright,), _ = vary(frames, [stamp], "bright-sky")
    (again,), _ = vary(frames, [stamp], "bright-sky")
    np.testing.assert_array_equal(bright[1], again[1])
    added = bright[1] - image
    assert abs(added.mean() - 5000) < 50 and 20 < added.std() < 60  # 5,000 ADU with Poisson noise at gain 4
    np.testing.assert_array_equal(image, before)  # the input frames are not modified
    with pytest.raises(ValueError, match="unknown variant"):
        vary(frames, [stamp], "dark")
