"""Command-line entry points ``kercr-detect`` and ``kercr-evaluate``.

``kercr-detect`` writes, for every input FITS file, a NEW file holding a byte-for-byte copy of the
input (every HDU, in the same order, so HDU indices are unchanged) followed by one ``uint8`` CR mask
extension (1 = cosmic ray) per processed CCD and, with ``--save-probability``, one ``float32``
probability extension. Naming: a file with a single image HDU gets ``CRMASK`` (and ``CRPROB``); a
multi-extension file gets ``<EXTNAME>_CRMASK`` (e.g. ``N4_CRMASK``) and ``<EXTNAME>_CRPROB``. Each
mask header names its image (``KCRSRCEX``) and carries the provenance (``KCRVER`` kercr version,
``KCRMODEL``, ``KCRTHR`` threshold, ``KCRDATE`` UTC date, ``KCRRUNT`` runtime, ``KCRTTA`` whether
the four flips were averaged, ``KCRDIL`` dilation, tiling, counts) and the image's WCS keywords; the primary header carries the same provenance.

With ``--clean [METHOD]`` every processed CCD also gets a ``float32`` cleaned image, ``CLEAN`` (or
``<EXTNAME>_CLEAN``), after its mask: the image with the pixels of the written mask (after
``--dilate``) replaced by :func:`kercr.data.clean_image` (``median``, ``mean`` or ``idw``), every
other pixel as the input. Its header holds the same provenance plus ``KCRCLEAN`` (method) and
``KCRNCLN`` (pixels replaced), and the image's ``BUNIT``.

``kercr-evaluate`` scores a model on labelled frames, see :mod:`kercr.evaluate_report`.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["detect_main", "evaluate_main", "output_path", "mask_extname"]

logger = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits.fz", ".fits.gz", ".fit.gz", ".fts.gz", ".fits", ".fit", ".fts", ".fz")
#: HDUs kercr-detect never treats as CCD images (its own outputs and truth/ignore masks).
_SKIP_EXT = re.compile(r"^(.*_)?(CRMASK|CRPROB|CLEAN|IGNORE)$", re.IGNORECASE)
#: Planes beside the science image in SCI/ERR/DQ-style files (HST, JWST, Gemini, ...): not part of
#: ``--ext all``, though ``--ext NAME`` still picks them.
_AUX_EXT = re.compile(r"^(ERR|DQ|VAR|VARIANCE|IVAR|WHT|WEIGHT|MASK|BPM|CON|SAMP|TIME|OBJMASK)$", re.IGNORECASE)
_WCS_KEYS = re.compile(r"^(WCSAXES|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CD\d_\d|PC\d_\d|PV\d_\d+|CROTA\d|"
                       r"RADESYS|EQUINOX|LTV\d|LTM\d_\d|DATASEC|DETSEC|CCDSEC)$")


def _setup_logging(verbosity: int) -> None:
    """Log kercr's messages to stderr (the only place logging is configured)."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    root = logging.getLogger("kercr")
    root.setLevel(level)
    if not any(getattr(h, "_kercr_cli", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._kercr_cli = True
        root.addHandler(handler)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def output_path(path, out_dir=None, suffix="_crmask") -> Path:
    """``<stem><suffix>.fits`` in ``out_dir`` (default: beside ``path``); compression suffixes dropped."""
    path = Path(path)
    name = path.name
    for s in FITS_SUFFIXES:
        if name.lower().endswith(s):
            name = name[: -len(s)]
            break
    return Path(out_dir if out_dir is not None else path.parent) / f"{name}{suffix}.fits"


def mask_extname(extname: str, single: bool, kind: str = "CRMASK") -> str:
    """``CRMASK`` for a single-image file, ``<EXTNAME>_CRMASK`` for a multi-extension file."""
    return kind if single else f"{extname}_{kind}"


def _select_extensions(path, ext_arg):
    from kercr.data import list_ccd_extensions
    from kercr.data.errors import FITSFormatError

    images = [(i, n) for i, n in list_ccd_extensions(path) if not _SKIP_EXT.match(n)]
    if not images:
        raise FITSFormatError(f"{path}: no CCD image extension (only masks or no image data). Pass a FITS image.")
    if ext_arg in (None, "all"):
        science = [(i, n) for i, n in images if not _AUX_EXT.match(n)]
        if not science:
            raise FITSFormatError(f"{path}: only error, variance, weight or data-quality planes "
                                  f"{[n for _, n in images]}; pass --ext NAME to process one of them anyway.")
        if len(science) < len(images):
            logger.info("%s: skipping %s (error/variance/quality planes; --ext NAME picks one)", path,
                        ", ".join(n for i, n in images if _AUX_EXT.match(n)))
        return science, len(images) == 1
    wanted = [e.strip() for e in ext_arg.split(",") if e.strip()]
    chosen = []
    for e in wanted:
        match = [(i, n) for i, n in images if n.upper() == e.upper() or (e.isdigit() and i == int(e))]
        if not match:
            raise FITSFormatError(f"{path}: extension {e!r} not found among the image extensions "
                                  f"{[n for _, n in images]}. Pass --ext with one of them, or --ext all.")
        chosen.extend(m for m in match if m not in chosen)  # --ext 1,N4 naming one HDU twice does it once
    return chosen, len(images) == 1


def _provenance(args, result, version: str) -> dict:
    clean = {"KCRCLEAN": (args.clean, "CR cleaning method (CLEAN extensions)")} if args.clean else {}
    return {
        "KCRVER": (version, "kercr version"),
        "KCRMODEL": (str(result.model_name)[-60:], "kercr model"),
        "KCRTHR": (float(result.threshold), "CR probability threshold"),
        "KCRDATE": (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC"),
        "KCRRUNT": (result.runtime, "kercr inference runtime"),
        "KCRTTA": (bool(result.tta), "prediction averaged over 4 flips"),
        "KCRDIL": (int(args.dilate), "mask dilation, pixels (3x3 element)"),
        "KCRTILE": (f"{result.tile[0]}x{result.tile[1]}", "tile shape, pixels"),
        "KCROVLP": (int(result.overlap), "tile overlap margin, pixels"),
        **clean,
    }


def _copy_input(src: Path, tmp: Path) -> None:
    if src.name.lower().endswith(".gz"):  # appending to gzip does not work: write plain FITS
        from astropy.io import fits

        with fits.open(src, do_not_scale_image_data=True) as hdul:
            hdul.writeto(tmp, output_verify="silentfix")
    else:
        shutil.copyfile(src, tmp)


def _finish(tmp: Path, out: Path) -> None:
    try:
        os.link(tmp, out)  # fails if out exists: never overwrite, even in a race
        tmp.unlink()
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system
        if out.exists():
            raise FileExistsError(f"{out}: already exists") from None
        os.replace(tmp, out)


def _process_file(path: Path, args, loaded, index: int, total: int) -> Path:
    from astropy.io import fits

    from kercr import __version__
    from kercr.data import read_ccd
    from kercr.data.errors import FITSFileNotFoundError
    from kercr.inference import detect

    if not path.exists():
        raise FITSFileNotFoundError(f"{path}: file not found. Check the path.")
    out = output_path(path, args.out, args.suffix)
    if out.exists():
        raise FileExistsError(f"{out} already exists and kercr never overwrites files: pass --out DIR (or "
                              "--suffix) for a new name, or remove the file.")
    extensions, single = _select_extensions(path, args.ext)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    t0 = time.perf_counter()
    try:
        _copy_input(path, tmp)
        with fits.open(tmp) as existing:
            names = {h.name.upper() for h in existing}
        first = True
        for k, (hdu_index, extname) in enumerate(extensions, 1):
            t1 = time.perf_counter()
            frame = read_ccd(path, hdu_index)
            result = detect(frame, model=loaded, threshold=args.threshold, tile=args.tile, overlap=args.overlap,
                            batch_size=args.batch_size, runtime=args.runtime, num_threads=args.threads,
                            tta=args.tta, exclude_saturated=not args.keep_saturated,
                            clean=args.clean, clean_dilate=args.dilate)
            mask = result.dilated_mask(args.dilate) if args.dilate else result.mask
            prov = _provenance(args, result, __version__)
            if first:
                with fits.open(tmp, mode="update") as hdul:
                    for key, value in prov.items():
                        hdul[0].header[key] = value
                    hdul[0].header["KCRSRC"] = str(path.name)[-68:]
                first = False
            header = fits.Header()
            for card in frame.header.cards:
                if _WCS_KEYS.match(card.keyword):
                    header.append(card)
            for key, value in prov.items():
                header[key] = value
            header["KCRSRCEX"] = (extname, "image extension this mask belongs to")
            header["KCRNCR"] = (int(mask.sum()), "flagged (CR) pixels")
            header["KCRNIGN"] = (int(result.ignored.sum()), "ignored pixels (NaN/inf, saturated)")
            header["KCRSKY"] = (float(result.normalization.sky), "sky, image units")
            header["KCRNOISE"] = (float(result.normalization.noise), "noise, image units")
            mname = mask_extname(extname, single)
            pname = mask_extname(extname, single, "CRPROB")
            cname = mask_extname(extname, single, "CLEAN")
            for name in (mname, *((pname,) if args.save_probability else ()), *((cname,) if args.clean else ())):
                if name.upper() in names:
                    raise ValueError(f"{path} already holds an extension {name} (an earlier kercr-detect "
                                     "output?); run kercr-detect on the original file.")
            header["EXTNAME"] = mname
            header["BUNIT"] = ("", "1 = cosmic ray, 0 = not")
            fits.append(tmp, mask.astype(np.uint8), header=header)
            if args.save_probability:
                header["EXTNAME"] = pname
                header["BUNIT"] = ("", "CR probability")
                fits.append(tmp, result.probability, header=header)
            if args.clean:
                header["EXTNAME"] = cname
                header["BUNIT"] = (str(frame.header.get("BUNIT", "")), "as the image; CR pixels replaced")
                header["KCRNCLN"] = (int(mask.sum()), "pixels replaced by cleaning (the mask's)")
                fits.append(tmp, result.clean, header=header)
            logger.info("[%d/%d] %s [%s] %d/%d: %d CR pixels (%.3f %%), %d ignored, %.1f s", index, total, path.name,
                        extname, k, len(extensions), int(mask.sum()), 100.0 * mask.mean(),
                        int(result.ignored.sum()), time.perf_counter() - t1)
        _finish(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("[%d/%d] wrote %s (%d CCD%s, %.1f s)", index, total, out, len(extensions),
                "" if len(extensions) == 1 else "s", time.perf_counter() - t0)
    return out


def _common_model_args(parser):
    from kercr.inference import RUNTIMES

    parser.add_argument("--model", default="default",
                        help="'default' (the model shipped in kercr/weights), a trained .keras file, or a "
                             "kercr-train run directory (best.keras). Registry names are untrained and refused.")
    parser.add_argument("--threshold", type=float, default=None,
                        help="CR probability threshold (default: the model card's, chosen on validation "
                             "for 0.01 %% false positives; for a run directory without a card, its "
                             "metrics.json threshold_at_fpr_1e-4; else 0.5).")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="inference engine (default auto: the model card's runtime, else keras). "
                             "tflite-int8 is ~2x faster; check its quality first with kercr-evaluate.")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average each tile's prediction over its four flips (4x the time; default: the "
                             "model card's choice, on for the shipped model).")
    parser.add_argument("--tile", type=int, default=None, help="tile side in pixels (default 512: peak memory < 1.5 GB for a 2k x 4k CCD).")
    parser.add_argument("--overlap", type=int, default=None,
                        help="tile margin in pixels (default: the network's receptive field).")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="tiles per call (default 4 with TFLite, shared out between its interpreters; 1 with Keras).")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the TFLite runtimes (default: every core this process may use).")
    parser.add_argument("--keep-saturated", action="store_true",
                        help="do not exclude pixels at or above the header's SATURATE level.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more messages (-vv: debug).")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only.")


def _load(args):
    from kercr.inference import load_model

    return load_model(args.model)


def detect_main(argv=None) -> int:
    """``kercr-detect``: write a CR mask FITS file for every input; returns the exit status."""
    from kercr.data.cleaning import CLEAN_METHODS

    parser = argparse.ArgumentParser(
        prog="kercr-detect",
        description="Find cosmic rays in FITS images. For each input, a NEW file <stem>_crmask.fits is written "
                    "(beside the input, or in --out) holding a copy of the input plus a uint8 mask extension "
                    "per CCD (1 = cosmic ray): CRMASK for a single-image file, <EXTNAME>_CRMASK (e.g. "
                    "N4_CRMASK) for a multi-extension file such as a DECam exposure; with --clean, a float32 "
                    "cleaned image (CLEAN / <EXTNAME>_CLEAN) beside each mask. Inputs are never "
                    "modified and no file is ever overwritten.",
        epilog="Exit status: 0 when every input was processed, 1 when any failed (the others are still "
               "processed), 2 for bad options. Example: kercr-detect c4d_*_ooi_*.fits.fz --out masks/",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="FITS files (.fits, .fits.fz, .fits.gz).")
    parser.add_argument("--ext", default="all",
                        help="image extensions to process: 'all' (default: every image HDU but error, variance, "
                             "weight and data-quality planes such as ERR, VAR, DQ), or names/indices separated by "
                             "commas, e.g. N4,S22.")
    parser.add_argument("--dilate", type=int, default=0, metavar="N",
                        help="grow the mask by N pixels (3x3 element, N times; default 0).")
    parser.add_argument("--out", default=None, metavar="DIR", help="output directory (default: beside each input).")
    parser.add_argument("--suffix", default="_crmask", help="output name suffix (default _crmask).")
    parser.add_argument("--save-probability", action="store_true",
                        help="also write the float32 CR probability (CRPROB / <EXTNAME>_CRPROB).")
    parser.add_argument("--clean", nargs="?", const=CLEAN_METHODS[0], default=None, choices=CLEAN_METHODS,
                        metavar="METHOD",
                        help="also write a float32 cleaned image (CLEAN / <EXTNAME>_CLEAN): the mask's pixels "
                             "(after --dilate) replaced by the median (default), mean or inverse-distance-weighted "
                             f"mean ('idw') of their non-CR neighbours. METHOD: {', '.join(CLEAN_METHODS)}; put a bare "
                             "--clean after the file names.")
    _common_model_args(parser)
    args = parser.parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    if args.dilate < 0:
        parser.error(f"--dilate {args.dilate}: pass a number of pixels >= 0.")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold {args.threshold}: pass a probability in [0, 1].")
    try:
        loaded = _load(args)
    except (ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 1
    failed = []
    for i, name in enumerate(args.files, 1):
        path = Path(name)
        try:
            _process_file(path, args, loaded, i, len(args.files))
        except KeyboardInterrupt:
            raise
        except Exception as err:  # one bad input must not stop the others
            logger.error("[%d/%d] %s failed: %s", i, len(args.files), path, err)
            failed.append(str(path))
    if failed:
        logger.error("%d of %d input(s) failed: %s", len(failed), len(args.files), ", ".join(failed))
        return 1
    return 0


def evaluate_main(argv=None) -> int:
    """``kercr-evaluate``: pooled-pixel metrics and plots of a model on labelled frames."""
    parser = argparse.ArgumentParser(
        prog="kercr-evaluate",
        description="Score a CR model on labelled frames: pooled TPR at 0.01 % and 0.1 % FPR, precision at "
                    "95 % recall, Dice at the default and the best threshold, each without and with 3x3 "
                    "dilation of the prediction, ignored pixels excluded. Writes metrics.json and PNG plots "
                    "(ROC, PR, prediction maps, activation and attention maps) to --out.",
        epilog="Labelled FITS files hold the image (first image extension), the truth in an extension "
               "CRMASK (non-zero = CR) and optionally IGNORE (non-zero = excluded). Without files, "
               "--synthetic N scores N synthetic DECam-like frames.",
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="labelled FITS files (image + CRMASK [+ IGNORE]).")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N", help="score N synthetic frames.")
    parser.add_argument("--frame-shape", type=int, nargs=2, default=[1024, 1024], metavar=("NY", "NX"),
                        help="synthetic frame shape in pixels (default 1024 1024).")
    parser.add_argument("--seed", type=int, default=1000, help="synthetic test-set seed (default 1000).")
    parser.add_argument("--cr-rate-scale", type=float, default=5.0,
                        help="synthetic CR rate as a multiple of DECam's (default 5, as kercr-train).")
    parser.add_argument("--maps", type=int, default=3, help="frames drawn as prediction maps (default 3).")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (metrics.json, *.png).")
    _common_model_args(parser)
    args = parser.parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    if not args.files and args.synthetic < 1:
        parser.error("give labelled FITS files or --synthetic N.")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold {args.threshold}: pass a probability in [0, 1].")
    from kercr.evaluate_report import evaluate

    try:
        loaded = _load(args)
        report = evaluate(
            files=args.files, synthetic=args.synthetic, frame_shape=tuple(args.frame_shape), seed=args.seed,
            cr_rate_scale=args.cr_rate_scale, model=loaded, out=args.out, threshold=args.threshold,
            runtime=args.runtime, tta=args.tta, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
            num_threads=args.threads, exclude_saturated=not args.keep_saturated, maps=args.maps)
    except (ValueError, OSError) as err:
        logger.error("%s", err)
        return 1
    m, d = report["prediction"], report["prediction_dilated_3x3"]
    # The result is the command's output: on stdout, -q or not.
    print(f"TPR at 0.01 % FPR {m['tpr_at_fpr_1e-4']:.4f} (dilated {d['tpr_at_fpr_1e-4']:.4f}), at 0.1 % "
          f"{m['tpr_at_fpr_1e-3']:.4f}; precision at 95 % recall {m['precision_at_recall_0.95']:.4f}; Dice "
          f"{m['dice']:.4f} (dilated {d['dice']:.4f}); wrote {Path(args.out) / 'metrics.json'}")
    return 0
