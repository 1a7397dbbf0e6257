"""``kercr-tune``: search TransUNet heads, layers, MLP dim and learning rate (or other models).

The library behind it is :mod:`kercr.tuning`; ``python -m kercr.tuning`` runs this command too.
Verbosity is every kercr command's (:mod:`kercr.cli.common`): INFO progress lines and one line
per epoch by default, ``-q`` warnings and errors only, ``-v`` debug and Keras's progress bars.
Changed: the default used to be warnings only, with ``-v`` for INFO and progress bars.
"""

from __future__ import annotations

import argparse
import os
import sys

from kercr.cli.common import add_verbosity, run, verbosity
from kercr.config import OBJECTIVES, TUNERS
from kercr.tuning.space import SearchSpace, load_search_space

__all__ = ["build_parser", "main"]

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

exit status: 0 done, 1 a bad search-space file or option (one line says why), 2 bad flags,
130 interrupted (run the same command again to resume).

examples:
  kercr-tune --out runs/tune                                  # the reference TransUNet search
  kercr-tune --space tuning/small.toml --out runs/tune-small  # a few minutes on a CPU
  kercr-tune --tuner random --max-trials 20 --objective tpr --out runs/tune-tpr
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kercr-tune``."""
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
    return add_verbosity(parser)


def _tune(parser, args) -> int:
    from kercr.tuning.results import markdown_table  # heavy: imports keras_tuner and TensorFlow, kept off --help
    from kercr.tuning.search import run_search  # heavy: imports keras_tuner and TensorFlow, kept off --help

    space = load_search_space(args.space) if args.space else SearchSpace()
    space = space.replace(tuner=args.tuner, objective=args.objective, max_epochs=args.max_epochs,
                          max_trials=args.max_trials, seed=args.seed)
    level = verbosity(args)
    keras_verbose = 0 if level < 0 else "auto" if level > 0 else 2  # Keras: silent, progress bars, a line per epoch
    rows = run_search(space, args.out, overwrite=args.overwrite, verbose=keras_verbose)
    if rows is not None:
        sys.stdout.write(markdown_table(rows, space))
        best = os.path.join(args.out, "best.keras")
        saved = f"best model: {best}" if os.path.isfile(best) else "no best model saved (see above)"
        sys.stdout.write(f"\nresults: {os.path.join(args.out, 'results.csv')}, "
                         f"{os.path.join(args.out, 'results.md')}; {saved}\n")
    return 0


def main(argv=None) -> int:
    """Entry point of ``kercr-tune``; returns the process exit status."""
    return run(build_parser(), _tune, argv,
               interrupted="interrupted; run the same command again to resume the search.")


if __name__ == "__main__":
    sys.exit(main())
