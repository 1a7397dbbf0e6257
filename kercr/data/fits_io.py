"""FITS input/output for CCD frames (astropy only).

Reads single-extension and multi-extension FITS (a DECam exposure holds ~60 CCD extensions named
like ``N4`` or ``S22``), tile-compressed ``.fz`` files, integer, scaled (``BZERO``/``BSCALE``) and
big-endian data. Pixels always come back as native-endian ``float32``; NaN, inf and ``BLANK``
pixels come back as NaN so callers can mask them. Files are opened memory-mapped, so reading one
CCD of a 60-CCD exposure touches only that extension on disk.

Writing: :func:`new_fits_file` is the one FITS writer. It writes a NEW file (optionally starting
from a copy of an input file's HDUs) under a temporary name, appends extensions one at a time and
renames the file into place at the end; an existing file is never overwritten and a failure leaves
nothing behind. ``kercr-detect`` (:func:`kercr.detection.files.detect_file`) and
:func:`write_fits_with_mask` (an image and its mask) write through it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from astropy.io import fits

from kercr.data.errors import FITSFileNotFoundError, FITSFormatError, KercrDataError

__all__ = ["CCDFrame", "FITSWriter", "read_ccd", "iter_ccds", "list_ccd_extensions", "new_fits_file", "wcs_header",
           "write_fits_with_mask"]

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


def _open(p: Path) -> fits.HDUList:
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


def _extname(hdu, index: int) -> str:
    name = hdu.name if isinstance(hdu, (fits.ImageHDU, fits.CompImageHDU)) else ""
    return name.strip() or ("PRIMARY" if index == 0 else f"HDU{index}")


def list_ccd_extensions(path) -> list[tuple[int, str]]:
    """List the HDUs of a FITS file that hold image data.

    Parameters
    ----------
    path : str or os.PathLike
        FITS file.

    Returns
    -------
    list of (int, str)
        ``(hdu_index, extname)`` for every HDU with image data, in file order.
    """
    p = _check_path(path)
    with _open(p) as hdul:
        return [(i, _extname(h, i)) for i, h in enumerate(hdul) if _is_image(h)]


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


def _header_value(headers: Sequence[fits.Header], key: str, pair: tuple[str, str], combine) -> float | None:
    """Look up ``key``, else combine the per-amplifier pair, in the headers in order."""
    for h in headers:
        if key in h and isinstance(h[key], (int, float)) and not isinstance(h[key], bool):
            return float(h[key])
        vals = [float(h[k]) for k in pair if isinstance(h.get(k), (int, float)) and not isinstance(h.get(k), bool)]
        if vals:
            return float(combine(vals))
    return None


def _from_header(headers, key, pair, combine, what: str, source: str) -> float | None:
    value = _header_value(headers, key, pair, combine)
    if value is not None and not (math.isfinite(value) and value > 0):
        logger.warning("%s: header %s=%r is not positive; ignoring it", source, what, value)
        return None
    return value


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
    gain = _positive(gain, "gain", source) or _from_header(headers, "GAIN", ("GAINA", "GAINB"), np.mean, "GAIN", source)
    readnoise = _positive(readnoise, "readnoise", source) or _from_header(
        headers, "RDNOISE", ("RDNOISEA", "RDNOISEB"), np.mean, "RDNOISE", source
    )
    # The lower amplifier saturation is the level above which some pixels of the CCD saturate.
    saturation = _positive(saturation, "saturation", source) or _from_header(
        headers, "SATURATE", ("SATURATA", "SATURATB"), min, "SATURATE", source
    )
    exptime = _header_value(headers, "EXPTIME", (), min)
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
            indices = [i for i, h in enumerate(hdul) if _is_image(h)]
            if not indices:
                raise FITSFormatError(f"{p}: no HDU holds image data. Pass a FITS image file.")
        else:
            one = isinstance(ext, (str, int, np.integer, tuple))  # a name, an index, or astropy's (name, ver)
            indices = [_resolve_ext(hdul, e, p) for e in ([ext] if one else ext)]
        for i in indices:
            yield _frame_from_hdu(hdul, i, p, gain, readnoise, saturation)


_STRUCTURAL = {"SIMPLE", "EXTEND", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
               "BZERO", "BSCALE", "BLANK", "EXTNAME", "CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX", "ZCMPTYPE"}
_WCS_KEYS = re.compile(r"^(WCSAXES|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CD\d_\d|PC\d_\d|PV\d_\d+|CROTA\d|"
                       r"RADESYS|EQUINOX|LTV\d|LTM\d_\d|DATASEC|DETSEC|CCDSEC)$")


def wcs_header(header) -> fits.Header:
    """The WCS and detector-section cards of ``header`` (``CTYPEi``, ``CRVALi``, ``CDi_j``, ``DATASEC``, ...).

    A mask or cleaned image written beside an image carries them, so it overlays the image in
    any FITS viewer and maps to the sky like it.
    """
    out = fits.Header()
    for card in (header or fits.Header()).cards:
        if _WCS_KEYS.match(card.keyword):
            out.append(card)
    return out


def utc_now() -> str:
    """The UTC time as a FITS date string (``KCRDATE``), to the second."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


class FITSWriter:
    """A new FITS file being written by :func:`new_fits_file` (under a temporary name until it ends).

    Attributes
    ----------
    path : pathlib.Path
        The file that appears when the ``with`` block ends without an error.
    extnames : set of str
        ``EXTNAME`` of every HDU written so far (upper case), those of the copied input included.
    """

    def __init__(self, tmp: Path, path: Path):
        self._tmp = tmp
        self.path = path
        with fits.open(tmp) as hdul:
            self._keys = {(h.name.upper(), h.ver) for h in hdul}
        self.extnames = {name for name, _ in self._keys}

    def update_primary(self, cards) -> None:
        """Set ``{keyword: value or (value, comment)}`` cards in the primary header (keywords over 8
        characters become ``HIERARCH`` cards)."""
        with fits.open(self._tmp, mode="update") as hdul:
            for key, value in cards.items():
                hdul[0].header[key if len(key) <= 8 else f"HIERARCH {key}"] = value

    def append(self, data, *, name: str, header=None) -> None:
        """Append an image extension ``name`` holding ``data`` (written in its dtype) and ``header``.

        Raises :class:`ValueError` when the file already holds an extension of that ``EXTNAME``
        and ``EXTVER`` (the header's, default 1: HST's ``SCI,1`` and ``SCI,2`` are two).
        """
        header = fits.Header() if header is None else header.copy()
        key = (name.upper(), int(header.get("EXTVER", 1)))
        if key in self._keys:
            raise ValueError(f"{self.path}: an extension {name} (EXTVER {key[1]}) is there already; every "
                             "extension needs its own EXTNAME or EXTVER. Pass another name.")
        header["EXTNAME"] = name
        fits.append(self._tmp, np.asarray(data), header=header)
        self._keys.add(key)
        self.extnames.add(key[0])


def _copy_fits(src: Path, tmp: Path) -> None:
    """A copy of ``src`` at ``tmp``: byte for byte, or as plain FITS for gzip (astropy cannot append to it)."""
    if src.name.lower().endswith(".gz"):
        with _open(src) as hdul:
            hdul.writeto(tmp, output_verify="silentfix")
    else:
        shutil.copyfile(src, tmp)


def _publish(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out`` without ever replacing an ``out`` that exists, even one made meanwhile."""
    try:
        os.link(tmp, out)  # fails if out exists: atomic, so no race with another writer
    except FileExistsError:
        raise FileExistsError(f"{out}: already exists; kercr never overwrites files. Choose a new output path.") from None
    except OSError:  # no hard links on this file system (some network and FAT file systems)
        if out.exists():
            raise FileExistsError(f"{out}: already exists; kercr never overwrites files. Choose a new output "
                                  "path.") from None
        os.replace(tmp, out)
    else:
        tmp.unlink()


@contextlib.contextmanager
def new_fits_file(path, *, copy_of=None) -> Iterator[FITSWriter]:
    """Write a NEW FITS file: the one way kercr writes FITS (kercr-detect, :func:`write_fits_with_mask`).

    The file is written under a hidden temporary name beside ``path`` and renamed to ``path`` when
    the ``with`` block ends; an error inside the block removes it, so ``path`` holds either the
    whole file or nothing. An existing ``path`` is never overwritten, even one that appears while
    the block runs.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; must not exist. Its directory is created if needed.
    copy_of : str or os.PathLike, optional
        Start from a copy of this FITS file (every HDU, in order, so HDU indices and the input's
        bytes are kept; a gzipped input is copied as plain FITS). Default: an empty primary HDU.

    Yields
    ------
    FITSWriter
        ``update_primary(cards)`` and ``append(data, name=..., header=...)``; extensions are
        written one at a time, so a file of many large extensions never sits in memory whole.

    Raises
    ------
    FileExistsError
        ``path`` exists.
    """
    out = Path(os.fspath(path)).expanduser()
    if out.exists():
        raise FileExistsError(f"{out}: already exists; kercr never overwrites files. Choose a new output path.")
    src = None if copy_of is None else _check_path(copy_of)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        if src is None:
            fits.PrimaryHDU().writeto(tmp)
        else:
            _copy_fits(src, tmp)
        yield FITSWriter(tmp, out)
        _publish(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_fits_with_mask(path, image, mask, *, header=None, extname=None, mask_extname="CRMASK",
                         provenance=None) -> Path:
    """Write an image and its mask to a NEW FITS file; never overwrite.

    The layout and keywords are kercr-detect's: a primary HDU with the provenance (``KCRVER``,
    ``KCRDATE``, ``KCRSRC`` and ``provenance``), the image, then the mask whose header names its
    image (``KCRSRCEX``) and carries the image's WCS cards. Written by :func:`new_fits_file`.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; must not exist.
    image : numpy.ndarray, shape (ny, nx), or CCDFrame
        Image (any real dtype, written as float32, same units as given). A :class:`CCDFrame`
        also supplies the header, extension name and source file for provenance.
    mask : numpy.ndarray, shape (ny, nx)
        Mask (bool or integer; written as uint8, 1 = flagged).
    header : astropy.io.fits.Header, optional
        Header to copy into the image extension (structural keywords are dropped).
    extname : str, optional
        ``EXTNAME`` of the image extension (default: the frame's, else ``"SCI"``).
    mask_extname : str
        ``EXTNAME`` of the mask extension.
    provenance : dict, optional
        Extra ``{keyword: value}`` cards for the primary header (e.g. model name, threshold).

    Returns
    -------
    pathlib.Path
        The written file: primary HDU (provenance), image HDU, uint8 mask HDU.
    """
    out = Path(os.fspath(path)).expanduser()
    source = None
    if isinstance(image, CCDFrame):
        header = image.header if header is None else header
        extname = extname or image.extname
        source = f"{image.path}[{image.extname}]"
        image = image.data
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2:
        raise KercrDataError(f"{out}: image has shape {image.shape}; pass a 2-D (ny, nx) image.")
    if mask.shape != image.shape:
        raise KercrDataError(f"{out}: mask shape {mask.shape} differs from image shape {image.shape}; pass the mask of this image.")
    from kercr._version import __version__

    primary = {"KCRVER": (__version__, "kercr version"), "KCRDATE": (utc_now(), "UTC")}
    if source:
        primary["KCRSRC"] = str(source)[-68:]  # no comment: long paths fill the card
    img_header = fits.Header()
    if header is not None:
        for card in header.cards:
            if card.keyword not in _STRUCTURAL and card.keyword not in ("", "COMMENT", "HISTORY"):
                img_header.append(card, end=True)
    extname = extname or "SCI"
    mask_header = wcs_header(img_header)
    mask_header["KCRSRCEX"] = (extname, "image extension this mask belongs to")
    mask_header["BUNIT"] = ("", "1 = flagged, 0 = not")
    with new_fits_file(out) as f:
        f.update_primary({**primary, **(provenance or {})})
        f.append(np.asarray(image, dtype=np.float32), name=extname, header=img_header)
        f.append(mask.astype(np.uint8), name=mask_extname, header=mask_header)
    logger.info("wrote %s (%s + %s)", out, extname, mask_extname)
    return out
