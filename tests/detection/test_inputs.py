"""kercr.detection.inputs: the image types kercr.detect accepts and the header numbers it reads."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData

from kercr.data import KercrDataError, read_ccd
from kercr.detection import detect
from kercr.detection.inputs import unpack

SHAPE = (300, 500)  # the detection_frame fixture's


def test_unpack_reads_each_image_type(tmp_path):
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    data, header, mask, what, frame = unpack(image)
    assert data is image and (header, mask, what, frame) == (None, None, "image", None)
    hdu = fits.ImageHDU(image, header=fits.Header({"GAIN": 2.0}), name="N4")
    data, header, mask, what, _ = unpack(hdu)
    assert data is hdu.data and header["GAIN"] == 2.0 and mask is None and what == "HDU N4"
    ccd = CCDData(image, unit="adu", mask=np.eye(3, 4, dtype=int), meta={"GAIN": 3.0})
    data, header, mask, what, _ = unpack(ccd)
    assert isinstance(header, fits.Header) and header["GAIN"] == 3.0 and what == "CCDData"
    assert mask.dtype == bool and mask.sum() == 3
    # A plain-dict meta with values FITS cannot hold: the numbers are read, the rest left out.
    _, header, _, _, _ = unpack(CCDData(image, unit="adu", meta={"GAIN": 2.5, "history": [1, 2], "obj": object(),
                                                                 "SATURATION_LEVEL": 6e4}))
    assert header["GAIN"] == 2.5 and "history" not in header and header["SATURATION_LEVEL"] == 6e4
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="N7")]).writeto(tmp_path / "f.fits")
    ccd_frame = read_ccd(tmp_path / "f.fits", "N7")
    data, _, _, what, frame = unpack(ccd_frame)
    assert frame is ccd_frame and what == f"{tmp_path / 'f.fits'}[N7]"
    np.testing.assert_array_equal(data, image)


def test_what_is_not_an_image_is_named_with_the_fix(tiny, frame):
    with pytest.raises(KercrDataError, match="HDU 'EMPTY' holds no image data; pass an image extension"):
        unpack(fits.ImageHDU(name="EMPTY"))
    with pytest.raises(KercrDataError, match=r"file name 'frame.fits', not an image.*read_ccd\('frame.fits'\)"):
        detect("frame.fits", model=tiny)
    with pytest.raises(KercrDataError, match=r"whole FITS file \(HDUList\).*hdul\[1\]"):
        detect(fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(frame.image_adu)]), model=tiny)


def test_a_fits_frame_brings_its_header_numbers_and_arguments_win(tiny, frame, tmp_path):
    image = frame.image_adu.copy()
    image[7, 9] = 52000.0
    header = fits.Header({"GAIN": 2.5, "RDNOISE": 7.0, "SATURATE": 50000.0})
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, header=header, name="N1")]).writeto(tmp_path / "f.fits")
    r = detect(read_ccd(tmp_path / "f.fits", "N1"), model=tiny, runtime="keras")
    assert (r.gain, r.readnoise, r.saturation) == (2.5, 7.0, 50000.0)
    assert r.ignored[7, 9] and r.ignored.sum() == 1
    r = detect(read_ccd(tmp_path / "f.fits", "N1"), model=tiny, runtime="keras", gain=1.5, saturation=60000.0)
    assert (r.gain, r.readnoise, r.saturation) == (1.5, 7.0, 60000.0) and not r.ignored.any()


def test_inputs_are_never_modified(tiny, frame):
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
    mask = np.zeros(SHAPE, bool)
    mask[3, 4] = True
    assert detect(CCDData(image, unit="adu", mask=mask), model=tiny, runtime="keras").ignored.sum() == 1



def test_header_levels_follow_a_ccddatas_unit():
    """The header's SATURATE is in ADU; ccdproc's gain_correct turns the data into electrons and leaves
    the header alone, so the level is SATURATE x GAIN there (before: the ADU level, which took the
    cores of CRs brighter than about SATURATE / GAIN ADU for saturated pixels)."""
    import warnings

    from kercr.detection.inputs import header_levels

    header = fits.Header({"GAIN": 4.0, "RDNOISE": 6.0, "SATURATE": 40000.0})
    assert header_levels(header) == (4.0, 6.0, 40000.0)
    for unit in ("adu", "count", ""):
        assert header_levels(header, unit) == (4.0, 6.0, 40000.0)
    assert header_levels(header, "electron") == (1.0, 6.0, 160000.0)
    for unit, header_here in (("electron / s", header), ("electron", fits.Header({"SATURATE": 40000.0}))):
        with pytest.warns(UserWarning, match="header's SATURATE \\(40000\\) is in ADU.*Pass saturation="):
            assert header_levels(header_here, unit)[::2] == (None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say without a SATURATE
        assert header_levels(fits.Header({"GAIN": 2.0}), "electron / s") == (None, None, None)


def test_a_ccddata_in_electrons_excludes_only_what_saturated(tiny, frame):
    image = frame.image_adu.astype(np.float32) * 4.0  # electrons, gain 4
    image[40, 60] = 15000.0 * 4.0  # a CR core of 15,000 ADU: not saturated
    image[41:43, 61] = 40000.0 * 4.0  # saturated in the raw frame
    header = {"GAIN": 4.0, "RDNOISE": 6.0, "SATURATE": 40000.0}
    r = detect(CCDData(image, unit="electron", meta=header), model=tiny, runtime="keras")
    assert (r.gain, r.saturation) == (1.0, 160000.0)
    assert r.ignored[41:43, 61].all() and not r.ignored[40, 60] and r.ignored.sum() == 2


def test_one_unit_rule_for_a_file_an_hdu_and_a_ccddata(tiny, frame, tmp_path):
    """The same file gave a saturation of 45000 through read_ccd or an HDU and 180000 through
    CCDData.read; BUNIT now counts everywhere. A level the caller gives is used without a warning."""
    import warnings

    header = fits.Header({"BUNIT": "electron", "GAIN": 4.0, "RDNOISE": 6.0, "SATURATE": 45000.0})
    fits.PrimaryHDU(frame.image_adu.astype(np.float32) * 4.0, header=header).writeto(tmp_path / "e.fits")
    levels = {
        "read_ccd": detect(read_ccd(tmp_path / "e.fits"), model=tiny, runtime="keras"),
        "HDU": detect(fits.open(tmp_path / "e.fits")[0], model=tiny, runtime="keras"),
        "CCDData": detect(CCDData.read(tmp_path / "e.fits"), model=tiny, runtime="keras"),
    }
    assert {name: (r.gain, r.saturation) for name, r in levels.items()} == {name: (1.0, 180000.0) for name in levels}
    per_second = CCDData(frame.image_adu.astype(np.float32), unit="electron / s", meta=dict(header))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: "saturated pixels are not excluded. Pass saturation=", though it was
        assert detect(per_second, model=tiny, runtime="keras", saturation=1e6).saturation == 1e6


@pytest.mark.parametrize(("option", "value"), [("gain", -1.0), ("gain", 0), ("gain", "abc"), ("readnoise", -2.0),
                                               ("readnoise", float("nan"))])
def test_a_bad_gain_or_read_noise_is_named(tiny, frame, option, value):
    with pytest.raises(KercrDataError, match=f"{option}=.* must be a number"):
        detect(frame.image_adu, model=tiny, runtime="keras", **{option: value})


def test_any_nddata_brings_its_mask_and_other_objects_are_named(tiny, frame):
    """NDDataArray and plain NDData hold a mask as CCDData does (True = bad); before, an NDDataArray's mask
    was dropped in silence and a plain NDData or an HDU section failed with "shape ()"."""
    from astropy.nddata import NDData, NDDataArray

    mask = np.zeros(SHAPE, bool)
    mask[10:20, 30:40] = True
    for kind in (NDData, NDDataArray):
        r = detect(kind(frame.image_adu, mask=mask), model=tiny, runtime="keras")
        assert r.ignored[mask].all() and not r.mask[mask].any(), kind
    with pytest.raises(KercrDataError, match=r"got a .*BinTableHDU, not an image: pass a 2-D numpy array"):
        detect(fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.ones(3))]), model=tiny)


def test_an_extension_hdu_without_levels_says_where_they_may_be(tiny, frame, caplog):
    hdu = fits.ImageHDU(frame.image_adu, name="SCI")
    with caplog.at_level("WARNING", logger="kercr.detection.detector"):
        detect(hdu, model=tiny, runtime="keras")
    assert "HDU SCI has no SATURATE or GAIN card" in caplog.text and "read_ccd(path, ext='SCI')" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="kercr.detection.detector"):  # the levels the warning asks for
        assert detect(hdu, model=tiny, runtime="keras", saturation=60000.0, gain=2.0).saturation == 60000.0
    assert "no SATURATE" not in caplog.text
    hdu.header["SATURATE"] = 60000.0
    with caplog.at_level("WARNING", logger="kercr.detection.detector"):
        assert detect(hdu, model=tiny, runtime="keras").saturation == 60000.0
    assert "no SATURATE" not in caplog.text


def test_levels_may_be_astropy_quantities(tiny, frame):
    """ccdproc users pass gain=2 * u.electron / u.adu; kercr took only plain numbers."""
    import astropy.units as u

    r = detect(CCDData(frame.image_adu, unit="adu"), model=tiny, runtime="keras", gain=2 * u.electron / u.adu,
               readnoise=7 * u.electron, saturation=60000 * u.adu)
    assert (r.gain, r.readnoise, r.saturation) == (2.0, 7.0, 60000.0)
    with pytest.raises(KercrDataError, match=r"readnoise=.* is not in electron"):
        detect(frame.image_adu, model=tiny, runtime="keras", readnoise=7 * u.adu)


def test_blank_pixels_of_an_hdu_or_a_ccddata_are_ignored_as_read_ccd_makes_them_nan(tiny, frame, tmp_path):
    """Integer data can keep BLANK as a number through astropy: 0 for uint16 stored with BZERO =
    32768, read from a file; the raw value in an HDU made in memory. Before, those pixels were CR
    neighbours in cleaning and sky in the statistics; read_ccd makes them NaN."""
    from astropy.nddata import CCDData

    data = np.clip(frame.image_adu, 1, 30000).astype(np.uint16)
    blank = np.zeros(SHAPE, bool)
    blank[100:104, 200:260] = True
    data[blank] = 0
    hdu = fits.PrimaryHDU(data)
    hdu.header["BLANK"], hdu.header["SATURATE"] = -32768, 30000.0  # stored as int16 - 32768: BLANK is 0 here
    hdu.writeto(tmp_path / "f.fits")
    with fits.open(tmp_path / "f.fits") as hdul:
        assert hdul[0].data.dtype == np.uint16 and (hdul[0].data[blank] == 0).all()  # astropy's view of them
        from_hdu = detect(hdul[0], model=tiny, runtime="keras")
    from_ccd = detect(CCDData.read(tmp_path / "f.fits", unit="adu"), model=tiny, runtime="keras")
    from_file = detect(read_ccd(tmp_path / "f.fits"), model=tiny, runtime="keras")
    raw = data.astype(np.int32) - 32768
    in_memory = fits.ImageHDU(raw.astype(np.int16), header=fits.Header([("BLANK", -32768), ("SATURATE", -2768.0)]))
    from_memory = detect(in_memory, model=tiny, runtime="keras")
    for r in (from_hdu, from_ccd, from_file, from_memory):
        assert r.ignored[blank].all() and not r.mask[blank].any()
    np.testing.assert_array_equal(from_hdu.probability, from_file.probability)
    assert (from_memory.ignored == from_file.ignored).all()


def test_blank_of_raw_stored_integers_is_the_header_value(tmp_path):
    """Data astropy was told not to scale (do_not_scale_image_data) hold the stored integers: BLANK
    itself marks the gaps there, not BLANK x BSCALE + BZERO."""
    from kercr.detection.inputs import _blank_as_nan

    raw = np.array([[-32768, 0, 5], [100, -32768, 7]], np.int16)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BZERO"], hdu.header["BLANK"] = 10.0, -32768
    hdu.writeto(tmp_path / "f.fits")
    with fits.open(tmp_path / "f.fits", do_not_scale_image_data=True) as hdul:
        out = _blank_as_nan(hdul[0].data, hdul[0].header)  # big-endian int16, as stored
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1]) and np.isfinite(out[0, 1])
    with fits.open(tmp_path / "f.fits") as hdul:  # scaled by astropy: float, BLANK already NaN
        assert np.isnan(hdul[0].data[0, 0]) and _blank_as_nan(hdul[0].data, hdul[0].header) is hdul[0].data
