"""Average the weights of finished ``kercr-train`` runs into a new run directory (a "model soup").

    python -m kercr.weights.average runs/default_model_bce runs/default_model_sky --out runs/default_model_soup

Runs fine-tuned from one another (or from one common start) sit close enough in weight space that
the element-wise mean of their weights is itself a good network, often better than each, at the
cost of none: same architecture, same size, same speed (Wortsman et al. 2022, arXiv:2203.05482).
Every weight is averaged, BatchNorm's moving mean and variance included.

The output is a finished run directory that ``python -m kercr.weights.ship`` accepts:
``best.keras`` (the averaged model), ``config.json`` and ``normalization.json`` of the first run
(its validation patches choose the threshold: name first the run whose data the threshold should
come from), ``metrics.json`` (validation of the averaged model on those patches) and
``average.json`` (which runs, with which weights). The inputs are not modified and an existing
``--out`` is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from kercr._files import new_folder, write_json
from kercr.cli import common as cli
from kercr.config import TrainConfig

__all__ = ["average_runs"]

logger = logging.getLogger("kercr.weights.average")  # not "__main__" under python -m: kercr's handler shows it


def average_runs(run_dirs, out, *, weights=None) -> Path:
    """Write the weight average of ``run_dirs`` into the new run directory ``out``.

    Parameters
    ----------
    run_dirs : sequence of path
        At least two finished ``kercr-train`` run directories (``best.keras``, ``config.json``,
        ``normalization.json``) of one architecture trained with one input normalization.
    out : path
        New directory; it must not exist.
    weights : sequence of float, optional
        Weight of each run in the average (non-negative, normalized to sum 1; default equal).

    Returns
    -------
    pathlib.Path
        ``out / "best.keras"``.

    Raises
    ------
    FileExistsError
        ``out`` exists.
    FileNotFoundError
        A run directory lacks one of its files.
    ValueError
        Fewer than two runs, other architectures or normalizations, or bad ``weights``.
    """
    import numpy as np

    from kercr.model_files import load_keras_model  # heavy: imports Keras, kept off --help
    from kercr.training import run_validation  # heavy: imports Keras and TensorFlow, kept off --help

    run_dirs, out = [Path(r) for r in run_dirs], Path(out)
    if len(run_dirs) < 2:
        raise ValueError(f"average_runs needs at least two run directories, got {len(run_dirs)}.")
    if out.exists():
        raise FileExistsError(f"{out} exists; pass a new --out directory (the average is never written over a run).")
    for run in run_dirs:
        missing = [n for n in ("best.keras", "config.json", "normalization.json") if not (run / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{run}: missing {', '.join(missing)}; pass finished kercr-train run directories.")
    weights = np.ones(len(run_dirs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if (weights.shape != (len(run_dirs),) or not np.all(np.isfinite(weights)) or (weights < 0).any()
            or weights.sum() <= 0):
        raise ValueError(f"weights={weights.tolist()}: give one non-negative number per run, not all zero.")
    weights = weights / weights.sum()
    norms = [json.loads((run / "normalization.json").read_text()) for run in run_dirs]
    if any(n != norms[0] for n in norms[1:]):
        raise ValueError(f"{', '.join(map(str, run_dirs))} were trained with other input normalizations "
                         f"({norms}); only runs of one normalization can be averaged.")
    models = [load_keras_model(run / "best.keras", compile=False) for run in run_dirs]
    shapes = [[w.shape for w in m.get_weights()] for m in models]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ValueError(f"{', '.join(map(str, run_dirs))} hold different architectures "
                         f"({', '.join(f'{m.count_params():,} parameters' for m in models)}); only one "
                         "architecture can be averaged.")
    stacks = zip(*(m.get_weights() for m in models))
    models[0].set_weights([np.tensordot(weights, np.stack(ws).astype(np.float64), axes=1).astype(ws[0].dtype)
                           for ws in stacks])
    with new_folder(out) as staging:  # a failure or a kill leaves no half-made out
        models[0].save(staging / "best.keras")
        for name in ("config.json", "normalization.json"):
            shutil.copyfile(run_dirs[0] / name, staging / name)
        write_json(staging / "average.json",
                   {"runs": [str(r) for r in run_dirs], "weights": weights.tolist(),
                    "note": "element-wise mean of every weight (BatchNorm statistics included); config.json, "
                            "normalization.json and the validation patches are the first run's"})
        config = TrainConfig.load(staging / "config.json")
        metrics = run_validation(staging)  # as kercr-train writes metrics.json at the end of a run
        metrics.update(model=config.model, epochs=config.epochs, data=config.data)
        write_json(staging / "metrics.json", metrics, sort_keys=True)
    logger.info("averaged %s into %s", ", ".join(map(str, run_dirs)), out)
    return out / "best.keras"


def _average(parser, args) -> int:
    path = average_runs(args.run_dirs, args.out, weights=args.weights)
    print(f"averaged {len(args.run_dirs)} runs -> {path}")
    return 0


def main(argv=None) -> int:
    """``python -m kercr.weights.average``; returns the exit status (1: a bad run directory or --out)."""
    parser = argparse.ArgumentParser(prog="python -m kercr.weights.average", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="finished kercr-train run directories (the first one's "
                                                    "config and validation patches are kept)")
    parser.add_argument("--out", required=True, help="new run directory for the averaged model")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per run (default: equal)")
    return cli.run(cli.add_verbosity(parser), _average, argv)


if __name__ == "__main__":
    sys.exit(main())
