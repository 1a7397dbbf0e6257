"""Read CCD frames from FITS files (astropy only).

Reads single-extension and multi-extension FITS (a DECam exposure holds ~60 CCD extensions named
like ``N4`` or ``S22``), tile-compressed ``.fz`` files, integer, scaled (``BZERO``/``BSCALE``) and
big-endian data. Pixels always come back as native-endian ``float32``; NaN, inf and ``BLANK``
pixels come back as NaN so callers can mask them. Files are opened memory-mapped, so reading one
CCD of a 60-CCD exposure touches only that extension on disk.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
import os
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from astropy.io import fits

from kercr.data.errors import FITSFileNotFoundError, FITSFormatError, KercrDataError

__all__ = ["CCDFrame", "header_number", "iter_ccds", "levels_in_image_units", "list_ccd_extensions", "read_ccd"]

logger = logging.getLogger(__name__)

ExtSpec = "int | str | tuple[str, int] | None"


@dataclasses.dataclass(frozen=True, eq=False)
class CCDFrame:
    """One CCD image read from a FITS file.

    Attributes
    ----------
    data : numpy.ndarray, shape (ny, nx), float32
        Pixel values in the file's units (ADU for raw and DECam CP frames), native byte order.
        Non-finite and ``BLANK`` pixels are NaN.
    header : astropy.io.fits.Header
        Header of the extension holding the data.
    primary_header : astropy.io.fits.Header
        Header of the primary HDU (for multi-extension files it holds EXPTIME, FILTER, ...).
    gain : float or None
        Gain in e-/ADU (``GAIN``, or the mean of DECam's ``GAINA``/``GAINB``), or the override.
    readnoise : float or None
        Read noise in electrons (``RDNOISE``, or the mean of ``RDNOISEA``/``RDNOISEB``).
    saturation : float or None
        Saturation level in ADU (``SATURATE``, or the lower of ``SATURATA``/``SATURATB``).
    exptime : float or None
        Exposure time in seconds (``EXPTIME`` of the extension or the primary header).
    extname : str
        ``EXTNAME`` of the extension, or ``"HDU<i>"`` when it has none.
    index : int
        Index of the HDU in the file.
    path : pathlib.Path
        The file the frame was read from.
    """

    data: np.ndarray
    header: fits.Header
    primary_header: fits.Header
    gain: float | None
    readnoise: float | None
    saturation: float | None
    exptime: float | None
    extname: str
    index: int
    path: Path

    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``(ny, nx)`` of :attr:`data`."""
        return tuple(self.data.shape)


def _check_path(path) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FITSFileNotFoundError(
            f"{p}: file not found. Check the path (relative paths are resolved from "
            f"{Path.cwd()})."
        )
    if p.is_dir():
        raise FITSFormatError(f"{p}: is a directory, not a FITS file. Pass the path of a .fits or .fits.fz file.")
    return p


#: How a gzip or bzip2 stream starts (astropy reads such files whatever their name).
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh")


def compressed_stream(p) -> str | None:
    """``"gzip"`` or ``"bzip2"`` when the file ``p`` is such a stream (told by its first bytes, not its
    name: no random access, so astropy decompresses it from its start), else None."""
    with open(p, "rb") as f:
        head = f.read(3)
    if not head.startswith(_COMPRESSED_MAGIC):
        return None
    return "gzip" if head.startswith(_COMPRESSED_MAGIC[0]) else "bzip2"


def _check_stream(p: Path) -> None:
    """A FITSFormatError when ``p`` is a gzip or bzip2 stream that ends early or is corrupt: astropy
    stops at the end of what it can decompress without a word, and the HDUs after it vanish. Each
    file is read to its end once (per size and modification time), not once per CCD read."""
    st = p.stat()
    error = _stream_error(str(p.resolve()), st.st_size, st.st_mtime_ns)
    if error:
        raise FITSFormatError(f"{p}: the compressed file is truncated or corrupt ({error}); astropy would drop "
                              "what it could not read. Download or write it again.")


@functools.lru_cache(maxsize=256)
def _stream_error(p: str, size: int, mtime_ns: int) -> str | None:
    """Why the gzip or bzip2 file ``p`` cannot be read to its end, or None (also for a file that is
    neither). ``size`` and ``mtime_ns`` are the cache key: a file rewritten since is read again."""
    import bz2
    import gzip
    import zlib

    kind = compressed_stream(p)
    if kind is None:
        return None
    opener = gzip.open if kind == "gzip" else bz2.open
    try:
        with opener(p, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as exc:
        return str(exc) or type(exc).__name__
    return None


def _open(p: Path) -> fits.HDUList:
    _check_stream(p)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Scaling is applied by kercr (see _frame_from_hdu): astropy refuses to memory-map scaled data.
            hdul = fits.open(p, memmap=True, lazy_load_hdus=False, do_not_scale_image_data=True)
    except (OSError, ValueError, TypeError) as exc:
        raise FITSFormatError(
            f"{p}: not a readable FITS file ({exc}). Pass a FITS image (.fits, .fit, .fits.fz); "
            "if it should be one, it may be truncated or corrupt: download or write it again."
        ) from exc
    truncated = [w for w in caught if "truncated" in str(w.message).lower()]
    for w in caught:  # the others go on as they came
        if w not in truncated:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if truncated:
        hdul.close()
        raise FITSFormatError(f"{p}: the file is truncated ({truncated[0].message}); astropy dropped what it could "
                              "not read. Download or write it again.")
    return hdul


def _is_image(hdu) -> bool:
    return isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and hdu.header.get("NAXIS", 0) > 0


def _ccds(hdul, p: Path) -> list[int]:
    """Indices of the 2-D image HDUs: what ``"all"`` means; other images (cubes, spectra) are logged and left out."""
    found = []
    for i, h in enumerate(hdul):
        if not _is_image(h):
            continue
        if h.header.get("NAXIS") == 2:
            found.append(i)
        else:
            logger.info("%s: leaving out HDU %d (%s), a %d-D image; kercr reads 2-D CCD images", p, i,
                        _extname(h, i), h.header.get("NAXIS"))
    return found


def _extname(hdu, index: int) -> str:
    name = hdu.name if isinstance(hdu, (fits.ImageHDU, fits.CompImageHDU)) else ""
    return name.strip() or ("PRIMARY" if index == 0 else f"HDU{index}")


def list_ccd_extensions(path) -> list[tuple[int, str]]:
    """List the HDUs of a FITS file that hold a 2-D image (cubes and 1-D images are left out, and logged).

    Parameters
    ----------
    path : str or os.PathLike
        FITS file.

    Returns
    -------
    list of (int, str)
        ``(hdu_index, extname)`` for every HDU with 2-D image data, in file order.
    """
    p = _check_path(path)
    with _open(p) as hdul:
        return [(i, _extname(hdul[i], i)) for i in _ccds(hdul, p)]


def _positive(value, what: str, source: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise KercrDataError(f"{source}: {what}={value!r} is not a positive number. Pass a positive value.")
    return v


def header_number(headers, key: str, pair: Sequence[str] = (), combine=np.mean, *,
                  source: str | None = "the image") -> float | None:
    """A positive header number: ``key``, else ``combine`` of the per-amplifier ``pair`` keys.

    kercr's one reader of ``GAIN`` (e- per ADU), ``RDNOISE`` (e-) and ``SATURATE`` (ADU) for every
    input (FITS file, HDU, CCDData's meta). ``headers``: a header (or any mapping, or None), or a
    list or tuple of them looked up in order (an extension's header, then the primary's): the first
    with a positive ``key`` or a positive ``pair`` value decides. A value that is not a positive
    finite number is left out, with a log warning naming ``source`` when it is a number (``GAIN =
    0``; ``source=None``: no warning, for a number the caller does not need); ``True`` and text
    are not numbers. With ``combine=min`` (saturation) the lowest of ``key`` and the pair:
    DECam's ``SATURATE`` is the higher amplifier's level, and pixels of the other amplifier
    saturate below it.
    """
    if not isinstance(headers, (list, tuple)):  # one header (astropy's Header is a Sequence too)
        headers = [headers]
    for header in headers:
        if header is None:
            continue
        vals = [float(header[k]) for k in pair if _positive_number(header.get(k))]
        value = header.get(key)
        if _positive_number(value):
            return float(min([value, *vals])) if combine is min else float(value)
        if vals:
            return float(combine(vals))
        if _is_number(value) and source is not None:
            logger.warning("%s: header %s=%r is not a positive number; ignoring it", source, key, value)
    return None


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _positive_number(value) -> bool:
    """A positive finite number of any kind (Python or numpy; a bool is not one)."""
    return _is_number(value) and math.isfinite(value) and value > 0


def levels_in_image_units(unit, gain, saturation, *, source: str = "the image"):
    """``(gain, saturation)`` read from a header (``GAIN``: e- per ADU, ``SATURATE``: ADU) for an
    image in ``unit`` (a BUNIT text or an astropy unit; None: ADU).

    kercr's one rule for every input (FITS file, HDU, CCDData): data in ADU (no unit, ``adu``,
    ``count``, dimensionless) take them as they are; data in electrons (``ccdproc.gain_correct``
    leaves the header alone) get ``SATURATE x GAIN`` electrons and gain 1 (a pipeline that wrote
    its levels in electrons set ``GAIN = 1``, and nothing changes); in any other unit
    (``electron / s``, ...) the header's levels do not apply: none, with a warning when there was
    a saturation level to use. ``e-``, ``ELECTRONS``, ``DN`` and ``COUNTS`` are read as electron,
    electron, ADU and count; a unit astropy cannot read is taken as ADU.
    """
    if unit is None or (isinstance(unit, str) and not unit.strip()):
        return gain, saturation
    from astropy import units as u

    if isinstance(unit, str):  # FITS files spell units many ways: ELECTRONS, e-, e-/s, DN, COUNTS/S
        text = re.sub(r"(?<![a-z])e-?(?![a-z])", "electron", unit.strip().lower())
        text = re.sub(r"\bdn\b", "adu", text.replace("electrons", "electron").replace("counts", "count"))
        try:
            unit = u.Unit(text)
        except ValueError:
            return gain, saturation
    if unit in (u.adu, u.count, u.dimensionless_unscaled):
        return gain, saturation
    if unit == u.electron and gain is not None:
        return 1.0, None if saturation is None else saturation * gain
    if saturation is not None:
        warnings.warn(f"{source} is in {unit}, but its header's SATURATE ({saturation:g}) is in ADU"
                      f"{'' if unit == u.electron else ' of the raw frame'} and no GAIN converts it: saturated "
                      "pixels are not excluded. Pass saturation= in the image's units.", UserWarning, stacklevel=3)
    return None, None


def _frame_from_hdu(hdul: fits.HDUList, index: int, p: Path, gain, readnoise, saturation) -> CCDFrame:
    hdu = hdul[index]
    name = _extname(hdu, index)
    source = f"{p}[{name}]"
    if not _is_image(hdu):
        kind = type(hdu).__name__
        images = [f"{i}:{_extname(h, i)}" for i, h in enumerate(hdul) if _is_image(h)]
        raise FITSFormatError(
            f"{source}: HDU {index} ({kind}) holds no image data. Pass ext= one of the image "
            f"extensions {images or '(none: this file holds no image)'}."
        )
    try:
        raw = hdu.data
    except Exception as exc:  # astropy raises several types for corrupt data sections
        raise FITSFormatError(f"{source}: the image data cannot be read ({exc}). The file may be truncated.") from exc
    if raw is None or raw.ndim != 2:
        shape = None if raw is None else raw.shape
        raise FITSFormatError(
            f"{source}: image data has shape {shape} (numpy order), but kercr needs a 2-D CCD image. "
            "Select a 2-D extension, or split the cube into 2-D images first."
        )
    hdr = hdu.header
    bscale, bzero = float(hdr.get("BSCALE", 1.0)), float(hdr.get("BZERO", 0.0))
    if bscale != 1.0 or bzero != 0.0:
        # float64 arithmetic: uint16 stored as int16 + 32768 and int32 data stay exact.
        data = (np.asarray(raw, dtype=np.float64) * bscale + bzero).astype(np.float32)
    else:
        data = np.asarray(raw, dtype=np.float32)  # native byte order; copies out of the memmap
    blank = hdr.get("BLANK")
    if blank is not None and np.issubdtype(raw.dtype, np.integer):
        data[np.asarray(raw) == blank] = np.nan
    data[~np.isfinite(data)] = np.nan
    headers = [hdu.header, hdul[0].header]
    header_gain = header_number(headers, "GAIN", ("GAINA", "GAINB"), source=source)
    header_saturation = header_number(headers, "SATURATE", ("SATURATA", "SATURATB"), min, source=source)
    if saturation is None or gain is None:  # the header's levels, in the image's units (BUNIT)
        unit = hdu.header.get("BUNIT", hdul[0].header.get("BUNIT"))
        header_gain, header_saturation = levels_in_image_units(
            unit if isinstance(unit, str) else None, header_gain, header_saturation if saturation is None else None,
            source=source)
    gain = _positive(gain, "gain", source) or header_gain
    readnoise = _positive(readnoise, "readnoise", source) or header_number(
        headers, "RDNOISE", ("RDNOISEA", "RDNOISEB"), source=source)
    # The lower amplifier saturation is the level above which some pixels of the CCD saturate.
    saturation = _positive(saturation, "saturation", source) or header_saturation
    exptime = next((float(h["EXPTIME"]) for h in headers if _is_number(h.get("EXPTIME"))), None)
    return CCDFrame(
        data=data,
        header=hdu.header.copy(),
        primary_header=hdul[0].header.copy(),
        gain=gain,
        readnoise=readnoise,
        saturation=saturation,
        exptime=exptime,
        extname=name,
        index=index,
        path=p,
    )


def _resolve_ext(hdul: fits.HDUList, ext, p: Path) -> int:
    if ext is None:
        for i, h in enumerate(hdul):
            if _is_image(h):
                return i
        raise FITSFormatError(f"{p}: no HDU holds image data. Pass a FITS image file, not a table-only file.")
    names = [f"{i}:{_extname(h, i)}" for i, h in enumerate(hdul)]
    try:
        index = hdul.index_of(ext)
    except (KeyError, IndexError) as exc:
        raise FITSFormatError(f"{p}: extension {ext!r} not found. Available HDUs: {names}.") from exc
    if not 0 <= index < len(hdul):  # astropy passes an integer through unchecked (-1, 5 of 3, ...)
        raise FITSFormatError(f"{p}: extension {ext!r} not found: the file has HDUs 0 to {len(hdul) - 1}: {names}.")
    return index


def read_ccd(path, ext=None, *, gain=None, readnoise=None, saturation=None) -> CCDFrame:
    """Read one CCD image from a FITS file.

    Parameters
    ----------
    path : str or os.PathLike
        FITS file (``.fits``, ``.fits.gz``, tile-compressed ``.fits.fz``).
    ext : int, str, tuple (str, int) or None
        HDU index, ``EXTNAME`` (e.g. ``"N4"``) or ``(EXTNAME, EXTVER)``. ``None`` takes the first
        HDU with image data (the primary for simple files, the first CCD of a DECam exposure).
    gain : float, optional
        Gain in e-/ADU; overrides the header (``GAIN`` or mean of ``GAINA``/``GAINB``).
    readnoise : float, optional
        Read noise in electrons; overrides the header (``RDNOISE`` or mean of ``RDNOISEA/B``).
    saturation : float, optional
        Saturation in ADU; overrides the header (``SATURATE`` or min of ``SATURATA/B``).

    Returns
    -------
    CCDFrame
        ``data`` is a new native-endian float32 array of shape (ny, nx); NaN marks bad pixels.

    Raises
    ------
    FITSFileNotFoundError
        The file does not exist.
    FITSFormatError
        Not FITS, unknown extension, no image data, or data that is not 2-D.
    KercrDataError
        An override is not a positive number.
    """
    p = _check_path(path)
    with _open(p) as hdul:
        index = _resolve_ext(hdul, ext, p)
        return _frame_from_hdu(hdul, index, p, gain, readnoise, saturation)


def iter_ccds(path, ext="all", *, gain=None, readnoise=None, saturation=None) -> Iterator[CCDFrame]:
    """Iterate over the CCD images of a (multi-extension) FITS file.

    Parameters
    ----------
    path : str or os.PathLike
        FITS file.
    ext : "all", int, str or sequence of (int or str)
        ``"all"`` yields every HDU with 2-D image data (an empty primary HDU is skipped); one
        index or ``EXTNAME``, or a sequence of them, selects HDUs in the given order.
    gain, readnoise, saturation : float, optional
        Overrides, as in :func:`read_ccd`.

    Yields
    ------
    CCDFrame
        One frame per image extension; only that extension's pixels are read.
    """
    p = _check_path(path)
    with _open(p) as hdul:
        if isinstance(ext, str) and ext == "all":
            indices = _ccds(hdul, p)
            if not indices:
                raise FITSFormatError(f"{p}: no HDU holds 2-D image data. Pass a FITS image file.")
        else:
            one = isinstance(ext, (str, int, np.integer, tuple))  # a name, an index, or astropy's (name, ver)
            if not one and (not isinstance(ext, (list, np.ndarray)) or len(ext) == 0):
                raise FITSFormatError(f"{p}: ext={ext!r}; pass 'all', an index, an EXTNAME or a non-empty list "
                                      "of them.")
            indices = [_resolve_ext(hdul, e, p) for e in ([ext] if one else ext)]
        for i in indices:
            yield _frame_from_hdu(hdul, i, p, gain, readnoise, saturation)
