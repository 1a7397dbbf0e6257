"""``kercr-tune``: search TransUNet heads, layers, MLP dim and learning rate (or other models)."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
Search kercr's cosmic-ray models' hyperparameters with Keras Tuner, on the embedded synthetic
DECam-like data (nothing is downloaded).

By default the reference search: a TransUNet with attention heads {6, 12}, transformer layers
{6, 8, 12}, MLP dim {64, 100, 128} and a log-uniform learning rate in [1e-4, 3e-3], searched by
Hyperband for the best validation Dice. A search-space file (--space, TOML; examples in the
repository's tuning/ folder) can search the other architectures (unet, deepcr, cosmic_conn,
attention_unet) and their widths, and set the tuner and the data.

Writes to --out: results.csv and results.md (one row per trial, best first: heads, layers, MLP
dim, trainable parameters, validation Dice and TPR at 0.01 % FPR on pooled validation pixels),
best.keras with normalization.json (ready for kercr-export), and the Keras Tuner project in
search/. Running the same command again resumes an interrupted search.
"""

EPILOG = """\
distributed search (Keras Tuner's chief/worker mode): start one chief and any number of workers
with the same --space and --out (a shared file system), e.g.
  KERASTUNER_TUNER_ID=chief   KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 kercr-tune ...
  KERASTUNER_TUNER_ID=tuner0  KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 kercr-tune ...
  KERASTUNER_TUNER_ID=tuner1  KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 kercr-tune ...
The chief hands out trials and writes the results when all workers are done.

examples:
  kercr-tune --out runs/tune                                  # the reference TransUNet search
  kercr-tune --space tuning/small.toml --out runs/tune-small  # a few minutes on a CPU
  kercr-tune --tuner random --max-trials 20 --objective tpr --out runs/tune-tpr
"""


def build_parser() -> argparse.ArgumentParser:
    from kercr.tuning.space import OBJECTIVES, TUNERS

    parser = argparse.ArgumentParser(
        prog="kercr-tune", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--space", metavar="FILE.toml",
                        help="search-space file (default: the reference TransUNet search, "
                             "tuning/reference_transunet.toml)")
    parser.add_argument("--out", default="runs/kercr-tune", metavar="DIR",
                        help="output directory; the same directory resumes the search (default: %(default)s)")
    parser.add_argument("--tuner", choices=TUNERS,
                        help="search algorithm (overrides the file; default hyperband)")
    parser.add_argument("--objective", choices=list(OBJECTIVES),
                        help="maximize validation Dice (val_dice) or validation TPR at 0.01 %% FPR "
                             "(val_tpr_at_fpr_1e-4) (overrides the file; default dice)")
    parser.add_argument("--max-epochs", type=int, metavar="N",
                        help="Hyperband: epochs of the longest run; random/bayesian: epochs per trial")
    parser.add_argument("--max-trials", type=int, metavar="N",
                        help="number of trials of random search and Bayesian optimization")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of the oracle, the data and the weights")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the search in --out and start again (default: resume it)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-v) or debug details (-vv)")
    return parser


def main(argv=None) -> int:
    """Entry point of ``kercr-tune``; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from kercr.cli import setup_logging

    setup_logging(args.verbose)

    from kercr.config import ConfigError
    from kercr.data.errors import KercrDataError
    from kercr.tuning.results import markdown_table
    from kercr.tuning.search import run_search
    from kercr.tuning.space import SearchSpace, load_search_space

    try:
        space = load_search_space(args.space) if args.space else SearchSpace()
        space = space.replace(tuner=args.tuner, objective=args.objective, max_epochs=args.max_epochs,
                              max_trials=args.max_trials, seed=args.seed)
        rows = run_search(space, args.out, overwrite=args.overwrite,
                          verbose="auto" if args.verbose else 2)
    except (ConfigError, KercrDataError) as err:
        print(f"kercr-tune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kercr-tune: interrupted; run the same command again to resume the search.", file=sys.stderr)
        return 130
    if rows is not None:
        sys.stdout.write(markdown_table(rows, space))
        best = os.path.join(args.out, "best.keras")
        saved = f"best model: {best}" if os.path.isfile(best) else "no best model saved (see above)"
        sys.stdout.write(f"\nresults: {os.path.join(args.out, 'results.csv')}, "
                         f"{os.path.join(args.out, 'results.md')}; {saved}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
