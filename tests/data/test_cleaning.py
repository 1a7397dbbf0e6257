"""kercr.data.clean_image: CR pixels replaced by a masked local estimate, nothing else touched.

Small hand-checkable arrays: the expected values are written out from the window rule (5 x 5
first, grown until ``min_good`` good pixels) and the estimators' definitions.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from kercr.data import CLEAN_METHODS, KercrDataError, clean_image, cleaning_mask, make_frame, robust_sky_noise


def _rings(size=11, values=(0.0, 100.0, 10.0, 1000.0, 1000.0, 1000.0)):
    """A (size, size) image whose pixel at Chebyshev distance d from the centre holds ``values[d]``."""
    c = size // 2
    yy, xx = np.mgrid[:size, :size]
    d = np.maximum(np.abs(yy - c), np.abs(xx - c))
    return np.asarray(values, np.float32)[d], c


def _centre_mask(size, c):
    m = np.zeros((size, size), bool)
    m[c, c] = True
    return m


def test_cr_pixel_gets_the_median_mean_or_idw_of_its_5x5_neighbours():
    # Centre 0 (the CR), ring 1: eight pixels of 100, ring 2: sixteen of 10, beyond: 1000 (outside 5 x 5).
    image, c = _rings()
    mask = _centre_mask(image.shape[0], c)
    median = clean_image(image, mask, method="median")
    assert median[c, c] == 10.0  # 16 of the 24 neighbours are 10
    assert clean_image(image, mask, method="mean")[c, c] == pytest.approx((8 * 100 + 16 * 10) / 24)
    # idw: weight 1/r; ring 1 has 4 pixels at r = 1 and 4 at sqrt(2); ring 2 has 4 at 2, 8 at sqrt(5), 4 at sqrt(8).
    w1 = 4 + 4 / np.sqrt(2)
    w2 = 4 / 2 + 8 / np.sqrt(5) + 4 / np.sqrt(8)
    assert clean_image(image, mask, method="idw")[c, c] == pytest.approx((100 * w1 + 10 * w2) / (w1 + w2), rel=1e-6)
    # An even number of good pixels: the mean of the two middle ones (as numpy.median). One ring-1
    # pixel NaN and one more CR leave 22 good: 6 of 100 in ring 1; ring 2's top row (5 pixels) set
    # to 100 leaves 11 of 10 -> 11 of 100 and 11 of 10.
    even = image.copy()
    even[c - 1, c - 1] = np.nan
    even[c - 2, :] = 100.0
    mask2 = mask.copy()
    mask2[c - 1, c] = True
    assert clean_image(even, mask2)[c, c] == pytest.approx((10 + 100) / 2)


def test_pixels_not_replaced_are_bit_identical_and_inputs_unmodified():
    rng = np.random.default_rng(0)
    image = rng.normal(500, 20, (64, 80)).astype(np.float32)
    image[5, 5] = np.nan
    image[6, 7] = np.inf
    cr = rng.uniform(size=image.shape) < 0.03
    cr[5, 5] = cr[6, 7] = True  # non-finite CR pixels stay as they are
    ignore = np.zeros(image.shape, bool)
    ignore[30:33, 40:44] = True
    cr[31, 41] = True  # an ignored pixel under the CR mask keeps its value
    keep = [a.copy() for a in (image, cr, ignore)]
    for a in (image, cr, ignore):
        a.setflags(write=False)  # any write raises
    for method in CLEAN_METHODS:
        for dilate in (0, 1):
            out = clean_image(image, cr, ignore=ignore, method=method, dilate=dilate)
            assert out.dtype == np.float32 and out.shape == image.shape and out is not image
            replaced = cleaning_mask(cr, ignore=ignore, dilate=dilate, image=image)
            assert replaced.sum() > 100 and not replaced[5, 5] and not replaced[31, 41]
            np.testing.assert_array_equal(out[~replaced].view(np.uint32), image[~replaced].view(np.uint32))
            assert np.isfinite(out[replaced]).all()
            assert (out[replaced] != image[replaced]).mean() > 0.99  # the replaced pixels did change
    for a, k in zip((image, cr, ignore), keep):
        np.testing.assert_array_equal(a, k)
    # Other input dtypes: the untouched pixels are the input as float32.
    as64 = image.astype(np.float64) + 1e-9
    out = clean_image(as64, cr)
    replaced = cleaning_mask(cr, image=as64)
    np.testing.assert_array_equal(out[~replaced], as64.astype(np.float32)[~replaced])
    ints = np.arange(20 * 20, dtype=np.int32).reshape(20, 20)
    m = np.zeros((20, 20), bool)
    m[10, 10] = True
    out = clean_image(ints, m)
    assert out.dtype == np.float32 and out[10, 10] == 210.0  # the median of a linear ramp is its centre
    np.testing.assert_array_equal(out[~m], ints[~m].astype(np.float32))


def test_nan_and_ignored_neighbours_are_never_used():
    image, c = _rings(values=(0.0, 10.0, 10.0, 10.0, 10.0, 10.0))
    mask = _centre_mask(image.shape[0], c)
    image[c - 1, c] = np.nan
    image[c + 1, c] = 1e6  # ignored: a saturated pixel must not leak into the estimate
    ignore = np.zeros(image.shape, bool)
    ignore[c + 1, c] = True
    for method in CLEAN_METHODS:
        out = clean_image(image, mask, ignore=ignore, method=method)
        assert out[c, c] == pytest.approx(10.0)
        assert np.isnan(out[c - 1, c]) and out[c + 1, c] == np.float32(1e6)
    # Without the ignore mask the bright pixel is a neighbour: the mean shows it (the test can fail).
    assert clean_image(image, mask, method="mean")[c, c] > 1000


def test_the_mask_of_a_ccddata_or_masked_array_is_ignored_and_a_ccddata_comes_back():
    from astropy.nddata import CCDData

    image, c = _rings(values=(0.0, 10.0, 10.0, 10.0, 10.0, 10.0))
    mask = _centre_mask(image.shape[0], c)
    image[c + 1, c] = 1e6  # a hot pixel its own mask flags
    flagged = np.zeros(image.shape, bool)
    flagged[c + 1, c] = True
    ccd = CCDData(image.copy(), unit="adu", mask=flagged.copy(), meta={"GAIN": 4.0})
    for method in CLEAN_METHODS:
        out = clean_image(ccd, mask, method=method)
        assert isinstance(out, CCDData) and out.unit == "adu" and out.header["GAIN"] == 4.0
        assert out.data[c, c] == pytest.approx(10.0) and out.data[c + 1, c] == np.float32(1e6)
        np.testing.assert_array_equal(out.mask, flagged | mask)  # its mask OR the replaced pixels
        assert clean_image(np.ma.MaskedArray(image, flagged), mask, method=method)[c, c] == pytest.approx(10.0)
    np.testing.assert_array_equal(ccd.mask, flagged)  # the input is not modified
    assert ccd.data[c, c] == image[c, c]


def test_window_grows_until_enough_good_pixels():
    # A 5 x 5 CR blob: the centre's 5 x 5 window holds no good pixel; 7 x 7 holds ring 3 (24 pixels of 7).
    image, c = _rings(size=15, values=(500.0, 500.0, 500.0, 7.0, 1000.0, 1000.0, 1000.0, 1000.0))
    mask = np.zeros(image.shape, bool)
    mask[c - 2:c + 3, c - 2:c + 3] = True
    assert clean_image(image, mask)[c, c] == 7.0
    # min_good 25: 7 x 7 has only 24, so 9 x 9 is used (24 of 7, 32 of 1000): the median is 1000.
    assert clean_image(image, mask, min_good=25)[c, c] == 1000.0
    # window=7 starts there directly; window=9 skips ring 3's majority.
    assert clean_image(image, mask, window=7)[c, c] == 7.0
    assert clean_image(image, mask, window=9)[c, c] == 1000.0
    # Dilation: the blob grown by 1 is 7 x 7, so the centre needs a 9 x 9 window (ring 3 is now CR too).
    assert clean_image(image, mask, dilate=1)[c, c] == 1000.0
    assert cleaning_mask(mask, dilate=1).sum() == 49


def test_too_few_good_pixels_use_those_there_are_and_none_get_the_fallback(caplog):
    rng = np.random.default_rng(1)
    image = rng.normal(100, 5, (20, 20)).astype(np.float32)
    cr = np.zeros(image.shape, bool)
    cr[5:15, 5:15] = True
    with caplog.at_level(logging.WARNING, logger="kercr"):
        out = clean_image(image, cr, max_window=5)
    # (6, 7): its 5 x 5 window (rows 4-8, columns 5-9) holds 5 good pixels (row 4) < min_good: those 5.
    assert out[6, 7] == np.float32(np.median(image[4, 5:10]))
    # (10, 10): no good pixel within 5 x 5: the median of the good pixels of the nearest 5 x 5 block
    # holding any (its own block, rows and columns 10-14, is all CR; those beside it below or right are not).
    assert out[10, 10] in {np.float32(np.median(image[15:20, 10:15])), np.float32(np.median(image[10:15, 15:20]))}
    assert np.isfinite(out).all()
    assert "no good pixel within 5 x 5" in caplog.text and "max_window" in caplog.text
    assert clean_image(image, cr, max_window=5, fallback=123.0)[10, 10] == 123.0
    # A larger max_window reaches good pixels: no fallback.
    grown = clean_image(image, cr, max_window=11)
    assert 80 < grown[10, 10] < 120 and grown[10, 10] != out[10, 10]


def test_a_hole_wider_than_the_largest_window_gets_the_level_around_it_not_the_frames():
    """A 60 x 60 blob of CR pixels on a galaxy 2000 above the sky: before, its middle got the frame's
    median, the sky, 40 sigma below the galaxy."""
    rng = np.random.default_rng(4)
    image = rng.normal(100, 10, (400, 400)).astype(np.float32)
    image[100:300, 100:300] += 2000.0  # the galaxy: a plateau, so its level is known
    cr = np.zeros(image.shape, bool)
    cr[170:230, 170:230] = True
    out = clean_image(image, cr)
    assert abs(float(np.median(out[cr])) - 2100.0) < 10.0  # the galaxy's level, within the noise
    assert abs(float(out[200, 200]) - 2100.0) < 10.0


def test_nothing_to_estimate_from_is_an_error_unless_a_fallback_is_given():
    image = np.full((8, 8), 3.0, np.float32)
    everything = np.ones(image.shape, bool)
    with pytest.raises(KercrDataError, match=r"every pixel of the image is a CR.*fallback=VALUE"):
        clean_image(image, everything)
    np.testing.assert_array_equal(clean_image(image, everything, fallback=0.0), np.zeros(image.shape, np.float32))
    # No CR pixel: an unchanged float32 copy.
    out = clean_image(image, np.zeros(image.shape, bool))
    assert out is not image and np.array_equal(out, image)


def test_bad_inputs_get_clear_errors():
    image = np.zeros((10, 12), np.float32)
    mask = np.zeros((10, 12), bool)
    with pytest.raises(KercrDataError, match=r"cr_mask has shape \(12, 10\) but the image \(10, 12\)"):
        clean_image(image, mask.T)
    with pytest.raises(KercrDataError, match=r"cr_mask has dtype float32.*boolean mask.*probability"):
        clean_image(image, np.zeros((10, 12), np.float32))
    with pytest.raises(KercrDataError, match=r"values outside 0 and 1"):
        clean_image(image, np.full((10, 12), 2, np.uint8))
    with pytest.raises(KercrDataError, match=r"ignore has shape"):
        clean_image(image, mask, ignore=np.zeros((3, 3), bool))
    with pytest.raises(KercrDataError, match=r"'medmask' does not exist; choose one of: median, mean, idw"):
        clean_image(image, mask, method="medmask")
    with pytest.raises(KercrDataError, match=r"2-D"):
        clean_image(np.zeros((2, 10, 12)), mask)
    with pytest.raises(KercrDataError, match=r"dtype complex"):
        clean_image(image.astype(complex), mask)
    with pytest.raises(KercrDataError, match=r"dilate=-1"):
        clean_image(image, mask, dilate=-1)
    with pytest.raises(KercrDataError, match=r"must be odd"):
        clean_image(image, mask, window=4)
    with pytest.raises(KercrDataError, match=r"max_window=3: pass an integer >= 5"):
        clean_image(image, mask, max_window=3)
    with pytest.raises(KercrDataError, match=r"min_good=0"):
        clean_image(image, mask, min_good=0)
    # A 0/1 integer mask (a CRMASK extension read from FITS) is the same as the boolean one.
    m = np.zeros((10, 12), bool)
    m[4, 5] = True
    image = np.random.default_rng(2).normal(0, 1, (10, 12)).astype(np.float32)
    np.testing.assert_array_equal(clean_image(image, m.astype(np.uint8)), clean_image(image, m))


@pytest.mark.parametrize("method", CLEAN_METHODS)
def test_cleaned_synthetic_frame_is_close_to_the_truth_without_crs(method):
    frame = make_frame(seed=5, shape=(256, 256))
    cr = frame.cr_mask & ~frame.ignore_mask
    assert cr.sum() > 30
    _, noise, _ = robust_sky_noise(frame.clean_adu, mask=frame.ignore_mask)
    out = clean_image(frame.image_adu, cr, ignore=frame.ignore_mask, method=method, dilate=1)
    before = np.median(np.abs(frame.image_adu[cr] - frame.clean_adu[cr])) / noise
    after = np.median(np.abs(out[cr] - frame.clean_adu[cr])) / noise
    assert before > 2.0 and after < 1.0  # a clean pixel's own noise makes the error ~0.7 sigma at best


def test_cleaning_runs_without_tensorflow_or_keras(run_without_ml):
    result = run_without_ml("""
        import numpy as np
        from kercr.data.cleaning import clean_image
        image = np.arange(49, dtype=np.float32).reshape(7, 7)
        mask = np.zeros((7, 7), bool); mask[3, 3] = True
        print("ok", clean_image(image, mask)[3, 3])
    """)
    assert result.returncode == 0, result.stderr
    assert "ok 24.0" in result.stdout
