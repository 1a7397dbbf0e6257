"""Read the LCO CR dataset released with Cosmic-CoNN, as published, for training and evaluation.

The LCO CR dataset (Xu et al. 2023, arXiv:2106.14922; Zenodo record 5034763,
doi:10.5281/zenodo.5034763) holds sequences of 3 aligned consecutive exposures from the Las
Cumbres Observatory 0.4 m, 1 m and 2 m telescopes, each with a CR mask and an ignore mask per
exposure. Everything below about the layout was read from the ``cy-xu/cosmic-conn`` repository:
``docs/source/lco_cr_dataset.rst`` (layout and ignore codes), ``cosmic_conn/cr_pipeline/utils_io.py``
(``reproject_to_same_WCS``, ``save_fits_with_CR``, ``save_as_fits``: how the files are written),
``cosmic_conn/cr_pipeline/lco_cr_reduction.py`` (how the masks are made),
``cosmic_conn/dl_framework/dataloader.py`` (``find_all_fits``, ``sample_frames_from_hdul``: how
Cosmic-CoNN reads them), ``cosmic_conn/dl_framework/cosmic_conn.py`` (``prep_data``: the median
frame) and ``cosmic_conn/dl_framework/utils_ml.py`` (``median_weighted_bce``).

Directory layout (unpacked Zenodo archive)::

    LCO_CR_dataset/
      train_set/
        0m4_2019/masked_fits/coj0m403-kb24-20190101-0147-e91_3frms_masks.fits ...
        0m4_2019/CR_reduction_log.txt
        1m0_2019_2018/masked_fits/...
        2m0_2019/masked_fits/...
      test_set/
        aligned_fits/    *_3frms_aligned.fits: frames only (HDUs 0-5), no labels; not read here
        masked_fits/     *_3frms_masks.fits: the labelled test files
        CR_reduction_log.txt

HDUs of a ``*_3frms_masks.fits`` file (n = 3 in every published file)::

    0          PRIMARY     header only: FRMTOTAL = n (number of frames), ALIGNED
    1 .. n     SCI         float32 frames, EXTVER 0 .. n-1, tile-compressed (CompImageHDU)
    n+1        VALID_MASK  uint8, 1 where all reprojected frames have data
    n+2        CAT         BinTable, SEP sources of the reference (middle) frame
    n+3 .. 2n+2    CR      uint8 CR mask of frame 0 .. n-1 (1 = CR)
    2n+3 .. 3n+2   IGNORE  uint8 coded ignore mask of frame 0 .. n-1

Cosmic-CoNN reads these by position (``hdul[1 + i]``, ``hdul[3 + n + i]``, ``hdul[3 + 2n + i]``);
:func:`read_lco_file` reads them by ``EXTNAME`` in file order, which gives the same HDUs for the
published files and a clear error for anything else. The ignore mask codes are bit flags:
0 OK, 1 boundary (the outer 100 px), 2 no data (outside the common footprint), 4 sources (SEP),
8 hot pixels (single-pixel detections). CR masks are 0 wherever the ignore code is non-zero
(``lco_cr_reduction.py``: ``cr_mask *= ignore_mask == 0``), so CRs on stars are not labelled.

Units: frames are the BANZAI-reduced pixel values as published, sky *not* subtracted. BANZAI
multiplies by the gain and sets ``GAIN = 1`` (``LCOGT/banzai``, ``banzai/gain.py``), so the values
are electrons; for 0.4 m frames the Cosmic-CoNN pipeline re-estimated the gain and wrote it to each
frame's ``GAIN`` without rescaling the pixels (``sovle_for_gain``, ``save_fits_with_CR``), so
``frame * GAIN`` is its electron scale. Frames 0 and 2 are reprojected (nearest neighbour) onto
frame 1's WCS; pixels outside the common footprint are 0 (ignore code 2); BANZAI bad pixels were
replaced by the frame median and saturated ones by 0.9 ``SATURATE`` (``fix_bad_ccd_saturated_pixels``).
All image HDUs are tile-compressed by astropy's ``CompImageHDU`` defaults, which quantize the float
frames to a small fraction (about 1/16) of their noise: lossy, but far below anything a CR changes.
Per-frame keywords in each SCI header: ``EXPTIME`` [s], ``GAIN``, ``RDNOISE`` [e-], ``SATURATE``,
``FILENAME`` (the original LCO frame), plus BANZAI's (its ``FRMTOTAL`` there is the number of frames
in the LCO request, not the 3 of the file: use the primary header's). Cosmic-CoNN reads ``EXPTIME``
from HDU 1 (``find_all_fits``, ``min_exposure``).

A directory holds the LCO layout when :func:`find_lco_files` finds ``*_3frms_masks.fits`` files
(equivalently :func:`is_lco_dataset`). :mod:`kercr.data.lco` serves the files as training frames
(:class:`kercr.data.lco.LCOFrames`) and computes Cosmic-CoNN's median weights. This module needs
numpy and astropy only.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from kercr.config import FITS_SUFFIXES
from kercr.data.errors import FITSFileNotFoundError, FITSFormatError, KercrDataError

__all__ = [
    "LCO_IGNORE_BOUNDARY", "LCO_IGNORE_NO_DATA", "LCO_IGNORE_SOURCE", "LCO_IGNORE_HOT_PIXEL", "LCO_IGNORE_ALL",
    "LAYOUT_HINT", "LCOExposureSet", "find_lco_files", "is_lco_dataset", "read_lco_file",
]

LCO_IGNORE_BOUNDARY = 1
LCO_IGNORE_NO_DATA = 2
LCO_IGNORE_SOURCE = 4
LCO_IGNORE_HOT_PIXEL = 8
LCO_IGNORE_ALL = 15

_MASKS_NAME = re.compile(r"_\d+frms_masks\.fits(\.fz|\.gz)?$", re.IGNORECASE)
_ALIGNED_NAME = re.compile(r"_\d+frms_aligned\.fits(\.fz|\.gz)?$", re.IGNORECASE)
LAYOUT_HINT = (
    "the published LCO CR dataset layout is LCO_CR_dataset/{train_set/<telescope>,test_set}/masked_fits/"
    "*_3frms_masks.fits (Zenodo record 5034763); pass the dataset root, a split or any folder below it"
)


@dataclasses.dataclass(frozen=True, eq=False)
class LCOExposureSet:
    """One ``*_3frms_masks.fits`` file: n aligned consecutive exposures with their masks.

    Attributes
    ----------
    frames : numpy.ndarray, shape (n, ny, nx), float32
        The SCI frames as published (BANZAI electrons, sky not subtracted); NaN where non-finite.
    cr_masks : numpy.ndarray, shape (n, ny, nx), bool
        CR truth per frame (``CR`` extensions).
    ignore_codes : numpy.ndarray, shape (n, ny, nx), uint8
        Coded ignore masks (``IGNORE`` extensions): bits 1 boundary, 2 no data, 4 sources, 8 hot pixels.
    ignore_masks : numpy.ndarray, shape (n, ny, nx), bool
        ``ignore_codes != 0``.
    valid_mask : numpy.ndarray, shape (ny, nx), bool, or None
        ``VALID_MASK``: common footprint of the reprojected frames.
    headers : tuple of astropy.io.fits.Header
        SCI header of each frame.
    primary_header : astropy.io.fits.Header
    gains, readnoises, exptimes, saturations : tuple of (float or None)
        Per frame ``GAIN`` (e-/pixel unit), ``RDNOISE`` [e-], ``EXPTIME`` [s], ``SATURATE``; None if absent.
    filenames : tuple of str
        ``FILENAME`` of each frame (the original LCO frame), or ``""``.
    path : pathlib.Path
    """

    frames: np.ndarray
    cr_masks: np.ndarray
    ignore_codes: np.ndarray
    ignore_masks: np.ndarray
    valid_mask: np.ndarray | None
    headers: tuple
    primary_header: fits.Header
    gains: tuple
    readnoises: tuple
    exptimes: tuple
    saturations: tuple
    filenames: tuple
    path: Path

    @property
    def n_frames(self) -> int:
        """Number of exposures (3 in the published files)."""
        return int(self.frames.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Frame shape ``(ny, nx)``."""
        return tuple(self.frames.shape[1:])


def _is_fits_name(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # macOS Finder litter, as cosmic-conn
        for f in filenames:
            if not f.startswith("."):
                yield Path(dirpath) / f


def find_lco_files(root) -> list[Path]:
    """Find the labelled files of the LCO CR dataset under ``root``.

    Parameters
    ----------
    root : str or os.PathLike
        ``LCO_CR_dataset``, a split (``train_set``, ``test_set``), any folder below them, or one file.

    Returns
    -------
    list of pathlib.Path
        Sorted paths of the ``*_<n>frms_masks.fits`` files, and of any other FITS file inside a
        ``masked_fits`` folder (where Cosmic-CoNN's ``find_all_fits`` looks). ``*_aligned.fits``
        files (unlabelled) are never returned.

    Raises
    ------
    FITSFileNotFoundError
        ``root`` does not exist.
    KercrDataError
        No labelled file under ``root``; the message names the expected layout.
    """
    root = Path(os.fspath(root)).expanduser()
    if not root.exists():
        raise FITSFileNotFoundError(f"{root}: no such file or directory; {LAYOUT_HINT}.")
    candidates = [root] if root.is_file() else list(_walk(root))
    found, aligned = [], 0
    for p in candidates:
        if _ALIGNED_NAME.search(p.name):
            aligned += 1
        elif _MASKS_NAME.search(p.name) or (p.parent.name == "masked_fits" and _is_fits_name(p.name)):
            found.append(p)
    if not found:
        extra = (f" It holds {aligned} *_3frms_aligned.fits file(s): those are the unlabelled frames "
                 "(test_set/aligned_fits); use the *_3frms_masks.fits files in masked_fits/.") if aligned else ""
        raise KercrDataError(f"{root}: no LCO CR dataset files (*_3frms_masks.fits) found; {LAYOUT_HINT}.{extra}")
    return sorted(found, key=str)


def is_lco_dataset(path) -> bool:
    """True when ``path`` is, or holds, labelled LCO CR dataset files (``*_3frms_masks.fits``)."""
    try:
        find_lco_files(path)
    except KercrDataError:
        return False
    return True


def _header_float(header, key):
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _named(hdul, name):
    return [i for i, h in enumerate(hdul)
            if isinstance(h, (fits.ImageHDU, fits.CompImageHDU)) and h.name.strip().upper() == name]


def _read_image(hdul, index, p, what):
    try:
        data = hdul[index].data
    except Exception as exc:  # astropy raises several types for corrupt tiles
        raise FITSFormatError(f"{p}[{index}] ({what}): the data cannot be read ({exc}). "
                              "The file may be truncated: download it again.") from exc
    if data is None or data.ndim != 2:
        raise FITSFormatError(f"{p}[{index}] ({what}): data has shape {None if data is None else data.shape}, "
                              "expected a 2-D image. This is not a file of the published LCO CR dataset.")
    return data


def read_lco_file(path) -> LCOExposureSet:
    """Read one ``*_3frms_masks.fits`` file of the LCO CR dataset.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    LCOExposureSet
        Frames, CR masks and ignore masks, each (n, ny, nx), in file order (n = 3 when published).

    Raises
    ------
    FITSFileNotFoundError
        The file does not exist.
    FITSFormatError
        Not a readable FITS file, or an HDU that is not a 2-D image.
    KercrDataError
        Fewer than 3 SCI frames, a frame count different from the primary ``FRMTOTAL``, missing
        or miscounted ``CR`` / ``IGNORE`` extensions, or arrays of different shapes.
    """
    p = Path(os.fspath(path)).expanduser()
    if p.is_dir():
        raise FITSFormatError(f"{p}: is a directory; pass one *_3frms_masks.fits file, or list them with "
                              "find_lco_files.")
    if not p.is_file():
        raise FITSFileNotFoundError(f"{p}: file not found; {LAYOUT_HINT}.")
    try:
        hdul = fits.open(p, memmap=False, lazy_load_hdus=False)
    except (OSError, ValueError, TypeError) as exc:
        raise FITSFormatError(f"{p}: not a readable FITS file ({exc}); it may be truncated: "
                              "download it again.") from exc
    with hdul:
        names = [f"{i}:{h.name}" for i, h in enumerate(hdul)]
        sci, cr, ign, valid = (_named(hdul, n) for n in ("SCI", "CR", "IGNORE", "VALID_MASK"))
        _check_layout(p, hdul, names, sci=sci, cr=cr, ign=ign)
        frames = [_read_image(hdul, i, p, "SCI") for i in sci]
        crs = [_read_image(hdul, i, p, "CR") for i in cr]
        igns = [_read_image(hdul, i, p, "IGNORE") for i in ign]
        vmask = _read_image(hdul, valid[0], p, "VALID_MASK") if valid else None
        _check_shapes(p, (("SCI", sci, frames), ("CR", cr, crs), ("IGNORE", ign, igns),
                          ("VALID_MASK", valid[:1], [] if vmask is None else [vmask])))
        stack = np.stack([np.asarray(f, dtype=np.float32) for f in frames])
        stack[~np.isfinite(stack)] = np.nan
        codes = np.stack([np.asarray(m) for m in igns]).astype(np.uint8)
        headers = tuple(hdul[i].header.copy() for i in sci)
        primary = hdul[0].header.copy()
    return LCOExposureSet(
        frames=stack,
        cr_masks=np.stack([np.asarray(m) > 0 for m in crs]),
        ignore_codes=codes,
        ignore_masks=codes != 0,
        valid_mask=None if vmask is None else np.asarray(vmask) > 0,
        headers=headers,
        primary_header=primary,
        gains=tuple(_header_float(h, "GAIN") for h in headers),
        readnoises=tuple(_header_float(h, "RDNOISE") for h in headers),
        exptimes=tuple(_header_float(h, "EXPTIME") for h in headers),
        saturations=tuple(_header_float(h, "SATURATE") for h in headers),
        filenames=tuple(str(h.get("FILENAME", "")) for h in headers),
        path=p,
    )


def _check_layout(p, hdul, names, *, sci, cr, ign) -> None:
    """KercrDataError unless the file holds >= 3 SCI frames (as many as ``FRMTOTAL`` says) and one
    ``CR`` and one ``IGNORE`` extension per frame (``sci``, ``cr``, ``ign``: their HDU indices)."""
    n = len(sci)
    frmtotal = hdul[0].header.get("FRMTOTAL")
    if n < 3:
        raise KercrDataError(
            f"{p}: holds {n} SCI frame(s) (HDUs {names}); an LCO CR dataset file holds 3 aligned consecutive "
            "exposures (SCI, EXTVER 0-2) so that their median rejects the CRs. Use the published "
            "*_3frms_masks.fits files.")
    if isinstance(frmtotal, int) and not isinstance(frmtotal, bool) and frmtotal != n:
        raise KercrDataError(
            f"{p}: primary FRMTOTAL={frmtotal} but the file holds {n} SCI frames; the file is incomplete "
            "or was edited. Download it again.")
    for what, idx in (("CR", cr), ("IGNORE", ign)):
        if not idx:
            hint = (" This looks like an unlabelled *_3frms_aligned.fits file (HDUs 0-5 only); use the "
                    "*_3frms_masks.fits file in masked_fits/." if what == "CR" else " Download the file again.")
            raise KercrDataError(f"{p}: no {what} mask extension (HDUs {names}); a labelled LCO CR dataset "
                                 f"file has one {what} extension per SCI frame.{hint}")
        if len(idx) != n:
            raise KercrDataError(f"{p}: {len(idx)} {what} extensions for {n} SCI frames (HDUs {names}); "
                                 "each frame needs its own. The file is incomplete: download it again.")


def _check_shapes(p, groups) -> None:
    """KercrDataError unless every array of ``groups`` (``(what, HDU indices, arrays)``) has SCI frame 0's shape."""
    shape = groups[0][2][0].shape
    for what, idx, arrays in groups:
        for i, a in zip(idx, arrays):
            if a.shape != shape:
                raise KercrDataError(
                    f"{p}: HDU {i} ({what}) has shape {a.shape} but SCI frame 0 has {shape}; all frames and "
                    "masks of a set must be aligned on one pixel grid. The file is not as published: "
                    "download it again.")
