"""Write NEW FITS files, never overwriting one (astropy only).

:func:`new_fits_file` is the one FITS writer. It writes a NEW file (optionally starting from a
copy of an input file's HDUs) under a temporary name, appends extensions one at a time and renames
the file into place at the end; an existing file is never overwritten and a failure leaves nothing
behind. ``kercr-detect`` (:func:`kercr.detection.files.detect_file`) and
:func:`write_fits_with_mask` (an image and its mask) write through it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import secrets
import shutil
import socket
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData

from kercr._version import __version__
from kercr.data.errors import KercrDataError
from kercr.data.masks import as_bool_mask
from kercr.data.fits_read import CCDFrame, _check_path, _open, compressed_stream

__all__ = ["FITSWriter", "image_header", "new_fits_file", "utc_now", "wcs_header", "write_fits_with_mask"]

logger = logging.getLogger(__name__)


_STRUCTURAL = {"SIMPLE", "EXTEND", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
               "BZERO", "BSCALE", "BLANK", "EXTNAME", "CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX", "ZCMPTYPE"}
#: The WCS (with SIP, TPV and IRAF TNX/ZPX distortion: ``A_2_0``, ``PV1_7``, ``WAT1_001``) and the
#: detector sections: what a mask written beside an image needs to map to the sky like it.
_WCS_KEYS = re.compile(r"^(WCSAXES|WCSNAME|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CD\d_\d|PC\d_\d|PV\d_\d+|"
                       r"CROTA\d|LONPOLE|LATPOLE|RADESYS|RADECSYS|EQUINOX|EPOCH|MJDREF|DATEREF|"
                       r"(A|B|AP|BP)_(\d+_\d+|ORDER|DMAX)|WAT\d_\d+|LTV\d|LTM\d_\d|DATASEC|DETSEC|CCDSEC)$")


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


def image_header(header) -> fits.Header:
    """The cards of an image's ``header`` that describe its data (units, gain, exposure, WCS, ...)
    without the structural ones (``BITPIX``, ``NAXISn``, ``BZERO``, ``EXTNAME``, checksums) or
    commentary: the header of a new image made from it (a cleaned image)."""
    out = fits.Header()
    for card in (header or fits.Header()).cards:
        if card.keyword not in _STRUCTURAL and card.keyword not in ("", "COMMENT", "HISTORY"):
            out.append(card, end=True)
    return out


def ascii_card(text) -> str:
    """``text`` as a FITS header value can hold it (printable ASCII): other characters as ``\\xNN`` or
    ``\\uNNNN`` escapes, control characters as ``?``. For file and model names (``KCRSRC``, ``KCRMODEL``)."""
    text = str(text).encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def utc_now() -> str:
    """The UTC time as a FITS date string (``KCRDATE``), to the second."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


#: How a written header is verified: a card that breaks the FITS standard (an unquoted string, a
#: malformed number, as some cameras write) is fixed as astropy can (and said, :func:`_fixing_cards`)
#: rather than failing the file after its detection; one astropy cannot fix is a warning.
_VERIFY = "fix+warn"
#: The lines around astropy's verification messages ("HDU 0:", "Card 6:", ...), not messages.
_VERIFY_FRAME = re.compile(r"^(Verification reported (errors|warnings)|HDU \d+|Card \d+|Note: astropy)")


@contextlib.contextmanager
def _fixing_cards(path, told: set):
    """Turn astropy's warnings about the header cards it fixed while writing ``path`` into one log
    line naming those not in ``told`` (which it adds them to); other warnings go on as they came."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    fixed = []
    for w in caught:
        if issubclass(w.category, fits.verify.VerifyWarning):
            text = str(w.message).strip()
            if "Fixed" in text:
                fixed += [k for k in re.findall(r"Card '([^']*)'", text)[:1] if k not in fixed and k not in told]
            elif not _VERIFY_FRAME.match(text):  # a problem astropy could not fix
                logger.warning("%s: %s", path, text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    told.update(fixed)
    if fixed:
        logger.warning("%s: header card%s %s broke the FITS standard; written as astropy fixed %s (the input "
                       "is unchanged)", path, "s" if len(fixed) > 1 else "", ", ".join(fixed),
                       "them" if len(fixed) > 1 else "it")


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
        self._fixed: set[str] = set()  # header cards astropy fixed, already logged

    def update_primary(self, cards) -> None:
        """Set ``{keyword: value or (value, comment)}`` cards in the primary header (keywords over 8
        characters become ``HIERARCH`` cards).

        A header that still fits its 2880-byte blocks is written in place. One that grows is written
        with the rest of the file's bytes into a second hidden file beside the first, which then
        replaces it; an interruption removes that file, so nothing is left behind (astropy's update
        mode would rewrite the file through a ``tmpXXXX`` file of its own).
        """
        with _fixing_cards(self.path, self._fixed), fits.open(self._tmp) as hdul:
            where = hdul.fileinfo(0)
            header = hdul[0].header
            for key, value in cards.items():
                header[key if len(key) <= 8 else f"HIERARCH {key}"] = value
            hdul[0].verify(_VERIFY)
            if "CHECKSUM" in header:  # an archive's checksum of the input's header: of this header now
                hdul[0].add_checksum()
            block = header.tostring().encode("ascii")  # padded to whole 2880-byte blocks, END included
        if len(block) == where["datLoc"] - where["hdrLoc"]:
            with open(self._tmp, "r+b") as f:
                f.seek(where["hdrLoc"])
                f.write(block)
            return
        grown = self._tmp.with_name(self._tmp.name + "-header")
        try:
            with open(self._tmp, "rb") as src, open(grown, "xb") as dst:
                dst.write(block)
                src.seek(where["datLoc"])
                shutil.copyfileobj(src, dst, 16 << 20)
            os.replace(grown, self._tmp)
        except BaseException:
            grown.unlink(missing_ok=True)
            raise

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
        hdu = fits.ImageHDU(np.asarray(data), header=header)
        with _fixing_cards(self.path, self._fixed):
            hdu.verify(_VERIFY)  # this HDU's cards only: the copied input's are kept as they are, byte for byte
        hdul = fits.open(self._tmp, mode="append")
        try:
            hdul.append(hdu)
        finally:
            hdul.close(output_verify="ignore")
        self._keys.add(key)
        self.extnames.add(key[0])




def partial_tag(pid: int | None = None) -> str:
    """``<pid>.<host>`` in the names of kercr's partial outputs: which process on which machine writes
    one (output folders are often shared between machines, whose process ids can coincide)."""
    host = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0])[:24] or "host"
    return f"{os.getpid() if pid is None else pid}.{host}"


def _copy_fits(src: Path, tmp: Path) -> None:
    """A copy of ``src`` at ``tmp``: byte for byte, or as plain FITS for a gzip or bzip2 file (told by
    its first bytes, not its name; astropy cannot append to them)."""
    if compressed_stream(src):
        with _open(src) as hdul:
            hdul.writeto(tmp, output_verify="silentfix")
    else:
        shutil.copyfile(src, tmp)


def _publish(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out`` without ever replacing an ``out`` that exists, even one made meanwhile.

    The data reach the disk first (``fsync``), so after a machine crash a published name never
    holds a truncated file that ``--skip-existing`` would take for done."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
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
    if out.name.lower().endswith((".gz", ".bz2", ".zip", ".fz")):
        raise KercrDataError(f"{out}: kercr writes plain FITS, extension by extension; name the output .fits "
                             "(and compress it afterwards: fpack, or gzip).")
    if out.exists():
        raise FileExistsError(f"{out}: already exists; kercr never overwrites files. Choose a new output path.")
    src = None if copy_of is None else _check_path(copy_of)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{partial_tag()}-{secrets.token_hex(4)}")  # hidden and unique
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


def _readable_cards(header, out) -> dict:
    """``{keyword: (value, comment)}`` of ``header``, each card fixed as astropy can (an unquoted string);
    one it cannot read is left out, with a warning naming it."""
    cards, dropped = {}, []
    for card in header.cards:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fits.verify.VerifyWarning)
                card.verify("silentfix")
                cards[card.keyword] = (card.value, card.comment)
        except (fits.verify.VerifyError, ValueError):
            dropped.append(card.keyword)
    if dropped:
        logger.warning("%s: left out the input's primary header card(s) %s, which astropy cannot read", out,
                       ", ".join(dropped))
    return cards


def write_fits_with_mask(path, image, mask, *, header=None, extname=None, mask_extname="CRMASK",
                         provenance=None) -> Path:
    """Write an image and its mask to a NEW FITS file; never overwrite.

    The layout and keywords are kercr-detect's: a primary HDU with the provenance (``KCRVER``,
    ``KCRDATE``, ``KCRSRC`` and ``provenance``; from a :class:`CCDFrame`, after its file's primary
    header cards), the image, then the mask whose header names its
    image (``KCRSRCEX``) and carries the image's WCS cards. Written by :func:`new_fits_file`.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; must not exist.
    image : numpy.ndarray, shape (ny, nx), CCDFrame or astropy.nddata.CCDData
        Image (any real dtype, written as float32, same units as given). A :class:`CCDFrame`
        also supplies the header, extension name and source file for provenance; a ``CCDData``
        its ``meta`` as the header, its unit (``BUNIT``) and its WCS (its own ``mask`` and
        ``uncertainty`` are not written: ``mask`` is the one mask written).
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
    source, inherited = None, {}
    if isinstance(image, CCDFrame):
        header = image.header if header is None else header
        # An image read from a primary HDU is saved as an extension: "SCI" (PRIMARY is the empty HDU before it).
        extname = extname or (image.extname if str(image.extname).upper() != "PRIMARY" else None)
        source = f"{image.path}[{image.extname}]"
        # The input's primary header (EXPTIME, FILTER, DATE-OBS, ...), which its image may INHERIT.
        inherited = _readable_cards(image_header(image.primary_header), out)
        image = image.data
    elif isinstance(image, CCDData):
        # astropy's own CCDData -> FITS header: meta, BUNIT and the WCS cards.
        ccd_header = image.to_hdu(hdu_mask=None, hdu_uncertainty=None, hdu_flags=None)[0].header
        header = ccd_header if header is None else header
        image = image.data
    image = np.asarray(image)
    if image.ndim != 2:
        raise KercrDataError(f"{out}: image has shape {image.shape}; pass a 2-D (ny, nx) image.")
    if np.iscomplexobj(image) or not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise KercrDataError(f"{out}: image has dtype {image.dtype}; pass a real-valued image.")
    mask = as_bool_mask(mask, image.shape, f"{out}: mask")
    primary = {"KCRVER": (__version__, "kercr version"), "KCRDATE": (utc_now(), "UTC")}
    if source:
        primary["KCRSRC"] = ascii_card(source)[-68:]  # no comment: long paths fill the card
    img_header = image_header(header)
    extname = extname or "SCI"
    mask_header = wcs_header(img_header)
    mask_header["KCRSRCEX"] = (extname, "image extension this mask belongs to")
    mask_header["BUNIT"] = ("", "1 = flagged, 0 = not")
    with new_fits_file(out) as f:
        f.update_primary({**inherited, **primary, **(provenance or {})})
        f.append(np.asarray(image, dtype=np.float32), name=extname, header=img_header)
        f.append(mask.astype(np.uint8), name=mask_extname, header=mask_header)
    logger.info("wrote %s (%s + %s)", out, extname, mask_extname)
    return out
