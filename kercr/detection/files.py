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
dilation, tiling, counts) and the image's WCS keywords; the primary header carries the same
provenance and ``KCRSRC`` (the input's name, non-ASCII characters escaped): a file with
``KCRSRC`` is taken for an output, never an input (:func:`is_kercr_output`).

With ``clean=METHOD`` every processed CCD also gets a ``float32`` cleaned image, ``CLEAN`` (or
``<EXTNAME>_CLEAN``), after its mask: the image with the pixels of the written mask (after
``dilate``) replaced by :func:`kercr.data.clean_image` (``median``, ``mean`` or ``idw``), every
other pixel as the input. Its header holds the same provenance plus ``KCRCLEAN`` (method) and
``KCRNCLN`` (pixels replaced), and the image's ``BUNIT``.

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
import re
import time
from pathlib import Path

import numpy as np

from kercr._version import __version__
from kercr.config import FITS_SUFFIXES

__all__ = ["FITS_SUFFIXES", "CCDOutput", "FilePlan", "detect_ccd", "detect_file", "mask_extname", "output_path",
           "plan_file", "select_extensions", "write_output"]

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
    """Whether ``path`` is a file kercr-detect wrote (its primary header names its input: ``KCRSRC``);
    False for anything unreadable (:func:`plan_file` then says what is wrong with it)."""
    from astropy.io import fits  # heavy: astropy

    try:
        return "KCRSRC" in fits.getheader(path, 0)
    except Exception:  # not FITS, missing, unreadable: not kercr's
        return False


def mask_extname(extname: str, single: bool, kind: str = "CRMASK") -> str:
    """``CRMASK`` for a single-image file, ``<EXTNAME>_CRMASK`` for a multi-extension file."""
    return kind if single else f"{extname}_{kind}"


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
        raise FITSFormatError(f"{path}: no CCD image extension (only masks or no image data). Pass a FITS image.")
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
        chosen.extend(m for m in match if m not in chosen)  # "1,N4" naming one HDU twice does it once
    return chosen, single


def _provenance(result, *, dilate: int, clean) -> dict:
    from kercr.data.fits_io import ascii_card, utc_now  # heavy: astropy (kercr.data)

    cleaning = {"KCRCLEAN": (clean, "CR cleaning method (CLEAN extensions)")} if clean else {}
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
    """

    path: Path
    out: Path
    extensions: list
    single: bool


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
    """

    extname: str
    provenance: dict
    hdus: list
    n_cr: int
    n_ignored: int
    n_pixels: int
    seconds: float


def plan_file(path, *, out_dir=None, suffix="_crmask", ext="all", dilate=0) -> FilePlan:
    """Check one input before any detection: it exists, the output does not, its CCDs.

    Raises
    ------
    kercr.data.FITSFileNotFoundError, kercr.data.FITSFormatError, kercr.data.KercrDataError
        ``path`` is missing, not FITS or holds no image; ``ext`` names no image; a bad ``dilate``.
    FileExistsError
        The output exists.
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
    extensions, single = select_extensions(path, ext)
    return FilePlan(path=path, out=out, extensions=extensions, single=single)


def detect_ccd(path, hdu_index: int, extname: str, *, single: bool, model="default", dilate=0,
               save_probability=False, clean=None, **detect_options) -> CCDOutput:
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
    **detect_options
        ``threshold``, ``runtime``, ``tta``, ``tta_gate``, ``tile``, ``overlap``, ``batch_size``,
        ``num_threads``, ``exclude_saturated`` of :func:`kercr.detection.detect`.

    Returns
    -------
    CCDOutput
    """
    from kercr.data import read_ccd  # heavy: astropy (kercr.data)
    from kercr.data.fits_io import wcs_header  # heavy: astropy (kercr.data)
    from kercr.detection import detect  # lazy: kercr.detection imports this module

    t0 = time.perf_counter()
    frame = read_ccd(path, hdu_index)
    result = detect(frame, model=model, clean=clean, clean_dilate=dilate, **detect_options)
    mask = result.dilated_mask(dilate) if dilate else result.mask
    prov = _provenance(result, dilate=dilate, clean=clean)
    header = wcs_header(frame.header)
    for key, value in prov.items():
        header[key] = value
    header["KCRSRCEX"] = (extname, "image extension this mask belongs to")
    header["KCRSRCHD"] = (int(hdu_index), "HDU index of that image extension")
    if "EXTVER" in frame.header:  # SCI,1 and SCI,2 (HST) get SCI_CRMASK,1 and SCI_CRMASK,2
        header["EXTVER"] = (frame.header["EXTVER"], "EXTVER of the image extension")
    header["KCRNCR"] = (int(mask.sum()), "flagged (CR) pixels")
    header["KCRNIGN"] = (int(result.ignored.sum()), "ignored pixels (NaN/inf, saturated)")
    header["KCRSKY"] = (float(result.normalization.sky), "sky, image units")
    header["KCRNOISE"] = (float(result.normalization.noise), "noise, image units")
    header["BUNIT"] = ("", "1 = cosmic ray, 0 = not")
    hdus = [(mask_extname(extname, single), mask.astype(np.uint8), header.copy())]
    if save_probability:
        header["BUNIT"] = ("", "CR probability")
        hdus.append((mask_extname(extname, single, "CRPROB"), result.probability, header.copy()))
    if clean:
        header["BUNIT"] = (str(frame.header.get("BUNIT", "")), "as the image; CR pixels replaced")
        header["KCRNCLN"] = (int(mask.sum()), "pixels replaced by cleaning (the mask's)")
        hdus.append((mask_extname(extname, single, "CLEAN"), result.clean, header.copy()))
    return CCDOutput(extname=extname, provenance=prov, hdus=hdus, n_cr=int(mask.sum()),
                     n_ignored=int(result.ignored.sum()), n_pixels=int(mask.size), seconds=time.perf_counter() - t0)


def write_output(plan: FilePlan, ccds, *, save_probability=False, clean=None, log_prefix="") -> int:
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
    int
        Pixels processed.
    """
    from kercr.data.fits_io import ascii_card, new_fits_file  # heavy: astropy (kercr.data)

    path, n = plan.path, len(plan.extensions)
    t0, pixels = time.perf_counter(), 0
    with new_fits_file(plan.out, copy_of=path) as f:
        kinds = ("CRMASK", *(("CRPROB",) if save_probability else ()), *(("CLEAN",) if clean else ()))
        for _, extname in plan.extensions:
            for kind in kinds:
                name = mask_extname(extname, plan.single, kind)
                if name.upper() in f.extnames:
                    raise ValueError(f"{path} already holds an extension {name} (an earlier kercr-detect "
                                     "output?); run kercr-detect on the original file.")
        k, written = 0, set()
        for k, ccd in enumerate(ccds, 1):
            if k == 1:
                f.update_primary({**ccd.provenance, "KCRSRC": ascii_card(path.name)[-68:]})
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
            logger.info("%s%s [%s] %d/%d: %d CR pixels (%.3f %%), %d ignored, %.1f s", log_prefix, path.name,
                        ccd.extname, k, n, ccd.n_cr, 100.0 * ccd.n_cr / max(ccd.n_pixels, 1), ccd.n_ignored,
                        ccd.seconds)
        if k != n:  # a caller's bug; the partial file is removed
            raise RuntimeError(f"{path}: {k} CCD results for {n} extensions.")
    logger.info("%swrote %s (%d CCD%s, %.1f s)", log_prefix, plan.out, n, "" if n == 1 else "s",
                time.perf_counter() - t0)
    return pixels


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
    clean : {None, "median", "mean", "idw"}
        Also write a ``float32`` cleaned image of each CCD: the pixels of the written mask replaced.
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
