"""``kercr-models``: list the architectures with their parameter counts, or summarize one.

Verbosity is every kercr command's (:mod:`kercr.cli.common`): INFO progress lines by default,
``-q`` warnings and errors only, ``-v`` debug. Changed: the default used to be warnings only, with
``-v`` for INFO.
"""

from __future__ import annotations

import argparse
import sys

from kercr.cli.common import add_verbosity, parse_overrides, run

__all__ = ["models_main", "models_parser"]


def models_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kercr-models``."""
    parser = argparse.ArgumentParser(
        prog="kercr-models",
        description=(
            "List kercr's cosmic-ray detection architectures with their trainable-parameter "
            "counts next to the reference research's, or print the Keras summary of one."
        ),
    )
    parser.add_argument(
        "name", nargs="?", help="print the Keras summary of this architecture (e.g. transunet)"
    )
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[],
        help="override a builder option, e.g. --set num_heads=12 (values parsed as Python literals)",
    )
    parser.add_argument("--skip-large", action="store_true",
                        help="skip the ~105 M-parameter R50-ViT-B/16 TransUNet in the table")
    return add_verbosity(parser)


def _models(parser, args) -> int:
    overrides = parse_overrides(parser, args.set)
    if overrides and not args.name:
        parser.error("--set changes one architecture: name it, e.g. kercr-models deepcr_2_32 --set filters=[48,96]")

    from kercr.models import (  # heavy: imports Keras and TensorFlow, kept off --help
        DEEPCR_ORIGINAL_PARAMS,
        REFERENCE_TABLE,
        build_model,
        count_trainable,
        get_spec,
        input_multiple,
        list_models,
    )

    if args.name:
        model = build_model(args.name, **overrides)
        model.summary(print_fn=lambda line, **_: sys.stdout.write(line + "\n"))
        return 0
    reference = {row.model: row.params for row in REFERENCE_TABLE if not row.overrides}
    reference.update(DEEPCR_ORIGINAL_PARAMS)
    print(f"{'model':<24}{'trainable':>13}{'reference':>12}{'diff':>8}  {'H,W multiple':<13}description")
    rows = [(name, {}) for name in list_models()]
    rows += [(row.model, row.overrides) for row in REFERENCE_TABLE if row.overrides]
    for name, kw in rows:
        if args.skip_large and name == "transunet_r50_vit_b16":
            continue
        model = build_model(name, **kw)
        n = count_trainable(model)
        ref = next((r.params for r in REFERENCE_TABLE if r.model == name and r.overrides == kw),
                   reference.get(name))
        label = name + ("" if not kw else " " + "/".join(str(v) for v in kw.values()))
        diff = f"{100 * (n - ref) / ref:+.2f}%" if ref else ""
        mult = input_multiple(model)
        mult_s = f"{mult} (fixed)" if model.input_shape[1] is not None else str(mult)
        print(f"{label:<24}{n:>13,}{(f'{ref:,}' if ref else '-'):>12}{diff:>8}  {mult_s:<13}"
              f"{get_spec(name).description}")
    return 0


def models_main(argv=None) -> int:
    """``kercr-models``; returns the exit status (1: an unknown architecture or option)."""
    return run(models_parser(), _models, argv)


if __name__ == "__main__":
    sys.exit(models_main())
