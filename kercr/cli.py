"""Command-line entry points. Logging is configured here only."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _setup_logging(verbose: int = 0) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def models_main(argv=None) -> int:
    """``kercr-models``: list the architectures with their parameter counts, or summarize one."""
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
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    import ast

    from kercr.models import DEEPCR_ORIGINAL_PARAMS, REFERENCE_TABLE, build_model, get_spec, list_models
    from kercr.models import count_trainable, input_multiple

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE, e.g. --set num_layers=8")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value

    try:
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
    except ValueError as err:
        print(f"kercr-models: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(models_main())
