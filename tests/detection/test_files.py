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
