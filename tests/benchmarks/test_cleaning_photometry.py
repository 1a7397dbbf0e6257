"""benchmarks/cleaning_photometry.py --tiny (no model): a well-formed JSON, and the true-mask
cleaning beats the uncleaned image on the photometry of a CR-hit star (issue 24, point 4)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cleaning_photometry.py"


@pytest.fixture()
def bench():
    spec = importlib.util.spec_from_file_location("cleaning_photometry", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("cleaning_photometry", None)


def test_cleaning_photometry_tiny_true_mask_beats_uncleaned(bench, tmp_path, capsys):
    pytest.importorskip("astroscrappy")
    assert bench.main(["--tiny", "--no-model", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "cleaning_photometry.json").read_text())
    assert "| cleaner |" in capsys.readouterr().out
    assert (tmp_path / "cleaning_photometry.md").exists()
    rows = result["cleaners"]
    expected = {"uncleaned", "astroscrappy, meanmask", "astroscrappy, medmask"} | {
        f"true mask, {m}" for m in bench.TRUE_CLEANINGS}
    assert set(rows) == expected  # no model row with --no-model
    assert result["frames"]["n"] == 1 and result["frames"]["shape"] == [256, 256]
    assert result["frames"]["hit_apertures"] >= 1
    for row in rows.values():
        for key in ("cr_pixels_sky", "cr_pixels_source", "aperture", "aperture_not_hit"):
            stats = row[key]
            assert set(stats) == {"median", "p90", "n"}
            if stats["n"]:
                assert math.isfinite(stats["median"]) and stats["median"] <= stats["p90"]
        assert row["aperture"]["n"] == result["frames"]["hit_apertures"]
    raw = rows["uncleaned"]
    assert raw["aperture_not_hit"]["median"] == 0 and rows["true mask, median"]["aperture_not_hit"]["p90"] == 0
    for m in bench.TRUE_CLEANINGS:
        true = rows[f"true mask, {m}"]
        # the true mask removes the CRs: far smaller errors on the CR pixels, smaller on the hit star's flux
        # (the CR crosses the star's core, which every estimate from the wings underestimates)
        assert true["aperture"]["median"] < raw["aperture"]["median"]
        assert true["cr_pixels_sky"]["median"] < 0.2 * raw["cr_pixels_sky"]["median"]
        assert true["cr_pixels_sky"]["median"] < 2.0  # a CR pixel replaced to within the noise
    # the default (median) recovers most of the flux: a third of the uncleaned error on this frame
    assert rows["true mask, median"]["aperture"]["median"] < 0.5 * raw["aperture"]["median"]


def test_cleaning_photometry_apertures_see_a_cr_on_a_star(bench):
    """The aperture metric: zero for the truth itself, large when a CR is added inside the aperture."""
    import numpy as np

    from kercr.data.synthetic import SyntheticConfig

    config = SyntheticConfig()
    truth = np.full((64, 64), 100.0, np.float32)
    yy, xx = np.mgrid[:64, :64]
    truth += 5000 * np.exp(-((yy - 32) ** 2 + (xx - 30) ** 2) / (2 * 1.5 ** 2))
    noise = bench.noise_adu(truth, config)
    bad = np.zeros(truth.shape, bool)
    centres = bench.find_apertures(truth, bad, noise, config, 5.0)
    assert centres == [(32, 30)]
    cr = np.zeros(truth.shape, bool)
    cr[33, 31] = True
    hit = truth.copy()
    hit[cr] += 2000
    assert bench.aperture_errors(truth, truth, cr, noise, centres, 5.0) == [0.0]
    (err,) = bench.aperture_errors(hit, truth, cr, noise, centres, 5.0)
    assert err > 5
    assert bench.aperture_errors(hit, truth, np.zeros_like(cr), noise, centres, 5.0) == []
    assert bench.aperture_errors(hit, truth, np.zeros_like(cr), noise, centres, 5.0, hit=False) == [pytest.approx(err)]


def test_cleaning_photometry_skips_deepcr_without_torch(bench, monkeypatch, capsys):
    """deepCR is optional: not importable, its rows are skipped with a note (no torch needed)."""
    monkeypatch.setitem(sys.modules, "deepCR", None)
    assert bench.load_deepcr() is None
    assert "deepCR skipped" in capsys.readouterr().out
