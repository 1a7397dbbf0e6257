"""What :func:`kercr.detect` accepts as an image, and the header numbers it reads."""

from __future__ import annotations

import os
import warnings

import numpy as np
from astropy.io import fits
from astropy.nddata import NDData

from kercr.data.errors import KercrDataError
from kercr.data.fits_io import CCDFrame
from kercr.data.fits_read import header_number, levels_in_image_units

__all__ = ["header_levels", "unpack"]


def header_levels(header, unit=None, *, saturation_given: bool = False, gain_given: bool = False,
                  readnoise_given: bool = False, source: str = "the image"):
    """``(gain, readnoise, saturation)`` of ``header`` in the units of the image it came with:
    ``unit`` (a CCDData's), else the header's ``BUNIT``; the rule is
    :func:`kercr.data.fits_read.levels_in_image_units` (SATURATE in ADU, converted with GAIN for data
    in electrons). ``saturation_given``: the caller has its own level, so the header's is not
    needed (and not warned about); ``gain_given``, ``readnoise_given``: the caller has its own, so
    a bad header value is not warned about (the header's gain still converts its SATURATE).
    ``source`` names the image in warnings."""
    gain = header_number(header, "GAIN", ("GAINA", "GAINB"), source=None if gain_given else source)
    readnoise = header_number(header, "RDNOISE", ("RDNOISEA", "RDNOISEB"), source=None if readnoise_given else source)
    saturation = (None if saturation_given
                  else header_number(header, "SATURATE", ("SATURATA", "SATURATB"), min, source=source))
    if unit is None and header is not None and isinstance(header.get("BUNIT"), str):
        unit = header["BUNIT"]
    gain, saturation = levels_in_image_units(unit, gain, saturation, source=source)
    return gain, readnoise, saturation


def _meta_header(meta) -> fits.Header:
    """A CCDData's ``meta`` as a FITS header: the entries FITS can hold (GAIN, SATURATE, ...); a plain
    dict's others (lists, objects) are left out, as astropy leaves them out of a written file."""
    if isinstance(meta, fits.Header):
        return meta
    header = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long keys become HIERARCH cards
        for key, value in meta.items():
            try:
                header[str(key)] = value
            except (ValueError, TypeError, KeyError):
                continue
    return header


def _blank_as_nan(data, header):
    """``data``, or a float32 copy with NaN where integer ``data`` holds the header's ``BLANK`` (no
    value: a gap, a dead amplifier), as ``read_ccd`` reads them. astropy hands such pixels over as
    ``BLANK x BSCALE + BZERO`` (0 for uint16 stored with ``BZERO = 32768``; the raw value in an HDU
    made in memory), numbers that must not be taken for pixel values."""
    dtype = np.asarray(data).dtype
    if header is None or "BLANK" not in header or not np.issubdtype(dtype, np.integer):
        return data
    try:
        blank, bscale, bzero = int(header["BLANK"]), float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0))
    except (TypeError, ValueError):
        return data
    stored = {8: np.uint8, 16: np.int16, 32: np.int32, 64: np.int64}.get(header.get("BITPIX"))
    # The stored integers themselves (no scaling, or astropy told not to scale): BLANK as it is; else
    # astropy's scaled view (uint16 for BZERO = 32768): BLANK scaled as the data were.
    raw = stored is not None and (dtype.kind, dtype.itemsize) == (np.dtype(stored).kind, np.dtype(stored).itemsize)
    value = blank if (bscale, bzero) == (1.0, 0.0) or raw else blank * bscale + bzero
    hit = np.asarray(data) == value
    if not hit.any():
        return data
    out = np.asarray(data, dtype=np.float32).copy()
    out[hit] = np.nan
    return out


def unpack(image):
    """(data, header, extra ignore mask or None, description, CCDFrame or None) of a supported input."""
    if isinstance(image, CCDFrame):
        return image.data, image.header, None, f"{image.path}[{image.extname}]", image
    if isinstance(image, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        if image.data is None:
            raise KercrDataError(f"HDU {image.name!r} holds no image data; pass an image extension.")
        return _blank_as_nan(image.data, image.header), image.header, None, f"HDU {image.name}", None
    if isinstance(image, NDData):  # CCDData, NDDataArray, ...: the mask (True = bad) is ignored pixels
        header = _meta_header(image.meta) if image.meta else None
        mask = None if image.mask is None else np.asarray(image.mask, dtype=bool)
        return _blank_as_nan(image.data, header), header, mask, type(image).__name__, None
    if isinstance(image, (str, os.PathLike)):
        raise KercrDataError(f"kercr.detect got the file name {str(image)!r}, not an image: read it first, e.g. "
                             f"kercr.detect(kercr.data.read_ccd({str(image)!r})) for its first image (ext=NAME "
                             "for another), or "
                             "run kercr-detect on the file (every CCD extension).")
    if isinstance(image, fits.HDUList):
        raise KercrDataError("kercr.detect got a whole FITS file (HDUList): pass one image extension, e.g. "
                             "hdul[1] or hdul['N4'] (kercr-detect does every CCD extension).")
    if isinstance(image, np.ma.MaskedArray):  # its masked pixels are ignored, as a CCDData's mask is
        mask = np.ma.getmaskarray(image)
        return image.data, None, (mask if mask.any() else None), "masked array", None
    if not isinstance(image, np.ndarray) and np.asarray(image).dtype == object:
        raise KercrDataError(f"kercr.detect got a {type(image).__module__}.{type(image).__name__}, not an image: pass "
                             "a 2-D numpy array, an astropy CCDData (or other NDData), an image HDU "
                             "(hdul[1]), a numpy masked array or a kercr.data.read_ccd frame.")
    return image, None, None, "image", None
