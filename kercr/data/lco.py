"""The LCO CR dataset released with Cosmic-CoNN as training frames, with Cosmic-CoNN's median weights.

The dataset (Xu et al. 2023, arXiv:2106.14922; Zenodo record 5034763) and its files are described,
and read, in :mod:`kercr.data.lco_files`; everything it defines is importable from here too.

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

import logging
import os
from pathlib import Path

import numpy as np
from astropy.io import fits

from kercr.data.errors import FITSFormatError, KercrDataError
from kercr.data.frames import _CachedFrames
from kercr.data.lco_files import (
    LAYOUT_HINT,
    LCO_IGNORE_ALL,
    LCO_IGNORE_BOUNDARY,
    LCO_IGNORE_HOT_PIXEL,
    LCO_IGNORE_NO_DATA,
    LCO_IGNORE_SOURCE,
    LCOExposureSet,
    find_lco_files,
    is_lco_dataset,
    read_lco_file,
)
from kercr.data.pixel_weights import median_weight_map

__all__ = [
    "LCO_IGNORE_BOUNDARY", "LCO_IGNORE_NO_DATA", "LCO_IGNORE_SOURCE", "LCO_IGNORE_HOT_PIXEL", "LCO_IGNORE_ALL",
    "LCOExposureSet", "find_lco_files", "is_lco_dataset", "read_lco_file", "lco_median_frame",
    "lco_median_weights", "LCOFrames", "LAYOUT_HINT",
]

logger = logging.getLogger(__name__)


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
    rim_weight : float
        Loss weight of the non-CR pixels touching a CR (:func:`kercr.data.pixel_weights.weigh_rim`).
    """

    def __init__(self, root, *, seed, median_weights=False, ignore_bits=LCO_IGNORE_ALL, min_exptime=None,
                 normalization=None, cache=2, rim_weight=1.0):
        super().__init__(seed=seed, median_weights=median_weights, normalization=normalization, cache=cache,
                         rim_weight=rim_weight)
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
