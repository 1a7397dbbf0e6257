"""kercr.detection.files: which CCDs of a file kercr-detect processes, and what it says when there are none.

(Writing outputs, ``--skip-existing`` and whole batches are tested through ``detect_files`` in
test_batch.py and through the command in tests/cli/test_detect.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from kercr.data.errors import FITSFormatError
from kercr.detection.files import select_extensions


def test_a_cube_alone_is_named_with_its_shape_and_how_to_go_on(tmp_path):
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 16, 16), np.float32)).writeto(cube)
    with pytest.raises(FITSFormatError, match=r"HDU 0 is a 3-D image \(3, 16, 16\): split a cube into 2-D images"):
        select_extensions(cube)


def test_a_file_of_masks_only_says_so(tmp_path):
    masks = tmp_path / "masks.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((8, 8), np.uint8), name="CRMASK")]).writeto(masks)
    with pytest.raises(FITSFormatError, match="no CCD image extension \\(only masks or no image data\\)"):
        select_extensions(masks)


def test_every_2d_image_but_masks_and_quality_planes_in_file_order(tmp_path):
    path = tmp_path / "mef.fits"
    image = np.ones((8, 8), np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, name="SCI"), fits.ImageHDU(image, name="ERR"),
                  fits.ImageHDU(np.zeros((8, 8), np.uint8), name="SCI_CRMASK")]).writeto(path)
    assert select_extensions(path) == ([(1, "SCI")], False)
    assert select_extensions(path, "err") == ([(2, "ERR")], False)


def test_a_number_that_lands_on_an_error_plane_is_refused_with_the_images_indices(tmp_path):
    """IRAF/astropy's [SCI,2] habit: '--ext SCI,2' is the name SCI and HDU 2, which is ERR,1 in HST's
    layout; it used to process ERR,1 as an image without a word."""
    path = tmp_path / "hst.fits"
    image = np.ones((8, 8), np.float32)
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(image, name=n, ver=v) for v in (1, 2)
                                        for n in ("SCI", "ERR", "DQ")]).writeto(path)
    with pytest.raises(FITSFormatError, match=r"HDU 2 is ERR.*--ext ERR.*SCI at 1, 4"):
        select_extensions(path, "SCI,2")
    assert select_extensions(path, "4") == ([(4, "SCI")], False)  # the second chip by its index
    assert select_extensions(path, "ERR") == ([(2, "ERR"), (5, "ERR")], False)  # named: taken


def test_the_ignored_pixels_of_an_output_are_what_the_readme_says(tmp_path):
    """README: ``~isfinite(image) | (image >= KCRSATL)``, to OR into a bad-pixel mask (kercr-detect
    writes no mask of them)."""
    from kercr.detection.files import detect_file
    from kercr.weights import has_default

    if not has_default():
        pytest.skip("no shipped model in this checkout")
    rng = np.random.default_rng(5)
    image = rng.normal(1000.0, 10.0, (96, 80)).astype(np.float32)
    image[40:44, 30:34] = 60000.0  # a saturated star's core
    image[10, 5:9] = np.nan
    image[70, 20:26] += 800.0  # a CR
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, fits.Header([("SATURATE", 50000.0)]), name="N4")]
                 ).writeto(tmp_path / "f.fits")
    out = detect_file(tmp_path / "f.fits", out_dir=tmp_path / "out")
    with fits.open(out) as hdul:
        data, header = hdul["N4"].data, hdul["CRMASK"].header
        ignored = ~np.isfinite(data) | (data >= header["KCRSATL"])
        assert ignored.sum() == header["KCRNIGN"] == 20 and not hdul["CRMASK"].data[ignored].any()
        assert hdul["CRMASK"].data[70, 20:26].all()
