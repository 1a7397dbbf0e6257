"""kercr-detect and kercr-evaluate (:mod:`kercr.cli.detect`) and the per-file work behind kercr-detect
(:mod:`kercr.detection.files`): output files, extensions, headers, failures, metrics and plots.

Uses a tiny untrained ``deepcr_2_4`` saved with a ``normalization.json`` and a card; nothing here
needs a trained model (formats and behaviour, not detection quality).
"""

from __future__ import annotations

import hashlib
import json

import keras
import numpy as np
import pytest
from astropy.io import fits

import kercr
from kercr.data import CosmicRayModel, NormalizationConfig, SyntheticConfig, make_frame
from kercr.cli.detect import detect_main, evaluate_main
from kercr.detection.files import detect_file, output_path
from kercr.detection import detect
from kercr.metrics import dice_score
from kercr.weights import has_default

#: ~100 CR events per second per 2k x 4k CCD, so that small test frames hold CRs.
MANY_CRS = SyntheticConfig(cr_model=CosmicRayModel(rate_per_s=100.0))


def _save(directory, arch="deepcr_2_4", card=None, **overrides):
    directory.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    path = directory / "model.keras"
    kercr.build_model(arch, **overrides).save(path)
    (directory / "normalization.json").write_text(json.dumps(NormalizationConfig().to_dict()))
    if card is not None:
        (directory / "model.json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("model"), card={"threshold": 0.6})


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mef(path, names=("N4", "S22", "N10"), shape=(120, 90)):
    hdus = [fits.PrimaryHDU(header=fits.Header({"INSTRUME": "DECam", "EXPTIME": 90.0}))]
    for k, name in enumerate(names):
        image = make_frame(seed=10 + k, shape=shape).image_adu
        header = fits.Header({"GAIN": 4.0, "RDNOISE": 7.0, "SATURATE": 45000.0, "CRVAL1": 10.0 + k,
                              "CTYPE1": "RA---TAN"})
        if k == 2:  # tile-compressed, as DECam .fits.fz CCDs are
            hdus.append(fits.CompImageHDU(image, header=header, name=name))
        else:
            hdus.append(fits.ImageHDU(image, header=header, name=name))
    fits.HDUList(hdus).writeto(path)
    return path


def _run(argv, tiny):
    return detect_main([*argv, "--model", str(tiny), "--runtime", "keras"])


# --------------------------------------------------------------------------------------------
# kercr-detect
# --------------------------------------------------------------------------------------------
def test_single_image_file(tiny, tmp_path):
    image = make_frame(seed=1, shape=(150, 130)).image_adu
    src = tmp_path / "single.fits"
    fits.PrimaryHDU(image, header=fits.Header({"SATURATE": 45000.0})).writeto(src)
    before = _sha(src)
    assert _run([str(src), "--save-probability", "--dilate", "1"], tiny) == 0
    out = tmp_path / "single_crmask.fits"
    assert _sha(src) == before  # input untouched
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "CRMASK", "CRPROB"]
        np.testing.assert_array_equal(hdul[0].data, image)
        mask, prob = hdul["CRMASK"], hdul["CRPROB"]
        assert mask.data.dtype == np.uint8 and set(np.unique(mask.data)) <= {0, 1}
        assert prob.data.dtype.kind == "f" and prob.data.shape == image.shape
        h = hdul[0].header
        assert h["KCRVER"] == kercr.__version__ and h["KCRTHR"] == 0.6 and h["KCRDIL"] == 1
        assert h["KCRRUNT"] == "keras" and h["KCRMODEL"].endswith("model.keras") and "T" in h["KCRDATE"]
        assert mask.header["KCRSRCEX"] == "PRIMARY" and mask.header["KCRNCR"] == int(mask.data.sum())
        expected = detect(image, model=tiny, runtime="keras", saturation=45000.0)
        np.testing.assert_array_equal(mask.data.astype(bool), expected.dilated_mask(1))
        np.testing.assert_allclose(prob.data, expected.probability, atol=1e-6)
        assert h["KCRTTA"] is False  # the card does not ask for flips
    # --tta: the flip-averaged detection, and the header says so.
    assert _run([str(src), "--save-probability", "--tta", "--suffix", "_tta"], tiny) == 0
    with fits.open(tmp_path / "single_tta.fits") as hdul:
        assert hdul[0].header["KCRTTA"] is True and hdul["CRMASK"].header["KCRTTA"] is True
        assert hdul[0].header["KCRTTAG"] == 0.003  # flips on candidate windows (kercr.detection.flips)
        flips = detect(image, model=tiny, runtime="keras", saturation=45000.0, tta=True)
        np.testing.assert_allclose(hdul["CRPROB"].data, flips.probability, atol=1e-6)
        assert np.abs(flips.probability - expected.probability).max() > 1e-3


def test_mef_every_ccd_gets_a_mask(tiny, tmp_path):
    src = _mef(tmp_path / "c4d_test_ooi_r.fits")
    out_dir = tmp_path / "masks"
    assert _run([str(src), "--out", str(out_dir)], tiny) == 0
    out = out_dir / "c4d_test_ooi_r_crmask.fits"
    with fits.open(out) as hdul, fits.open(src) as orig:
        names = [h.name for h in hdul]
        assert names == ["PRIMARY", "N4", "S22", "N10", "N4_CRMASK", "S22_CRMASK", "N10_CRMASK"]
        for name in ("N4", "S22", "N10"):
            np.testing.assert_array_equal(hdul[name].data, orig[name].data)  # original data kept
            m = hdul[f"{name}_CRMASK"]
            assert m.data.shape == orig[name].data.shape and m.data.dtype == np.uint8
            assert m.header["KCRSRCEX"] == name and m.header["CRVAL1"] == orig[name].header["CRVAL1"]
            assert m.header["KCRTHR"] == 0.6
        assert isinstance(hdul["N10"], fits.CompImageHDU)
        assert hdul[0].header["INSTRUME"] == "DECam" and hdul[0].header["KCRVER"] == kercr.__version__
    # --ext picks CCDs by name.
    assert _run([str(src), "--out", str(tmp_path / "two"), "--ext", "N4,n10"], tiny) == 0
    with fits.open(tmp_path / "two" / out.name) as hdul:
        assert [h.name for h in hdul][4:] == ["N4_CRMASK", "N10_CRMASK"]
    # One HDU named twice (index and name) is done once.
    assert _run([str(src), "--out", str(tmp_path / "twice"), "--ext", "1,N4"], tiny) == 0
    with fits.open(tmp_path / "twice" / out.name) as hdul:
        assert [h.name for h in hdul][4:] == ["N4_CRMASK"]


def test_clean_writes_a_float32_clean_extension_beside_each_mask(tiny, tmp_path):
    src = _mef(tmp_path / "c4d_clean_ooi_r.fits", names=("N4", "S22"))
    with fits.open(src, mode="update") as hdul:  # what a reduction leaves: its history, the data's range
        hdul[0].header["PC1_1"], hdul[0].header["CDELT1"] = 1.0, 7e-5  # a WCS in the primary: not the images'
        for name in ("N4", "S22"):
            hdul[name].header["DATAMAX"] = 65000.0
            hdul[name].header.add_history("flat-fielded")
    before = _sha(src)
    assert _run([str(src), "--out", str(tmp_path / "a"), "--threshold", "0.54", "--dilate", "1", "--clean"], tiny) == 0
    assert _sha(src) == before
    with fits.open(tmp_path / "a" / "c4d_clean_ooi_r_crmask.fits") as hdul, fits.open(src) as orig:
        assert [h.name for h in hdul] == ["PRIMARY", "N4", "S22", "N4_CRMASK", "N4_CLEAN", "S22_CRMASK", "S22_CLEAN"]
        assert hdul[0].header["KCRCLEAN"] == "median"
        for name in ("N4", "S22"):
            image, mask, clean = orig[name].data, hdul[f"{name}_CRMASK"].data.astype(bool), hdul[f"{name}_CLEAN"]
            assert clean.header["BITPIX"] == -32 and clean.data.shape == image.shape  # float32
            assert 10 < mask.sum() < 0.3 * mask.size  # the untrained model at 0.54, dilated: ~20 %
            np.testing.assert_array_equal(clean.data[~mask], image[~mask].astype(np.float32))
            assert (clean.data[mask] != image[mask]).mean() > 0.99 and np.isfinite(clean.data).all()
            expected = detect(image, model=tiny, runtime="keras", threshold=0.54, saturation=45000.0,
                              clean="median", clean_dilate=1)
            np.testing.assert_array_equal(clean.data, expected.clean)
            h = clean.header
            assert h["KCRCLEAN"] == "median" and h["KCRSRCEX"] == name and h["KCRDIL"] == 1
            assert h["KCRNCLN"] == int(mask.sum()) and h["CRVAL1"] == orig[name].header["CRVAL1"]
            # A usable image on its own: the image's cards (gain, read noise, saturation), no unit it had not,
            # the primary header's it lacks (EXPTIME), its HISTORY and one saying what was done.
            assert (h["GAIN"], h["RDNOISE"], h["SATURATE"]) == (4.0, 7.0, 45000.0) and "BUNIT" not in h
            assert h["EXPTIME"] == 90.0 and h["INSTRUME"] == "DECam" and "DATAMAX" not in h
            assert "PC1_1" not in h and "CDELT1" not in h  # the image's own WCS stays whole, as on its mask
            history = [str(x) for x in h["HISTORY"]]
            assert history[0] == "flat-fielded" and "CR pixels replaced (median)" in history[-1]
    # A method by name, with the probability: CRMASK, CRPROB, CLEAN for a single-image file.
    single = tmp_path / "single.fits"
    fits.PrimaryHDU(make_frame(seed=1, shape=(150, 130)).image_adu).writeto(single)
    assert _run([str(single), "--clean", "idw", "--save-probability", "--threshold", "0.54"], tiny) == 0
    with fits.open(tmp_path / "single_crmask.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "CRMASK", "CRPROB", "CLEAN"]
        assert hdul["CLEAN"].header["KCRCLEAN"] == "idw" and hdul["CLEAN"].header["BITPIX"] == -32
    # clean=True is the median, and the outputs say so by name.
    out = detect_file(single, out_dir=tmp_path / "true", model=tiny, runtime="keras", threshold=0.54, clean=True)
    with fits.open(out) as hdul:
        assert hdul[0].header["KCRCLEAN"] == hdul["CLEAN"].header["KCRCLEAN"] == "median"


def test_clean_with_an_unknown_method_lists_the_valid_ones(tiny, tmp_path, capsys):
    src = tmp_path / "x.fits"
    fits.PrimaryHDU(make_frame(seed=2, shape=(40, 40)).image_adu).writeto(src)
    with pytest.raises(SystemExit) as exit_:
        _run([str(src), "--clean", "medmask"], tiny)
    assert exit_.value.code == 2
    assert "invalid choice: 'medmask'" in capsys.readouterr().err and not output_path(src).exists()


def test_ext_all_skips_error_variance_and_quality_planes(tiny, tmp_path):
    image = make_frame(seed=3, shape=(120, 90)).image_adu
    src = tmp_path / "hst_like_flt.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="SCI"), fits.ImageHDU(np.sqrt(image), name="ERR"),
                  fits.ImageHDU(np.zeros(image.shape, np.int16), name="DQ")]).writeto(src)
    assert _run([str(src), "--out", str(tmp_path / "a")], tiny) == 0
    with fits.open(tmp_path / "a" / "hst_like_flt_crmask.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "DQ", "SCI_CRMASK"]
    assert _run([str(src), "--out", str(tmp_path / "b"), "--ext", "ERR"], tiny) == 0  # asked for by name
    with fits.open(tmp_path / "b" / "hst_like_flt_crmask.fits") as hdul:
        assert [h.name for h in hdul][-1] == "ERR_CRMASK"


def test_never_overwrites(tiny, tmp_path, capsys):
    src = _mef(tmp_path / "a.fits", names=("N4", "S22"))
    assert _run([str(src)], tiny) == 0
    out = output_path(src)
    before = _sha(out)
    capsys.readouterr()
    assert _run([str(src)], tiny) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "--out" in err
    assert _sha(out) == before
    with pytest.raises(FileExistsError, match="never overwrites"):  # the library function alike
        detect_file(src, model=tiny, runtime="keras")
    assert _sha(out) == before


def test_detect_file_is_the_library_function_behind_kercr_detect(tiny, tmp_path):
    src = _mef(tmp_path / "c4d_lib_ooi_r.fits", names=("N4", "S22"))
    out = detect_file(src, out_dir=tmp_path / "lib", model=tiny, ext=["S22"], runtime="keras", save_probability=True)
    assert out == tmp_path / "lib" / "c4d_lib_ooi_r_crmask.fits"
    assert _run([str(src), "--out", str(tmp_path / "cli"), "--ext", "S22", "--save-probability"], tiny) == 0
    with fits.open(out) as lib, fits.open(tmp_path / "cli" / out.name) as cli:
        assert [h.name for h in lib] == [h.name for h in cli] == ["PRIMARY", "N4", "S22", "S22_CRMASK", "S22_CRPROB"]
        for name in ("S22_CRMASK", "S22_CRPROB"):
            np.testing.assert_array_equal(lib[name].data, cli[name].data)
    with pytest.raises(ValueError, match="pass a whole number of pixels >= 0"):
        detect_file(src, out_dir=tmp_path / "neg", model=tiny, dilate=-1)
    assert not (tmp_path / "neg").exists()


def test_two_chips_of_one_extname_get_masks_of_their_extver(tiny, tmp_path):
    # HST ACS/WFC3 files hold two chips as SCI,1 and SCI,2 (one EXTNAME, two EXTVERs).
    hdus = [fits.PrimaryHDU()]
    for ver in (1, 2):
        image = make_frame(seed=30 + ver, shape=(80, 70)).image_adu
        hdus += [fits.ImageHDU(image, name="SCI", ver=ver), fits.ImageHDU(np.sqrt(image), name="ERR", ver=ver)]
    src = tmp_path / "flt.fits"
    fits.HDUList(hdus).writeto(src)
    assert _run([str(src)], tiny) == 0
    with fits.open(output_path(src)) as hdul:
        masks = [(h.name, h.ver) for h in hdul if h.name.endswith("_CRMASK")]
        assert masks == [("SCI_CRMASK", 1), ("SCI_CRMASK", 2)]
        for ver in (1, 2):
            assert hdul["SCI_CRMASK", ver].data.shape == hdul["SCI", ver].data.shape


def test_failed_inputs_do_not_stop_the_others(tiny, tmp_path, capsys):
    good = _mef(tmp_path / "good.fits", names=("N4", "S22"))
    text = tmp_path / "notes.fits"
    text.write_text("this is not FITS\n" * 50)
    corrupt = tmp_path / "corrupt.fits"
    corrupt.write_bytes(good.read_bytes()[: 2880 * 3 + 100])
    missing = tmp_path / "missing.fits"
    out_dir = tmp_path / "out"
    rc = _run([str(missing), str(text), str(corrupt), str(good), "--out", str(out_dir)], tiny)
    assert rc == 1
    assert (out_dir / "good_crmask.fits").is_file()
    assert sorted(p.name for p in out_dir.iterdir()) == ["good_crmask.fits"]  # no partial files
    err = capsys.readouterr().err
    for path in (missing, text, corrupt):
        assert str(path) in err
    assert "not found" in err and "not a readable FITS" in err


def test_untrained_registry_name_is_refused(tmp_path, capsys):
    src = tmp_path / "x.fits"
    fits.PrimaryHDU(make_frame(seed=2, shape=(40, 40)).image_adu).writeto(src)
    assert detect_main([str(src), "--model", "deepcr"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kercr-detect: error: ") and err.count("\n") == 1  # one line, no traceback
    assert "random weights" in err and not output_path(src).exists()


def test_decam_cutouts(tiny, shared_data, tmp_path):
    images = sorted(shared_data.glob("decam_cp/*/**/*_ooi_*.fits"))
    if not images:
        pytest.skip("no DECam cutouts")
    picks = [p for p in images if "testcase8" in str(p) or "testcase4" in str(p)] + images[:2]
    out_dir = tmp_path / "decam"
    assert _run([str(p) for p in picks] + ["--out", str(out_dir), "--save-probability"], tiny) == 0
    for src in picks:
        with fits.open(output_path(src, out_dir)) as hdul, fits.open(src) as orig:
            hdul.verify("exception")
            ccd = orig[1].name
            assert [h.name for h in hdul] == ["PRIMARY", ccd, "CRMASK", "CRPROB"]
            np.testing.assert_array_equal(hdul[ccd].data, orig[ccd].data)
            assert hdul["CRMASK"].data.shape == orig[ccd].data.shape
            assert hdul["CRMASK"].header["KCRSRCEX"] == ccd
            assert hdul["CRMASK"].header["CRVAL1"] == orig[ccd].header["CRVAL1"]  # WCS copied
            assert hdul[0].header["PROCTYPE"] == orig[0].header["PROCTYPE"]
            p = hdul["CRPROB"].data
            assert np.isfinite(p).all() and 0 <= p.min() and p.max() <= 1


# --------------------------------------------------------------------------------------------
# kercr-evaluate
# --------------------------------------------------------------------------------------------
def test_evaluate_synthetic(tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate_main(["--synthetic", "2", "--frame-shape", "128", "160", "--seed", "7", "--cr-rate-scale", "300",
                          "--model", str(tiny),
                          "--runtime", "keras", "--out", str(out), "--maps", "1", "-q"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    printed = capsys.readouterr().out  # the result line, even with -q
    assert f"TPR at 0.01 % FPR {report['prediction']['tpr_at_fpr_1e-4']:.4f}" in printed and "metrics.json" in printed
    with pytest.raises(SystemExit):
        evaluate_main(["--synthetic", "1", "--model", str(tiny), "--threshold", "1.5", "--out", str(tmp_path / "x")])
    assert "pass a probability in [0, 1]" in capsys.readouterr().err and not (tmp_path / "x").exists()
    for key in ("prediction", "prediction_dilated_3x3"):
        m = report[key]
        for metric in ("tpr_at_fpr_1e-4", "tpr_at_fpr_1e-3", "precision_at_recall_0.95", "dice", "best_dice"):
            assert 0.0 <= m[metric] <= 1.0
        assert m["dice_threshold"] == 0.6
    assert report["prediction"]["ignored_pixels"] == sum(f["ignored_pixels"] for f in report["frames"])
    assert report["tta"] is False and report["runtime"] == "keras" and report["scores"] == "logits"
    assert {"roc.png", "pr.png", "prediction_0.png", "activations.png"} <= set(p.name for p in out.iterdir())
    assert not (out / "prediction_1.png").exists()
    assert report["exclude_saturated"] is True and ">= saturation" in report["method"]["ignored"]
    # --keep-saturated is said where the report says what was excluded (before, the text never changed):
    assert evaluate_main(["--synthetic", "1", "--frame-shape", "128", "160", "--cr-rate-scale", "300", "--model",
                          str(tiny), "--runtime", "keras", "--out", str(tmp_path / "kept"), "--keep-saturated",
                          "--maps", "0", "-q"]) == 0
    kept = json.loads((tmp_path / "kept" / "metrics.json").read_text())
    assert kept["exclude_saturated"] is False and "saturated pixels kept and scored" in kept["method"]["ignored"]
    # The dilated Dice is the Dice of the binary 3x3 dilation of each frame's mask; truth unchanged.
    from kercr.evaluation.report import synthetic_frames
    from kercr.data.cleaning import dilate_mask

    truths, preds, ignores = [], [], []
    for _, image, truth, ignore in synthetic_frames(2, shape=(128, 160), seed=7, cr_rate_scale=300):
        r = detect(image, model=tiny, runtime="keras", mask=ignore)
        truths.append(truth)
        preds.append(dilate_mask(r.mask, 1))  # the plain binary dilation
        ignores.append(r.ignored)
    expected = dice_score(np.stack(truths), np.stack(preds), ignore=np.stack(ignores))
    assert report["prediction_dilated_3x3"]["dice"] == pytest.approx(expected, abs=1e-12)
    # Never overwrites an earlier report.
    assert evaluate_main(["--synthetic", "1", "--frame-shape", "64", "64", "--model", str(tiny), "--runtime",
                          "keras", "--out", str(out)]) == 1
    # Nor any file of a folder it did not make; a failure leaves no folder (it works in a hidden one).
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "roc.png").write_text("precious")
    assert evaluate_main(["--synthetic", "1", "--frame-shape", "64", "64", "--model", str(tiny), "--runtime",
                          "keras", "--out", str(tmp_path / "mine")]) == 1
    assert "a folder that holds files" in capsys.readouterr().err
    assert (tmp_path / "mine" / "roc.png").read_text() == "precious"
    assert evaluate_main(["--synthetic", "1", "--frame-shape", "64", "64", "--model", str(tiny), "--runtime",
                          "keras", "--tile", "8", "--out", str(tmp_path / "failed")]) == 1
    assert not (tmp_path / "failed").exists() and not list(tmp_path.glob(".failed.partial-*"))
    with pytest.raises(SystemExit):
        evaluate_main(["--synthetic", "1", "--model", str(tiny), "--cr-rate-scale", "-1", "--out", str(tmp_path / "y")])
    assert "--cr-rate-scale -1.0" in capsys.readouterr().err


def test_evaluate_ranks_a_confident_models_pixels_by_logit(tmp_path):
    # A model so confident that float32 probabilities round to 1.0 on every pixel above ~2.4 sigma:
    # ranked by probability, those pixels tie and the TPR at 0.01 % FPR collapses; kercr-evaluate
    # ranks by the logits (as training's validation does) and cuts the mask at the logit threshold.
    from kercr.evaluate_report import evaluate, synthetic_frames
    from kercr.evaluation import pooled_metrics

    x = keras.Input((None, None, 1))
    logits = keras.layers.Conv2D(1, 1, kernel_initializer=keras.initializers.Constant(40.0),
                                 bias_initializer=keras.initializers.Constant(-80.0), name="head_logits")(x)
    model = keras.Model(x, keras.layers.Activation("sigmoid")(logits))
    report = evaluate(synthetic=2, frame_shape=(128, 160), seed=7, cr_rate_scale=300, model=model,
                      out=tmp_path / "ev", runtime="keras", threshold=0.5, maps=0)
    assert report["scores"] == "logits" and report["runtime"] == "keras"
    truth, logit, prob, ignore = [], [], [], []
    for _, image, t, i in synthetic_frames(2, shape=(128, 160), seed=7, cr_rate_scale=300):
        r = detect(image, model=model, runtime="keras", mask=i, threshold=0.5, keep_logits=True)
        truth.append(t.ravel()), logit.append(r.logit.ravel()), prob.append(r.probability.ravel())
        ignore.append(r.ignored.ravel())
    truth, logit, prob, ignore = (np.concatenate(a) for a in (truth, logit, prob, ignore))
    assert (prob[~ignore] == 1.0).mean() > 0.01  # the ties are real
    by_logit = pooled_metrics(truth, logit, ignore, threshold=0.5, logits=True)
    by_probability = pooled_metrics(truth, prob, ignore, threshold=0.5, logits=False)
    assert report["prediction"]["tpr_at_fpr_1e-4"] == pytest.approx(by_logit["tpr_at_fpr_1e-4"])
    assert by_logit["tpr_at_fpr_1e-4"] > by_probability["tpr_at_fpr_1e-4"] + 0.1


def test_evaluate_labelled_files_and_attention_maps(tmp_path, capsys):
    model = _save(tmp_path / "att", "attention_unet", filters=(4, 8))
    files = []
    for k in range(2):
        f = make_frame(seed=20 + k, shape=(128, 128), config=MANY_CRS)
        ignore = f.ignore_mask.copy()
        ignore[:4, :] = True
        path = tmp_path / f"lab{k}.fits"
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(f.image_adu, name="S4"),
                      fits.ImageHDU(f.cr_mask.astype(np.uint8), name="CRMASK"),
                      fits.ImageHDU(ignore.astype(np.uint8), name="IGNORE")]).writeto(path)
        files.append((path, f, ignore))
    out = tmp_path / "ev"
    assert evaluate_main([str(p) for p, _, _ in files] + ["--model", str(model), "--runtime", "keras",
                                                          "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["threshold"] == 0.5 and report["threshold_source"].startswith("none")
    assert report["prediction"]["ignored_pixels"] >= sum(int(i.sum()) for _, _, i in files)
    assert report["prediction"]["cr_pixels"] == sum(int((f.cr_mask & ~i).sum()) for _, f, i in files)
    assert (out / "attention.png").is_file() and (out / "activations.png").is_file()
    # kercr-detect on a labelled file cannot add its CRMASK beside the truth's, and says what to run.
    assert detect_main([str(files[0][0]), "--model", str(model), "--runtime", "keras", "--out", str(tmp_path / "d")]) == 1
    assert "kercr-evaluate lab0.fits" in capsys.readouterr().err
    # A file without truth is a clear error.
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(make_frame(seed=1, shape=(64, 64)).image_adu).writeto(plain)
    assert evaluate_main([str(plain), "--model", str(model), "--out", str(tmp_path / "ev2")]) == 1


def test_output_path_names():
    assert output_path("/d/c4d_x_ooi_r.fits.fz").as_posix() == "/d/c4d_x_ooi_r_crmask.fits"
    assert output_path("a.fits", "out").as_posix() == "out/a_crmask.fits"
    assert output_path("b.fits.gz", suffix="_m").name == "b_m.fits"


@pytest.mark.parametrize("main", [detect_main, evaluate_main])
def test_help_reads_as_written(main, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "%%" not in text  # argparse does not %-format descriptions; only help strings
    if main is evaluate_main:
        assert "0.01 % and 0.1 % FPR" in " ".join(text.split())


# --------------------------------------------------------------------------------------------
# kercr-detect over a batch: --jobs, --scheduler, --skip-existing (the shipped LiteRT model)
# --------------------------------------------------------------------------------------------
def test_batch_with_jobs_skip_existing_and_a_local_dask_cluster(tmp_path, capsys):
    pytest.importorskip("distributed")
    from kercr.weights import has_default

    if not has_default():
        pytest.skip("no shipped model in this checkout")
    good = [_mef(tmp_path / "c4d_a_ooi_r.fits.fz", shape=(96, 80)), tmp_path / "one.fits"]
    fits.PrimaryHDU(make_frame(seed=4, shape=(64, 64), config=MANY_CRS).image_adu).writeto(good[1])
    corrupt = tmp_path / "c4d_b_ooi_r.fits"
    corrupt.write_bytes(good[0].read_bytes()[:2880 * 2 + 10])
    files = [str(good[0]), str(corrupt), str(good[1])]
    assert detect_main([*files, "--out", str(tmp_path / "j"), "--jobs", "2"]) == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if " failed: " in line and "[2/3]" in line]
    assert len(failed) == 1 and str(corrupt) in failed[0] and "download or write it again" in failed[0].lower()
    assert "3 files: 2 written, 0 skipped, 1 failed; 4 CCDs" in err
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["c4d_a_ooi_r_crmask.fits", "one_crmask.fits"]
    # The rerun: the two outputs are skipped, the corrupt file fails again; without it, exit status 0.
    assert detect_main([*files, "--out", str(tmp_path / "j"), "--skip-existing", "--jobs", "2"]) == 1
    assert "3 files: 0 written, 2 skipped, 1 failed; 0 CCDs" in capsys.readouterr().err
    assert detect_main([files[0], files[2], "--out", str(tmp_path / "j"), "--skip-existing", "-q"]) == 0
    assert capsys.readouterr().err == ""  # -q: nothing to say
    # One Dask task per file on a LocalCluster: the same masks.
    assert detect_main([files[0], files[2], "--out", str(tmp_path / "d"), "--scheduler", "local", "--jobs", "2"]) == 0
    for name in ("c4d_a_ooi_r_crmask.fits", "one_crmask.fits"):
        with fits.open(tmp_path / "j" / name) as a, fits.open(tmp_path / "d" / name) as b:
            masks = [h.name for h in a if h.name.endswith("CRMASK")]
            assert masks and masks == [h.name for h in b if h.name.endswith("CRMASK")]
            for m in masks:
                np.testing.assert_array_equal(a[m].data, b[m].data)


def test_batch_options_are_checked(tmp_path, capsys):
    src = tmp_path / "x.fits"
    fits.PrimaryHDU(make_frame(seed=2, shape=(40, 40)).image_adu).writeto(src)
    for bad in (["--jobs", "0"], ["--threads", "0"]):
        with pytest.raises(SystemExit) as exit_:
            detect_main([str(src), *bad])
        assert exit_.value.code == 2 and f"{bad[0]} 0: pass a number" in capsys.readouterr().err
    # Tiling and batch options that would fail every file stop the command before any file.
    for bad in (["--tile", "0"], ["--overlap", "-1"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as exit_:
            detect_main([str(src), *bad, "--out", str(tmp_path / "o")])
        assert exit_.value.code == 2 and f"{bad[0]} {bad[1]}: pass" in capsys.readouterr().err
    assert detect_main([str(src), "--tile", "8", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "tile=8 leaves no core" in err and err.count("error") == 1 and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exit_:
        detect_main([str(src), "--tta-gate", "1.5"])
    assert exit_.value.code == 2 and "--tta-gate 1.5: pass a probability in [0, 1)" in capsys.readouterr().err
    assert not output_path(src).exists()
    with pytest.raises(SystemExit):
        detect_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--jobs N", "--scheduler ADDRESS", "--skip-existing", "GB per worker", "tcp://HOST:8786"):
        assert flag in text


@pytest.mark.skipif(not has_default(), reason="needs the shipped default model")
def test_sigterm_mid_batch_removes_the_partial_output_and_the_same_command_resumes(tmp_path):
    """``timeout``, Slurm's time limit and ``docker stop`` send SIGTERM; before, the output being
    written stayed behind under its hidden temporary name, one per kill."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = _mef(tmp_path / "night.fits", names=tuple(f"S{k}" for k in range(1, 9)), shape=(768, 512))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "kercr.cli.detect", str(src), "--out", str(out), "--jobs", "1", "--threads", "1"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob(".*.partial-*")):
        time.sleep(0.05)
    assert list(out.glob(".*.partial-*")), "the output was never started (or the run ended first)"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "--skip-existing" in err
    assert not any(out.iterdir()), sorted(os.listdir(out))
    done = subprocess.run([*argv, "--skip-existing"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in out.iterdir()] == ["night_crmask.fits"]
