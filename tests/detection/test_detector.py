"""kercr.detect (kercr.detection.detector): ignored pixels, normalization, cleaning, flips, thresholds.

The pieces have their own files: loading a model (test_loading.py), runtimes (test_runtimes.py),
tiling (test_tiling.py) and the accepted inputs (test_inputs.py). :class:`DetectionResult`
(kercr.detection.result) is tested here, through the results of ``detect``: its dilated mask and
``to_ccddata``.

The behaviour tests use a tiny untrained ``deepcr_2_4`` (1,709 parameters) saved like a training
run (``.keras`` + ``normalization.json`` + model card; the ``tiny_detector`` fixture) on 300 x 500
synthetic frames. Detection quality needs the shipped trained model (``kercr/weights/default.keras``);
those tests skip with the reason when it is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

import kercr
from kercr.data import KercrDataError, NormalizationConfig, make_frame, robust_sky_noise
from kercr.detection import DetectionResult, detect, load_model
from kercr.models import receptive_field_radius
from kercr.weights import has_default

SHAPE = (300, 500)  # the detection_frame fixture's


# --------------------------------------------------------------------------------------------
# Ignored pixels and bad inputs
# --------------------------------------------------------------------------------------------
def test_nan_pixels_do_not_spread(tiny, frame):
    image = frame.image_adu.copy()
    bad = np.zeros(SHAPE, bool)
    bad[100:110, 200:230] = True
    bad[5, 7] = bad[250, 480] = True
    with_nan = image.copy()
    with_nan[bad] = np.nan
    with_nan[0, 0] = np.inf
    bad[0, 0] = True
    sky, _, _ = robust_sky_noise(image, mask=bad)
    with_sky = image.copy()
    with_sky[bad] = np.float32(sky)
    r_nan = detect(with_nan, model=tiny, runtime="keras", tile=128)
    r_sky = detect(with_sky, model=tiny, runtime="keras", tile=128, mask=bad)
    np.testing.assert_array_equal(r_nan.ignored, bad)
    assert np.all(r_nan.probability[bad] == 0) and not r_nan.mask[bad].any()
    np.testing.assert_allclose(r_nan.probability, r_sky.probability, atol=1e-6, rtol=0)
    assert np.isfinite(r_nan.probability).all()


def test_bad_inputs_get_clear_errors(tiny, frame):
    with pytest.raises(KercrDataError, match="2-D"):
        detect(np.zeros((2, 30, 30), np.float32), model=tiny)
    with pytest.raises(KercrDataError, match="mask has shape"):
        detect(frame.image_adu, model=tiny, mask=np.zeros((3, 3), bool), runtime="keras")
    with pytest.raises(KercrDataError, match="every pixel"):
        detect(np.full((40, 40), np.nan, np.float32), model=tiny, runtime="keras")
    with pytest.raises(KercrDataError, match=r"too small.*5 x 5 pixels at least"):
        detect(np.random.default_rng(0).normal(100, 5, (3, 3)).astype(np.float32), model=tiny, runtime="keras")
    with pytest.raises(ValueError, match="leaves no core"):
        detect(frame.image_adu, model=tiny, tile=8, overlap=16, runtime="keras")
    with pytest.raises(ValueError, match="runtime"):
        detect(frame.image_adu, model=tiny, runtime="onnx")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        detect(frame.image_adu, model=tiny, threshold=2.0, runtime="keras")
    for threshold in ("0.5", True, np.array([0.5]), float("nan")):
        with pytest.raises(ValueError, match=r"must be a probability in \[0, 1\]"):
            detect(frame.image_adu, model=tiny, threshold=threshold, runtime="keras")
    with pytest.raises(ValueError, match="tile=512.5 must be a whole number of pixels"):
        detect(frame.image_adu, model=tiny, tile=512.5, runtime="keras")
    with pytest.raises(ValueError, match="overlap=nan must be a whole number"):
        detect(frame.image_adu, model=tiny, overlap=float("nan"), runtime="keras")
    with pytest.raises(KercrDataError, match="saturation=nan must be a number"):
        detect(frame.image_adu, model=tiny, saturation=float("nan"), runtime="keras")


def test_numpy_header_numbers_and_a_masked_arrays_mask_are_used(tiny, frame):
    """SATURATE as a numpy float (a CCDData built in numpy code) saturates pixels as a Python float
    does; a numpy masked array's masked pixels are ignored, as a CCDData's mask is."""
    from astropy.nddata import CCDData

    image = frame.image_adu.copy()
    image[10, 10] = 60000.0
    for value in (60000.0, np.float32(50000.0), np.int64(50000)):
        result = detect(CCDData(image, unit="adu", meta={"SATURATE": value}), model=tiny, runtime="keras")
        assert result.ignored[10, 10] and result.saturation == float(value)
    masked = np.ma.masked_array(image, mask=np.zeros(image.shape, bool))
    masked.mask[20:30, 40:50] = True
    result = detect(masked, model=tiny, runtime="keras")
    assert result.ignored[20:30, 40:50].all() and not result.mask[20:30, 40:50].any()


# --------------------------------------------------------------------------------------------
# Normalization with the model's constants; the result's masks (kercr.detection.result)
# --------------------------------------------------------------------------------------------
def test_a_local_noise_model_is_detected_with_its_noise_maps(tmp_path, save_model, whole_frame_reference):
    """A model trained with noise_model="local" gets the per-pixel maps in detect, tile by tile
    stitched as one frame (the reference normalizes the whole frame with the maps)."""
    local = NormalizationConfig(noise_model="local", noise_estimator="diff2", asinh_softening=10.0)
    path = save_model(tmp_path / "local", "m", normalization=False)
    (tmp_path / "local" / "normalization.json").write_text(json.dumps(local.to_dict()))
    rng = np.random.default_rng(5)
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    electrons = 100.0 + 5000.0 * np.exp(-np.hypot(y - 150, x - 200) / 80.0)  # a galaxy over much of it
    image = ((electrons + rng.standard_normal(SHAPE) * np.sqrt(electrons + 25.0)) / 2.0).astype(np.float32)
    result = detect(image, model=path, runtime="keras", tile=128)
    loaded = load_model(path)
    assert loaded.normalization == local
    reference = whole_frame_reference(path, image, margin=receptive_field_radius(loaded.model), multiple=loaded.multiple)
    np.testing.assert_allclose(result.probability, reference, atol=1e-5)
    global_p = detect(image, model=save_model(tmp_path / "global", "m"), runtime="keras", tile=128).probability
    assert np.abs(result.probability - global_p).max() > 1e-2  # the maps change what the network sees


def test_a_header_noise_model_takes_the_frames_gain_and_read_noise_from_its_header(tmp_path, save_model):
    from astropy.nddata import CCDData

    config = NormalizationConfig(noise_estimator="diff2", header_noise=(0.9, 1.6))
    path = save_model(tmp_path / "header", "m", normalization=False)
    (tmp_path / "header" / "normalization.json").write_text(json.dumps(config.to_dict()))
    rng = np.random.default_rng(6)
    x = np.mgrid[: SHAPE[0], : SHAPE[1]][1]
    level = 2000.0 + np.where(x < 0.4 * SHAPE[1], 3000.0, 0.0)  # galaxy light over 40 % of the frame
    image = (level + rng.standard_normal(SHAPE) * np.sqrt(level / 4.0 + 2.25)).astype(np.float32)
    model_noise = np.sqrt(2000.0 / 4.0 + 2.25)
    with_header = detect(CCDData(image, unit="adu", meta={"GAIN": 4.0, "RDNOISE": 6.0}), model=path, runtime="keras")
    assert with_header.normalization.noise == pytest.approx(model_noise, rel=0.02)
    assert detect(image, model=path, runtime="keras", gain=4.0, readnoise=6.0).normalization.noise == pytest.approx(
        with_header.normalization.noise)
    measured = detect(image, model=path, runtime="keras").normalization.noise  # no gain: measured
    assert measured > 1.1 * model_noise


def test_dilated_mask_never_enters_ignored_pixels(tiny, frame):
    image = frame.image_adu.copy()
    image[100, 100] = np.nan
    r = detect(image, model=tiny, runtime="keras", threshold=1.0)
    mask = np.zeros(SHAPE, bool)
    mask[100, 101] = True
    grown = DetectionResult(**{**r.__dict__, "mask": mask}).dilated_mask(1)
    assert grown.sum() == 8 and not grown[100, 100]


# --------------------------------------------------------------------------------------------
# Cleaned images
# --------------------------------------------------------------------------------------------
def test_clean_replaces_the_mask_pixels_and_nothing_else(tiny, frame):
    from kercr.data import clean_image

    image = frame.image_adu.copy()
    image[10:12, 10:12] = np.nan
    image[200, 300:303] = 60000.0  # saturated: ignored, kept as it is
    plain = detect(image, model=tiny, runtime="keras", saturation=45000.0)
    assert plain.clean is None and plain.clean_method is None
    r = detect(image, model=tiny, runtime="keras", saturation=45000.0, clean="median", clean_dilate=1)
    np.testing.assert_array_equal(r.mask, plain.mask)  # the mask itself is not grown
    replaced = r.dilated_mask(1)
    assert 300 < replaced.sum() < 0.2 * image.size and r.mask.sum() < replaced.sum()  # the untrained model flags ~1 %
    assert r.clean.dtype == np.float32 and r.clean_method == "median" and r.clean_dilate == 1
    np.testing.assert_array_equal(r.clean[~replaced].view(np.uint32), image[~replaced].view(np.uint32))
    assert np.isnan(r.clean[10:12, 10:12]).all() and (r.clean[200, 300:303] == 60000.0).all()
    assert np.isfinite(r.clean[replaced]).all() and (r.clean[replaced] != image[replaced]).mean() > 0.99
    expected = clean_image(image, r.mask, ignore=r.ignored, method="median", dilate=1)
    np.testing.assert_array_equal(r.clean, expected)
    # True means the default method; idw gives other values on the same pixels.
    assert detect(image, model=tiny, runtime="keras", clean=True).clean_method == "median"
    idw = detect(image, model=tiny, runtime="keras", saturation=45000.0, clean="idw", clean_dilate=1).clean
    assert np.abs(idw[replaced] - r.clean[replaced]).max() > 0


def test_clean_bad_arguments_fail_before_the_network_runs(frame, tmp_path):
    # A model that does not exist would fail to load: the cleaning arguments are checked first.
    missing = tmp_path / "none.keras"
    with pytest.raises(KercrDataError, match=r"'medmask' does not exist; choose one of: median, mean, idw, network"):
        detect(frame.image_adu, model=missing, clean="medmask")
    with pytest.raises(KercrDataError, match=r"clean_dilate=-1: pass a whole number of pixels >= 0"):
        detect(frame.image_adu, model=missing, clean="median", clean_dilate=-1)


def test_ccddata_in_gives_a_cleaned_ccddata_out(tiny, frame):
    from astropy.nddata import CCDData, StdDevUncertainty

    image = frame.image_adu.copy()
    user_mask = np.zeros(SHAPE, bool)
    user_mask[50:53, 60:64] = True
    sigma = np.sqrt(np.abs(image)).astype(np.float32)
    ccd = CCDData(image.copy(), unit="adu", mask=user_mask.copy(), uncertainty=StdDevUncertainty(sigma.copy()),
                  meta=fits.Header({"OBJECT": "field 7"}))
    r = detect(ccd, model=tiny, runtime="keras", clean="idw")
    out = r.to_ccddata()
    assert isinstance(out, CCDData) and out is not ccd and out.unit == ccd.unit
    assert out.data.dtype == np.float32 and np.array_equal(out.data, r.clean) and out.data is not r.clean
    assert r.mask.sum() > 300
    np.testing.assert_array_equal(out.mask, user_mask | r.mask)  # the CR mask OR'd into the input's
    np.testing.assert_array_equal(out.uncertainty.array, sigma)
    np.testing.assert_array_equal(out.data[user_mask], image[user_mask])  # masked pixels: never replaced
    h = out.header
    assert h["OBJECT"] == "field 7" and h["KCRCLEAN"] == "idw" and h["KCRVER"] == kercr.__version__
    assert h["KCRCDIL"] == 0 and h["KCRNCLN"] == int(r.mask.sum()) and h["KCRTHR"] == 0.55
    # The input is unchanged.
    np.testing.assert_array_equal(ccd.data, image)
    np.testing.assert_array_equal(ccd.mask, user_mask)
    assert "KCRCLEAN" not in ccd.header
    # No mask and a plain dict header; dilation grows the mask that is OR'd in.
    r2 = detect(CCDData(image.copy(), unit="electron"), model=tiny, runtime="keras", clean="median", clean_dilate=2)
    out2 = r2.to_ccddata()
    np.testing.assert_array_equal(out2.mask, r2.dilated_mask(2))
    assert out2.meta["KCRCLEAN"] == "median" and out2.meta["KCRCDIL"] == 2 and str(out2.unit) == "electron"
    # Without a cleaned image, or from a numpy array: say what to do.
    with pytest.raises(ValueError, match=r"clean='median'"):
        detect(ccd, model=tiny, runtime="keras").to_ccddata()
    with pytest.raises(ValueError, match=r"CCDData.*result.clean"):
        detect(image, model=tiny, runtime="keras", clean="median").to_ccddata()


# --------------------------------------------------------------------------------------------
# Flips (test-time augmentation)
# --------------------------------------------------------------------------------------------
def _logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p) - np.log1p(-p)


def test_flips_average_the_logits_of_the_four_flipped_frames(tiny):
    # One tile per frame (a multiple of the pooling grid), so a flipped frame is tiled as the mirror image.
    image = make_frame(seed=5, shape=(192, 128)).image_adu
    res = detect(image, model=tiny, tta=True, tile=512)
    assert res.tta and res.n_tiles == 1
    views = [(lambda a: a), np.flipud, np.fliplr, lambda a: np.flipud(np.fliplr(a))]
    mean_logit = np.mean([f(_logit(detect(f(image), model=tiny, tta=False, tile=512).probability))
                          for f in views], axis=0)
    np.testing.assert_allclose(res.probability, 1 / (1 + np.exp(-mean_logit)), atol=2e-5, rtol=0)
    # The average makes the detection flip-equivariant; the random-weight net alone is not.
    flipped = detect(np.flipud(image), model=tiny, tta=True, tile=512).probability
    np.testing.assert_allclose(np.flipud(flipped), res.probability, atol=2e-5, rtol=0)
    plain = detect(image, model=tiny, tta=False, tile=512).probability
    assert np.abs(np.flipud(detect(np.flipud(image), model=tiny, tta=False, tile=512).probability) - plain).max() > 1e-3
    # The mask is the thresholded average, on tiled frames too.
    big = detect(make_frame(seed=6, shape=SHAPE).image_adu, model=tiny, tta=True, tile=128, threshold=0.5)
    assert big.n_tiles > 1 and np.array_equal(big.mask, (big.probability >= 0.5) & ~big.ignored)


def test_pooled_predictions_with_flips_score_each_patch_as_the_flip_average(tiny):
    from kercr.evaluation import pooled_predictions
    from kercr.data.augment import flip_average
    from kercr.models import logit_model

    model = load_model(tiny).model
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 64, 64, 1)).astype(np.float32)
    y = (rng.random((3, 64, 64, 1)) < 0.05).astype(np.float32)
    w = np.ones_like(y)
    truth, score, ignore = pooled_predictions(model, [(x, y, w)], tta=True)
    scorer = logit_model(model) or model
    expected = np.mean([np.flip(scorer.predict_on_batch(np.ascontiguousarray(np.flip(x, a))), a) if a else
                        scorer.predict_on_batch(x) for a in ((), (1,), (2,), (1, 2))], axis=0)
    np.testing.assert_allclose(score, expected.reshape(-1), atol=1e-5, rtol=0)
    np.testing.assert_allclose(flip_average(scorer.predict_on_batch, x).reshape(-1), score, atol=1e-6, rtol=0)
    assert np.array_equal(truth, y.reshape(-1) > 0.5) and not ignore.any()
    _, plain, _ = pooled_predictions(model, [(x, y, w)])
    assert np.abs(plain - score).max() > 1e-3


# --------------------------------------------------------------------------------------------
# Real frames with the shipped model (skip until kercr/weights/default.keras exists)
# --------------------------------------------------------------------------------------------
needs_default = pytest.mark.skipif(
    not has_default(), reason="no trained default model (kercr/weights/default.keras) yet: detection quality "
                              "cannot be tested with random weights")


def _decam(shared_data, testcase, stem):
    found = sorted(shared_data.glob(f"decam_cp/{testcase}/**/{stem}"))
    if not found:
        pytest.skip(f"{stem} not found under {shared_data}/decam_cp/{testcase}")
    image = found[0]
    dq = image.with_name(image.name.replace("_ooi_", "_ood_"))
    return image, dq


@needs_default
@pytest.mark.parametrize("testcase, stem", [("testcase4", "c4d_170316_062107_ooi_z_ls9.N2.fits"),
                                            ("testcase9", "c4d_141029_043225_ooi_g_ls9.N26.fits")])
def test_default_model_finds_decam_cosmic_ray(shared_data, testcase, stem):
    """The Community Pipeline's CR (DQ code 5) is found, and nothing else in the cutout is flagged.

    CP masks are grown around the track (in testcase4 half of the 177 code-5 pixels are within
    1.1 sigma of the sky), so the test asks what a pipeline asks: at least half of the track itself
    (code-5 pixels more than 5 sigma above the sky) is flagged, the mask grown by one pixel as ``kercr-detect
    --dilate 1`` does covers at least half of the CP mask, and the rest of the cutout is clean.
    """
    from scipy import ndimage

    from kercr.data import read_ccd
    from kercr.data.normalization import robust_sky_noise

    image, dq = _decam(shared_data, testcase, stem)
    ccd = read_ccd(image, 1)
    cr = read_ccd(dq, 1).data == 5
    assert cr.sum() > 50
    sky, noise, _ = robust_sky_noise(ccd.data)
    track = cr & (ccd.data > sky + 5 * noise)
    assert track.sum() >= 15
    r = detect(ccd)
    assert r.mask[track].mean() >= 0.5, f"only {r.mask[track].mean():.0%} of the {track.sum()} bright CR pixels flagged"
    found = r.dilated_mask(1)[cr].mean()
    assert found >= 0.5, f"only {found:.0%} of the {cr.sum()} CR pixels (DQ code 5) flagged after 1-pixel dilation"
    elsewhere = ~ndimage.binary_dilation(cr, iterations=3)
    # The model card's real_frame_checks quote these (pytest -rP shows them).
    print(f"{testcase} {stem}: bright track pixels flagged {r.mask[track].mean():.2f}, DQ-5 pixels covered after "
          f"1-px dilation {found:.2f}, other pixels flagged {int(r.mask[elsewhere].sum())}")
    assert r.mask[elsewhere].sum() <= max(5, 1e-3 * elsewhere.sum()), f"{r.mask[elsewhere].sum()} pixels flagged off the CR"


@needs_default
@pytest.mark.parametrize("testcase", ["testcase6", "testcase7"])
def test_default_model_ignores_saturated_stars_and_bleed_trails(shared_data, testcase):
    from kercr.data import read_ccd

    images = sorted(shared_data.glob(f"decam_cp/{testcase}/**/*_ooi_*.fits"))
    if not images:
        pytest.skip(f"no {testcase} cutouts under {shared_data}")
    for image in images:
        dq = read_ccd(image.with_name(image.name.replace("_ooi_", "_ood_")), 1).data
        star = (dq == 3) | (dq == 4)
        r = detect(read_ccd(image, 1))
        print(f"{testcase} {image.name}: saturated/bleed pixels flagged {r.mask[star].mean():.4f}")  # pytest -rP
        assert r.mask[star].mean() < 0.01, f"{image.name}: {r.mask[star].mean():.1%} of saturated/bleed pixels flagged"
        # The network itself, not only the saturation cut: bleed-trail pixels below saturation.
        bleed = (dq == 4) & ~r.ignored
        if bleed.sum() > 20:
            assert r.mask[bleed].mean() < 0.01, f"{image.name}: bleed trail flagged"


@needs_default
def test_default_model_finds_cosmic_rays_on_galaxies():
    """CR hits on bright, smooth sources are found, and the sources themselves are not flagged.

    (The first shipped models took such hits for part of the galaxy: probability 0 on a 30-sigma
    track over a galaxy 5 sigma above the sky.) Gaussian galaxies of sigma 40 px, 3 to 15 sigma
    above the sky at the centre; on each a 6-pixel track of 30 sigma per pixel 12 px from the
    centre; sky noise 10 ADU. (Over brighter galaxies, from about 20 sigma, the asinh-stretched
    contrast of such a track is too low for the shipped model: BENCHMARKS.md.)
    """
    from scipy import ndimage

    rng = np.random.default_rng(0)
    image = (1000 + 10 * rng.standard_normal((512, 768))).astype(np.float32)
    yy, xx = np.mgrid[:512, :768]
    track = np.zeros(image.shape, bool)
    for k, amp in enumerate((3, 5, 10, 15, 5, 10)):
        cy, cx = 128 + 256 * (k // 3), 128 + 256 * (k % 3)
        image += np.float32(amp * 10) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 40.0**2)).astype(np.float32)
        for j in range(6):
            track[cy + 8 + j, cx + 8 + j // 2] = True
    image[track] += 300.0
    r = detect(image)
    found = ndimage.sum(r.mask, ndimage.label(track, np.ones((3, 3)))[0], np.arange(1, 7)) / 6
    assert found.min() >= 0.5 and r.mask[track].mean() >= 0.8, f"fraction of each track found: {found}"
    elsewhere = ~ndimage.binary_dilation(track, iterations=2)
    assert r.mask[elsewhere].sum() <= 5, f"{r.mask[elsewhere].sum()} pixels of the galaxies or sky flagged"


@needs_default
def test_default_model_finds_the_two_gmos_cosmic_rays():
    astroscrappy = pytest.importorskip("astroscrappy")
    from pathlib import Path

    from scipy import ndimage

    path = Path(astroscrappy.__file__).parent / "tests" / "data" / "gmos.fits"
    if not path.is_file():
        pytest.skip(f"astroscrappy's test image {path} is not installed")
    with fits.open(path) as hdul:
        data = hdul["SCI"].data.astype(np.float32)
        sky = hdul["SKYFIT"].data
    truth, _ = astroscrappy.detect_cosmics(data, inbkg=sky, readnoise=4.24, gain=1.933)
    label, n = ndimage.label(truth)
    boxes = ndimage.find_objects(label)
    # astroscrappy's own test: exactly these two CRs.
    assert n == 2 and boxes == [(slice(41, 72), slice(142, 161)), (slice(117, 147), slice(35, 43))]
    r = detect(data, gain=1.933, readnoise=4.24)
    near = ndimage.binary_dilation(truth, iterations=3)
    print(f"GMOS: CR pixels flagged {[round(float(r.mask[label == k].mean()), 2) for k in (1, 2)]}, other pixels "
          f"flagged {int(r.mask[~near].sum())}")  # the model card quotes these (pytest -rP)
    for k in (1, 2):
        assert r.mask[label == k].mean() >= 0.5, f"GMOS CR {k} not found"
    assert r.mask[~near].mean() < 0.005


def test_threshold_is_applied_to_logits_where_float32_probabilities_tie_at_one():
    from kercr import build_model
    from kercr.detection import detect

    model = build_model("deepcr_2_4")
    head = model.get_layer("deepcr_2_4_head_logits")
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.full_like(bias, 18.0)])  # logit 18 everywhere
    image = np.random.default_rng(0).normal(100.0, 5.0, (64, 96)).astype(np.float32)
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    above = detect(image, model=model, threshold=sigmoid(17.0))
    below = detect(image, model=model, threshold=sigmoid(19.0))
    assert np.all(above.probability == np.float32(1.0))  # the float32 probabilities tie at 1.0 ...
    assert above.mask.all() and not below.mask.any()  # ... but the logits still decide
