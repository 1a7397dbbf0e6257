"""CR simulation, injection and real footprints."""

from pathlib import Path

import numpy as np
import pytest

from kercr.data.cosmic_rays import (
    BRIGHT_TRACK_GRID_DEG, CosmicRayModel, bright_tracks, inject_cosmic_rays, muon_deposits, projected_length_px, render_deposits, simulate_cosmic_rays,
)
from kercr.data.errors import KercrDataError
from kercr.data.footprints import extract_footprints, inject_footprints, read_footprint_table

REPO = Path(__file__).resolve().parents[2]
SHARED = next((p for p in (REPO.parent / "shared" / "data", REPO / "shared" / "data") if p.is_dir()), None)
TABLE = None if SHARED is None else SHARED / "cr_footprints" / "cosmic_rays_itl_2017_even.fits"


def test_injected_signal_is_exactly_on_the_mask():
    rng = np.random.default_rng(3)
    clean = (800 + 20 * rng.standard_normal((256, 256))).astype(np.float32)
    crs = simulate_cosmic_rays(clean.shape, exptime=100, rng=4, model=CosmicRayModel(rate_per_s=2000.0))
    assert len(crs.events) > 5 and crs.mask.sum() > 100
    before = clean.copy()
    image = inject_cosmic_rays(clean, crs.electrons, gain=4.0)
    np.testing.assert_array_equal(clean, before)  # input untouched
    diff = image - clean
    np.testing.assert_array_equal(diff != 0, crs.mask)
    # Threshold definition: every CR pixel holds more than half the read noise (7 e-).
    assert crs.electrons[crs.mask].min() > 3.5 and (crs.electrons[~crs.mask] == 0).all()
    np.testing.assert_allclose(diff[crs.mask], crs.electrons[crs.mask] / 4.0, rtol=1e-3)


def test_charge_is_conserved_for_a_muon():
    rng = np.random.default_rng(0)
    dep = muon_deposits(100.0, 100.0, np.radians(45), 0.3, rng=rng)
    img = render_deposits((200, 200), *dep)
    assert img.sum() == pytest.approx(dep[3].sum(), rel=1e-9)
    # ~80 e-/um most probable over 250/cos(45) um of silicon.
    assert 0.9 * 80 * 250 / np.cos(np.radians(45)) < dep[3].sum() < 1.6 * 80 * 250 / np.cos(np.radians(45))


@pytest.mark.parametrize("theta_deg", [20.0, 45.0, 70.0])
def test_muon_track_length_follows_incidence_angle(theta_deg):
    theta = np.radians(theta_deg)
    expected = 250.0 * np.tan(theta) / 15.0
    assert projected_length_px(theta) == pytest.approx(expected)
    dep = muon_deposits(20.0, 40.0, theta, 0.0, rng=np.random.default_rng(1))  # along +x
    img = render_deposits((80, 140), *dep)
    cols = np.flatnonzero((img > 50).any(axis=0))  # pixels with clearly deposited charge
    assert cols.max() - cols.min() + 1 == pytest.approx(expected + 1, abs=2.0)
    rows = np.flatnonzero((img > 50).any(axis=1))
    assert len(rows) <= 4  # a straight track along x stays 1-3 rows wide (diffusion)


def test_rate_scales_with_exposure_and_area():
    model = CosmicRayModel()
    assert model.expected_count((4096, 2048), 100.0) == pytest.approx(60.0)
    assert model.expected_count((2048, 2048), 100.0) == pytest.approx(30.0)
    counts = [len(simulate_cosmic_rays((64, 64), exptime=t, rng=s, model=CosmicRayModel(rate_per_s=1e4)).events)
              for t, s in ((10, 1), (40, 2))]
    mean10, mean40 = CosmicRayModel(rate_per_s=1e4).expected_count((64, 64), 10), 4 * CosmicRayModel(
        rate_per_s=1e4).expected_count((64, 64), 10)
    assert abs(counts[0] - mean10) < 4 * np.sqrt(mean10) + 1 and abs(counts[1] - mean40) < 4 * np.sqrt(mean40) + 1


def test_simulation_is_seeded_and_has_all_kinds():
    kw = dict(exptime=50, model=CosmicRayModel(rate_per_s=3000.0))
    a = simulate_cosmic_rays((128, 128), rng=7, **kw)
    b = simulate_cosmic_rays((128, 128), rng=7, **kw)
    c = simulate_cosmic_rays((128, 128), rng=8, **kw)
    np.testing.assert_array_equal(a.electrons, b.electrons)
    assert not np.array_equal(a.electrons, c.electrons)
    assert {e["kind"] for e in a.events} == {"muon", "worm", "spot"}


def test_injection_rejects_bad_input():
    with pytest.raises(KercrDataError, match="same 2-D shape"):
        inject_cosmic_rays(np.zeros((4, 4)), np.zeros((4, 5)), gain=4.0)
    with pytest.raises(KercrDataError, match="gain"):
        inject_cosmic_rays(np.zeros((4, 4)), np.zeros((4, 4)), gain=0.0)


def test_saturation_clips_only_cr_pixels():
    clean = np.full((10, 10), 100.0, np.float32)
    clean[0, 0] = 50000.0  # already above saturation, no CR: must stay
    cr = np.zeros((10, 10), np.float32)
    cr[5, 5] = 1e6
    out = inject_cosmic_rays(clean, cr, gain=4.0, saturation=40000.0)
    assert out[5, 5] == 40000.0 and out[0, 0] == 50000.0


def test_bright_tracks_are_straight_bright_and_half_of_them_along_the_grid():
    crs = bright_tracks((512, 512), n=400, rng=3, peak_e=(20000.0, 40000.0), threshold_e=50.0)
    assert len(crs.events) == 400 and all(e["kind"] == "bright" for e in crs.events)
    off_grid = np.array([min(e["azimuth_deg"] % 90.0, 90.0 - e["azimuth_deg"] % 90.0) for e in crs.events])
    near = off_grid <= BRIGHT_TRACK_GRID_DEG
    # Half drawn near the grid, plus the uniform half's own 2 x 10 / 90 of it.
    assert 0.55 < near.mean() < 0.67
    # Charge per pixel of length within the asked range (times the Landau mean, about 1.2).
    per_px = np.array([e["charge_e"] / e["length_px"] for e in crs.events])
    assert 20000.0 < np.median(per_px) < 1.3 * 40000.0 and per_px.min() > 0.8 * 20000.0
    assert np.array_equal(crs.mask, crs.electrons > 0) and crs.electrons[crs.mask].min() > 50.0
    one = bright_tracks((64, 64), n=1, rng=5, peak_e=(30000.0, 30000.0))
    assert one.mask.sum() >= 0.5 * one.events[0]["length_px"]  # a line, not a spot
    with pytest.raises(KercrDataError, match="peak_e"):
        bright_tracks((64, 64), n=1, rng=0, peak_e=(0.0, 1e4))


def test_footprint_table_reads_882_crs():
    if TABLE is None or not TABLE.exists():
        pytest.skip("../shared/data/cr_footprints is absent")
    stamps = read_footprint_table(TABLE)
    assert len(stamps) == 882
    sizes = np.array([(s > 0).sum() for s in stamps])
    assert np.median(sizes) == pytest.approx(7, abs=1) and 50 <= np.percentile(sizes, 95) <= 65
    assert 250 < sizes.max() < 300
    from astropy.io import fits

    with fits.open(TABLE) as hdul:
        assert sizes.sum() == sum(len(v) for v in hdul[1].data["pixel_values"])  # no span lost or merged
    values = np.concatenate([s[s > 0] for s in stamps])
    assert values.min() == 49 and values.max() == 27790


def test_footprint_injection_matches_mask():
    stamps = [np.array([[0, 500], [800, 900]], np.float32), np.array([[1000, 2000, 3000]], np.float32)]
    clean = np.full((50, 60), 300.0, np.float32)
    img, cr, mask = inject_footprints(clean, stamps, n=20, gain=2.0, rng=0)
    assert (clean == 300.0).all()
    np.testing.assert_array_equal(img != clean, mask)
    np.testing.assert_allclose((img - clean)[mask], cr[mask] / 2.0)
    img2, _, mask2 = inject_footprints(clean, stamps, n=20, gain=2.0, rng=0)
    np.testing.assert_array_equal(img, img2)


def test_extract_footprints_from_dark():
    rng = np.random.default_rng(5)
    dark = 1000 + 5 * rng.standard_normal((200, 200))
    dark[50, 40:50] += 200.0  # a track
    dark[120:122, 120:122] += 100.0  # a spot
    dark[10, 10] += 500.0  # a known hot pixel
    hot = np.zeros(dark.shape, bool)
    hot[10, 10] = True
    stamps = extract_footprints(dark, gain=4.0, bad_mask=hot)
    assert sorted(s.shape for s in stamps) == [(1, 10), (2, 2)]
    track = next(s for s in stamps if s.shape == (1, 10))
    np.testing.assert_allclose(track, 800.0, atol=4 * 5 * 4.0)  # 200 ADU x 4 e-/ADU


def test_footprint_inputs_are_named(tmp_path):
    from astropy.io import fits

    from kercr.data.errors import FITSFormatError

    dark = np.random.default_rng(0).normal(0, 3, (64, 64)).astype(np.float32)
    with pytest.raises(KercrDataError, match="gain=-1 must be a positive number"):
        extract_footprints(dark, gain=-1)
    with pytest.raises(KercrDataError, match="bad_mask has shape"):
        extract_footprints(dark, bad_mask=np.zeros((3, 3), bool))
    with pytest.raises(KercrDataError, match="no finite pixel"):
        extract_footprints(np.full((8, 8), np.nan))
    with pytest.raises(KercrDataError, match="n=-3 must be a whole number"):
        inject_footprints(dark, [np.ones((2, 2), np.float32)], n=-3, gain=2.0, rng=0)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(dark, name="COSMIC_RAYS")]).writeto(tmp_path / "image.fits")
    with pytest.raises(FITSFormatError, match="not a CR footprint table"):
        read_footprint_table(tmp_path / "image.fits")
