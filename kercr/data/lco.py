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

Median weighting: Cosmic-CoNN subtracts each frame's median, takes the per-pixel median of the
sky-subtracted frames (``prep_data``), then clips it to [1, 5] robust sigma, smooths it with a
5 x 5 Gaussian (sigma 2), scales it to a peak of 1 and floors it at ``alpha``
(``median_weighted_bce``); :func:`kercr.data.pixel_weights.median_weight_map` implements the same recipe.
For training Cosmic-CoNN ignores the ignore mask except that it zeroes the 100 px boundary; for
evaluation it zeroes prediction and truth on every pixel with a non-zero ignore code
(``LCO_evaluate_and_save_masks``). kercr gives weight 0 to the pixels whose code has any of
``ignore_bits`` set: all of them by default (the evaluation protocol, and no unlabelled CRs on
stars in the loss); ``ignore_bits=LCO_IGNORE_BOUNDARY | LCO_IGNORE_NO_DATA`` trains as Cosmic-CoNN
did, with sources in the loss where the median weights emphasize them.

Using it
--------
Download and unpack the Zenodo archive, then point kercr at the split (or any sub-folder)::

    kercr-train --data /path/LCO_CR_dataset/train_set --loss median_bce
    kercr-train --data /path/LCO_CR_dataset/train_set/0m4_2019 ...   # one telescope class

or in Python::

    from kercr.data.lco import LCOFrames, find_lco_files, read_lco_file
    source = LCOFrames("/path/LCO_CR_dataset/train_set", seed=0, median_weights=True)
    ids = source.exposure_ids()          # one id (file name) per set: its 3 frames never split
    image, mask, weight = source.frame(source.frames_of(ids[0])[1])

A directory holds the LCO layout when :func:`find_lco_files` finds ``*_3frms_masks.fits`` files
(equivalently :func:`is_lco_dataset`). ``LCOFrames`` is a frame source of :mod:`kercr.data.frames`; this module needs numpy and astropy
only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from kercr.data.errors import FITSFileNotFoundError, FITSFormatError, KercrDataError
from kercr.data.frames import _CachedFrames
from kercr.data.pixel_weights import median_weight_map

__all__ = [
    "LCO_IGNORE_BOUNDARY", "LCO_IGNORE_NO_DATA", "LCO_IGNORE_SOURCE", "LCO_IGNORE_HOT_PIXEL", "LCO_IGNORE_ALL",
    "LCOExposureSet", "find_lco_files", "is_lco_dataset", "read_lco_file", "lco_median_frame",
    "lco_median_weights", "LCOFrames",
]

logger = logging.getLogger(__name__)

LCO_IGNORE_BOUNDARY = 1
LCO_IGNORE_NO_DATA = 2
LCO_IGNORE_SOURCE = 4
LCO_IGNORE_HOT_PIXEL = 8
LCO_IGNORE_ALL = 15

_MASKS_NAME = re.compile(r"_\d+frms_masks\.fits(\.fz|\.gz)?$", re.IGNORECASE)
_ALIGNED_NAME = re.compile(r"_\d+frms_aligned\.fits(\.fz|\.gz)?$", re.IGNORECASE)
_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fz", ".fits.gz")
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
    return name.lower().endswith(_FITS_SUFFIXES)


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
        frames = [_read_image(hdul, i, p, "SCI") for i in sci]
        crs = [_read_image(hdul, i, p, "CR") for i in cr]
        igns = [_read_image(hdul, i, p, "IGNORE") for i in ign]
        vmask = _read_image(hdul, valid[0], p, "VALID_MASK") if valid else None
        shape = frames[0].shape
        for what, idx, arrays in (("SCI", sci, frames), ("CR", cr, crs), ("IGNORE", ign, igns),
                                  ("VALID_MASK", valid[:1], [] if vmask is None else [vmask])):
            for i, a in zip(idx, arrays):
                if a.shape != shape:
                    raise KercrDataError(
                        f"{p}: HDU {i} ({what}) has shape {a.shape} but SCI frame 0 has {shape}; all frames and "
                        "masks of a set must be aligned on one pixel grid. The file is not as published: "
                        "download it again.")
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


def _check_bits(ignore_bits) -> int:
    bits = int(ignore_bits)
    if not 0 <= bits <= LCO_IGNORE_ALL:
        raise KercrDataError(f"ignore_bits={ignore_bits} must combine the LCO_IGNORE_* bits (an int in 0-15).")
    return bits


def _ignored(exposure_set: LCOExposureSet, ignore_bits: int) -> np.ndarray:
    return (exposure_set.ignore_codes & np.uint8(_check_bits(ignore_bits))) != 0


def lco_median_frame(exposure_set: LCOExposureSet) -> np.ndarray:
    """Per-pixel median of the sky-subtracted frames, as Cosmic-CoNN computes it (``prep_data``).

    Each frame's sky is its median over pixels with data (ignore codes 1 and 2 excluded).

    Returns
    -------
    numpy.ndarray, shape (ny, nx), float32
        Median frame in the frames' units, sky ~ 0; CRs of single frames are rejected.
    """
    frames = exposure_set.frames
    edge = _ignored(exposure_set, LCO_IGNORE_BOUNDARY | LCO_IGNORE_NO_DATA)
    skies = []
    for k in range(frames.shape[0]):
        good = frames[k][~edge[k] & np.isfinite(frames[k])]
        skies.append(np.median(good) if good.size else 0.0)
    return np.nanmedian(frames - np.asarray(skies, np.float32)[:, None, None], axis=0).astype(np.float32)


def lco_median_weights(exposure_set: LCOExposureSet, *, alpha=0.1, ignore_bits=LCO_IGNORE_ALL, clip=(1.0, 5.0),
                       smooth_sigma=2.0) -> np.ndarray:
    """Cosmic-CoNN median weights of each frame of an exposure set, 0 on ignored pixels.

    :func:`kercr.data.pixel_weights.median_weight_map` of the set's median frame
    (:func:`lco_median_frame`, the median of the sky-subtracted frames), with frame ``k``'s ignored
    and non-finite pixels left out of the sky/noise statistics and set to 0. Frame ``k`` of the
    result equals the weight that :class:`LCOFrames` (``median_weights=True``) gives that frame
    before the loader's ``alpha`` floor (for ``alpha=0``).

    Parameters
    ----------
    exposure_set : LCOExposureSet
    alpha : float
        Weight of plain sky, in ``[0, 1]``.
    ignore_bits : int
        Ignore codes that get weight 0 (default: all of boundary, no data, sources, hot pixels).
    clip, smooth_sigma
        As in :func:`kercr.data.pixel_weights.median_weight_map`.

    Returns
    -------
    numpy.ndarray, shape (n, ny, nx), float32
        Weights in ``[alpha, 1]``, 0 on ignored pixels.
    """
    frames = exposure_set.frames
    ignored = _ignored(exposure_set, ignore_bits)
    # The median of 3 copies of the median frame is that frame: the same input LCOFrames gives the loader.
    medians = np.broadcast_to(lco_median_frame(exposure_set), (3, *frames.shape[1:]))
    out = np.empty(frames.shape, np.float32)
    for k in range(frames.shape[0]):
        bad = ignored[k] | ~np.isfinite(frames[k])
        out[k] = median_weight_map(medians, alpha=alpha, mask=bad, clip=clip, smooth_sigma=smooth_sigma)
        out[k][bad] = 0.0
    return out


class LCOFrames(_CachedFrames):
    """Frame source over the LCO CR dataset (published ``*_3frms_masks.fits`` files).

    The exposure id is the file name (unique in the dataset, e.g.
    ``coj0m403-kb24-20190101-0147-e91_3frms_masks.fits``; Cosmic-CoNN keys its files the same
    way), so a seeded :func:`kercr.data.patches.split_exposures` gives the same split wherever
    the dataset is unpacked, and the frames of one set never reach both training and
    validation. Frames are keyed ``(file name, k)``, ``k`` the frame index in the file. No CRs
    are injected: the published CR masks are the truth.

    Parameters
    ----------
    root : str or os.PathLike
        ``LCO_CR_dataset``, a split, or any folder below them (see :func:`find_lco_files`).
    seed : int
    median_weights : bool
        Cosmic-CoNN median weights (from the median of the set's frames) instead of ones.
    ignore_bits : int
        Ignore codes that get weight 0: ``LCO_IGNORE_ALL`` (default, the evaluation protocol)
        or ``LCO_IGNORE_BOUNDARY | LCO_IGNORE_NO_DATA`` (Cosmic-CoNN's training).
    min_exptime : float, optional
        Skip files whose first frame has ``EXPTIME`` [s] at or below this (Cosmic-CoNN's
        ``--min_exposure``, default 0 = keep all).
    normalization : NormalizationConfig, optional
    cache : int
        Prepared frames kept in memory.
    """

    def __init__(self, root, *, seed, median_weights=False, ignore_bits=LCO_IGNORE_ALL, min_exptime=None,
                 normalization=None, cache=2):
        super().__init__(seed=seed, median_weights=median_weights, normalization=normalization, cache=cache)
        self.root = Path(os.fspath(root)).expanduser()
        self.ignore_bits = _check_bits(ignore_bits)
        paths = find_lco_files(self.root)
        if min_exptime is not None:
            kept = [p for p in paths if _first_exptime(p) > float(min_exptime)]
            logger.info("%d of %d LCO files have EXPTIME > %s s", len(kept), len(paths), min_exptime)
            if not kept:
                raise KercrDataError(f"{self.root}: no LCO file has EXPTIME > {min_exptime} s; "
                                     "lower min_exptime.")
            paths = kept
        self.paths = paths
        self._path_of = {}
        for p in paths:
            if p.name in self._path_of:
                raise KercrDataError(
                    f"{p} and {self._path_of[p.name]}: two files of one name under {self.root}; an exposure "
                    "set is identified by its file name. Point root at one copy of the dataset.")
            self._path_of[p.name] = p
        self._n_frames: dict = {}
        self._last = None

    def exposure_ids(self, n=None) -> list[str]:
        """File names of the exposure sets, sorted (``n`` is accepted and ignored, as by FITSFrames)."""
        return sorted(self._path_of)

    def path_of(self, exposure_id) -> Path:
        """Path of the file of ``exposure_id``."""
        try:
            return self._path_of[exposure_id]
        except KeyError:
            raise KercrDataError(f"{exposure_id!r}: not an exposure set under {self.root}; "
                                 "use one of exposure_ids().") from None

    def frames_of(self, exposure_id) -> list:
        """``[(exposure_id, k) for k in range(n_frames)]``: the frame keys of one set."""
        if exposure_id not in self._n_frames:
            self._n_frames[exposure_id] = _frame_count(self.path_of(exposure_id))
        return [(exposure_id, k) for k in range(self._n_frames[exposure_id])]

    def exposure_set(self, exposure_id) -> LCOExposureSet:
        """The file of ``exposure_id``, read once for consecutive frames of one set."""
        if self._last is None or self._last[0] != exposure_id:
            self._last = (exposure_id, read_lco_file(self.path_of(exposure_id)))
        return self._last[1]

    def _make(self, key):
        exposure_id, k = key
        es = self.exposure_set(exposure_id)
        if not 0 <= k < es.n_frames:
            raise KercrDataError(f"{es.path}: frame {k} requested but the file holds {es.n_frames} frames.")
        ignore = _ignored(es, self.ignore_bits)[k]
        clean = lco_median_frame(es) if self.median_weights else es.frames[k]
        return es.frames[k], es.cr_masks[k], ignore, clean

LCOFrames.__module__, LCOFrames.__qualname__ = __name__, "LCOFrames"  # picklable as kercr.data.lco.LCOFrames


def _frame_count(p: Path) -> int:
    """Frames in a file from its primary header (cheap), else by counting SCI extensions."""
    try:
        with fits.open(p, lazy_load_hdus=True) as hdul:
            n = hdul[0].header.get("FRMTOTAL")
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                return n
    except (OSError, ValueError, TypeError) as exc:
        raise FITSFormatError(f"{p}: not a readable FITS file ({exc}); download it again.") from exc
    return read_lco_file(p).n_frames


def _first_exptime(p: Path) -> float:
    try:
        value = fits.getval(p, "EXPTIME", ext=1)
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise KercrDataError(f"{p}: no EXPTIME in HDU 1 ({exc}), needed for min_exptime; "
                             "drop min_exptime or fix the file.") from exc
    return float(value)
