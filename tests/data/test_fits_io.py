"""FITS I/O of the data core: synthetic files under tmp_path and the real DECam CP cutouts."""

import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from kercr.data import errors
from kercr.data.fits_io import iter_ccds, list_ccd_extensions, new_fits_file, read_ccd, wcs_header, write_fits_with_mask
from kercr.data.fits_read import header_number

REPO = Path(__file__).resolve().parents[2]
SHARED_CANDIDATES = [REPO.parent / "shared" / "data", REPO / "shared" / "data"]
SHARED = next((p for p in SHARED_CANDIDATES if p.is_dir()), None)


def _decam(pattern):
    if SHARED is None or not (SHARED / "decam_cp").is_dir():
        pytest.skip("../shared/data/decam_cp is absent")
    files = sorted((SHARED / "decam_cp").rglob(pattern))
    if not files:
        pytest.skip(f"no {pattern} in shared data")
    return files


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return (1000 + 10 * rng.standard_normal((40, 30))).astype(np.float32)


def _mef(path, image, names=("N4", "S22", "N10")):
    hdus = [fits.PrimaryHDU(header=fits.Header([("EXPTIME", 90.0), ("GAINA", 4.0), ("GAINB", 4.2)]))]
    for k, name in enumerate(names):
        h = fits.Header([("RDNOISEA", 6.0), ("RDNOISEB", 7.0), ("SATURATA", 40000.0), ("SATURATB", 38000.0)])
        hdus.append(fits.ImageHDU(image + k, header=h, name=name))
    fits.HDUList(hdus).writeto(path)


def test_saturation_is_the_lower_amplifier_level_even_beside_saturate(tmp_path, image):
    path = tmp_path / "cp.fits"  # as in DECam Community Pipeline headers
    header = fits.Header([("SATURATE", 37064.4), ("SATURATA", 37064.4), ("SATURATB", 33258.8)])
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, header=header, name="N26")]).writeto(path)
    assert read_ccd(path, "N26").saturation == pytest.approx(33258.8)


def test_multi_extension_by_name_and_iteration(tmp_path, image):
    path = tmp_path / "mef.fits"
    _mef(path, image)
    assert list_ccd_extensions(path) == [(1, "N4"), (2, "S22"), (3, "N10")]
    frame = read_ccd(path, "S22")
    np.testing.assert_array_equal(frame.data, image + 1)
    assert frame.data.dtype == np.float32 and frame.data.dtype.isnative
    assert frame.extname == "S22" and frame.index == 2
    # Per-amplifier values: gain and read noise averaged (primary header inherited), saturation the lower.
    assert frame.gain == pytest.approx(4.1)
    assert frame.readnoise == pytest.approx(6.5)
    assert frame.saturation == pytest.approx(38000.0)
    assert frame.exptime == 90.0
    frames = list(iter_ccds(path))
    assert [f.extname for f in frames] == ["N4", "S22", "N10"]
    assert [float(f.data[0, 0] - image[0, 0]) for f in frames] == [0.0, 1.0, 2.0]
    assert [f.extname for f in iter_ccds(path, ext=["N10", 1])] == ["N10", "N4"]
    assert [f.extname for f in iter_ccds(path, ext="S22")] == ["S22"]  # one name, not its letters
    assert [f.extname for f in iter_ccds(path, ext=3)] == ["N10"]
    assert read_ccd(path).extname == "N4"  # first image HDU by default
    for bad in (4, -1):  # astropy passes integers through unchecked
        with pytest.raises(errors.FITSFormatError, match=r"not found: the file has HDUs 0 to 3"):
            read_ccd(path, bad)


def test_truncated_file_says_so(tmp_path, image):
    path = tmp_path / "mef.fits"
    _mef(path, image)
    raw = path.read_bytes()
    for keep in (2880 * 2 + 100, len(raw) - 2000):  # cut inside a header, and inside the last CCD's pixels
        cut = tmp_path / f"cut{keep}.fits"
        cut.write_bytes(raw[:keep])
        with pytest.raises(errors.FITSFormatError, match="the file is truncated"):
            read_ccd(cut)
    assert path.read_bytes() == raw


def test_overrides_beat_header(tmp_path, image):
    path = tmp_path / "mef.fits"
    _mef(path, image)
    f = read_ccd(path, "N4", gain=2.5, readnoise=3.0, saturation=60000)
    assert (f.gain, f.readnoise, f.saturation) == (2.5, 3.0, 60000.0)
    with pytest.raises(errors.KercrDataError, match="gain=-1"):
        read_ccd(path, "N4", gain=-1)


def test_tile_compressed_fz(tmp_path, image):
    path = tmp_path / "c.fits.fz"
    comp = fits.CompImageHDU(image, name="N4", compression_type="RICE_1", quantize_level=-0.01)
    fits.HDUList([fits.PrimaryHDU(), comp]).writeto(path)
    frame = read_ccd(path, "N4")
    assert frame.data.shape == image.shape and frame.data.dtype == np.float32
    np.testing.assert_allclose(frame.data, image, atol=0.011)  # lossy quantization to 0.01 ADU


def test_scaled_int16_with_blank(tmp_path):
    raw = np.array([[0, 100, -32768], [5, 6, 7]], dtype=np.int16)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BZERO"] = 32768.0
    hdu.header["BSCALE"] = 2.0
    hdu.header["BLANK"] = -32768
    path = tmp_path / "scaled.fits"
    hdu.writeto(path)
    f = read_ccd(path)
    expected = raw.astype(np.float64) * 2.0 + 32768.0
    np.testing.assert_array_equal(f.data[~np.isnan(f.data)], expected[raw != -32768].astype(np.float32))
    assert np.isnan(f.data[0, 2]) and np.isnan(f.data).sum() == 1


def test_unsigned_int_and_big_endian_float(tmp_path, image):
    u = (np.arange(12, dtype=np.uint16) + 60000).reshape(3, 4)
    fits.PrimaryHDU(u).writeto(tmp_path / "u16.fits")
    np.testing.assert_array_equal(read_ccd(tmp_path / "u16.fits").data, u.astype(np.float32))
    be = image.astype(">f8")
    fits.PrimaryHDU(be).writeto(tmp_path / "be.fits")
    f = read_ccd(tmp_path / "be.fits")
    assert f.data.dtype == np.dtype("float32") and f.data.dtype.isnative
    np.testing.assert_array_equal(f.data, image)


def test_compressed_unsigned_int(tmp_path):
    u = (np.arange(200, dtype=np.uint16) * 300).reshape(10, 20)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(u, name="S22")]).writeto(tmp_path / "u.fits.fz")
    np.testing.assert_array_equal(read_ccd(tmp_path / "u.fits.fz", "S22").data, u.astype(np.float32))


def test_nan_and_inf_become_nan(tmp_path, image):
    img = image.copy()
    img[3, 4], img[5, 6], img[7, 8] = np.nan, np.inf, -np.inf
    fits.PrimaryHDU(img).writeto(tmp_path / "nan.fits")
    f = read_ccd(tmp_path / "nan.fits")
    assert np.isnan(f.data).sum() == 3 and np.isnan(f.data[5, 6])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="file not found") as info:
        read_ccd(tmp_path / "nope.fits")
    assert "nope.fits" in str(info.value) and isinstance(info.value, errors.FITSFileNotFoundError)


def test_not_fits(tmp_path):
    path = tmp_path / "notes.fits"
    path.write_text("this is not a FITS file\n" * 10)
    with pytest.raises(errors.FITSFormatError, match="not a readable FITS file") as info:
        read_ccd(path)
    assert "notes.fits" in str(info.value) and isinstance(info.value, ValueError)


def test_extension_without_image(tmp_path, image):
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.arange(3.0))], name="TAB")
    path = tmp_path / "tab.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="SCI"), table]).writeto(path)
    with pytest.raises(errors.FITSFormatError, match="holds no image data") as info:
        read_ccd(path, "TAB")
    assert "1:SCI" in str(info.value)  # the fix: which extensions do hold images
    with pytest.raises(errors.FITSFormatError, match="holds no image data"):
        read_ccd(path, 0)  # empty primary
    with pytest.raises(errors.FITSFormatError, match="not found"):
        read_ccd(path, "N99")
    only_table = tmp_path / "only_table.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(only_table)
    with pytest.raises(errors.FITSFormatError, match="no HDU holds image data"):
        read_ccd(only_table)


def test_not_2d(tmp_path):
    fits.PrimaryHDU(np.zeros((2, 5, 5), dtype=np.float32)).writeto(tmp_path / "cube.fits")
    with pytest.raises(errors.FITSFormatError, match=r"shape \(2, 5, 5\).*2-D"):
        read_ccd(tmp_path / "cube.fits")


def test_write_with_mask_roundtrip_and_no_overwrite(tmp_path, image):
    src = tmp_path / "src.fits"
    _mef(src, image)
    frame = read_ccd(src, "S22")
    mask = np.zeros(image.shape, dtype=bool)
    mask[10:12, 3] = True
    out = write_fits_with_mask(tmp_path / "out.fits", frame, mask, provenance={"KCRMODEL": "unet_small"})
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "S22", "CRMASK"]
        assert hdul[0].header["KCRMODEL"] == "unet_small" and "KCRVER" in hdul[0].header
        assert hdul[0].header["EXPTIME"] == 90.0 and hdul[0].header["GAINA"] == 4.0  # the input's primary cards
        assert "src.fits[S22]" in hdul[0].header["KCRSRC"]
        np.testing.assert_array_equal(hdul["S22"].data, image + 1)
        assert hdul["S22"].header["RDNOISEA"] == 6.0
        assert hdul["CRMASK"].data.dtype == np.uint8 and hdul["CRMASK"].data.sum() == 2
        assert hdul["CRMASK"].header["KCRSRCEX"] == "S22"  # kercr-detect's keywords: the mask names its image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fits", "src.fits"]  # no temporary file left
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="never overwrites"):
        write_fits_with_mask(out, image, mask)
    assert out.read_bytes() == before
    with pytest.raises(errors.KercrDataError, match="mask has shape"):
        write_fits_with_mask(tmp_path / "x.fits", image, mask[:5])


def test_write_with_mask_keeps_a_ccddatas_header_unit_and_wcs(tmp_path, image):
    """CCDData in, the same on disk: before, it went through np.asarray and lost everything but its pixels."""
    from astropy.nddata import CCDData
    from astropy.wcs import WCS

    wcs = WCS(fits.Header([("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN"), ("CRVAL1", 10.0), ("CRVAL2", -20.0),
                           ("CRPIX1", 15.0), ("CRPIX2", 20.0), ("CD1_1", -7.3e-5), ("CD2_2", 7.3e-5)]))
    ccd = CCDData(image, unit="electron", wcs=wcs, meta={"GAIN": 1.0, "EXPTIME": 30.0, "OBJECT": "M31"})
    mask = np.zeros(image.shape, dtype=bool)
    mask[3, 4] = True
    out = write_fits_with_mask(tmp_path / "out.fits", ccd, mask)
    with fits.open(out) as hdul:
        sci, crmask = hdul["SCI"].header, hdul["CRMASK"].header
        assert (sci["BUNIT"], sci["EXPTIME"], sci["OBJECT"]) == ("electron", 30.0, "M31")
        assert sci["CTYPE1"] == "RA---TAN" and crmask["CRVAL2"] == -20.0  # the mask maps to the sky like the image
        np.testing.assert_array_equal(hdul["SCI"].data, image)
        assert hdul["CRMASK"].data.sum() == 1
    assert ccd.meta == {"GAIN": 1.0, "EXPTIME": 30.0, "OBJECT": "M31"}  # the input is unchanged


def test_new_fits_file_copies_the_input_and_appends(tmp_path, image):
    src = tmp_path / "src.fits"
    _mef(src, image)
    src_bytes = src.read_bytes()
    with new_fits_file(tmp_path / "out" / "copy.fits", copy_of=src) as f:
        assert f.extnames == {"PRIMARY", "N4", "S22", "N10"}
        assert not f.path.exists()  # written under a temporary name until the block ends
        f.update_primary({"KCRMODEL": ("m", "model"), "KCRLONGKEY": 3})
        f.append(np.ones(image.shape, np.uint8), name="N4_CRMASK", header=fits.Header([("CRVAL1", 5.0)]))
        with pytest.raises(ValueError, match="(?i)N4_CRMASK .*there already"):
            f.append(np.ones(image.shape, np.uint8), name="n4_crmask")
        f.append(np.ones(image.shape, np.uint8), name="N4_CRMASK", header=fits.Header([("EXTVER", 2)]))
    assert src.read_bytes() == src_bytes  # the input is never modified
    out = tmp_path / "out" / "copy.fits"
    # The input's extensions byte for byte (both primary headers fill one 2880-byte block here).
    assert out.read_bytes()[2880: len(src_bytes)] == src_bytes[2880:]
    with fits.open(out) as hdul:
        assert [(h.name, h.ver) for h in hdul][3:] == [("N10", 1), ("N4_CRMASK", 1), ("N4_CRMASK", 2)]
        assert hdul[0].header["KCRMODEL"] == "m" and hdul[0].header["KCRLONGKEY"] == 3
        assert hdul["N4_CRMASK", 1].header["CRVAL1"] == 5.0 and hdul["N4_CRMASK", 1].data.dtype == np.uint8
        np.testing.assert_array_equal(hdul["S22"].data, image + 1)
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.fits"]


def test_a_primary_header_that_grows_keeps_the_input_bytes_after_it(tmp_path, image):
    src = tmp_path / "src.fits"
    _mef(src, image)
    src_bytes = src.read_bytes()
    cards = {f"KCRX{i:04d}": (i, "a card to make the header grow past its block") for i in range(60)}
    with new_fits_file(tmp_path / "out" / "grown.fits", copy_of=src) as f:
        f.update_primary(cards)
        f.update_primary({"KCRX0000": -1})  # fits its blocks now: written in place
        f.append(np.ones(image.shape, np.uint8), name="N4_CRMASK")
    out = (tmp_path / "out" / "grown.fits").read_bytes()
    with fits.open(tmp_path / "out" / "grown.fits") as hdul:
        grown = hdul.fileinfo(0)["datLoc"]
        assert grown > 2880 and hdul[0].header["KCRX0000"] == -1 and hdul[0].header["KCRX0059"] == 59
        np.testing.assert_array_equal(hdul["S22"].data, image + 1)
    assert out[grown: grown + len(src_bytes) - 2880] == src_bytes[2880:]  # the input's extensions byte for byte
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grown.fits"]


@pytest.mark.parametrize("cards", [1, 60])  # written in place, and grown
def test_an_archives_checksum_is_of_the_new_primary_header(tmp_path, image, cards):
    src = tmp_path / "src.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="N4")]).writeto(src, checksum=True)
    with new_fits_file(tmp_path / "out.fits", copy_of=src) as f:
        f.update_primary({f"KCRX{i:04d}": i for i in range(cards)})
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fits.open(tmp_path / "out.fits", checksum=True) as hdul:
            assert hdul[0].header["KCRX0000"] == 0
    assert not [str(w.message) for w in caught if "hecksum" in str(w.message)]


def test_an_interrupt_while_the_primary_header_grows_leaves_nothing(tmp_path, image, monkeypatch):
    """SIGTERM becomes KeyboardInterrupt in kercr-detect; one that lands while a grown header is
    written must not leave a file beside the outputs (astropy's update mode leaves a tmpXXXX)."""
    src = tmp_path / "in" / "src.fits"
    src.parent.mkdir()
    _mef(src, image)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with new_fits_file(out / "grown.fits", copy_of=src) as f:
            monkeypatch.setattr(os, "replace", interrupted)
            monkeypatch.setattr(os, "rename", interrupted)
            f.update_primary({f"KCRX{i:04d}": i for i in range(60)})
    monkeypatch.undo()
    assert list(out.iterdir()) == []


def test_new_fits_file_leaves_nothing_on_failure_and_never_overwrites(tmp_path, image):
    out = tmp_path / "out.fits"
    with pytest.raises(RuntimeError, match="stop"):
        with new_fits_file(out) as f:
            f.append(image, name="SCI")
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    # A file that appears while the block runs (another process) is not replaced either.
    with pytest.raises(FileExistsError, match="never overwrites"):
        with new_fits_file(out) as f:
            f.append(image, name="SCI")
            out.write_bytes(b"theirs")
    assert out.read_bytes() == b"theirs" and list(tmp_path.iterdir()) == [out]


def test_new_fits_file_copies_gzip_as_plain_fits(tmp_path, image):
    src = tmp_path / "src.fits.gz"
    _mef(src, image, names=("N4",))
    with new_fits_file(tmp_path / "out.fits", copy_of=src) as f:
        f.append(np.zeros(image.shape, np.uint8), name="N4_CRMASK")
    with fits.open(tmp_path / "out.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "N4", "N4_CRMASK"]
        np.testing.assert_array_equal(hdul["N4"].data, image)
    with pytest.raises(errors.FITSFileNotFoundError):
        with new_fits_file(tmp_path / "x.fits", copy_of=tmp_path / "missing.fits"):
            pass
    assert not (tmp_path / "x.fits").exists()


def test_wcs_header_keeps_the_wcs_and_sections_only():
    h = fits.Header([("CTYPE1", "RA---TAN"), ("CRVAL1", 10.0), ("CD1_1", 1e-4), ("PV1_10", 0.1), ("DATASEC", "[1:9,1:9]"),
                     ("GAIN", 4.0), ("OBJECT", "x")])
    assert list(wcs_header(h)) == ["CTYPE1", "CRVAL1", "CD1_1", "PV1_10", "DATASEC"]
    assert len(wcs_header(None)) == 0


def test_wcs_header_keeps_sip_distortion_so_the_mask_maps_to_the_sky_like_the_image():
    """A ``-SIP`` CTYPE without its A_/B_ coefficients is a silent error: astropy maps the mask's
    pixels without the distortion (2 arcsec off at this frame's corner)."""
    from astropy.wcs import WCS

    h = fits.Header([("NAXIS", 2), ("NAXIS1", 2048), ("NAXIS2", 4096),
                     ("CTYPE1", "RA---TAN-SIP"), ("CTYPE2", "DEC--TAN-SIP"), ("CRPIX1", 1024.0), ("CRPIX2", 2048.0),
                     ("CRVAL1", 10.0), ("CRVAL2", -20.0), ("CD1_1", -7.3e-5), ("CD1_2", 0.0), ("CD2_1", 0.0),
                     ("CD2_2", 7.3e-5), ("A_ORDER", 2), ("A_2_0", 2e-6), ("B_ORDER", 2), ("B_0_2", 2e-6),
                     ("LONPOLE", 180.0), ("GAIN", 4.0)])
    kept = wcs_header(h)
    assert {"A_ORDER", "A_2_0", "B_ORDER", "B_0_2", "LONPOLE"} <= set(kept) and "GAIN" not in kept
    corner = [[1.0, 1.0]]
    np.testing.assert_allclose(WCS(kept).all_pix2world(corner, 1), WCS(h).all_pix2world(corner, 1), rtol=0, atol=1e-10)


def test_real_decam_cutouts_header_values():
    files = _decam("*_ooi_*.fits")
    for path in files:
        f = read_ccd(path)
        assert f.data.ndim == 2 and f.data.dtype == np.float32
        assert 3.0 < f.gain < 5.0, path  # DECam: about 4 e-/ADU
        assert 4.0 < f.readnoise < 15.0, path  # a few DECam amplifiers reach 11-12 e-
        assert 20000 < f.saturation < 70000, path
        assert f.extname[0] in "NS" and f.exptime > 0


def test_real_decam_cr_cutout_reads_cr_pixels():
    files = _decam("c4d_170316_062107_ooi_z_ls9.N2.fits")
    img = read_ccd(files[0])
    dq = read_ccd(str(files[0]).replace("_ooi_", "_ood_"))
    cr = dq.data == 5
    assert cr.sum() == 177
    sky = np.nanmedian(img.data)
    sigma = 1.4826 * np.nanmedian(np.abs(img.data - sky))
    assert np.nanmax(img.data[cr]) > sky + 10 * sigma
    assert np.sort(img.data[cr])[-10] > sky + 5 * sigma  # a real track, not one hot pixel


def test_all_means_the_2d_images_and_cubes_are_left_out_with_a_log_line(tmp_path, caplog):
    import logging

    path = tmp_path / "mixed.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((8, 9), np.float32), name="SCI"),
                  fits.ImageHDU(np.ones((2, 8, 9), np.float32), name="CUBE"),
                  fits.ImageHDU(np.ones(5, np.float32), name="SPEC")]).writeto(path)
    with caplog.at_level(logging.INFO, logger="kercr"):
        assert list_ccd_extensions(path) == [(1, "SCI")]
        assert [f.extname for f in iter_ccds(path)] == ["SCI"]
    assert "leaving out HDU 2 (CUBE), a 3-D image" in caplog.text and "HDU 3 (SPEC), a 1-D image" in caplog.text
    with pytest.raises(errors.FITSFormatError, match="needs a 2-D CCD image"):  # named, it is read and refused
        list(iter_ccds(path, ext="CUBE"))


def test_write_fits_with_mask_takes_masks_not_probabilities_and_writes_plain_fits_names_only(tmp_path):
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(errors.KercrDataError, match="mask has dtype float64; pass a boolean mask"):
        write_fits_with_mask(tmp_path / "p.fits", image, np.full(image.shape, 0.7))
    with pytest.raises(errors.KercrDataError, match="integer array with values outside 0 and 1"):
        write_fits_with_mask(tmp_path / "p.fits", image, np.full(image.shape, 256))
    with pytest.raises(errors.KercrDataError, match="pass a real-valued image"):
        write_fits_with_mask(tmp_path / "p.fits", image + 1j, np.zeros(image.shape, bool))
    assert not list(tmp_path.iterdir())
    with pytest.raises(errors.KercrDataError, match="kercr writes plain FITS.*name the output .fits"):
        write_fits_with_mask(tmp_path / "o.fits.gz", image, np.eye(3, 4, dtype=int))  # it would not be gzip
    out = write_fits_with_mask(tmp_path / "o.fits", image, np.eye(3, 4, dtype=int))
    with fits.open(out) as hdul:
        assert hdul["CRMASK"].data.sum() == 3
    with pytest.raises(errors.FITSFormatError, match="non-empty list"):
        list(iter_ccds(out, ext=[]))


@pytest.mark.parametrize("compress", ["gzip", "bz2"])
def test_a_truncated_compressed_file_says_so_rather_than_losing_its_last_ccds(tmp_path, image, compress):
    """astropy stops without a word where a gzip or bzip2 stream ends early, and the CCDs after it
    vanish (kercr-detect then wrote an output with one CCD of three, and a ``CRMASK`` named as for a
    single-image file)."""
    import bz2
    import gzip

    plain = tmp_path / "mef.fits"
    _mef(plain, image)
    packed = (gzip if compress == "gzip" else bz2).compress(plain.read_bytes())
    whole = tmp_path / f"whole.fits.{compress}"
    whole.write_bytes(packed)
    assert [n for _, n in list_ccd_extensions(whole)] == ["N4", "S22", "N10"]
    cut = tmp_path / f"cut.fits.{compress}"
    cut.write_bytes(packed[: len(packed) - 40])
    for read in (read_ccd, list_ccd_extensions):
        with pytest.raises(errors.FITSFormatError, match=r"cut.fits.* truncated or corrupt.*Download or write it again"):
            read(cut)
    assert cut.read_bytes() == packed[: len(packed) - 40]


def test_new_fits_file_fixes_a_card_that_breaks_the_standard_and_says_which(tmp_path, image, caplog):
    """Some cameras write unquoted strings or malformed numbers; astropy reads them, but refused to
    write them, so such a file failed after its detection."""
    src = tmp_path / "cam.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="N4")]).writeto(src)
    raw = bytearray(src.read_bytes())
    for bad, after in ((b"DATE-OBS= 2017-03-16T06:21:07 / unquoted", 0), (b"CRVAL1  = 1.2345E", 2880)):
        end = raw.find(b"END" + b" " * 77, after)
        raw[end:end + 160] = bad.ljust(80) + b"END".ljust(80)
    src.write_bytes(bytes(raw))
    header = read_ccd(src).header
    with new_fits_file(tmp_path / "out.fits", copy_of=src) as f:
        f.update_primary({"KCRSRC": "cam.fits"})
        f.append(np.zeros((40, 30), np.uint8), name="N4_CRMASK", header=wcs_header(header))
    with fits.open(tmp_path / "out.fits") as hdul:
        assert hdul[0].header["DATE-OBS"] == "2017-03-16T06:21:07" and hdul[0].header["KCRSRC"] == "cam.fits"
        assert "CRVAL1" in hdul["N4_CRMASK"].header  # as astropy fixes it (here: the string '1.2345E')
    said = " ".join(r.getMessage() for r in caplog.records if "broke the FITS standard" in r.getMessage())
    assert said.count("DATE-OBS") == 1 and said.count("CRVAL1") == 1  # each card named once
    assert src.read_bytes() == bytes(raw)


@pytest.mark.parametrize(("bunit", "expected"), [
    ("ADU", (2.0, 60000.0)), ("DN", (2.0, 60000.0)), ("COUNTS", (2.0, 60000.0)), ("", (2.0, 60000.0)),
    ("electron", (1.0, 120000.0)), ("ELECTRONS", (1.0, 120000.0)), ("e-", (1.0, 120000.0)), ("nonsense unit", (2.0, 60000.0)),
])
def test_the_header_levels_follow_the_image_unit_however_spelled(bunit, expected):
    from kercr.data.fits_read import levels_in_image_units

    assert levels_in_image_units(bunit, 2.0, 60000.0) == expected


@pytest.mark.parametrize("bunit", ["electron / s", "e-/s", "ELECTRONS/S", "COUNTS/S"])
def test_a_rate_unit_takes_no_header_level_and_says_so(bunit):
    from kercr.data.fits_read import levels_in_image_units

    with pytest.warns(UserWarning, match="header's SATURATE \\(60000\\) is in ADU"):
        assert levels_in_image_units(bunit, 2.0, 60000.0) == (None, None)


def test_write_with_mask_leaves_out_only_a_primary_card_astropy_cannot_read(tmp_path, image, caplog):
    """An unquoted string (OBSERVER= John Smith) made write_fits_with_mask raise astropy's VerifyError."""
    src = tmp_path / "cam.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.Header([("EXPTIME", 30.0)])), fits.ImageHDU(image, name="N4")]).writeto(src)
    raw = bytearray(src.read_bytes())
    end = raw.find(b"END" + b" " * 77)
    raw[end:end + 160] = b"OBSERVER= John Smith".ljust(80) + b"END".ljust(80)
    src.write_bytes(bytes(raw))
    out = write_fits_with_mask(tmp_path / "out.fits", read_ccd(src, "N4"), np.zeros(image.shape, bool))
    with fits.open(out) as hdul:
        assert hdul[0].header["EXPTIME"] == 30.0


def test_header_number_takes_the_key_else_combines_the_amplifiers():
    pair = ("GAINA", "GAINB")
    assert header_number(fits.Header({"GAIN": 3.5, "GAINA": 4.0}), "GAIN", pair) == 3.5
    assert header_number(fits.Header({"GAIN": 0.0, "GAINA": 4.0, "GAINB": 4.2}), "GAIN", pair) == pytest.approx(4.1)
    assert header_number(fits.Header({"SATURATA": 60000.0, "SATURATB": 65000.0}), "SATURATE",
                         ("SATURATA", "SATURATB"), min) == 60000.0
    # DECam CP headers: SATURATE is the higher amplifier's level; the lower one saturates first.
    assert header_number(fits.Header({"SATURATE": 37064.4, "SATURATA": 37064.4, "SATURATB": 33258.8}), "SATURATE",
                         ("SATURATA", "SATURATB"), min) == 33258.8
    # Not a positive finite number: not a value (a dict header, as a CCDData's meta may be).
    assert header_number({"GAIN": math.nan, "GAINA": -1.0, "GAINB": 2.0}, "GAIN", pair) == 2.0
    assert header_number({"GAIN": True, "GAINA": "4"}, "GAIN", pair) is None
    assert header_number(fits.Header(), "GAIN", pair) is None and header_number(None, "GAIN", pair) is None


def test_header_number_looks_in_each_header_in_turn_and_names_a_value_it_leaves_out(caplog):
    pair = ("RDNOISEA", "RDNOISEB")
    extension, primary = fits.Header({"RDNOISE": 0.0}), fits.Header({"RDNOISEA": 6.0, "RDNOISEB": 7.0})
    with caplog.at_level(logging.WARNING, logger="kercr"):
        assert header_number([extension, primary], "RDNOISE", pair, source="f.fits[S4]") == 6.5
    assert "f.fits[S4]: header RDNOISE=0.0 is not a positive number" in caplog.text
    assert header_number([fits.Header({"GAIN": 2.0}), fits.Header({"GAIN": 4.0})], "GAIN") == 2.0
    assert header_number((None, {"GAIN": np.float32(3.0)}), "GAIN") == 3.0  # numpy numbers from a CCDData's meta


def test_read_ccd_and_detect_read_the_same_header_levels(tmp_path):
    """One parser: a file read by read_ccd, and the same HDU given to kercr.detect, take the same levels."""
    from kercr.detection.inputs import header_levels

    header = fits.Header({"GAIN": 0.0, "GAINA": 4.0, "GAINB": 4.4, "RDNOISEA": 6.0, "SATURATE": 40000.0,
                          "SATURATB": 38000.0})
    fits.HDUList([fits.PrimaryHDU(np.ones((8, 8), np.float32), header=header)]).writeto(tmp_path / "f.fits")
    frame = read_ccd(tmp_path / "f.fits")
    assert (frame.gain, frame.readnoise, frame.saturation) == header_levels(header) == pytest.approx((4.2, 6.0, 38000.0))


def test_a_frame_read_from_a_primary_hdu_is_saved_as_sci(tmp_path):
    """A single-image file keeps its image in the primary HDU; saving that CCDFrame with its mask used to
    fail on a second extension named PRIMARY."""
    src = tmp_path / "raw.fits"
    fits.PrimaryHDU(np.arange(12.0, dtype=np.float32).reshape(3, 4), header=fits.Header({"GAIN": 2.0})).writeto(src)
    frame = read_ccd(src)
    assert frame.extname == "PRIMARY"
    out = write_fits_with_mask(tmp_path / "saved.fits", frame, np.eye(3, 4, dtype=bool))
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "CRMASK"]
        assert np.array_equal(hdul["SCI"].data, frame.data) and hdul["CRMASK"].data.sum() == 3
        assert hdul[0].header["KCRSRC"].endswith("raw.fits[PRIMARY]")
