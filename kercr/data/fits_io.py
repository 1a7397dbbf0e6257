"""FITS input/output for CCD frames (astropy only).

Reading (:mod:`kercr.data.fits_read`) handles single-extension and multi-extension FITS (a DECam
exposure holds ~60 CCD extensions named like ``N4`` or ``S22``), tile-compressed ``.fz`` files,
integer, scaled (``BZERO``/``BSCALE``) and big-endian data. Pixels always come back as
native-endian ``float32``; NaN, inf and ``BLANK`` pixels come back as NaN so callers can mask them.
Files are opened memory-mapped, so reading one CCD of a 60-CCD exposure touches only that
extension on disk.

Writing (:mod:`kercr.data.fits_write`): :func:`new_fits_file` is the one FITS writer. It writes a
NEW file (optionally starting from a copy of an input file's HDUs) under a temporary name, appends
extensions one at a time and renames the file into place at the end; an existing file is never
overwritten and a failure leaves nothing behind. ``kercr-detect``
(:func:`kercr.detection.files.detect_file`) and :func:`write_fits_with_mask` (an image and its
mask) write through it.

Every name of both is importable from here.
"""

from kercr.data.fits_read import CCDFrame, ExtSpec, iter_ccds, list_ccd_extensions, read_ccd
from kercr.data.fits_write import (FITSWriter, ascii_card, image_header, new_fits_file, utc_now, wcs_header,
                                   write_fits_with_mask)

__all__ = ["CCDFrame", "FITSWriter", "read_ccd", "iter_ccds", "list_ccd_extensions", "new_fits_file", "wcs_header",
           "write_fits_with_mask", "ExtSpec", "utc_now", "ascii_card", "image_header"]
