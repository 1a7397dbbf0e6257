"""``kercr-train`` (train a CR detector; the same command resumes it) and ``kercr-prepare``
(write a data set as sharded TFRecords).

:func:`train_parser` and :func:`train_flags` are public: ``benchmarks/device_training.py`` resolves
a ``kercr-train`` command line into its :class:`kercr.config.TrainConfig` with them.

Verbosity is every kercr command's (:mod:`kercr.cli.common`): INFO progress lines by default,
``-q`` warnings and errors only (and no Keras progress bar), ``-v`` debug.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

from kercr.cli.common import add_verbosity, parse_overrides, run, verbosity
from kercr.config import (
    ConfigError,
    FAINT_CRS,
    LOCAL_AXES,
    LOCAL_EDGES,
    LOSSES,
    LR_SCHEDULES,
    NOISE_ESTIMATORS,
    NOISE_MODELS,
    STRATEGIES,
    VARIETIES,
    TrainConfig,
    read_config_file,
    resolve_config,
)

__all__ = ["prepare_main", "prepare_parser", "train_flags", "train_main", "train_parser"]


def train_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kercr-train`` (every :class:`kercr.config.TrainConfig` option)."""
    parser = argparse.ArgumentParser(
        prog="kercr-train",
        description=(
            "Train a cosmic-ray detector. With no options it trains the deepCR-style UNet on "
            "kercr's embedded synthetic DECam-like data set (nothing is downloaded). Options come "
            "from the defaults, then --config FILE, then the flags given here. The run directory "
            "(--out) receives the resolved config, best/last models, history.csv, TensorBoard logs, "
            "loss/Dice plots and metrics.json. Run the same command again to resume an "
            "interrupted run from its last finished epoch."
        ),
    )
    add = parser.add_argument
    add("--model", help="architecture (see kercr-models), default deepcr")
    add("--set", metavar="KEY=VALUE", action="append", default=[],
        help="model builder option, e.g. --set num_heads=12 (repeatable)")
    add("--config", metavar="FILE", help="TOML or YAML file with any of these options (flags override it)")
    add("--data", help="'synthetic' (default) or a directory of FITS frames / kercr-prepare shards")
    add("--epochs", type=int)
    add("--steps-per-epoch", type=int, help="training batches per epoch")
    add("--validation-steps", type=int, help="validation batches per evaluation")
    add("--patch-size", type=int, help="patch height and width in pixels (default 256)")
    add("--batch-size", type=int, help="patches per batch (default 16)")
    add("--learning-rate", type=float, help="initial Adam learning rate (default 1e-3)")
    add("--lr-factor", type=float, help="factor the learning rate is multiplied by when the validation loss "
        "stalls (default 0.5)")
    add("--lr-patience", type=int, help="epochs without a better validation loss before that (default 3)")
    add("--min-learning-rate", type=float, help="floor of the learning rate (default 1e-6)")
    add("--lr-schedule", choices=LR_SCHEDULES, help="plateau: the cuts above (default); cosine: a half cosine "
        "from --learning-rate to --min-learning-rate over all the run's steps")
    add("--loss", choices=LOSSES,
        help="(1 - Dice + BCE) / 2 (default), Cosmic-CoNN's median-weighted BCE, or plain BCE")
    add("--alpha-epochs", type=int, help="median_bce: epochs over which alpha rises to 1")
    add("--alpha-start", type=float, help="median_bce: the floor alpha of the median weights at epoch 0 (default 0)")
    _add_data_flags(add)
    add("--strategy", choices=STRATEGIES,
        help="tf.distribute strategy; multiworker reads TF_CONFIG")
    add("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
        help="mixed float16 (GPU) / bfloat16 (CPU) training; output probabilities stay float32 (default off)")
    add("--tensorboard-images", type=int, metavar="N",
        help="validation patches drawn as image | truth | prediction in TensorBoard each epoch (default 4)")
    add("--out", help="run directory (default runs/kercr)")
    add("--seed", type=int)
    return add_verbosity(parser)



def _add_data_flags(add) -> None:
    """``kercr-train``'s data flags (``add``: the parser's ``add_argument``): the frames, the synthetic
    data's options, real footprints, the input normalization and ``--init-weights``, in ``--help``'s order."""
    add("--frames", type=int, help="synthetic exposures to generate (split 90/10 by exposure)")
    add("--frame-shape", type=int, nargs=2, metavar=("NY", "NX"),
        help="synthetic frame shape in pixels (default 4096 2048, a DECam CCD)")
    add("--patches-per-frame", type=int, metavar="N",
        help="patches cut from each frame (default 128 per 2k x 4k CCD, scaled by area)")
    add("--val-fraction", type=float, help="fraction of the exposures held out for validation (default 0.1)")
    add("--cr-rate-scale", type=float,
        help="synthetic CR rate as a multiple of DECam's 0.6 per second per CCD (default 5)")
    add("--footprints", metavar="PATH",
        help="real CR footprints to inject too: a footprint table (FITS) or a folder of dark frames")
    add("--footprint-fraction", type=float,
        help="synthetic data: real footprints per frame as a fraction of the simulated CRs (default 0.5)")
    add("--variety", choices=VARIETIES,
        help="synthetic data: DECam-like frames (default) or a random CCD imager per frame (any-CCD models)")
    add("--extended-sources", type=float, metavar="N",
        help="synthetic data: large smooth sources (big galaxies, diffuse light) per 1024x1024 pixels (default 0)")
    add("--on-source-fraction", type=float, metavar="F",
        help="synthetic data: fraction of the real footprints put on stars/galaxies/halos (default 0: anywhere)")
    add("--sky-e-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
        help="synthetic data, --variety wide: sky level range in e-/pixel, log-uniform, capped at 30%% of "
             "saturation (default 3 e- to the cap); a higher LOW trains on more bright skies")
    add("--cr-threshold-e", type=float, metavar="E",
        help="synthetic data: simulated CRs keep only pixels above E electrons (image and truth), like "
             "footprints harvested from dark frames (about 50 e-); default half the read noise")
    add("--faint-crs", choices=FAINT_CRS,
        help="synthetic data: CR pixels fainter than the noise are left out of the loss (default), "
             "labelled not-CR or labelled CR")
    add("--rim-weight", type=float, metavar="W",
        help="loss weight of the non-CR pixels touching a CR (default 1): a false positive there costs W times")
    add("--init-weights", metavar="MODEL",
        help="fine-tune: start from a .keras file, a run directory's best.keras or 'default' (the shipped model)")
    add("--asinh-softening", type=float, metavar="S",
        help="input stretch S*asinh(x/S) in noise units after normalization (default: linear)")
    add("--noise-estimator", choices=NOISE_ESTIMATORS,
        help="how the normalization measures a frame's noise: MAD of the pixels (default), of "
             "differences two pixels apart (diff2: not inflated by star halos), or their clipped std "
             "(diff2_std: also right on integer-valued frames)")
    add("--noise-model", choices=NOISE_MODELS,
        help="one sky and noise per frame (default), background and noise maps from 32x32-pixel blocks "
             "(local: galaxies, nebulae and gradients are measured in their own noise), or the background map "
             "and the frame's noise scaled by the block noise map (relative)")
    add("--local-axis", choices=LOCAL_AXES,
        help="--noise-model local or relative: a block's noise from the larger (default) or the smaller of its row and column "
             "estimates (smaller: not inflated by structure along one axis)")
    add("--local-edges", choices=LOCAL_EDGES,
        help="--noise-model local or relative: pad the block grid for its 3x3 median by reflection (default) or by repeating "
             "the edge block (nearest: the outer ring does not read one block inward)")
    add("--block-size", type=int, metavar="PX",
        help="--noise-model local or relative: block side of the background and noise maps in pixels (default 32)")
    add("--local-gate", type=float, metavar="SIGMA",
        help="--noise-model relative: use the maps only where the background departs from the frame's sky by "
             "more than SIGMA noise units (fully beyond 2 SIGMA), the one sky and noise elsewhere "
             "(default: the maps everywhere)")
    add("--local-min-blocks", type=int, metavar="N",
        help="--noise-model relative: frames narrower than N blocks on either side get one sky and noise "
             "(default: the maps on every frame)")
    add("--header-noise", type=float, nargs=2, metavar=("LOW", "HIGH"),
        help="the frame noise from each frame's gain and read noise (synthetic imager, FITS header) "
             "wherever the measured noise is LOW-HIGH times that, e.g. 0.9 1.6 (default: measured)")
    add("--dominant-sources", type=float, metavar="F",
        help="synthetic data: fraction of frames with one galaxy or nebula covering 30-70%% of the field (default 0)")
    add("--integer-frames", type=float, metavar="F",
        help="synthetic data: fraction of frames from a high-gain, low-sky imager in integer ADU (default 0)")
    add("--bright-tracks", type=float, metavar="N",
        help="synthetic data: straight, heavily ionizing CR tracks per 1024 x 1024 pixels, half of them near a "
             "row or a column (default 0)")


def train_flags(parser, args) -> dict:
    """The :class:`kercr.config.TrainConfig` options of parsed ``kercr-train`` arguments (None: not given)."""
    # Every option has its flag (model_options: --set), so a flag name is its option's name.
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "model_options"}
    flags["model_options"] = parse_overrides(parser, args.set) or None
    return flags


def _train(parser, args) -> int:
    flags = train_flags(parser, args)
    file_options = read_config_file(args.config) if args.config else {}
    # A config file may say what its run should give (configs/quickstart.toml does): printed after
    # the run's own figures, it is not a training option.
    expect = file_options.pop("expect", None)
    if expect is not None and not isinstance(expect, str):
        raise ConfigError(f"expect={expect!r} in {args.config} must be a string (a note printed after the run).")
    config = resolve_config(file_options, flags)
    from kercr.training import train  # heavy: imports Keras and TensorFlow, kept off --help

    # -q: no Keras progress bar either; into a file or a pipe (Slurm, nohup, CI), a line per epoch, not a
    # progress bar redrawn at every step (megabytes of log, and a pipe nobody reads fills and stops the run).
    keras_verbose = 0 if verbosity(args) < 0 else "auto" if sys.stdout.isatty() else 2
    metrics = train(config, verbose=keras_verbose)  # checks the model and patch size before any data is made
    if metrics:
        print(
            f"validation ({metrics['cr_pixels']:,} CR and {metrics['non_cr_pixels']:,} other pixels, "
            f"{metrics['ignored_pixels']:,} ignored): Dice {metrics['dice']:.4f} at p >= 0.5, "
            f"best Dice {metrics['best_dice']:.4f}, TPR {metrics['tpr_at_fpr_1e-4']:.4f} at 0.01 % FPR, "
            f"TPR {metrics['tpr_at_fpr_1e-3']:.4f} at 0.1 % FPR, "
            f"precision {metrics['precision_at_recall_0.95']:.4f} at 95 % recall -> {config.out}"
        )
        if expect:
            print(f"expected: {expect}")
    return 0


def train_main(argv=None) -> int:
    """``kercr-train``: train a CR detector; re-running the same command resumes the run."""
    return run(train_parser(), _train, argv, interrupted="interrupted; run the same command again to resume.")


def prepare_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kercr-prepare``."""
    parser = argparse.ArgumentParser(
        prog="kercr-prepare",
        description=(
            "Cut frames into (image, mask, weight) patches and write them as sharded TFRecord files "
            "(DIR/train/, DIR/val/, DIR/prepare.json), split 90/10 by exposure. DIR can be any "
            "tf.io.gfile path, e.g. a local folder or gs://bucket/path. Train from it with "
            "kercr-train --data DIR. An interrupted run resumes: run the same command again."
        ),
    )
    add = parser.add_argument
    add("--data", default="synthetic",
        help="'synthetic' (default), a directory of FITS frames, or the LCO CR dataset (Cosmic-CoNN)")
    add("--out", required=True, help="output folder (new, or an unfinished run of the same command)")
    add("--frames", type=int, default=20, help="synthetic exposures to generate (default 20)")
    add("--frame-shape", type=int, nargs=2, default=[4096, 2048], metavar=("NY", "NX"),
        help="synthetic frame shape in pixels (default 4096 2048)")
    add("--patch-size", type=int, default=256)
    add("--patches-per-frame", type=int, default=None, help="default: 128 per 2k x 4k CCD, scaled by area")
    add("--cr-rate-scale", type=float, default=5.0,
        help="CR rate as a multiple of DECam's 0.6 per second per CCD (default 5)")
    add("--median-weights", action="store_true", help="Cosmic-CoNN median weights instead of ones")
    add("--val-fraction", type=float, default=0.1)
    add("--shard-size", type=int, default=1024, help="patches per shard file")
    add("--seed", type=int, default=0)
    return add_verbosity(parser)


def _prepare(parser, args) -> int:
    if args.shard_size < 1:
        parser.error(f"--shard-size {args.shard_size}: pass a number of patches per shard file >= 1 (default 1024).")
    for flag, value, low in (("--patch-size", args.patch_size, 1), ("--frames", args.frames, 2),
                             ("--patches-per-frame", args.patches_per_frame, 1)):
        if value is not None and value < low:
            parser.error(f"{flag} {value}: pass a whole number >= {low}.")
    if not (math.isfinite(args.cr_rate_scale) and args.cr_rate_scale > 0):
        parser.error(f"--cr-rate-scale {args.cr_rate_scale}: pass a positive multiple of DECam's CR rate, e.g. 5.")
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction {args.val_fraction}: pass a fraction in (0, 1), e.g. 0.1.")
    import tensorflow as tf  # kept off --help

    from kercr.data.errors import KercrDataError  # heavy: the data core (astropy, scipy), kept off --help
    from kercr.data.frames import FITSFrames, SyntheticFrames  # heavy: the data core, kept off --help
    from kercr.data.lco import LCOFrames, is_lco_dataset  # heavy: the data core, kept off --help
    from kercr.data.patches import default_patch_count  # heavy: the data core, kept off --help
    from kercr.data.pipeline import prepare_shards  # heavy: imports TensorFlow, kept off --help

    if args.data == "synthetic":
        source = SyntheticFrames(seed=args.seed, shape=args.frame_shape, cr_rate_scale=args.cr_rate_scale,
                                 median_weights=args.median_weights, cache=1)
        ids = source.exposure_ids(args.frames)
        per_frame = args.patches_per_frame or default_patch_count(tuple(args.frame_shape))
    elif os.path.isdir(args.data) and is_lco_dataset(args.data):
        source = LCOFrames(args.data, seed=args.seed, median_weights=args.median_weights, cache=1)
        ids = source.exposure_ids()
        per_frame = args.patches_per_frame or 128
    else:
        if not os.path.isdir(args.data):
            raise KercrDataError(f"--data {args.data!r}: no such directory; pass 'synthetic' or a FITS folder.")
        source = FITSFrames(args.data, seed=args.seed, cr_rate_scale=args.cr_rate_scale,
                            median_weights=args.median_weights, cache=1)
        ids = source.exposure_ids()
        per_frame = args.patches_per_frame or 128
    if args.data == "synthetic" and min(args.frame_shape) < args.patch_size:
        raise KercrDataError(f"--patch-size {args.patch_size} is larger than the frames {args.frame_shape}.")
    try:
        meta = prepare_shards(source, ids, args.out, patch_size=args.patch_size, patches_per_frame=per_frame,
                              val_fraction=args.val_fraction, seed=args.seed, shard_size=args.shard_size,
                              metadata={"data": args.data, "median_weights": args.median_weights,
                                        "cr_rate_scale": args.cr_rate_scale,  # what shapes the frames: a
                                        "frame_shape": list(args.frame_shape),  # resume with others is refused
                                        "val_fraction": args.val_fraction})
    except tf.errors.OpError as err:  # an --out that cannot be written (a file in the way, a bucket without access)
        raise OSError(f"cannot write to --out {args.out!r}: {err.message}") from err
    print(f"wrote {meta['train']['exposures']} training and {meta['val']['exposures']} validation exposures "
          f"({per_frame} patches of {args.patch_size} px each) to {args.out}")
    return 0


def prepare_main(argv=None) -> int:
    """``kercr-prepare``: write a data set as sharded TFRecords for ``kercr-train --data DIR``."""
    return run(prepare_parser(), _prepare, argv, interrupted="interrupted; run the same command again to resume.")


if __name__ == "__main__":
    sys.exit(train_main())
