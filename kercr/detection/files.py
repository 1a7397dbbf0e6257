"""FITS files in, new FITS files out: the per-file work of ``kercr-detect`` (:func:`detect_file`).

For every input FITS file, :func:`detect_file` writes a NEW file holding a byte-for-byte copy of
the input (every HDU, in the same order, so HDU indices are unchanged) followed by one ``uint8``
CR mask extension (1 = cosmic ray) per processed CCD and, with ``save_probability``, one
``float32`` probability extension. Naming (:func:`mask_extname`): a file with a single image HDU
gets ``CRMASK`` (and ``CRPROB``); a multi-extension file gets ``<EXTNAME>_CRMASK`` (e.g.
``N4_CRMASK``) and ``<EXTNAME>_CRPROB``, with the image's ``EXTVER`` (HST's ``SCI,1`` and ``SCI,2``
get ``SCI_CRMASK,1`` and ``SCI_CRMASK,2``; images repeating an ``EXTNAME`` without ``EXTVER`` get
masks numbered 1, 2, ...). Only 2-D images are processed; cubes and other HDUs are copied as they
are. Each mask header names its image (``KCRSRCEX``, and its HDU index ``KCRSRCHD``) and
carries the provenance (``KCRVER`` kercr version, ``KCRMODEL``, ``KCRTHR`` threshold, ``KCRDATE``
UTC date, ``KCRRUNT`` runtime, ``KCRTTA`` whether the four flips were averaged, ``KCRDIL``
dilation, tiling, ``KCRSATX`` whether pixels at or above the saturation level were excluded and
``KCRSATL`` that level, counts) and the image's WCS keywords; the primary header carries the same
provenance, ``KCRSRC`` (the input's name, non-ASCII characters escaped) and ``KCRSRCSH`` (the
SHA-256 of the input's bytes, which ``--skip-existing`` checks): a file with both is taken for
an output, never an input (:func:`is_kercr_output`).

With ``clean=METHOD`` every processed CCD also gets a ``float32`` cleaned image, ``CLEAN`` (or
``<EXTNAME>_CLEAN``), after its mask: the image with the pixels of the written mask (after
``dilate``) replaced by :func:`kercr.data.clean_image` (``median``, ``mean`` or ``idw``; ``network``:
the learned inpainting network), every other pixel as the input (non-finite and ``BLANK`` pixels as NaN). Its header is the image's
(units, gain, read noise, exposure, WCS; not the structural cards), so it can be used on its own,
plus the same provenance, ``KCRCLEAN`` (method) and ``KCRNCLN`` (pixels replaced).

A CCD of a multi-CCD file with nothing to detect (constant, such as a dead amplifier; every
pixel NaN or saturated; too few pixels) does not lose the file's other CCDs: it gets an empty
mask whose ``KCRSTAT`` card says why (and an unchanged ``CLEAN``), with a warning; a file with
no CCD to detect fails (:class:`kercr.data.errors.UndetectableImageError`).

The file is written by :func:`kercr.data.fits_io.new_fits_file`: under a temporary name, renamed
at the end; inputs are never modified, no file is ever overwritten, and a failure leaves nothing.

The work is in three steps, so that CCDs can be detected in other processes
(:mod:`kercr.detection.batch`) and the file still written once, in order, by one process:
:func:`plan_file` (checks, output name, CCD list), :func:`detect_ccd` (one CCD: read, detect, the
extensions it adds) and :func:`write_output` (the copy of the input, then each CCD's extensions).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import time
from pathlib import Path

import numpy as np

from kercr._version import __version__
from kercr.config import FITS_SUFFIXES
from kercr.model_files import file_sha256

__all__ = ["FITS_SUFFIXES", "CCDOutput", "FilePlan", "detect_ccd", "detect_file", "existing_output_differs",
           "mask_extname", "output_path", "plain_copy", "plan_file", "select_extensions", "write_output"]

logger = logging.getLogger(__name__)

#: HDUs never treated as CCD images (kercr-detect's own outputs and truth/ignore masks).
_SKIP_EXT = re.compile(r"^(.*_)?(CRMASK|CRPROB|CLEAN|IGNORE)$", re.IGNORECASE)
#: Planes beside the science image in SCI/ERR/DQ-style files (HST, JWST, Gemini, ...): not part of
#: ``ext="all"``, though naming them still picks them.
_AUX_EXT = re.compile(r"^(ERR|DQ|VAR|VARIANCE|IVAR|WHT|WEIGHT|MASK|BPM|CON|SAMP|TIME|OBJMASK)$", re.IGNORECASE)


def output_path(path, out_dir=None, suffix="_crmask") -> Path:
    """``<stem><suffix>.fits`` in ``out_dir`` (default: beside ``path``); compression suffixes dropped."""
    path = Path(path)
    name = path.name
    for s in FITS_SUFFIXES:
        if name.lower().endswith(s):
            name = name[: -len(s)]
            break
    return Path(out_dir if out_dir is not None else path.parent) / f"{name}{suffix}.fits"


def is_kercr_output(path) -> bool:
    """Whether ``path`` is a file kercr-detect wrote: its primary header names its input (``KCRSRC``)
    with the input's SHA-256 (``KCRSRCSH``) or, in outputs older than that card, the model
    (``KCRMODEL``). A frame saved by :func:`kercr.data.write_fits_with_mask` names its source too
    but is an image to detect on. False for anything unreadable (:func:`plan_file` then says what
    is wrong with it)."""
    from astropy.io import fits  # heavy: astropy

    try:
        header = fits.getheader(path, 0)
    except Exception:  # not FITS, missing, unreadable: not kercr's
        return False
    return "KCRSRC" in header and ("KCRSRCSH" in header or "KCRMODEL" in header)


def existing_output_differs(out, path, *, model_name: str, dilate: int, clean, save_probability: bool,
                            threshold=None, masks=None, runtime=None, tta=None, tta_gate=None,
                            exclude_saturated=None) -> str | None:
    """Why the existing output ``out`` is not what this run would write for ``path``, or None.

    ``kercr-detect --skip-existing`` skips an output only when it is kercr's output of this input
    (``KCRSRC``, and the input's bytes, ``KCRSRCSH``, in outputs that record them) made with this
    model, dilation, cleaning method, probability extensions and, when one is given, threshold,
    runtime (not ``"auto"``), flips (``tta``), flip gate and saturated-pixel exclusion, and holding
    the mask extensions ``masks`` (the names this run would write; None: not checked); a junk file,
    one of another input or one made with other options is reported instead. An option that an
    older kercr did not record (``KCRSATX``) is not checked.
    """
    from astropy.io import fits  # heavy: astropy

    from kercr.data.fits_io import ascii_card  # heavy: astropy (kercr.data)

    try:
        with fits.open(out) as hdul:
            primary = hdul[0].header
            extnames = [str(h.header.get("EXTNAME", "")).upper() for h in hdul[1:]]
    except Exception as err:  # not FITS, truncated, unreadable
        return f"{out} exists but cannot be read as FITS ({type(err).__name__}); remove it, or write elsewhere (--out DIR)"
    if "KCRSRC" not in primary:
        return f"{out} exists but is not a kercr-detect output (no KCRSRC); remove it, or write elsewhere (--out DIR)"
    expected = {"KCRSRC": ascii_card(Path(path).name)[-68:], "KCRMODEL": ascii_card(model_name)[-60:],
                "KCRDIL": int(dilate), "KCRCLEAN": clean}
    if threshold is not None:
        expected["KCRTHR"] = float(threshold)
    optional = {"KCRRUNT": None if runtime in (None, "auto") else str(runtime),
                "KCRTTA": None if tta is None else bool(tta),
                "KCRTTAG": None if tta_gate is None or primary.get("KCRTTA") is False else float(tta_gate),
                "KCRSATX": None if exclude_saturated is None else bool(exclude_saturated)}
    expected.update({key: value for key, value in optional.items() if value is not None and key in primary})
    found = {key: primary.get(key) for key in expected}
    found["CRPROB"] = any(n.endswith("CRPROB") for n in extnames)
    expected["CRPROB"] = bool(save_probability)
    differ = [f"{key} {found[key]!r} there, {expected[key]!r} now" for key in expected if found[key] != expected[key]]
    # Outputs written before KCRSRCSH existed name their input only (KCRSRC).
    if "KCRSRCSH" in primary and not differ and primary["KCRSRCSH"] != file_sha256(path):
        differ.append(f"KCRSRCSH: it was made from another file named {Path(path).name} (the bytes differ)")
    missing = [name for name in (masks or ()) if name.upper() not in extnames]
    if missing:
        differ.append(f"no {', '.join(missing)} there (made with another --ext)")
    if differ:
        return (f"{out} exists but was made from another input or with other options ({'; '.join(differ)}); remove "
                "it, or write elsewhere (--out DIR)")
    return None


def mask_extname(extname: str, single: bool, kind: str = "CRMASK") -> str:
    """``CRMASK`` for a single-image file, ``<EXTNAME>_CRMASK`` for a multi-extension file."""
    return kind if single else f"{extname}_{kind}"


def _what_is_there(path) -> str:
    """What ``path`` holds instead of a 2-D image, for an error: its cubes, else masks or no data."""
    from astropy.io import fits  # heavy: astropy

    with fits.open(path) as hdul:
        others = [f"HDU {i} is a {h.header['NAXIS']}-D image {tuple(h.shape)}" for i, h in enumerate(hdul)
                  if h.is_image and h.header.get("NAXIS", 0) > 2]
    if others:
        return "; ".join(others) + ": split a cube into 2-D images (one per plane) first"
    return "only masks or no image data"


def select_extensions(path, ext="all") -> tuple[list[tuple[int, str]], bool]:
    """The image HDUs of ``path`` to process, and whether the file holds a single image.

    Parameters
    ----------
    path : path-like
        FITS file.
    ext : "all", str or sequence of (str or int)
        ``"all"``: every image HDU except masks (``*CRMASK``, ``*CRPROB``, ``*CLEAN``, ``IGNORE``)
        and error, variance, weight and data-quality planes (``ERR``, ``VAR``, ``DQ``, ...). Else
        names or HDU indices, as a sequence or one comma-separated string (``"N4,S22"``); case is
        ignored, and an HDU named twice is processed once.

    Returns
    -------
    list of (int, str), bool
        ``(hdu_index, extname)`` in file order (``"all"``) or the order asked for.
    """
    from kercr.data import list_ccd_extensions  # heavy: astropy (kercr.data)
    from kercr.data.errors import FITSFormatError  # heavy: astropy (kercr.data)

    images = [(i, n) for i, n in list_ccd_extensions(path) if not _SKIP_EXT.match(n)]
    if not images:
        raise FITSFormatError(f"{path}: no CCD image extension ({_what_is_there(path)}). Pass a FITS file holding "
                              "2-D images.")
    single = len(images) == 1
    if ext is None or (isinstance(ext, str) and ext.strip().lower() == "all"):
        science = [(i, n) for i, n in images if not _AUX_EXT.match(n)]
        if not science:
            raise FITSFormatError(f"{path}: only error, variance, weight or data-quality planes "
                                  f"{[n for _, n in images]}; name one (kercr-detect --ext NAME) to process it anyway.")
        if len(science) < len(images):
            logger.info("%s: skipping %s (error/variance/quality planes; --ext NAME picks one)", path,
                        ", ".join(n for i, n in images if _AUX_EXT.match(n)))
        return science, single
    wanted = ext.split(",") if isinstance(ext, str) else list(ext)
    chosen = []
    for e in (str(e).strip() for e in wanted):
        if not e:
            continue
        match = [(i, n) for i, n in images if n.upper() == e.upper() or (e.isdigit() and i == int(e))]
        if not match:
            raise FITSFormatError(f"{path}: extension {e!r} not found among the 2-D image extensions "
                                  f"{[n for _, n in images]}. Pass one of them (kercr-detect --ext), or 'all'.")
        if e.isdigit() and _AUX_EXT.match(match[0][1]):  # "SCI,2" read as HDU 2, which is ERR in HST's layout
            at = {n: [str(i) for i, m in images if m == n] for _, n in images if not _AUX_EXT.match(n)}
            raise FITSFormatError(
                f"{path}: HDU {e} is {match[0][1]}, an error, variance, weight or data-quality plane. Pass its name "
                f"to process it (--ext {match[0][1]}); a name and a number ('SCI,2') are two extensions here, so "
                "for one image of a repeated name pass its HDU index ("
                + "; ".join(f"{n} at {', '.join(v)}" for n, v in at.items()) + ").")
        chosen.extend(m for m in match if m not in chosen)  # "1,N4" naming one HDU twice does it once
    return chosen, single


def _provenance(result, *, dilate: int, exclude_saturated: bool = True) -> dict:
    from kercr.data.fits_io import ascii_card, utc_now  # heavy: astropy (kercr.data)

    cleaning = ({"KCRCLEAN": (result.clean_method, "CR cleaning method (CLEAN extensions)")}
                if result.clean_method else {})
    return {
        "KCRVER": (__version__, "kercr version"),
        "KCRMODEL": (ascii_card(result.model_name)[-60:], "kercr model"),
        "KCRTHR": (float(result.threshold), "CR probability threshold"),
        "KCRDATE": (utc_now(), "UTC"),
        "KCRRUNT": (result.runtime, "kercr inference runtime"),
        "KCRTTA": (bool(result.tta), "prediction averaged over 4 flips"),
        **({"KCRTTAG": (float(result.tta_gate), "flips where single-view p >= this (0: all)")} if result.tta else {}),
        "KCRDIL": (int(dilate), "mask dilation, pixels (3x3 element)"),
        "KCRTILE": (f"{result.tile[0]}x{result.tile[1]}", "tile shape, pixels"),
        "KCROVLP": (int(result.overlap), "tile overlap margin, pixels"),
        "KCRSATX": (bool(exclude_saturated), "pixels >= the saturation level excluded"),
        **cleaning,
    }


@dataclasses.dataclass
class FilePlan:
    """One input checked and ready: where its output goes and which CCDs it holds.

    Attributes
    ----------
    path, out : pathlib.Path
        The input and the output file to write (:func:`output_path`; it did not exist when planned).
    extensions : list of (int, str)
        ``(hdu_index, extname)`` of the CCDs to process, in output order.
    single : bool
        The file holds a single image (masks are named ``CRMASK``, not ``<EXTNAME>_CRMASK``).
    source : pathlib.Path or None
        A plain FITS copy of a gzip or bzip2 input, which its CCDs and the output's copy are read
        from (a stream must be decompressed from its start for every CCD read); None: ``path``.
    """

    path: Path
    out: Path
    extensions: list
    single: bool
    source: Path | None = None


@dataclasses.dataclass
class CCDOutput:
    """What one CCD adds to the output: made by :func:`detect_ccd` (in a worker process or not).

    Attributes
    ----------
    extname : str
        The image extension.
    provenance : dict
        The provenance cards (the first CCD's go to the primary header).
    hdus : list of (str, numpy.ndarray, astropy.io.fits.Header)
        ``(EXTNAME, data, header)`` to append: the uint8 mask, then the float32 probability
        and cleaned image when asked for.
    n_cr, n_ignored, n_pixels : int
        Flagged, ignored and all pixels of the CCD.
    seconds : float
        Time to read and detect it, s.
    undetected : str or None
        Why nothing was detected in this CCD (:class:`kercr.data.errors.UndetectableImageError`:
        constant, all ignored, too small); its mask is then empty and says so (``KCRSTAT``).
    """

    extname: str
    provenance: dict
    hdus: list
    n_cr: int
    n_ignored: int
    n_pixels: int
    seconds: float
    undetected: str | None = None


def plan_file(path, *, out_dir=None, suffix="_crmask", ext="all", dilate=0) -> FilePlan:
    """Check one input before any detection: it exists, the output does not, its CCDs.

    Raises
    ------
    kercr.data.FITSFileNotFoundError, kercr.data.FITSFormatError, kercr.data.KercrDataError
        ``path`` is missing, not FITS or holds no image; ``ext`` names no image; a bad ``dilate``.
    FileExistsError
        The output exists.
    PermissionError
        The output's folder (or the nearest existing folder above it) is not writable.
    """
    from kercr.data.errors import FITSFileNotFoundError, KercrDataError  # heavy: astropy (kercr.data)

    path = Path(path)
    if not path.exists():
        raise FITSFileNotFoundError(f"{path}: file not found. Check the path.")
    if isinstance(dilate, bool) or not isinstance(dilate, (int, np.integer)) or dilate < 0:
        raise KercrDataError(f"dilate={dilate!r}: pass a whole number of pixels >= 0.")
    out = output_path(path, out_dir, suffix)
    if out.exists():
        raise FileExistsError(f"{out} already exists and kercr never overwrites files: skip it "
                              "(kercr-detect --skip-existing, skip_existing=True), write elsewhere (--out DIR or "
                              "--suffix; out_dir= or suffix=) or remove the file.")
    folder = next(d for d in (out.parent, *out.parent.parents) if d.exists())  # --out is created if needed
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {out.name} in {folder} (no write permission there; the default "
                              "is beside the input): pass a folder you can write to (kercr-detect --out DIR, "
                              "out_dir=).")
    extensions, single = select_extensions(path, ext)
    return FilePlan(path=path, out=out, extensions=extensions, single=single)


def detect_ccd(path, hdu_index: int, extname: str, *, single: bool, model="default", dilate=0,
               save_probability=False, clean=None, source=None, **detect_options) -> CCDOutput:
    """Read one CCD of a FITS file, detect its cosmic rays and make the extensions it adds.

    Parameters
    ----------
    path : path-like
        FITS file.
    hdu_index, extname : int, str
        The CCD (:func:`select_extensions`).
    single : bool
        Name the extensions ``CRMASK``... rather than ``<EXTNAME>_CRMASK``...
    model, dilate, save_probability, clean
        As :func:`detect_file`.
    source : path-like, optional
        A plain copy of ``path`` to read the CCD from (:attr:`FilePlan.source`); messages name ``path``.
    **detect_options
        ``threshold``, ``runtime``, ``tta``, ``tta_gate``, ``tile``, ``overlap``, ``batch_size``,
        ``num_threads``, ``exclude_saturated`` of :func:`kercr.detection.detect`.

    Returns
    -------
    CCDOutput
    """
    from kercr.data import read_ccd  # heavy: astropy (kercr.data)
    from kercr.data.errors import UndetectableImageError  # heavy: astropy (kercr.data)
    from kercr.detection import detect  # lazy: kercr.detection imports this module

    t0 = time.perf_counter()
    frame = read_ccd(path if source is None else source, hdu_index)
    if source is not None:
        frame = dataclasses.replace(frame, path=Path(path))
    try:
        result = detect(frame, model=model, clean=clean, clean_dilate=dilate, **detect_options)
    except UndetectableImageError as err:
        if single:  # the file's only image: nothing to write
            raise
        # A dead amplifier or an all-NaN CCD must not lose the file's other CCDs.
        return _undetected(frame, hdu_index, extname, model=model, reason=str(err), save_probability=save_probability,
                           clean=clean, t0=t0)
    mask = result.dilated_mask(dilate) if dilate else result.mask
    exclude_saturated = detect_options.get("exclude_saturated", True)
    prov = _provenance(result, dilate=dilate, exclude_saturated=exclude_saturated)
    header = _ccd_header(frame, hdu_index, extname, prov)
    header["KCRNCR"] = (int(mask.sum()), "flagged (CR) pixels")
    header["KCRNIGN"] = (int(result.ignored.sum()), "ignored pixels (NaN/inf, saturated)")
    header["KCRSKY"] = (float(result.normalization.sky), "sky, image units")
    header["KCRNOISE"] = (float(result.normalization.noise), "noise, image units")
    if exclude_saturated and result.saturation is not None:
        header["KCRSATL"] = (float(result.saturation), "saturation level excluded from, image units")
    hdus = _ccd_hdus(frame, header, extname, single, mask=mask, probability=result.probability if save_probability
                     else None, clean=result.clean)
    return CCDOutput(extname=extname, provenance=prov, hdus=hdus, n_cr=int(mask.sum()),
                     n_ignored=int(result.ignored.sum()), n_pixels=int(mask.size), seconds=time.perf_counter() - t0)


def _ccd_header(frame, hdu_index, extname, cards):
    """A mask header: the image's WCS, ``cards``, and which image it belongs to."""
    from kercr.data.fits_io import wcs_header  # heavy: astropy (kercr.data)

    header = wcs_header(frame.header)
    for key, value in cards.items():
        header[key] = value
    header["KCRSRCEX"] = (extname, "image extension this mask belongs to")
    header["KCRSRCHD"] = (int(hdu_index), "HDU index of that image extension")
    if "EXTVER" in frame.header:  # SCI,1 and SCI,2 (HST) get SCI_CRMASK,1 and SCI_CRMASK,2
        header["EXTVER"] = (frame.header["EXTVER"], "EXTVER of the image extension")
    return header


#: Primary-header cards that describe the file, not an image: not copied into a CLEAN extension.
_PRIMARY_ONLY = {"NEXTEND", "INHERIT", "FILENAME", "CHECKVER"}


def _ccd_hdus(frame, header, extname, single, *, mask, probability, clean) -> list:
    """The CCD's extensions: the mask, then the probability and the cleaned image when given."""
    from kercr.data.fits_io import image_header  # heavy: astropy (kercr.data)
    from kercr.data.fits_write import _WCS_KEYS  # heavy: astropy (kercr.data)

    header["BUNIT"] = ("", "1 = cosmic ray, 0 = not")
    hdus = [(mask_extname(extname, single), mask.astype(np.uint8), header.copy())]
    if probability is not None:
        header["BUNIT"] = ("", "CR probability")
        hdus.append((mask_extname(extname, single, "CRPROB"), probability, header.copy()))
    if clean is not None:
        # A usable image on its own: the image's header (units, gain, exposure, WCS; the primary header's
        # cards it lacks, where a multi-extension file keeps them), its HISTORY, then kercr's cards.
        cleaned = image_header(frame.header)
        for card in image_header(frame.primary_header).cards:  # not its WCS: the image's own (or none) stays whole
            if card.keyword not in cleaned and card.keyword not in _PRIMARY_ONLY and not _WCS_KEYS.match(card.keyword):
                cleaned.append(card, end=True)
        for key in ("DATAMIN", "DATAMAX"):  # the CR pixels they may have measured are gone
            cleaned.remove(key, ignore_missing=True, remove_all=True)
        for card in header.cards:
            if card.keyword != "BUNIT":
                cleaned[card.keyword] = (card.value, card.comment)
        cleaned["KCRNCLN"] = (int(mask.sum()), "pixels replaced by cleaning (the mask's)")
        for text in frame.header.get("HISTORY", []):
            cleaned.add_history(text)
        if mask.any():
            cleaned.add_history(f"kercr {__version__}: {int(mask.sum())} CR pixels replaced ({header.get('KCRCLEAN')})")
        hdus.append((mask_extname(extname, single, "CLEAN"), clean, cleaned))
    return hdus


def _undetected(frame, hdu_index, extname, *, model, reason, save_probability, clean, t0) -> CCDOutput:
    """The extensions of a CCD with nothing to detect: an empty mask whose ``KCRSTAT`` says why."""
    from kercr.data.fits_io import ascii_card  # heavy: astropy (kercr.data)
    from kercr.detection.loading import load_model  # lazy: the model is cached, loaded already

    reason = " ".join(reason.split())
    cards = {"KCRVER": (__version__, "kercr version"),
             "KCRMODEL": (ascii_card(load_model(model).name)[-60:], "kercr model"),
             "KCRSTAT": (ascii_card(f"not detected: {reason}"), "why this mask is empty")}
    header = _ccd_header(frame, hdu_index, extname, cards)
    header["KCRNCR"] = (0, "flagged (CR) pixels")
    header["KCRNIGN"] = (int(frame.data.size), "ignored pixels: all (KCRSTAT)")
    empty = np.zeros(frame.data.shape, bool)
    hdus = _ccd_hdus(frame, header, extname, False, mask=empty,
                     probability=np.zeros(frame.data.shape, np.float32) if save_probability else None,
                     clean=frame.data.astype(np.float32) if clean else None)
    return CCDOutput(extname=extname, provenance={}, hdus=hdus, n_cr=0, n_ignored=int(frame.data.size),
                     n_pixels=int(frame.data.size), seconds=time.perf_counter() - t0, undetected=reason)


def write_output(plan: FilePlan, ccds, *, save_probability=False, clean=None, log_prefix="") -> tuple[int, list]:
    """Write ``plan.out``: a copy of the input, then each CCD's extensions in ``plan.extensions`` order.

    Parameters
    ----------
    plan : FilePlan
    ccds : iterable of CCDOutput
        One per ``plan.extensions``, in that order; pulled one at a time, so only one CCD's
        arrays need be in memory. An error raised by it leaves no output.
    save_probability, clean
        What :func:`detect_ccd` was asked for (checked against the input's extension names first).
    log_prefix : str
        Put in front of the log lines.

    Returns
    -------
    int, list of str
        Pixels processed, and the CCDs with nothing to detect (written with empty masks,
        ``KCRSTAT``; logged as warnings).

    Raises
    ------
    kercr.data.errors.UndetectableImageError
        No CCD of the file could be detected (nothing is written).
    """
    from kercr.data.errors import UndetectableImageError  # heavy: astropy (kercr.data)
    from kercr.data.fits_io import ascii_card, new_fits_file  # heavy: astropy (kercr.data)

    path, n = plan.path, len(plan.extensions)
    t0, pixels = time.perf_counter(), 0
    with new_fits_file(plan.out, copy_of=plan.source or path) as f:
        kinds = ("CRMASK", *(("CRPROB",) if save_probability else ()), *(("CLEAN",) if clean else ()))
        for _, extname in plan.extensions:
            for kind in kinds:
                name = mask_extname(extname, plan.single, kind)
                if name.upper() in f.extnames:
                    raise ValueError(
                        f"{path} already holds an extension {name}, the name of the mask kercr-detect would add. "
                        f"If it is a truth mask, `kercr-evaluate {path.name}` scores the detections against it; "
                        "otherwise run kercr-detect on the file without it (the original, or a copy without that "
                        "extension).")
        k, written, undetected = 0, set(), []
        for k, ccd in enumerate(ccds, 1):
            if ccd.undetected is None and len(undetected) == k - 1:  # the first detected CCD's provenance
                f.update_primary({**ccd.provenance, "KCRSRC": ascii_card(path.name)[-68:],
                                  "KCRSRCSH": file_sha256(path)})  # no room for a comment
            for name, data, header in ccd.hdus:
                ver = int(header.get("EXTVER", 1))
                if (name.upper(), ver) in written:  # two images of one EXTNAME and no EXTVER: number the masks
                    while (name.upper(), ver) in written:
                        ver += 1
                    header = header.copy()
                    header["EXTVER"] = (ver, "input repeats EXTNAME; see KCRSRCHD")
                written.add((name.upper(), ver))
                f.append(data, name=name, header=header)
            pixels += ccd.n_pixels
            if ccd.undetected is not None:
                undetected.append((ccd.extname, ccd.undetected))
                if len(undetected) == n:  # nothing detected anywhere: no file
                    raise UndetectableImageError(f"{path}: no CCD holds anything to detect; the first, "
                                                 f"{undetected[0][0]}: {undetected[0][1]}")
                logger.warning("%s%s [%s] %d/%d: not detected, written with an empty mask (KCRSTAT): %s",
                               log_prefix, path.name, ccd.extname, k, n, ccd.undetected)
                continue
            logger.info("%s%s [%s] %d/%d: %d CR pixels (%.3f %%), %d ignored, %.1f s", log_prefix, path.name,
                        ccd.extname, k, n, ccd.n_cr, 100.0 * ccd.n_cr / max(ccd.n_pixels, 1), ccd.n_ignored,
                        ccd.seconds)
        if k != n:  # a caller's bug; the partial file is removed
            raise RuntimeError(f"{path}: {k} CCD results for {n} extensions.")
    logger.info("%swrote %s (%d CCD%s%s, %.1f s)", log_prefix, plan.out, n, "" if n == 1 else "s",
                f", {len(undetected)} not detected" if undetected else "", time.perf_counter() - t0)
    return pixels, [name for name, _ in undetected]


def detect_file(path, *, out_dir=None, suffix="_crmask", model="default", ext="all", threshold=None, dilate=0,
                save_probability=False, clean=None, runtime="auto", tta=None, tta_gate=None, tile=None, overlap=None,
                batch_size=None, num_threads=None, exclude_saturated=True, jobs=1, progress=False,
                log_prefix="") -> Path:
    """Detect the cosmic rays of every CCD of a FITS file and write a NEW FITS file with the masks.

    Parameters
    ----------
    path : path-like
        FITS file (``.fits``, ``.fits.fz``, ``.fits.gz``); never modified.
    out_dir : path-like, optional
        Output directory (created if needed); default: beside ``path``.
    suffix : str
        The output is ``<stem><suffix>.fits`` (:func:`output_path`).
    model : str, path-like, keras.Model or kercr.detection.LoadedModel
        As :func:`kercr.detection.detect`; load it once (:func:`kercr.detection.load_model`) to run
        many files.
    ext : "all", str or sequence
        Image extensions to process (:func:`select_extensions`).
    threshold : float, optional
        CR probability threshold; default: the model's (see :func:`kercr.detection.detect`).
    dilate : int
        Grow each written mask by this many pixels (3 x 3 element; never into ignored pixels).
    save_probability : bool
        Also write the ``float32`` CR probability of each CCD.
    clean : {None, "median", "mean", "idw", "network"}
        Also write a ``float32`` cleaned image of each CCD: the pixels of the written mask replaced
        (``"network"``: by the learned inpainting network, :func:`kercr.detection.inpainting.inpaint`).
    runtime, tta, tta_gate, tile, overlap, batch_size, num_threads, exclude_saturated
        As :func:`kercr.detection.detect`; with ``jobs > 1``, ``num_threads`` is the CPU threads
        of all workers together.
    jobs : int
        Worker processes that detect the CCDs in parallel (1: in this process). The output is the
        same bit for bit; see :func:`kercr.detection.detect_files` for memory.
    progress : bool or None
        Show a tqdm progress bar on stderr (None: when stderr is a terminal).
    log_prefix : str
        Put in front of the progress log lines (kercr-detect passes ``"[i/n] "``).

    Returns
    -------
    pathlib.Path
        The written file (see the module docstring for its layout and header keywords).

    Raises
    ------
    kercr.data.FITSFileNotFoundError, kercr.data.FITSFormatError
        ``path`` is missing, not FITS or holds no image; ``ext`` names no image extension.
    FileExistsError
        The output exists (nothing is ever overwritten).
    ValueError
        ``path`` already holds kercr-detect's extensions, or a bad option (see :func:`kercr.detection.detect`).
    """
    from kercr.detection.batch import detect_files  # lazy: batch imports this module

    result = detect_files([path], out_dir=out_dir, suffix=suffix, model=model, ext=ext, threshold=threshold,
                          dilate=dilate, save_probability=save_probability, clean=clean, runtime=runtime, tta=tta,
                          tta_gate=tta_gate, tile=tile, overlap=overlap, batch_size=batch_size, num_threads=num_threads,
                          exclude_saturated=exclude_saturated, jobs=jobs, progress=progress, log_prefix=log_prefix,
                          report=False)
    outcome = result.outcomes[0]
    if outcome.error is not None:
        raise outcome.error
    if outcome.output is None:  # skipped as kercr's own output, or refused before any work
        raise ValueError(outcome.reason if outcome.status == "failed" else
                         f"{path}: {outcome.reason}; run kercr-detect on the original file.")
    return Path(outcome.output)


def plain_copy(plan: FilePlan) -> Path | None:
    """For a gzip or bzip2 input (told by its first bytes), a plain FITS copy beside the output, under a
    hidden partial name (``.<output>.partial-<pid>.<host>-<hex>-input.fits``, which kercr-detect's leftover
    check names after a kill); None for any other input. The caller removes it when the file is done."""
    from kercr.data.fits_read import compressed_stream  # heavy: astropy (kercr.data)
    from kercr.data.fits_write import _copy_fits, partial_tag  # heavy: astropy (kercr.data)

    if compressed_stream(plan.path) is None:
        return None
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    copy = plan.out.with_name(f".{plan.out.name}.partial-{partial_tag()}-{secrets.token_hex(4)}-input.fits")
    try:
        _copy_fits(plan.path, copy)
    except BaseException:
        copy.unlink(missing_ok=True)
        raise
    return copy
