"""kercr.detect: tiling, stitching, normalization, ignored pixels, model resolution, runtimes.

The behaviour tests use a tiny untrained ``deepcr_2_4`` (1,709 parameters) saved like a training
run (``.keras`` + ``normalization.json`` + model card) on 300 x 500 synthetic frames. Detection
quality needs the shipped trained model (``kercr/weights/default.keras``); those tests skip with
the reason when it is absent.
"""

from __future__ import annotations

import json
import logging
import math

import keras
import numpy as np
import pytest
from astropy.io import fits

import kercr
from kercr.data import KercrDataError, NormalizationConfig, make_frame, normalize, robust_sky_noise
from kercr.detection import DetectionResult, ModelLoadError, detect, load_model
from kercr.models import receptive_field_radius
from kercr.weights import MissingWeightsError, has_default

SHAPE = (300, 500)


def _save_model(directory, name="tiny", *, arch="deepcr_2_4", card=None, normalization=True, **overrides):
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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny model with sidecar and a card (threshold 0.55)."""
    return _save_model(tmp_path_factory.mktemp("tiny"), card={"threshold": 0.55})


@pytest.fixture(scope="module")
def frame():
    return make_frame(seed=3, shape=SHAPE)


def _reference(model_path, image, *, margin, multiple):
    """Independent reference: normalize, reflect-pad by ``margin`` (and to the multiple), one Keras call, crop."""
    loaded = load_model(model_path)
    bad = ~np.isfinite(image)
    normalized, _ = normalize(image, mask=bad, config=loaded.normalization)
    ny, nx = image.shape
    py = math.ceil(ny / multiple) * multiple - ny
    px = math.ceil(nx / multiple) * multiple - nx
    padded = np.pad(normalized, ((margin, margin + py), (margin, margin + px)), mode="reflect")
    p = loaded.model.predict_on_batch(padded[None, ..., None])[0, ..., 0]
    return p[margin:margin + ny, margin:margin + nx]


# --------------------------------------------------------------------------------------------
# Tiling and stitching
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [SHAPE, (301, 499)])
def test_tiled_prediction_equals_whole_frame(tiny, shape):
    image = make_frame(seed=4, shape=shape).image_adu
    tiled = detect(image, model=tiny, tile=64, runtime="keras")
    whole = detect(image, model=tiny, tile=4096, runtime="keras")
    assert tiled.n_tiles > 20 and whole.n_tiles == 1
    assert tiled.probability.shape == shape and tiled.probability.dtype == np.float32
    assert tiled.mask.shape == shape and tiled.mask.dtype == bool
    np.testing.assert_allclose(tiled.probability, whole.probability, atol=1e-5, rtol=0)
    # Every pixel, borders included, equals an independent one-piece prediction of the padded frame.
    reference = _reference(tiny, image, margin=whole.overlap, multiple=load_model(tiny).multiple)
    np.testing.assert_allclose(tiled.probability, reference, atol=1e-5, rtol=0)
    assert np.isfinite(tiled.probability).all()


def test_overlap_below_receptive_field_leaves_seams(tiny, frame):
    loaded = load_model(tiny)
    whole = detect(frame.image_adu, model=tiny, tile=4096, runtime="keras").probability
    seamy = detect(frame.image_adu, model=tiny, tile=64, overlap=0, runtime="keras").probability
    assert np.abs(seamy - whole).max() > 1e-3  # the comparison above can fail
    assert loaded.default_overlap >= loaded.rf_radius > 0


@pytest.mark.parametrize("arch", ["deepcr_2_4", "deepcr_2_32", "deepcr"])
def test_receptive_field_radius_bounds_the_true_one(arch):
    keras.utils.set_random_seed(0)
    model = kercr.build_model(arch)
    radius = receptive_field_radius(model)
    # A pixel change moves outputs no farther than the radius away (random weights: dense response).
    x = np.random.default_rng(0).normal(size=(1, 160, 160, 1)).astype("float32")
    y = x.copy()
    y[0, 80, 80, 0] += 50.0
    diff = np.abs(model.predict_on_batch(y) - model.predict_on_batch(x))[0, ..., 0]
    rows, cols = np.nonzero(diff > 0)
    reach = max(np.abs(rows - 80).max(), np.abs(cols - 80).max())
    assert reach <= radius
    assert radius <= 2 * reach + 4  # a tight bound, not a huge margin


# --------------------------------------------------------------------------------------------
# Ignored pixels and inputs
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


def test_inputs_are_never_modified(tiny, frame):
    from astropy.nddata import CCDData

    image = frame.image_adu.copy()
    image[10:12, 10:12] = np.nan
    image[20, 20] = 60000.0
    keep = image.copy()
    image.setflags(write=False)  # any in-place write raises
    mask = np.zeros(SHAPE, bool)
    mask[50, 50] = True
    mask.setflags(write=False)
    detect(image, model=tiny, runtime="keras", saturation=45000.0, mask=mask)
    np.testing.assert_array_equal(image, keep)
    hdu = fits.ImageHDU(image.copy(), header=fits.Header({"SATURATE": 45000.0}))
    detect(hdu, model=tiny, runtime="keras")
    np.testing.assert_array_equal(hdu.data, keep)
    ccd = CCDData(image.copy(), unit="adu", mask=mask.copy())
    detect(ccd, model=tiny, runtime="keras")
    np.testing.assert_array_equal(ccd.data, keep)


def test_saturated_pixels_and_header_values(tiny, frame):
    image = frame.image_adu.copy()
    image[40:44, 60:62] = 70000.0
    header = fits.Header({"GAINA": 4.0, "GAINB": 4.2, "RDNOISE": 6.5, "SATURATA": 60000.0, "SATURATB": 65000.0})
    hdu = fits.ImageHDU(image, header=header)
    r = detect(hdu, model=tiny, runtime="keras")
    assert r.gain == pytest.approx(4.1) and r.readnoise == 6.5 and r.saturation == 60000.0
    assert r.ignored[40:44, 60:62].all() and r.ignored.sum() == 8
    assert np.all(r.probability[40:44, 60:62] == 0)
    r = detect(hdu, model=tiny, runtime="keras", saturation=80000.0, gain=2.0)
    assert r.saturation == 80000.0 and r.gain == 2.0 and not r.ignored.any()
    r = detect(hdu, model=tiny, runtime="keras", exclude_saturated=False)
    assert not r.ignored.any()
    # A CCDData's mask is honoured.
    from astropy.nddata import CCDData

    mask = np.zeros(SHAPE, bool)
    mask[3, 4] = True
    assert detect(CCDData(image, unit="adu", mask=mask), model=tiny, runtime="keras").ignored.sum() == 1


def test_bad_inputs_get_clear_errors(tiny, frame):
    with pytest.raises(KercrDataError, match="2-D"):
        detect(np.zeros((2, 30, 30), np.float32), model=tiny)
    with pytest.raises(KercrDataError, match="mask has shape"):
        detect(frame.image_adu, model=tiny, mask=np.zeros((3, 3), bool), runtime="keras")
    with pytest.raises(KercrDataError, match="every pixel"):
        detect(np.full((40, 40), np.nan, np.float32), model=tiny, runtime="keras")
    with pytest.raises(KercrDataError, match=r"file name 'frame.fits', not an image.*read_ccd\('frame.fits'\)"):
        detect("frame.fits", model=tiny)
    from astropy.io import fits

    with pytest.raises(KercrDataError, match=r"whole FITS file \(HDUList\).*hdul\[1\]"):
        detect(fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(frame.image_adu)]), model=tiny)
    with pytest.raises(KercrDataError, match=r"too small.*5 x 5 pixels at least"):
        detect(np.random.default_rng(0).normal(100, 5, (3, 3)).astype(np.float32), model=tiny, runtime="keras")
    with pytest.raises(ValueError, match="leaves no core"):
        detect(frame.image_adu, model=tiny, tile=8, overlap=16, runtime="keras")
    with pytest.raises(ValueError, match="runtime"):
        detect(frame.image_adu, model=tiny, runtime="onnx")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        detect(frame.image_adu, model=tiny, threshold=2.0, runtime="keras")


# --------------------------------------------------------------------------------------------
# Model resolution, threshold and normalization
# --------------------------------------------------------------------------------------------
def test_threshold_from_card_argument_or_run_metrics(tiny, frame, tmp_path):
    r = detect(frame.image_adu, model=tiny, runtime="keras")
    assert r.threshold == 0.55 and r.model_name == str(tiny.resolve())
    np.testing.assert_array_equal(r.mask, (r.probability >= 0.55) & ~r.ignored)
    assert detect(frame.image_adu, model=tiny, threshold=0.9, runtime="keras").threshold == 0.9
    run = tmp_path / "run"
    _save_model(run, "best")
    (run / "metrics.json").write_text(json.dumps({"threshold_at_fpr_1e-4": 0.73}))
    r = detect(frame.image_adu, model=run, runtime="keras")  # a run directory means its best.keras
    assert r.threshold == 0.73 and r.model_name.endswith("best.keras")
    bare = _save_model(tmp_path / "bare", "m")
    assert detect(frame.image_adu, model=bare, runtime="keras").threshold == 0.5


def test_a_run_whose_threshold_rounds_to_one_is_cut_on_its_logit_threshold(frame, tmp_path, caplog):
    # A confident model's threshold for 0.01 % FPR can lie above a logit of ~17, which float32
    # probabilities round to 1.0: its metrics.json then says threshold 1.0, and the mask must come
    # from the logit threshold beside it (before, it was cut at +inf and flagged nothing).
    run = tmp_path / "run"
    _save_model(run, "best")
    p = detect(frame.image_adu, model=run, runtime="keras").probability.astype(np.float64)
    logit = np.log(p) - np.log1p(-p)
    cut = float(np.quantile(logit[~np.isinf(logit)], 0.9))
    (run / "metrics.json").write_text(json.dumps({"threshold_at_fpr_1e-4": 1.0, "logit_threshold_at_fpr_1e-4": cut}))
    # The metrics file appeared after the model was first loaded: the cache must see it.
    with caplog.at_level("WARNING", logger="kercr"):
        r = detect(frame.image_adu, model=run / "best.keras", runtime="keras")
    assert r.threshold == 1.0 and "round to 1" in caplog.text and "logit threshold" in caplog.text
    flagged = r.mask.sum()
    assert 0.05 < flagged / r.mask.size < 0.15  # about the 10 % of pixels above the cut
    assert detect(frame.image_adu, model=run / "best.keras", threshold=0.5, runtime="keras").threshold == 0.5
    bare = tmp_path / "bare"
    _save_model(bare, "best")
    (bare / "metrics.json").write_text(json.dumps({"threshold_at_fpr_1e-4": 1.0}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="kercr"):
        detect(frame.image_adu, model=bare, runtime="keras")
    assert "pass a threshold below 1" in caplog.text


def test_model_arguments(tiny, tmp_path, frame):
    assert load_model(tiny) is load_model(str(tiny))  # cached per resolved file
    with pytest.raises(ModelLoadError, match="registry architecture with random weights"):
        load_model("deepcr")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.keras")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="best.keras"):
        load_model(tmp_path / "empty")
    (tmp_path / "x.h5").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a .keras file"):
        load_model(tmp_path / "x.h5")
    model = kercr.build_model("deepcr_2_4")
    r = detect(frame.image_adu, model=model, runtime="auto")
    assert isinstance(r, DetectionResult) and r.runtime == "keras" and r.threshold == 0.5
    if not has_default():
        with pytest.raises(MissingWeightsError, match="default.keras"):
            detect(frame.image_adu)


def test_normalization_sidecar_is_used(tmp_path, frame, caplog):
    plain = _save_model(tmp_path / "a", "m")
    other = _save_model(tmp_path / "b", "m", normalization=False)
    (tmp_path / "b" / "normalization.json").write_text(json.dumps(NormalizationConfig(clip_max=2.0).to_dict()))
    missing = _save_model(tmp_path / "c", "m", normalization=False)
    p_plain = detect(frame.image_adu, model=plain, runtime="keras").probability
    p_other = detect(frame.image_adu, model=other, runtime="keras").probability
    assert np.abs(p_plain - p_other).max() > 1e-3
    with caplog.at_level(logging.WARNING, logger="kercr"):
        p_missing = detect(frame.image_adu, model=missing, runtime="keras").probability
    assert "normalization.json" in caplog.text
    np.testing.assert_allclose(p_missing, p_plain, atol=1e-6)  # the default config == the saved default


def test_a_local_noise_model_is_detected_with_its_noise_maps(tmp_path):
    """A model trained with noise_model="local" gets the per-pixel maps in detect, tile by tile
    stitched as one frame (the reference normalizes the whole frame with the maps)."""
    local = NormalizationConfig(noise_model="local", noise_estimator="diff2", asinh_softening=10.0)
    path = _save_model(tmp_path / "local", "m", normalization=False)
    (tmp_path / "local" / "normalization.json").write_text(json.dumps(local.to_dict()))
    rng = np.random.default_rng(5)
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    electrons = 100.0 + 5000.0 * np.exp(-np.hypot(y - 150, x - 200) / 80.0)  # a galaxy over much of it
    image = ((electrons + rng.standard_normal(SHAPE) * np.sqrt(electrons + 25.0)) / 2.0).astype(np.float32)
    result = detect(image, model=path, runtime="keras", tile=128)
    loaded = load_model(path)
    assert loaded.normalization == local
    reference = _reference(path, image, margin=receptive_field_radius(loaded.model), multiple=loaded.multiple)
    np.testing.assert_allclose(result.probability, reference, atol=1e-5)
    global_p = detect(image, model=_save_model(tmp_path / "global", "m"), runtime="keras", tile=128).probability
    assert np.abs(result.probability - global_p).max() > 1e-2  # the maps change what the network sees


def test_detection_and_export_read_the_same_normalization(tmp_path):
    """Sidecar first, then the card's "normalization", then the default: in detect and export alike."""
    from kercr.export import ExportError, load_model_source

    card_norm = NormalizationConfig(clip_max=2.0)
    in_card = _save_model(tmp_path / "card", "m", normalization=False,
                          card={"threshold": 0.5, "normalization": card_norm.to_dict()})
    both = _save_model(tmp_path / "both", "m", card={"normalization": card_norm.to_dict()})
    neither = _save_model(tmp_path / "neither", "m", normalization=False)
    expected = {in_card: (card_norm, "card"),
                both: (NormalizationConfig(), str(tmp_path / "both" / "normalization.json")),
                neither: (NormalizationConfig(), "default")}
    for path, (norm, source) in expected.items():
        loaded, exported = load_model(path), load_model_source(path)
        assert loaded.normalization == exported.normalization == norm, path
        assert loaded.normalization_source == source and exported.normalization_source == source, path
    bad = _save_model(tmp_path / "bad", "m", normalization=False, card={"normalization": [1, 2]})
    with pytest.raises(ModelLoadError, match="must be an object"):
        load_model(bad)
    with pytest.raises(ExportError, match="must be an object"):
        load_model_source(bad)


def test_export_takes_default_as_detect_does(tmp_path, monkeypatch):
    import kercr.weights
    from kercr.export import ExportError, load_model_source

    shipped = _save_model(tmp_path / "weights", "default", card={"threshold": 0.4, "tta": True},
                          normalization=False)
    (tmp_path / "weights" / "normalization.json").write_text(json.dumps(NormalizationConfig(clip_max=3.0).to_dict()))
    monkeypatch.setattr(kercr.weights, "WEIGHTS_DIR", tmp_path / "weights")
    source = load_model_source("default")
    assert source.description == str(shipped) and source.tta is True
    assert source.normalization == load_model("default").normalization == NormalizationConfig(clip_max=3.0)
    monkeypatch.setattr(kercr.weights, "WEIGHTS_DIR", tmp_path / "none")
    with pytest.raises(ExportError, match="default.keras"):
        load_model_source("default")


def test_image_wide_layers_are_reported(tmp_path):
    keras.utils.set_random_seed(0)
    assert load_model(kercr.build_model("deepcr_2_4")).local
    assert not load_model(kercr.build_model("cosmic_conn", filters=(8, 16), groups=4)).local


def test_models_nested_in_a_wrapper_or_an_ensemble_are_tiled_like_their_parts(frame):
    """detect() reads the input multiple, receptive field and image-wide layers through nested models
    (it used to see multiple 1 and radius 0 there, and crashed on frames of odd size)."""
    keras.utils.set_random_seed(0)
    inner = kercr.build_model("deepcr_2_4")
    x = keras.Input((None, None, 1))
    wrapper = keras.Model(x, inner(x), name="wrapper")
    plain, wrapped = load_model(inner), load_model(wrapper)
    assert (wrapped.multiple, wrapped.rf_radius, wrapped.local) == (plain.multiple, plain.rf_radius, True)
    image = frame.image_adu[:, :301]  # odd width: the multiple must be honoured
    expected = detect(image, model=inner, tile=64, runtime="keras").probability
    np.testing.assert_allclose(detect(image, model=wrapper, tile=64, runtime="keras").probability, expected,
                               atol=1e-6, rtol=0)
    # An ensemble of two networks averaging their logits, one of them with image-wide GroupNorm.
    other = kercr.build_model("cosmic_conn", filters=(8, 16), groups=4)
    logits = [keras.Model(m.input, m.layers[-2].output, name=f"{m.name}_part")(x) for m in (inner, other)]
    ensemble = keras.Model(x, keras.layers.Activation("sigmoid")(keras.layers.Average(name="mean_logits")(logits)))
    loaded = load_model(ensemble)
    assert loaded.multiple >= max(plain.multiple, load_model(other).multiple)
    assert loaded.rf_radius >= max(plain.rf_radius, load_model(other).rf_radius) and not loaded.local
    r = detect(image, model=ensemble, runtime="keras")
    assert r.probability.shape == image.shape and np.isfinite(r.probability).all()


def test_fixed_input_model_is_tiled_at_its_size(tmp_path):
    keras.utils.set_random_seed(0)
    model = kercr.build_model("transunet", input_size=64, num_layers=1, hidden_dim=12, num_heads=2, mlp_dim=8,
                              encoder_filters=(4, 4, 8, 8), decoder_stem_filters=8, decoder_filters=(4, 4, 4, 4))
    image = make_frame(seed=5, shape=(150, 170)).image_adu
    r = detect(image, model=model, runtime="keras")
    assert r.tile == (64, 64) and r.probability.shape == (150, 170) and np.isfinite(r.probability).all()
    assert r.overlap == 8 and r.n_tiles == math.ceil(150 / 48) * math.ceil(170 / 48)
    with pytest.raises(ValueError, match="fixed 64 x 64"):
        detect(image, model=model, tile=128, runtime="keras")


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
    with pytest.raises(KercrDataError, match=r"'medmask' does not exist; choose one of: median, mean, idw"):
        detect(frame.image_adu, model=missing, clean="medmask")
    with pytest.raises(KercrDataError, match=r"clean_dilate=-1: pass a number of pixels >= 0"):
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
# TFLite runtimes
# --------------------------------------------------------------------------------------------
def test_a_card_runtime_without_litert_falls_back_to_keras_and_says_so(tmp_path, monkeypatch, caplog):
    import kercr.detection.runtimes as inference

    path = _save_model(tmp_path / "m", card={"threshold": 0.5, "runtime": "tflite-int8"})
    loaded = load_model(path)
    assert inference.resolve_runtime("auto", loaded) == "tflite-int8"  # LiteRT is a dependency on Linux
    monkeypatch.setattr(inference, "litert_available", lambda: False)
    monkeypatch.setattr(inference, "_warned_no_litert", [])
    with caplog.at_level("WARNING", logger="kercr"):
        assert inference.resolve_runtime("auto", loaded) == "keras"
        assert inference.resolve_runtime("auto", loaded) == "keras"
    assert caplog.text.count("LiteRT interpreter is not installed") == 1 and "pip install ai-edge-litert" in caplog.text
    with pytest.raises(ValueError, match="needs the LiteRT interpreter"):
        inference.resolve_runtime("tflite-int8", loaded)


def test_tflite_runtimes_match_keras_and_cache(tiny, frame, tmp_path, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    monkeypatch.setenv("KERCR_CACHE_DIR", str(tmp_path / "cache"))
    ref = detect(frame.image_adu, model=tiny, runtime="keras", tile=256)
    assert detect(frame.image_adu, model=tiny, runtime="auto").runtime == "keras"  # no runtime in the card
    auto = detect(frame.image_adu, model=tiny, runtime="tflite-float32", tile=256, num_threads=1)
    np.testing.assert_allclose(auto.probability, ref.probability, atol=1e-4, rtol=0)
    cached = sorted((tmp_path / "cache" / "tflite").glob("*.tflite"))
    assert len(cached) == 1 and "float32" in cached[0].name
    before = cached[0].stat().st_mtime_ns
    detect(frame.image_adu, model=tiny, runtime="tflite-float32", tile=128, num_threads=1)
    assert cached[0].stat().st_mtime_ns == before  # reused, not converted again
    int8 = detect(frame.image_adu, model=tiny, runtime="tflite-int8", tile=256, num_threads=1)
    assert int8.probability.shape == SHAPE and 0 <= int8.probability.min() and int8.probability.max() <= 1
    assert np.abs(int8.probability - ref.probability).mean() < 0.05
    assert len(list((tmp_path / "cache" / "tflite").glob("*int8.tflite"))) == 1
    # runtime="auto" follows the model card's validated runtime.
    carded = _save_model(tmp_path / "carded", card={"threshold": 0.5, "runtime": "tflite-int8"})
    assert detect(frame.image_adu, model=carded, num_threads=1).runtime == "tflite-int8"


def test_default_batch_per_runtime_and_two_interpreters_give_one_interpreters_mask(tiny, frame, tmp_path,
                                                                                monkeypatch):
    pytest.importorskip("ai_edge_litert")
    import kercr.detection.detector as inference

    monkeypatch.setenv("KERCR_CACHE_DIR", str(tmp_path / "cache"))
    batches = []
    tiled = inference.predict_tiled
    monkeypatch.setattr(inference, "predict_tiled", lambda *a, **kw: batches.append(kw["batch_size"]) or tiled(*a, **kw))
    detect(frame.image_adu, model=tiny, runtime="keras", tile=128)
    one = detect(frame.image_adu, model=tiny, runtime="tflite-int8", tile=128, num_threads=1)
    two = detect(frame.image_adu, model=tiny, runtime="tflite-int8", tile=128, num_threads=2)
    assert batches == [1, 4, 4] and one.n_tiles > 4  # Keras one tile per call, TFLite four
    np.testing.assert_array_equal(two.probability, one.probability)  # each tile through one interpreter
    np.testing.assert_array_equal(two.mask, one.mask)
    detect(frame.image_adu, model=tiny, runtime="keras", tile=128, batch_size=3)
    assert batches[-1] == 3
    with pytest.raises(ValueError, match="batch_size=0"):
        detect(frame.image_adu, model=tiny, batch_size=0)


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


def test_flips_follow_the_model_card_unless_told(tmp_path, frame):
    flips = _save_model(tmp_path / "flips", card={"threshold": 0.5, "tta": True})
    assert detect(frame.image_adu, model=flips).tta
    assert not detect(frame.image_adu, model=flips, tta=False).tta
    assert not detect(frame.image_adu, model=_save_model(tmp_path / "plain", card={"threshold": 0.5})).tta
    with pytest.raises(ValueError, match="tta="):
        detect(frame.image_adu, model=flips, tta="yes")


def test_flips_with_tflite_average_logits_like_keras(tiny, frame, tmp_path, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    monkeypatch.setenv("KERCR_CACHE_DIR", str(tmp_path / "cache"))
    ref = detect(frame.image_adu, model=tiny, runtime="keras", tile=256, tta=True)
    lite = detect(frame.image_adu, model=tiny, runtime="tflite-float32", tile=256, tta=True, num_threads=1)
    assert lite.tta
    np.testing.assert_allclose(lite.probability, ref.probability, atol=1e-4, rtol=0)


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
def test_default_model_card_matches_the_config_files_it_names():
    """The card's command reproduces the shipped model: each config file it names resolves to the
    options recorded for that run, and the card's own config is the last stage's or, when the
    command ends by averaging runs (``kercr.weights.average``), the first averaged run's (whose
    validation patches chose the threshold); every averaged run is a stage of the command."""
    import re
    from pathlib import Path

    from kercr.config import TrainConfig, read_config_file
    from kercr.weights import default_card

    card = default_card()
    files = re.findall(r"--config (\S+)", card["command"])
    assert files, card["command"]
    root = Path(kercr.__file__).resolve().parents[1]
    if not (root / files[-1]).is_file():
        pytest.skip("the config files are not installed beside the package (a wheel install)")
    # (not validated: a fine-tuning stage names its base run, which a fresh checkout does not hold)
    configs = [json.loads(json.dumps(TrainConfig(**read_config_file(root / f)).to_dict())) for f in files]
    by_out = {c["out"]: c for c in configs}
    averaged = re.findall(r"kercr\.weights\.average ((?:\S+ )+)--out", card["command"])
    runs = averaged[0].split() if averaged else [configs[-1]["out"]]
    assert set(runs) <= set(by_out), f"averaged runs {runs} are not all stages of {card['command']}"
    # an option added after the model was shipped reads as its default (as when a run resumes)
    assert by_out[runs[0]] == json.loads(json.dumps(TrainConfig(**card["config"]).to_dict()))
    assert set(card["config"]) <= set(by_out[runs[0]])
    for base, tuned in zip(configs, configs[1:]):  # each stage starts from the run before it
        assert tuned["init_weights"] == base["out"] and tuned["model"] == base["model"]


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


def test_ship_copies_a_run_with_its_card_and_refuses_to_overwrite(tmp_path):
    import dataclasses

    from kercr.config import TrainConfig
    from kercr.weights.ship import ship

    run = tmp_path / "run"
    _save_model(run, name="best")
    config = dataclasses.asdict(TrainConfig(model="deepcr_2_4", variety="wide", frames=10, frame_shape=[256, 256]))
    (run / "config.json").write_text(json.dumps(config))
    metrics = {"threshold_at_fpr_1e-4": 0.875, "logit_threshold_at_fpr_1e-4": 1.9459, "tpr_at_fpr_1e-4": 0.5,
               "dice": 0.6, "best_dice": 0.7}
    (run / "metrics.json").write_text(json.dumps(metrics))
    dest = tmp_path / "weights"
    path = ship(run, command="kercr-train --model deepcr_2_4", dest=dest, notes={"real_frames": {"ok": True}})
    card = json.loads((dest / "default.json").read_text())
    assert card["threshold"] == 0.875 and card["architecture"] == "deepcr_2_4" and card["params"] == 1709
    assert card["command"] == "kercr-train --model deepcr_2_4" and card["config"]["variety"] == "wide"
    assert card["validation"]["tpr_at_fpr_1e-4"] == 0.5 and card["real_frames"] == {"ok": True}
    loaded = load_model(path)
    assert loaded.threshold == 0.875 and loaded.threshold_source == "card"
    before = path.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--force"):
        ship(run, command="x", dest=dest)
    assert path.stat().st_mtime_ns == before
