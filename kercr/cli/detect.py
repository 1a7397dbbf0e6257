"""``kercr-detect`` (cosmic-ray masks of FITS files) and ``kercr-evaluate`` (a model's scores on
labelled frames).

``kercr-detect`` runs :func:`kercr.detection.detect_files` on its inputs: CCD by CCD on every
core (``--jobs``), or file by file on a Dask cluster (``--scheduler``). Each output is what
:func:`kercr.detection.files.detect_file` writes (its docstring describes it: a copy of the input
plus ``CRMASK``/``<EXTNAME>_CRMASK``, optional ``CRPROB`` and ``CLEAN`` extensions, provenance in
the headers). One bad input does not stop the others: each failure is one line, then a summary,
and the exit status is 1; ``--skip-existing`` then does only what is missing.

``kercr-evaluate`` scores a model on labelled frames, see :mod:`kercr.evaluation.report`.

Verbosity is every kercr command's (:mod:`kercr.cli.common`): INFO progress lines by default,
``-q`` warnings and errors only, ``-v`` debug.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from kercr.cli.common import add_verbosity, run, signals_as_interrupt
from kercr.config import DETECT_CLEAN_METHODS, LOCAL_SCHEDULER, RUNTIMES

__all__ = ["detect_main", "detect_parser", "evaluate_main", "evaluate_parser"]

logger = logging.getLogger("kercr.cli.detect")


def _model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options kercr-detect and kercr-evaluate share: which model, and how to run it."""
    parser.add_argument("--model", default="default",
                        help="'default' (the model shipped in kercr/weights) or another shipped model's name "
                             "(kercr/weights/models/NAME), a trained .keras file, or a "
                             "kercr-train run directory (best.keras). Registry names are untrained and refused.")
    parser.add_argument("--threshold", type=float, default=None,
                        help="CR probability threshold (default: the model card's, chosen on validation "
                             "for 0.01 %% false positives; for a run directory without a card, its "
                             "metrics.json threshold_at_fpr_1e-4; else 0.5).")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="inference engine (default auto: the model card's runtime, else keras). "
                             "tflite-int8 is ~2x faster; check its quality first with kercr-evaluate.")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average the prediction over the four flips of each tile (default: the model "
                             "card's choice, on for the shipped model).")
    parser.add_argument("--tta-gate", type=float, default=None, metavar="P",
                        help="with --tta, flip only the windows around pixels whose single-view CR probability "
                             "is >= P (default: the card's, else 0.003; the same masks in about a third of the "
                             "time of flipping everything); 0 flips every pixel (4x the network time).")
    parser.add_argument("--tile", type=int, default=None,
                        help="tile side in pixels (default 512 with Keras, 384 with LiteRT: peak memory 0.48 GB "
                             "for a 2k x 4k CCD with the shipped model).")
    parser.add_argument("--overlap", type=int, default=None,
                        help="tile margin in pixels (default: the network's receptive field).")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="tiles per call (default 4 with TFLite, shared out between its interpreters; 1 with Keras).")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the TFLite runtimes (default: every core this process may use).")
    parser.add_argument("--keep-saturated", action="store_true",
                        help="do not exclude pixels at or above the header's SATURATE level.")
    return add_verbosity(parser)


def detect_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kercr-detect``."""
    parser = argparse.ArgumentParser(
        prog="kercr-detect",
        description="Find cosmic rays in FITS images. For each input, a NEW file <stem>_crmask.fits is written "
                    "(beside the input, or in --out) holding a copy of the input plus a uint8 mask extension "
                    "per CCD (1 = cosmic ray): CRMASK for a single-image file, <EXTNAME>_CRMASK (e.g. "
                    "N4_CRMASK) for a multi-extension file such as a DECam exposure; with --clean, a float32 "
                    "cleaned image (CLEAN / <EXTNAME>_CLEAN) beside each mask. Inputs are never "
                    "modified and no file is ever overwritten.",
        epilog="Exit status: 0 when every input was processed or skipped, 1 when any failed (the others are "
               "still processed; each failure is named on one line), 2 for bad options, 130 after Ctrl-C and 143 after "
               "SIGTERM (the output being written is removed). Outputs appear only "
               "complete, so after a failure or a kill, the same command with --skip-existing does what is "
               "missing. Example: kercr-detect c4d_*_ooi_*.fits.fz --out masks/ --skip-existing",
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
    parser.add_argument("--skip-existing", action="store_true",
                        help="skip inputs whose output exists (counted in the summary), to finish a batch that "
                             "failed or was killed; an output is taken as done only if it was made from this very "
                             "file (its SHA-256, so each input with an output is read once) with the same model, "
                             "--dilate, --clean, --save-probability, --ext and --keep-saturated and, where given, "
                             "--threshold, --runtime, --tta/--no-tta and --tta-gate. "
                             "Without it an existing output fails that input (never overwritten).")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="worker processes, each detecting whole CCDs with --threads/N LiteRT threads (default: "
                             "every core this process may use; 1 with --runtime keras). Output identical to --jobs 1. "
                             "Peak memory on DECam 2k x 4k CCDs: about 0.15 GB + 0.42 GB per worker "
                             "(0.6 GB with --jobs 1). With --scheduler local: the number of Dask workers.")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help=f"run one Dask task per file: '{LOCAL_SCHEDULER}' starts a Dask LocalCluster of --jobs "
                             "workers here; tcp://HOST:8786 uses a running Dask scheduler, whose workers all see "
                             "the inputs and --out under the same paths (README, 'Many machines'). Each task runs "
                             "--threads LiteRT threads (default 1; cores/N with local). Needs pip install "
                             "'kercr[dask]'.")
    parser.add_argument("--save-probability", action="store_true",
                        help="also write the float32 CR probability (CRPROB / <EXTNAME>_CRPROB).")
    parser.add_argument("--clean", nargs="?", const=DETECT_CLEAN_METHODS[0], default=None,
                        choices=DETECT_CLEAN_METHODS, metavar="METHOD",
                        help="also write a float32 cleaned image (CLEAN / <EXTNAME>_CLEAN): the mask's pixels "
                             "(after --dilate) replaced by the median (default), mean or inverse-distance-weighted "
                             "mean ('idw') of their non-CR neighbours, or by the learned inpainting network "
                             f"('network'). METHOD: {', '.join(DETECT_CLEAN_METHODS)}; put a bare "
                             "--clean after the file names.")
    return _model_args(parser)


def _check_model_args(parser, args) -> None:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold {args.threshold}: pass a probability in [0, 1].")
    for flag, value, least, what in (("--tile", args.tile, 1, "a tile side in pixels >= 1"),
                                     ("--overlap", args.overlap, 0, "a margin in pixels >= 0"),
                                     ("--batch-size", args.batch_size, 1, "a number of tiles per call >= 1")):
        if value is not None and value < least:
            parser.error(f"{flag} {value}: pass {what} (default: leave it out).")
    if args.tta_gate is not None and not 0.0 <= args.tta_gate < 1.0:
        parser.error(f"--tta-gate {args.tta_gate}: pass a probability in [0, 1) (0: flip every pixel).")


def _detect(parser, args) -> int:
    if args.dilate < 0:
        parser.error(f"--dilate {args.dilate}: pass a number of pixels >= 0.")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: pass a number of worker processes >= 1 (default: every core).")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: pass a number of CPU threads >= 1 (default: every core).")
    _check_model_args(parser, args)
    # heavy: keeps TensorFlow off --help
    from kercr.detection.batch import detect_files  # heavy: astropy, LiteRT

    # A bad model stops the command before any file (kercr.cli.common.run reports it); a bad file does not.
    # SIGTERM (timeout, Slurm's time limit, docker stop) removes the partial output, as Ctrl-C does.
    with signals_as_interrupt():
        result = detect_files(
            args.files, out_dir=args.out, suffix=args.suffix, model=args.model, ext=args.ext, threshold=args.threshold,
            dilate=args.dilate, save_probability=args.save_probability, clean=args.clean, runtime=args.runtime,
            tta=args.tta, tta_gate=args.tta_gate, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
            num_threads=args.threads, exclude_saturated=not args.keep_saturated, jobs=args.jobs,
            scheduler=args.scheduler, skip_existing=args.skip_existing, progress=False if args.quiet else None)
    if not result.ok:
        logger.error("%d of %d input(s) failed: %s", len(result.failed), len(result.outcomes),
                     ", ".join(o.path for o in result.failed))
        return 1
    return 0


def detect_main(argv=None) -> int:
    """``kercr-detect``: write a CR mask FITS file for every input; returns the exit status."""
    return run(detect_parser(), _detect, argv,
               interrupted="interrupted; every output written so far is complete: rerun with --skip-existing "
                           "to do the rest")


def evaluate_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kercr-evaluate``."""
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
    return _model_args(parser)


def _evaluate(parser, args) -> int:
    if not args.files and args.synthetic < 1:
        parser.error("give labelled FITS files or --synthetic N.")
    if args.synthetic and not (math.isfinite(args.cr_rate_scale) and args.cr_rate_scale > 0):
        parser.error(f"--cr-rate-scale {args.cr_rate_scale}: pass a positive multiple of DECam's CR rate, e.g. 5.")
    _check_model_args(parser, args)
    # heavy: keeps TensorFlow off --help
    from kercr.detection import load_model  # heavy: the model loader; kept off --help
    from kercr.evaluation.report import evaluate  # heavy: imports Keras and TensorFlow, kept off --help

    report = evaluate(
        files=args.files, synthetic=args.synthetic, frame_shape=tuple(args.frame_shape), seed=args.seed,
        cr_rate_scale=args.cr_rate_scale, model=load_model(args.model), out=args.out, threshold=args.threshold,
        runtime=args.runtime, tta=args.tta, tta_gate=args.tta_gate, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
        num_threads=args.threads, exclude_saturated=not args.keep_saturated, maps=args.maps)
    m, d = report["prediction"], report["prediction_dilated_3x3"]
    # The result is the command's output: on stdout, -q or not.
    print(f"TPR at 0.01 % FPR {m['tpr_at_fpr_1e-4']:.4f} (dilated {d['tpr_at_fpr_1e-4']:.4f}), at 0.1 % "
          f"{m['tpr_at_fpr_1e-3']:.4f}; precision at 95 % recall {m['precision_at_recall_0.95']:.4f}; Dice "
          f"{m['dice']:.4f} (dilated {d['dice']:.4f}); wrote {Path(args.out) / 'metrics.json'}")
    return 0


def evaluate_main(argv=None) -> int:
    """``kercr-evaluate``: pooled-pixel metrics and plots of a model on labelled frames."""
    return run(evaluate_parser(), _evaluate, argv)


if __name__ == "__main__":
    sys.exit(detect_main())
