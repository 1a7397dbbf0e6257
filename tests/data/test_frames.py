"""Frame sources of kercr.data.frames: the frames kercr-train and kercr-prepare cut patches from."""

import os
import subprocess
import sys

import numpy as np
from astropy.io import fits

from kercr.data.fits_io import write_fits_with_mask
from kercr.data.frames import FITSFrames, SyntheticFrames
from kercr.data.synthetic import make_frame

SHAPE = (128, 128)


def test_labelled_fits_frame_keeps_its_truth_and_weights_zero_on_ignored(tmp_path):
    f = make_frame(seed=0, shape=SHAPE)
    ignore = f.ignore_mask.copy()
    ignore[:, :10] = True
    path = write_fits_with_mask(tmp_path / "lab.fits", f.image_adu, f.cr_mask, extname="N4")
    with fits.open(path, mode="append") as hdul:
        hdul.append(fits.ImageHDU(ignore.astype(np.uint8), name="IGNORE"))
    source = FITSFrames(tmp_path, seed=0)
    assert source.exposure_ids() == [str(path)]
    (key,) = source.frames_of(str(path))
    image, mask, weight = source.frame(key)
    assert image.shape == mask.shape == weight.shape == SHAPE
    assert image.dtype == mask.dtype == weight.dtype == np.float32
    np.testing.assert_array_equal(weight == 0, ignore | ~np.isfinite(f.image_adu))
    assert set(np.unique(weight)) == {0.0, 1.0}
    np.testing.assert_array_equal(mask, f.cr_mask.astype(np.float32))
    assert abs(float(np.median(image[~ignore]))) < 0.1  # normalized over the whole frame: sky at 0


def test_clean_fits_ccds_each_get_simulated_crs_seeded_by_the_source(tmp_path):
    f = make_frame(seed=2, shape=SHAPE)
    hdr = fits.Header([("EXPTIME", 100.0), ("GAINA", 4.0), ("GAINB", 4.0)])
    fits.HDUList([fits.PrimaryHDU(header=hdr), fits.ImageHDU(f.clean_adu, name="N4"),
                  fits.ImageHDU(f.clean_adu[::-1].copy(), name="S4")]).writeto(tmp_path / "clean.fits")
    write_fits_with_mask(tmp_path / "lab.fits", f.image_adu, f.cr_mask, extname="N4")
    source = FITSFrames(tmp_path, seed=0, cr_rate_scale=200.0)
    clean, labelled = source.exposure_ids()
    assert clean.endswith("clean.fits") and labelled.endswith("lab.fits")
    keys = source.frames_of(clean)
    assert len(keys) == 2  # one frame per CCD (N4 and S4), one exposure
    (n4, m4, w4), (s4, ms4, ws4) = (source.frame(k) for k in keys)
    assert m4.sum() > 0 and ms4.sum() > 0 and not np.array_equal(m4, ms4)
    assert w4.max() == 1.0 and ws4.max() == 1.0
    # The CRs land where the mask says: the injected image differs from the clean CCD there.
    injected = FITSFrames(tmp_path, seed=0, cr_rate_scale=200.0)._make(keys[0])
    hit = injected[1] & ~injected[2]
    assert hit.any() and np.all(injected[0][hit] > f.clean_adu[hit])
    np.testing.assert_array_equal(injected[0][~injected[1]], f.clean_adu[~injected[1]])
    (_, lab_mask, _), = (source.frame(k) for k in source.frames_of(labelled))
    np.testing.assert_array_equal(lab_mask, f.cr_mask.astype(np.float32))
    # Another seed, other CRs.
    assert not np.array_equal(FITSFrames(tmp_path, seed=1, cr_rate_scale=200.0).frame(keys[0])[1], m4)


def test_a_decam_cp_folder_trains_on_its_images_with_their_data_quality_maps(tmp_path, caplog):
    f = make_frame(seed=3, shape=SHAPE)
    hdr = fits.Header([("EXPTIME", 90.0), ("GAIN", 4.0), ("RDNOISE", 6.0)])
    dq = np.zeros(SHAPE, np.int16)
    dq[10:14, 20:60] = 5  # a real CR of the frame: unlabelled, so ignored
    dq[:, 100] = 1  # a bad column
    name = "c4d_170916_045042_{}_r_ls9.fits.fz"
    for kind, data in (("ooi", f.clean_adu), ("ood", dq), ("oow", np.ones(SHAPE, np.float32))):
        fits.HDUList([fits.PrimaryHDU(header=hdr), fits.CompImageHDU(data, name="N15")]).writeto(
            tmp_path / name.format(kind))
    source = FITSFrames(tmp_path, seed=0, cr_rate_scale=200.0)
    assert source.exposure_ids() == [str(tmp_path / name.format("ooi"))]  # not the DQ or weight planes
    (key,) = source.frames_of(source.exposure_ids()[0])
    _, _, weight = source.frame(key)
    assert (weight[10:14, 20:60] == 0).all() and (weight[:, 100] == 0).all()
    assert (weight == 0).mean() < 0.1
    # Without GAIN/RDNOISE the DECam values are assumed, and said once per frame.
    plain = tmp_path / "plain"
    plain.mkdir()
    fits.PrimaryHDU(f.clean_adu, header=fits.Header([("EXPTIME", 90.0)])).writeto(plain / "x.fits")
    other = FITSFrames(plain, seed=0)
    for _ in range(2):
        other._make(other.frames_of(other.exposure_ids()[0])[0])
    assert caplog.text.count("no GAIN in the header; assuming DECam's 4") == 1


def test_training_frames_give_the_normalization_their_imagers_gain_and_read_noise(tmp_path, monkeypatch):
    """For normalization.header_noise: a synthetic frame's imager, a FITS frame's header."""
    import kercr.data.frames as frames
    from kercr.data.normalization import NormalizationConfig

    seen, normalize = [], frames.normalize

    def spy(image, *, mask=None, config=None, gain=None, readnoise=None):
        seen.append((gain, readnoise))
        return normalize(image, mask=mask, config=config, gain=gain, readnoise=readnoise)

    monkeypatch.setattr(frames, "normalize", spy)
    config = NormalizationConfig(header_noise=(0.9, 1.6))
    synthetic = SyntheticFrames(seed=0, shape=SHAPE, normalization=config, variety="wide")
    synthetic.frame(3)
    imager = synthetic.frame_config(3)
    assert seen[-1] == (imager.gain, imager.readnoise_e)
    f = make_frame(seed=2, shape=SHAPE)
    fits.PrimaryHDU(f.clean_adu, header=fits.Header([("EXPTIME", 90.0), ("GAIN", 3.5), ("RDNOISE", 6.0)])).writeto(
        tmp_path / "x.fits")
    source = FITSFrames(tmp_path, seed=0, normalization=config)
    source.frame(source.frames_of(source.exposure_ids()[0])[0])
    assert seen[-1] == (3.5, 6.0)


def test_synthetic_frame_depends_only_on_seed_and_index():
    a = SyntheticFrames(seed=1, shape=SHAPE, cr_rate_scale=20, cache=1)
    first = [a.frame(i) for i in range(2)]
    b = SyntheticFrames(seed=1, shape=SHAPE, cr_rate_scale=20, cache=1)
    for i in (1, 0):  # a fresh source, read in the other order
        for x, y in zip(first[i], b.frame(i)):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0][0], first[1][0])
    assert not np.array_equal(first[0][0], SyntheticFrames(seed=2, shape=SHAPE, cr_rate_scale=20).frame(0)[0])


def test_crs_injected_into_fits_frames_are_the_same_in_every_process(tmp_path):
    # The injection seed comes from the file and extension names; Python's hash() of a str differs
    # between processes (PYTHONHASHSEED), so a resumed run or another worker saw other CRs.
    f = make_frame(seed=5, shape=(96, 80))
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(f.clean_adu, header=fits.Header(
        {"GAIN": 4.0, "RDNOISE": 7.0, "EXPTIME": 90.0, "SATURATE": 45000.0}), name="N4")]).writeto(tmp_path / "a.fits")
    code = ("import sys, hashlib, numpy as np; from kercr.data.frames import FITSFrames; "
            "s = FITSFrames(sys.argv[1], seed=3, cr_rate_scale=200.0); "
            "key = s.frames_of(s.exposure_ids()[0])[0]; image, mask, ignore, clean = s._make(key); "
            "print(int(mask.sum()), hashlib.sha256(np.ascontiguousarray(mask)).hexdigest())")
    runs = [subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout for seed in ("1", "2")]
    assert runs[0] == runs[1] and int(runs[0].split()[0]) > 0


def test_rim_weight_weighs_the_counted_pixels_touching_a_cr_and_nothing_else():
    from kercr.data.pixel_weights import weigh_rim

    kw = dict(seed=3, shape=(256, 256), variety="wide", cr_rate_scale=40)
    image, mask, weight = SyntheticFrames(**kw).frame(0)
    image4, mask4, weight4 = SyntheticFrames(**kw, rim_weight=4.0).frame(0)
    np.testing.assert_array_equal(image4, image)
    np.testing.assert_array_equal(mask4, mask)
    np.testing.assert_array_equal(weight4, weigh_rim(weight, mask, 4.0))
    assert (weight4 == 4).sum() > 50 and set(np.unique(weight4)) == {0.0, 1.0, 4.0}
