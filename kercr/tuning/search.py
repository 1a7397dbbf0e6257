"""Run a hyperparameter search: one resumable output directory per search.

The output directory holds::

    search_space.json    the resolved search space (a re-run must use the same one)
    search/              Keras Tuner's project: oracle.json, tuner0.json, trial_<id>/ ...
    results.csv          one row per trial, best first (see kercr.tuning.results)
    results.md           the same as a Markdown table
    best.keras           the best trial's model (best epoch), ready for kercr-export
    normalization.json   the normalization constants the model expects
    best_trial.json      the best trial's hyperparameters and metrics

Running the same command again resumes an interrupted search (Keras Tuner reloads its oracle
from ``search/`` because the directory and project name are the same and nothing is
overwritten); a finished search only rewrites the results.

Distributed mode (Keras Tuner's): one chief process holds the oracle and serves trials over gRPC
to worker processes; all read ``KERASTUNER_TUNER_ID`` (``chief`` or ``tuner0``, ``tuner1``,
...), ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT``. The chief writes the results
when every worker has finished.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

import keras

from kercr._net import bare_host, connect_error
from kercr.training.data import check_validation_crs, make_training_data
from kercr.tuning.hypermodel import CRHyperModel
from kercr.tuning.results import write_results
from kercr.tuning.space import SearchSpace, SearchSpaceError
from kercr.tuning.tuners import make_tuner, search_finished

logger = logging.getLogger(__name__)

PROJECT = "search"
#: What write_results puts beside the search (deleted by --overwrite).
RESULT_FILES = ("results.csv", "results.md", "best.keras", "best_trial.json", "normalization.json")
SPACE_FILE = "search_space.json"
#: Seconds a worker waits for the chief oracle to listen (``KERCR_ORACLE_WAIT_S`` overrides it).
ORACLE_WAIT_S = 300


def distributed_role() -> str:
    """``"chief"``, ``"worker"`` or ``"single"`` from Keras Tuner's environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not os.environ.get(v)]
    if missing:
        raise SearchSpaceError(
            f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} is not: set all three, e.g. "
            "KERASTUNER_TUNER_ID=chief (or tuner0, tuner1, ...), KERASTUNER_ORACLE_IP=10.0.0.1, "
            "KERASTUNER_ORACLE_PORT=8000; or unset KERASTUNER_ORACLE_IP for a single-process search."
        )
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def _check_search_folder(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a folder holding something other than a search (a
    kercr-train run's ``best.keras``, anyone's files): a search writes and --overwrite deletes
    ``best.keras`` and the results there, so only a folder of a search (``search_space.json`` or
    Keras Tuner's ``search/``) or an empty one is written into."""
    if out.exists() and not out.is_dir():
        raise SearchSpaceError(f"--out {str(out)!r} is a file; pass --out NEW_DIR (created for the search).")
    if not out.is_dir() or (out / SPACE_FILE).is_file() or (out / PROJECT).is_dir():
        return
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if held:
        what = "a kercr-train run (config.json)" if "config.json" in held else f"other files ({', '.join(held[:4])}" + \
            (", ..." if len(held) > 4 else "") + ")"
        raise SearchSpaceError(f"--out {str(out)!r} holds {what}, not a kercr-tune search; a search would replace "
                               "its best.keras. Pass --out NEW_DIR (created for the search) or an empty folder.")


def _check_out_dir(out: Path, space: SearchSpace) -> None:
    """Refuse to mix searches: ``out`` must hold no search or one with the same space."""
    saved = out / SPACE_FILE
    mine = space.to_json()
    if saved.is_file():
        try:
            previous = json.loads(saved.read_text())
        except ValueError as err:
            raise SearchSpaceError(f"{saved} is not readable JSON ({err}); it is written by kercr-tune: restore it, "
                                   "or pass --overwrite to start the search again (or --out NEW_DIR).") from None
        if previous == mine:
            return
        if any((out / PROJECT).glob("trial_*")):
            diff = sorted(k for k in set(previous) | set(mine) if previous.get(k) != mine.get(k))
            raise SearchSpaceError(
                f"the output directory {str(out)!r} holds a search with another search space "
                f"(differences in: {', '.join(diff)}); pass --out NEW_DIR for a new search, the same "
                "options to resume that one, or --overwrite to delete it and start again."
            )
        # A start that failed before any trial: nothing to keep, this space replaces it.
        logger.info("%s: no trial ran under its earlier search space; starting with this one", out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{SPACE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(mine, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, saved)  # atomic: the chief and the workers may start together


def _check_oracle_port(ip: str, port: str) -> None:
    """An OSError naming the port when the chief cannot have it to itself: gRPC binds with
    SO_REUSEPORT, so a second chief on a port would silently share the workers of the first."""
    host = bare_host(ip)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, int(port)))
        except OSError as err:
            raise OSError(f"the chief oracle cannot listen on {ip}:{port} ({err.strerror or err}): another search's "
                          "chief or another program holds it, or the address is not this machine's. Pick another "
                          "KERASTUNER_ORACLE_PORT (the same on the chief and every worker).") from None


def _wait_for_oracle(ip: str, port: str) -> None:
    """Wait until the chief oracle listens at ``ip:port`` (it may start after the workers), then
    go on; an OSError naming the address and the fix after ``KERCR_ORACLE_WAIT_S`` seconds
    (default :data:`ORACLE_WAIT_S`), where Keras Tuner's own client would wait an hour."""
    limit = float(os.environ.get("KERCR_ORACLE_WAIT_S", ORACLE_WAIT_S))
    deadline = time.monotonic() + limit
    while (error := connect_error(ip, port, timeout=5.0)) is not None:
        if time.monotonic() >= deadline:
            raise OSError(f"no chief oracle listens at {ip}:{port} after {limit:g} s ({error}): start the chief "
                          "(KERASTUNER_TUNER_ID=chief, the same KERASTUNER_ORACLE_IP/PORT) or check the address "
                          "(KERCR_ORACLE_WAIT_S sets this wait).")
        time.sleep(1.0)


def run_search(space: SearchSpace, out, *, overwrite: bool = False, verbose="auto"):
    """Run (or resume) the search ``space`` describes, with its results in ``out``.

    Parameters
    ----------
    space : SearchSpace
        The search (see :func:`kercr.tuning.load_search_space`).
    out : str or path-like
        Output directory (layout in the module docstring).
    overwrite : bool
        Delete a previous search in ``out`` and start afresh (default: resume it).
    verbose : "auto", 0, 1 or 2
        Keras progress display for each trial's training.

    Returns
    -------
    list of dict or None
        The results table rows, best first; None on a distributed worker (the chief writes
        the results).
    """
    role = distributed_role()
    out = Path(out)
    _check_search_folder(out)
    if overwrite and role != "worker":
        # The earlier search's space and results go too: an interrupted new search must not show
        # the old best model (Keras Tuner deletes its own project folder).
        for name in (SPACE_FILE, *RESULT_FILES):
            (out / name).unlink(missing_ok=True)
    _check_out_dir(out, space)
    config = space.train_config()
    keras.utils.set_random_seed(space.seed)
    hypermodel = CRHyperModel(space)
    data = None if role == "chief" else make_training_data(config)  # before the tuner: fail early
    if data is not None:
        check_validation_crs(data)
    hypermodel.data = data
    tuner = make_tuner(space, hypermodel, directory=out, project_name=PROJECT,
                       overwrite=overwrite and role != "worker")
    if role == "chief" and search_finished(tuner.oracle):
        logger.info("the %s search in %s has run all its trials; writing its results", space.tuner, out)
    elif role == "chief":
        _check_oracle_port(os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"])
        logger.info(
            "chief oracle for %s search: serving trials on %s:%s until the workers finish",
            space.tuner, os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"],
        )
        tuner.search(verbose=verbose)  # blocks while the workers run the trials
    else:
        if role == "worker":
            logger.info("worker %s: asking the chief oracle at %s:%s for trials", tuner.tuner_id,
                        os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"])
            _wait_for_oracle(os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"])
        else:
            logger.info("%s search over %s in %s", space.tuner, ", ".join(space.models), out / PROJECT)
        tuner.search(
            data.train, validation_data=data.val, epochs=space.max_epochs,
            steps_per_epoch=config.steps_per_epoch, validation_steps=config.validation_steps,
            verbose=verbose,
        )
        if role == "worker":
            logger.info("worker %s: the chief has no more trials; done", tuner.tuner_id)
            return None
    return write_results(tuner, space, out)
