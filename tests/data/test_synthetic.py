"""Synthetic DECam-like frames: determinism, truth masks, physics sanity, FITS round trip."""

import numpy as np
import pytest

from kercr.data.cosmic_rays import CosmicRayModel
from kercr.data.errors import KercrDataError
from kercr.data.fits_io import read_ccd, write_fits_with_mask
from kercr.data.normalization import robust_sky_noise
from kercr.data.synthetic import BANDS, PIXEL_SCALE, SyntheticConfig, generate_dataset, make_frame

SHAPE = (256, 192)
MANY_CRS = SyntheticConfig(cr_model=CosmicRayModel(rate_per_s=300.0))
EMPTY = SyntheticConfig(star_density=0.0, galaxy_density=0.0, hot_pixels=0.0, bad_columns=0.0,
                        cr_model=CosmicRayModel(rate_per_s=0.0))


def test_same_seed_same_frame_different_seed_differs():
    a = make_frame(seed=11, shape=SHAPE)
    b = make_frame(seed=11, shape=SHAPE)
    c = make_frame(seed=12, shape=SHAPE)
    np.testing.assert_array_equal(a.image_adu, b.image_adu)
    np.testing.assert_array_equal(a.cr_mask, b.cr_mask)
    assert a.meta == b.meta
    assert not np.array_equal(a.image_adu, c.image_adu)


def test_cr_pixels_are_where_the_mask_says():
    f = make_frame(seed=1, shape=SHAPE, config=MANY_CRS)
    assert f.cr_mask.sum() > 50
    diff = f.image_adu - f.clean_adu
    usable = ~f.ignore_mask  # CR charge on a saturated pixel is clipped away
    np.testing.assert_array_equal((diff != 0)[usable], f.cr_mask[usable])
    np.testing.assert_allclose(diff[f.cr_mask & usable], f.cr_electrons[f.cr_mask & usable] / f.meta["gain"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("band", sorted(BANDS))
def test_sky_and_noise_match_the_recipe(band):
    f = make_frame(seed=2, shape=SHAPE, band=band, exptime=100.0)
    zp, sky_mag = BANDS[band]
    dark_sky_adu = 10 ** (-0.4 * (sky_mag - zp)) * PIXEL_SCALE**2 * 100.0 / 4.0
    sky, noise, _ = robust_sky_noise(f.clean_adu, mask=f.ignore_mask)
    assert 0.95 * dark_sky_adu < sky < 3.2 * dark_sky_adu  # moon/twilight factor 1-3
    assert sky == pytest.approx(f.meta["sky_adu"], rel=0.03)
    blank = make_frame(seed=2, shape=SHAPE, band=band, exptime=100.0, config=EMPTY)
    # Noise from differences of neighbouring pixels: immune to the weak sky gradient.
    d = np.diff(blank.clean_adu.astype(np.float64), axis=1)
    noise = 1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)
    expected_noise = np.sqrt(blank.meta["sky_adu"] * 4.0 + 7.0**2) / 4.0  # Poisson + read noise, in ADU
    assert noise == pytest.approx(expected_noise, rel=0.05)


def test_saturated_stars_bleed_and_are_ignored():
    cfg = SyntheticConfig(star_density=4e5, star_mags=(10.0, 14.0))
    f = make_frame(seed=3, shape=(512, 256), band="z", exptime=150.0, config=cfg)
    sat = f.clean_adu >= cfg.saturation_adu
    assert sat.sum() > 50 and f.ignore_mask[sat].all()
    assert f.clean_adu.max() == cfg.saturation_adu
    # Bleed trails run along columns: saturated runs are much taller than wide.
    cols = np.flatnonzero(sat.any(axis=0))
    tallest = max(np.ptp(np.flatnonzero(sat[:, c])) + 1 for c in cols)
    assert tallest > 3 * (f.meta["seeing_arcsec"] / PIXEL_SCALE)


def test_stars_follow_the_psf_width():
    cfg = SyntheticConfig(star_density=2e4, star_mags=(17.0, 18.0), galaxy_density=0.0, hot_pixels=0.0,
                          bad_columns=0.0, cr_model=CosmicRayModel(rate_per_s=0.0))
    f = make_frame(seed=4, shape=(512, 512), band="r", exptime=60.0, config=cfg)
    assert not f.ignore_mask.any() and not f.cr_mask.any()
    assert 0.8 <= f.meta["seeing_arcsec"] <= 1.6 and 2.5 <= f.meta["psf_beta"] <= 4.5
    # Brightest star: its half-maximum area gives the FWHM (pi/4 FWHM^2), within pixelization.
    img = f.clean_adu - f.meta["sky_adu"]
    y, x = np.unravel_index(np.argmax(img), img.shape)
    cut = img[max(y - 15, 0): y + 16, max(x - 15, 0): x + 16]
    fwhm_px = np.sqrt(4 / np.pi * (cut > cut.max() / 2).sum())
    assert fwhm_px == pytest.approx(f.meta["seeing_arcsec"] / PIXEL_SCALE, rel=0.25)


def test_generate_dataset_is_reproducible_and_indexed():
    frames = list(generate_dataset(3, seed=5, shape=(64, 64)))
    again = list(generate_dataset(3, seed=5, shape=(64, 64)))
    assert [f.meta["exposure_id"] for f in frames] == ["synthetic-5-000000", "synthetic-5-000001", "synthetic-5-000002"]
    for a, b in zip(frames, again):
        np.testing.assert_array_equal(a.image_adu, b.image_adu)
    assert not np.array_equal(frames[0].image_adu, frames[1].image_adu)


def test_bad_arguments():
    with pytest.raises(KercrDataError, match="unknown band 'u'"):
        make_frame(seed=0, shape=SHAPE, band="u")
    with pytest.raises(KercrDataError, match="exptime"):
        make_frame(seed=0, shape=SHAPE, exptime=-1)
    with pytest.raises(KercrDataError, match="shape"):
        make_frame(seed=0, shape=(4,))


def test_synthetic_exposure_to_fits_and_back(tmp_path):
    f = make_frame(seed=6, shape=SHAPE, config=MANY_CRS)
    out = write_fits_with_mask(tmp_path / "synthetic.fits", f.image_adu, f.cr_mask, extname="N4",
                               provenance={"BAND": f.meta["band"], "GAIN": 4.0, "RDNOISE": 7.0})
    back = read_ccd(out, "N4")
    np.testing.assert_array_equal(back.data, f.image_adu)
    assert back.gain == 4.0 and back.readnoise == 7.0  # inherited from the primary header
    np.testing.assert_array_equal(read_ccd(out, "CRMASK").data.astype(bool), f.cr_mask)


# --------------------------------------------------------------------------------------------
# variety="wide": a random CCD imager per frame
# --------------------------------------------------------------------------------------------
def test_random_instruments_span_sampling_detectors_and_sensors():
    from kercr.data.synthetic import SENSORS, random_instrument

    rng = np.random.default_rng(0)
    configs = [random_instrument(rng) for _ in range(400)]
    fwhm = np.array([c.seeing_range[0] / c.pixel_scale for c in configs])
    assert 1.1 <= fwhm.min() < 1.5 and 6.0 < fwhm.max() <= 8.0  # undersampled to well-sampled
    gains = np.array([c.gain for c in configs])
    assert 0.5 <= gains.min() < 0.7 and 4.0 < gains.max() <= 5.0
    assert {c.cr_model.geometry.thickness_um for c in configs} == {s[0] for s in SENSORS}
    biases = np.array([c.bias_adu for c in configs])
    assert 0.3 < (biases == 0).mean() < 0.7 and biases.max() > 2000  # calibrated and raw frames
    for c in configs:  # a 16-bit ADC; the sky from a few e- to 30 % of full well; CR counts of a 115 s exposure
        assert c.saturation_adu + c.bias_adu <= 65535.0
        assert c.sky_e_range == (3.0, pytest.approx(0.3 * c.gain * c.saturation_adu, rel=1e-6))
        assert c.cr_exptime == 115.0


def test_wide_frames_differ_in_sampling_and_sky_and_keep_exact_truth():
    from kercr.data.synthetic import random_instrument

    frames = [make_frame(seed=i, shape=(256, 256), config=random_instrument(np.random.default_rng(i), cr_rate_scale=20))
              for i in range(8)]
    skies = [f.meta["sky_adu"] - f.meta["bias_adu"] for f in frames]
    assert max(skies) / min(skies) > 10
    assert all(f.meta["cr_exptime"] == 115.0 for f in frames)
    assert np.ptp([f.meta["fwhm_px"] for f in frames]) > 1.5
    for f in frames:
        assert np.median(f.clean_adu) < f.meta["saturation_adu"]  # never a saturated sky
        hit = f.cr_mask
        assert hit.any() and np.all(f.image_adu[~hit] == f.clean_adu[~hit])
        assert np.all(f.image_adu[hit] >= f.clean_adu[hit])


def test_saturated_stars_and_bleed_trails_are_negatives_in_training_weights():
    from kercr.data.frames import SyntheticFrames

    source = SyntheticFrames(seed=0, shape=(512, 512), variety="wide", cr_rate_scale=20)
    for i in range(40):
        f = make_frame(seed=np.random.SeedSequence([0, 7919, i]), shape=(512, 512), config=source.frame_config(i))
        if f.saturated_mask.sum() > 20:
            break
    else:
        pytest.fail("no wide frame with a saturated star in 40 tries")
    image, mask, weight = source.frame(i)
    negatives = f.saturated_mask & (mask == 0)
    assert negatives.sum() > 20 and np.all(weight[negatives] == 1)
    # What benchmarks count false positives on (frame_classes.py): this frame's saturated and bleed pixels.
    assert np.array_equal(source.saturated_pixels(i), f.saturated_mask)
    hot_or_bad = f.ignore_mask & ~f.saturated_mask
    assert np.all(weight[hot_or_bad] == 0)
    # CR pixels below their own noise are left out of the loss; bright ones are positives.
    noise_e = np.sqrt(np.maximum(f.clean_adu * f.meta["gain"] - f.meta["bias_adu"] * f.meta["gain"], 0)
                      + f.meta["readnoise_e"] ** 2)
    sim = f.cr_mask & ~f.ignore_mask
    faint, bright = sim & (f.cr_electrons < 0.9 * noise_e), sim & (f.cr_electrons > 1.1 * noise_e)
    assert faint.sum() > 10 and bright.sum() > 10
    assert np.all(weight[faint] == 0) and np.all(weight[bright] == 1) and np.all(mask[bright] == 1)
    with pytest.raises(KercrDataError, match="variety"):
        SyntheticFrames(seed=0, variety="hst")


def test_extended_sources_are_large_smooth_and_seeded():
    from kercr.data.synthetic import extended_sources

    shape = (512, 512)
    a = extended_sources(shape, 3, n=4, noise_e=20.0)
    assert a.dtype == np.float32 and a.shape == shape
    np.testing.assert_array_equal(a, extended_sources(shape, 3, n=4, noise_e=20.0))
    assert not extended_sources(shape, 3, n=0, noise_e=20.0).any()
    assert a.min() >= 0 and a.max() <= 300 * 20.0 * 4  # peaks at most 300 x the noise each
    # Smooth: neighbouring pixels differ by a small fraction of the peak; extended: many pixels
    # above the noise.
    assert np.abs(np.diff(a, axis=1)).max() < 0.5 * a.max()
    assert (a > 20.0).sum() > 2000
    capped = extended_sources(shape, 3, n=1, noise_e=20.0, peak_snr=(300.0, 300.0), max_peak_e=1000.0)
    assert 900 < capped.max() <= 1000.0


def test_source_map_marks_sources_not_sky_or_masked_pixels():
    from kercr.data.synthetic import extended_sources, source_map

    rng = np.random.default_rng(0)
    sky = 500 + 10 * rng.standard_normal((512, 512)).astype(np.float32)
    assert source_map(sky).mean() < 1e-3
    blob = extended_sources(sky.shape, 1, n=1, noise_e=10.0, peak_snr=(50.0, 50.0), re_px=(20.0, 20.0))
    image = sky + blob
    original = image.copy()
    on = source_map(image)
    np.testing.assert_array_equal(image, original)  # input not modified
    bright = blob > 30.0  # 3 sigma
    assert bright.sum() > 100 and on[bright].mean() > 0.9
    assert on[blob < 1.0].mean() < 1e-3
    mask = np.zeros(sky.shape, bool)
    mask[bright] = True
    assert not source_map(image, mask=mask)[mask].any()


def test_footprints_can_be_placed_on_chosen_pixels():
    from kercr.data.footprints import inject_footprints

    stamps = [np.full((3, 3), 400.0, np.float32), np.full((1, 5), 800.0, np.float32)]
    clean = np.full((200, 200), 100.0, np.float32)
    where = np.zeros(clean.shape, bool)
    where[150:160, 40:50] = True
    _, cr, mask = inject_footprints(clean, stamps, n=30, gain=1.0, rng=1, where=where)
    ys, xs = np.nonzero(mask)
    assert ys.min() >= 150 - 2 and ys.max() <= 159 + 2 and xs.min() >= 40 - 2 and xs.max() <= 49 + 2
    _, _, anywhere = inject_footprints(clean, stamps, n=30, gain=1.0, rng=1, where=np.zeros(clean.shape, bool))
    assert anywhere.any() and not anywhere[150:160, 40:50].all()
    with pytest.raises(KercrDataError, match="where has shape"):
        inject_footprints(clean, stamps, n=1, gain=1.0, rng=1, where=where[:10])


def test_training_frames_can_hold_large_sources_with_cr_hits_on_sources():
    from kercr.data.frames import SyntheticFrames
    from kercr.data.synthetic import source_map

    stamps = [np.outer(np.ones(2), np.linspace(300, 3000, 12)).astype(np.float32)]
    kw = dict(seed=0, shape=(512, 512), variety="wide", cr_rate_scale=20, footprints=stamps, footprint_fraction=1.0)
    base, rich = SyntheticFrames(**kw), SyntheticFrames(**kw, extended_sources=6, on_source_fraction=1.0)
    same = SyntheticFrames(**kw, extended_sources=0, on_source_fraction=0)
    on_base = on_rich = 0
    for i in range(6):
        image0, cr0, ignore0, clean0 = base._make(i)
        np.testing.assert_array_equal(image0, same._make(i)[0])  # the defaults leave the frames as they were
        image, cr, ignore, clean = rich._make(i)
        # Sources are in the clean frame too: the image differs from it only by the CR charge.
        assert np.all(image[~cr] == clean[~cr])
        on_base += (cr0 & source_map(clean0, mask=ignore0)).sum() / cr0.sum()
        on_rich += (cr & source_map(clean, mask=ignore)).sum() / cr.sum()
    assert on_rich > 2 * on_base
    with pytest.raises(KercrDataError, match="on_source_fraction"):
        SyntheticFrames(seed=0, on_source_fraction=1.5)
    with pytest.raises(KercrDataError, match="extended_sources"):
        SyntheticFrames(seed=0, extended_sources=-1)


def test_cr_threshold_e_cuts_simulated_crs_like_harvested_footprints():
    from kercr.data.frames import SyntheticFrames

    kw = dict(seed=0, shape=(256, 256), variety="wide", cr_rate_scale=40)
    default, cut = SyntheticFrames(**kw), SyntheticFrames(**kw, cr_threshold_e=50)
    fewer = 0
    for i in range(4):
        image0, cr0, _, clean0 = default._make(i)
        np.testing.assert_array_equal(image0, SyntheticFrames(**kw, cr_threshold_e=None)._make(i)[0])
        image, cr, _, clean = cut._make(i)
        config = cut.frame_config(i)
        charge_e = (image - clean) * config.gain
        unsaturated = image < config.saturation_adu + config.bias_adu
        assert cr.any() and charge_e[cr & unsaturated].min() >= 50 * 0.999  # nothing below the cut is kept...
        assert np.all(charge_e[~cr] == 0)  # ...neither in the image nor in the truth
        assert not (cr & ~cr0).any()  # the same CRs, cut: a subset of the default truth
        fewer += cr0.sum() - cr.sum()
    assert fewer > 0
    for bad in (0, -5, "high", float("nan")):
        with pytest.raises(KercrDataError, match="cr_threshold_e"):
            SyntheticFrames(seed=0, cr_threshold_e=bad)


def test_faint_crs_sets_the_label_of_sub_noise_cr_pixels():
    from kercr.data.frames import SyntheticFrames

    kw = dict(seed=0, shape=(256, 256), variety="wide", cr_rate_scale=40)
    ignored, negative = SyntheticFrames(**kw), SyntheticFrames(**kw, faint_crs="negative")
    moved = 0
    for i in range(4):
        image0, cr0, ignore0, _ = ignored._make(i)
        image, cr, ignore, _ = negative._make(i)
        np.testing.assert_array_equal(image, image0)  # the same frame: only the labels differ
        faint = cr0 & ignore0 & ~cr  # the sub-noise CR pixels: ignored before, negatives now
        assert not (cr & ~cr0).any() and np.array_equal(cr0 & ~cr, faint)
        assert not (ignore & faint).any()
        moved += faint.sum()
        image, cr, ignore, _ = SyntheticFrames(**kw, faint_crs="positive")._make(i)
        assert np.array_equal(cr, cr0) and not (ignore & faint).any()  # CR pixels, in the loss
    assert moved > 0
    with pytest.raises(KercrDataError, match="faint_crs='drop' is not one of"):
        SyntheticFrames(seed=0, faint_crs="drop")


def test_sky_e_range_moves_the_sky_of_the_random_imagers():
    from kercr.data.frames import SyntheticFrames
    from kercr.data.synthetic import make_frame

    def skies_e(frames, n=40):
        out = []
        for i in range(n):
            config = frames.frame_config(i)
            meta = make_frame(seed=np.random.SeedSequence([0, 7919, i]), shape=(32, 32), config=config).meta
            out.append((meta["sky_adu"] - config.bias_adu) * config.gain)
        return np.array(out)

    default = SyntheticFrames(seed=0, variety="wide")
    bright = SyntheticFrames(seed=0, variety="wide", sky_e_range=(100, 1e6))
    for i in range(40):  # unset: 3 e- up to 30 % of saturation, as before; the cap applies to both
        a, b = default.frame_config(i), bright.frame_config(i)
        assert a.sky_e_range[0] == 3.0 and b.sky_e_range == (100.0, a.sky_e_range[1])
        assert (a.gain, a.readnoise_e, a.seeing_range) == (b.gain, b.readnoise_e, b.seeing_range)
    low, high = skies_e(default), skies_e(bright)
    assert high.min() >= 100 * 0.999 and (low < 100).mean() > 0.3
    assert np.median(high) > 3 * np.median(low)
    for bad, message in [((100, 50), "0 < low < high"), ((0, 10), "0 < low < high"), ("bright", "0 < low < high"),
                         ((1, 2, 3), "0 < low < high")]:
        with pytest.raises(KercrDataError, match=message):
            SyntheticFrames(seed=0, variety="wide", sky_e_range=bad)
    with pytest.raises(KercrDataError, match="variety='wide'"):
        SyntheticFrames(seed=0, sky_e_range=(100, 1e6))


def test_dominant_source_covers_the_asked_fraction_of_the_field():
    from kercr.data.synthetic import dominant_source

    for seed in range(4):  # galaxies and nebulae
        source = dominant_source((256, 192), seed, sky_var_e=200.0)
        cover = float(np.mean(source > 200.0))
        assert 0.27 < cover < 0.73, (seed, cover)
        assert source.dtype == np.float32 and source.min() >= 0
    capped = dominant_source((256, 192), 0, sky_var_e=200.0, cover=0.9, max_peak_e=300.0)
    assert capped.max() <= 300.0 + 1e-3


def test_frame_classes_dominant_and_integer_frames():
    from kercr.data.frames import SyntheticFrames

    kw = dict(seed=2, shape=(128, 128), variety="wide", cr_rate_scale=10)
    plain = SyntheticFrames(**kw)
    mixed = SyntheticFrames(**kw, dominant_sources=0.4, integer_frames=0.4)
    classes = [mixed.frame_class(i) for i in range(40)]
    assert {"plain", "dominant", "integer"} <= set(classes)
    assert 0.2 < classes.count("dominant") / 40 < 0.6 and 0.2 < classes.count("integer") / 40 < 0.6
    for i, kind in enumerate(classes[:12]):
        image, cr_mask, ignore, clean = mixed._make(i)
        if kind == "plain":  # the classes draw from their own random streams: plain frames are unchanged
            np.testing.assert_array_equal(image, plain._make(i)[0])
        elif kind == "integer":
            config = mixed.frame_config(i)
            assert config.gain >= 10 and np.array_equal(image, np.round(image))
            assert np.median(clean) - config.bias_adu <= 100 + 5 * np.sqrt(100)
        else:  # a source over 30-70 % of the field: the clean frame's spread is far above the plain one's
            assert np.percentile(clean, 90) - np.percentile(clean, 10) > 1.5 * (
                np.percentile(plain._make(i)[3], 90) - np.percentile(plain._make(i)[3], 10))
    with pytest.raises(KercrDataError, match="integer_frames"):
        SyntheticFrames(**kw, integer_frames=1.5)


def test_bright_tracks_add_cr_pixels_to_otherwise_unchanged_frames():
    from kercr.data.frames import SyntheticFrames

    kw = dict(seed=4, shape=(256, 256), variety="wide", cr_rate_scale=10)
    plain, tracked = SyntheticFrames(**kw), SyntheticFrames(**kw, bright_tracks=60.0)
    added = 0
    for i in range(3):
        image0, mask0, _, clean0 = plain._make(i)
        image1, mask1, ignore1, clean1 = tracked._make(i)
        np.testing.assert_array_equal(clean0, clean1)
        assert (mask1 >= mask0).all()
        new = mask1 & ~mask0
        # The tracks' pixels are brighter than before and labelled CR; every other pixel is as it was.
        assert (image1[new] > image0[new]).all() and np.array_equal(image1[~mask1], image0[~mask1])
        added += int((new & ~ignore1).sum())
    assert added > 300
    # A track pixel that reached saturation is ignored, as CR hits on saturated pixels are (a saturated
    # straight line labelled CR would contradict the bleed trails, negatives).
    crowded = SyntheticFrames(**kw, bright_tracks=3000.0)
    saturated = 0
    for i in range(4):
        image0, mask0, _, _ = plain._make(i)
        image1, mask1, ignore1, _ = crowded._make(i)
        config = crowded.frame_config(i)
        at_saturation = mask1 & ~mask0 & (image1 >= config.saturation_adu + config.bias_adu)
        assert ignore1[at_saturation].all()
        saturated += int(at_saturation.sum())
    assert saturated > 0
    with pytest.raises(KercrDataError, match="bright_tracks"):
        SyntheticFrames(**kw, bright_tracks=-1)


def test_make_frame_names_a_bad_shape_or_exposure_time():
    with pytest.raises(KercrDataError, match="whole numbers of pixels"):
        make_frame(seed=0, shape=(32.0, 32.0))
    with pytest.raises(KercrDataError, match="exptime=inf s must be a positive finite time"):
        make_frame(seed=0, shape=(32, 32), exptime=float("inf"))
