"""``kercr-export``: write a kercr model as a TF Serving SavedModel and TFLite files.

The library behind it is :mod:`kercr.export` (:func:`kercr.export.export_model`). Verbosity is
every kercr command's (:mod:`kercr.cli.common`): INFO progress lines by default, ``-q`` warnings
and errors only, ``-v`` debug. Changed: the default used to be warnings only, with ``-v`` for
INFO and ``-vv`` for debug.
"""

from __future__ import annotations

import argparse
import sys

from kercr.cli.common import add_verbosity, parse_overrides, run, signals_as_interrupt

__all__ = ["export_parser", "main"]

_DESCRIPTION = """\
Export a kercr cosmic-ray model for serving.

MODEL is one of
  * a .keras file (its normalization constants are read from normalization.json in the same
    directory, else from the "normalization" of its model card NAME.json; without either the
    default NormalizationConfig is used and a warning is logged),
  * a training run directory holding best.keras (preferred) or model.keras,
  * a registry name (kercr-models lists them): an UNTRAINED model, for tests and benchmarks.

Output: OUT/NAME/VERSION/ (TF Serving's layout) with
  saved_model.pb + variables/   signature serving_default: input `image` = RAW pixels, float32
                                [batch, H, W, 1]; output `cr_probability`; normalizes inside
                                (with --header-noise training, also `gain`, `readnoise` [batch]).
  tflite/NAME_<variant>.tflite  input `image` = NORMALIZED pixels [1, tile, tile, 1]
                                (kercr.data.normalize first); conv models resize at run time.
  parity.json, export.json, normalization.json
Files are written to a hidden temporary directory and renamed at the end; an existing version is
never overwritten, and a failed export leaves nothing behind.
"""

_EPILOG = """\
exit status: 0 exported, 1 the export failed (one line says why), 2 bad options, 130 Ctrl-C, 143 SIGTERM.

examples:
  kercr-export runs/deepcr --out models                       # SavedModel + float32 TFLite
  kercr-export runs/deepcr --out models --profile export/edge.toml
  kercr-export best.keras --out models --formats tflite --quantize none,float16,dynamic,int8
  kercr-export transunet --set input_size=64 --out /tmp/m     # untrained, for a smoke test
"""


def _csv(value: str) -> list:
    return [v.strip() for v in value.split(",") if v.strip()]


def export_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kercr-export``."""
    p = argparse.ArgumentParser(prog="kercr-export", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL_OR_RUN_DIR",
                   help=".keras file, run directory, 'default' (the shipped model) or registry name")
    p.add_argument("--out", required=True, metavar="DIR", help="base directory; the export goes to DIR/NAME/VERSION")
    p.add_argument("--profile", metavar="FILE", help="TOML/JSON profile (e.g. export/serving.toml); flags win over it")
    p.add_argument("--formats", type=_csv, metavar="LIST", help="comma list of savedmodel,tflite (default: both)")
    p.add_argument("--quantize", type=_csv, metavar="LIST",
                   help="TFLite variants, comma list of none,float16,dynamic,int8 (default: none = float32)")
    p.add_argument("--name", help="model name: directory and TF Serving MODEL_NAME (default: kercr)")
    p.add_argument("--version", type=int, help="version directory (default: next free integer)")
    p.add_argument("--tile", type=int,
                   help="TFLite input side and parity patch size (default 256; a TransUNet's own fixed tile)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="builder option for a registry name, e.g. --set input_size=64")
    p.add_argument("--normalization", metavar="FILE", help="normalization JSON replacing the normalization.json sidecar")
    p.add_argument("--calibration-patches", type=int, help="int8 calibration patches (default 16)")
    p.add_argument("--validation-patches", type=int, help="parity patches (default 8)")
    p.add_argument("--seed", type=int, help="seed of the synthetic calibration/parity patches (default 0)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="export the model averaged over the four flips of each tile, as kercr.detect runs it "
                        "(4x the time; default: the model card's choice, on for the shipped model)")
    return add_verbosity(p)


def _export(parser, args) -> int:
    overrides = parse_overrides(parser, args.set)
    from kercr.export.exporter import FORMATS, ExportError, check_options, export_model  # heavy: TensorFlow, kept off --help
    from kercr.export.profiles import load_profile  # heavy: kercr.export imports TensorFlow, kept off --help

    options = load_profile(args.profile) if args.profile else {}
    for key in ("formats", "quantize", "name", "tile", "calibration_patches", "validation_patches", "seed", "tta"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    try:  # a bad option value is a usage error (status 2), found before the model loads
        check_options(options.get("formats", FORMATS), options.get("quantize", ("none",)), options.get("name", "kercr"),
                      args.version, **{k: options[k] for k in ("calibration_patches", "validation_patches") if k in options})
    except ExportError as err:
        parser.error(str(err))
    with signals_as_interrupt():  # SIGTERM (timeout, Slurm, docker stop) cleans up as Ctrl-C does
        result = export_model(args.model, args.out, version=args.version, overrides=overrides,
                              normalization=args.normalization, **options)
    sys.stdout.write(f"exported to {result.path}\n")
    if "savedmodel" in result.parity:
        sys.stdout.write(f"  savedmodel: max |dp| = {result.parity['savedmodel']['max_abs_delta_p']:.2e}\n")
    for variant, r in result.parity.get("tflite", {}).items():
        tpr = r["tpr_at_fpr"]["delta"]
        exact = f" (vs exact {r['exact']['max_abs_delta_p']:.2e})" if "exact" in r else ""
        sys.stdout.write(f"  tflite {variant}: {r['bytes']} bytes, max |dp| = {r['max_abs_delta_p']:.2e}{exact}, "
                         f"dTPR = {'n/a' if tpr is None else f'{tpr:+.4f}'}, dDice = {r['dice']['delta']:+.4f}\n")
    return 0


def main(argv=None) -> int:
    """Run ``kercr-export``; returns the exit status (0 ok, 1 export error, 2 usage error)."""
    return run(export_parser(), _export, argv)


if __name__ == "__main__":
    sys.exit(main())
